"""Constrained decoding: a per-step logits mask that keeps the output a valid prefix of JSON
matching a schema (``response_format`` json_object / json_schema, ``tool_choice`` required or
named).

The grammar work is done by llguidance (maintained, used by llama.cpp and vLLM): it compiles a
JSON schema to a grammar and computes, per step, the bitmask of tokens that keep the output
valid, using the token byte strings we hand it once at start-up. We only turn its bitmask into
a logits mask and feed it the sampled tokens.

A ``GrammarConstraint`` is a ``lhama.generate.sampling.LogitsProcessor``: put it in
``SamplingParams(logits_processor=...)`` of an ``n=1`` request and the sampler (the engine's
and the reference loop's) masks that sequence's logits each step.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lhama.errors import SamplingError

log = logging.getLogger("lhama.generate")
# Whitespace between JSON tokens is allowed (models write pretty JSON) but bounded: llguidance's
# default is unbounded, and a small model can then emit newlines until max_tokens.
JSON_OPTIONS = {"whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,16}"}


class _ByteVocab:
    """What ``llguidance.TokenizerWrapper`` needs: every id's bytes, the special ids, and an encoder."""

    def __init__(self, tokenizer, eos_id: int):
        self._tok = tokenizer
        self.eos_token_id = eos_id
        self.bos_token_id = getattr(tokenizer, "bos_id", None)
        self.tokens = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        self.special_token_ids = sorted(set((getattr(tokenizer, "special_tokens", None) or {}).values()))

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tok.encode(text)


class GrammarCompiler:
    """Turns JSON schemas into fresh per-sequence constraints. The token table is built on first
    use (a second or so for a 128K vocabulary) and shared by every request after that."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = sorted({int(t) for t in stop_ids})
        self._lltok = None
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, loaded) -> GrammarCompiler:
        """A compiler for a loaded model: its vocabulary, and every id that ends a turn (the
        tokenizer's stops and the chat format's) as a way for the grammar to finish."""
        tok = loaded.tokenizer
        stops = set(getattr(tok, "stop_ids", ()) or ()) | set(getattr(loaded.chat_format, "stop_ids", ()) or ())
        return cls(tok, loaded.args.vocab_size, sorted(stops))

    @property
    def lltokenizer(self):
        with self._lock:
            if self._lltok is None:
                import llguidance

                eos = self.stop_ids[0] if self.stop_ids else self.tokenizer.eos_id
                wrapper = llguidance.TokenizerWrapper(_ByteVocab(self.tokenizer, eos))
                self._lltok = llguidance.LLTokenizer(wrapper, n_vocab=self.vocab_size, eos_token=self.stop_ids or [eos])
            return self._lltok

    def grammar_for_schema(self, schema: dict[str, Any], param: str) -> str:
        """A checked llguidance grammar for ``schema``; SamplingError naming ``param`` when the
        schema is not valid JSON Schema or uses something the grammar compiler cannot do."""
        import jsonschema
        import llguidance

        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as e:
            raise SamplingError(param, f"not a valid JSON schema: {e.message}") from None
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise SamplingError(param, f"cannot compile the JSON schema: {e}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.lltokenizer)
        if is_error:
            raise SamplingError(param, f"unsupported JSON schema: {messages[0] if messages else 'invalid'}")
        return grammar

    def constraint(self, grammar: str) -> GrammarConstraint:
        import llguidance

        matcher = llguidance.LLMatcher(self.lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise SamplingError("response_format", f"cannot use the schema: {matcher.get_error()}")
        return GrammarConstraint(matcher, self.vocab_size, self.stop_ids)


class GrammarConstraint:
    """One sequence's constraint; stateful (it consumes the tokens sampled so far)."""

    def __init__(self, matcher, vocab_size: int, stop_ids: Sequence[int]):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.stop_ids = torch.tensor(list(stop_ids), dtype=torch.long)
        self.consumed = 0

    def allowed(self, output_ids: Sequence[int]) -> np.ndarray:
        """Bool mask [vocab_size] of the tokens that may follow ``output_ids``."""
        new = list(output_ids[self.consumed :])
        if new:
            self.matcher.consume_tokens(new)
            self.consumed = len(output_ids)
        if self.matcher.is_error():
            # Cannot happen while the engine follows the mask; end the sequence rather than emit junk.
            log.warning("constraint in error state: %s", self.matcher.get_error())
            mask = np.zeros(self.vocab_size, dtype=bool)
            mask[self.stop_ids.numpy()] = True
            return mask
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        # Token i is bit i % 32 of little-endian 32-bit word i // 32, i.e. bit i % 8 of byte i // 8.
        return np.unpackbits(bits, bitorder="little")[: self.vocab_size].view(bool)

    def __call__(self, output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        mask = self.allowed(output_ids)
        if logits.shape[-1] > mask.shape[0]:  # embedding rows past the tokenizer's vocabulary
            mask = np.concatenate([mask, np.zeros(logits.shape[-1] - mask.shape[0], dtype=bool)])
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            # numpy, not torch: a small torch op on a busy CPU can cost milliseconds in thread
            # start-up, more than the whole grammar step.
            return torch.from_numpy(np.where(mask, logits.numpy(), np.float32("-inf")))
        return logits.masked_fill(~torch.from_numpy(mask).to(logits.device), float("-inf"))
