"""The vLLM model classes of the plugin: Qwen2-VL and Qwen2.5-VL that prune each image's visual tokens.

Each class is vLLM's own model with three methods replaced (and its multimodal processor with one):

- the processor's ``_get_prompt_updates`` emits ``keep_count(token_keep, n)`` placeholders per image instead of
  ``n`` (vLLM fixes a request's length at admission, before the image is encoded);
- ``embed_multimodal`` runs the stock vision tower, then keeps each image's selected tokens
  (:func:`~hf_tokcomp.vllm.pruning.kept_tokens`) and appends their grid coordinates as 3 channels;
- ``get_mrope_input_positions`` lays out the pruned prompt: text positions exactly as the stock model gives them
  for the unpruned prompt (the text after an image starts past its whole grid);
- ``recompute_mrope_positions`` (vLLM's pruning hook, once per prefill step) writes each kept token's original
  position and strips the coordinate channels (:func:`~hf_tokcomp.vllm.pruning.rewrite_positions`).

Images only: a model of the plugin refuses to start unless ``limit_mm_per_prompt={"video": 0}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from vllm.model_executor.models.interfaces import SupportsMultiModalPruning
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing.processor import PromptReplacement

from .pruning import PruneSettings, kept_tokens, prompt_positions, rewrite_positions, with_positions

__all__ = ["TokCompQwen2VLForConditionalGeneration", "TokCompQwen2_5_VLForConditionalGeneration", "ARCHITECTURES"]


class _PrunedPlaceholders:
    """Processor mixin: ``keep_count(token_keep, n)`` image placeholders instead of ``n``."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs):
        settings = PruneSettings.from_config(self.info.get_hf_config())
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)

        def pruned(replacement):
            def replace(item_idx: int) -> list[int]:
                tokens = replacement(item_idx)
                if not isinstance(tokens, list):
                    raise TypeError(f"expected a list of placeholder ids from vLLM's processor, got {type(tokens)}")
                return tokens[: settings.count(len(tokens))]

            return replace

        return [
            PromptReplacement(u.modality, u.target, pruned(u.replacement)) if u.modality == "image" else u
            for u in updates
        ]


class _TokCompPruning:
    """Model mixin over vLLM's Qwen2-VL / Qwen2.5-VL (see the module docstring). Not a subclass of the
    ``SupportsMultiModalPruning`` protocol itself: a protocol base in front of the model would skip its
    ``__init__``; the concrete classes list the protocol last."""

    #: the plugin's runner patch switches vLLM's pruning hook on for models that set this
    tokcomp_pruning = True

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.tokcomp = PruneSettings.from_config(self.config)
        limit = vllm_config.model_config.get_multimodal_config().get_limit_per_prompt("video")
        if limit:
            raise ValueError(
                f"hf_tokcomp's vLLM plugin prunes images only, but this engine accepts {limit} video(s) per prompt: "
                "pass `limit_mm_per_prompt={'video': 0}` (`--limit-mm-per-prompt '{\"video\": 0}'`), or serve "
                "videos with the stock architecture."
            )

    def embed_multimodal(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        """Per image, ``(k, D + 3)``: its kept merged tokens and their ``(t, h, w)`` in the grid."""
        if kwargs.get("pixel_values_videos") is not None or kwargs.get("video_embeds") is not None:
            raise ValueError("hf_tokcomp's vLLM plugin prunes images only (limit_mm_per_prompt={'video': 0})")
        outputs = super().embed_multimodal(**kwargs)
        if not outputs:
            return outputs
        merge = self.visual.spatial_merge_size
        grids = torch.as_tensor(kwargs["image_grid_thw"]).reshape(-1, 3).tolist()
        pruned = []
        for embeds, (t, h, w) in zip(outputs, grids, strict=True):
            grid = (t, h // merge, w // merge)
            pruned.append(with_positions(embeds, kept_tokens(embeds, grid, self.tokcomp), grid))
        return tuple(pruned)

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list) -> tuple[torch.Tensor, int]:
        """``(3, L)`` positions of the pruned prompt and the rope delta. Text tokens get the positions the stock
        model gives them in the unpruned prompt; an image's placeholders get provisional ones (its first
        grid cells), replaced by the kept tokens' own in :meth:`recompute_mrope_positions`."""
        merge = self.config.vision_config.spatial_merge_size
        images = []
        for feature in mm_features:
            if feature.modality != "image":
                raise ValueError(f"hf_tokcomp's vLLM plugin prunes images only, got a {feature.modality!r} input")
            t, h, w = feature.data["image_grid_thw"].data.tolist()
            images.append((feature.mm_position.offset, feature.mm_position.length, (t, h // merge, w // merge)))
        return prompt_positions(len(input_tokens), images)

    def recompute_mrope_positions(
        self,
        input_ids: list[int] | torch.Tensor,
        multimodal_embeddings: Sequence[torch.Tensor],
        mrope_positions: torch.LongTensor,
        num_computed_tokens: int,
    ) -> tuple[Sequence[torch.Tensor], torch.Tensor, int]:
        return rewrite_positions(
            input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens, self.config.image_token_id
        )


class _Qwen2VLProcessor(_PrunedPlaceholders, Qwen2VLMultiModalProcessor):
    pass


class _Qwen2_5_VLProcessor(_PrunedPlaceholders, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    _Qwen2VLProcessor, info=Qwen2VLProcessingInfo, dummy_inputs=Qwen2VLDummyInputsBuilder
)
class TokCompQwen2VLForConditionalGeneration(
    _TokCompPruning, Qwen2VLForConditionalGeneration, SupportsMultiModalPruning
):
    """vLLM's Qwen2-VL with hf_tokcomp's image-token pruning."""


@MULTIMODAL_REGISTRY.register_processor(
    _Qwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class TokCompQwen2_5_VLForConditionalGeneration(_TokCompPruning, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with hf_tokcomp's image-token pruning."""


#: architecture name -> class, as registered with vLLM's ModelRegistry
ARCHITECTURES = {
    "TokCompQwen2VLForConditionalGeneration": TokCompQwen2VLForConditionalGeneration,
    "TokCompQwen2_5_VLForConditionalGeneration": TokCompQwen2_5_VLForConditionalGeneration,
}
