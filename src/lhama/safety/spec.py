"""``--shield KIND=PATH`` and the flags around it, to ready shields.

    --shield llama-guard=PATH    any checkpoint load_model reads (GGUF, HF folder, Meta folder)
    --shield prompt-guard=PATH   a Hugging Face sequence-classifier folder

Shared by ``lhama serve`` and ``lhama safety check``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from lhama.safety.base import ON_ERROR, ShieldConfigError
from lhama.safety.categories import parse_codes

KINDS = ("llama-guard", "prompt-guard")


def parse_shield_spec(spec: str) -> tuple[str, str]:
    kind, sep, path = spec.partition("=")
    kind = kind.strip().lower().replace("_", "-")
    if not sep or not path.strip():
        raise ShieldConfigError(f"--shield {spec!r}: expected KIND=PATH with KIND one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise ShieldConfigError(f"--shield {spec!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not Path(path).expanduser().exists() and path != "default":
        raise ShieldConfigError(f"--shield {spec!r}: {path} does not exist")
    return kind, path


@dataclass(frozen=True)
class ShieldOptions:
    categories: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    code_interpreter: bool | None = None
    stages: tuple[str, ...] = ("input", "output")  # Llama Guard's; Prompt Guard is input-only
    on_error: str = "refuse"
    prompt_guard_threshold: float = 0.9


def build_shields(specs: list[str], options: ShieldOptions | None = None) -> list:
    """Load every shield named in ``specs`` (in order: the server applies them in this order)."""
    from lhama.safety.llama_guard import LlamaGuardConfig, LlamaGuardShield
    from lhama.safety.prompt_guard import PromptGuardConfig, PromptGuardShield

    o = options or ShieldOptions()
    out = []
    for spec in specs:
        kind, path = parse_shield_spec(spec)
        if kind == "llama-guard":
            out.append(
                LlamaGuardShield(
                    LlamaGuardConfig(
                        path,
                        categories=o.categories,
                        excluded_categories=o.exclude,
                        code_interpreter=o.code_interpreter,
                        stages=o.stages,
                        on_error=o.on_error,
                    )
                )
            )
        else:
            out.append(
                PromptGuardShield(PromptGuardConfig(path, threshold=o.prompt_guard_threshold, on_error=o.on_error))
            )
    return out


def add_shield_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("safety shields (docs/safety.md)")
    g.add_argument(
        "--shield",
        action="append",
        default=[],
        metavar="KIND=PATH",
        help="check requests and replies: llama-guard=CHECKPOINT or prompt-guard=CLASSIFIER_FOLDER "
        "(repeatable; applied in order)",
    )
    g.add_argument(
        "--shield-categories",
        metavar="S1,S2,...",
        help="Llama Guard categories to check (default: S1-S13, plus S14 for an 8B guard)",
    )
    g.add_argument("--shield-exclude", metavar="S6,S8,...", help="Llama Guard categories not to check")
    g.add_argument(
        "--shield-code-interpreter",
        choices=["auto", "on", "off"],
        default="auto",
        help="include S14 Code Interpreter Abuse (default: auto, on for an 8B-shaped guard)",
    )
    g.add_argument(
        "--shield-stages",
        default="input,output",
        help="where Llama Guard runs: input (requests), output (replies) or both (default: %(default)s)",
    )
    g.add_argument(
        "--shield-on-error",
        choices=list(ON_ERROR),
        default="refuse",
        help="when a shield cannot judge: refuse (fail closed, default), allow (fail open), raise (503)",
    )
    g.add_argument(
        "--prompt-guard-threshold",
        type=float,
        default=0.9,
        help="Prompt Guard probability at which a request is refused (default: %(default)s)",
    )


def options_from_args(a) -> ShieldOptions:
    ci = {"auto": None, "on": True, "off": False}[a.shield_code_interpreter]
    stages = tuple(s.strip() for s in a.shield_stages.split(",") if s.strip())
    if not stages or not set(stages) <= {"input", "output"}:
        raise ShieldConfigError(f"--shield-stages must list input and/or output, got {a.shield_stages!r}")
    return ShieldOptions(
        categories=parse_codes(a.shield_categories),
        exclude=parse_codes(a.shield_exclude) or (),
        code_interpreter=ci,
        stages=stages,
        on_error=a.shield_on_error,
        prompt_guard_threshold=a.prompt_guard_threshold,
    )


def shields_from_args(a) -> list:
    return build_shields(list(a.shield or []), options_from_args(a)) if getattr(a, "shield", None) else []
