"""Find our class for a checkpoint: the families register themselves (``@register_family``) when imported."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig

from ..runtime.registry import FAMILIES, family_class
from . import internvl, llava_onevision, qwen2_5_vl, qwen2_vl, qwen3_5, qwen3_vl, vila  # noqa: F401 - importing a family registers it

__all__ = ["MODEL_CLASSES", "load_compressed_model"]

#: model_type -> our class (VILA1.5's original layout reads as ``llava_llama``); the registry itself
MODEL_CLASSES = FAMILIES


def load_compressed_model(path: str, **kwargs: Any):
    """Our class for the checkpoint at ``path`` (chosen by its ``model_type``), loaded with ``kwargs``."""
    model_type = AutoConfig.from_pretrained(path).model_type
    return family_class(model_type, f"model {path!r}").from_pretrained(path, **kwargs)
