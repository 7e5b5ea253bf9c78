"""Which layer-0 feature definition reads the question wherever it stands? Measured on the organism.

Every test sample is asked twice: question after the image, and question before it. For each definition
(``causal``: the model's own causal attention, where a question BEFORE the image cannot reach it; ``noncausal``:
every instruction row's softmax over all prompt tokens; ``hybrid``: causal after the image, non-causal before;
``moved``: a row before the image read as if it stood right after it), the training-free selection
(``selector="attention"``) is evaluated in both orders: retention with its 95% interval, the paired gap between
the orders (before minus after, the same scenes resampled together) with its 95% interval, and the share of
each answer's evidence tokens kept (what the selection can control, whatever the model makes of a question order
it was not trained on). Learned compressors (``--compressor DIR ...``, each with
its own definition), the GAE teacher and the evidence oracle are measured alongside. Also reported: the time the
features add, against a full uncompressed prefill of the same batch (medians of repeated runs).

    python benchmarks/instruction_features.py --n 500 --compressor DIR [DIR ...] [--coverage 0.5] \\
        --out benchmarks/results/instruction_features
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from hf_tokcomp.evaluation.harness import EvalSettings, evaluate
from hf_tokcomp.evaluation.intervals import retention_gap_interval
from hf_tokcomp.organism import load_organism
from hf_tokcomp.organism.export import write_split
from hf_tokcomp.runtime.compressor import TokenCompressor
from hf_tokcomp.runtime.features import FEATURE_MODES, FeatureSpec
from hf_tokcomp.runtime.scoring import pack_segments
from hf_tokcomp.training.labels import build_batch, read_records

KEEPS = (1.0, 0.5, 0.25, 0.1)
#: the reference selections ``--references`` may add, and their row names
REFERENCES = {"teacher": "GAE teacher", "oracle": "evidence oracle", "random": "random"}


def evidence_kept(result: dict, records: list[dict], method: str) -> dict[str, dict[str, float]]:
    """Per keep and prompt order: the mean share of a sample's evidence tokens among its kept tokens."""
    out: dict[str, dict[str, float]] = {}
    for keep in [str(k) for k in result["keeps"][1:]]:
        shares: dict[str, list[float]] = {}
        for sample, record in zip(result["samples"], records, strict=True):
            kept, evidence = set(sample["kept"][method][keep] or []), record["evidence"]
            if evidence:
                order = "question_before" if record["question_first"] else "question_after"
                shares.setdefault(order, []).append(len(kept & set(evidence)) / len(evidence))
        out[keep] = {order: sum(v) / len(v) for order, v in sorted(shares.items())}
    return out


