"""The ``tokcomp`` command: ``label`` -> ``train`` -> ``eval`` (and ``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _label(args: argparse.Namespace) -> None:
    from .training.distributed import merge_ranks, process_info
    from .training.labels import label_dataset

    rank, world_size, device = process_info()  # several processes under `accelerate launch`
    records = _records(args)
    model = _model(args, device)
    processor = _load_processor(args)
    manifest = label_dataset(
        model,
        processor,
        records,
        args.out,
        shard_size=args.shard_size,
        max_new_tokens=args.max_new_tokens,
        model_name=args.model,
        teacher=args.teacher,
        features=args.features,
        answer_end=args.answer_end,
        rank=rank,
        world_size=world_size,
        progress=rank == 0,
    )
    if world_size > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # the state process_info() built
        if rank != 0:
            return
        manifest = merge_ranks(args.out, world_size)
    _check_labelled(manifest, args)
    print(
        json.dumps({k: manifest[k] for k in ("labelled", "skipped_wrong", "skipped_no_visual", "skipped_empty_answer")})
    )


def _check_labelled(manifest: dict, args: argparse.Namespace) -> None:
    """Fail when nothing was labelled; warn, with the numbers and the usual causes, when most answers were wrong."""
    counts = {k: manifest[k] for k in ("labelled", "skipped_wrong", "skipped_no_visual", "skipped_empty_answer")}
    causes = (
        f"answers longer than --max-new-tokens={args.max_new_tokens} are cut and judged wrong; a model that never "
        "emits its end token runs to the limit; check the `answer` field against the model's own answers"
    )
    if counts["labelled"] == 0:
        raise ValueError(f"nothing was labelled ({json.dumps(counts)}): {causes}")
    if counts["skipped_wrong"] > counts["labelled"]:
        print(
            f"tokcomp label: warning: {counts['skipped_wrong']} of {counts['labelled'] + counts['skipped_wrong']} "
            f"answers were judged wrong and skipped: {causes}",
            file=sys.stderr,
        )


def _records(args: argparse.Namespace):
    """``--data`` read with ``--split`` and ``--columns``, cut to ``--limit``."""
    from .training.labels import read_records

    columns = {}
    for pair in args.columns or []:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise ValueError(f"--columns takes FIELD=COLUMN pairs (e.g. question=prompt), got {pair!r}")
        columns[field] = column
    return read_records(args.data, split=args.split, columns=columns, limit=args.limit, streaming=args.streaming)


def _model(args: argparse.Namespace, device):
    """``--model`` as our class for its family, on this process's device, or spread by ``--device-map``."""
    from .models import load_compressed_model

    if args.device_map is not None:
        if device is not None:  # several processes (process_info gave this one its device)
            raise ValueError("--device-map shards one model over devices: run it in one process, not several")
        return load_compressed_model(args.model, device_map=args.device_map).eval()
    model = load_compressed_model(args.model).eval()
    return model.to(device) if device is not None else model


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--columns",
        nargs="+",
        default=None,
        metavar="FIELD=COLUMN",
        help="the data's own column names for the record fields (image, video, question, answer, qtype, evidence), "
        "e.g. --columns question=prompt answer=label",
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="read a Hub dataset as a stream, only its first --limit samples (never downloaded whole)",
    )
    parser.add_argument(
        "--device-map",
        default=None,
        help="shard a model too big for one device (`auto`, as for from_pretrained; one process only)",
    )


def _load_processor(args: argparse.Namespace):
    """The processor of ``--processor`` (default ``--model``), or an error naming the option and what is missing."""
    from pathlib import Path

    from .processor import load_processor

    path = args.processor or args.model
    try:
        return load_processor(path)
    except (OSError, ValueError, TypeError, KeyError) as err:
        folder = Path(path)
        wanted = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")
        missing = [name for name in wanted if folder.is_dir() and not (folder / name).exists()]
        lacking = f" ({path!r} has no {', '.join(missing)})" if missing else ""
        raise ValueError(
            f"could not load a processor from {path!r}{lacking}: {err}. Pass --processor with the folder or Hub id "
            "that holds the model's processor (tokenizer, image processor, chat template)."
        ) from err


def _train(args: argparse.Namespace) -> None:
    from .training.train import TrainArguments, train_compressor

    settings = TrainArguments(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        patience=args.patience,
    )
    result = train_compressor(args.labels, args.out, settings)
    print(json.dumps(result["history"][-1]))
    if result["stopped_early"]:
        print(
            f"stopped after {result['epochs_run']} of {args.epochs} epochs: no better validation KL for "
            f"{args.patience} epochs; kept the weights of epoch {result['best_epoch']}",
            file=sys.stderr,
        )


