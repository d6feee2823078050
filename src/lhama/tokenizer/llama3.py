"""Llama 3 tokenizer: tiktoken BPE over 128000 ranks plus 256 special tokens."""

from __future__ import annotations

import base64
import importlib.util
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from lhama.errors import TokenizerError

# Meta's pre-tokenizer: contractions, letters, 1-3 digit groups, punctuation runs, newlines, spaces.
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The named special tokens in id order after the BPE ranks; the rest of the 256 are reserved.
NAMED_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
NUM_SPECIAL = 256
# tiktoken's regex backtracks badly on very long inputs and long runs without (or with only)
# whitespace; Meta feeds it bounded pieces. Same limits, so ids stay identical.
MAX_ENCODE_CHARS = 400_000
MAX_SAME_CLASS_CHARS = 25_000


def default_tokenizer_path() -> Path:
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("the Llama 3 tokenizer ships in the 'llama-models' package: pip install llama-models")
    path = Path(list(spec.submodule_search_locations)[0]) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise TokenizerError(f"{path} is missing; reinstall llama-models")
    return path


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken BPE file: one 'base64(token) rank' per line."""
    ranks: dict[bytes, int] = {}
    n = 0
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):  # noqa: B007 (n names the bad line below)
                if not line.strip():
                    continue
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the tokenizer file ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenizerError(
            f"{path}: line {n} is not a tiktoken 'base64 rank' pair ({e}); is this a SentencePiece model?"
        ) from None
    if not ranks:
        raise TokenizerError(f"{path}: empty tokenizer file")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def looks_like_tiktoken(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            first = f.readline().split()
        return len(first) == 2 and first[1].isdigit() and len(base64.b64decode(first[0], validate=True)) > 0
    except Exception:
        return False


def _split_same_class_runs(s: str, limit: int) -> Iterator[str]:
    """Cut ``s`` so no piece has more than ``limit`` consecutive whitespace or non-whitespace chars."""
    run_len, run_space, start = 0, None, 0
    for i, ch in enumerate(s):
        space = ch.isspace()
        run_len = run_len + 1 if space == run_space else 1
        run_space = space
        if run_len > limit:
            yield s[start:i]
            start, run_len = i, 1
    yield s[start:]


class Llama3Tokenizer:
    kind = "llama3"

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_tokenizer_path()
        ranks = read_tiktoken_ranks(self.path)
        self.mergeable_ranks = ranks  # bytes -> rank, e.g. to write the vocabulary into a GGUF
        n = len(ranks)
        names = NAMED_SPECIALS + [
            f"<|reserved_special_token_{i}|>" for i in range(2, 2 + NUM_SPECIAL - len(NAMED_SPECIALS))
        ]
        self.special_tokens = {name: n + i for i, name in enumerate(names)}
        import tiktoken  # here: ~60 ms of import that a GGUF or SentencePiece vocabulary never needs

        self._enc = tiktoken.Encoding(
            name=self.path.name, pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self._id_to_special = {v: k for k, v in self.special_tokens.items()}
        self.vocab_size = n + NUM_SPECIAL
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.eot_id = self.special_tokens["<|eot_id|>"]
        self.eom_id = self.special_tokens["<|eom_id|>"]
        self.python_tag_id = self.special_tokens["<|python_tag|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        self.stop_ids = frozenset({self.eos_id, self.eom_id, self.eot_id})
        self.bos_token, self.eos_token = "<|begin_of_text|>", "<|end_of_text|>"

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        allowed = "all" if allow_special else set()
        ids: list[int] = [self.bos_id] if bos else []
        for i in range(0, len(text), MAX_ENCODE_CHARS):
            for piece in _split_same_class_runs(text[i : i + MAX_ENCODE_CHARS], MAX_SAME_CLASS_CHARS):
                ids += self._enc.encode(piece, allowed_special=allowed, disallowed_special=())
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise TokenizerError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        if skip_special:
            ids = [i for i in ids if i not in self._id_to_special]
        return self._enc.decode(ids)

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._id_to_special:
            return self._id_to_special[token_id].encode()
        try:
            return self._enc.decode_single_token_bytes(token_id)
        except KeyError:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})") from None

    def is_special(self, token_id: int) -> bool:
        return token_id in self._id_to_special


@lru_cache(maxsize=4)
def load_llama3_tokenizer(path: str | None = None) -> Llama3Tokenizer:
    """Building the 128K-rank encoder takes ~1 s; share it."""
    return Llama3Tokenizer(path)
