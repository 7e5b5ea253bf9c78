"""Qwen2-VL with input-stage visual token compression."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Qwen2VLConfig
from transformers import Qwen2VLForConditionalGeneration as _StockQwen2VL
from transformers.generation import GenerationMixin

from ..hub.mixin import CompressorHubMixin
from ..runtime.config import QWEN_ANSWER_START, answer_start_field, coverage_field, selector_field, token_keep_field
from ..runtime.mixin import compressed_forward
from ..runtime.registry import register_family
from .qwen_vl import QwenVLCompressionMixin

__all__ = ["Qwen2VLCompressionConfig", "Qwen2VLForConditionalGeneration"]


@strict
class Qwen2VLCompressionConfig(Qwen2VLConfig):
    """The stock Qwen2-VL config plus ``token_keep`` (fraction of visual tokens kept, in (0, 1])."""

    token_keep: float | int = token_keep_field()

    token_coverage: float | int = coverage_field()
    answer_start_ids: list[int] | None = answer_start_field(QWEN_ANSWER_START)
    selector: str = selector_field()


@register_family("qwen2_vl")
class Qwen2VLForConditionalGeneration(CompressorHubMixin, QwenVLCompressionMixin, _StockQwen2VL, GenerationMixin):
    """``transformers.Qwen2VLForConditionalGeneration`` that keeps ``config.token_keep`` of each image's and
    video's visual tokens, chosen by ``self.compressor``. Load with
    ``from_pretrained(base, token_keep=0.5, compressor=None | dir | hub_id | module)``."""

    config_class = Qwen2VLCompressionConfig
    config: Qwen2VLCompressionConfig

    forward = compressed_forward(_StockQwen2VL.forward)
