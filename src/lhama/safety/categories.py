"""Llama Guard 3's hazard categories (the MLCommons taxonomy) and choosing a subset of them.

``name`` is the text Llama Guard 3 was trained on in its prompt (``S3: Sex Crimes.``: the wording
of Meta's chat template and llama-stack); ``title`` is the longer name of the model card's table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lhama.safety.base import ShieldConfigError


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    title: str

    def prompt_line(self) -> str:
        return f"{self.code}: {self.name}."


CATEGORIES: dict[str, Category] = {
    c.code: c
    for c in [
        Category("S1", "Violent Crimes", "Violent Crimes"),
        Category("S2", "Non-Violent Crimes", "Non-Violent Crimes"),
        Category("S3", "Sex Crimes", "Sex-Related Crimes"),
        Category("S4", "Child Exploitation", "Child Sexual Exploitation"),
        Category("S5", "Defamation", "Defamation"),
        Category("S6", "Specialized Advice", "Specialized Advice"),
        Category("S7", "Privacy", "Privacy"),
        Category("S8", "Intellectual Property", "Intellectual Property"),
        Category("S9", "Indiscriminate Weapons", "Indiscriminate Weapons"),
        Category("S10", "Hate", "Hate"),
        Category("S11", "Self-Harm", "Suicide & Self-Harm"),
        Category("S12", "Sexual Content", "Sexual Content"),
        Category("S13", "Elections", "Elections"),
        Category("S14", "Code Interpreter Abuse", "Code Interpreter Abuse"),
    ]
}
# The 1B and the 11B-Vision guards know S1-S13; only Llama Guard 3 8B was trained with S14.
BASE_CODES = tuple(f"S{i}" for i in range(1, 14))
ALL_CODES = (*BASE_CODES, "S14")


def normalize_code(code: str) -> str:
    c = code.strip().upper()
    if c not in CATEGORIES:
        raise ShieldConfigError(f"unknown Llama Guard category {code!r}; known: {', '.join(ALL_CODES)}")
    return c


def parse_codes(spec: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``"S1,S2"`` or ``["S1", "S2"]`` (blank -> None) to canonical, de-duplicated codes."""
    if spec is None:
        return None
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    parts = [p for p in (p.strip() for p in parts) if p]
    if not parts:
        return None
    return tuple(dict.fromkeys(normalize_code(p) for p in parts))


def select_categories(
    include: Iterable[str] | None = None, exclude: Iterable[str] = (), *, code_interpreter: bool = False
) -> tuple[Category, ...]:
    """The policy to put in the prompt, in code order. ``include`` (codes) replaces the model's
    default list (S1-S13, plus S14 with ``code_interpreter``); ``exclude`` removes codes from it.
    An empty policy is refused: the guard would have nothing to judge against."""
    default = ALL_CODES if code_interpreter else BASE_CODES
    chosen = parse_codes(include) or default
    dropped = set(parse_codes(exclude) or ())
    # Order by number whatever order the user listed them in: the prompt lists them S1..S14.
    codes = sorted((c for c in chosen if c not in dropped), key=lambda c: int(c[1:]))
    if not codes:
        raise ShieldConfigError("every Llama Guard category is excluded; leave at least one to check")
    return tuple(CATEGORIES[c] for c in codes)


def describe(codes: Iterable[str]) -> str:
    """``"S1 (Violent Crimes), S10 (Hate)"`` for refusals and logs; unknown codes as they are."""
    out = []
    for c in codes:
        cat = CATEGORIES.get(c)
        out.append(f"{c} ({cat.title})" if cat else c)
    return ", ".join(out)
