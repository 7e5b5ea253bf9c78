"""The forward / generate plumbing every compressed model shares.

A family file (``models/*.py``) subclasses the transformers class together with :class:`TokenCompressionMixin`
and implements the small model-specific hooks (``_tokcomp_*``): how to build the merged embeddings and the
visual segments, the original position ids, the rotary tables of layer 0, and the decoding state.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .compression import CompressedBatch, compress_batch
from .config import as_config_class, check_token_keep
from .continuation import CompressedPrompt, attach_prompt, prompt_of
from .features import (
    DEFAULT_FEATURES,
    FeatureSpec,
    answer_mask,
    compressor_spec,
    eval_mode,
    rotary_after,
    segment_features,
)
from .generation import (
    PromptSwapStreamer,
    check_generate_options,
    infer_attention_mask,
    lengths_as_new_tokens,
    with_caller_prompt,
)
from .instruction import TurnLayout, generation_prompt_rows, segment_instruction_rows, turn_layout
from .scoring import LazySelections, SegmentBlock, pack_segments, segment_batch
from .selection import SampleSelection, keep_count
from .selectors import SELECTORS, Selector, resolve_selector

__all__ = ["MergedInputs", "TokenCompressionMixin", "compressed_forward"]


@dataclass
class MergedInputs:
    """The LLM input before compression (returned by a family's ``_tokcomp_merge``).

    Attributes:
        inputs_embeds: ``(B, L, D)`` text embeddings with the visual features spliced in.
        visual_mask: ``(B, L)`` bool, True on visual tokens.
        segments: per sample, ``(kind, start, end)`` of each visual segment (one image or one video), in order.
        grids: ``(sample, start) -> (t, h, w)`` token grid of a segment where the family knows it (else 1-D).
        side: per-token side inputs ``(B, L, *)`` that must be pruned with the tokens (Qwen3-VL DeepStack).
    """

    inputs_embeds: torch.Tensor
    visual_mask: torch.Tensor
    segments: list[list[tuple[str, int, int]]]
    grids: dict[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)
    side: dict[str, torch.Tensor] = field(default_factory=dict)


class TokenCompressionMixin:
    """Drops unimportant visual tokens at the LLM input; ``config.token_keep = 1.0`` is the stock model.

    Attributes:
        compressor: the scoring module (``(batch, in_channels, n) -> (batch, n)``), or None for training-free
            scores (the layer-0 attention features themselves). May be replaced at any time.
        last_compression: after a call that compressed, one :class:`SampleSelection` per sample (per returned
            sequence's source sample); None after any call that did not compress.
    """

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        """The stock class's answer (transformers reads it from the defining module's source: here ours)."""
        return cls.__mro__[cls.__mro__.index(TokenCompressionMixin) + 1]._can_set_experts_implementation()

    #: keyword arguments whose presence means visual inputs (pixels)
    _tokcomp_pixel_keys: tuple[str, ...] = ()
    #: every keyword argument the compression consumes (pixels, grids, token types); dropped once merged
    _tokcomp_visual_keys: tuple[str, ...] = ()

    def __init__(self, config, *args: Any, **kwargs: Any) -> None:
        """Accepts the stock config too (converted to the family's ``config_class``, which adds ``token_keep``)."""
        if not isinstance(config, self.config_class):
            config = as_config_class(config, self.config_class)
        super().__init__(config, *args, **kwargs)
        check_token_keep(self.config.token_keep)
        self.compressor: nn.Module | None = None
        self.last_compression = None

    # transformers treats classes outside `transformers.*` as custom code, which switches off the checkpoint
    # key renaming (the whole LLM would load randomly initialised) and takes another init path. Our classes are
    # the stock architectures, so they must be loaded as such.
    @classmethod
    def is_custom_code(cls) -> bool:
        return False

    # ---- model-specific hooks -------------------------------------------------------------------------------
    def _tokcomp_merge(self, input_ids: torch.Tensor, visual: dict[str, Any]) -> MergedInputs:
        raise NotImplementedError

    def _tokcomp_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        visual: dict[str, Any],
        position_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Original position ids of the full sequence, ``(*P, B, L)`` as the rotary embedding takes them
        (``position_ids``: what the caller passed, if anything). Default, for 1-D RoPE: the caller's ids, else
        the number of real tokens before each token (what ``generate`` uses; padding-invariant)."""
        if position_ids is not None:
            return position_ids.expand_as(input_ids)
        return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)

    def _tokcomp_text_model(self) -> nn.Module:
        """The LLM's decoder stack (``.layers``, ``.norm``, ``.rotary_emb``, ``.config``), without the head."""
        return self.model.language_model

    def _tokcomp_lm_head(self) -> nn.Module:
        """The LLM's output projection (hidden states -> vocabulary logits)."""
        return self.lm_head

    def _tokcomp_rotary(self, embeds: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(B, L, head_dim)``, of layer 0 at ``positions``."""
        return self._tokcomp_text_model().rotary_emb(embeds, positions)

    def _tokcomp_decoder_layer0(self) -> nn.Module:
        return self._tokcomp_text_model().layers[0]

    def _tokcomp_llm_positions(self, batch: CompressedBatch) -> torch.Tensor:
        """The ``position_ids`` the stock forward is given for the compressed batch."""
        return batch.position_ids

    def _tokcomp_llm_inputs(self, batch: CompressedBatch, generating: bool) -> dict[str, Any]:
        """The stock forward's / generate's inputs for the compressed batch: by default its embeddings (and, for
        ``generate``, its ids). Families with per-token side inputs hand them over here."""
        return {"input_ids": batch.input_ids if generating else None, "inputs_embeds": batch.inputs_embeds}

    def _tokcomp_start_decoding(self, batch: CompressedBatch) -> None:
        """Update any cached decoding state (e.g. a rope delta) after a compressed prefill."""

    # ---- shared runtime ---------------------------------------------------------------------------------------
    @property
    def last_compression(self) -> list[SampleSelection] | None:
        """After a call that compressed, one :class:`SampleSelection` per sample (per returned sequence's source
        sample); None after any call that did not compress. Built on first access (no host syncs in forward)."""
        last = self.__dict__.get("_tokcomp_last")
        if isinstance(last, LazySelections):
            last = self.__dict__["_tokcomp_last"] = last.materialize()
        return last

    @last_compression.setter
    def last_compression(self, value: list[SampleSelection] | LazySelections | None) -> None:
        self.__dict__["_tokcomp_last"] = value

    def _tokcomp_wants(self, visual: dict[str, Any], past_key_values: Any, kwargs: dict[str, Any]) -> bool:
        """Whether this call compresses: visual inputs present, token_keep < 1, and an empty cache."""
        if not self.__dict__.get("_tokcomp_generating", False):
            self.last_compression = None  # a new call: nothing compressed yet
            if kwargs.get("mm_encoder_outputs") and self.config.token_keep < 1.0:
                raise ValueError(
                    "`mm_encoder_outputs` (pre-encoded visual features) cannot be compressed: the selection needs "
                    "the visual tokens in the prompt it builds. Pass the pixel inputs instead, or set "
                    "`model.config.token_keep = 1.0`."
                )
        if not any(visual.get(k) is not None for k in self._tokcomp_pixel_keys):
            return False
        if self.config.token_keep >= 1.0:
            return False
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            raise ValueError(
                "token compression needs the visual inputs in the first (prefill) call, but `past_key_values` "
                "already holds tokens. Start from an empty cache, or set `model.config.token_keep = 1.0`."
            )
        return True

    def _tokcomp_take_visual(self, kwargs: dict[str, Any]) -> None:
        """Remove the inputs that compression consumes from the kwargs passed on to the stock code."""
        if kwargs.pop("inputs_embeds", None) is not None:
            raise ValueError(
                "token compression builds the input embeddings itself; pass `input_ids` and the pixel inputs "
                "instead of `inputs_embeds`, or set `model.config.token_keep = 1.0`."
            )
        for key in self._tokcomp_visual_keys:
            kwargs.pop(key, None)

    def _tokcomp_compress(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        labels: torch.Tensor | None,
        visual: dict[str, Any],
        left_padding: bool | None = None,
    ) -> CompressedBatch:
        """Merge, score, select and gather: the whole input-stage compression of one batch (re-padded on the
        input's side unless ``left_padding`` says; generation always pads left)."""
        if input_ids is None:
            raise ValueError(
                "token compression needs `input_ids` to find the visual tokens; pass `input_ids` (not only "
                "`inputs_embeds`), or set `model.config.token_keep = 1.0`."
            )
        if attention_mask is None and position_ids is not None:
            text_positions = position_ids if position_ids.ndim == 2 else position_ids[0]
            if bool((text_positions.diff(dim=-1) < 0).any()):
                raise ValueError(
                    "token compression does not support padding-free (packed) batches: `position_ids` restart "
                    "inside a row and there is no `attention_mask`. Pad the batch and pass `attention_mask` (e.g. "
                    "`padding_free=False` in TRL), or set `model.config.token_keep = 1.0`."
                )
        device = self.get_input_embeddings().weight.device  # accept CPU inputs for a GPU model, like generate
        input_ids = input_ids.to(device)
        attention_mask, position_ids, labels = (
            None if t is None else t.to(device) for t in (attention_mask, position_ids, labels)
        )
        visual = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in visual.items()}
        merged = self._tokcomp_merge(input_ids, visual)
        return self._tokcomp_select(merged, input_ids, attention_mask, position_ids, labels, visual, left_padding)

    def _tokcomp_turn_layout(self) -> TurnLayout:
        """The chat template's turn markers (see :func:`~hf_tokcomp.runtime.instruction.turn_layout`)."""
        return turn_layout(self.config)

    def _tokcomp_feature_spec(self, selector: str) -> FeatureSpec:
        """The feature definition the selection reads: the learned compressor's own, else the default."""
        override = self.__dict__.get("_tokcomp_features_override")  # benchmarks comparing definitions
        if override is not None:
            return override
        return compressor_spec(self.compressor) if selector == "learned" else DEFAULT_FEATURES

    def _tokcomp_features(
        self,
        merged: MergedInputs,
        block: SegmentBlock,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        spec: FeatureSpec = DEFAULT_FEATURES,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, C, N)`` layer-0 features of every segment's tokens (see :mod:`hf_tokcomp.runtime.features`) and
        ``(S, L)`` bool the instruction rows they average over (:mod:`hf_tokcomp.runtime.instruction`),
        computed in eval mode and outside autocast (no dropout, no mixed-precision rounding: training, e.g. under
        accelerate's bf16 autocast, selects what generation selects). With ``labels``, the
        answer (see :func:`answer_mask`) is never a row nor a key: the selection must not see it."""
        cos, sin = self._tokcomp_rotary(merged.inputs_embeds, position_ids)
        prompt = attention_mask
        if labels is not None:
            prompt = attention_mask * ~answer_mask(input_ids, labels, self.config.answer_start_ids)
        end = block.start + torch.tensor(block.lengths, device=block.start.device, dtype=block.start.dtype)
        layout = self._tokcomp_turn_layout()
        rows = segment_instruction_rows(
            input_ids, merged.visual_mask, prompt, block.sample, block.start, end, layout, spec.prompt_header
        )
        extra = {"header": generation_prompt_rows(input_ids, prompt, block.sample, layout)} if spec.split else {}
        if spec.mode == "moved":  # a question before the image is read from positions after it
            extra["shifted"] = rotary_after(self._tokcomp_rotary, merged.inputs_embeds, position_ids)
        layer0 = self._tokcomp_decoder_layer0()
        with eval_mode(layer0), torch.autocast(merged.inputs_embeds.device.type, enabled=False):
            features = segment_features(
                merged.inputs_embeds, layer0, cos, sin, prompt, rows, block.sample, block.index, end, spec, **extra
            )
        return features.masked_fill(~block.mask[:, None, :], 0.0), rows

    @torch.no_grad()
    def compressor_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        features: FeatureSpec | str | None = None,
        **visual: Any,
    ) -> list[list[tuple[str, torch.Tensor]]]:
        """The compressor's input, exactly as the runtime computes it (what label shards store).

        Args:
            input_ids, attention_mask: ``(B, L)`` processor output; ``**visual``: its pixel / grid entries.
            features: the feature definition (a :class:`~hf_tokcomp.runtime.features.FeatureSpec` or its
                versioned name); None = the one the runtime uses for the current compressor.

        Returns:
            Per sample, per visual segment in order, ``(kind, features)``: ``"image"`` or ``"video"`` and the
            ``(in_channels, n)`` float32 features.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if isinstance(features, str):
            features = FeatureSpec.parse(features)
        spec = features or self._tokcomp_feature_spec(
            resolve_selector(self.config.selector, self.compressor is not None)
        )
        visual = {k: visual.get(k) for k in self._tokcomp_visual_keys}
        merged = self._tokcomp_merge(input_ids, visual)
        positions = self._tokcomp_positions(input_ids, attention_mask, visual, None)
        block = pack_segments(merged.segments, input_ids.device)
        values = self._tokcomp_features(merged, block, input_ids, attention_mask, positions, spec=spec)[0].cpu()
        out: list[list[tuple[str, torch.Tensor]]] = [[] for _ in merged.segments]
        for s, ((b, _), kind, n) in enumerate(zip(block.places, block.kinds, block.lengths, strict=True)):
            out[b].append((kind, values[s, :, :n]))
        return out

    def _tokcomp_select(
        self,
        merged: MergedInputs,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        labels: torch.Tensor | None,
        visual: dict[str, Any],
        left_padding: bool | None = None,
    ) -> CompressedBatch:
        """Everything after the vision tower: positions, features, scores, selection, gather (the overhead
        that compression adds to a prefill). The compressor runs once for all segments of the batch, in eval
        mode; the host syncs do not grow with the number of segments."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = self._tokcomp_positions(input_ids, attention_mask, visual, position_ids)
        block = pack_segments(merged.segments, input_ids.device)
        name = resolve_selector(self.config.selector, self.compressor is not None)
        spec = self._tokcomp_feature_spec(name)
        features, rows = self._tokcomp_features(merged, block, input_ids, attention_mask, position_ids, labels, spec)
        counts = [keep_count(self.config.token_keep, n) for n in block.lengths]
        selector = self._tokcomp_selector(name)
        coverage = self.config.token_coverage
        inputs = segment_batch(block, merged.inputs_embeds, merged.grids, features, rows, selector, coverage)
        inputs.layer0, inputs.compressor = self._tokcomp_decoder_layer0(), self.compressor
        with eval_mode(self.compressor), eval_mode(inputs.layer0), torch.autocast(features.device.type, enabled=False):
            chosen = selector.select(inputs, counts)
        keep = attention_mask.bool() & ~merged.visual_mask
        width = block.index.shape[1]
        positions = block.start[:, None] + chosen.kept.clamp_max(width - 1)
        samples = block.sample[:, None].expand_as(positions)
        keep[samples[chosen.valid], positions[chosen.valid]] = True
        selections = LazySelections(block, chosen.kept, chosen.valid, chosen.scores, keep.shape[0], name)
        batch = compress_batch(
            keep,
            input_ids,
            merged.inputs_embeds,
            position_ids,
            labels=labels,
            pad_token_id=self.config.get_text_config().pad_token_id or 0,
            left_padding=bool(attention_mask[:, -1].all()) if left_padding is None else left_padding,
            side=merged.side,
        )
        self.last_compression = selections
        return batch

    def _tokcomp_selector(self, name: str) -> Selector:
        """The selector instance for ``name`` (one per model and method, so the random one's stream goes on)."""
        cache = self.__dict__.setdefault("_tokcomp_selectors", {})
        if name not in cache:
            cache[name] = SELECTORS[name]()
        return cache[name]

    def _tokcomp_forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
        """The stock forward on the compressed sequence when compression applies (logits, loss and cache are
        then those of the kept tokens), else exactly the stock forward. On a cache filled by a compressed
        prefill, the caller's mask is translated and the new tokens keep their original positions."""
        visual = {k: kwargs.get(k) for k in self._tokcomp_visual_keys}
        if not self._tokcomp_wants(visual, past_key_values, kwargs):
            prompt = None if self.__dict__.get("_tokcomp_generating") else prompt_of(past_key_values)
            if prompt is not None and input_ids is not None:
                prompt = prompt.rows(input_ids.shape[0])
                done = past_key_values.get_seq_length() - prompt.input_ids.shape[1]  # tokens after the prompt
                caller = prompt.caller_ids.shape[1] + done + input_ids.shape[1]
                if attention_mask is None:  # the caller's view has no padding; the compressed prompt may have
                    attention_mask = torch.ones(input_ids.shape[0], caller, dtype=torch.long, device=input_ids.device)
                if attention_mask.shape[1] != caller:
                    raise ValueError(
                        f"`attention_mask` has {attention_mask.shape[1]} columns; on this cache (filled by a "
                        f"compressed prompt) it must cover the caller's view: {caller} = prompt + earlier "
                        "tokens + `input_ids`."
                    )
                attention_mask = prompt.compressed_mask(attention_mask)
                if position_ids is None:
                    position_ids = prompt.positions_after(done, input_ids.shape[1]).to(input_ids.device)
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                **kwargs,
            )
        self._tokcomp_take_visual(kwargs)
        batch = self._tokcomp_compress(input_ids, attention_mask, position_ids, kwargs.pop("labels", None), visual)
        self._tokcomp_start_decoding(batch)
        positions = self._tokcomp_llm_positions(batch)
        out = super().forward(
            **self._tokcomp_llm_inputs(batch, generating=False),
            attention_mask=batch.attention_mask,
            position_ids=positions,
            labels=batch.labels,
            past_key_values=past_key_values,
            **kwargs,
        )
        cache = getattr(out, "past_key_values", None)
        attach_prompt(cache, CompressedPrompt(input_ids, batch.input_ids, batch.attention_mask, positions))
        return out

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """``GenerationMixin.generate`` on the compressed prompt. The returned sequences start with the
        caller's own ``input_ids``; the KV cache holds only the compressed prompt (and records it, so that a
        later ``generate`` on that cache with the returned sequences plus a new turn continues exactly)."""
        visual = {k: kwargs.get(k) for k in self._tokcomp_visual_keys}
        cache = kwargs.get("past_key_values")
        if not self._tokcomp_wants(visual, cache, kwargs):
            prompt = prompt_of(cache)
            if prompt is None:
                return super().generate(inputs, generation_config=generation_config, **kwargs)
            return self._tokcomp_continue(prompt, inputs, generation_config, kwargs)
        merged_config = self._tokcomp_generation_config(generation_config, kwargs)
        check_generate_options(merged_config, kwargs)
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        self._tokcomp_take_visual(kwargs)
        attention_mask = kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = infer_attention_mask(input_ids, merged_config)
        batch = self._tokcomp_compress(
            input_ids, attention_mask, kwargs.pop("position_ids", None), None, visual, left_padding=True
        )
        self._tokcomp_start_decoding(batch)
        positions = self._tokcomp_llm_positions(batch)
        prompt = CompressedPrompt(
            input_ids.to(batch.input_ids.device), batch.input_ids, batch.attention_mask, positions
        )
        return self._tokcomp_generate(
            prompt,
            batch.input_ids,
            batch.attention_mask,
            positions,
            input_ids,
            generation_config,
            kwargs | {k: v for k, v in self._tokcomp_llm_inputs(batch, generating=True).items() if k != "input_ids"},
        )

    def _tokcomp_continue(self, prompt: CompressedPrompt, inputs, generation_config, kwargs: dict[str, Any]):
        """``generate`` on a cache filled by a compressed prompt: the caller's ids (the returned sequences, then
        the new tokens) are translated to what the cache holds, the new tokens keep their original positions."""
        check_generate_options(self._tokcomp_generation_config(generation_config, kwargs), kwargs)
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if input_ids is None:
            raise ValueError("`generate` on a cache filled by a compressed prompt needs `input_ids`.")
        if kwargs.get("position_ids") is not None:
            raise ValueError(
                "`position_ids` cannot be passed with a cache filled by a compressed prompt: the new tokens take "
                "their original positions after it. Drop `position_ids`."
            )
        prompt = prompt.rows(input_ids.shape[0])
        ids, mask = prompt.compressed_view(input_ids, kwargs.pop("attention_mask", None))
        after = ids.shape[1] - prompt.input_ids.shape[1]
        positions = torch.cat([prompt.positions.to(ids.device), prompt.positions_after(0, after).to(ids.device)], -1)
        return self._tokcomp_generate(prompt, ids, mask, positions, input_ids, generation_config, kwargs)

    def _tokcomp_generation_config(self, generation_config, kwargs: dict[str, Any]):
        """The config stock ``generate`` will use: the caller's, filled with the model's, with ``kwargs`` applied."""
        options = {k: v for k, v in kwargs.items() if k not in self._tokcomp_visual_keys}
        return self._prepare_generation_config(generation_config, **options)[0]

    def _tokcomp_generate(self, prompt, ids, mask, positions, caller_ids, generation_config, kwargs):
        """Stock ``generate`` on the compressed view ``ids`` ``(B, L')``; lengths, streamer and the returned
        sequences in the caller's view ``caller_ids`` ``(B, L)``; the cache records ``prompt``."""
        lengths_as_new_tokens(kwargs, [self._tokcomp_generation_config(generation_config, {})], caller_ids.shape[1])
        if kwargs.get("streamer") is not None:
            kwargs["streamer"] = PromptSwapStreamer(kwargs["streamer"], caller_ids)
        self.__dict__["_tokcomp_generating"] = True
        try:
            out = super().generate(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                generation_config=generation_config,
                **kwargs,
            )
        finally:
            self.__dict__["_tokcomp_generating"] = False
        cache = getattr(out, "past_key_values", None)
        attach_prompt(cache if cache is not None else kwargs.get("past_key_values"), prompt)
        return with_caller_prompt(out, caller_ids, ids.shape[1])


def compressed_forward(stock_forward: Callable[..., Any]) -> Callable[..., Any]:
    """A ``forward`` with the stock signature and docstring (generate() validates kwargs against it) that runs
    :meth:`TokenCompressionMixin._tokcomp_forward`. Each family sets ``forward = compressed_forward(Stock.forward)``."""
    signature = inspect.signature(stock_forward)

    @functools.wraps(stock_forward)
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        named = {k: v for k, v in bound.arguments.items() if k not in ("self", "kwargs")}
        return self._tokcomp_forward(**named, **bound.arguments.get("kwargs", {}))

    return forward
