"""Per-call cost of ``lhama.quant.ggml.block_linear`` by activation row count and path, on a real
GGUF's layer-0 shapes (default: the bench's Llama 3.2 1B Q4_0 file; ``--model default`` the
default 135M file): path 0 (picked by row count), 1 (integer dot products for every row), 2
(the prompt-row path that ``set_prompt_path`` picked), and for comparison ``bf16`` / ``fp32``
(path 2 forced to dequantized bf16 / fp32 slices + torch GEMM) and ``int128`` (path 1 over chunks
of 128 rows). Process CPU time per call (ms),
best of ``--rounds``, paths alternated in each round; ``--threads`` sets torch's thread count. An AVX2
laptop on an AVX-512 machine: ``LHAMA_GGML_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2``.

    python bench/ggml_rows.py [--model PATH|default] [--rows 1 8 16 32 64 128] [--threads 1]

``--prefill 512``: instead, a whole prefill (the reference loop's first token) of a 512-token
prompt (random ids) on the file, process CPU time per prompt path, alternated, best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if (REPO / "src" / "lhama").is_dir():
    sys.path.insert(0, str(REPO / "src"))

import gguf  # noqa: E402
import torch  # noqa: E402

from lhama.quant import ggml  # noqa: E402

ONEB = Path.home() / ".cache" / "lhama-bench" / "llama3.2-1b.random.q4_0.gguf"


def shapes(path: Path) -> list[tuple[str, list[torch.Tensor], int]]:
    r = gguf.GGUFReader(str(path))
    t = {x.name: x for x in r.tensors}

    def blk(name: str) -> torch.Tensor:
        return torch.from_numpy(t[name].data)

    qt = int(t["blk.0.attn_q.weight"].tensor_type)
    p = "blk.0."
    out = [
        ("wq|wk|wv", [blk(p + "attn_q.weight"), blk(p + "attn_k.weight"), blk(p + "attn_v.weight")], qt),
        ("wo", [blk(p + "attn_output.weight")], qt),
        ("w1|w3", [blk(p + "ffn_gate.weight"), blk(p + "ffn_up.weight")], qt),
        ("w2", [blk(p + "ffn_down.weight")], int(t[p + "ffn_down.weight"].tensor_type)),
    ]
    head = t.get("output.weight") or t["token_embd.weight"]
    out.append(("head", [torch.from_numpy(head.data)], int(head.tensor_type)))
    return out


def prefill(path: Path, tokens: int, rounds: int, paths: list[str]) -> None:
    from lhama.generate import SamplingParams, generate_tokens
    from lhama.loader import load_model

    model = load_model(path, device="cpu").model
    ids = torch.randint(0, model.args.vocab_size, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    paths = paths or ["bf16", "integer"]
    best = {p: float("inf") for p in paths}
    print(f"isa {ggml.isa()}, {path.name}, {tokens}-token prefill; s CPU, best of {rounds}, alternated")
    for _ in range(rounds):
        for p in paths:
            ggml.set_prompt_path(p)
            t0 = time.process_time()
            list(generate_tokens(model, ids, params))
            best[p] = min(best[p], time.process_time() - t0)
    ggml.set_prompt_path(None)
    print("  ".join(f"{p} {best[p]:.3f}" for p in paths), f"(auto picks {ggml.prompt_path()})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ONEB))
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128])
    ap.add_argument("--paths", nargs="+", default=["0", "1", "2"], help="0 1 2 bf16 fp32 int128")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.3, help="CPU seconds per measurement")
    ap.add_argument("--only", nargs="*", default=None, help="shape names to run")
    ap.add_argument("--head", action="store_true", help="include the head")
    ap.add_argument("--prefill", type=int, default=0, help="prompt tokens: time whole prefills instead")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    path = a.model
    if path == "default":
        from lhama import loader

        path = str(loader.default_model_path())
    assert ggml.available()
    if a.prefill:
        prefill(Path(path), a.prefill, a.rounds, [p for p in a.paths if p in ("bf16", "fp32", "integer")])
        return
    print(f"isa {ggml.isa()}, threads {a.threads}, {Path(path).name}; ms CPU per call, best of {a.rounds}")
    op = torch.ops.lhama_ggml.block_linear_parts

    def run(x: torch.Tensor, parts: list[torch.Tensor], qt: int, p: str) -> torch.Tensor:
        if p in ("bf16", "fp32"):
            ggml.set_prompt_path(p)
            try:
                return op(x, parts, qt, 2)
            finally:
                ggml.set_prompt_path(None)
        if p == "int128":
            return torch.cat([op(x[i : i + 128], parts, qt, 1) for i in range(0, x.shape[0], 128)])
        return op(x, parts, qt, int(p))

    for name, parts, qt in shapes(Path(path)):
        if a.only and name not in a.only:
            continue
        if name == "head" and not a.head:
            continue
        k = parts[0].shape[1] // ggml.SIZES[qt][1] * ggml.SIZES[qt][0]
        n = sum(x.shape[0] for x in parts)
        for m in a.rows:
            x = torch.randn(m, k)
            best = {p: float("inf") for p in a.paths}
            reps = {}
            for p in a.paths:  # calibrate
                t0 = time.process_time()
                run(x, parts, qt, p)
                dt = max(time.process_time() - t0, 1e-4)
                reps[p] = max(1, min(200, int(a.budget / dt)))
            for _ in range(a.rounds):
                for p in a.paths:
                    t0 = time.process_time()
                    for _ in range(reps[p]):
                        run(x, parts, qt, p)
                    best[p] = min(best[p], (time.process_time() - t0) / reps[p])
            cells = "  ".join(f"{p} {best[p] * 1e3:8.3f}" for p in a.paths)
            print(f"{name:9s} {ggml._T(qt).name:5s} N={n:6d} K={k:5d} M={m:4d}  {cells}", flush=True)


if __name__ == "__main__":
    main()
