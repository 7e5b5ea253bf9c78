"""FastV (Chen et al. 2024), the in-LLM baseline: it prunes INSIDE the LLM, so it is not a runtime selector.

Layers ``0..K-1`` run on every token; the attention of the last prompt token at layer ``K-1`` picks the visual
tokens that layers ``K..`` see. :func:`fastv_generate` implements prefill and greedy decoding (layers before ``K``
keep the full KV cache, later layers the pruned one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..runtime.compression import CompressedBatch, compress_batch
from ..runtime.features import last_token_attention
from ..runtime.mixin import MergedInputs
from ..runtime.selection import select_top

__all__ = ["fastv_generate", "fastv_prepare", "fastv_prefill", "fastv_unsupported", "FastVOutput", "FastVPrefill"]


@dataclass
class FastVOutput:
    """``sequences`` ``(B, L + T)`` starting with the caller's ids; ``keep`` ``(B, L)`` True on the tokens layers
    ``K..`` see; ``cache_tokens`` per layer (full before K, pruned from K); the ``cache`` itself."""

    sequences: torch.Tensor
    keep: torch.Tensor
    cache_tokens: list[int]
    cache: DynamicCache


@dataclass
class FastVPrefill:
    """The state after FastV's prefill: ``hidden`` ``(B, L', D)`` the last layer's output over the kept tokens
    (before the final norm); ``cache`` (layers ``< K``: every token, ``>= K``: the kept ones); ``keep`` ``(B, L)``;
    the full and pruned key masks; ``last_position`` of the prompt (``(*P, B, 1)``)."""

    hidden: torch.Tensor
    cache: DynamicCache
    keep: torch.Tensor
    full_mask: torch.Tensor
    pruned_mask: torch.Tensor
    last_position: torch.Tensor


def _additive_mask(query_valid: torch.Tensor, key_valid: torch.Tensor, causal: bool, dtype: torch.dtype):
    """``(B, 1, q, k)`` 0 where attending is allowed, dtype-min elsewhere. For the causal prefill q == k."""
    allowed = key_valid.bool()[:, None, None, :].expand(-1, 1, query_valid.shape[1], -1)
    if causal:
        allowed = (
            allowed
            & torch.ones(query_valid.shape[1], key_valid.shape[1], dtype=torch.bool, device=key_valid.device).tril()
        )
    return torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def _run_layers(
    model, layers, hidden: torch.Tensor, positions: torch.Tensor, attn_mask, cache, adds=()
) -> torch.Tensor:
    """The decoder ``layers`` on ``hidden`` ``(B, L, D)``; ``adds[i]`` ``(B, L, D)`` (zero off the visual tokens) is
    added to the output of ``layers[i]``, as Qwen3-VL adds its DeepStack features after its first layers."""
    cos_sin = model._tokcomp_rotary(hidden, positions)
    for i, layer in enumerate(layers):
        hidden = layer(
            hidden, attention_mask=attn_mask, position_embeddings=cos_sin, past_key_values=cache, use_cache=True
        )
        if i < len(adds):
            hidden = hidden + adds[i].to(hidden.dtype)
    return hidden


def _deepstack(batch: CompressedBatch) -> list[torch.Tensor]:
    """The batch's DeepStack levels in layer order (Qwen3-VL; empty for the other families)."""
    return [batch.side[f"deepstack_{i}"] for i in range(len(batch.side))]


def fastv_unsupported(config) -> bool:
    """Whether FastV cannot run on a model of ``config``: its LLM has linear-attention (Gated DeltaNet) layers
    (Qwen3.5), whose recurrent state this FastV loop does not run."""
    return "linear_attention" in (getattr(config.get_text_config(), "layer_types", None) or [])


def _check_family(model) -> None:
    if fastv_unsupported(model.config):
        raise ValueError(
            f"FastV is not implemented for {type(model).__name__}: its linear-attention (Gated DeltaNet) layers "
            "keep a recurrent state that this FastV loop does not run. Compare with the input-stage selectors "
            "(`--methods ours attention ...`) instead."
        )


