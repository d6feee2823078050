"""A small training run in its own process, for the resume and FSDP tests:
``python train_script.py OUT STEPS SAVE_EVERY [--lora] [--resume]``; under torchrun it joins a
gloo process group and the Trainer shards the model with FSDP2."""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import synthetic_examples  # noqa: E402

from lhama.model import ModelArgs, build_model  # noqa: E402
from lhama.model.lora import LoraConfig, apply_lora  # noqa: E402
from lhama.parallel.runtime import init_distributed  # noqa: E402
from lhama.train import BatchIterator, TrainConfig, Trainer, causal_lm_loss, make_rows  # noqa: E402


def main() -> None:
    out, steps, save_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    init_distributed()
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64, max_seq_len=128)
    model = build_model(args, init="random", seed=0)
    params = None
    if "--lora" in sys.argv:  # dropout makes the run depend on the RNG state a resume must restore
        torch.manual_seed(0)
        dropout = float(os.environ.get("LORA_DROPOUT", "0.1"))
        params = apply_lora(model, LoraConfig(rank=4, dropout=dropout, target_modules=("wq", "wv", "w2")))
    rows = make_rows(synthetic_examples(64), 32, pack=True)
    cfg = TrainConfig(
        lr=5e-3,
        max_steps=steps,
        batch_size=4,
        grad_accum=2,
        max_seq_len=32,
        warmup_steps=2,
        save_every=save_every,
        output_dir=out,
        progress=False,
        seed=3,
    )
    # A step is slowed so the test can kill the process in the middle of one.
    delay = float(os.environ.get("STEP_DELAY", "0"))

    def loss_fn(m, batch):
        if delay:
            import time

            time.sleep(delay)
        return causal_lm_loss(m, batch)

    Trainer(model, loss_fn, BatchIterator(rows, 4, seed=3), cfg, params).train(resume="--resume" in sys.argv)


if __name__ == "__main__":
    main()
