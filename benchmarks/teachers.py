"""Which teacher signal makes the better compressor? GAE relevance (the paper's) vs leave-one-out occlusion.

On the shipped organism: label the same training split with each teacher (``tokcomp label --teacher``), train a
compressor on each (``tokcomp train``, same settings), and evaluate both with the same harness as ``tokcomp
eval`` on the same test split. Prints a markdown table and writes ``benchmarks/results/organism_teachers.*``.

    python benchmarks/teachers.py [--train-samples 1500] [--test-samples 500] [--epochs 60]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hf_tokcomp import TokenCompressor
from hf_tokcomp.evaluation.harness import EvalSettings, evaluate
from hf_tokcomp.organism import load_organism
from hf_tokcomp.organism.export import write_split
from hf_tokcomp.training.labels import label_dataset, read_records
from hf_tokcomp.training.train import TrainArguments, train_compressor

TEACHERS = ("gae", "occlusion")
#: keeps compared (0.11: where the literature reports, 64 of LLaVA's 576 tokens)
KEEPS = (1.0, 0.5, 0.25, 0.11)


def _cell(value: float | None, ci: list[float] | None) -> str:
    """``84.5 (82-87)``: a retention and its 95% interval, in percent."""
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" + ("" if not ci else f" ({100 * ci[0]:.0f}-{100 * ci[1]:.0f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-samples", type=int, default=1500, help="default: 1500")
    parser.add_argument("--test-samples", type=int, default=500, help="default: 500")
    parser.add_argument("--epochs", type=int, default=60, help="default: 60")
    parser.add_argument("--work", default="runs/teachers", help="labels and compressors (default: runs/teachers)")
    parser.add_argument("--out", default="benchmarks/results/organism_teachers", help="results path stem")
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate the compressors already trained in --work (no labelling)"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    work = Path(args.work)
    model, processor = load_organism()
    train = read_records(write_split("train", args.train_samples, work / "data"))
    test = read_records(write_split("test", args.test_samples, work / "data"))
    rows = {}
    for teacher in TEACHERS:
        trained = work / f"compressor-{teacher}"
        if args.reuse and (trained / "config.json").exists():
            history = [None]  # trained by an earlier run with the same --work
        else:
            label_dataset(model, processor, train, work / f"labels-{teacher}", max_new_tokens=4, teacher=teacher)
            history = train_compressor(work / f"labels-{teacher}", trained, TrainArguments(epochs=args.epochs))[
                "history"
            ]
        compressor = TokenCompressor.from_pretrained(work / f"compressor-{teacher}")
        settings = EvalSettings(keeps=KEEPS, methods=("ours",), max_new_tokens=2, flops=False)
        result = evaluate(model, processor, test, compressor, settings)
        rows[teacher] = {
            "validation": history[-1],
            "retention": result["retention"]["ours"],
            "retention_ci95": result["retention_ci95"]["ours"],
        }
    keeps = list(rows[TEACHERS[0]]["retention"])
    types = list(rows[TEACHERS[0]]["retention"][keeps[0]])
    lines = [
        f"Compressors trained on {args.train_samples} organism samples labelled by each teacher; retention (%) "
        f"on {args.test_samples} test samples, with 95% intervals (both orders; `question_after` / "
        "`question_before`: the prompt orders).",
        "",
        "| teacher | question type | " + " | ".join(f"keep {k}" for k in keeps) + " |",
        "|---|---" + "|---" * len(keeps) + "|",
    ]
    for teacher, row in rows.items():
        for qtype in types:
            cells = [(row["retention"][k][qtype], row["retention_ci95"].get(k, {}).get(qtype)) for k in keeps]
            text = " | ".join(_cell(value, ci) for value, ci in cells)
            lines.append(f"| {teacher} | {qtype} | {text} |")
    table = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    Path(args.out + ".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
