"""What lhama's nearest kernel layouts cost in perplexity, per ggml type (issue 14).

    python bench/kquant_ppl.py [--types q4_0,q8_0,q4_k_m,q5_k_m,q6_k] [--out bench/results/kquant_ppl.json]

The default model's weights are written as an F16 GGUF, llama.cpp's own quantizer
(``llama_model_quantize``, in a child process) makes one copy per type, and each copy is scored
twice on the shipped perplexity texts (``lhama/data/eval/ppl-*.jsonl``, every language):

* ``exact``: ``load_model(path, dtype=torch.float32)``, the file's weights decoded by the gguf
  package (what llama.cpp computes with, in fp32);
* ``kept``: ``load_model(path)`` with no flags, the layout lhama runs (exact int4/int8 repacks for
  Q4_0/Q4_1/Q8_0; the nearest layout, with its notice, for the others).

The change in perplexity between the two is the cost of the layout (plus bf16 activations in the
int4/int8 kernels, which every quantized type shares). Timing-free, so the machine's load does
not matter.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
if (BENCH_DIR.parent / "src" / "lhama").is_dir():
    sys.path.insert(0, str(BENCH_DIR.parent / "src"))

# llama.cpp file types (llama.h: LLAMA_FTYPE_MOSTLY_*)
FTYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


def texts() -> list[str]:
    import lhama

    folder = Path(lhama.__file__).parent / "data" / "eval"
    return [json.loads(line)["text"] for f in sorted(folder.glob("ppl-*.jsonl")) for line in f.open() if line.strip()]


def nll(model, ids_list: list[list[int]]) -> tuple[float, int]:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids in ids_list:
            x = torch.tensor([ids])
            logits = model(x).float()
            total += torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum").item()
            count += len(ids) - 1
    return total, count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="q4_0,q8_0,q4_k_m,q5_k_m,q6_k")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "kquant_ppl.json")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    import torch
    from harness.shapes import quantize_with_llama_cpp

    from lhama.checkpoints import read_checkpoint, write_checkpoint
    from lhama.loader import default_model_path, load_model

    torch.set_num_threads(a.threads)
    src = default_model_path()
    tmp = Path(tempfile.mkdtemp(prefix="lhama-kquant-"))
    ckpt = read_checkpoint(src, dtype=torch.float32)
    f16 = write_checkpoint(ckpt.state_dict, ckpt.args, tmp / "model.f16.gguf", fmt="gguf", gguf_type="f16")
    del ckpt
    template = tmp / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    kw = {"tokenizer": str(src), "chat_format": str(template)}
    tok = load_model(f16, dtype=torch.float32, **kw).tokenizer
    ids_list = [tok.encode(t, bos=True) for t in texts()]
    rows = []
    for name in [t.strip() for t in a.types.split(",") if t.strip()]:
        path = quantize_with_llama_cpp(f16, tmp / f"model.{name}.gguf", FTYPES[name], a.threads)
        row = {"type": name}
        for mode, dtype in (("exact", torch.float32), ("kept", None)):
            lm = load_model(path, dtype=dtype, **kw)
            total, count = nll(lm.model, ids_list)
            row[f"ppl_{mode}"] = math.exp(total / count)
            row["tokens"] = count
            if mode == "kept":
                row["layouts"] = sorted(set((lm.quant.modules if lm.quant else {}).values()))
            del lm
        row["change_pct"] = 100 * (row["ppl_kept"] / row["ppl_exact"] - 1)
        rows.append(row)
        print(
            f"{name:7s} exact {row['ppl_exact']:.3f}  kept {row['ppl_kept']:.3f}  change {row['change_pct']:+.2f}%  "
            f"layouts: {'; '.join(row['layouts'])}",
            flush=True,
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"model": src.name, "texts": "lhama/data/eval/ppl-*.jsonl", "rows": rows}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
