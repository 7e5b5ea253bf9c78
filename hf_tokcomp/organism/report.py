"""The organism's report card: test accuracy per question type, the blanked-image control, the training curve.

``python -m hf_tokcomp.organism.report --out benchmarks/results/organism.md`` (run by ``make organism``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import ORGANISM_DIR
from .task import make_split
from .train import validate

__all__ = ["organism_report", "main"]


def _curve(log: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
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
    ax.set(xlabel="training step (16 images x 8 questions)", ylabel="validation accuracy (%)", ylim=(0, 101))
    ax.set_title("organism training (dotted: curriculum stage changes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def organism_report(n: int = 1000, log: str | Path | None = "runs/organism/log.jsonl") -> dict:
    """Test accuracy per question type on ``n`` test samples, with the real and with blanked images."""
    from transformers import Qwen2VLForConditionalGeneration

    from ..processor import load_processor

    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration.from_pretrained(ORGANISM_DIR).eval()
    processor = load_processor(ORGANISM_DIR)
    test = make_split("test", n)
    return {
        "test_samples": n,
        "accuracy": validate(model, processor, test),
        "blanked_image_accuracy": validate(model, processor, test, blank=True),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_tokcomp.organism.report", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="markdown file to write (a .json and a _curve.png beside it)")
    parser.add_argument("--n", type=int, default=1000, help="test samples (default: 1000)")
    parser.add_argument("--log", default="runs/organism/log.jsonl", help="training log for the curve")
    args = parser.parse_args(argv)
    result = organism_report(args.n)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    types = list(result["accuracy"])
    lines = [
        f"Organism ({result['parameters'] / 1e6:.2f} M parameters), greedy accuracy (%) on {args.n} test samples:",
        "",
        "| image | " + " | ".join(types) + " |",
        "|---" * (len(types) + 1) + "|",
        "| real | " + " | ".join(f"{100 * result['accuracy'][t]:.1f}" for t in types) + " |",
        "| blanked | " + " | ".join(f"{100 * result['blanked_image_accuracy'][t]:.1f}" for t in types) + " |",
    ]
    if Path(args.log).is_file():
        _curve(Path(args.log), out.with_name(out.stem + "_curve.png"))
        lines += ["", f"![training curve]({out.stem}_curve.png)"]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
