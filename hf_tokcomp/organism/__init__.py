"""The organism: a small Qwen2-VL trained from scratch on a synthetic task, to measure compression on.

So far: the task generator (:mod:`hf_tokcomp.organism.task`). Training, the shipped weights and the evaluation
harness are the open part of the organism issue.
"""

from .task import QUESTION_TYPES, Sample, SceneObject, make_sample, make_split, vocabulary

__all__ = ["QUESTION_TYPES", "Sample", "SceneObject", "make_sample", "make_split", "vocabulary"]
