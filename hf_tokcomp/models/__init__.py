"""One file per model family; each adds only what is specific to that family."""

from .internvl import InternVLCompressionConfig, InternVLForConditionalGeneration
from .llava_onevision import LlavaOnevisionCompressionConfig, LlavaOnevisionForConditionalGeneration
from .qwen2_5_vl import Qwen2_5_VLCompressionConfig, Qwen2_5_VLForConditionalGeneration
from .qwen2_vl import Qwen2VLCompressionConfig, Qwen2VLForConditionalGeneration
from .qwen3_5 import (
    Qwen3_5CompressionConfig,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeCompressionConfig,
    Qwen3_5MoeForConditionalGeneration,
)
from .qwen3_vl import (
    Qwen3VLCompressionConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeCompressionConfig,
    Qwen3VLMoeForConditionalGeneration,
)
from .registry import MODEL_CLASSES, load_compressed_model
from .vila import VilaConfig, VilaForConditionalGeneration, VilaProcessor

__all__ = [
    "InternVLCompressionConfig",
    "InternVLForConditionalGeneration",
    "MODEL_CLASSES",
    "load_compressed_model",
    "LlavaOnevisionCompressionConfig",
    "LlavaOnevisionForConditionalGeneration",
    "Qwen2VLCompressionConfig",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLCompressionConfig",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen3_5CompressionConfig",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeCompressionConfig",
    "Qwen3_5MoeForConditionalGeneration",
    "Qwen3VLCompressionConfig",
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLMoeCompressionConfig",
    "Qwen3VLMoeForConditionalGeneration",
    "VilaConfig",
    "VilaForConditionalGeneration",
    "VilaProcessor",
]
