"""One picture of several `tokcomp bench` results: speed-up vs kept share of tokens per layer, per model.

    python benchmarks/plot_speed.py benchmarks/results/speed_cpu_*.json --out benchmarks/results/speed_cpu_models.png

Left: LLM prefill speed-up (ideal N/N', the black dotted line). Right: time to first token, with each model's own
ideal (dotted, same colour), which the vision tower bounds. Ours as lines, FastV at equal tokens as squares.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["plot_models"]


def plot_models(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for colour, result in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], results, strict=False):
        spec = result["spec"]
        for batch in sorted({r["batch"] for r in result["rows"]}):
            label = f"{spec['config']} ({spec['llm_layers']} LLM layers), batch {batch}"
            rows = [r for r in result["rows"] if r["batch"] == batch]
            ours = sorted((r for r in rows if r["method"] in ("stock", "ours")), key=lambda r: -r["kept_tokens"])
            fastv = [r for r in rows if r["method"] == "fastv"]
            for ax, key in ((axes[0], "llm"), (axes[1], "ttft")):
                x = [r["avg_tokens_per_layer"] / r["prompt_tokens"] for r in ours]
                ax.plot(x, [r[f"{key}_speedup"] for r in ours], "o-", color=colour, label=label)
                ax.plot(
                    [r["avg_tokens_per_layer"] / r["prompt_tokens"] for r in fastv],
                    [r[f"{key}_speedup"] for r in fastv],
                    "s",
                    color=colour,
                    mfc="none",
                )
                if key == "ttft":
                    ax.plot(x, [r["ttft_ideal"] for r in ours], ":", color=colour)
    grid = [i / 100 for i in range(8, 101)]
    axes[0].plot(grid, [1 / g for g in grid], "k:", label="ideal N / N'")
    axes[0].plot([], [], "ks", mfc="none", label="FastV (K=2), equal tokens per layer")
    for ax, title in zip(axes, ("LLM prefill", "time to first token (dotted: each model's ideal)"), strict=True):
        ax.set_xlabel("tokens per layer / prompt tokens")
        ax.set_ylabel("speed-up vs stock")
        ax.set_title(title)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0.8, 8)
    axes[0].legend(fontsize=7)
    devices = sorted({r["device"] for r in results})
    fig.suptitle(f"tokcomp bench, random weights at real widths ({'; '.join(devices)})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="JSON files written by `tokcomp bench`")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        parser.error(f"result files not found: {missing}; run `tokcomp bench --out ...` first")
    plot_models([json.loads(p.read_text()) for p in args.results], args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