def _eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .evaluation.harness import EvalSettings, evaluate
    from .evaluation.report import eval_markdown, eval_plot

    settings = EvalSettings(
        keeps=tuple(args.keeps),
        methods=tuple(args.methods),
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        fastv_k=args.fastv_k,
        seed=args.seed,
        coverage=args.coverage,
    )
    records = _records(args)
    from .training.distributed import process_info

    rank, world_size, device = process_info()  # several processes under `accelerate launch` / `torchrun`
    model = _model(args, device)
    processor = _load_processor(args)
    compressor = None
    if args.compressor is not None:
        model.set_compressor(args.compressor)  # checks the compressor against this base model
        compressor, model.compressor = model.compressor, None
    elif "ours" in settings.methods:
        raise ValueError("--compressor is required for the `ours` method (or pass --methods without `ours`)")
    gather = None
    if world_size > 1:
        from accelerate.utils import gather_object as gather
    result = evaluate(
        model, processor, records, compressor, settings, rank == 0, rank=rank, world_size=world_size, gather=gather
    )
    if rank != 0:
        return
    samples = result.pop("samples")
    result |= {"model": args.model, "compressor": args.compressor, "data": str(args.data), "processes": world_size}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    (out / "samples.jsonl").write_text("".join(json.dumps(sample) + "\n" for sample in samples))
    table = eval_markdown(result)
    (out / "eval.md").write_text(table)
    eval_plot(result, out / "eval.png")
    print(table)
    print(f"wrote {out / 'eval.json'}, {out / 'samples.jsonl'}, {out / 'eval.md'}, {out / 'eval.png'}")
    if result["accuracy"][settings.methods[0]]["1.0"]["all"] == 0:
        raise ValueError(
            "the uncompressed model answered none of the records right, so retention is undefined: check the "
            "`answer` field against the model's own answers and --max-new-tokens"
        )


