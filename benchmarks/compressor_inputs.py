"""Which inputs and targets make the learned compressor better? Measured on the organism, in both prompt orders.

Each variant runs the real pipeline (``label_dataset`` -> ``train_compressor`` -> ``evaluate``) on the same
organism splits and differs in one setting: the layer-0 feature definition the compressor reads (``--features``,
e.g. the head mean ``v2:hybrid+gen`` or one channel per head ``v2:hybrid+gen+heads``) and whether the teacher's
target also covers the end-of-sequence token that ends the answer (``answer_end``: what the model needs to stop).
Every variant is evaluated at each ``--coverage`` (``config.token_coverage``: the share of each budget spread
evenly over the grid before the scores choose the rest); the training-free layer-0 attention and the GAE teacher
are evaluated alongside at each coverage, the evidence oracle once.

Reported per variant, keep and prompt order: retention with its 95% interval, and the share of the errors that
are a right answer the model did not end (it runs on: "cross triangle" for "cross"). Every stage is cached under
``--work`` (labelling and training resume), so an interrupted run continues where it stopped.

    python benchmarks/compressor_inputs.py --train 600 --test 600 --epochs 20 --coverage 0 0.5 \\
        --out benchmarks/results/compressor_inputs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hf_tokcomp.evaluation.harness import EvalSettings, evaluate
from hf_tokcomp.organism import load_organism
from hf_tokcomp.organism.export import write_split
from hf_tokcomp.runtime.compressor import TokenCompressor
from hf_tokcomp.training.labels import label_dataset, read_records
from hf_tokcomp.training.train import TrainArguments, train_compressor

KEEPS = (1.0, 0.5, 0.25, 0.11)
ORDERS = ("question_after", "question_before")
VARIANTS = {
    "mean": ("v2:hybrid+gen", False),
    "mean+end": ("v2:hybrid+gen", True),
    "heads": ("v2:hybrid+gen+heads", False),
    "heads+end": ("v2:hybrid+gen+heads", True),
    "heads causal": ("v2:causal+gen+heads", False),
    "mean causal": ("v2:causal+gen", False),
    "heads causal split": ("v2:causal+gen+heads+split", False),
    "mean causal split": ("v2:causal+gen+split", False),
    "heads moved": ("v2:moved+gen+heads", False),
    "heads moved+causal": ("v2:moved+gen+heads+causal", False),
}


def run_on(result: dict) -> dict[str, dict[str, float]]:
    """Per method and keep: the share of wrong answers whose first word is the right answer (the model ran on)."""
    out: dict[str, dict[str, float]] = {}
    for method in result["methods"]:
        out[method] = {}
        for keep in [str(k) for k in result["keeps"][1:]]:
            wrong = [s for s in result["samples"] if s["uncompressed"] and not s["methods"][method][keep]]
            ran_on = [s for s in wrong if s["answers"][method][keep].split()[:1] == str(s["expected"]).split()[:1]]
            out[method][keep] = len(ran_on) / max(len(wrong), 1)
    return out


def table(results: dict[str, dict]) -> str:
    """Markdown: retention (95% interval) per method / variant, keep and order, and the ran-on share."""
    lines = [
        "| method | keep | " + " | ".join(o.replace("_", " ") for o in ORDERS) + " | all | errors that ran on |",
        "|---|---|" + "---|" * (len(ORDERS) + 2),
    ]
    for name, result in results.items():
        for method in result["methods"]:
            coverage = result["settings"].get("coverage", 0.0) if method in result.get("coverage_applied_to", []) else 0
            label = name if method == "ours" else method + (f" @coverage {coverage:g}" if coverage else "")
            for keep in [str(k) for k in result["keeps"][1:]]:
                cells = []
                for group in (*ORDERS, "all"):
                    value = result["retention"][method][keep][group]
                    low, high = result["retention_ci95"][method][keep][group]
                    cells.append(f"{100 * value:.1f} ({100 * low:.0f}-{100 * high:.0f})")
                ran_on = result["ran_on"][method][keep]
                lines.append(f"| {label} | {keep} | " + " | ".join(cells) + f" | {ran_on:.2f} |")
    return "\n".join(lines) + "\n"


def seed_table(results: dict[str, dict], variants: list[str], seeds: list[int], coverages: list[float]) -> str:
    """Markdown: per variant, coverage, keep and order, the mean retention over the training seeds and its range
    (lowest to highest run)."""
    lines = [
        f"\nMean over {len(seeds)} training seeds ({', '.join(map(str, seeds))}), with the lowest and highest run:\n",
        "| variant | keep | " + " | ".join(o.replace("_", " ") for o in ORDERS) + " | all |",
        "|---|---|" + "---|" * (len(ORDERS) + 1),
    ]
    for coverage in coverages:
        for name in variants:
            suffix = "" if coverage == 0 else f" @coverage {coverage:g}"
            runs = [results[name + ("" if s == 0 else f" seed {s}") + suffix] for s in seeds]
            for keep in [str(k) for k in runs[0]["keeps"][1:]]:
                cells = []
                for group in (*ORDERS, "all"):
                    values = [100 * r["retention"]["ours"][keep][group] for r in runs]
                    cells.append(f"{sum(values) / len(values):.1f} ({min(values):.1f}-{max(values):.1f})")
                lines.append(f"| {name}{suffix} | {keep} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=600, help="train samples to label (default: 600)")
    parser.add_argument("--test", type=int, default=600, help="test samples (default: 600)")
    parser.add_argument("--epochs", type=int, default=20, help="compressor epochs (default: 20)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), help="default: all")
    parser.add_argument("--coverage", nargs="+", type=float, default=[0.0], help="token_coverage values (default: 0)")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="training seeds per variant (default: 0); several measure how much one training run varies, and the "
        "table gains each variant's mean over them",
    )
    parser.add_argument("--work", default="compressor_inputs_work", help="cache directory (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/compressor_inputs", help="writes OUT.md and OUT.json")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        raise SystemExit(f"--seeds: distinct non-negative integers, got {args.seeds}")
    torch.manual_seed(0)
    work = Path(args.work)
    model, processor = load_organism()
    train = read_records(write_split("train", args.train, work / "data"))
    test = read_records(write_split("test", args.test, work / "data"))
    results: dict[str, dict] = {}
    for c, coverage in enumerate(args.coverage):
        for i, (name, seed) in enumerate((n, s) for n in args.variants for s in args.seeds):
            features, answer_end = VARIANTS[name]
            run = work / name / ("" if seed == 0 else f"seed{seed}")  # seed 0: the layout of single-seed runs
            key = name + ("" if seed == 0 else f" seed {seed}") + ("" if coverage == 0 else f" @coverage {coverage:g}")
            cached = run / f"eval-coverage{coverage:g}.json"
            if cached.is_file():
                results[key] = json.loads(cached.read_text())
                continue
            tag = features.replace(":", "_").replace("+", "_") + ("-end" if answer_end else "")
            labels = work / f"labels-{tag}"
            label_dataset(model, processor, train, labels, max_new_tokens=4, features=features, answer_end=answer_end)
            train_compressor(labels, run / "compressor", TrainArguments(epochs=args.epochs, seed=seed))
            compressor = TokenCompressor.from_pretrained(run / "compressor").eval()
            methods = ("ours", "attention", "teacher") + (("oracle",) if c == 0 else ()) if i == 0 else ("ours",)
            settings = EvalSettings(keeps=KEEPS, max_new_tokens=2, methods=methods, batch_size=64, coverage=coverage)
            result = evaluate(model, processor, test, compressor, settings)
            result["ran_on"] = run_on(result)
            result["variant"] = {"features": features, "answer_end": answer_end, "coverage": coverage}
            result.pop("samples")
            cached.write_text(json.dumps(result, indent=1))
            results[key] = result
    text = (
        f"Organism v2, {args.train} labelled train samples, {args.epochs} epochs, {args.test} test samples (both "
        "prompt orders). Retention (%) with 95% intervals; the last column: the share of wrong answers whose "
        "first word is right (the model did not stop). `attention`: the training-free selection with the features "
        f"the runtime used when each row was measured (`v2:hybrid+gen` before the default became `v2:causal+gen`, "
        "then `v2:moved+gen`; all in instruction_features_v2.md and instruction_features_parity.md).\n\n"
        + table(results)
        + (seed_table(results, args.variants, args.seeds, args.coverage) if len(args.seeds) > 1 else "")
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(text)
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
