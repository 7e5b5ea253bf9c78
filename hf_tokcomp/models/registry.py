"""model_type -> our class: adding a family = its file + one line here."""

from __future__ import annotations

from .llava_onevision import LlavaOnevisionForConditionalGeneration
from .qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from .qwen2_vl import Qwen2VLForConditionalGeneration
from .vila import VilaForConditionalGeneration

__all__ = ["MODEL_CLASSES", "load_compressed_model"]

#: model_type -> our class; adding a family = its file + one line here
MODEL_CLASSES = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "llava_onevision": LlavaOnevisionForConditionalGeneration,
    "llava_llama": VilaForConditionalGeneration,  # VILA1.5 (original three-folder layout)
}


def load_compressed_model(path: str, **kwargs):
    """Our class for the checkpoint at ``path`` (chosen by its ``model_type``), loaded with ``kwargs``."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model {path!r} has model_type {model_type!r}; hf_tokcomp supports {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[model_type].from_pretrained(path, **kwargs)
