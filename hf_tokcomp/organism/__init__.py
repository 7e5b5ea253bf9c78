"""The organism: a small Qwen2-VL trained from scratch on CPU on a synthetic visual QA task, to measure on.

12 x 12 = 144 visual tokens per image, 10-24 objects (4 shapes x 8 colours), six question types whose evidence the
question's words mostly do not point at (attribute look-up, existence with hard "no" cases, left-of, below,
counts, and a two-image type), both prompt orders, and a 4-layer LLM.

- :mod:`~hf_tokcomp.organism.task`: scenes, questions, answers and the evidence tokens of each answer;
- :mod:`~hf_tokcomp.organism.model`: the architecture (stock ``Qwen2VLForConditionalGeneration``), processor
  and batches; :mod:`~hf_tokcomp.organism.train`: the training script (``make organism``), with its
  training-only targets (:mod:`~hf_tokcomp.organism.aux_targets`, :mod:`~hf_tokcomp.organism.retrieval`);
- :mod:`~hf_tokcomp.organism.validation`: answer accuracy; :mod:`~hf_tokcomp.organism.report`: the report card;
- :mod:`~hf_tokcomp.organism.export`: splits as JSONL + PNG for ``tokcomp label / train / eval``;
- the trained weights ship inside the package: :func:`load_organism`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .task import QUESTION_TYPES, Sample, SceneObject, make_sample, make_split, vocabulary

__all__ = [
    "QUESTION_TYPES",
    "Sample",
    "SceneObject",
    "make_sample",
    "make_split",
    "vocabulary",
    "ORGANISM_DIR",
    "ORGANISM_COMPRESSOR_DIR",
    "load_organism",
]

#: the shipped organism checkpoint (stock Qwen2-VL layout + processor)
ORGANISM_DIR = Path(__file__).parent / "weights"
#: the shipped compressor trained for it with ``tokcomp label`` + ``tokcomp train``
ORGANISM_COMPRESSOR_DIR = Path(__file__).parent / "compressor"


def load_organism(token_keep: float = 1.0, compressor: Any = None, **kwargs: Any):
    """``(model, processor)``: the shipped organism as an hf_tokcomp ``Qwen2VLForConditionalGeneration``
    (eval mode). ``compressor="shipped"`` attaches the shipped compressor; otherwise as ``from_pretrained``."""
    from ..models import Qwen2VLForConditionalGeneration
    from ..processor import load_processor

    if not (ORGANISM_DIR / "config.json").is_file():
        raise FileNotFoundError(f"no organism weights in {ORGANISM_DIR}; run `make organism` to train them")
    if compressor == "shipped":
        compressor = ORGANISM_COMPRESSOR_DIR
    model = Qwen2VLForConditionalGeneration.from_pretrained(
        ORGANISM_DIR, token_keep=token_keep, compressor=compressor, **kwargs
    )
    return model.eval(), load_processor(ORGANISM_DIR)
