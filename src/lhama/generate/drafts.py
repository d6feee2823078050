"""Drafts for speculative decoding, and the ``--draft-model`` spellings that build them.

* ``ngram``: prompt lookup, no model (``NgramDraft``).
* ``self:int4`` / ``self:int8``: the target's own checkpoint, weight-only quantized. On a CPU a
  decode step is bound by reading weights, so an int4 copy runs ~3.5x faster than an fp32 step
  (~2.5x than bf16) and agrees with the target's greedy choice ~90% of the time: the draft
  that pays off for free-form text (figures in docs/scaling.md). It shares the target's
  embedding table and adds only its quantized linears (90 MiB for SmolLM2-135M).
* ``self:N``: the target's first N layers with its norm and head, sharing every weight
  (LayerSkip-style early exit; pays off only for models trained for it).
* ``self:int4:N``: both, the first N layers quantized.
* anything else: a ``--model`` spec (file, folder, config name) whose tokenizer is the target's.
* ``<model draft>+ngram`` (e.g. ``self:int4+ngram``): prompt lookup first in every round, the
  model draft when the recent text has no earlier match of ``LOOKUP_MIN_NGRAM`` tokens or more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from lhama.errors import ConfigError, ModelNotFoundError
from lhama.model import Transformer

SELF_DRAFT_PRECISIONS = ("int4", "int8")

# Tokens proposed per round when --num-speculative-tokens is not given: a quantized self-draft is
# right ~90% of the time, so longer rounds pay (k = 6 measured best for SmolLM2, k = 4 and 8
# within noise); other drafts are right less often.
DEFAULT_K = {"quantized": 6, "ngram": 4, "layers": 4, "model": 4}
# In front of a model draft, prompt lookup proposes only after a match this long: single-token
# matches are frequent in free text and mostly wrong, where the model draft is mostly right.
LOOKUP_MIN_NGRAM = 2


@dataclass(frozen=True)
class NgramDraft:
    """Prompt-lookup drafting (no model): find the latest earlier occurrence of the last
    ``max_ngram``..``min_ngram`` tokens and propose what followed it. Free to run; pays off when
    the output repeats the prompt (quoting, editing code, extraction)."""

    max_ngram: int = 4
    min_ngram: int = 1

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        n_tok = len(tokens)
        for n in range(min(self.max_ngram, n_tok - 1), self.min_ngram - 1, -1):
            tail = list(tokens[n_tok - n :])
            for start in range(n_tok - n - 1, -1, -1):
                if list(tokens[start : start + n]) == tail:
                    return list(tokens[start + n : start + n + k])
        return []


@dataclass(frozen=True)
class DraftSpec:
    """A parsed ``--draft-model``. ``kind``: "ngram", "layers" (self:N), "quantized" (self:int4,
    self:int4:N) or "model" (``model`` is a ``--model`` spec)."""

    kind: str
    layers: int | None = None
    precision: str | None = None
    model: str | None = None
    lookup: bool = False  # "+ngram": prompt lookup before the model draft


_SELF_HELP = "write self:N (first N layers), self:int4 or self:int8 (a quantized copy), or self:int4:N"


def parse_draft_spec(spec: str) -> DraftSpec:
    text = spec.strip()
    if text.endswith("+ngram"):
        base = parse_draft_spec(text[: -len("+ngram")])
        if base.kind == "ngram":
            raise ConfigError(f"--draft-model {spec!r}: +ngram goes after a model draft, e.g. self:int4+ngram")
        return replace(base, lookup=True)
    if text == "ngram":
        return DraftSpec("ngram")
    if not text.startswith("self:"):
        if not text:
            raise ConfigError("--draft-model is empty: give ngram, self:int4, self:N or a model path")
        return DraftSpec("model", model=text)
    parts = text[5:].split(":")
    precision = None
    if parts[0].isdigit():
        layers_text, rest = parts[0], parts[1:]
    elif parts[0].startswith(("int", "fp", "bf")):
        precision, rest = parts[0], parts[1:]
        if precision not in SELF_DRAFT_PRECISIONS:
            raise ConfigError(
                f"--draft-model {spec!r}: unknown self-draft precision {precision!r} "
                f"(choose {' or '.join(SELF_DRAFT_PRECISIONS)}); {_SELF_HELP}"
            )
        layers_text, rest = (rest[0], rest[1:]) if rest else (None, [])
    else:
        raise ConfigError(f"--draft-model {spec!r}: {_SELF_HELP}")
    if rest or (layers_text is not None and not layers_text.isdigit()):
        raise ConfigError(f"--draft-model {spec!r}: {_SELF_HELP}")
    layers = int(layers_text) if layers_text is not None else None
    return DraftSpec("quantized" if precision else "layers", layers=layers, precision=precision)


def _check_layers(model: Transformer, n_layers: int, *, allow_all: bool = False) -> None:
    total = model.args.n_layers
    top = total if allow_all else total - 1
    if not 1 <= n_layers <= top:
        raise ConfigError(f"a self-draft needs 1..{top} of the target's {total} layers, got {n_layers}")


def self_draft(model: Transformer, n_layers: int) -> Transformer:
    """The target's first ``n_layers`` with its final norm and head, sharing every weight."""
    _check_layers(model, n_layers)
    with torch.device("meta"):
        draft = Transformer(model.args.with_(n_layers=n_layers))
    draft.tok_embeddings = model.tok_embeddings
    draft.layers = nn.ModuleList(model.layers[:n_layers])
    draft.norm, draft.output = model.norm, model.output
    draft.inv_freq = model.inv_freq
    return draft.eval()


