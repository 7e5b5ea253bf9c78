"""One file per model family; each adds only what is specific to that family."""

from .llava_onevision import LlavaOnevisionCompressionConfig, LlavaOnevisionForConditionalGeneration
from .qwen2_5_vl import Qwen2_5_VLCompressionConfig, Qwen2_5_VLForConditionalGeneration
from .qwen2_vl import Qwen2VLCompressionConfig, Qwen2VLForConditionalGeneration
from .registry import MODEL_CLASSES, load_compressed_model
from .vila import VilaConfig, VilaForConditionalGeneration, VilaProcessor

__all__ = [
    "MODEL_CLASSES",
    "load_compressed_model",
    "LlavaOnevisionCompressionConfig",
    "LlavaOnevisionForConditionalGeneration",
    "Qwen2VLCompressionConfig",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLCompressionConfig",
    "Qwen2_5_VLForConditionalGeneration",
    "VilaConfig",
    "VilaForConditionalGeneration",
    "VilaProcessor",
]
