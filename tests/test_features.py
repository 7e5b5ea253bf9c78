"""The layer-0 features against the stock model's own eager layer-0 attention probabilities."""

import torch

from hf_tokcomp.runtime.features import instruction_rows, layer0_attention_features
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs

from .reference import stock_merged_embeddings, stock_positions

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