def quantized_self_draft(model: Transformer, precision: str = "int4", n_layers: int | None = None) -> Transformer:
    """A weight-only ``precision`` copy of the target (its first ``n_layers``, default all).

    The copy's modules start out holding the target's own tensors (no memory), then
    ``lhama.quant.quantize_model`` swaps each linear for a quantized one: the target keeps its
    full-precision linears, the draft shares only the embedding table and the norms.
    """
    from lhama.quant import QuantConfig, is_quantized, quantize_model

    if precision not in SELF_DRAFT_PRECISIONS:
        raise ConfigError(f"unknown self-draft precision {precision!r}: choose {' or '.join(SELF_DRAFT_PRECISIONS)}")
    if is_quantized(model):
        # A quantized target is already as cheap as an int4/int8 copy would be: no draft to gain
        # from (int8 target: 15 ms/step vs 11.5 for int4 on SmolLM2), and its fp weights are gone.
        raise ConfigError(
            f"a self:{precision} draft quantizes a copy of the target, but the target is already "
            f"quantized ({model.quant_config.mode}); load the target without --quantize, "
            "or use --draft-model ngram"
        )
    n = model.args.n_layers if n_layers is None else n_layers
    _check_layers(model, n, allow_all=True)
    with torch.device("meta"):
        draft = Transformer(model.args.with_(n_layers=n))
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("layers.") or int(k.split(".")[1]) < n}
    draft.load_state_dict(own, assign=True)
    draft.inv_freq = model.inv_freq
    quantize_model(draft, QuantConfig(precision))
    return draft.eval()


def build_draft(spec: str, loaded) -> tuple[Transformer | NgramDraft, str, NgramDraft | None]:
    """The draft for a ``--draft-model`` spelling, its kind (a ``DraftSpec.kind``) and the prompt
    lookup to try before it (``+ngram``), if any."""
    d = parse_draft_spec(spec)
    target = loaded.model
    lookup = NgramDraft(min_ngram=LOOKUP_MIN_NGRAM) if d.lookup else None
    if d.kind == "ngram":
        return NgramDraft(), d.kind, None
    if d.kind == "layers":
        return self_draft(target, d.layers), d.kind, lookup
    if d.kind == "quantized":
        return quantized_self_draft(target, d.precision, d.layers), d.kind, lookup
    from lhama.loader import load_model

    try:
        draft = load_model(d.model, dtype=target.dtype, device=target.device)
    except ModelNotFoundError as e:
        raise ConfigError(f"--draft-model {spec!r} is not ngram, self:int4, self:N, nor a model: {e}") from None
    probe = "Speculative decoding needs one tokenizer: <|eot_id|> 123 ünïcødé"
    if draft.tokenizer.encode(probe, bos=False) != loaded.tokenizer.encode(probe, bos=False):
        raise ConfigError(
            f"--draft-model {spec!r} tokenizes text differently from the target; "
            "a draft must share the target's tokenizer"
        )
    return draft.model, d.kind, lookup
