"""The organism's report card: test accuracy per question type, the blanked-image control, the training curve.

``python -m hf_tokcomp.organism.report --out benchmarks/results/organism.md`` (run by ``make organism``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ..runtime.selection import keep_count
from . import ORGANISM_DIR
from .task import GRID, make_split
from .validation import validate

__all__ = ["organism_report", "training_curve", "main"]


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_curve(log: Path, path: Path, compare: dict[str, Path], step_unit: str = "16 images x 8 questions") -> None:
    """Validation accuracy per question type over training (left); other recipes' overall curves (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _read_log(log)
    panels = 2 if compare else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    for qtype in records[-1]["val"]:
        ax.plot(
            [r["step"] for r in records],
            [100 * r["val"][qtype] for r in records],
            label=qtype,
            linewidth=2.5 if qtype == "all" else 1.2,
        )
    changes = [r["step"] for prev, r in zip(records, records[1:], strict=False) if r["stage"] != prev["stage"]]
    for step in changes:
        ax.axvline(step, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel=f"training step ({step_unit})", ylabel="validation accuracy (%)", ylim=(0, 101))
    ax.set_title("shipped organism (dotted: curriculum stage changes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if compare:
        ax = axes[0, 1]
        ax.plot([r["step"] for r in records], [100 * r["val"]["all"] for r in records], linewidth=2.5, label="shipped")
        for label, other in compare.items():
            rows = _read_log(other)
            ax.plot([r["step"] for r in rows], [100 * r["val"]["all"] for r in rows], label=label)
        ax.set(xlabel="training step", ylabel="validation accuracy, all types (%)", ylim=(0, 101))
        ax.set_title("recipes tried")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _wilson(p: float, n: int) -> list[float]:
    """95% Wilson interval of a proportion ``p`` over ``n`` samples."""
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def organism_report(n: int = 1200) -> dict:
    """Test accuracy per question type and prompt order on ``n`` test samples (with 95% Wilson intervals), with
    the real and with blanked images, and what makes the organism a measuring instrument: LLM depth, visual
    tokens per image, and the share of test scenes whose objects do not fit in 11% of the visual tokens."""
    from transformers import Qwen2VLForConditionalGeneration

    from ..processor import load_processor

    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration.from_pretrained(ORGANISM_DIR).eval()
    processor = load_processor(ORGANISM_DIR)
    test = make_split("test", n)
    accuracy = validate(model, processor, test)
    counts = {
        g: sum(g in (s.qtype, "all", "question_before" if s.question_first else "question_after") for s in test)
        for g in accuracy
    }
    scenes = [scene for s in test for scene in s.scenes]
    budget = keep_count(0.11, GRID * GRID)
    return {
        "command": f"python -m hf_tokcomp.organism.report --n {n} (make organism)",
        "test_samples": n,
        "counts": counts,
        "accuracy": accuracy,
        "accuracy_ci95": {g: _wilson(a, counts[g]) for g, a in accuracy.items()},
        "blanked_image_accuracy": validate(model, processor, test, blank=True),
        "llm_layers": model.config.text_config.num_hidden_layers,
        "visual_tokens_per_image": GRID * GRID,
        "scenes_over_budget_at_0.11": sum(len(scene) > budget for scene in scenes) / len(scenes),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_tokcomp.organism.report", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="markdown file to write (a .json and a _curve.png beside it)")
    parser.add_argument("--n", type=int, default=1200, help="test samples (default: 1200)")
    parser.add_argument("--log", default="runs/organism/log.jsonl", help="training log for the curve")
    parser.add_argument(
        "--compare", nargs="*", default=[], metavar="LABEL=LOG", help="other runs' logs to overlay (LABEL=PATH)"
    )
    args = parser.parse_args(argv)
    result = organism_report(args.n)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    types = list(result["accuracy"])
    lines = [
        f"Organism ({result['parameters'] / 1e6:.2f} M parameters, {result['llm_layers']} LLM layers, "
        f"{result['visual_tokens_per_image']} visual tokens per image; the objects of "
        f"{100 * result['scenes_over_budget_at_0.11']:.0f}% of the test scenes do not fit in 11% of them), greedy "
        f"accuracy (%) on {args.n} test samples (`{result['command']}`):",
        "",
        "| image | " + " | ".join(types) + " |",
        "|---" * (len(types) + 1) + "|",
        "| real | " + " | ".join(f"{100 * result['accuracy'][t]:.1f}" for t in types) + " |",
        "| real, 95% interval | "
        + " | ".join(f"{100 * lo:.1f}-{100 * hi:.1f}" for lo, hi in (result["accuracy_ci95"][t] for t in types))
        + " |",
        "| blanked | " + " | ".join(f"{100 * result['blanked_image_accuracy'][t]:.1f}" for t in types) + " |",
    ]
    bad = [item for item in args.compare if "=" not in item]
    if bad:
        parser.error(f"--compare takes LABEL=PATH items, got {bad}")
    compare = dict(item.split("=", 1) for item in args.compare)
    if Path(args.log).is_file():
        curve = out.with_name(out.stem + "_curve.png")
        training_curve(Path(args.log), curve, {k: Path(v) for k, v in compare.items()}, "8 images x 8 questions")
        lines += ["", f"![training curve]({out.stem}_curve.png)"]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