def _processor(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .word_processor import processor_for_model, read_vocab

    template = None if args.chat_template is None else Path(args.chat_template).read_text()
    processor = processor_for_model(args.model, read_vocab(args.vocab), template, args.min_pixels, args.max_pixels)
    out = Path(args.out or args.model)
    processor.save_pretrained(out)
    print(
        f"wrote the processor to {out} ({len(processor.tokenizer)} tokens); `tokcomp label --model {args.model}` "
        "uses it"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokcomp",
        description="Train and evaluate visual-token compressors (arXiv 2506.01097) for Hugging Face multimodal LLMs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    label = sub.add_parser(
        "label",
        help="write label shards: layer-0 features + GAE relevance targets",
        description="Run a dataset through the model; per sample store the compressor's input "
        "features and the GAE relevance of its visual tokens. Resumes after an interruption.",
    )
    label.add_argument(
        "--model", required=True, help="model directory or Hub id (Qwen2-VL, Qwen2.5-VL, LLaVA-OV, VILA1.5)"
    )
    label.add_argument("--data", required=True, help="JSONL (image path(s), question[, answer]) or a datasets dataset")
    label.add_argument("--out", required=True, help="label directory (created; resumed if it exists)")
    label.add_argument("--processor", default=None, help="processor directory (default: --model)")
    label.add_argument("--split", default="train", help="dataset split for Hub datasets (default: train)")
    label.add_argument("--shard-size", type=int, default=64, help="samples per shard (default: 64)")
    label.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: 32)")
    label.add_argument(
        "--limit", type=int, default=None, help="label the first N samples only (a resumed run needs the same N)"
    )
    label.add_argument(
        "--teacher",
        default="gae",
        choices=["gae", "occlusion"],
        help="target signal: GAE relevance (the paper's, default) or leave-one-out occlusion",
    )
    label.add_argument(
        "--features",
        default=None,
        help="the compressor's input: a versioned layer-0 feature definition, 'v2:MODE' with MODE causal, "
        "noncausal, hybrid or moved (how a question BEFORE the image is read), '+gen' for the generation prompt's "
        "rows too, '+heads' for one channel per attention head, '+split' for the generation prompt's rows as "
        "channels of their own (default: v2:moved+gen)",
    )
    label.add_argument(
        "--answer-end",
        action="store_true",
        help="the target also covers the end-of-sequence token that ends each answer (what the model needs to "
        "stop; recorded in the manifest, and label directories of both kinds are never mixed)",
    )
    _data_options(label)
    label.set_defaults(run=_label)

    train = sub.add_parser(
        "train",
        help="train a TokenCompressor on label shards",
        description="KL(R* || softmax(scores)) with Adam; validation KL and top-k recall per "
        "epoch; checkpoints and resume. --out loads with TokenCompressor.from_pretrained.",
    )
    train.add_argument("--labels", required=True, nargs="+", help="label directories (same model)")
    train.add_argument("--out", required=True, help="output directory (resumed from OUT/checkpoint if present)")
    train.add_argument("--epochs", type=int, default=100, help="default: 100")
    train.add_argument("--batch-size", type=int, default=128, help="segments per batch (default: 128)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    train.add_argument("--val-fraction", type=float, default=0.1, help="samples held out (default: 0.1)")
    train.add_argument("--seed", type=int, default=0, help="default: 0")
    train.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a better validation KL, "
        "keeping the best weights (default: run every epoch)",
    )
    train.set_defaults(run=_train)

    from .evaluation.harness import DEFAULT_METHODS

    evaluate = sub.add_parser(
        "eval",
        help="retention of the compressor vs baselines at several keep ratios",
        description="Accuracy of every method (learned compressor, layer-0 attention, uniform, random, FastV, "
        "GAE teacher, occlusion teacher, evidence oracle) at each keep ratio, and retention = accuracy / "
        "uncompressed accuracy, overall and per `qtype`; writes OUT/eval.json, eval.md and eval.png.",
    )
    evaluate.add_argument("--model", required=True, help="model directory or Hub id")
    evaluate.add_argument("--compressor", default=None, help="compressor directory / Hub id (the `ours` method)")
    evaluate.add_argument("--data", required=True, help="JSONL (image, question, answer[, qtype, evidence]) or dataset")
    evaluate.add_argument("--out", required=True, help="output directory")
    evaluate.add_argument("--processor", default=None, help="processor directory (default: --model)")
    evaluate.add_argument("--split", default="test", help="dataset split for Hub datasets (default: test)")
    evaluate.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help=f"default: {' '.join(DEFAULT_METHODS)}; also: downsample (Qwen-VL: the image at a lower resolution)",
    )
    evaluate.add_argument(
        "--keeps",
        nargs="+",
        type=float,
        default=[1.0, 0.75, 0.5, 0.33, 0.25, 0.22, 0.11],
        help="default: 1 0.75 0.5 0.33 0.25 0.22 0.11",
    )
    evaluate.add_argument("--batch-size", type=int, default=32, help="default: 32")
    evaluate.add_argument("--max-new-tokens", type=int, default=8, help="answer length limit (default: 8)")
    evaluate.add_argument("--fastv-k", type=int, default=None, help="FastV's K (default: 2, or 1 for 2-layer LLMs)")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the random baseline (default: 0)")
    evaluate.add_argument(
        "--coverage",
        type=float,
        default=0.0,
        help="token_coverage of the score-based methods: the share of each budget spread evenly over the grid "
        "before the scores choose the rest (default: 0)",
    )
    _data_options(evaluate)
    evaluate.set_defaults(run=_eval)

    processor = sub.add_parser(
        "processor",
        help="write a processor for a small Qwen2-VL model with its own word-level vocabulary",
        description="Build a word-level processor from the model's vocabulary (token -> id) and chat template; "
        "every special id of the model's config is checked against the vocabulary.",
    )
    processor.add_argument("--model", required=True, help="the model's directory (its config.json is read)")
    processor.add_argument(
        "--vocab", required=True, help="JSON {token: id}, or text with one token per line (id = line number)"
    )
    processor.add_argument("--chat-template", default=None, help="a Jinja chat template file (default: Qwen-style)")
    processor.add_argument("--out", default=None, help="where to save it (default: --model)")
    processor.add_argument("--min-pixels", type=int, default=56 * 56, help="resize bound (default: 3136)")
    processor.add_argument("--max-pixels", type=int, default=28 * 28 * 1280, help="resize bound (default: 1003520)")
    processor.set_defaults(run=_processor)

    # listed for --help; main() hands `tokcomp bench ...` to hf_tokcomp.bench's own parser
    sub.add_parser("bench", help="speed / memory / FLOPs vs the stock model and FastV (`tokcomp bench --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line (``tokcomp: error: ...``) and exit with 2."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser (options are passed through untouched)
        from .bench.speed import main as bench_main

        bench_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, ImportError) as err:
        print(f"tokcomp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokcomp {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
