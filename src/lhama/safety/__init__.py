"""Safety shields: Llama Guard 3 (moderation by a guard LLM) and Prompt Guard (injection and
jailbreak classifier), behind one ``Shield`` protocol used by the server and the agent loop.

    from lhama.safety import LlamaGuardConfig, LlamaGuardShield
    guard = LlamaGuardShield(LlamaGuardConfig("path/to/Llama-Guard-3-1B.gguf", excluded_categories=("S6",)))
    verdict = guard.check([{"role": "user", "content": "..."}], role="user")
    verdict.allowed, verdict.categories, verdict.message
"""

from lhama.safety.base import Shield, ShieldConfigError, ShieldError, ShieldVerdict
from lhama.safety.categories import CATEGORIES, Category, select_categories
from lhama.safety.llama_guard import (
    LlamaGuardConfig,
    LlamaGuardShield,
    parse_guard_answer,
    render_guard_prompt,
)
from lhama.safety.prompt_guard import PromptGuardConfig, PromptGuardShield
from lhama.safety.spec import ShieldOptions, build_shields

__all__ = [
    "CATEGORIES",
    "Category",
    "LlamaGuardConfig",
    "LlamaGuardShield",
    "PromptGuardConfig",
    "PromptGuardShield",
    "Shield",
    "ShieldConfigError",
    "ShieldError",
    "ShieldOptions",
    "ShieldVerdict",
    "build_shields",
    "parse_guard_answer",
    "render_guard_prompt",
    "select_categories",
]
