"""`make demo`: the whole pipeline on the organism (a small Qwen2-VL trained on CPU, shipped in the package).

1. write the organism's train and test splits (JSONL + PNG), 2. label the train split (layer-0 features + GAE
relevance of the model's own answers, ``tokcomp label``), 3. train a compressor on the labels (``tokcomp
train``), 4. evaluate every method at every keep ratio on the test split (``tokcomp eval``): table, plot, and
5. an image of the kept tokens. ``--quick`` skips 1-3 and uses the shipped, pre-trained compressor.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .evaluation.harness import EvalSettings, evaluate
from .evaluation.overlay import overlay_kept, side_by_side
from .evaluation.report import eval_markdown, eval_plot
from .organism import ORGANISM_COMPRESSOR_DIR, load_organism
from .organism.export import write_split
from .runtime.compressor import TokenCompressor
from .training.labels import build_inputs, label_dataset, read_records
from .training.train import TrainArguments, train_compressor

__all__ = ["KEEPS", "METHODS", "FEATURES", "COVERAGE", "main", "kept_tokens_figure"]

#: what the demo compares (the other selectors, FastV, the teachers and the downsampled image:
#: ``benchmarks/organism_comparison.sh``)
METHODS = ("ours", "attention", "uniform", "random", "oracle")
#: keep ratios of the demo: 0.33 / 0.22 / 0.11 are where the literature reports (192 / 128 / 64 of LLaVA's 576
#: tokens)
KEEPS = (1.0, 0.75, 0.5, 0.33, 0.25, 0.22, 0.11)
#: the compressor's input: one causal layer-0 attention channel per head (benchmarks/results/compressor_inputs.md:
#: better than the head mean, and than reading a question before the image non-causally, on the organism)
FEATURES = "v2:causal+gen+heads"
#: ``token_coverage`` of the evaluation (same source: the share of the budget spread over the grid first)
COVERAGE = 0.5


def kept_tokens_figure(model, processor, record: dict, compressor, keep: float, coverage: float = 0.0) -> Image.Image:
    """The record's image three times: the tokens kept by the compressor, by the training-free layer-0
    attention (both with ``token_coverage = coverage``), and the ground-truth evidence."""
    image = Image.open(record["image"]).convert("RGB")
    grid = (image.height // 28, image.width // 28)  # the organism's visual tokens: one per 28 px cell
    inputs = build_inputs(processor, record)
    saved = (model.compressor, model.config.token_keep, model.config.token_coverage)
    panels = []
    try:
        model.config.token_keep, model.config.token_coverage = keep, coverage
        for name, module in (("learned compressor", compressor), ("layer-0 attention", None)):
            model.compressor = module
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
            answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            kept = model.last_compression[0].kept[0].tolist()
            panels.append((f"{name} @{keep:g}: {answer.strip()}", overlay_kept(image, kept, grid)))
    finally:
        model.compressor, model.config.token_keep, model.config.token_coverage = saved
    panels.append((f"evidence: {record['answer']}", overlay_kept(image, record["evidence"], grid)))
    figure = side_by_side(panels)
    canvas = Image.new("RGB", (figure.width, figure.height + 18), (255, 255, 255))
    canvas.paste(figure, (0, 18))
    ImageDraw.Draw(canvas).text((8, 3), record["question"], fill=(0, 0, 0))
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_tokcomp.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="use the shipped compressor (skip label and train)")
    parser.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    parser.add_argument("--train-samples", type=int, default=600, help="samples to label (default: 600)")
    parser.add_argument("--test-samples", type=int, default=1000, help="samples to evaluate (default: 1000)")
    parser.add_argument(
        "--epochs", type=int, default=20, help="compressor training epochs (default: 20; the shipped compressor: 60)"
    )
    parser.add_argument(
        "--coverage",
        type=float,
        default=COVERAGE,
        help=f"token_coverage of the score-based methods (default: {COVERAGE}; 0 = the paper's top-k)",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    start = time.perf_counter()

    def step(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    model, processor = load_organism()
    step(f"organism loaded: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    test = write_split("test", args.test_samples, out / "data")
    if args.quick:
        compressor_dir = ORGANISM_COMPRESSOR_DIR
        step(f"--quick: using the shipped compressor {compressor_dir}")
    else:
        train = write_split("train", args.train_samples, out / "data")
        step(f"wrote {train} and {test}")
        manifest = label_dataset(
            model, processor, read_records(train), out / "labels", max_new_tokens=4, features=FEATURES
        )
        counts = {k: manifest[k] for k in ("labelled", "skipped_wrong")}
        step(f"labelled the train split: {counts} (wrong answers are not used as targets)")
        compressor_dir = out / "compressor"
        history = train_compressor(out / "labels", compressor_dir, TrainArguments(epochs=args.epochs))["history"]
        step(f"trained the compressor: {json.dumps(history[-1])}")
    compressor = TokenCompressor.from_pretrained(compressor_dir).eval()
    records = read_records(test)
    settings = EvalSettings(keeps=KEEPS, max_new_tokens=2, methods=METHODS, batch_size=64, coverage=args.coverage)
    result = evaluate(model, processor, records, compressor, settings)
    samples = result.pop("samples")
    (out / "samples.jsonl").write_text("".join(json.dumps(sample) + "\n" for sample in samples))
    result |= {"model": "hf_tokcomp organism", "compressor": str(compressor_dir), "data": str(test)}
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    table = eval_markdown(result)
    (out / "eval.md").write_text(table)
    eval_plot(result, out / "eval.png")
    step("evaluated every method on the test split:\n\n" + table)
    example = next(r for r in records if r["qtype"] == "left_of" and not r.get("question_first"))
    kept_tokens_figure(model, processor, example, compressor, 0.25, args.coverage).save(out / "kept_tokens.png")
    step(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'eval.png'} and {out / 'kept_tokens.png'}")


if __name__ == "__main__":
    main()
