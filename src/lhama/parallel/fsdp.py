"""Data-parallel training with FSDP2 (``torch.distributed.fsdp.fully_shard``): each process holds
1/world of every parameter, gradient and optimizer state, and gathers a block's weights only
while that block runs."""

from __future__ import annotations

from torch import nn


def fsdp_wrap(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place over the joined process group (``runtime.init_distributed``):
    each transformer block is its own shard group, the root holds embeddings, final norm and head
    (one group, so tied embeddings stay one parameter)."""
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(model, "layers", []):
        fully_shard(layer)
    fully_shard(model)
    return model
