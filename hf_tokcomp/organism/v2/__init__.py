"""Organism v2 (in development): the measuring instrument that should tell selection methods apart.

12 x 12 = 144 visual tokens per image, 10-24 objects (4 shapes x 8 colours), six question types whose evidence
the question's words mostly do not point at (attribute look-up, existence with hard "no" cases, left-of, below,
counts, and a two-image type), both prompt orders, and a 4-layer LLM with M-RoPE theta 10 / sections [2, 7, 7]
(``make organism-v2``; seeded and resumable). Status: the recipe does not yet learn existence and two-image
questions (they stay at chance for thousands of steps, see ``benchmarks/results/organism_v2_attempts.md``), so
v1 (:mod:`hf_tokcomp.organism`) stays the shipped organism. Weights, once trained, go to :data:`ORGANISM_V2_DIR`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ORGANISM_V2_DIR"]

#: where ``make organism-v2`` installs the trained v2 checkpoint (not shipped yet)
ORGANISM_V2_DIR = Path(__file__).parent / "weights"
