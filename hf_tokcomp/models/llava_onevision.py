"""LLaVA-OneVision with input-stage visual token compression.

A segment is one image (its base crop, its anyres crops and their ``image_newline`` row markers) or one video
(all pooled frames and its closing ``image_newline``). The newline tokens are scored like any other visual
token: the compressor decides whether the row structure is worth its budget (measured by ``tokcomp eval``).
The LLM is Qwen2 with 1-D RoPE: kept tokens keep their original positions (gaps allowed) and an explicit
attention mask is always passed, so the gaps are never read as packed sequences.
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig
from transformers import LlavaOnevisionForConditionalGeneration as _StockLlavaOnevision
from transformers.generation import GenerationMixin

from ..hub.mixin import CompressorHubMixin
from ..runtime.config import QWEN_ANSWER_START, answer_start_field, coverage_field, selector_field, token_keep_field
from ..runtime.mixin import MergedInputs, TokenCompressionMixin, compressed_forward
from ..runtime.registry import register_family
from ..runtime.segments import split_segments

__all__ = ["LlavaOnevisionCompressionConfig", "LlavaOnevisionForConditionalGeneration"]


@strict
class LlavaOnevisionCompressionConfig(LlavaOnevisionConfig):
    """The stock LLaVA-OneVision config plus ``token_keep`` (fraction of visual tokens kept, in (0, 1])."""

    token_keep: float | int = token_keep_field()

    token_coverage: float | int = coverage_field()
    answer_start_ids: list[int] | None = answer_start_field(QWEN_ANSWER_START)
    selector: str = selector_field()


@register_family("llava_onevision")
class LlavaOnevisionForConditionalGeneration(
    CompressorHubMixin, TokenCompressionMixin, _StockLlavaOnevision, GenerationMixin
):
    """``transformers.LlavaOnevisionForConditionalGeneration`` that keeps ``config.token_keep`` of each image's
    and video's visual tokens, chosen by ``self.compressor``. Load with
    ``from_pretrained(base, token_keep=0.5, compressor=None | dir | hub_id | module)``."""

    config_class = LlavaOnevisionCompressionConfig
    config: LlavaOnevisionCompressionConfig
    _tokcomp_pixel_keys = ("pixel_values", "pixel_values_videos")
    _tokcomp_visual_keys = (
        "pixel_values",
        "pixel_values_videos",
        "image_sizes",
        "image_sizes_videos",
        "batch_num_images",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "vision_aspect_ratio",
    )

    forward = compressed_forward(_StockLlavaOnevision.forward)

    def _tokcomp_merge(self, input_ids: torch.Tensor, visual: dict[str, Any]) -> MergedInputs:
        inner = self.model
        embeds = inner.get_input_embeddings()(input_ids)
        visual_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        segments: list[list[tuple[str, int, int]]] = [[] for _ in range(input_ids.shape[0])]
        vision_kwargs = {
            k: visual[k]
            for k in ("vision_feature_layer", "vision_feature_select_strategy")
            if visual.get(k) is not None
        }
        if visual.get("pixel_values") is not None:
            features = inner.get_image_features(
                visual["pixel_values"],
                visual["image_sizes"],
                batch_num_images=visual.get("batch_num_images"),
                return_dict=True,
                **vision_kwargs,
            ).pooler_output
            mask = input_ids == self.config.image_token_id
            found = split_segments(mask, [f.shape[0] for f in features], "image")
            embeds = embeds.masked_scatter(mask[..., None], torch.cat(features).to(embeds.device, embeds.dtype))
            visual_mask |= mask
            segments = [a + b for a, b in zip(segments, found, strict=True)]
        if visual.get("pixel_values_videos") is not None:
            features = inner.get_video_features(visual["pixel_values_videos"], return_dict=True, **vision_kwargs)
            features = features.pooler_output  # (videos, tokens, D)
            mask = input_ids == self.config.video_token_id
            found = split_segments(mask, [features.shape[1]] * features.shape[0], "video")
            embeds = embeds.masked_scatter(mask[..., None], features.flatten(0, 1).to(embeds.device, embeds.dtype))
            visual_mask |= mask
            segments = [a + b for a, b in zip(segments, found, strict=True)]
        return MergedInputs(embeds, visual_mask, [sorted(s, key=lambda seg: seg[1]) for s in segments])
