"""Tokenizers rebuilt from the vocabulary a GGUF file embeds (``tokenizer.ggml.*``).

``gpt2`` vocabularies (byte-level BPE: tokens + merges) become a HF ``tokenizers`` BPE with the
pre-tokenizer regex that ``tokenizer.ggml.pre`` names (llama.cpp chooses its regex the same way);
``llama`` vocabularies (SentencePiece: pieces, scores, types) become a real SentencePiece model
proto, so SentencePiece itself encodes them.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lhama.errors import TokenizerError
from lhama.tokenizer.llama2 import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, SentencePieceTokenizer
from lhama.tokenizer.llama3 import PAT_STR as LLAMA3_PAT

# GPT-2's pre-tokenizer regex (what HF's ByteLevel(use_regex=True) applies).
GPT2_PAT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Qwen2's: Llama 3's with single digits.
QWEN2_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3")
# Pre-tokenizer names (llama.cpp's tokenizer.ggml.pre values) -> (split every digit first?, regex).
PRE_TOKENIZERS: dict[str, tuple[bool, str]] = {
    **{name: (False, LLAMA3_PAT) for name in LLAMA3_PRE},
    # SmolLM, StarCoder and Refact split each digit off, then apply GPT-2's regex.
    **{name: (True, GPT2_PAT) for name in ("smollm", "starcoder", "refact")},
    **{name: (False, GPT2_PAT) for name in ("default", "gpt2", "gpt-2", "")},
    "qwen2": (False, QWEN2_PAT),
}
# End-of-turn tokens of common chat vocabularies: generation stops on them as on eos.
END_OF_TURN_TOKENS = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|end|>",
    "<|eot|>",
)


def _pre_tokenizer(pre: str):
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"GGUF pre-tokenizer '{pre}' is not supported (supported: "
            f"{', '.join(sorted(p for p in PRE_TOKENIZERS if p))})"
        )
    digits, pattern = PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    return pre_tokenizers.Sequence(steps)


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters: printable Latin-1 bytes
    stand for themselves, the rest are shifted to U+0100 onwards."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def stop_ids_from(md: Mapping[str, Any], special_tokens: Mapping[str, int], eos_id: int) -> frozenset[int]:
    stops = {eos_id}
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if md.get(key) is not None:
            stops.add(int(md[key]))
    stops.update(special_tokens[t] for t in END_OF_TURN_TOKENS if t in special_tokens)
    return frozenset(stops)


class ByteLevelBPETokenizer:
    """A GGUF ``gpt2`` vocabulary (SmolLM2, Llama 3 ...) through HF ``tokenizers``."""

    kind = "bpe"

    def __init__(self, md: Mapping[str, Any], name: str = "gguf"):
        try:
            tokens: list[str] = list(md["tokenizer.ggml.tokens"])
        except KeyError:
            raise TokenizerError(f"{name}: no tokenizer.ggml.tokens in the GGUF metadata") from None
        types = list(md.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
        merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges") or []]
        self.pre = str(md.get("tokenizer.ggml.pre", "default"))
        self.name = name
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):  # duplicates would make ids ambiguous; keep the first
            vocab = {}
            for i, t in enumerate(tokens):
                vocab.setdefault(t, i)
        # Llama 3's tokenizer takes a whole pre-token from the vocabulary when present, before
        # any merge (HF: ignore_merges; llama.cpp does the same for llama-bpe).
        # llama.cpp matches user-defined tokens in any text, control tokens only when asked.
        marked = [i for i, ty in enumerate(types) if ty == CONTROL or ty == USER_DEFINED]  # one pass
        user = [tokens[i] for i in marked if types[i] == USER_DEFINED]
        control = [tokens[i] for i in marked if types[i] == CONTROL]

        # One HF tokenizer with the control tokens added as special; plain text is encoded with
        # ``encode_special_tokens`` on (control-token text goes through the BPE like any text).
        # Building the BPE model is ~40-70 ms of every load: one build, not one per mode.
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=self.pre in LLAMA3_PRE, fuse_unk=False)
        self._hf = HFTokenizer(model)
        self._hf.pre_tokenizer = _pre_tokenizer(self.pre)
        self._hf.decoder = decoders.ByteLevel()
        if user:
            self._hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
        if control:
            self._hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        self._hf_lock = threading.Lock()  # the mode is the tokenizer's state: one encode at a time
        self.special_tokens = {tokens[i]: vocab[tokens[i]] for i in marked}
        self._control = frozenset(i for i in marked if types[i] == CONTROL)
        # Each token's bytes are worked out on first use (all 49k-128k up front was ~0.1-0.3 s of
        # every load, for the few hundred tokens a session decodes).
        self._tokens, self._types, self._bytes = tokens, types, {}
        self.vocab_size = len(tokens)
        bos = md.get("tokenizer.ggml.bos_token_id")
        eos = md.get("tokenizer.ggml.eos_token_id")
        self.bos_token = tokens[int(bos)] if bos is not None and int(bos) < len(tokens) else None
        # llama.cpp prepends bos for Llama 3 vocabularies unless the file says otherwise.
        add_bos = md.get("tokenizer.ggml.add_bos_token", self.pre in LLAMA3_PRE)
        self.bos_id = int(bos) if bos is not None and add_bos else None
        self.eos_id = int(eos) if eos is not None else 0
        self.eos_token = tokens[self.eos_id]
        self.stop_ids = stop_ids_from(md, self.special_tokens, self.eos_id)

    def hf_tokenizer(self) -> HFTokenizer:
        """The equivalent HF tokenizer (special tokens included), e.g. to save as tokenizer.json."""
        with self._hf_lock:
            self._hf.encode_special_tokens = False
            return HFTokenizer.from_str(self._hf.to_str())

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        with self._hf_lock:
            self._hf.encode_special_tokens = not allow_special
            ids = self._hf.encode(text, add_special_tokens=False).ids
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids if not (skip_special and int(i) in self._control)).decode(
            "utf-8", errors="replace"
        )

    def token_bytes(self, token_id: int) -> bytes:
        try:
            raw = self._bytes.get(token_id)
        except TypeError:  # unhashable
            raw = None
        if raw is None:
            try:
                i = operator.index(token_id)
            except TypeError:
                i = -1
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
            raw = self._bytes[i] = self._token_bytes(i)
        return raw

    def _token_bytes(self, i: int) -> bytes:
        t = self._tokens[i]
        if self._types[i] in (CONTROL, USER_DEFINED):
            return t.encode()
        table = unicode_to_byte()
        try:
            return bytes(table[c] for c in t)
        except KeyError:  # outside the byte alphabet (HF does the same): the text as is
            return t.encode()

    def is_special(self, token_id: int) -> bool:
        return token_id in self._control


def sentencepiece_proto_from_gguf(md: Mapping[str, Any]) -> bytes:
    """A serialized SentencePiece ModelProto holding a GGUF ``llama`` vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens = list(md["tokenizer.ggml.tokens"])
    scores = list(md.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    types = list(md.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    unk = int(md.get("tokenizer.ggml.unknown_token_id", 0))
    if UNKNOWN not in types and 0 <= unk < len(types):
        types[unk] = UNKNOWN  # SentencePiece refuses a vocabulary without an unknown piece
    proto = pb.ModelProto()
    for tok, score, ty in zip(tokens, scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score = tok, float(score)
        piece.type = ty if ty in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL
    ts = proto.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE  # llama.cpp's SPM tokenizer merges by score, like SentencePiece BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = BYTE in types
    # SentencePiece finds bos/eos/unk/pad by piece text, not by id.
    for role, key in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        i = md.get(f"tokenizer.ggml.{key}_token_id")
        i = unk if role == "unk" else (int(i) if i is not None else -1)
        if role == "pad" and i in (unk, md.get("tokenizer.ggml.bos_token_id"), md.get("tokenizer.ggml.eos_token_id")):
            i = -1  # SentencePiece rejects a pad piece shared with another role
        setattr(ts, f"{role}_id", i)
        if 0 <= i < len(tokens):
            setattr(ts, f"{role}_piece", tokens[i])
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    ns.remove_extra_whitespaces = bool(md.get("tokenizer.ggml.remove_extra_whitespaces", False))
    ns.escape_whitespaces = True
    return proto.SerializeToString()


def sentencepiece_from_gguf(md: Mapping[str, Any], name: str = "gguf") -> SentencePieceTokenizer:
    tok = SentencePieceTokenizer(model_proto=sentencepiece_proto_from_gguf(md), name=name)
    bos, eos = md.get("tokenizer.ggml.bos_token_id"), md.get("tokenizer.ggml.eos_token_id")
    if bos is not None:
        tok.bos_id, tok.bos_token = int(bos), tok.piece(int(bos))
    if md.get("tokenizer.ggml.add_bos_token", True) is False:
        tok.bos_id = None
    if eos is not None:
        tok.eos_id, tok.eos_token = int(eos), tok.piece(int(eos))
    tok.stop_ids = stop_ids_from(md, tok.special_tokens, tok.eos_id)
    return tok


def read_tokenizer_metadata(path: str | Path) -> dict[str, Any]:
    """The ``tokenizer.*`` keys of a GGUF file (through the cached reader model loading uses)."""
    from lhama.gguf_file import read_gguf_metadata

    return {k: v for k, v in read_gguf_metadata(path).items() if k.startswith("tokenizer.")}


def tokenizer_from_gguf_metadata(md: Mapping[str, Any], name: str = "gguf"):
    if "tokenizer.ggml.tokens" not in md:
        raise TokenizerError(
            f"{name}: this GGUF carries no vocabulary (tokenizer.ggml.tokens); pass --tokenizer with a tokenizer file"
        )
    model = md.get("tokenizer.ggml.model")
    if model == "gpt2":
        return ByteLevelBPETokenizer(md, name=name)
    if model == "llama":
        return sentencepiece_from_gguf(md, name=name)
    raise TokenizerError(
        f"{name}: GGUF tokenizer model '{model}' is not supported "
        "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)"
    )


def tokenizer_from_gguf(path: str | Path):
    return tokenizer_from_gguf_metadata(read_tokenizer_metadata(path), name=str(path))


def gguf_vocab_from_tiktoken(ranks: Mapping[bytes, int], special_tokens: Mapping[str, int]) -> dict[str, Any]:
    """``tokenizer.ggml.tokens/token_type/merges`` for a tiktoken vocabulary (Llama 3's), the way
    llama.cpp's converter writes it: byte-level token text and the merges that rebuild each token."""
    enc = byte_to_unicode()
    text = lambda b: "".join(enc[x] for x in b)  # noqa: E731
    size = max([*ranks.values(), *special_tokens.values()]) + 1
    tokens, types = [f"[PAD{i}]" for i in range(size)], [UNUSED] * size
    merges: list[tuple[int, int, int, str]] = []
    for tok, rank in ranks.items():
        tokens[rank], types[rank] = text(tok), NORMAL
        # Every split of a token into two known tokens is a merge at the token's rank; sorting by
        # (rank, left rank, right rank) orders them as tiktoken's lowest-rank-first rule would.
        for k in range(1, len(tok)):
            left, right = ranks.get(tok[:k]), ranks.get(tok[k:])
            if left is not None and right is not None:
                merges.append((rank, left, right, f"{text(tok[:k])} {text(tok[k:])}"))
    for name, i in special_tokens.items():
        tokens[i], types[i] = name, CONTROL
    merges.sort()
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": [m[3] for m in merges],
    }