def order_gap(result: dict, records: list[dict], method: str) -> dict[str, dict[str, object]]:
    """Per keep: retention with the question before minus after, on the same scenes (records ``2j`` and ``2j + 1``
    are scene ``j`` asked after / before), and its paired 95% interval (resampling scenes)."""
    if [r["question_first"] for r in records] != [False, True] * (len(records) // 2):
        raise ValueError("records must alternate question after / before, scene by scene")
    samples = result["samples"]
    base = {first: [s["uncompressed"] for s in samples[first::2]] for first in (0, 1)}
    out: dict[str, dict[str, object]] = {}
    for keep in [str(k) for k in result["keeps"][1:]]:
        hits = {first: [s["methods"][method][keep] for s in samples[first::2]] for first in (0, 1)}
        gap = sum(hits[1]) / max(sum(base[1]), 1) - sum(hits[0]) / max(sum(base[0]), 1)
        out[keep] = {"gap": gap, "ci95": retention_gap_interval((hits[0], base[0]), (hits[1], base[1]))}
    return out


def feature_overhead(model, processor, records: list[dict], repeats: int = 7) -> dict[str, float]:
    """Median seconds of the layer-0 features of one batch (rows, q/k, softmax) and of its full prefill."""
    inputs = build_batch(processor, records)
    visual = {k: inputs.get(k) for k in model._tokcomp_visual_keys}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    feature_times, prefill_times = [], []
    with torch.no_grad():
        merged = model._tokcomp_merge(ids, visual)
        positions = model._tokcomp_positions(ids, mask, visual, None)
        block = pack_segments(merged.segments, ids.device)
        for _ in range(repeats):
            start = time.perf_counter()
            model._tokcomp_features(merged, block, ids, mask, positions)
            feature_times.append(time.perf_counter() - start)
            saved, model.config.token_keep = model.config.token_keep, 1.0
            start = time.perf_counter()
            model(**inputs)
            prefill_times.append(time.perf_counter() - start)
            model.config.token_keep = saved
    features, prefill = statistics.median(feature_times), statistics.median(prefill_times)
    return {"features_s": features, "prefill_s": prefill, "ratio": features / prefill}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="test samples (default: 600)")
    parser.add_argument("--compressor", nargs="*", default=[], help="also evaluate these learned compressors")
    parser.add_argument(
        "--features",
        nargs="*",
        default=[f"v2:{m}{g}" for m in FEATURE_MODES for g in ("", "+gen")],
        help="feature definitions of the training-free selection to compare (default: every mode, with and "
        "without the generation prompt's rows)",
    )
    parser.add_argument(
        "--references",
        nargs="*",
        choices=REFERENCES,
        default=["teacher", "oracle"],
        help="reference selections measured alongside; the flag alone measures none (default: %(default)s; random "
        "shows what the model makes of each order under a selection blind to the question)",
    )
    parser.add_argument("--coverage", type=float, default=0.0, help="token_coverage of the selections (default: 0)")
    parser.add_argument("--out", default="benchmarks/results/instruction_features", help="output path stem")
    parser.add_argument(
        "--work", default="instruction_features_work", help="where the test split is written (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if len(set(args.compressor)) != len(args.compressor):
        raise SystemExit(f"--compressor: a path is given twice in {args.compressor}")
    compressors = {path: TokenCompressor.from_pretrained(path) for path in args.compressor}  # fail before any run
    model, processor = load_organism()
    data = write_split("test", args.n, Path(args.work))
    records = [r | {"question_first": first} for r in read_records(data) for first in (False, True)]
    settings = EvalSettings(keeps=KEEPS, methods=("attention",), max_new_tokens=2, flops=False, coverage=args.coverage)
    results: dict[str, dict] = {
        "command": shlex.join(["python", "benchmarks/instruction_features.py", *(argv or sys.argv[1:])]),
        "n": args.n,
    }
    for name in args.features:
        model._tokcomp_features_override = FeatureSpec.parse(name, what="--features")
        result = evaluate(model, processor, records, None, settings)
        results[f"attention ({name})"] = {
            "retention": result["retention"]["attention"],
            "retention_ci95": result["retention_ci95"]["attention"],
            "evidence_kept": evidence_kept(result, records, "attention"),
            "order_gap": order_gap(result, records, "attention"),
        }
    model.__dict__.pop("_tokcomp_features_override", None)
    for path, compressor in compressors.items():
        ours = EvalSettings(**{**vars(settings), "methods": ("ours",)})
        result = evaluate(model, processor, records, compressor, ours)
        name = f"learned {path} ({compressor.config.features})"  # the path too: two compressors never share a row
        results[name] = {
            "retention": result["retention"]["ours"],
            "retention_ci95": result["retention_ci95"]["ours"],
            "evidence_kept": evidence_kept(result, records, "ours"),
            "order_gap": order_gap(result, records, "ours"),
        }
    references = EvalSettings(**{**vars(settings), "methods": tuple(args.references)})
    result = evaluate(model, processor, records, None, references) if args.references else None
    for method in () if result is None else args.references:
        name = REFERENCES[method]
        results[name] = {
            "retention": result["retention"][method],
            "retention_ci95": result["retention_ci95"][method],
            "evidence_kept": evidence_kept(result, records, method),
            "order_gap": order_gap(result, records, method),
        }
    results["overhead"] = feature_overhead(model, processor, records[:32])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = [
        f"Retention (%) of the selection per feature definition on {args.n} organism test samples, question after | "
        "before the image, with 95% intervals; the gap and its interval are paired (the same scenes asked both ways, "
        "resampled together); evidence kept = mean share of an answer's evidence tokens kept; "
        f"token_coverage {args.coverage:g} (the evidence oracle: none).",
        "",
        "| method | keep | after | before | before - after (paired 95% CI) | evidence kept, after | before |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if not isinstance(r, dict) or "retention" not in r:
            continue
        for keep in [str(k) for k in KEEPS[1:]]:
            cells = []
            for order in ("question_after", "question_before"):
                lo, hi = r["retention_ci95"][keep][order]
                cells.append(f"{100 * r['retention'][keep][order]:.1f} ({100 * lo:.0f}-{100 * hi:.0f})")
            gap = r["order_gap"][keep]
            lo, hi = gap["ci95"] or (float("nan"), float("nan"))
            cells.append(f"{100 * gap['gap']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})")
            ev = r["evidence_kept"][keep]
            cells += [f"{ev.get('question_after', float('nan')):.3f}", f"{ev.get('question_before', float('nan')):.3f}"]
            lines.append(f"| {name} | {keep} | " + " | ".join(cells) + " |")
    o = results["overhead"]
    lines += [
        "",
        f"Feature time per batch of 32: {1000 * o['features_s']:.1f} ms = {100 * o['ratio']:.1f}% of the full "
        f"uncompressed prefill ({1000 * o['prefill_s']:.0f} ms; medians of 7 runs).",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
