"""SentencePiece tokenizers: Llama 2's ``tokenizer.model`` (BPE, byte fallback, bos 1, eos 2) and
the SentencePiece vocabularies rebuilt from GGUF files.

SentencePiece itself encodes. Decoding is done here, token by token, with SentencePiece's own rules
(the dummy-prefix space dropped at the start, ``<unk>`` shown as its surface, one U+FFFD per byte
of a broken byte-fallback sequence), so that streaming (``IncrementalDecoder``) and ``decode`` are
one algorithm and always agree; the tests check both against ``SentencePieceProcessor.DecodeIds``.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from pathlib import Path

from lhama.errors import TokenizerError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # ModelProto.SentencePiece.Type
SPACE = "\u2581"  # "▁", SentencePiece's visible space


def _bytewise_replace(err: UnicodeDecodeError):
    # SentencePiece turns every byte of an invalid UTF-8 sequence into its own U+FFFD, where
    # Python's "replace" uses one per maximal invalid subpart; match SentencePiece.
    return "\ufffd" * (err.end - err.start), err.end


BYTEWISE_ERRORS = "lhama-bytewise-replace"
codecs.register_error(BYTEWISE_ERRORS, _bytewise_replace)


class SentencePieceTokenizer:
    kind = "sentencepiece"
    decode_errors = BYTEWISE_ERRORS
    special_breaks_bytes = True

    def __init__(self, path: str | Path | None = None, *, model_proto: bytes | None = None, name: str = ""):
        if path is None and model_proto is None:
            raise TokenizerError("a SentencePiece tokenizer needs a tokenizer.model file")
        self.path = Path(path) if path is not None else None
        self.name = name or str(path)
        # Imported here: a GGUF or tiktoken vocabulary never needs SentencePiece or protobuf
        # (~15-20 ms of every start-up).
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as sp_pb

        self._sp = spm.SentencePieceProcessor()
        try:
            if model_proto is None:
                model_proto = Path(path).read_bytes()
            self._sp.LoadFromSerializedProto(model_proto)
            proto = sp_pb.ModelProto()
            proto.ParseFromString(model_proto)
        except Exception as e:  # sentencepiece raises bare OSError/RuntimeError on bad files
            raise TokenizerError(f"{self.name}: not a SentencePiece model ({e})") from None
        sp = self._sp
        self.vocab_size = sp.GetPieceSize()
        self._types = [p.type for p in proto.pieces]
        self._pieces = [p.piece for p in proto.pieces]
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else 0
        self.bos_token = self._pieces[self.bos_id] if self.bos_id is not None else None
        self.eos_token = self._pieces[self.eos_id]
        # Control and unknown pieces are never produced from text by SentencePiece, so with
        # allow_special we split them out ourselves (as llama.cpp and HF do). User-defined pieces
        # are always matched by SentencePiece itself, as in llama.cpp.
        self.special_tokens = {
            p: i for i, (p, t) in enumerate(zip(self._pieces, self._types)) if t in (CONTROL, UNKNOWN, USER_DEFINED)
        }
        self._control = frozenset(i for i, t in enumerate(self._types) if t == CONTROL)
        splittable = sorted(
            (p for p, i in self.special_tokens.items() if self._types[i] != USER_DEFINED and p), key=len, reverse=True
        )
        self._special_re = re.compile("(" + "|".join(map(re.escape, splittable)) + ")") if splittable else None
        self.stop_ids = frozenset({self.eos_id})
        ns = proto.normalizer_spec
        # SentencePiece drops the space of a leading "▁" when it adds one while encoding
        # (add_dummy_prefix) or squeezes whitespace (remove_extra_whitespaces: every leading one).
        self._strip_first = ns.add_dummy_prefix or ns.remove_extra_whitespaces
        self._strip_all_leading = ns.remove_extra_whitespaces
        self._unk_surface = (
            proto.trainer_spec.unk_surface if proto.trainer_spec.HasField("unk_surface") else " \u2047 "
        ).encode()
        self._bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        ids = [self.bos_id] if bos and self.bos_id is not None else []
        if allow_special and self._special_re is not None:
            # Each text fragment between special tokens is encoded on its own, so it gets its own
            # dummy prefix: what llama.cpp and HF's (legacy) Llama tokenizer do.
            for k, part in enumerate(self._special_re.split(text)):
                if k % 2:
                    ids.append(self.special_tokens[part])
                elif part:
                    ids += self._sp.EncodeAsIds(part)
        else:
            ids += self._sp.EncodeAsIds(text)
        if eos:
            ids.append(self.eos_id)
        return ids

    # -- decoding --------------------------------------------------------------------------------
    def _piece_bytes(self, i: int) -> bytes:
        t, piece = self._types[i], self._pieces[i]
        if t == BYTE:
            return bytes([int(piece[3:-1], 16)])  # "<0xAB>"
        if t == UNKNOWN:
            return self._unk_surface
        if t == CONTROL:
            return piece.encode()
        return piece.replace(SPACE, " ").encode()

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self._bytes[token_id]
        except (IndexError, TypeError):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})") from None

    def token_bytes_at_start(self, token_id: int) -> tuple[bytes, bool]:
        """The bytes of a token that nothing visible precedes, and whether the next token is still
        at the start. Mirrors SentencePiece's Decode: only a leading "▁" of a normal piece is
        dropped; bytes, <unk> and shown control tokens end the start."""
        data = self.token_bytes(token_id)
        t = self._types[token_id]
        if t not in (NORMAL, USER_DEFINED, UNUSED) or not self._strip_first:
            return data, not data
        consumed = data.startswith(b" ")
        if consumed:
            data = data[1:]
        still = not data and (self._strip_all_leading or not consumed)
        return data, still

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        from lhama.tokenizer.incremental import IncrementalDecoder

        dec = IncrementalDecoder(self, skip_special=skip_special)
        return "".join(dec.push(i) for i in ids) + dec.flush()

    def is_special(self, token_id: int) -> bool:
        return token_id in self._control

    def piece(self, token_id: int) -> str:
        return self._pieces[token_id]
