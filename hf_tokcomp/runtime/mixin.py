"""The forward / generate plumbing every compressed model shares.

A family file (``models/*.py``) subclasses the transformers class together with :class:`TokenCompressionMixin`
and implements the small model-specific hooks (``_tokcomp_*``): how to build the merged embeddings and the
visual segments, the original position ids, the rotary tables of layer 0, and the decoding state.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .compression import CompressedBatch, compress_batch
from .config import check_token_keep
from .features import instruction_rows, layer0_attention_features
from .generation import PromptSwapStreamer, infer_attention_mask, lengths_as_new_tokens, with_caller_prompt
from .selection import SampleSelection, select_top

__all__ = ["MergedInputs", "TokenCompressionMixin", "compressed_forward"]


@dataclass
class MergedInputs:
    """The LLM input before compression (returned by a family's ``_tokcomp_merge``).

    Attributes:
        inputs_embeds: ``(B, L, D)`` text embeddings with the visual features spliced in.
        visual_mask: ``(B, L)`` bool, True on visual tokens.
        segments: per sample, ``(kind, start, end)`` of each visual segment (one image or one video), in order.
    """

    inputs_embeds: torch.Tensor
    visual_mask: torch.Tensor
    segments: list[list[tuple[str, int, int]]]


class TokenCompressionMixin:
    """Drops unimportant visual tokens at the LLM input; ``config.token_keep = 1.0`` is the stock model.

    Attributes:
        compressor: the scoring module (``(batch, in_channels, n) -> (batch, n)``), or None for training-free
            scores (the layer-0 attention features themselves). May be replaced at any time.
        last_compression: after a call that compressed, one :class:`SampleSelection` per sample (per returned
            sequence's source sample); None after a call with visual inputs that did not compress.
    """

    #: keyword arguments whose presence means visual inputs (pixels)
    _tokcomp_pixel_keys: tuple[str, ...] = ()
    #: every keyword argument the compression consumes (pixels, grids, token types); dropped once merged
    _tokcomp_visual_keys: tuple[str, ...] = ()
    #: feature channels the runtime makes per visual token
    _tokcomp_in_channels: int = 1

    def __init__(self, config, *args: Any, **kwargs: Any) -> None:
        """Accepts the stock config too (converted to the family's ``config_class``, which adds ``token_keep``)."""
        if not isinstance(config, self.config_class):
            config = self.config_class(**config.to_dict())
        super().__init__(config, *args, **kwargs)
        check_token_keep(self.config.token_keep)
        self.compressor: nn.Module | None = None
        self.last_compression: list[SampleSelection] | None = None

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

    def _tokcomp_start_decoding(self, batch: CompressedBatch) -> None:
        """Update any cached decoding state (e.g. a rope delta) after a compressed prefill."""

    # ---- shared runtime ---------------------------------------------------------------------------------------
    def _tokcomp_wants(self, visual: dict[str, Any], past_key_values: Any) -> bool:
        """Whether this call compresses: visual inputs present, token_keep < 1, and an empty cache."""
        if not any(visual.get(k) is not None for k in self._tokcomp_pixel_keys):
            return False
        if self.config.token_keep >= 1.0:
            self.last_compression = None
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

    def _tokcomp_score(self, features: torch.Tensor) -> torch.Tensor:
        """``(n,)`` features of one segment -> ``(n,)`` scores."""
        if self.compressor is None:
            return features
        params = next(self.compressor.parameters(), None)
        x = features[None, None, :] if params is None else features.to(params.device, params.dtype)[None, None, :]
        with torch.no_grad():
            scores = self.compressor(x)
        if not isinstance(scores, torch.Tensor) or scores.shape != (1, features.shape[0]):
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(
                f"`model.compressor` must map (batch, in_channels, n) features to (batch, n) scores; for n="
                f"{features.shape[0]} it returned {got}."
            )
        if not torch.isfinite(scores).all():
            raise ValueError("`model.compressor` returned non-finite scores (nan/inf); check its weights.")
        return scores[0].float().to(features.device)

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
        device = self.get_input_embeddings().weight.device  # accept CPU inputs for a GPU model, like generate
        input_ids = input_ids.to(device)
        attention_mask, position_ids, labels = (
            None if t is None else t.to(device) for t in (attention_mask, position_ids, labels)
        )
        visual = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in visual.items()}
        merged = self._tokcomp_merge(input_ids, visual)
        return self._tokcomp_select(merged, input_ids, attention_mask, position_ids, labels, visual, left_padding)

    def _tokcomp_features(
        self,
        merged: MergedInputs,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, L)`` layer-0 attention features of every position (see :mod:`hf_tokcomp.features`). With
        ``labels``, tokens that carry a label (the answer) are not query rows: the selection must not see it."""
        cos, sin = self._tokcomp_rotary(merged.inputs_embeds, position_ids)
        prompt = attention_mask if labels is None else attention_mask * (labels == -100)
        rows = instruction_rows(merged.visual_mask, prompt)
        layer0 = self._tokcomp_decoder_layer0()
        return layer0_attention_features(merged.inputs_embeds, layer0, cos, sin, attention_mask, rows)

    @torch.no_grad()
    def compressor_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **visual: Any
    ) -> list[list[tuple[str, torch.Tensor]]]:
        """The compressor's input, exactly as the runtime computes it (what label shards store).

        Args:
            input_ids, attention_mask: ``(B, L)`` processor output; ``**visual``: its pixel / grid entries.

        Returns:
            Per sample, per visual segment in order, ``(kind, features)``: ``"image"`` or ``"video"`` and the
            ``(in_channels, n)`` float32 features.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        visual = {k: visual.get(k) for k in self._tokcomp_visual_keys}
        merged = self._tokcomp_merge(input_ids, visual)
        positions = self._tokcomp_positions(input_ids, attention_mask, visual, None)
        features = self._tokcomp_features(merged, attention_mask, positions)
        return [[(kind, features[b, s:e][None].cpu()) for kind, s, e in segs] for b, segs in enumerate(merged.segments)]

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
        that compression adds to a prefill)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = self._tokcomp_positions(input_ids, attention_mask, visual, position_ids)
        features = self._tokcomp_features(merged, attention_mask, position_ids, labels)

        keep = attention_mask.bool() & ~merged.visual_mask
        records = []
        for b, segments in enumerate(merged.segments):
            record, offset = SampleSelection(), 0
            for kind, start, end in segments:
                scores = self._tokcomp_score(features[b, start:end])
                kept = select_top(scores, self.config.token_keep)
                keep[b, start + kept] = True
                record.kinds.append(kind)
                record.num_tokens.append(end - start)
                record.kept.append((kept + offset).cpu())
                record.scores.append(scores[kept].cpu())
                offset += end - start
            records.append(record)

        batch = compress_batch(
            keep,
            input_ids,
            merged.inputs_embeds,
            position_ids,
            labels=labels,
            pad_token_id=self.config.get_text_config().pad_token_id or 0,
            left_padding=bool(attention_mask[:, -1].all()) if left_padding is None else left_padding,
        )
        self.last_compression = records
        return batch

    def _tokcomp_forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
        """The stock forward on the compressed sequence when compression applies (logits, loss and cache are
        then those of the kept tokens), else exactly the stock forward."""
        visual = {k: kwargs.get(k) for k in self._tokcomp_visual_keys}
        if not self._tokcomp_wants(visual, past_key_values):
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
        return super().forward(
            input_ids=None,
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=self._tokcomp_llm_positions(batch),
            labels=batch.labels,
            past_key_values=past_key_values,
            **kwargs,
        )

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """``GenerationMixin.generate`` on the compressed prompt. The returned sequences start with the
        caller's own ``input_ids``; the KV cache holds only the compressed prompt."""
        visual = {k: kwargs.get(k) for k in self._tokcomp_visual_keys}
        if not self._tokcomp_wants(visual, kwargs.get("past_key_values")):
            return super().generate(inputs, generation_config=generation_config, **kwargs)
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        self._tokcomp_take_visual(kwargs)
        attention_mask = kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = infer_attention_mask(input_ids, generation_config or self.generation_config)
        batch = self._tokcomp_compress(
            input_ids, attention_mask, kwargs.pop("position_ids", None), None, visual, left_padding=True
        )
        self._tokcomp_start_decoding(batch)
        configs = [c for c in (generation_config, self.generation_config) if c is not None]
        lengths_as_new_tokens(kwargs, configs, input_ids.shape[1])
        if kwargs.get("streamer") is not None:
            kwargs["streamer"] = PromptSwapStreamer(kwargs["streamer"], input_ids)
        out = super().generate(
            input_ids=batch.input_ids,
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=self._tokcomp_llm_positions(batch),
            generation_config=generation_config,
            **kwargs,
        )
        return with_caller_prompt(out, input_ids, batch.input_ids.shape[1])


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
