"""Train a TokenCompressor on label shards (stage B of the method).

Target: the teacher relevance with its lowest 50% zeroed, renormalised (``R*``). Loss: ``KL(R* || softmax(s))``
over each segment's tokens. Adam; batches of segments of different lengths, padded and masked (the compressor
scores a padded batch exactly as each segment alone). A seeded validation split reports the KL and the top-k
recall of the teacher's most relevant tokens at keep 50% and 25%. A checkpoint after every epoch lets an
interrupted run resume where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..runtime.compressor import TokenCompressor, TokenCompressorConfig
from ..runtime.selection import keep_count
from .labels import LabelError, LabelSegment, load_label_dir

__all__ = ["TrainArguments", "relevance_target", "train_compressor", "evaluate_segments"]

_CHECKPOINT = "checkpoint"


@dataclass
class TrainArguments:
    """Settings of :func:`train_compressor` (the paper: Adam, batch 128, ~100 epochs)."""

    epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    seed: int = 0
    compressor: dict[str, Any] = field(default_factory=dict)  # TokenCompressorConfig overrides
    #: stop when the validation KL has not improved for this many epochs, keeping the best weights (None: never)
    patience: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {self.val_fraction}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}")


def relevance_target(relevance: torch.Tensor) -> torch.Tensor | None:
    """``R*``: zero the lowest 50% of a segment's relevance (ties broken by position), divide by the sum.
    None when nothing positive is left (no signal to learn from)."""
    n = relevance.shape[0]
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.sort(relevance, descending=True, stable=True).indices[: n - n // 2]] = True
    target = torch.where(keep, relevance.clamp_min(0), torch.zeros_like(relevance))
    total = target.sum()
    return None if total <= 0 else target / total


def _batches(items: list[tuple[torch.Tensor, torch.Tensor]], size: int, rng: random.Random | None):
    order = list(range(len(items)))
    if rng is not None:
        rng.shuffle(order)
    for i in range(0, len(order), size):
        chunk = [items[j] for j in order[i : i + size]]
        length = max(f.shape[-1] for f, _ in chunk)
        features = torch.zeros(len(chunk), chunk[0][0].shape[0], length)
        targets = torch.zeros(len(chunk), length)
        mask = torch.zeros(len(chunk), length, dtype=torch.bool)
        for b, (f, t) in enumerate(chunk):
            features[b, :, : f.shape[-1]], targets[b, : t.shape[0]], mask[b, : t.shape[0]] = f, t, True
        yield features, targets, mask


def _kl(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over segments of KL(targets || softmax(scores)) on the real tokens."""
    log_probs = torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    terms = torch.where(targets > 0, targets * (targets.clamp_min(1e-30).log() - log_probs), 0.0)
    return terms.sum(-1).mean()


