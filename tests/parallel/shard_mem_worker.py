"""Load a checkpoint in a fresh process and print the peak growth of its anonymous memory.

    python shard_mem_worker.py PATH RANK TP     # one tensor-parallel rank's shard
    python shard_mem_worker.py PATH full        # the ordinary single-process loader, for comparison

Anonymous resident memory (RSS minus file-backed pages) is what a load really costs: the
memory-mapped checkpoint's pages are the page cache's, shared and dropped under pressure, while
every tensor the loader creates is anonymous. A thread samples /proc/self/statm every 0.5 ms
while the load runs; the printed JSON has the peak and the retained growth in bytes, and the
bytes of the loaded model's weights.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def anon_bytes() -> int:
    with open("/proc/self/statm") as f:
        _size, resident, shared = (int(x) for x in f.read().split()[:3])
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import lhama.checkpoints.gguf
    import lhama.checkpoints.hf
    import lhama.checkpoints.meta
    import lhama.parallel.shard_load  # noqa: F401  (imports are not the load's cost)
    from lhama.checkpoints import load_model
    from lhama.model import ModelArgs, Transformer
    from lhama.parallel.shard_load import load_shard_model

    # The first module built on the meta device imports torch's meta kernels (~70 MB of Python
    # objects, once per process, whatever the model's size): pay it before measuring.
    with torch.device("meta"):
        Transformer(ModelArgs(dim=8, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=8, hidden_dim=8))

    path, mode = sys.argv[1], sys.argv[2]
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon_bytes())
            time.sleep(0.0005)

    base = anon_bytes()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if mode == "full":
        model, _ckpt = load_model(path)
        del _ckpt
    else:
        model, _args, _report = load_shard_model(path, int(sys.argv[2]), int(sys.argv[3]))
    done.set()
    sampler.join()
    after = anon_bytes()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak": max(peak[0], after) - base, "retained": after - base, "weights": weights}))


if __name__ == "__main__":
    main()
