"""``python -m tests.server.faulty_server [serve flags]``: the real server, with one test-only
fault: sampling for a request whose seed is ``POISON_SEED`` raises the kind of error torch
raised for an overflowing top_k (unformatted ``%ld`` included). Everything else is untouched,
so the test sees how the real engine and routes isolate a request that fails inside the engine."""

from __future__ import annotations

import sys

POISON_SEED = 424242


def install_fault() -> None:
    from lhama.engine.runner import ModelRunner

    sample = ModelRunner.sample

    def faulty_sample(self, logits, rows, seqs):
        if any(s.params.seed == POISON_SEED for s in seqs):
            raise RuntimeError("Overflow when unpacking long long (value %ld out of range)")
        return sample(self, logits, rows, seqs)

    ModelRunner.sample = faulty_sample


if __name__ == "__main__":
    install_fault()
    from lhama.cli.serve import main

    sys.exit(main())
