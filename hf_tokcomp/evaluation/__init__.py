"""Measuring retention: the harness, baselines that are not runtime methods (random / uniform / preset scores,
FastV), FLOP counting, reports and kept-token overlays."""

from .baselines import PresetScores, RandomScores, UniformScores, oracle_scores, uniform_scores
from .fastv import fastv_generate
from .harness import METHODS, EvalSettings, evaluate
from .report import eval_markdown, eval_plot

__all__ = [
    "EvalSettings",
    "METHODS",
    "PresetScores",
    "RandomScores",
    "UniformScores",
    "eval_markdown",
    "eval_plot",
    "evaluate",
    "fastv_generate",
    "oracle_scores",
    "uniform_scores",
]
