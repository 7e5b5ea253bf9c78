"""Independent references built from the STOCK transformers model only (never from hf_tokcomp's runtime)."""

from __future__ import annotations

import torch


def stock_visual(stock, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The stock LLM input of a batch: ``(B, L, D)`` text embeddings with the stock vision features at the
    placeholders, the ``(B, L)`` placeholder mask, and the DeepStack levels (Qwen3-VL; ``[]`` elsewhere), each
    ``(B, L, D)`` with the level's features at the placeholders."""
    inner = stock.model
    ids = inputs["input_ids"]
    embeds = inner.get_input_embeddings()(ids)
    visual = torch.zeros_like(ids, dtype=torch.bool)
    deepstack: list[torch.Tensor] = []
    for pixels, grid, token in (
        ("pixel_values", "image_grid_thw", stock.config.image_token_id),
        ("pixel_values_videos", "video_grid_thw", stock.config.video_token_id),
    ):
        if pixels in inputs:
            encode = inner.get_image_features if pixels == "pixel_values" else inner.get_video_features
            out = encode(inputs[pixels], inputs[grid], return_dict=True)
            mask = (ids == token)[..., None]
            embeds = embeds.masked_scatter(mask, torch.cat(out.pooler_output))
            visual |= mask[..., 0]
            levels = [torch.cat(level) for level in getattr(out, "deepstack_features", None) or []]
            deepstack = deepstack or [torch.zeros_like(embeds) for _ in levels]
            deepstack = [d.masked_scatter(mask, f) for d, f in zip(deepstack, levels, strict=True)]
    return embeds, visual, deepstack


def stock_merged_embeddings(stock, inputs: dict) -> torch.Tensor:
    """``(B, L, D)``: the stock text embeddings with the stock vision features at the placeholders."""
    return stock_visual(stock, inputs)[0]


def stock_lm_logits(stock, embeds, positions, visual=None, deepstack=()) -> torch.Tensor:
    """``(1, n, V)``: the stock language model and head on one unpadded sequence ``embeds`` ``(n, D)`` at
    ``positions`` ``(3, n)``; ``deepstack`` (one ``(m, D)`` per level) is added at the ``visual`` ``(n,)`` rows,
    as the stock Qwen3-VL forward does."""
    extra = {}
    if len(deepstack):
        extra = {"visual_pos_masks": visual[None], "deepstack_visual_embeds": list(deepstack)}
    hidden = stock.model.language_model(
        inputs_embeds=embeds[None], position_ids=positions[:, None], **extra
    ).last_hidden_state
    return stock.lm_head(hidden)


def stock_positions(stock, inputs: dict) -> torch.Tensor:
    """``(3, B, L)`` M-RoPE ids from the stock ``get_rope_index``."""
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    positions, _ = stock.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        attention_mask=inputs["attention_mask"],
        **extra,
    )
    return positions


