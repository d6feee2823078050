"""``lhama``: the command line. ``COMMANDS`` is the whole command table: name -> (module in
``lhama.cli``, the function that adds the command's arguments, one-line help). Each module
is one command family; building a parser imports no torch, and a command imports what it
needs when it runs, so ``lhama --help`` is instant."""

from __future__ import annotations

import gc
import importlib
import sys

from lhama import __version__
from lhama.cli.args import Parser
from lhama.cli.runner import exit_now, run_command

COMMANDS: dict[str, tuple[str, str, str]] = {
    "chat": ("generate", "add_chat_args", "interactive streaming chat (/reset, /system TEXT, /exit)"),
    "generate": ("generate", "add_generate_args", "complete a prompt (raw text, or --chat to use the chat format)"),
    "info": ("checkpoints", "add_info_args", "shape, parameters and memory of a config name or checkpoint"),
    "convert": ("checkpoints", "add_convert_args", "convert a checkpoint to safetensors (HF), GGUF or Meta"),
    "batch": ("batch", "add_batch_args", "run an OpenAI batch JSONL file offline (resumable)"),
    "serve": ("serve", "add_serve_args", "OpenAI-compatible HTTP server with a web chat page"),
    "agent": ("agent", "add_agent_args", "an agent that calls tools (code interpreter, search...) until done"),
    "rag": ("rag", "add_rag_args", "ask questions about your own files (retrieval-augmented generation)"),
    "finetune": ("train", "add_finetune_args", "fine-tune a model: full SFT, LoRA SFT, continued pretraining, DPO"),
    "distill": ("train", "add_distill_args", "knowledge distillation: train a small student on a teacher's logits"),
    "synth": ("train", "add_synth_args", "generate instruction/answer chat data from seed topics with a teacher"),
    "rejection-sample": (
        "train",
        "add_rejection_args",
        "N candidates per prompt, scored by a reward: best -> SFT JSONL, best/worst -> DPO JSONL",
    ),
    "plan": ("plan", "add_plan_args", "memory per GPU (weights, KV cache, activations): does it fit?"),
    "eval": ("eval", "add_eval_args", "evaluate a model on tasks: perplexity, multiple choice, generative, code"),
    "compare": ("eval", "add_compare_args", "pairwise comparison of two models judged by a third (win/tie/loss)"),
    "lm-eval": (
        "eval",
        "add_lm_eval_args",
        "run lm-evaluation-harness with lhama as a model (--install: `lm_eval --model lhama`)",
    ),
    "safety": ("safety", "add_safety_args", "safety shields: Llama Guard 3 and Prompt Guard"),
}


def build_parser(only: str | None = None) -> Parser:
    """The ``lhama`` parser. ``only``: fill in just that command's arguments ("" for none; the
    others keep their one-line help), which is all ``main`` needs to run it."""
    parser = Parser(prog="lhama", description="The Llama system in Python.")
    parser.add_argument(
        "--version", action="version", version=f"lhama {__version__}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, adder, help_line) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line)
        if only is None or only == name:
            getattr(importlib.import_module(f"lhama.cli.{module}"), adder)(p)
    return parser


# Commands that end the process the moment their work is done (``exit_now``): what they leave
# behind is the model, torch and stdout, and the interpreter's teardown of those is ~0.3-0.4 s of
# CPU per run. Commands with servers, worker pools, child processes or files of their own keep
# Python's normal exit.
FAST_EXIT_COMMANDS = frozenset({"generate", "chat", "info"})


def main(argv: list[str] | None = None) -> int:
    """Run ``lhama ARGV``; the exit code. With no ``argv`` (the ``lhama`` program and ``python -m
    lhama.cli``), a command of ``FAST_EXIT_COMMANDS`` ends the process itself when it is done."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((x for x in argv if not x.startswith("-")), "")
    # `lhama --help` needs only the table's help lines; an unknown name gets argparse's message.
    if program and command in FAST_EXIT_COMMANDS:
        # A one-shot process: Python's cyclic collector would only walk torch's ~180k objects
        # again and again while they import and the model loads (~0.15-0.25 s of CPU, 2-core
        # EPYC), and what these commands make afterwards is bounded by --max-tokens. (chat turns
        # it back on once the model is loaded: a session can go on for long.)
        gc.disable()
    code = run_command(build_parser(only=command if command in COMMANDS else ""), argv)
    if program and command in FAST_EXIT_COMMANDS:
        exit_now(int(code or 0))
    return code
