"""Layer-0 attention features: what the compressor reads, computed without running any full layer.

For every sample, the rows are the instruction tokens (the text after the last visual token); the value of a
key position is its layer-0 attention probability averaged over those rows and over heads. Only the layer-0
norm and the q/k projections are evaluated, and q only on the instruction rows, so the cost is a small
fraction of one decoder layer; the main pass keeps whatever attention kernel the user chose.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["answer_mask", "layer0_attention_features", "instruction_rows"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, d); cos, sin: (B, T, r) with r <= d (partial rotary: the last d - r dims pass) -> (B, H, T, d)."""
    rot = cos.shape[-1]
    turned = x[..., :rot] * cos[:, None] + _rotate_half(x[..., :rot]) * sin[:, None]
    return turned if rot == x.shape[-1] else torch.cat([turned, x[..., rot:]], dim=-1)


def answer_mask(input_ids: torch.Tensor, labels: torch.Tensor, answer_start_ids: list[int] | None) -> torch.Tensor:
    """``(B, L)`` bool, True on the answer of a training sequence: the tokens the selection must never read.

    The answer starts after the LAST occurrence of ``answer_start_ids`` (the chat template's generation prompt,
    which ``generate`` sees at the end of its prompt), whatever ``labels`` marks: collators that label the whole
    conversation (TRL's vision-language collator) then select exactly what ``generate`` selects for the prompt.
    Where the sequence has no such ids (or they are None), the answer is the labelled tokens (``!= -100``).

    Args:
        input_ids: ``(B, L)``.
        labels: ``(B, L)``, -100 on tokens without a label.
        answer_start_ids: the ids that open the answer, or None.
    """
    labelled = labels != -100
    if not answer_start_ids or input_ids.shape[1] < len(answer_start_ids):
        return labelled
    header = torch.tensor(answer_start_ids, device=input_ids.device)
    windows = input_ids.unfold(1, header.numel(), 1)  # (B, L - h + 1, h)
    found = (windows == header).all(-1)
    seq = torch.arange(found.shape[1], device=input_ids.device)
    last = torch.where(found, seq, -1).amax(dim=1, keepdim=True)  # (B, 1) start of the last header, or -1
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    after_header = positions >= last + header.numel()
    return torch.where(last >= 0, after_header, labelled)


def instruction_rows(visual_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The query rows of the features: real tokens after each sample's last visual token.

    Args:
        visual_mask: ``(B, L)`` bool, True on visual tokens.
        attention_mask: ``(B, L)`` 1 on real tokens, 0 on padding.

    Returns:
        ``(B, L)`` bool. Samples without visual tokens get no rows.
    """
    seq = torch.arange(visual_mask.shape[1], device=visual_mask.device)
    last_visual = torch.where(visual_mask, seq, -1).amax(dim=1, keepdim=True)
    rows = (seq > last_visual) & attention_mask.bool() & (last_visual >= 0)
    has_visual = visual_mask.any(dim=1)
    missing = has_visual & ~rows.any(dim=1)
    if missing.any():
        raise ValueError(
            f"sample(s) {missing.nonzero().flatten().tolist()} have no instruction tokens after their last visual "
            "token; the layer-0 features need some (with `labels`, the answer never counts: it starts after "
            "`config.answer_start_ids` where the sequence holds them, else it is every labelled token). Put the "
            "question after the image/video, set `model.config.answer_start_ids` to your chat template's "
            "generation prompt ids (or mask the prompt in `labels` with -100), or set `token_keep=1.0`."
        )
    return rows


@torch.no_grad()
def layer0_attention_features(
    hidden: torch.Tensor,
    layer: nn.Module,
    cos: torch.Tensor,
    sin: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """Attention each position receives at layer 0, averaged over the instruction rows and the heads.

    Args:
        hidden: ``(B, L, D)`` merged input embeddings (the LLM's input).
        layer: decoder layer 0; needs ``input_layernorm`` and ``self_attn`` with ``q_proj``, ``k_proj``,
            ``head_dim``, ``scaling`` (Llama/Qwen2 style), and ``q_norm`` / ``k_norm`` where it has them (Qwen3); a
            gated ``q_proj`` (query and gate per head, Qwen3.5) and partial rotary tables are handled.
        cos, sin: ``(B, L, head_dim)`` rotary tables at the original positions (M-RoPE already mixed in).
        attention_mask: ``(B, L)`` 1 on real tokens, 0 on padding.
        rows: ``(B, L)`` bool, the query rows to average (see :func:`instruction_rows`).

    Returns:
        ``(B, L)`` float32; entries of samples without rows are 0. Causal, padding-aware, and with the layer's
        sliding window when it has one, like the model's own layer 0.
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    head_dim = attn.head_dim
    h = layer.input_layernorm(hidden)

    n_rows = rows.sum(dim=1)
    r_max = max(int(n_rows.max()), 1)
    # Row positions, packed to the left and padded with the last position (masked out below).
    order = torch.sort(rows.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :r_max]
    row_valid = torch.arange(r_max, device=hidden.device)[None, :] < n_rows[:, None]

    h_rows = h.gather(1, order[..., None].expand(-1, -1, h.shape[-1]))
    q = attn.q_proj(h_rows)
    k = attn.k_proj(h).view(batch, length, -1, head_dim)
    heads = getattr(getattr(attn, "config", None), "num_attention_heads", None)
    if heads is not None and q.shape[-1] == 2 * heads * head_dim:  # Qwen3.5: q_proj also makes an output gate
        q = q.view(batch, r_max, heads, 2 * head_dim)[..., :head_dim]
    else:
        q = q.view(batch, r_max, -1, head_dim)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3: RMSNorm over each head's q and k before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float()
    cos_rows = cos.gather(1, order[..., None].expand(-1, -1, cos.shape[-1])).float()
    sin_rows = sin.gather(1, order[..., None].expand(-1, -1, sin.shape[-1])).float()
    q = _apply_rope(q, cos_rows, sin_rows)
    k = _apply_rope(k, cos.float(), sin.float())
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)

    logits = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling  # (B, H, R, L)
    keys = torch.arange(length, device=hidden.device)
    visible = attention_mask.bool()[:, None, :] & (keys[None, None, :] <= order[:, :, None])
    window = getattr(attn, "sliding_window", None)
    if window:
        visible &= keys[None, None, :] > order[:, :, None] - window
    visible &= row_valid[:, :, None]
    logits = logits.masked_fill(~visible[:, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows with no visible key (padding) -> 0
    summed = probs.sum(dim=(1, 2))  # (B, L)
    return summed / (n_rows.clamp_min(1) * probs.shape[1])[:, None].float()
