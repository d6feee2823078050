"""The lazy reader every checkpoint format provides: the model's shape and each tensor's, read
from headers alone, then any tensor (or a slice of it along one dimension) on demand.

    with open_reader("model.gguf") as r:
        r.args, r.shapes["layers.0.attention.wq.weight"]
        r.read("layers.0.attention.wq.weight", dim=0, start=0, stop=64)   # rows 0..63

Full loading (``lhama.checkpoints.loader``) reads every tensor whole; tensor-parallel loading
(``lhama.parallel.shard_load``) reads only the block its rank owns. Weights stay in the file's
memory map until read; what ``read`` returns may be a view of it (copy before writing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lhama.checkpoints.bounds import check_bounds
from lhama.checkpoints.layout import NameTable, check_state_dict
from lhama.model.args import ModelArgs


class CheckpointReader:
    format: str  # "gguf" | "hf" | "meta"
    path: Path  # the file, or the folder when the weights span several files
    args: ModelArgs
    shapes: dict[str, tuple[int, ...]]  # our name -> torch shape; no output.weight when tied
    metadata: dict[str, Any]  # GGUF key/values, HF config or params.json
    names: NameTable | None = None  # the format's own tensor names, where it has them

    def read(
        self, name: str, dim: int | None = None, start: int | None = None, stop: int | None = None
    ) -> torch.Tensor:
        """Tensor ``name`` (our name) in the precision the file stores (quantized GGUF blocks
        come out as float32); with ``dim``, only ``[start, stop)`` along that dimension."""
        raise NotImplementedError

    def name_of(self, ours: str) -> str:
        """The file's own name for one of ours, for messages."""
        try:
            return self.names.to_theirs(ours) if self.names is not None else ours
        except KeyError:
            return ours

    def validate(self) -> None:
        """Metadata within bounds and matching the tensor table, every tensor present with the
        right shape: all from headers, before a byte of weights is read or allocated."""
        check_bounds(self.args, self.path)  # bounds expected_shapes' table, built next
        check_state_dict(
            {n: torch.empty(s, device="meta") for n, s in self.shapes.items()},
            self.args,
            self.path,
            name_of=self.name_of,
        )

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def narrow(t: torch.Tensor, dim: int | None, start: int | None, stop: int | None) -> torch.Tensor:
    if dim is None:
        return t
    start = 0 if start is None else start
    stop = t.shape[dim] if stop is None else stop
    return t.narrow(dim, start, stop - start)
