"""Vocab-parallel token embedding and LM head (Megatron-LM's and vLLM's VocabParallelEmbedding /
ParallelLMHead, written for lhama's one ``Transformer``).

The embedding table and the LM head are the two biggest single matrices of a Llama model
(128256 x 8192 each for Llama 3 70B: 2.1 GB at bf16). Rank r of tp keeps only the vocab rows
[r*Vp/tp, (r+1)*Vp/tp) of both, where Vp is the vocabulary rounded up to a multiple of tp; the
rows past the real vocabulary are zeros.

- Embedding: a rank looks up the ids it owns and returns zero rows for the others; an
  all-reduce (``attach_collectives``) sums the ranks' partial lookups. Exactly one rank adds a
  non-zero row per token, so the sum is the plain lookup, bit for bit.
- LM head: a rank computes the logits of its rows (column-parallel); an all-gather along the
  vocab dim gives every rank the full logits (so every rank can sample identically), with the
  padding columns cut off so nothing can sample them. The engine, where only rank 0 samples,
  gathers to rank 0 alone (``gather_to_first``).

Tied embeddings share the one shard: the head is the embedding's rows, as in one process.
The model stays the plain ``Transformer``: the table is swapped for ``VocabParallelEmbedding``
(an ``nn.Embedding``) and the head for a smaller ``nn.Linear``, so ``lhama.quant`` quantizes the
head shard like any head (int8 scales are per row: the shard's scales are the full head's rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

VOCAB_SHARDED = ("tok_embeddings.weight", "output.weight")


@dataclass(frozen=True)
class VocabShard:
    """Which vocab rows one rank holds."""

    vocab_size: int
    rank: int
    tp: int

    @property
    def per_rank(self) -> int:  # rows every rank allocates (the last one's tail is padding)
        return -(-self.vocab_size // self.tp)

    @property
    def padded(self) -> int:
        return self.per_rank * self.tp

    @property
    def start(self) -> int:
        return min(self.rank * self.per_rank, self.vocab_size)

    @property
    def stop(self) -> int:  # end of the real rows; [stop - start, per_rank) of the shard is padding
        return min(self.start + self.per_rank, self.vocab_size)


class VocabParallelEmbedding(nn.Embedding):
    """This rank's rows of the table. ``forward`` is the partial lookup (zeros for ids another
    rank owns); the all-reduce that completes it is a hook (``attach_collectives``)."""

    def __init__(self, shard: VocabShard, dim: int, *, device=None, dtype=None):
        super().__init__(shard.per_rank, dim, device=device, dtype=dtype)
        self.shard = shard

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.shard.start
        foreign = (local < 0) | (local >= self.shard.stop - self.shard.start)
        out = F.embedding(local.masked_fill(foreign, 0), self.weight)
        return out.masked_fill(foreign.unsqueeze(-1), 0)

    def extra_repr(self) -> str:
        s = self.shard
        return f"vocab rows [{s.start}, {s.stop}) of {s.vocab_size} (+{s.per_rank - (s.stop - s.start)} padding), dim {self.embedding_dim}"


def shard_vocab(model: nn.Module, rank: int, tp: int) -> VocabShard:
    """Swap ``model``'s embedding and head for this rank's vocab shards (same device and dtype,
    uninitialised: meant for a model built on the meta device and filled block by block)."""
    args = model.args
    shard = VocabShard(args.vocab_size, rank, tp)
    ref = model.tok_embeddings.weight
    model.tok_embeddings = VocabParallelEmbedding(shard, args.dim, device=ref.device, dtype=ref.dtype)
    model.output = nn.Linear(args.dim, shard.per_rank, bias=False, device=ref.device, dtype=ref.dtype)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.vocab_shard = shard
    return shard


def pad_rows(block: torch.Tensor, rows: int) -> torch.Tensor:
    """``block`` with zero rows appended up to ``rows`` (the last rank's padding)."""
    return block if block.shape[0] == rows else F.pad(block, (0, 0, 0, rows - block.shape[0]))


class VocabGather:
    """Forward hook of the LM head shard: all-gather the ranks' logit blocks along the last dim
    and cut the padding columns. Also callable on a block computed outside the module (the
    engine's packed CPU head): ``gather(local)``."""

    def __init__(self, shard: VocabShard, group=None):
        self.vocab_size, self.tp, self.group = shard.vocab_size, shard.tp, group

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.tp)]
        dist.all_gather(parts, local, group=self.group)
        full = torch.cat(parts, dim=-1)
        return full if full.shape[-1] == self.vocab_size else full[..., : self.vocab_size].contiguous()

    def gather_to_first(self, local: torch.Tensor) -> torch.Tensor | None:
        """The full logits on the group's first rank only (None elsewhere): the engine samples on
        rank 0 alone, so the followers need not receive the other ranks' blocks."""
        local = local.contiguous()
        first = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        if dist.get_rank() != first:
            dist.gather(local, None, dst=first, group=self.group)
            return None
        parts = [torch.empty_like(local) for _ in range(self.tp)]
        dist.gather(local, parts, dst=first, group=self.group)
        full = torch.cat(parts, dim=-1)
        return full if full.shape[-1] == self.vocab_size else full[..., : self.vocab_size].contiguous()

    def __call__(self, _module, _inp, out: torch.Tensor) -> torch.Tensor:
        return self.gather(out)


def all_reduce_hook(group=None):
    def hook(_mod, _inp, out):
        dist.all_reduce(out, group=group)
        return out

    return hook
