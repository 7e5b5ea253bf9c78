"""Teacher labels: gradient-weighted attention relevance (GAE, Chefer et al. 2021) of the visual tokens.

For an answer token ``y_t`` predicted at position ``q``: ``R = I``; for every LLM layer ``l`` (first to last)
``R <- R + M_l R`` with ``M_l = mean_heads(relu(A_l * dA_l))`` (``A_l`` the attention probabilities, ``dA_l`` the
gradient of ``y_t``'s logit w.r.t. them). The relevance of the visual tokens for ``y_t`` is row ``q`` of ``R`` at
the visual columns; the label is its mean over the answer tokens.

How it is computed here: only row ``q`` is needed, so a row vector is propagated instead of the N x N matrix,
``v <- v + v M_l`` from the last layer down to the first. That is exactly the order in which backward reaches
the layers, so the LLM runs with an attention function of our own whose backward recomputes ``A_l`` from the
saved q/k/v, forms ``M_l``, updates ``v`` and drops both: no layer's attention map is kept from the forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..runtime.compression import compress_batch
from ..runtime.stock_call import stock_forward_on

__all__ = ["visual_relevance", "append_answers", "greedy_answers", "cut_at_eos", "eos_ids"]

_IMPLEMENTATION = "tokcomp_gae_rollout"


class _Rollout:
    """The row vectors ``v`` ``(B, S)`` of the current backward; layers must arrive last to first."""

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v
        self.last_layer: int | None = None

    def update(self, layer: int, weights: torch.Tensor) -> None:
        """weights: ``(B, S, S)`` = mean over heads of relu(A * dA); ``v <- v + v @ weights``."""
        if self.last_layer is not None and layer >= self.last_layer:
            raise RuntimeError(
                f"relevance rollout expected layers in descending order, got {layer} after {self.last_layer}"
            )
        self.last_layer = layer
        self.v = self.v + torch.bmm(self.v[:, None, :], weights)[:, 0]


_ACTIVE: list[_Rollout] = []  # the rollout of the backward in progress (set by visual_relevance)


class _RolloutAttention(torch.autograd.Function):
    """Eager attention, one head at a time, that saves only q, k, v and hands the head-mean of
    relu(A * dA) of its layer to the active rollout. Peak extra memory: a few ``(B, S, S)`` maps."""

    @staticmethod
    def forward(ctx, query, key, value, mask, scaling: float, layer: int):
        out = torch.empty_like(query)
        for h in range(query.shape[1]):
            out[:, h] = torch.matmul(_probs(query[:, h], key[:, h], mask, scaling), value[:, h])
        ctx.save_for_backward(query, key, value, mask)
        ctx.scaling, ctx.layer = scaling, layer
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, mask = ctx.saved_tensors
        heads = query.shape[1]
        grad_query, grad_key, grad_value = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
        weights = torch.zeros(query.shape[0], query.shape[2], key.shape[2], dtype=torch.float32, device=query.device)
        for h in range(heads):  # in-place where possible: about three (B, S, S) maps live at once
            probs = _probs(query[:, h], key[:, h], mask, ctx.scaling)
            grad_probs = torch.matmul(grad_out[:, h], value[:, h].transpose(-1, -2))
            product = probs * grad_probs
            row_sums = product.sum(-1, keepdim=True)
            weights.add_(product.clamp_(min=0).float(), alpha=1.0 / heads)
            del product
            grad_scores = grad_probs.sub_(row_sums).mul_(probs)  # softmax backward
            grad_query[:, h] = torch.matmul(grad_scores, key[:, h]) * ctx.scaling
            grad_key[:, h] = torch.matmul(grad_scores.transpose(-1, -2), query[:, h]) * ctx.scaling
            grad_value[:, h] = torch.matmul(probs.transpose(-1, -2), grad_out[:, h])
        if _ACTIVE:
            _ACTIVE[-1].update(ctx.layer, weights)
        return grad_query, grad_key, grad_value, None, None, None


def _probs(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor, scaling: float) -> torch.Tensor:
    """One head: query ``(B, S, d)``, key ``(B, S, d)``, mask broadcastable to ``(B, S, S)``."""
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scaling).add_(mask)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def _rollout_attention(module: nn.Module, query, key, value, attention_mask, scaling: float, **_: Any):
    """transformers attention-function signature: q ``(B, H, S, d)``, k/v ``(B, H_kv, S, d)`` ->
    ``((B, S, H, d), None)``."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if attention_mask is None:  # the eager mask function always builds one; keep causality if it did not
        length = query.shape[-2]
        attention_mask = torch.full((length, length), torch.finfo(query.dtype).min, device=query.device).triu(1)
    mask = attention_mask[..., : key.shape[-2]]
    mask = mask[:, 0] if mask.ndim == 4 else mask  # (B, 1, S, S) -> (B, S, S): the same for every head
    out = _RolloutAttention.apply(query, key, value, mask, scaling, module.layer_idx)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(_IMPLEMENTATION, _rollout_attention)
