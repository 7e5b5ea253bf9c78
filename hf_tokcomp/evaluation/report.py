"""Render an :func:`hf_tokcomp.evaluate.evaluate` result: a markdown table and a retention plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["eval_markdown", "eval_plot"]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _with_ci(result: dict[str, Any], method: str, keep: str, qtype: str) -> str:
    """Retention in % with its 95% interval where the result has one: ``98.8 (97.0-100.5)``."""
    value = _pct(result["retention"][method][keep][qtype])
    interval = result.get("retention_ci95", {}).get(method, {}).get(keep, {}).get(qtype)
    return value if interval is None else f"{value} ({100 * interval[0]:.1f}-{100 * interval[1]:.1f})"


def eval_markdown(result: dict[str, Any]) -> str:
    """Retention (%) per method and keep ratio, overall and per question type, with tokens and FLOPs."""
    keeps = [str(k) for k in result["keeps"]]
    head = "| method | " + " | ".join(f"keep {k}" for k in keeps) + " |"
    rule = "|---" * (len(keeps) + 1) + "|"
    lines = [
        f"Retention = accuracy / uncompressed accuracy, in %, on {result['num_samples']} samples "
        f"(uncompressed accuracy {_pct(result['accuracy'][result['methods'][0]]['1.0']['all'])}%); in brackets the "
        "95% interval of a paired bootstrap over the samples.",
        "",
        "**All questions**",
        "",
        head,
        rule,
    ]
    for method in result["methods"]:
        cells = [_with_ci(result, method, k, "all") for k in keeps]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| visual tokens / sample | " + " | ".join(f"{result['visual_tokens'][k]:.1f}" for k in keeps) + " |")
    if "downsample_tokens" in result:
        cells = [f"{result['visual_tokens']['1.0']:.1f}"] + [f"{result['downsample_tokens'][k]:.1f}" for k in keeps[1:]]
        lines.append("| visual tokens / sample, downsample | " + " | ".join(cells) + " |")
    if result.get("flops"):
        full = result["flops"]["none"]["1.0"]
        for method in ("ours", "fastv"):
            if method not in result["flops"]:
                continue
            for part in ("llm", "total"):
                cells = ["100"] + [f"{100 * result['flops'][method][k][part] / full[part]:.0f}" for k in keeps[1:]]
                lines.append(f"| {part} prefill FLOPs, {method} (% of full) | " + " | ".join(cells) + " |")
    qtypes = [q for q in result["counts"] if q != "all"]
    for qtype in qtypes:
        base = _pct(result["accuracy"][result["methods"][0]]["1.0"][qtype])
        lines += ["", f"**{qtype}** ({result['counts'][qtype]} samples, uncompressed accuracy {base}%)", "", head, rule]
        for method in result["methods"]:
            cells = " | ".join(_with_ci(result, method, k, qtype) for k in keeps)
            lines.append(f"| {method} | {cells} |")
    return "\n".join(lines) + "\n"


def eval_plot(result: dict[str, Any], path: str | Path) -> None:
    """Retention vs keep ratio, one line per method; one panel for all questions and one per question type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(result["counts"])
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    keeps = [str(k) for k in result["keeps"]]
    xs = [float(k) for k in keeps]
    for ax, panel in zip(axes.flat, panels, strict=False):
        for method in result["methods"]:
            ys = [result["retention"][method][k][panel] for k in keeps]
            if any(y is None for y in ys):
                continue  # the uncompressed model never answers this type: retention is undefined
            ys = [100 * y for y in ys]
            style = "-o" if method == "ours" else "--." if method in ("teacher", "oracle") else "-."
            ax.plot(xs, ys, style, label=method, linewidth=2.2 if method == "ours" else 1.2)
        ax.set_title(f"{panel} (n={result['counts'][panel]})")
        ax.set_xlabel("token_keep")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("retention (%)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
