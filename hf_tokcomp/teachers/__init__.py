"""Teacher relevance for training the compressor: GAE (gradient-weighted attention rollout) and occlusion."""

from .gae import append_answers, cut_at_eos, greedy_answers, visual_relevance
from .occlusion import occlusion_relevance

__all__ = ["append_answers", "cut_at_eos", "greedy_answers", "occlusion_relevance", "visual_relevance"]
