"""What Qwen2-VL and Qwen2.5-VL share: placeholder tokens, M-RoPE positions and the rope delta."""

from __future__ import annotations

from typing import Any

import torch

from ..runtime.compression import CompressedBatch
from ..runtime.mixin import MergedInputs, TokenCompressionMixin
from ..runtime.segments import split_segments

__all__ = ["QwenVLCompressionMixin"]


class QwenVLCompressionMixin(TokenCompressionMixin):
    """Hooks for the Qwen VL families: ``self.model`` is the stock ``*VLModel``."""

    _tokcomp_pixel_keys = ("pixel_values", "pixel_values_videos")
    _tokcomp_visual_keys = (
        "pixel_values",
        "pixel_values_videos",
        "image_grid_thw",
        "video_grid_thw",
        "mm_token_type_ids",
    )

    def _tokcomp_merge(self, input_ids: torch.Tensor, visual: dict[str, Any]) -> MergedInputs:
        inner = self.model
        embeds = inner.get_input_embeddings()(input_ids)
        visual_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        segments: list[list[tuple[str, int, int]]] = [[] for _ in range(input_ids.shape[0])]
        grids: dict[tuple[int, int], tuple[int, int, int]] = {}
        merge = self.config.vision_config.spatial_merge_size
        sources = (
            ("image", "pixel_values", "image_grid_thw", self.config.image_token_id, inner.get_image_features),
            ("video", "pixel_values_videos", "video_grid_thw", self.config.video_token_id, inner.get_video_features),
        )
        for kind, pixels_key, grid_key, token_id, encode in sources:
            if visual.get(pixels_key) is None:
                continue
            mask = input_ids == token_id
            features = encode(visual[pixels_key], visual[grid_key], return_dict=True).pooler_output
            thw = iter(visual[grid_key].tolist())  # one (t, h, w) per image / video, in batch order
            for b, found in enumerate(split_segments(mask, [f.shape[0] for f in features], kind)):
                segments[b] += found
                for _, start, _ in found:
                    t, h, w = next(thw)
                    grids[(b, start)] = (t, h // merge, w // merge)
            flat = torch.cat(features).to(embeds.device, embeds.dtype)
            embeds = embeds.masked_scatter(mask[..., None], flat)
            visual_mask |= mask
        return MergedInputs(embeds, visual_mask, [sorted(s, key=lambda seg: seg[1]) for s in segments], grids)

    def _tokcomp_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        visual: dict[str, Any],
        position_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(3, B, L)`` M-RoPE ids (temporal, height, width), as the stock ``get_rope_index`` builds them."""
        if position_ids is not None:
            if position_ids.ndim == 2:
                return position_ids[None].expand(3, -1, -1)
            return position_ids[1:] if position_ids.shape[0] == 4 else position_ids
        token_types = visual.get("mm_token_type_ids")
        if token_types is None:  # text 0, image 1, video 2, as the processor marks them
            token_types = (input_ids == self.config.image_token_id).int()
            token_types += 2 * (input_ids == self.config.video_token_id).int()
        extra = {k: visual[k] for k in ("second_per_grid_ts",) if visual.get(k) is not None}
        positions, _ = self.model.get_rope_index(
            input_ids,
            mm_token_type_ids=token_types,
            image_grid_thw=visual.get("image_grid_thw") if visual.get("pixel_values") is not None else None,
            video_grid_thw=visual.get("video_grid_thw") if visual.get("pixel_values_videos") is not None else None,
            attention_mask=attention_mask,
            **extra,
        )
        return positions

    def _tokcomp_llm_positions(self, batch: CompressedBatch) -> torch.Tensor:
        """``(4, B, L')``: row 0 = contiguous text positions (used only to build masks, so the gaps in the
        M-RoPE rows are never read as packed sequences), rows 1-3 = the original M-RoPE ids."""
        mask = batch.attention_mask
        text = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        return torch.cat([text[None].to(batch.position_ids.dtype), batch.position_ids], dim=0)

    def _tokcomp_start_decoding(self, batch: CompressedBatch) -> None:
        """Decoding continues at (largest original position + 1): the rope delta of the full sequence,
        expressed against the compressed length, is what the stock decoding step adds."""
        mask = batch.attention_mask.bool()
        last = batch.position_ids.masked_fill(~mask[None], -1).amax(dim=(0, 2))
        self.model.rope_deltas = (last + 1 - mask.sum(-1))[:, None]