AttentionMaskInterface.register(_IMPLEMENTATION, eager_mask)


@contextmanager
def _relevance_mode(model: nn.Module) -> Iterator[None]:
    """Uncompressed, eval mode, and the rollout attention in the LLM (the vision tower is left as it is)."""
    text_config = model.config.get_text_config()
    saved = (model.config.token_keep, text_config._attn_implementation, model.training)
    model.config.token_keep = 1.0
    text_config._attn_implementation = _IMPLEMENTATION
    model.eval()
    try:
        yield
    finally:
        model.config.token_keep = saved[0]
        text_config._attn_implementation = saved[1]
        model.train(saved[2])


def append_answers(inputs: dict[str, Any], answers: list[torch.Tensor], pad_token_id: int) -> dict[str, Any]:
    """Teacher forcing: each sample's real prompt tokens followed by its answer tokens, left padded again.

    Args:
        inputs: processor output (``input_ids``, ``attention_mask``, optional ``mm_token_type_ids``, pixels ...).
        answers: per sample, ``(T_b,)`` answer token ids.

    Returns:
        A copy of ``inputs`` with the longer ``input_ids`` / ``attention_mask`` / ``mm_token_type_ids``.
    """
    ids, mask = inputs["input_ids"], inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    types = inputs.get("mm_token_type_ids")
    rows = [torch.cat([ids[b][mask[b].bool()], answers[b].to(ids)]) for b in range(ids.shape[0])]
    length = max(r.shape[0] for r in rows)
    out = dict(inputs)
    out["input_ids"] = ids.new_full((len(rows), length), pad_token_id)
    out["attention_mask"] = mask.new_zeros((len(rows), length))
    if types is not None:
        out["mm_token_type_ids"] = types.new_zeros((len(rows), length))
    for b, row in enumerate(rows):
        out["input_ids"][b, length - row.shape[0] :] = row
        out["attention_mask"][b, length - row.shape[0] :] = 1
        if types is not None:
            prompt_types = types[b][mask[b].bool()]
            out["mm_token_type_ids"][b, length - row.shape[0] : length - answers[b].shape[0]] = prompt_types
    return out


def eos_ids(model: nn.Module) -> set[int]:
    """The end-of-sequence ids of the model's generation config (empty where it has none)."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def cut_at_eos(
    model: nn.Module, sequences: torch.Tensor, prompt_length: int, keep_eos: bool = False
) -> list[torch.Tensor]:
    """Per row of ``sequences`` ``(B, prompt_length + T)``, the new tokens up to the first end-of-sequence
    token of the model's generation config: excluded, or included with ``keep_eos`` (where there is one)."""
    eos = eos_ids(model)
    answers = []
    for row in sequences[:, prompt_length:]:
        tokens = row.tolist()
        end = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
        answers.append(row[: end + 1 if keep_eos else end])
    return answers


def greedy_answers(
    model: nn.Module, inputs: dict[str, Any], max_new_tokens: int, keep_eos: bool = False
) -> list[torch.Tensor]:
    """The model's own greedy answers, UNCOMPRESSED (whatever ``token_keep`` is), cut at the first
    end-of-sequence token (excluded; included with ``keep_eos``, where the answer ended within the limit)."""
    saved, model.config.token_keep = model.config.token_keep, 1.0
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    finally:
        model.config.token_keep = saved
    return cut_at_eos(model, out, inputs["input_ids"].shape[1], keep_eos)