def qwen_segment_sizes(inputs: dict, config) -> dict[int, list[int]]:
    """Tokens per segment from the grids, keyed by placeholder id: one per image; one per video, or one per video
    FRAME for the families that separate frames by timestamp text (Qwen3-VL, Qwen3.5)."""
    merge = config.vision_config.spatial_merge_size
    videos = inputs.get("video_grid_thw", torch.zeros(0, 3, dtype=torch.long)).tolist()
    if config.model_type.startswith("qwen3"):
        video = [h * w // merge**2 for t, h, w in videos for _ in range(t)]
    else:
        video = [t * h * w // merge**2 for t, h, w in videos]
    return {
        config.image_token_id: [int(g.prod()) // merge**2 for g in inputs.get("image_grid_thw", [])],
        config.video_token_id: video,
    }


def naive_kept_positions(inputs: dict, sizes: dict[int, list[int]], scores_fn, keep: float) -> list[list[int]]:
    """Per sample, the sequence positions a fixed-score compressor keeps, found with plain Python loops:
    placeholder runs are cut by the segment sizes (per placeholder id, in batch order), each segment keeps its
    max(1, round(keep * n)) best tokens."""
    queues = {token: list(s) for token, s in sizes.items()}
    kept_all = []
    for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), strict=True):
        kept, i = [], 0
        while i < len(ids):
            if not mask[i]:
                i += 1
                continue
            if ids[i] in queues:
                n = queues[ids[i]].pop(0)
                scores = scores_fn(n).tolist()
                k = max(1, round(keep * n))
                best = sorted(sorted(range(n), key=lambda j: (-scores[j], j))[:k])
                kept += [i + j for j in best]
                i += n
            else:
                kept.append(i)
                i += 1
        kept_all.append(kept)
    return kept_all


def stock_logits_on_shortened(stock, inputs: dict, kept: list[list[int]]) -> list[torch.Tensor]:
    """Per sample, the stock model's logits on the hand-shortened sequence (kept positions only), with the
    original M-RoPE position ids passed explicitly, one sample at a time (no padding)."""
    embeds, visual, deepstack = stock_visual(stock, inputs)
    positions = stock_positions(stock, inputs)
    out = []
    for b, idx in enumerate(kept):
        idx = torch.tensor(idx)
        levels = [level[b, idx][visual[b, idx]] for level in deepstack]
        out.append(stock_lm_logits(stock, embeds[b, idx], positions[:, b, idx], visual[b, idx], levels)[0])
    return out


class NaiveStock:
    """The stock model on one sample's hand-shortened sequence, recomputed from scratch at every step."""

    def __init__(self, stock, inputs: dict, kept: list[list[int]]) -> None:
        self.stock, self.kept = stock, kept
        with torch.no_grad():
            self.embeds, self.visual, self.deepstack = stock_visual(stock, inputs)
            self.positions = stock_positions(stock, inputs)
        self.table = stock.model.get_input_embeddings()

    @torch.no_grad()
    def logits(self, b: int, appended: list[int] = ()) -> torch.Tensor:
        """``(n, V)`` logits of every row of sample ``b``'s shortened prompt plus ``appended`` tokens, which take
        the positions after the prompt's largest position on all three M-RoPE axes."""
        appended = list(appended)
        idx = torch.tensor(self.kept[b])
        seq, pos, visual = self.embeds[b, idx], self.positions[:, b, idx], self.visual[b, idx]
        levels = [level[b, idx][visual] for level in self.deepstack]
        if appended:
            seq = torch.cat([seq, self.table(torch.tensor(appended))])
            after = pos.amax() + torch.arange(1, len(appended) + 1)
            pos = torch.cat([pos, after[None].expand(3, -1)], dim=1)
            visual = torch.cat([visual, torch.zeros(len(appended), dtype=torch.bool)])
        return stock_lm_logits(self.stock, seq, pos, visual, levels)[0]

    def last_logits(self, b: int, appended: list[int]) -> torch.Tensor:
        """``(V,)`` logits after the shortened prompt of sample ``b`` plus ``appended`` tokens."""
        return self.logits(b, appended)[-1]

    def greedy(self, b: int, appended: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
        tokens, logits = [], []
        for _ in range(steps):
            logits.append(self.last_logits(b, appended + tokens))
            tokens.append(int(logits[-1].argmax()))
        return tokens, logits


def naive_rollout(logits: torch.Tensor, attentions: tuple, ids: torch.Tensor, answer_len: int) -> torch.Tensor:
    """``(n,)`` GAE relevance of every position for the last ``answer_len`` tokens of ``ids`` ``(n,)``: one backward
    per answer token through every layer's full ``(1, H, n, n)`` attention map, ``R <- R + mean_h(relu(A * dA)) R``,
    the predicting position's row, averaged over the answer tokens."""
    n = ids.shape[0]
    total = torch.zeros(n)
    for t in range(answer_len):
        q = n - answer_len + t - 1
        grads = torch.autograd.grad(logits[0, q, ids[q + 1]], attentions, retain_graph=True)
        relevance = torch.eye(n)
        for attn, grad in zip(attentions, grads, strict=True):
            relevance = relevance + (attn[0] * grad[0]).clamp_min(0).mean(0) @ relevance
        total += relevance[q]
    return total / answer_len
