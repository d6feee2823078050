"""One rank of the tensor-parallel tests (run by torch.multiprocessing from test_tp.py)."""

from __future__ import annotations

import dataclasses
import os

import torch


@torch.inference_mode()
def full_and_step(model, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every position without a cache, and of one decode step (position 6) over a
    cache filled with the first 6 tokens: what TP ranks and one process are compared on."""
    from lhama.model import StaticKVCache

    full = model(prompt)
    cache = StaticKVCache(model.args, 1, 32)
    model(prompt[:, :6], 0, cache)
    cache.advance(6)
    return full, model(prompt[:, 6:7], cache.pos, cache)


def run_rank(rank: int, world: int, port: int, out_dir: str, config: str, engine: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from lhama.parallel.runtime import init_distributed
    from lhama.parallel.shard_load import load_tp_model
    from lhama.parallel.tp_engine import ControlChannel, follow, stop_followers, tp_engine

    init_distributed("gloo", "cpu")
    lm = load_tp_model(
        config,
        rank,
        world,
        dtype=torch.float32,
        device="cpu",
        seed=5,
        tokenizer="llama3" if "llama2" in config else None,
    )  # no Llama 2 tokenizer ships
    prompt = torch.tensor([[7, 300, 21, 9000, 4, 55, 123, 8, 8, 100]])
    full, step = full_and_step(lm.model, prompt)
    torch.save({"full": full, "step": step}, f"{out_dir}/logits{rank}.pt")
    if engine:
        from lhama.engine import EngineConfig
        from lhama.generate import SamplingParams

        channel = ControlChannel()
        if rank == 0:
            eng = tp_engine(lm, EngineConfig(num_blocks=64, block_size=8, max_num_batched_tokens=16), channel)
            prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [3, 4], [5, 6, 7, 8, 9, 1]]
            res = eng.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
            with torch.inference_mode():  # a forward outside the engine (what /v1/embeddings does)
                h = lm.model.hidden_states(prompt, torch.arange(prompt.shape[1]).unsqueeze(0))
            torch.save(h, f"{out_dir}/hidden.pt")
            stop_followers(channel)
            torch.save([r.completions[0].token_ids for r in res], f"{out_dir}/engine.pt")
        else:
            steps = follow(lm.model, channel)
            torch.save(steps, f"{out_dir}/follower_steps.pt")
    dist.destroy_process_group()


def run_rank_checkpoints(
    rank: int, world: int, port: int, out_dir: str, paths: list[str], engine: bool = False
) -> None:
    """Load each checkpoint with ``load_tp_model`` (this rank's blocks only) and save the logits
    of a full forward and of one decode step over the KV cache, per checkpoint. ``PATH::int8``
    quantizes the rank's shard. ``engine``: the last model also runs the batching engine (rank 0
    drives, the others follow) and rank 0 saves its greedy tokens."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from lhama.parallel.runtime import init_distributed
    from lhama.parallel.shard_load import load_tp_model

    init_distributed("gloo", "cpu")
    prompt = torch.tensor([[7, 300, 21, 90, 4, 55, 123, 8, 8, 100]])
    out = {}
    for entry in paths:
        path, _, quant = entry.partition("::")
        lm = load_tp_model(
            path, rank, world, dtype=torch.float32, device="cpu", tokenizer="llama3", quantize=quant or None
        )
        full, step = full_and_step(lm.model, prompt)
        out[entry] = {
            "full": full,
            "step": step,
            "report": dataclasses.asdict(lm.model.load_report),
            "shapes": {n: tuple(p.shape) for n, p in lm.model.named_parameters()},
            "state": {
                n: t.clone() for n, t in lm.model.state_dict().items() if n.startswith(("output.", "tok_embeddings."))
            },
        }
    torch.save(out, f"{out_dir}/ckpt_logits{rank}.pt")
    if engine:
        from lhama.engine import EngineConfig
        from lhama.generate import SamplingParams
        from lhama.parallel.tp_engine import ControlChannel, follow, stop_followers, tp_engine

        channel = ControlChannel()
        if rank == 0:
            # packed_head=False: the head module's own forward (test_tp.py covers the packed CPU head).
            eng = tp_engine(
                lm, EngineConfig(num_blocks=64, block_size=8, max_num_batched_tokens=16, packed_head=False), channel
            )
            res = eng.generate(ENGINE_PROMPTS, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
            stop_followers(channel)
            torch.save([r.completions[0].token_ids for r in res], f"{out_dir}/engine.pt")
        else:
            torch.save(follow(lm.model, channel), f"{out_dir}/follower_steps{rank}.pt")
    dist.destroy_process_group()


ENGINE_PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [3, 4], [5, 6, 7, 8, 9, 1]]


def run_rank_shard_logits(rank: int, world: int, port: int, out_dir: str, path: str, device: str) -> None:
    """This rank's shard of ``path`` on ``device`` (no tokenizer needed), all-reduced over gloo
    (which takes CUDA tensors too, so two ranks can share one GPU); saves the full logits."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from lhama.parallel.shard_load import load_shard_model
    from lhama.parallel.tp import attach_collectives

    dist.init_process_group("gloo")
    model, _, _ = load_shard_model(path, rank, world, dtype=torch.float32, device=device)
    attach_collectives(model)
    with torch.inference_mode():
        logits = model(torch.tensor([[7, 300, 21, 90, 4, 55, 123, 8, 8, 100]], device=device))
    torch.save(logits.cpu(), f"{out_dir}/shard_logits{rank}.pt")
    dist.destroy_process_group()
