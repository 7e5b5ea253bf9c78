"""The vLLM model classes of the plugin: Qwen2-VL, Qwen2.5-VL and Qwen3-VL that prune each image's visual tokens.

Each class is vLLM's own model with three methods replaced (and its multimodal processor with one):

- the processor's ``_get_prompt_updates`` emits ``keep_count(token_keep, n)`` placeholders per image instead of
  ``n`` (vLLM fixes a request's length at admission, before the image is encoded);
- ``embed_multimodal`` runs the stock vision tower, then keeps each image's selected tokens
  (:func:`~hf_tokcomp.vllm.pruning.kept_tokens`) and appends their grid coordinates as 3 channels;
- ``get_mrope_input_positions`` lays out the pruned prompt: text positions exactly as the stock model gives them
  for the unpruned prompt (the text after an image starts past its whole grid);
- ``recompute_mrope_positions`` (vLLM's pruning hook, once per prefill step) writes each kept token's original
  position and strips the coordinate channels (:func:`~hf_tokcomp.vllm.pruning.rewrite_positions`).

With a question-aware selector (``attention``, ``learned``) the processor also hands each image its prompt's
token ids (the item field ``tokcomp_context``) and mixes them into the image's hash, so vLLM's processor, encoder
and prefix caches never give one question the tokens kept for another; ``embed_multimodal`` computes the image's
layer-0 features from them (:mod:`hf_tokcomp.vllm.question`).

With several images in a prompt, each image's item also carries all of the prompt's pixels (its features read
the other images' tokens; vLLM may encode them in other batches), and such prompts bypass the processor cache.

Images only: a model of the plugin refuses to start unless ``limit_mm_per_prompt={"video": 0}``; with a
question-aware selector also unless ``tensor_parallel_size=1``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
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
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing.processor import PromptReplacement

from ..runtime.config import QWEN_ANSWER_START
from ..runtime.features import DEFAULT_FEATURES, compressor_spec
from ..runtime.instruction import turn_layout
from .pruning import PruneSettings, kept_tokens, prompt_positions, rewrite_positions, with_positions
from .question import Layer0, question_features

#: the item field that carries an image's prompt (question-aware selectors)
CONTEXT = "tokcomp_context"
#: with several images in a prompt, each image's item also carries all of the prompt's pixels and grids and its
#: own index among them (the features of one image read the others' tokens)
SIBLINGS, SIBLING_GRIDS, SIBLING_INDEX = "tokcomp_pixels", "tokcomp_grids", "tokcomp_index"

__all__ = [
    "TokCompQwen2VLForConditionalGeneration",
    "TokCompQwen2_5_VLForConditionalGeneration",
    "TokCompQwen3VLForConditionalGeneration",
    "ARCHITECTURES",
]


class _PrunedPlaceholders:
    """Processor mixin: ``keep_count(token_keep, n)`` image placeholders instead of ``n``; with a question-aware
    selector, each image carries its prompt (``tokcomp_context``) and a hash that includes it."""

    _tokcomp_prompt: list[int] | None = None

    def _tokcomp_question_aware(self) -> bool:
        return PruneSettings.from_config(self.info.get_hf_config()).question_aware

    def apply(self, inputs, timing_ctx):
        if not self._tokcomp_question_aware():
            return super().apply(inputs, timing_ctx)
        self._tokcomp_prompt = [int(t) for t in inputs.prompt]
        try:
            return super().apply(inputs, timing_ctx)
        finally:
            self._tokcomp_prompt = None

    def _get_mm_hashes(self, inputs):
        hashes = super()._get_mm_hashes(inputs)
        if not self._tokcomp_question_aware():
            return hashes
        # an image's kept tokens depend on its prompt and, through layer 0's keys, on the prompt's other images
        context = json.dumps([[int(t) for t in inputs.prompt], {m: list(h) for m, h in sorted(hashes.items())}])
        prompt = hashlib.sha256(context.encode()).hexdigest()
        return {
            # the item's index too: the same image twice in a prompt is two segments with their own kept tokens
            modality: [
                hashlib.sha256(f"{h}|tokcomp-prompt|{prompt}|{modality}:{i}".encode()).hexdigest()
                for i, h in enumerate(items)
            ]
            for modality, items in hashes.items()
        }

    def _cached_apply_hf_processor(self, inputs, timing_ctx):
        # the processor cache may hand the HF processor only the uncached images of a prompt; with several images
        # each image's fields carry all of them (SIBLINGS), so those prompts are processed whole
        if self._tokcomp_question_aware() and inputs.mm_data_items.get_count("image", strict=False) > 1:
            return self._apply_hf_processor(inputs, timing_ctx)
        return super()._cached_apply_hf_processor(inputs, timing_ctx)

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        out = super()._apply_hf_processor_main(mm_items=mm_items, hf_kwargs=hf_kwargs)
        grids = out.get("image_grid_thw") if hasattr(out, "get") else None
        if self._tokcomp_prompt is not None and grids is not None and len(grids):
            n = len(grids)
            out[CONTEXT] = torch.tensor([self._tokcomp_prompt] * n, dtype=torch.long)
            # each image carries the prompt's images (its features read their tokens too); one image: none
            pixels = out.get("pixel_values")
            if pixels is None:  # precomputed image embeddings: nothing to encode the other images from
                if n > 1:
                    raise ValueError(
                        "hf_tokcomp's question-aware selection needs pixel_values for a prompt with several images "
                        f"(their layer-0 keys read each other), got image embeddings for {n} images: pass the "
                        "images, or one image per prompt."
                    )
                pixels = torch.zeros(0, 0)
            elif n == 1:
                pixels = pixels[:0]
            out[SIBLINGS] = pixels[None].expand(n, *pixels.shape).clone()
            out[SIBLING_GRIDS] = torch.as_tensor(grids)[None].expand(n, n, 3).clone()
            out[SIBLING_INDEX] = torch.arange(n)
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if CONTEXT in hf_inputs:
            for name in (CONTEXT, SIBLING_GRIDS, SIBLING_INDEX):
                fields[name] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
            fields[SIBLINGS] = MultiModalFieldConfig.batched("image")
        return fields

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
    """Model mixin over vLLM's Qwen2-VL / Qwen2.5-VL / Qwen3-VL (see the module docstring). Not a subclass of the
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
        self._tokcomp_question = None
        if self.tokcomp.question_aware:
            if vllm_config.parallel_config.tensor_parallel_size != 1:
                raise ValueError(
                    "hf_tokcomp's question-aware selection reads every attention head of layer 0 and runs with "
                    f"tensor_parallel_size=1 only, got {vllm_config.parallel_config.tensor_parallel_size}."
                )
            self._tokcomp_answer_start = _answer_start_ids(self.config, vllm_config.model_config.model)

    def _tokcomp_question_parts(self) -> dict[str, Any]:
        """Layer 0, the embedding, the rope, the turn layout, the compressor and its feature definition (built on
        first use: the weights are loaded after ``__init__``)."""
        if self._tokcomp_question is None:
            from ..runtime.compressor import TokenCompressor

            lm = self.language_model.model
            attn = lm.layers[0].self_attn

            def qkv(x: torch.Tensor) -> torch.Tensor:  # the fused projection (its weights may be repacked on CPU)
                return attn.qkv_proj(x.reshape(-1, x.shape[-1]))[0].reshape(*x.shape[:-1], -1)

            norms = [getattr(attn, name, None) for name in ("q_norm", "k_norm")]  # Qwen3: per-head, before RoPE
            layer0 = Layer0(
                lm.layers[0].input_layernorm.forward_native,
                lambda x: qkv(x)[..., : attn.q_size],
                lambda x: qkv(x)[..., attn.q_size : attn.q_size + attn.kv_size],
                attn.head_dim,
                attn.scaling,
                *(None if norm is None else norm.forward_native for norm in norms),
            )
            rope = self.config.text_config.rope_parameters
            compressor = None
            if self.tokcomp.compressor is not None:
                device = lm.embed_tokens.weight.device
                compressor = TokenCompressor.from_pretrained(self.tokcomp.compressor).to(device).eval()
            self.config.answer_start_ids = self._tokcomp_answer_start
            self._tokcomp_question = {
                "layer0": layer0,
                "embed": lm.embed_tokens,
                "rope": (rope["rope_theta"], rope["mrope_section"], bool(rope.get("mrope_interleaved", False))),
                "layout": turn_layout(self.config),
                "compressor": compressor,
                "spec": DEFAULT_FEATURES if compressor is None else compressor_spec(compressor),
            }
        return self._tokcomp_question

    def embed_multimodal(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        """Per image, ``(k, D' + 3)``: its kept merged tokens (``D'`` channels: the LLM width ``D``, and for Qwen3-VL
        its deepstack rows after them) and their ``(t, h, w)`` in the grid."""
        if kwargs.get("pixel_values_videos") is not None or kwargs.get("video_embeds") is not None:
            raise ValueError("hf_tokcomp's vLLM plugin prunes images only (limit_mm_per_prompt={'video': 0})")
        contexts = kwargs.pop(CONTEXT, None)
        siblings = [kwargs.pop(name, None) for name in (SIBLINGS, SIBLING_GRIDS, SIBLING_INDEX)]
        outputs = self._tokcomp_encode(**kwargs)
        if not outputs:
            return outputs
        merge = self.visual.spatial_merge_size
        grids = torch.as_tensor(kwargs["image_grid_thw"]).reshape(-1, 3).tolist()
        if self.tokcomp.question_aware and (contexts is None or len(contexts) != len(outputs)):
            raise RuntimeError("hf_tokcomp: an image reached the encoder without its prompt (report this)")
        pruned = []
        for i, (embeds, (t, h, w)) in enumerate(zip(outputs, grids, strict=True)):
            grid = (t, h // merge, w // merge)
            features, compressor = None, None
            if self.tokcomp.question_aware:
                parts = self._tokcomp_question_parts()
                prompt = torch.as_tensor(contexts[i]).reshape(-1).tolist()
                images, own = self._tokcomp_prompt_images(embeds, grid, *(field[i] for field in siblings))
                features = question_features(
                    images, own, prompt, self.config.image_token_id, parts["embed"], parts["layer0"],
                    parts["rope"], parts["layout"], parts["spec"],
                )  # fmt: skip
                compressor = parts["compressor"]
            width = self.config.text_config.hidden_size  # the selectors read the LLM-input part (not deepstack)
            kept = kept_tokens(embeds[:, :width], grid, self.tokcomp, features, compressor)
            pruned.append(with_positions(embeds, kept, grid))
        return tuple(pruned)

    def _tokcomp_encode(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        """Per image, ``(n, D')``: the stock vision tower's merged tokens (the model's own ``embed_multimodal``)."""
        return super().embed_multimodal(**kwargs)

    def _tokcomp_prompt_images(
        self, embeds: torch.Tensor, grid: tuple[int, int, int], pixels: Any, grids: Any, index: Any
    ) -> tuple[list[tuple[torch.Tensor, tuple[int, int, int]]], int]:
        """Every image of an image's prompt as ``(merged tokens (n, D), merged grid)``, in prompt order, and the
        image's own index: itself as encoded, the others encoded again from the pixels it carries (a prompt of
        N images encodes each N times)."""
        grids = torch.as_tensor(grids).reshape(-1, 3)
        own = int(torch.as_tensor(index).reshape(()))
        merge = self.visual.spatial_merge_size
        merged = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grids.tolist()]
        if len(merged) == 1:
            return [(embeds, grid)], 0
        pixels = torch.as_tensor(pixels).to(embeds.device)
        others = self._tokcomp_encode(pixel_values=pixels, image_grid_thw=grids.to(embeds.device))
        pairs = enumerate(zip(others, merged, strict=True))
        images = [(embeds if j == own else e.to(embeds.dtype), g) for j, (e, g) in pairs]
        if merged[own] != grid:
            raise RuntimeError(f"hf_tokcomp: image {own} of its prompt has grid {merged[own]}, encoded {grid}")
        return images, own

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


def _answer_start_ids(config: Any, model: str) -> list[int]:
    """``answer_start_ids`` of the served model: ``hf_overrides``, else the checkpoint's ``hf_tokcomp.json``
    (written by hf_tokcomp's ``save_pretrained``), else the Qwen chat template's generation prompt."""
    if getattr(config, "answer_start_ids", None) is not None:
        return list(config.answer_start_ids)
    saved = Path(model) / "hf_tokcomp.json"
    if saved.is_file():
        value = json.loads(saved.read_text()).get("answer_start_ids")
        if value is not None:
            return list(value)
    return list(QWEN_ANSWER_START)


class _Qwen2VLProcessor(_PrunedPlaceholders, Qwen2VLMultiModalProcessor):
    pass


class _Qwen2_5_VLProcessor(_PrunedPlaceholders, Qwen2_5_VLMultiModalProcessor):
    pass


class _Qwen3VLProcessor(_PrunedPlaceholders, Qwen3VLMultiModalProcessor):
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


@MULTIMODAL_REGISTRY.register_processor(
    _Qwen3VLProcessor, info=Qwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class TokCompQwen3VLForConditionalGeneration(_TokCompPruning, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL with hf_tokcomp's image-token pruning. Each kept token keeps its deepstack rows (they are
    channels of the tower's output); images take Qwen2-VL's M-RoPE grid positions; the question-aware features
    read layer 0's q / k norms and the interleaved M-RoPE."""

    def _tokcomp_encode(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        # not the stock embed_multimodal: with video pruning (EVS) configured it appends 5 position channels of its own
        image_input = self._parse_and_validate_image_input(**kwargs)
        return () if image_input is None else tuple(self._process_image_input(image_input))


#: architecture name -> class, as registered with vLLM's ModelRegistry
ARCHITECTURES = {
    "TokCompQwen2VLForConditionalGeneration": TokCompQwen2VLForConditionalGeneration,
    "TokCompQwen2_5_VLForConditionalGeneration": TokCompQwen2_5_VLForConditionalGeneration,
    "TokCompQwen3VLForConditionalGeneration": TokCompQwen3VLForConditionalGeneration,
}
