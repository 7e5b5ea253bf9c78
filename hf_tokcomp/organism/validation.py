"""The organism's answer accuracy: greedy, per question type and per prompt order."""

from __future__ import annotations

import torch

from .model import encode_samples
from .task import Sample

__all__ = ["answer_accuracy", "validate"]


def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, whether the answer word (the first labelled token) is predicted greedily: ``logits``
    ``(B, L, V)``, ``labels`` ``(B, L)`` (-100 except on the answer). ``(B,)`` bool."""
    first = (labels != -100).int().argmax(-1)
    rows = torch.arange(labels.shape[0])
    return logits[rows, first - 1].argmax(-1) == labels[rows, first]


@torch.no_grad()
def validate(model, processor, samples: list[Sample], batch_size: int = 100, blank: bool = False) -> dict[str, float]:
    """Greedy answer accuracy per question type, per prompt order (``question_before`` / ``question_after``)
    and ``all`` on ``samples`` (with ``blank``: every image replaced by an empty background, the control that
    shows the model uses the image)."""
    training = model.training
    model.eval()
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = encode_samples(processor, chunk, with_answers=True, blank=blank)
        labels = batch.pop("labels")
        correct = answer_accuracy(model(**batch).logits, labels)
        for sample, ok in zip(chunk, correct.tolist(), strict=True):
            order = "question_before" if sample.question_first else "question_after"
            for group in (sample.qtype, order, "all"):
                hits.setdefault(group, []).append(ok)
    model.train(training)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}
