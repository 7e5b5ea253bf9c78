"""The speed benchmark's tables and plot: every cell, and the headline ratios the goals are stated in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["headline", "markdown", "plot"]


def _fastv_match(result: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any] | None:
    """The FastV row of the same batch with (within 1%) the same average tokens per layer as ``ours``."""
    for row in result["rows"]:
        if row["method"] == "fastv" and row["batch"] == ours["batch"]:
            if abs(row["avg_tokens_per_layer"] - ours["avg_tokens_per_layer"]) <= 0.01 * ours["avg_tokens_per_layer"]:
                return row
    return None


def headline(result: dict[str, Any]) -> str:
    """The ratios the goals are stated in: per batch and keep, the LLM prefill and TTFT speed-ups as a share of
    their ideals, our overhead as a share of the stock LLM prefill, decode rate vs stock, and ours / FastV
    (LLM prefill time, TTFT, peak memory; below 1 = ours better) where FastV has an equal-tokens setting."""
    lines = [
        "| batch | keep | LLM prefill % of ideal | TTFT % of ideal | overhead % of stock prefill | decode vs stock | "
        "ours / FastV: LLM prefill | TTFT | peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["method"] != "ours":
            continue
        fv = _fastv_match(result, r)
        vs = (
            "- | - | -"
            if fv is None
            else (
                f"{r['llm_prefill']['median'] / fv['llm_prefill']['median']:.2f} | "
                f"{r['ttft']['median'] / fv['ttft']['median']:.2f} | "
                f"{r['peak_mb'] / fv['peak_mb'] if fv['peak_mb'] > 0 else float('nan'):.2f}"
            )
        )
        lines.append(
            f"| {r['batch']} | {r['keep']} | {100 * r['llm_speedup'] / r['llm_ideal']:.0f}% | "
            f"{100 * r['ttft_speedup'] / r['ttft_ideal']:.0f}% | {100 * r['overhead_share']:.2f} | "
            f"{r['decode_ratio']:.2f} | {vs} |"
        )
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    spec = result["spec"]
    lines = [
        f"{spec['config']} widths, {spec['llm_layers']} LLM layers, {spec['vision_layers']} vision layers, "
        f"{spec['dtype']}, {spec['attn']}; {result['device']}; FastV K={spec['fastv_k']} at the same average "
        "tokens per layer as ours; medians of "
        f"{spec['repeats']} runs after {spec['warmup']} warm-up.",
        "",
        "| batch | method | keep | tokens/layer N' (N) | LLM prefill ms | LLM speed-up (ideal) | % ideal | "
        "TTFT ms | TTFT speed-up (ideal) | FLOPs ratio | overhead % | decode tok/s (ratio) | KV MB | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        overhead = f"{100 * r['overhead_share']:.2f}" if "overhead_share" in r else "-"
        lines.append(
            f"| {r['batch']} | {r['method']} | {r['keep']} | {r['avg_tokens_per_layer']:.0f} ({r['prompt_tokens']}) | "
            f"{1e3 * r['llm_prefill']['median']:.0f} | {r['llm_speedup']:.2f}x ({r['llm_ideal']:.2f}x) | "
            f"{100 * r['llm_speedup'] / r['llm_ideal']:.0f}% | {1e3 * r['ttft']['median']:.0f} | "
            f"{r['ttft_speedup']:.2f}x ({r['ttft_ideal']:.2f}x) | {r['flops_ratio']:.3f} | {overhead} | "
            f"{r['decode_tokens_per_s']:.1f} ({r['decode_ratio']:.2f}) | {r['kv_bytes'] / 2**20:.1f} | "
            f"{r['peak_mb']:.0f} |"
        )
    return "\n".join([*lines, "", "Headline ratios (goals in benchmarks/README.md):", "", headline(result)])


def plot(result: dict[str, Any], path: Path) -> None:
    """Speed-up vs kept fraction of tokens per layer, one line per (method, batch), with the ideal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "llm", "LLM prefill"), (axes[1], "ttft", "time to first token")):
        for method, marker in (("ours", "o"), ("fastv", "s")):
            for batch in sorted({r["batch"] for r in result["rows"]}):
                rows = sorted(
                    (r for r in result["rows"] if r["method"] in (method, "stock") and r["batch"] == batch),
                    key=lambda r: -r["avg_tokens_per_layer"],
                )
                x = [r["avg_tokens_per_layer"] / r["prompt_tokens"] for r in rows]
                ax.plot(x, [r[f"{key}_speedup"] for r in rows], marker=marker, label=f"{method}, batch {batch}")
                if method == "ours":
                    ax.plot(
                        x,
                        [r[f"{key}_ideal"] for r in rows],
                        "k:",
                        alpha=0.5,
                        label="ideal" if batch == min(r["batch"] for r in result["rows"]) else None,
                    )
        ax.set_xlabel("tokens per layer / prompt tokens")
        ax.set_ylabel("speed-up vs stock")
        ax.set_title(title)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['spec']['config']} ({result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
