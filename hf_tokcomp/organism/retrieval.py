"""Training-only retrieval supervision of the organism: where the answer should look, and what it asked.

Without help, a small LLM trained from scratch sits at chance on yes / no questions for thousands of steps
(benchmarks/results/organism_v2_attempts.md): to answer "is there a red square ?" the answer's position must
first gather the question's words (hop 1), then find the matching visual token (hop 2), and the loss on one
answer word gives both hops almost no gradient until both exist. Two auxiliary losses give each hop its own
signal (existence alone, 4 x 4 grid, a trained vision tower, 300 steps, in a first version of
``benchmarks/organism_retrieval_probe.py``: both 0.89, hop 1 alone 0.51, hop 2 alone 0.58, neither 0.50):

- hop 1, :func:`question_targets`: a linear head on the hidden state at the answer-predicting position (the
  input of layer ``retrieval_layer``) names the colour and the shape the question mentions;
- hop 2, :func:`retrieval_loss`: ONE head of layer ``retrieval_layer`` at that position is pushed to attend to
  the visual token the answer reads (:func:`pointer`), or to the first ``<|vision_start|>`` (a sink) when there
  is none ("no", a count of zero).

The pointer of each type is the token that holds what the answer needs once the causal auxiliary targets
(:mod:`~hf_tokcomp.organism.aux_targets`) are learnt: the named object itself; for ``left_of`` the anchor
(it carries its left neighbour's colour); for ``below`` the answer's object (it carries the object above it);
for counts the last matching object in raster order (it carries the running count). Every answer still has to
read the visual tokens: the heads are dropped after training, and the shipped model is the stock architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .task import COLOURS, SHAPES, Sample

__all__ = ["QUESTION_CLASSES", "pointer", "question_targets", "retrieval_loss", "question_loss"]

#: classes of the question head: (no colour, 8 colours) + (no shape, 4 shapes)
QUESTION_CLASSES = (1 + len(COLOURS), 1 + len(SHAPES))
_COLOURS = list(COLOURS)


def pointer(sample: Sample) -> int | None:
    """The visual-token index (over the sample's images, one after the other) that the answer reads, or None
    when nothing in the image answers it (the sink)."""
    if sample.qtype == "exists" and sample.answer == "no":
        return None
    if sample.qtype == "count":
        return sample.evidence[-1] if sample.evidence else None
    if sample.qtype == "left_of":
        return sample.evidence[1]
    return sample.evidence[0]


def question_targets(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the colour and the shape its question names (0 = none, else 1 + index). Two ``(B,)``."""
    colours, shapes = [], []
    for sample in samples:
        words = sample.question.split()
        colours.append(next((1 + _COLOURS.index(w) for w in words if w in COLOURS), 0))
        shapes.append(next((1 + SHAPES.index(w) for w in words if w in SHAPES), 0))
    return torch.tensor(colours), torch.tensor(shapes)


def retrieval_loss(
    attention: torch.Tensor,
    input_ids: torch.Tensor,
    samples: list[Sample],
    image_id: int,
    sink_id: int,
) -> torch.Tensor:
    """Negative log attention mass on each row's pointer token (or its sink).

    Args:
        attention: ``(B, L)``, one head's attention probabilities at each row's answer-predicting position.
        input_ids: ``(B, L)``; visual tokens are ``image_id``, the sink is the row's first ``sink_id``.
        samples: the ``B`` rows' samples.
    """
    targets = []
    for row, sample in enumerate(samples):
        ids = input_ids[row]
        k = pointer(sample)
        positions = (ids == image_id).nonzero().flatten() if k is not None else (ids == sink_id).nonzero().flatten()
        targets.append(positions[k if k is not None else 0])
    mass = attention.gather(1, torch.stack(targets)[:, None]).squeeze(1)
    return -torch.log(mass.clamp_min(1e-6)).mean()


def question_loss(head: torch.nn.Module, states: torch.Tensor, samples: list[Sample]) -> torch.Tensor:
    """Cross-entropy of ``head`` on ``states`` ``(B, D)`` (each row's answer-predicting position) against the
    colour and shape the questions name."""
    colours, shapes = question_targets(samples)
    logits = head(states)
    return F.cross_entropy(logits[:, : QUESTION_CLASSES[0]], colours) + F.cross_entropy(
        logits[:, QUESTION_CLASSES[0] :], shapes
    )
