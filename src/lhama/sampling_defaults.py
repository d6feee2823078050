"""The one set of sampling defaults: ``lhama chat``, ``generate``, ``agent`` and ``rag ask`` use
them for flags left out, and the OpenAI layer (``lhama serve``, ``lhama batch``) for fields a
request leaves out (docs/generation.md, "Sampling defaults"). Standard library only: the
parsers read it, and they must not import torch."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SamplingDefaults:
    """Field names are ``SamplingParams`` fields. Temperature 0.6 and top-p 0.9 are Meta's
    published generation settings for Llama 3; a fixed seed makes the same command give the
    same text (pass --seed to vary it, --temperature 0 for greedy). ``max_tokens`` is cut to
    what the context has left."""

    max_tokens: int = 512
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = 0

    def with_(self, **changes) -> SamplingDefaults:
        return replace(self, **changes)


SAMPLING_DEFAULTS = SamplingDefaults()

# An API request without a ``seed`` is sampled afresh, so a retried or regenerated answer differs
# (the web chat's Regenerate); every other field it leaves out takes the shared default.
REQUEST_SAMPLING_DEFAULTS = SAMPLING_DEFAULTS.with_(seed=None)
