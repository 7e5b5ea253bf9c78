"""hf_tokcomp: input-stage visual token compression for HuggingFace multimodal LLMs (arXiv 2506.01097)."""

from .runtime._compat import VERSION, check_transformers_version, transformers_supported

__version__ = VERSION


def _register_auto_classes() -> None:
    """Compressor-only repos load with AutoModelForImageTextToText once hf_tokcomp is imported."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    AutoConfig.register(TokCompConfig.model_type, TokCompConfig, exist_ok=True)
    AutoConfig.register(VilaConfig.model_type, VilaConfig, exist_ok=True)  # VILA1.5 root configs
    AutoModelForImageTextToText.register(TokCompConfig, TokCompForImageTextToText, exist_ok=True)


if transformers_supported():
    from .hub.config import TokCompConfig
    from .hub.loader import TokCompForImageTextToText
    from .models import (
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
    from .runtime.compressor import TokenCompressor, TokenCompressorConfig
    from .runtime.selection import SampleSelection

    _register_auto_classes()
else:
    # Another transformers (vLLM's pin, in the environment of ``hf_tokcomp.vllm``): the parts that need only
    # torch (runtime selectors, the vLLM plugin) stay importable; the model classes raise the version error.
    def __getattr__(name: str) -> object:
        if name in __all__:
            check_transformers_version()
        raise AttributeError(f"module 'hf_tokcomp' has no attribute {name!r}")


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
