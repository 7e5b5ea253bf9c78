"""An alternative teacher signal: leave-one-out occlusion of visual tokens at the LLM input.

The relevance of a visual token is how much the log-probability of the model's answer drops when that one token
is removed from the LLM's input (the others keep their original positions, exactly as compression removes
tokens). It measures the effect the compressor has to predict, at the cost of one forward per visual token
(batched), where GAE needs one backward per answer token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..runtime.compression import compress_batch
from ..runtime.stock_call import stock_forward_on
from .gae import append_answers

__all__ = ["occlusion_relevance"]


@torch.no_grad()
def occlusion_relevance(
    model: nn.Module, inputs: dict[str, Any], answer_ids: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """``(n,)`` float32: log p(answer | all tokens) - log p(answer | all but visual token i), over the sample's
    visual tokens in sequence order (segments concatenated); zeros for an empty answer.

    Args:
        model: an hf_tokcomp model (its compression is not used).
        inputs: processor output for ONE sample.
        answer_ids: ``(T,)`` answer token ids (e.g. the model's greedy answer).
        chunk: sequences per forward (the unoccluded one and ``chunk - 1`` occluded copies).
    """
    if chunk < 2:
        raise ValueError(f"`chunk` must be >= 2 (the unoccluded copy runs in every chunk), got {chunk}")
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(
            f"occlusion_relevance takes one sample at a time, got a batch of {inputs['input_ids'].shape[0]}"
        )
    pad = model.config.get_text_config().pad_token_id or 0
    answer = torch.as_tensor(answer_ids).to(inputs["input_ids"].device)
    full = append_answers(inputs, [answer], pad)
    ids = full["input_ids"]
    mask = full["attention_mask"]
    length, t = ids.shape[1], answer.numel()
    visual = {k: full.get(k) for k in model._tokcomp_visual_keys}
    merged = model._tokcomp_merge(ids, visual)
    positions = model._tokcomp_positions(ids, mask, visual, None)
    where = merged.visual_mask[0].nonzero().flatten()
    where = where[where < length - t]
    if t == 0:
        return torch.zeros(where.numel())
    labels = torch.full_like(ids, -100)
    labels[0, length - t :] = ids[0, length - t :]

    def answer_logprob(keep: torch.Tensor) -> torch.Tensor:
        rows = keep.shape[0]
        batch = compress_batch(
            keep,
            ids.expand(rows, -1),
            merged.inputs_embeds.expand(rows, -1, -1),
            positions.expand(*positions.shape[:-2], rows, -1),
            labels.expand(rows, -1),
            pad_token_id=pad,
            side={name: value.expand(rows, -1, -1) for name, value in merged.side.items()},
        )
        logits = stock_forward_on(model, batch, use_cache=False).logits.float()
        logp = logits[:, :-1].log_softmax(-1)
        target = batch.labels[:, 1:]
        picked = logp.gather(-1, target.clamp_min(0)[..., None])[..., 0]
        return (picked * (target != -100)).sum(-1)

    drops = []
    training, _ = model.training, model.eval()
    try:
        for start in range(0, where.numel(), chunk - 1):
            cols = where[start : start + chunk - 1]
            # row 0 is the unoccluded sequence, in the same batch as the occluded ones (same kernels, same padding)
            keep = mask.bool().expand(cols.numel() + 1, -1).clone()
            keep[torch.arange(1, cols.numel() + 1), cols] = False
            logprob = answer_logprob(keep)
            drops.append(logprob[0] - logprob[1:])
    finally:
        model.train(training)
    return torch.cat(drops).cpu() if drops else torch.zeros(0)
