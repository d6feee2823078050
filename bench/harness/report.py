"""The results as a markdown table with ratios, JSON files and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

# The columns each system contributes, in table order; the first lhama column with a number is
# the one the ratios use (the engine: what the server runs).
COLUMNS = {
    "lhama": ["lhama (engine)", "lhama (reference loop)"],  # no flags: what load_model(path) gives
    "lhama-float": ["lhama (engine, fp32)", "lhama (engine, bf16)"],
    "lhama-int8": ["lhama (engine, int8)"],
    "lhama-int4": ["lhama (engine, int4)"],
    "lhama-fp8": ["lhama (engine, fp8)"],
    "lhama-compile": ["lhama (engine, torch.compile)"],
    "lhama-eager": ["lhama (engine, eager)"],
    "llama.cpp": ["llama.cpp"],
    "transformers": ["transformers"],
}
LHAMA_PRIMARY = ["lhama (engine)", "lhama (reference loop)"]
# Second set of ratios: the int4 engine, the same bits per weight as llama.cpp's Q4_1 file.
LHAMA_INT4 = "lhama (engine, int4)"
PEERS = ["llama.cpp", "transformers"]
# A derived row: lhama's columns give their aggregate at the top concurrency, the peers' columns
# their single-stream decode (issue 14: "32 concurrent >= 4x llama.cpp's single stream").
VS_SINGLE = "agg_vs_peer_single"


def rows(meta: dict) -> list[tuple[str, str, bool]]:
    """(metric key, label, higher is better)."""
    P, G = meta["prompt_len"], meta["gen_single"]
    out = [
        ("prefill_tok_s", f"prefill tok/s ({P}-token prompt) ↑", True),
        ("ttft_s", f"time to first token, s ({P}-token prompt) ↓", False),
        ("decode_tok_s", f"single-stream decode tok/s ({G} tokens) ↑", True),
    ]
    for n in meta["concurrency"]:
        out.append((f"agg_{n}", f"aggregate decode tok/s, {n} concurrent ↑", True))
    top = max(meta["concurrency"], default=1)
    if top > 1:  # issue 14's target: lhama's aggregate against a peer's single stream
        out.append((VS_SINGLE, f"{top} concurrent vs the peers' single stream: aggregate decode tok/s ↑", True))
    for n in meta["concurrency"]:
        out.append((f"e2e_{n}", f"end-to-end tok/s incl. prefill, {n} concurrent ↑", True))
    out += [
        ("decode_pct_limit", "single-stream decode, % of the machine's limit ↑", True),
        ("load_s", "load time, s ↓", False),
        ("weight_mib", "weights in memory, MiB ↓", False),
        ("compile_s", "torch.compile warm-up, s ↓", False),
        ("load_peak_rss_mib", "peak RSS while loading, MiB ↓", False),
        ("single_peak_rss_mib", "peak RSS through the single-stream runs (single stream, 1 concurrent), MiB ↓", False),
        ("peak_rss_mib", "peak RSS of the process (single-stream and concurrent runs), MiB ↓", False),
        ("peak_gpu_mib", "peak GPU memory allocated, MiB ↓", False),
    ]
    return out


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(key: str, v) -> str:
    if not is_num(v):
        return "n/a" if v is None else str(v)
    if key.endswith("_s") and not key.endswith("tok_s"):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    if key.endswith("_mib"):
        return f"{v:,.0f}"
    if key.endswith("_pct_limit"):
        return f"{v:.0f}%"
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def build_table(results: dict, meta: dict) -> dict:
    """{"columns": [...], "rows": [{"key", "label", "values": {col: v}, "ratios": {peer: r}}]}"""
    columns = [c for sys_ in COLUMNS for c in COLUMNS[sys_] if sys_ in results]
    cols, errors = {}, {}
    for sys_, res in results.items():
        for c in COLUMNS.get(sys_, []):
            cols[c] = res.get("columns", {}).get(c) or {}
            if not res.get("ok"):
                errors[c] = res.get("error", "no result")
    table_rows = []
    top = f"agg_{max(meta['concurrency'], default=1)}"
    for key, label, higher in rows(meta):
        if key == VS_SINGLE:
            if not any(p in columns for p in PEERS):
                continue
            values = {c: cols[c].get("decode_tok_s" if c in PEERS else top) for c in columns}
        else:
            values = {c: cols[c].get(key) for c in columns}
        if all(v is None for v in values.values()) and (
            not errors or key in ("compile_s", "peak_gpu_mib", "decode_pct_limit")
        ):
            continue
        for c in columns:
            if values[c] is None and c in errors:
                values[c] = "n/a (timed out)" if "timed out" in errors[c] else "n/a (failed)"
        lh = next((values[c] for c in LHAMA_PRIMARY if c in values and is_num(values[c])), None)
        q4 = values.get(LHAMA_INT4)
        ratios, ratios_int4 = {}, {}
        for p in PEERS:
            if p in values:
                ratios[p] = lh / values[p] if is_num(lh) and is_num(values[p]) and values[p] else None
                if LHAMA_INT4 in values:
                    ratios_int4[p] = q4 / values[p] if is_num(q4) and is_num(values[p]) and values[p] else None
        table_rows.append(
            {
                "key": key,
                "label": label,
                "higher_is_better": higher,
                "values": values,
                "ratios": ratios,
                "ratios_int4": ratios_int4,
            }
        )
    return {"columns": columns, "rows": table_rows, "errors": errors}


def markdown(table: dict, meta: dict, notes: list[str]) -> str:
    columns = table["columns"]
    peers = [p for p in PEERS if p in columns]
    int4 = LHAMA_INT4 in columns
    head = (
        ["metric"] + columns + [f"lhama ÷ {p}" for p in peers] + ([f"lhama int4 ÷ {p}" for p in peers] if int4 else [])
    )
    lines = [
        (
            f"Model `{meta['model_name']}` on {meta['device_desc']}; {meta['threads']} threads; "
            f"greedy, EOS ignored; prompt ids tokenized once ({meta['tokenized_by']}) and shared. "
            f"{meta['when']}."
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for r in table["rows"]:
        cells = [r["label"]] + [fmt(r["key"], r["values"][c]) for c in columns]
        cells += [f"{r['ratios'][p]:.2f}×" if is_num(r["ratios"].get(p)) else "–" for p in peers]
        if int4:
            cells += [f"{r['ratios_int4'][p]:.2f}×" if is_num(r["ratios_int4"].get(p)) else "–" for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if meta.get("decode_limit_tok_s"):
        lines.append(
            f"Machine limit for single-stream decode: {meta['decode_limit_tok_s']:.1f} tok/s = memory "
            f"bandwidth {meta['mem_bw_gbs']:.1f} GB/s (measured in this run: {meta['mem_bw_how']}) ÷ "
            f"{meta['weight_bytes_per_token'] / 1e6:,.0f} MB of weights read per token (the file's "
            "tensors; a tied embedding is read whole as the head)."
        )
        lines.append("")
    lines.append(
        "Ratios: the lhama engine's figure (the reference loop's where the engine has none) "
        'divided by the peer\'s; "lhama int4" ratios use the int4 engine (4-bit weights like '
        "llama.cpp's Q4_1 file); ↑ rows: above 1 means lhama is faster, ↓ rows: below 1 "
        "means lhama is better."
    )
    for c, e in table["errors"].items():
        lines.append(f"- {c} failed: {e}")
    for n in notes:
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def plot(table: dict, meta: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    columns = table["columns"]
    by_key = {r["key"]: r for r in table["rows"]}
    panels = [
        (
            "throughput, tok/s (log scale)",
            [k for k in ["prefill_tok_s", "decode_tok_s"] + [f"agg_{n}" for n in meta["concurrency"]] if k in by_key],
            True,
        ),
        ("time to first token, s", [k for k in ["ttft_s"] if k in by_key], False),
        ("peak RSS, MiB", [k for k in ["peak_rss_mib"] if k in by_key], False),
    ]
    short = {"prefill_tok_s": "prefill", "decode_tok_s": "decode\n1 stream", "ttft_s": "TTFT", "peak_rss_mib": "RSS"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [4, 1, 1]})
    width = 0.8 / max(len(columns), 1)
    for ax, (title, keys, log) in zip(axes, panels):
        for i, c in enumerate(columns):
            xs, ys = [], []
            for j, k in enumerate(keys):
                v = by_key[k]["values"].get(c)
                if is_num(v) and v > 0:
                    xs.append(j + (i - (len(columns) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=c)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([short.get(k, k.replace("agg_", "aggregate\n") + " conc.") for k in keys])
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{meta['model_name']} on {meta['device_desc']} ({meta['when']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(out_dir: Path, name: str, stamp: str, payload: dict, md: str, *, timestamped: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=1, default=str)
    paths = []
    if timestamped:
        p = out_dir / f"{stamp}.json"
        p.write_text(text)
        paths.append(p)
    for suffix, content in ((".json", text), (".md", md)):
        p = out_dir / f"{name}{suffix}"
        p.write_text(content)
        paths.append(p)
    png = out_dir / f"{name}.png"
    if plot(payload["table"], payload["meta"], png):
        paths.append(png)
    return paths


README_HEADING = "## Speed (latest `make bench`)"


def update_readme(path: Path, md: str) -> bool:
    """Replace the table (from its ``| metric`` line to the next ``## `` heading) under the
    README's speed heading with this run's table and notes. False if the heading is missing."""
    text = path.read_text()
    start = text.find(README_HEADING)
    if start < 0:
        return False
    table = text.find("\n| metric", start)
    if table < 0:
        return False
    end = text.find("\n## ", table)
    end = len(text) if end < 0 else end
    body = md[md.index("| metric") :].rstrip("\n") + "\n"
    path.write_text(text[: table + 1] + body + text[end:])
    return True
