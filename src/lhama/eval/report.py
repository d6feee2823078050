"""Reports of an evaluation: ``results.json`` (everything, machine-readable), ``report.md``
(tables for people) and ``chart.png`` (each task's main metric with its 95% interval)."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

from lhama.eval.runner import TaskResult
from lhama.extras import require

_PERCENT = {
    "acc",
    "acc_norm",
    "accuracy",
    "answered",
    "win_rate",
    "tie_rate",
    "loss_rate",
    "win_rate_ties_half",
    "consistent_win_rate",
    "order_consistency",
    "first_slot_preference",
    "no_verdict_rate",
}


def _is_percent(metric: str) -> bool:
    return metric in _PERCENT or metric.startswith("pass@")


def _fmt(metric: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if _is_percent(metric):
        return f"{100 * v:.1f}"
    return f"{v:.4g}"


def build(results: list[TaskResult], *, config: dict | None = None) -> dict:
    import lhama

    return {
        "lhama_version": getattr(lhama, "__version__", "0"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "config": config or {},
        "results": [r.as_dict() for r in results],
    }


def markdown(report: dict) -> str:
    lines = [
        "# Evaluation report",
        "",
        f"Created {report['created']}. Rates in %, with 95% confidence intervals "
        "(Wilson for proportions, bootstrap for perplexity, normal for pass@k).",
        "",
    ]
    lines += ["| task | kind | model | items | metric | value | 95% CI |", "|---|---|---|---:|---|---:|---|"]
    for r in report["results"]:
        for name, m in r["metrics"].items():
            ci = m["ci95"]
            ci_s = f"{_fmt(name, ci[0])} – {_fmt(name, ci[1])}" if ci else "–"
            star = " **(main)**" if name == r["primary_metric"] else ""
            lines.append(
                f"| {r['task']} | {r['kind']} | {r['model']} | {r['num_items']} | {name}{star} | "
                f"{_fmt(name, m['value'])} | {ci_s} |"
            )
    pair = [r for r in report["results"] if r["kind"] == "pairwise"]
    for r in pair:
        c = r["counts"]
        lines += [
            "",
            f"## {r['task']}: {r['model_a']} (A) vs {r['model_b']} (B), judged by {r['judge']} ({r['judge_mode']})",
            "",
            f"Each prompt judged twice with the answers swapped. A wins {c['win']}, ties {c['tie']}, "
            f"loses {c['loss']} of {r['num_items']}. The judge picked the first answer shown in "
            f"{_fmt('first_slot_preference', r['metrics']['first_slot_preference']['value'])}% of its "
            f"decisive verdicts (50% = no position bias).",
        ]
        if "consistent_win_rate" in r["metrics"]:
            m = r["metrics"]["consistent_win_rate"]
            lines[-1] += (
                f" Both orders named the same winner on {m.get('n', '?')} prompts; A won "
                f"{_fmt('consistent_win_rate', m['value'])}% of those."
            )
    lines += ["", "Settings: `" + json.dumps(report["config"], ensure_ascii=False) + "`", ""]
    return "\n".join(lines)


def chart(report: dict, path: Path) -> None:
    """Main metric per task, rates and scores on one panel, perplexity-like numbers on another."""
    matplotlib = require("matplotlib", "eval")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "eval")

    rows = [
        (
            f"{r['task']}\n{r['model']}" if len({x["model"] for x in report["results"]}) > 1 else r["task"],
            r["primary_metric"],
            r["metrics"][r["primary_metric"]],
        )
        for r in report["results"]
    ]
    pct = [(lbl, m, v) for lbl, m, v in rows if _is_percent(m)]
    other = [(lbl, m, v) for lbl, m, v in rows if not _is_percent(m)]
    panels = [p for p in (pct, other) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 0.8 * len(rows) + 3) * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        scale = 100 if panel is pct else 1
        vals = [(v["value"] if v["value"] is not None else float("nan")) * scale for _, _, v in panel]
        err_lo = [max(0.0, (v["value"] - v["ci95"][0]) * scale) if v["ci95"] else 0 for _, _, v in panel]
        err_hi = [max(0.0, (v["ci95"][1] - v["value"]) * scale) if v["ci95"] else 0 for _, _, v in panel]
        x = range(len(panel))
        ax.bar(x, vals, yerr=[err_lo, err_hi], capsize=4, color="#4C72B0" if panel is pct else "#DD8452")
        ax.set_xticks(list(x), [lbl for lbl, _, _ in panel], rotation=45, ha="right", fontsize=8)
        names = sorted({m for _, m, _ in panel})
        ax.set_ylabel(", ".join(names) + (" (%)" if panel is pct else ""))
        if panel is pct:
            ax.set_ylim(0, 100)
        for i, v in zip(x, vals):
            ax.annotate(f"{v:.1f}" if panel is pct else f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle("lhama eval (error bars: 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[TaskResult], out_dir: Path, *, config: dict | None = None) -> dict:
    """Write results.json, report.md and chart.png into ``out_dir``; returns the report dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build(results, config=config)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    chart(report, out_dir / "chart.png")
    return report
