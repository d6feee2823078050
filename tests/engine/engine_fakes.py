"""A word-level tokenizer and chat format for engine tests: every id has readable text, so stop
strings and text deltas are checkable with random-weight models (and without the real
tokenizer packages)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

BOS, EOS, EOT, USER, ASSISTANT, SYSTEM = 256, 257, 258, 259, 260, 261
SPECIAL = {BOS: "<s>", EOS: "</s>", EOT: "<eot>", USER: "<user>", ASSISTANT: "<assistant>", SYSTEM: "<system>"}


class WordTokenizer:
    """Id i < 256 is the word ``w{i}`` followed by a space; a few special ids above."""

    def __init__(self, vocab_size: int = 300):
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id = BOS, EOS
        self.stop_ids = frozenset({EOS, EOT})
        self.special_tokens = {v: k for k, v in SPECIAL.items()}

    def token_bytes(self, i: int) -> bytes:
        if i in SPECIAL:
            return SPECIAL[i].encode()
        return f"w{i} ".encode()

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        ids = [BOS] if bos else []
        for word in text.split():
            ids.append(
                int(word[1:]) % 256 if word.startswith("w") and word[1:].isdigit() else sum(map(ord, word)) % 256
            )
        return ids + ([EOS] if eos else [])

    def decode(self, ids, *, skip_special: bool = False) -> str:
        return "".join(self.token_bytes(i).decode() for i in ids if not (skip_special and i in SPECIAL))


class WordChatFormat:
    name = "test-words"

    def __init__(self, tokenizer: WordTokenizer):
        self.tokenizer = tokenizer
        self.stop_ids = frozenset({EOT, EOS})

    def encode_dialog(self, messages, *, tools=None, add_generation_prompt: bool = True) -> list[int]:
        role_id = {"user": USER, "assistant": ASSISTANT, "system": SYSTEM}
        ids = [BOS]
        for m in messages:
            if m.get("role") not in role_id or not isinstance(m.get("content"), str):
                from lhama.errors import ChatFormatError

                raise ChatFormatError(f"bad message {m!r}")
            ids += [role_id[m["role"]]] + self.tokenizer.encode(m["content"]) + [EOT]
        return ids + ([ASSISTANT] if add_generation_prompt else [])

    def decode_assistant(self, ids) -> dict:
        ids = [i for i in ids if i not in self.stop_ids]
        return {"role": "assistant", "content": self.tokenizer.decode(ids)}


@dataclass
class FakeLoaded:
    model: object
    tokenizer: WordTokenizer
    chat_format: WordChatFormat
    args: object
    name: str = "tiny-test"

    @property
    def context_length(self) -> int:
        return self.args.max_seq_len


def tiny_args(kind: str = "llama3", *, vocab_size: int = 300, max_seq_len: int = 256):
    from lhama.model import get_config

    return get_config(f"tiny-{kind}").args.with_(vocab_size=vocab_size, max_seq_len=max_seq_len)


def tiny_loaded(seed: int = 1, **kw) -> FakeLoaded:
    from lhama.model import build_model

    args = tiny_args(**kw)
    model = build_model(args, init="random", seed=seed).eval()
    tok = WordTokenizer(args.vocab_size)
    return FakeLoaded(model, tok, WordChatFormat(tok), args)


def random_prompts(lengths, vocab: int = 256, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def agree_up_to_near_tie(got, ref, tol: float) -> int:
    """Greedy tokens equal to the reference's, and logprobs within ``tol``, until they either end
    or first differ at a near-tie: the reference ranks both tokens in its top 4, ``tol`` apart at
    most (another kernel or batch shape rounds differently, so a near-tie may flip; three or four
    tokens can be that close, hence the top 4). ``got``/``ref``: steps, or results holding
    ``.steps``, with logprobs and top-4 logprobs. Returns how many agreed."""
    got, ref = getattr(got, "steps", got), getattr(ref, "steps", ref)
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        if g.token_id != r.token_id:
            top = dict(r.top_logprobs)
            assert g.token_id in top and r.logprob - top[g.token_id] <= tol, (i, g, r)
            return i
        assert abs(g.logprob - r.logprob) <= tol, (i, g, r)
    return len(ref)