@torch.no_grad()
def evaluate_segments(model: nn.Module, items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict:
    """KL to ``R*`` and top-k recall of the teacher's top tokens at keep 50% / 25%, averaged over segments.

    Args:
        items: ``(features (C, n), target R* (n,), relevance (n,))`` per segment.
    """
    model.eval()
    kl, recall = 0.0, {0.5: 0.0, 0.25: 0.0}
    for features, target, relevance in items:
        scores = model(features[None])[0]
        kl += float(_kl(scores[None], target[None], torch.ones_like(target, dtype=torch.bool)[None]))
        for keep in recall:
            k = keep_count(keep, relevance.shape[0])
            truth = set(torch.sort(relevance, descending=True, stable=True).indices[:k].tolist())
            chosen = set(torch.sort(scores, descending=True, stable=True).indices[:k].tolist())
            recall[keep] += len(truth & chosen) / k
    n = max(len(items), 1)
    return {"kl": kl / n, "recall@50%": recall[0.5] / n, "recall@25%": recall[0.25] / n}


def _split(segments: list[LabelSegment], fraction: float, seed: int):
    """Split by SAMPLE (all segments of a sample on one side), seeded."""
    samples = sorted({s.sample_id for s in segments})
    random.Random(seed).shuffle(samples)
    val_ids = set(samples[: max(1, round(fraction * len(samples)))])
    train = [s for s in segments if s.sample_id not in val_ids]
    val = [s for s in segments if s.sample_id in val_ids]
    if not train or not val:
        raise LabelError(f"need labels from at least 2 samples to split train/validation, got {len(samples)}")
    return train, val


def load_label_dirs(paths: list[str | os.PathLike]) -> tuple[dict[str, Any], list[LabelSegment]]:
    """Segments of one or more label directories, refusing to mix models, feature definitions or widths."""
    manifest, segments = None, []
    for path in paths:
        m, s = load_label_dir(path)
        if manifest is not None:
            for key in ("model_type", "hidden_size", "features", "feature_channels", "answer_end"):
                if m.get(key, False) != manifest.get(key, False):
                    raise LabelError(
                        f"--labels {str(path)!r} was made for {key}={m.get(key, False)!r}, the first for "
                        f"{manifest.get(key, False)!r}; train one compressor per model and label definition"
                    )
        manifest = manifest or m
        segments += s
    if not segments:
        raise LabelError(f"--labels {[str(p) for p in paths]} hold no labelled segments")
    return manifest, segments


def _save_checkpoint(path: Path, model: TokenCompressor, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Write into a fresh folder, then swap it in: an interruption never leaves a half-written checkpoint."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def train_compressor(
    labels: list[str | os.PathLike], out: str | os.PathLike, args: TrainArguments | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train, validate each epoch, checkpoint, and save the final compressor to ``out``
    (``TokenCompressor.from_pretrained(out)`` loads it). Resumes from ``out/checkpoint`` when present.

    Returns:
        ``{"history": [per-epoch metrics], "skipped_segments": segments without signal}``.
    """
    from tqdm.auto import tqdm

    args = args or TrainArguments()
    out = Path(out)
    manifest, segments = load_label_dirs([labels] if isinstance(labels, (str, os.PathLike)) else labels)
    train_seg, val_seg = _split(segments, args.val_fraction, args.seed)

    def prepare(segs: list[LabelSegment]):
        kept = [(s.features, t, s.target) for s in segs if (t := relevance_target(s.target)) is not None]
        return kept, len(segs) - len(kept)

    train_items, skipped_train = prepare(train_seg)
    val_items, skipped_val = prepare(val_seg)
    if not train_items or not val_items:
        raise LabelError("no segment has a positive relevance to learn from")

    torch.manual_seed(args.seed)
    config = TokenCompressorConfig(
        in_channels=manifest["feature_channels"],
        features=manifest["features"],
        base_model_type=manifest["model_type"],
        base_model_name_or_path=manifest.get("model_name_or_path"),
        **args.compressor,
    )
    model = TokenCompressor(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    state = {"epoch": 0, "history": []}
    checkpoint = out / _CHECKPOINT
    if not (checkpoint / "state.json").is_file() and (out / f"{_CHECKPOINT}.old" / "state.json").is_file():
        os.replace(out / f"{_CHECKPOINT}.old", checkpoint)  # interrupted between the two renames below
    settings = {
        "labels": [str(Path(p).resolve()) for p in ([labels] if isinstance(labels, (str, os.PathLike)) else labels)],
        **{k: v for k, v in asdict(args).items() if k not in ("epochs", "patience")},
    }
    state["settings"] = settings
    if (checkpoint / "state.json").is_file():
        saved = json.loads((checkpoint / "state.json").read_text())
        if saved.get("settings") != settings:
            differs = sorted(k for k in settings if saved.get("settings", {}).get(k) != settings[k])
            raise LabelError(
                f"--out {str(out)!r} holds a training run with other settings ({differs}); use a new "
                "--out, or the same settings to resume (only --epochs may change)"
            )
        model = TokenCompressor.from_pretrained(checkpoint)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        state = saved

    bar = tqdm(
        range(state["epoch"], args.epochs),
        initial=state["epoch"],
        total=args.epochs,
        desc="training",
        disable=not progress,
    )
    best = min(state["history"], key=lambda m: m["kl"], default=None)
    for epoch in bar:
        if args.patience is not None and best is not None and epoch - best["epoch"] >= args.patience:
            break  # no improvement for `patience` epochs
        model.train()
        rng = random.Random(args.seed * 1_000_003 + epoch)
        total, batches = 0.0, 0
        for features, targets, mask in _batches([(f, t) for f, t, _ in train_items], args.batch_size, rng):
            loss = _kl(model(features, mask=mask), targets, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        metrics = {"epoch": epoch + 1, "train_kl": total / batches, **evaluate_segments(model, val_items)}
        state = {"epoch": epoch + 1, "history": [*state["history"], metrics], "settings": settings}
        if best is None or metrics["kl"] < best["kl"]:
            best = metrics
            model.save_pretrained(out / "best")  # before the checkpoint, so a resumed run always has it
        _save_checkpoint(checkpoint, model, optimizer, state)
        bar.set_postfix(val_kl=f"{metrics['kl']:.4f}", recall50=f"{metrics['recall@50%']:.3f}")

    if args.patience is not None and best is not None and (out / "best").is_dir():
        model = TokenCompressor.from_pretrained(out / "best")  # the best validation KL, not the last epoch
    elif args.patience is not None and best is not None:  # a checkpoint from before best/ was kept
        best = state["history"][-1]
    model.save_pretrained(out)
    result = {
        "history": state["history"],
        "epochs_run": state["epoch"],
        "best_epoch": None if best is None else best["epoch"],
        "stopped_early": args.patience is not None and state["epoch"] < args.epochs,
        "skipped_segments": skipped_train + skipped_val,
        "train_segments": len(train_items),
        "val_segments": len(val_items),
    }
    (out / "train_log.json").write_text(json.dumps(result, indent=2))
    return result
