"""Evaluation: perplexity, multiple choice, generative and code tasks from JSONL files, pairwise
comparison with a judge model, reports, and an lm-evaluation-harness adapter. See docs/evaluation.md."""

from lhama.eval.config import EvalConfig
from lhama.eval.context import EvalContext
from lhama.eval.runner import EvalResumeError, TaskResult, run_task
from lhama.eval.tasks import EvalTaskError, Task, load_task, shipped_tasks

__all__ = [
    "EvalConfig",
    "EvalContext",
    "EvalResumeError",
    "EvalTaskError",
    "Task",
    "TaskResult",
    "load_task",
    "run_task",
    "shipped_tasks",
]
