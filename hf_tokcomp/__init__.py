"""hf_tokcomp: input-stage visual token compression for HuggingFace multimodal LLMs (arXiv 2506.01097)."""

from .runtime._compat import VERSION, check_transformers_version

check_transformers_version()

from .hub.config import TokCompConfig  # noqa: E402
from .hub.loader import TokCompForImageTextToText  # noqa: E402
from .models import (  # noqa: E402
    InternVLCompressionConfig,
    InternVLForConditionalGeneration,
    LlavaOnevisionCompressionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLCompressionConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLCompressionConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3_5CompressionConfig,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeCompressionConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLCompressionConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeCompressionConfig,
    Qwen3VLMoeForConditionalGeneration,
    VilaConfig,
    VilaForConditionalGeneration,
    VilaProcessor,
)
from .runtime.compressor import TokenCompressor, TokenCompressorConfig  # noqa: E402
from .runtime.selection import SampleSelection  # noqa: E402

__version__ = VERSION


def _register_auto_classes() -> None:
    """Compressor-only repos load with AutoModelForImageTextToText once hf_tokcomp is imported."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    AutoConfig.register(TokCompConfig.model_type, TokCompConfig, exist_ok=True)
    AutoConfig.register(VilaConfig.model_type, VilaConfig, exist_ok=True)  # VILA1.5 root configs
    AutoModelForImageTextToText.register(TokCompConfig, TokCompForImageTextToText, exist_ok=True)


_register_auto_classes()

__all__ = [
    "InternVLCompressionConfig",
    "InternVLForConditionalGeneration",
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
    "SampleSelection",
    "TokCompConfig",
    "TokCompForImageTextToText",
    "TokenCompressor",
    "TokenCompressorConfig",
    "VilaConfig",
    "VilaForConditionalGeneration",
    "VilaProcessor",
    "__version__",
]
