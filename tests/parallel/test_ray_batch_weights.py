"""`lhama batch --ray`: actors that share a machine load a GGUF's blocks as views of the file's
map (one page-cache copy for all of them), an actor alone on its node keeps anonymous copies.
In-process (no Ray cluster): the actor class is a plain class."""

from __future__ import annotations

import sys

import pytest
import torch

from lhama.engine import EngineConfig
from lhama.parallel.ray_batch import BatchWorker, ModelSpec, shared_machines
from lhama.quant.blocks import BlockEmbedding, BlockLinear, ggml_available


def test_actors_on_one_node_are_told_they_share_it():
    assert shared_machines(["n1", "n2", "n1", "n3"]) == [True, False, True, False]
    assert shared_machines(["n1"]) == [False]


def _mappings(model) -> set[str]:
    """The /proc/self/maps paths ('' for anonymous memory) holding the model's block buffers."""
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            spans.append((lo, hi, fields[5].strip() if len(fields) > 5 else ""))
    ptrs = [b.data_ptr() for m in model.modules() if isinstance(m, (BlockLinear, BlockEmbedding)) for b in m.buffers()]
    return {path for p in ptrs if p for lo, hi, path in spans if lo <= p < hi}


@pytest.mark.skipif(not ggml_available() or sys.platform != "linux", reason="raw blocks need the ggml kernels")
def test_a_worker_sharing_its_machine_loads_map_views_unless_told_otherwise(monkeypatch):
    threads = torch.get_num_threads()
    spec, cfg = ModelSpec(model="default"), EngineConfig(num_blocks=16, block_size=8)
    try:
        monkeypatch.delenv("LHAMA_WEIGHTS_MMAP", raising=False)
        alone = BatchWorker(spec, cfg, 1)
        assert alone.load(shared_machine=False) is False
        assert _mappings(alone.executor.loaded.model) == {""}  # anonymous copies
        del alone
        shared = BatchWorker(spec, cfg, 1)
        assert shared.load(shared_machine=True) is True
        paths = _mappings(shared.executor.loaded.model)
        assert paths and all(p.endswith(".gguf") for p in paths), paths
        del shared
        monkeypatch.setenv("LHAMA_WEIGHTS_MMAP", "0")  # the environment's own choice wins
        told = BatchWorker(spec, cfg, 1)
        assert told.load(shared_machine=True) is False
        assert _mappings(told.executor.loaded.model) == {""}
    finally:
        torch.set_num_threads(threads)
