"""The fused decode ops (``lhama.model.fused``) against the PyTorch path they replace, in one process:
process CPU time and wall time per decode token (best of rounds, the paths alternated, so a
loaded shared machine drifts them alike) and ATen calls per decode token (torch.profiler; the
lhama ops' own calls counted apart), for the reference loop or the engine (one stream). Three
paths: ``pytorch`` (no fused op), ``ops`` (the small fused ops, one Python call per op and
module) and ``step`` (the default: a decode-only step's blocks in one ``decode_layers`` call).
Feeds docs/performance.md ("the glue around the matmuls").

    python bench/fused_decode.py                     # reference loop, 1 thread, smollm2-base
    python bench/fused_decode.py --path engine --threads 2 --model default
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if (REPO / "src" / "lhama").is_dir():
    sys.path.insert(0, str(REPO / "src"))

TEXT = (
    "The history of the city begins in the early middle ages, when a small settlement grew around "
    "the river crossing. Merchants came from the south and the north, and by the twelfth century"
) * 3


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def decoder(model, prompt: list[int], path: str):
    """A function (n, on_first) -> (token ids, CPU ms per decode token, wall ms per decode token);
    ``on_first`` runs once the first token is out (the prefill is not measured)."""
    from lhama.generate import SamplingParams, generate_tokens

    if path == "ref":

        def run(n, on_first=None):
            it = generate_tokens(model, prompt, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
            out = [next(it).token_id]
            if on_first:
                on_first()
            c0, w0 = cpu_s(), time.perf_counter()
            out += [s.token_id for s in it]
            return out, (cpu_s() - c0) / (n - 1) * 1e3, (time.perf_counter() - w0) / (n - 1) * 1e3

        return run
    from lhama.engine import EngineConfig, LLMEngine

    eng = LLMEngine(model, None, EngineConfig(block_size=16, num_blocks=64, max_num_seqs=4), stop_ids=())
    count = [0]

    def run(n, on_first=None):
        count[0] += 1
        eng.add_request(f"r{count[0]}", prompt, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
        out, c0, w0 = [], None, None
        while eng.has_unfinished():
            for d in eng.step():
                out += [s.token_id for s in d.steps]
            if c0 is None and out:
                if on_first:
                    on_first()
                c0, w0 = cpu_s(), time.perf_counter()
        return out, (cpu_s() - c0) / (n - 1) * 1e3, (time.perf_counter() - w0) / (n - 1) * 1e3

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-base", help="a model name or GGUF path (default: the raw default file)")
    ap.add_argument("--path", choices=["ref", "engine"], default="ref")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    import lhama.model.fused as fused
    from lhama.loader import load_model

    torch.set_num_threads(a.threads)
    lm = load_model(a.model)
    run = decoder(lm.model, lm.tokenizer.encode(TEXT)[:100], a.path)
    on = fused._ops()
    if on is None:
        sys.exit("the fused ops are not available here (no kernel library): nothing to compare")
    from lhama.model.transformer import Transformer

    whole_step = Transformer._fused_layers
    modes = {"pytorch": ([None], whole_step), "ops": ([on], lambda *_: None), "step": ([on], whole_step)}

    def use(m):
        fused._OPS[:] = modes[m][0]
        Transformer._fused_layers = modes[m][1]

    run(8)
    cpu = {m: [] for m in modes}
    wall = {m: [] for m in modes}
    tokens = {}
    for _ in range(a.rounds):
        for m in modes:
            use(m)
            tokens[m], c, w = run(a.tokens)
            cpu[m].append(c)
            wall[m].append(w)
    calls, own = {}, {}
    for m in modes:
        use(m)
        prof = profile(activities=[ProfilerActivity.CPU])
        run(7, prof.start)
        prof.stop()
        ev = prof.key_averages()
        calls[m] = sum(e.count for e in ev if e.key.startswith("aten::")) / 6
        own[m] = sum(e.count for e in ev if e.key.startswith("lhama_")) / 6
    use("step")
    same = tokens["step"] == tokens["ops"] == tokens["pytorch"]
    print(f"{a.path}, {a.threads} thread(s), {a.model}: same tokens on every path: {same}")
    for m in modes:
        rounds = " ".join(f"{c:.1f}" for c in cpu[m])
        print(
            f"  {m:8s} CPU ms per decode token: best {min(cpu[m]):6.2f} (rounds {rounds}), wall best "
            f"{min(wall[m]):6.2f}; ATen calls per token {calls[m]:,.0f}, lhama op calls {own[m]:,.0f}"
        )


if __name__ == "__main__":
    main()
