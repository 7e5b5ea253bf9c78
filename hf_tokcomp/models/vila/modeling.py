"""VILA1.5 as a transformers model, and its token-compressed variant.

``VilaPreTrainedForConditionalGeneration`` is the faithful, uncompressed port: SigLIP ``hidden_states[-2]`` ->
:class:`MlpDownsampleProjector` (column-major 2x2 tokens) -> features at the placeholder ids -> ``LlamaForCausalLM``
with positions ``0..n-1`` over the real tokens. ``VilaForConditionalGeneration`` adds input-stage compression
(:class:`~hf_tokcomp.mixin.TokenCompressionMixin`): each image, and each video frame, is one segment; kept tokens keep
their original 1-D positions and an explicit attention mask is always passed (gapped positions are never read as
packed sequences).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedModel, SiglipVisionModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...hub.mixin import CompressorHubMixin
from ...runtime.mixin import MergedInputs, TokenCompressionMixin, compressed_forward
from ...runtime.registry import register_family
from ...runtime.segments import split_segments
from .checkpoint.loading import load_original, save_original
from .config import VilaConfig
from .projector import MlpDownsampleProjector

__all__ = ["VilaPreTrainedForConditionalGeneration", "VilaForConditionalGeneration"]


class VilaPreTrainedForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """The uncompressed VILA1.5 port. Loads and saves the ORIGINAL three-folder layout (``llm/``,
    ``vision_tower/``, ``mm_projector/`` + root ``config.json``)."""

    config_class = VilaConfig
    config: VilaConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "text")
    _no_split_modules = ["LlamaDecoderLayer", "SiglipEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: VilaConfig) -> None:
        super().__init__(config)
        self.vision_tower = SiglipVisionModel(config.vision_tower_cfg)
        self.mm_projector = MlpDownsampleProjector(config.mm_hidden_size, config.hidden_size)
        self.llm = LlamaForCausalLM(config.llm_cfg)
        self.post_init()
        self.generation_config = self.llm.generation_config

    # ---- loading and saving the original layout --------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
        """Load a VILA1.5 checkpoint in the original layout (local directory or Hub id); every weight must load.

        Keyword arguments: ``dtype``, ``attn_implementation``, ``device_map``, Hub arguments (``revision``,
        ``cache_dir``, ``token``, ``local_files_only``), ``output_loading_info``, and config overrides (e.g.
        ``token_keep=0.5``, ``token_order="row_major"``, ``chat_template="llama_3_fix"``).
        """
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no positional model arguments, got {model_args}")
        return load_original(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Write the original layout, which :meth:`from_pretrained` (and the original code) loads back."""
        save_original(self, save_directory, **kwargs)

    # ---- embeddings --------------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` images -> ``(N, T, hidden)`` visual tokens (T = 196 for VILA1.5), in
        ``config.token_order``."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"`pixel_values` must be (images, 3, height, width), got shape {tuple(pixel_values.shape)}; build it "
                "with VilaProcessor."
            )
        tower = self.vision_tower.embeddings.patch_embedding.weight
        out = self.vision_tower(pixel_values.to(tower.device, tower.dtype), output_hidden_states=True)
        features = out.hidden_states[self.config.mm_vision_select_layer]  # no post-layernorm, no head
        projector = self.mm_projector.layers[2].weight
        return self.mm_projector(features.to(projector.device, projector.dtype), self.config.token_order)

    def get_video_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """``(V, F, 3, S, S)`` frames -> ``(V, F, T, hidden)``: every frame is encoded as an image."""
        if pixel_values_videos.ndim != 5:
            raise ValueError(
                "`pixel_values_videos` must be (videos, frames, 3, height, width), got shape "
                f"{tuple(pixel_values_videos.shape)}; build it with VilaProcessor."
            )
        videos, frames = pixel_values_videos.shape[:2]
        features = self.get_image_features(pixel_values_videos.flatten(0, 1))
        return features.view(videos, frames, *features.shape[1:])

    def _merge_visual(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        pixel_values_videos: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, list[int]]]]:
        """Text embeddings with the visual tokens spliced in at the placeholder ids.

        Returns:
            ``(B, L, D)`` embeddings, and per kind ("image", "video") the ``(B, L)`` placeholder mask and the tokens
            of each image / frame in batch order.
        """
        config = self.config
        masks = {"image": input_ids == config.image_token_id, "video": input_ids == config.video_token_id}
        placeholders = masks["image"] | masks["video"]
        embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholders, 0))
        found: dict[str, tuple[torch.Tensor, list[int]]] = {}
        for kind, pixels in (("image", pixel_values), ("video", pixel_values_videos)):
            mask = masks[kind]
            if pixels is None:
                if mask.any():
                    arg = "pixel_values" if kind == "image" else "pixel_values_videos"
                    raise ValueError(
                        f"`input_ids` hold {int(mask.sum())} {kind} placeholder tokens (id "
                        f"{getattr(config, f'{kind}_token_id')}) but no `{arg}` were passed. Pass the pixels the "
                        "processor returned."
                    )
                continue
            feats = self.get_image_features(pixels) if kind == "image" else self.get_video_features(pixels)
            feats = feats.reshape(-1, feats.shape[-2], feats.shape[-1])  # (images or frames, T, D)
            if int(mask.sum()) != feats.shape[0] * feats.shape[1]:
                raise ValueError(
                    f"{kind} placeholder tokens and {kind} features do not match: {int(mask.sum())} tokens in "
                    f"`input_ids`, {feats.shape[0]} {'images' if kind == 'image' else 'frames'} x {feats.shape[1]} "
                    "tokens from the pixels. Build the inputs with VilaProcessor."
                )
            embeds = embeds.masked_scatter(mask[..., None], feats.to(embeds.device, embeds.dtype))
            found[kind] = (mask, [feats.shape[1]] * feats.shape[0])
        return embeds, found

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """``input_ids`` ``(B, L)`` with the placeholder ids, ``pixel_values`` ``(N, 3, S, S)``,
        ``pixel_values_videos`` ``(V, F, 3, S, S)`` -> the LLM's output. Without ``position_ids``, the first call
        numbers the real tokens ``0..n-1`` (as the original does for padded batches)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of `input_ids` and `inputs_embeds`")
        if inputs_embeds is None:
            inputs_embeds, _ = self._merge_visual(input_ids, pixel_values, pixel_values_videos)
        elif pixel_values is not None or pixel_values_videos is not None:
            raise ValueError(
                "pixels were passed with `inputs_embeds`: the visual tokens are spliced at the placeholder ids of "
                "`input_ids`. Pass `input_ids` instead of `inputs_embeds`."
            )
        empty_cache = past_key_values is None or past_key_values.get_seq_length() == 0
        if position_ids is None and attention_mask is not None and empty_cache:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


@register_family("llava_llama")
class VilaForConditionalGeneration(
    CompressorHubMixin, TokenCompressionMixin, VilaPreTrainedForConditionalGeneration, GenerationMixin
):
    """VILA1.5 that keeps ``config.token_keep`` of each image's (each video frame's) visual tokens, chosen by
    ``self.compressor``. Load with ``from_pretrained(path_or_repo, token_keep=0.5, compressor=None | dir | hub_id |
    module)``; ``token_keep=1.0`` is exactly :class:`VilaPreTrainedForConditionalGeneration`."""

    _tokcomp_pixel_keys = ("pixel_values", "pixel_values_videos")
    _tokcomp_visual_keys = ("pixel_values", "pixel_values_videos")

    forward = compressed_forward(VilaPreTrainedForConditionalGeneration.forward)

    def _tokcomp_merge(self, input_ids: torch.Tensor, visual: dict[str, Any]) -> MergedInputs:
        embeds, found = self._merge_visual(input_ids, visual.get("pixel_values"), visual.get("pixel_values_videos"))
        visual_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        segments: list[list[tuple[str, int, int]]] = [[] for _ in range(input_ids.shape[0])]
        for kind, (mask, sizes) in found.items():
            visual_mask |= mask
            segments = [a + b for a, b in zip(segments, split_segments(mask, sizes, kind), strict=True)]
        ordered = [sorted(s, key=lambda seg: seg[1]) for s in segments]
        grids = {}  # every image / frame is a square of merged tokens
        for b, sample in enumerate(ordered):
            for _, start, end in sample:
                side = math.isqrt(end - start)
                if side * side == end - start:
                    grids[(b, start)] = (1, side, side)
        return MergedInputs(embeds, visual_mask, ordered, grids)

    def _tokcomp_text_model(self) -> nn.Module:
        return self.llm.model

    def _tokcomp_lm_head(self) -> nn.Module:
        return self.llm.lm_head
