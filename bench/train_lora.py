"""LoRA SFT throughput: lhama against Hugging Face trl ``SFTTrainer`` + ``peft``, in one run.

    python bench/train_lora.py                 # default model, 96 examples, seq 256, batch 4 (~5-10 min on 2 busy cores)
    python bench/train_lora.py --quick         # fewer examples, seq 128

Same everything: the default SmolLM2-135M GGUF converted once to a Hugging Face folder (both
systems load that folder, fp32), the same deterministic chat data, LoRA rank/alpha/targets,
sequence length, packing, batch size, learning rate, thread count and machine. Each system runs
in its own subprocess, one after the other. Throughput is input tokens per second over the
training steps after the first (which carries one-off warm-up costs); both count the real
(non-padding) tokens they processed. Results: ``bench/results/train_lora.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if (REPO / "src" / "lhama").is_dir():
    sys.path.insert(0, str(REPO / "src"))
MARK = "RESULT:"


def make_data(path: Path, n: int, seed: int = 0) -> Path:
    """Chat examples of varied length: arithmetic questions answered in a fixed format."""
    r = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            nums = [r.randint(2, 999) for _ in range(r.randint(2, 8))]
            q = "Add these numbers and explain briefly: " + ", ".join(map(str, nums))
            steps = " ".join(f"{sum(nums[: i + 1])}" for i in range(len(nums)))
            a = f"Running totals: {steps}. #### {sum(nums)}"
            f.write(
                json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            )
    return path


# -- workers (each in its own process) -------------------------------------------------------------
def worker_lhama(a) -> dict:
    import torch

    from lhama.loader import load_model
    from lhama.model.lora import LoraConfig, apply_lora
    from lhama.train import BatchIterator, TrainConfig, Trainer, causal_lm_loss, make_rows
    from lhama.train.data import load_chat_examples

    lm = load_model(a.hf, dtype=torch.float32, device="cpu")
    rows = make_rows(load_chat_examples(a.data, lm.chat_format), a.seq_len, pack=True, pad_id=lm.tokenizer.eos_id)
    torch.manual_seed(0)
    params = apply_lora(lm.model, LoraConfig(rank=a.rank, alpha=2 * a.rank, target_modules=("wq", "wk", "wv", "wo")))
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            lr=2e-4,
            batch_size=a.batch_size,
            max_seq_len=a.seq_len,
            epochs=1,
            output_dir=out,
            progress=False,
            max_grad_norm=1.0,
        )
        res = Trainer(lm.model, causal_lm_loss, BatchIterator(rows, a.batch_size), cfg, params).train()
    steady = res.history[1:]
    return {
        "steps": len(res.history),
        "tokens": sum(h["tokens"] for h in steady),
        "seconds": sum(h["step_s"] for h in steady),
        "final_loss": res.final_loss,
    }


def worker_trl(a) -> dict:
    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset

    tok = transformers.AutoTokenizer.from_pretrained(a.hf)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32)
    rows = [json.loads(x) for x in Path(a.data).read_text().splitlines()]
    # Prompt/completion form: trl then takes the loss on the completion only, as lhama does.
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    counts: list[int] = []
    stamps: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        cfg = trl.SFTConfig(
            output_dir=out,
            max_length=a.seq_len,
            packing=True,
            per_device_train_batch_size=a.batch_size,
            gradient_accumulation_steps=1,
            num_train_epochs=1,
            learning_rate=2e-4,
            lr_scheduler_type="cosine",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            completion_only_loss=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            max_grad_norm=1.0,
        )
        trainer = trl.SFTTrainer(
            model=model,
            args=cfg,
            train_dataset=ds,
            processing_class=tok,
            peft_config=peft.LoraConfig(
                r=a.rank,
                lora_alpha=2 * a.rank,
                lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                task_type="CAUSAL_LM",
            ),
            callbacks=[Clock()],
        )
        collate = trainer.data_collator

        def counting(features):  # real tokens of each batch, padding excluded
            batch = collate(features)
            mask = batch.get("attention_mask")
            counts.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
            return batch

        trainer.data_collator = counting
        out_state = trainer.train()
    # Steps after the first: from the end of step 1 to the end of the last (data loading included, as in lhama).
    n = len(stamps)
    return {
        "steps": n,
        "tokens": sum(counts[1:n]),
        "seconds": stamps[-1] - stamps[0],
        "final_loss": float(out_state.training_loss),
        "trl": trl.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
    }


# -- orchestration ---------------------------------------------------------------------------------
def run_worker(system: str, a, hf: Path, data: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        system,
        "--hf",
        str(hf),
        "--data",
        str(data),
        "--seq-len",
        str(a.seq_len),
        "--batch-size",
        str(a.batch_size),
        "--rank",
        str(a.rank),
        "--threads",
        str(a.threads),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [x for x in p.stdout.splitlines() if x.startswith(MARK)]
    if p.returncode or not lines:
        raise SystemExit(f"{system} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    res = json.loads(lines[-1][len(MARK) :])
    res["tokens_per_s"] = res["tokens"] / res["seconds"]
    res["process_s"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["lhama", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--hf", help="HF folder of the model (default: convert the default GGUF into a temp dir)")
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("BENCH_THREADS", "1")),
        help="torch threads per system (default 1: a shared 2-core machine thrashes with 2)",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--systems", default="lhama,trl")
    ap.add_argument("--name", default="train_lora", help="results file name under bench/results")
    a = ap.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        import resource

        fn = worker_lhama if a.worker == "lhama" else worker_trl
        res = fn(a)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        print(MARK + json.dumps(res), flush=True)
        return
    if a.quick:
        a.examples, a.seq_len = min(a.examples, 32), min(a.seq_len, 128)
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(a.hf) if a.hf else None
        if hf is None:
            from lhama.checkpoints import convert
            from lhama.loader import default_model_path

            hf = convert(default_model_path(), Path(tmp) / "smollm2-hf", to="safetensors")
        data = make_data(Path(tmp) / "train.jsonl", a.examples)
        results = {}
        for system in a.systems.split(","):
            print(f"running {system} ...", file=sys.stderr, flush=True)
            results[system] = run_worker(system, a, hf, data)
            print(f"  {system}: {results[system]['tokens_per_s']:.0f} tokens/s", file=sys.stderr, flush=True)
    report = {
        "config": {
            "examples": a.examples,
            "seq_len": a.seq_len,
            "batch_size": a.batch_size,
            "lora_rank": a.rank,
            "targets": "q,k,v,o",
            "packing": True,
            "threads": a.threads,
            "dtype": "float32",
            "model": "SmolLM2-135M-Instruct (default GGUF → HF safetensors)",
        },
        "results": results,
    }
    if "lhama" in results and "trl" in results:
        report["ratio_lhama_over_trl"] = results["lhama"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
    out = BENCH_DIR / "results"
    out.mkdir(exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        "| system | tokens/s ↑ | steps | tokens timed | seconds | final loss | peak RSS MiB ↓ |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, r in results.items():
        md.append(
            f"| {s} | {r['tokens_per_s']:.0f} | {r['steps']} | {r['tokens']} | {r['seconds']:.1f} | "
            f"{r['final_loss']:.3f} | {r.get('peak_rss_mb', 0):.0f} |"
        )
    if "ratio_lhama_over_trl" in report:
        md.append(
            f"\nlhama ÷ trl: **{report['ratio_lhama_over_trl']:.2f}×** (LoRA SFT tokens/s; ≥ 1 means lhama is faster)"
        )
    (out / f"{a.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
