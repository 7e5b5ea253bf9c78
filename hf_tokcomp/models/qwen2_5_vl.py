"""Qwen2.5-VL with input-stage visual token compression."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Qwen2_5_VLConfig
from transformers import Qwen2_5_VLForConditionalGeneration as _StockQwen2_5_VL
from transformers.generation import GenerationMixin

from ..hub.mixin import CompressorHubMixin
from ..runtime.config import QWEN_ANSWER_START, answer_start_field, coverage_field, selector_field, token_keep_field
from ..runtime.mixin import compressed_forward
from ..runtime.registry import register_family
from .qwen_vl import QwenVLCompressionMixin

__all__ = ["Qwen2_5_VLCompressionConfig", "Qwen2_5_VLForConditionalGeneration"]


@strict
class Qwen2_5_VLCompressionConfig(Qwen2_5_VLConfig):
    """The stock Qwen2.5-VL config plus ``token_keep`` (fraction of visual tokens kept, in (0, 1])."""

    token_keep: float | int = token_keep_field()

    token_coverage: float | int = coverage_field()
    answer_start_ids: list[int] | None = answer_start_field(QWEN_ANSWER_START)
    selector: str = selector_field()


@register_family("qwen2_5_vl")
class Qwen2_5_VLForConditionalGeneration(CompressorHubMixin, QwenVLCompressionMixin, _StockQwen2_5_VL, GenerationMixin):
    """``transformers.Qwen2_5_VLForConditionalGeneration`` that keeps ``config.token_keep`` of each image's and
    video's visual tokens, chosen by ``self.compressor``. Load with
    ``from_pretrained(base, token_keep=0.5, compressor=None | dir | hub_id | module)``."""

    config_class = Qwen2_5_VLCompressionConfig
    config: Qwen2_5_VLCompressionConfig
    _tokcomp_visual_keys = (*QwenVLCompressionMixin._tokcomp_visual_keys, "second_per_grid_ts")

    forward = compressed_forward(_StockQwen2_5_VL.forward)
