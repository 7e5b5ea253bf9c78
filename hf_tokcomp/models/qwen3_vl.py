"""Qwen3-VL (dense and MoE) with input-stage visual token compression.

What differs from Qwen2-VL:

- DeepStack: the vision tower also returns features of some of its blocks, which the LLM ADDS to the hidden
  states of its first decoder layers at the visual positions. They are per-token side inputs: pruned with the
  tokens (``MergedInputs.side``) and handed to the stock forward as pre-encoded ``mm_encoder_outputs`` for the
  kept tokens, so ``visual_pos_masks`` is rebuilt by the stock code on the compressed sequence. The layer-0
  features are computed on the LLM input, before any DeepStack addition, as in the stock forward.
- A video's frames are separated by timestamp text in Qwen3-VL's prompts, so a segment is one FRAME (one
  temporal patch group): each frame keeps its own ``token_keep`` share and is scored against the instruction.
- Positions: the stock interleaved M-RoPE ids of the full sequence, kept for the kept tokens (plus a contiguous
  text row), and the rope delta for decoding, exactly as for Qwen2-VL.
- MoE: the router's auxiliary loss is computed by the stock forward on the compressed sequence it runs.
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import Qwen3VLConfig, Qwen3VLMoeConfig
from transformers import Qwen3VLForConditionalGeneration as _StockQwen3VL
from transformers import Qwen3VLMoeForConditionalGeneration as _StockQwen3VLMoe
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from ..hub.mixin import CompressorHubMixin
from ..runtime.compression import CompressedBatch
from ..runtime.config import QWEN_ANSWER_START, answer_start_field, coverage_field, selector_field, token_keep_field
from ..runtime.mixin import MergedInputs, compressed_forward
from ..runtime.registry import register_family
from ..runtime.segments import split_segments
from .qwen_vl import QwenVLCompressionMixin

__all__ = [
    "Qwen3VLCompressionConfig",
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLMoeCompressionConfig",
    "Qwen3VLMoeForConditionalGeneration",
]


@strict
class Qwen3VLCompressionConfig(Qwen3VLConfig):
    """The stock Qwen3-VL config plus the compression fields (``token_keep``, ``answer_start_ids``, ``selector``)."""

    token_keep: float | int = token_keep_field()

    token_coverage: float | int = coverage_field()
    answer_start_ids: list[int] | None = answer_start_field(QWEN_ANSWER_START)
    selector: str = selector_field()


@strict
class Qwen3VLMoeCompressionConfig(Qwen3VLMoeConfig):
    """The stock Qwen3-VL-MoE config plus the compression fields."""

    token_keep: float | int = token_keep_field()

    token_coverage: float | int = coverage_field()
    answer_start_ids: list[int] | None = answer_start_field(QWEN_ANSWER_START)
    selector: str = selector_field()


class Qwen3VLCompressionMixin(QwenVLCompressionMixin):
    """Merge with DeepStack side inputs and frame segments; hand the kept tokens to the stock forward."""

    def _tokcomp_merge(self, input_ids: torch.Tensor, visual: dict[str, Any]) -> MergedInputs:
        inner = self.model
        embeds = inner.get_input_embeddings()(input_ids)
        batch = input_ids.shape[0]
        visual_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        segments: list[list[tuple[str, int, int]]] = [[] for _ in range(batch)]
        grids: dict[tuple[int, int], tuple[int, int, int]] = {}
        side: dict[str, torch.Tensor] = {}
        merge = self.config.vision_config.spatial_merge_size
        sources = (
            ("image", "pixel_values", "image_grid_thw", self.config.image_token_id, inner.get_image_features),
            ("video", "pixel_values_videos", "video_grid_thw", self.config.video_token_id, inner.get_video_features),
        )
        for kind, pixels_key, grid_key, token_id, encode in sources:
            if visual.get(pixels_key) is None:
                continue
            mask = input_ids == token_id
            out = encode(visual[pixels_key], visual[grid_key], return_dict=True)
            frames = [(int(h) // merge, int(w) // merge) for t, h, w in visual[grid_key].tolist() for _ in range(t)]
            sizes = [h * w for h, w in frames] if kind == "video" else [f.shape[0] for f in out.pooler_output]
            shapes = iter(
                frames
                if kind == "video"
                else [(int(h) // merge, int(w) // merge) for _, h, w in visual[grid_key].tolist()]
            )
            for b, found in enumerate(split_segments(mask, sizes, kind)):
                segments[b] += found
                for _, start, _ in found:
                    grids[(b, start)] = (1, *next(shapes))
            embeds = embeds.masked_scatter(
                mask[..., None], torch.cat(out.pooler_output).to(embeds.device, embeds.dtype)
            )
            for level, features in enumerate(getattr(out, "deepstack_features", None) or []):
                name = f"deepstack_{level}"
                side.setdefault(name, torch.zeros_like(embeds))
                flat = torch.cat(features).to(embeds.device, embeds.dtype)
                side[name] = side[name].masked_scatter(mask[..., None], flat)
            visual_mask |= mask
        ordered = [sorted(s, key=lambda seg: seg[1]) for s in segments]
        return MergedInputs(embeds, visual_mask, ordered, grids, side)

    def _tokcomp_llm_inputs(self, batch: CompressedBatch, generating: bool) -> dict[str, Any]:
        """The compressed ids with the kept tokens' embeddings and DeepStack features as pre-encoded
        ``mm_encoder_outputs`` (one entry per sample), so the stock forward rebuilds ``visual_pos_masks``."""
        encoded = {}
        levels = sorted(int(name.split("_")[1]) for name in batch.side)
        for kind, token_id in (("image", self.config.image_token_id), ("video", self.config.video_token_id)):
            mask = batch.input_ids == token_id
            if not bool(mask.any()):
                continue
            rows = range(mask.shape[0])
            pooled = [batch.inputs_embeds[b][mask[b]] for b in rows]
            if levels:
                deepstack = [tuple(batch.side[f"deepstack_{i}"][b][mask[b]] for b in rows) for i in levels]
                encoded[kind] = BaseModelOutputWithDeepstackFeatures(pooler_output=pooled, deepstack_features=deepstack)
            else:  # Qwen3.5: no DeepStack
                encoded[kind] = BaseModelOutputWithPooling(pooler_output=pooled)
        return {"input_ids": batch.input_ids, "mm_encoder_outputs": encoded}


@register_family("qwen3_vl")
class Qwen3VLForConditionalGeneration(CompressorHubMixin, Qwen3VLCompressionMixin, _StockQwen3VL, GenerationMixin):
    """``transformers.Qwen3VLForConditionalGeneration`` that keeps ``config.token_keep`` of each image's (each video
    frame's) visual tokens and of their DeepStack features. Load with ``from_pretrained(base, token_keep=0.5)``."""

    config_class = Qwen3VLCompressionConfig
    config: Qwen3VLCompressionConfig

    forward = compressed_forward(_StockQwen3VL.forward)


@register_family("qwen3_vl_moe")
class Qwen3VLMoeForConditionalGeneration(
    CompressorHubMixin, Qwen3VLCompressionMixin, _StockQwen3VLMoe, GenerationMixin
):
    """``transformers.Qwen3VLMoeForConditionalGeneration`` with the same compression as the dense model."""

    config_class = Qwen3VLMoeCompressionConfig
    config: Qwen3VLMoeCompressionConfig

    forward = compressed_forward(_StockQwen3VLMoe.forward)
