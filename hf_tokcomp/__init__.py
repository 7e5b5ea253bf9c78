"""hf_tokcomp: input-stage visual token compression for HuggingFace multimodal LLMs (arXiv 2506.01097)."""

from ._compat import check_transformers_version

check_transformers_version()

from .compressor import TokenCompressor, TokenCompressorConfig  # noqa: E402
from .models import (  # noqa: E402
    LlavaOnevisionCompressionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLCompressionConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLCompressionConfig,
    Qwen2VLForConditionalGeneration,
)
from .selection import SampleSelection  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "LlavaOnevisionCompressionConfig",
    "LlavaOnevisionForConditionalGeneration",
    "Qwen2VLCompressionConfig",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLCompressionConfig",
    "Qwen2_5_VLForConditionalGeneration",
    "SampleSelection",
    "TokenCompressor",
    "TokenCompressorConfig",
    "__version__",
]
