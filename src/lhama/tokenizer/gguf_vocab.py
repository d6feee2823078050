"""Tokenizers rebuilt from the vocabulary a GGUF file embeds (``tokenizer.ggml.*``).

``gpt2`` vocabularies (byte-level BPE: tokens + merges) become a HF ``tokenizers`` BPE with the
pre-tokenizer that ``tokenizer.ggml.pre`` names; ``llama`` vocabularies (SentencePiece: pieces,
scores, types) become a real SentencePiece model proto, so SentencePiece itself encodes them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lhama.errors import TokenizerError
from lhama.tokenizer.llama2 import SentencePieceTokenizer
from lhama.tokenizer.llama3 import PAT_STR as LLAMA3_PAT

# GGUF token types (the same numbering SentencePiece uses).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

GPT2_PAT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    split = lambda pat: pre_tokenizers.Split(Regex(pat), behavior="isolated")  # noqa: E731
    if pre in ("llama-bpe", "llama3", "llama-v3"):
        return pre_tokenizers.Sequence([split(LLAMA3_PAT), byte_level])
    if pre in ("smollm", "starcoder", "refact"):
        # Every digit is its own token, then GPT-2's regex (SmolLM's HF tokenizer does the same).
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), split(GPT2_PAT), byte_level])
    if pre in ("default", "gpt2", "gpt-2", ""):
        return pre_tokenizers.Sequence([split(GPT2_PAT), byte_level])
    raise TokenizerError(f"GGUF pre-tokenizer '{pre}' is not supported (supported: llama-bpe, smollm, gpt2/default)")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible map of bytes to printable characters, inverted."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


class ByteLevelBPETokenizer:
    kind = "bpe"

    def __init__(self, md: dict[str, Any], name: str = "gguf"):
        tokens: list[str] = md["tokenizer.ggml.tokens"]
        merges = md.get("tokenizer.ggml.merges") or []
        types = md.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        pre = str(md.get("tokenizer.ggml.pre", "default"))
        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        llama3 = pre in ("llama-bpe", "llama3", "llama-v3")
        specials = [t for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)]

        def build(with_specials: bool) -> HFTokenizer:
            tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=llama3, fuse_unk=False))
            tok.pre_tokenizer = _pre_tokenizer(pre)
            tok.decoder = decoders.ByteLevel()
            if with_specials and specials:
                tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
            return tok

        self._plain, self._special = build(False), build(True)
        self.special_tokens = {t: vocab[t] for t in specials}
        self._control = frozenset(i for i, ty in enumerate(types) if ty == CONTROL)
        self._tokens = tokens
        self.vocab_size = len(tokens)
        bos = md.get("tokenizer.ggml.bos_token_id")
        self.bos_id = int(bos) if bos is not None and md.get("tokenizer.ggml.add_bos_token", True) else None
        self.eos_id = int(md.get("tokenizer.ggml.eos_token_id", 0))
        stops = {self.eos_id}
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            if md.get(key) is not None:
                stops.add(int(md[key]))
        for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>"):
            if t in self.special_tokens:
                stops.add(self.special_tokens[t])
        self.stop_ids = frozenset(stops)
        self.name = name

    def hf_tokenizer(self) -> HFTokenizer:
        """The equivalent ``tokenizers.Tokenizer`` (special tokens included), e.g. to save as tokenizer.json."""
        return self._special

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        enc = (self._special if allow_special else self._plain).encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids
                        if not (skip_special and int(i) in self._control)).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        tok = self._tokens[token_id]
        if token_id in self.special_tokens.values():
            return tok.encode()
        table = _byte_decoder()
        try:
            return bytes(table[c] for c in tok)
        except KeyError:  # a token outside the byte alphabet: take its text as is
            return tok.encode()

    def is_special(self, token_id: int) -> bool:
        return token_id in self._control


def sentencepiece_from_gguf(md: dict[str, Any], name: str = "gguf") -> SentencePieceTokenizer:
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens = md["tokenizer.ggml.tokens"]
    scores = md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = md.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    proto = pb.ModelProto()
    for tok, score, ty in zip(tokens, scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score = tok, float(score)
        piece.type = ty if ty in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL
    ts = proto.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = any(t == BYTE for t in types)
    ts.unk_id = int(md.get("tokenizer.ggml.unknown_token_id", 0))
    ts.bos_id = int(md.get("tokenizer.ggml.bos_token_id", -1))
    ts.eos_id = int(md.get("tokenizer.ggml.eos_token_id", -1))
    ts.pad_id = int(md.get("tokenizer.ggml.padding_token_id", -1)) if md.get("tokenizer.ggml.padding_token_id") is not None else -1
    if ts.pad_id in (ts.bos_id, ts.eos_id, ts.unk_id):
        ts.pad_id = -1
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    tok = SentencePieceTokenizer(model_proto=proto.SerializeToString(), name=name)
    if md.get("tokenizer.ggml.add_bos_token") is False:
        tok.bos_id = None
    return tok


def tokenizer_from_gguf(path: str | Path):
    from lhama.checkpoints import read_gguf_metadata

    md = read_gguf_metadata(path)
    model = md.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in md:
        raise TokenizerError(f"{path}: this GGUF carries no vocabulary (tokenizer.ggml.tokens); pass --tokenizer")
    if model == "gpt2":
        return ByteLevelBPETokenizer(md, name=str(path))
    if model == "llama":
        return sentencepiece_from_gguf(md, name=str(path))
    raise TokenizerError(f"{path}: GGUF tokenizer model '{model}' is not supported (gpt2 BPE or llama SentencePiece)")
