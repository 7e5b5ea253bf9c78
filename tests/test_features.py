"""The layer-0 features against the stock model's own eager layer-0 attention probabilities."""

import torch

from hf_tokcomp.runtime.features import instruction_rows, layer0_attention_features
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs

from .reference import qwen_segment_sizes, stock_merged_embeddings, stock_positions

SAMPLES = [
    [("text", [5, 6, 7]), ("image", (8, 8)), ("text", [8, 9, 10, 11])],
    [("text", [5]), ("image", (4, 6)), ("text", [12]), ("image", (4, 4)), ("text", [13, 14])],
]


def test_features_equal_stock_eager_layer0_attention(stock, ours):
    inputs = make_qwen_inputs(SAMPLES, stock.config)
    stock.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = stock(**inputs, output_attentions=True).attentions[0]  # (B, H, L, L)
    finally:
        stock.set_attn_implementation("sdpa")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    visual = (ids == stock.config.image_token_id) | (ids == stock.config.video_token_id)
    expected = torch.zeros(ids.shape)
    for b in range(ids.shape[0]):
        last_visual = int(visual[b].nonzero().max())
        rows = [i for i in range(last_visual + 1, ids.shape[1]) if mask[b, i]]
        expected[b] = attn[b][:, rows].mean(dim=(0, 1))

    with torch.no_grad():
        embeds = stock_merged_embeddings(stock, inputs)
        positions = stock_positions(stock, inputs)
        cos, sin = stock.model.language_model.rotary_emb(embeds, positions)
        rows = instruction_rows(visual, mask)
        got = layer0_attention_features(embeds, ours.model.language_model.layers[0], cos, sin, mask, rows)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_prompt_ending_in_a_visual_token_is_refused():
    visual = torch.tensor([[False, True, True]])
    try:
        instruction_rows(visual, torch.ones(1, 3))
    except ValueError as err:
        assert "no instruction tokens after their last visual token" in str(err)
    else:
        raise AssertionError("expected a ValueError")


# ---- the runtime's whole feature path, every family: stock eager attention averaged by hand -------------------------
def hand_features(attn: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)``: layer-0 attention ``(B, H, L, L)`` averaged over heads and over the rows that are real tokens
    after the sample's last visual token."""
    out = torch.zeros(visual.shape)
    for b in range(visual.shape[0]):
        last_visual = int(visual[b].nonzero().max())
        rows = [i for i in range(last_visual + 1, visual.shape[1]) if mask[b, i]]
        out[b] = attn[b][:, rows].mean(dim=(0, 1))
    return out


def hand_selection(features: torch.Tensor, runs: list[list[tuple[int, int]]], keep: float) -> list[list[int]]:
    """Per sample, the kept indices among its visual tokens: each run ``(start, n)`` keeps its top
    max(1, round(keep * n)) features, ties to the earlier token (plain Python)."""
    kept_all = []
    for b, sample_runs in enumerate(runs):
        kept, offset = [], 0
        for start, n in sample_runs:
            scores = features[b, start : start + n].tolist()
            k = max(1, round(keep * n))
            kept += [offset + j for j in sorted(sorted(range(n), key=lambda j: (-scores[j], j))[:k])]
            offset += n
        kept_all.append(kept)
    return kept_all


def visual_runs(ids: torch.Tensor, sizes: dict[int, list[int]]) -> list[list[tuple[int, int]]]:
    """Per sample, ``(start, n)`` of each visual segment: placeholder runs cut by the segment sizes in order."""
    queues = {token: list(s) for token, s in sizes.items()}
    runs = []
    for row in ids.tolist():
        found, i = [], 0
        while i < len(row):
            if row[i] in queues and queues[row[i]]:
                n = queues[row[i]].pop(0)
                found.append((i, n))
                i += n
            else:
                i += 1
        runs.append(found)
    return runs


def check_feature_path(model, inputs, expected: torch.Tensor, runs, keep=0.25):
    """``compressor_features`` per segment equal ``expected`` there; ``compressor=None`` keeps its top-k."""
    model.compressor, model.config.token_keep = None, keep
    with torch.no_grad():
        features = model.compressor_features(**inputs)
        model(**inputs)
    for b, sample_runs in enumerate(runs):
        for (_, got), (start, n) in zip(features[b], sample_runs, strict=True):
            torch.testing.assert_close(got[0], expected[b, start : start + n], rtol=1e-5, atol=1e-6)
    got_kept = [torch.cat(r.kept).tolist() for r in model.last_compression]
    assert got_kept == hand_selection(expected, runs, keep)


def test_qwen_feature_path_equals_stock_eager_attention_padded_with_video(stock, ours):
    samples = [*SAMPLES, [("text", [5, 6]), ("video", (4, 4, 6)), ("text", [17, 18, 19])]]
    inputs = make_qwen_inputs(samples, stock.config)
    stock.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = stock(**inputs, output_attentions=True).attentions[0]
    finally:
        stock.set_attn_implementation("sdpa")
    ids = inputs["input_ids"]
    visual = (ids == stock.config.image_token_id) | (ids == stock.config.video_token_id)
    runs = visual_runs(ids, qwen_segment_sizes(inputs, stock.config))
    check_feature_path(ours, inputs, hand_features(attn, visual, inputs["attention_mask"]), runs)