def visual_relevance(
    model: nn.Module,
    inputs: dict[str, Any],
    answer_ids: list[torch.Tensor] | None = None,
    max_new_tokens: int = 32,
) -> list[torch.Tensor]:
    """GAE relevance of each sample's visual tokens for its answer, averaged over the answer tokens.

    Args:
        model: an hf_tokcomp model (compression is switched off while labelling; the vision tower keeps its
            attention implementation, the LLM runs the rollout attention).
        inputs: processor output for a batch (left or right padded).
        answer_ids: per sample, ``(T_b,)`` answer token ids; None = the model's greedy answer.
        max_new_tokens: answer length limit when ``answer_ids`` is None.

    Returns:
        Per sample, ``(n_b,)`` float32 relevance over its visual tokens in sequence order (segments concatenated);
        empty for samples without visual tokens or with an empty answer.

    Memory: the forward keeps what a normal training step keeps, except the attention maps: per layer only q, k,
    v (``O(L * S * hidden)``); attention runs one head at a time, so forward and backward hold a few
    ``(B, S, S)`` maps at once (probabilities, gradient, the head-mean), plus the ``(B, S)`` row vectors. The
    naive method keeps every layer's ``(B, H, S, S)`` map and gradient and an ``S x S`` relevance matrix
    (``O(L * H * S^2)``). Time: one backward per answer token (longest answer in the
    batch), each ``O(L * S^2)`` on top of the ordinary backward.
    """
    pad = model.config.get_text_config().pad_token_id or 0
    if answer_ids is None:
        answer_ids = greedy_answers(model, inputs, max_new_tokens)
    if len(answer_ids) != inputs["input_ids"].shape[0]:
        raise ValueError(
            f"`answer_ids` must have one entry per sample ({inputs['input_ids'].shape[0]}), got {len(answer_ids)}"
        )
    full = append_answers(inputs, [torch.as_tensor(a) for a in answer_ids], pad)
    ids = full["input_ids"]
    batch, length = ids.shape
    lengths = [int(torch.as_tensor(a).numel()) for a in answer_ids]
    visual = (ids == model.config.image_token_id) | (ids == model.config.video_token_id)
    for b, n in enumerate(lengths):  # an answer token that happens to be a placeholder id is not visual
        visual[b, length - n :] = False
    total = torch.zeros(batch, length, dtype=torch.float32, device=ids.device)

    with _relevance_mode(model):
        # The vision tower runs without a graph: relevance only needs gradients inside the LLM.
        visual_inputs = {k: full.get(k) for k in model._tokcomp_visual_keys}
        with torch.no_grad():
            merged = model._tokcomp_merge(ids, visual_inputs)
            positions = model._tokcomp_positions(ids, full["attention_mask"], visual_inputs, None)
            batch_inputs = compress_batch(
                full["attention_mask"].bool(),
                ids,
                merged.inputs_embeds,
                positions,
                pad_token_id=pad,
                left_padding=True,
                side=merged.side,
            )  # keeps every token, same layout
        embeds = batch_inputs.inputs_embeds = batch_inputs.inputs_embeds.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = stock_forward_on(model, batch_inputs, use_cache=False).logits
            for t in range(max(lengths, default=0)):
                active = [b for b in range(batch) if t < lengths[b]]
                # answer token t of sample b sits at column length - T_b + t, predicted by the column before
                where = torch.tensor([length - lengths[b] + t - 1 for b in active], device=ids.device)
                target = logits[active, where, ids[active, where + 1]].sum()
                v = torch.zeros(batch, length, dtype=torch.float32, device=ids.device)
                v[active, where] = 1.0
                _ACTIVE.append(_Rollout(v))
                try:
                    torch.autograd.grad(target, embeds, retain_graph=t + 1 < max(lengths), allow_unused=True)
                    total += _ACTIVE[-1].v
                finally:
                    _ACTIVE.pop()
    counts = torch.tensor([max(n, 1) for n in lengths], dtype=torch.float32, device=ids.device)
    mean = total / counts[:, None]
    return [mean[b, visual[b]].detach().cpu() if lengths[b] else mean.new_zeros(0).cpu() for b in range(batch)]