def fastv_prepare(model, inputs: dict) -> tuple[MergedInputs, CompressedBatch]:
    """Vision tower, embedding merge and original positions of a left-padded batch: FastV's LLM input."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    visual = {name: inputs.get(name) for name in model._tokcomp_visual_keys}
    _check_family(model)
    merged = model._tokcomp_merge(ids, visual)
    positions = model._tokcomp_positions(ids, mask, visual, None)
    batch = compress_batch(mask.bool(), ids, merged.inputs_embeds, positions, left_padding=True, side=merged.side)
    return merged, batch


def fastv_prefill(model, merged: MergedInputs, full: CompressedBatch, token_keep: float, k: int) -> FastVPrefill:
    """FastV's LLM prefill on :func:`fastv_prepare`'s output: layers ``< K`` on every token, the last token's
    attention at layer K (1-indexed) picks ``token_keep`` of each visual segment, layers ``>= K`` on the rest."""
    lm = model._tokcomp_text_model()
    if not 0 < k < len(lm.layers):
        raise ValueError(f"`k` must be in [1, {len(lm.layers) - 1}] for this model, got {k}")
    cache = DynamicCache(config=lm.config)
    dtype = full.inputs_embeds.dtype
    full_mask = _additive_mask(full.attention_mask, full.attention_mask, True, dtype)
    levels = _deepstack(full)
    hidden = _run_layers(model, lm.layers[: k - 1], full.inputs_embeds, full.position_ids, full_mask, cache, levels)
    # FastV's signal: the last token's attention at layer K-1 (1-indexed: the K-th layer), over all keys.
    cos, sin = model._tokcomp_rotary(hidden, full.position_ids)
    attention = last_token_attention(hidden, lm.layers[k - 1], cos, sin, full.attention_mask)
    hidden = _run_layers(model, lm.layers[k - 1 : k], hidden, full.position_ids, full_mask, cache, levels[k - 1 : k])

    keep = full.attention_mask.bool() & ~merged.visual_mask
    for b, segments in enumerate(merged.segments):
        for _, start, end in segments:
            keep[b, start + select_top(attention[b, start:end], token_keep)] = True
    pruned = compress_batch(keep, full.input_ids, hidden, full.position_ids, left_padding=True, side=full.side)
    pruned_mask = _additive_mask(pruned.attention_mask, pruned.attention_mask, True, dtype)
    later = _deepstack(pruned)[k:]  # DeepStack levels of layers K.. (Qwen3-VL: 3 levels, so with K=2 one more)
    hidden = _run_layers(model, lm.layers[k:], pruned.inputs_embeds, pruned.position_ids, pruned_mask, cache, later)
    return FastVPrefill(hidden, cache, keep, full.attention_mask, pruned.attention_mask, full.position_ids[..., -1:])


@torch.no_grad()
def fastv_generate(
    model,
    inputs: dict,
    token_keep: float,
    k: int = 2,
    max_new_tokens: int = 16,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> FastVOutput:
    """FastV with greedy decoding on an hf_tokcomp model (its own compression is not used).

    Args:
        model: an hf_tokcomp model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL with its DeepStack features added after its
            first layers, LLaVA-OneVision, VILA1.5, InternVL; not Qwen3.5, whose linear-attention layers it refuses).
        inputs: processor output for a left-padded batch.
        token_keep: fraction of each segment's visual tokens kept from layer ``k`` on (the core's budget rule).
        k: layers that see every token (FastV's K; 2 in the paper).
        on_token: called with each new ``(B, 1)`` token as soon as it is chosen (e.g. to time decoding).
    """
    lm, head = model._tokcomp_text_model(), model._tokcomp_lm_head()
    state = fastv_prefill(model, *fastv_prepare(model, inputs), token_keep, k)
    hidden, cache, dtype = state.hidden, state.cache, state.hidden.dtype
    masks = {"full": state.full_mask, "pruned": state.pruned_mask}
    last_position = state.last_position
    tokens = []
    for step in range(max_new_tokens):
        token = head(lm.norm(hidden[:, -1:])).argmax(-1)  # (B, 1)
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if step + 1 == max_new_tokens:
            break
        ones = torch.ones_like(token)
        masks = {name: torch.cat([m, ones], dim=1) for name, m in masks.items()}
        last_position = last_position + 1
        hidden = model.get_input_embeddings()(token)
        full_mask = _additive_mask(ones, masks["full"], False, dtype)
        hidden = _run_layers(model, lm.layers[:k], hidden, last_position, full_mask, cache)
        pruned_mask = _additive_mask(ones, masks["pruned"], False, dtype)
        hidden = _run_layers(model, lm.layers[k:], hidden, last_position, pruned_mask, cache)
    cache_tokens = [cache.layers[i].keys.shape[-2] for i in range(len(lm.layers))]
    return FastVOutput(torch.cat([inputs["input_ids"], *tokens], dim=1), state.keep, cache_tokens, cache)
