"""Qwen3-VL (dense and MoE): the same contract as Qwen2-VL, with DeepStack features pruned with their tokens.

References are the STOCK model: its own forward at keep 1, and its language model called by hand on the
hand-shortened sequence (kept embeddings, original M-RoPE positions, ``visual_pos_masks`` and DeepStack features
of the kept visual tokens), with the naive no-cache loop for generation.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import hf_tokcomp
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs
from hf_tokcomp.testing.tiny_qwen3 import tiny_qwen3_5_config, tiny_qwen3_vl_config

from .fixed_scores import FixedScores, fixed_scores
from .reference import naive_kept_positions, qwen_segment_sizes
from .test_features import check_feature_path, hand_features, text_rows, visual_runs

A = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]
B = [("text", [5]), ("image", (4, 6)), ("text", [10, 11]), ("image", (4, 4)), ("text", [12, 20, 21])]
TEXT = [("text", [5, 6, 7, 8])]
VIDEO = [("text", [5, 6]), ("video", (4, 4, 6)), ("text", [7, 8, 9])]  # 2 frames, each its own segment
CLASSES = {
    "dense": (transformers.Qwen3VLForConditionalGeneration, hf_tokcomp.Qwen3VLForConditionalGeneration),
    "moe": (transformers.Qwen3VLMoeForConditionalGeneration, hf_tokcomp.Qwen3VLMoeForConditionalGeneration),
    "3.5": (transformers.Qwen3_5ForConditionalGeneration, hf_tokcomp.Qwen3_5ForConditionalGeneration),
    "3.5-moe": (transformers.Qwen3_5MoeForConditionalGeneration, hf_tokcomp.Qwen3_5MoeForConditionalGeneration),
}
CONFIGS = {
    "dense": lambda: tiny_qwen3_vl_config(),
    "moe": lambda: tiny_qwen3_vl_config(moe=True),
    "3.5": lambda: tiny_qwen3_5_config(),
    "3.5-moe": lambda: tiny_qwen3_5_config(moe=True),
}


@pytest.fixture(scope="module", params=list(CLASSES))
def checkpoint(request, tmp_path_factory):
    stock_cls, ours_cls = CLASSES[request.param]
    torch.manual_seed(0)
    stock = stock_cls(CONFIGS[request.param]()).eval()
    path = tmp_path_factory.mktemp(f"qwen3_vl_{request.param}")
    stock.save_pretrained(path)
    return stock, path, ours_cls


@pytest.fixture()
def stock(checkpoint):
    return checkpoint[0]


@pytest.fixture()
def ours(checkpoint):
    model, info = checkpoint[2].from_pretrained(checkpoint[1], output_loading_info=True)
    assert not any(info.values()), info  # every weight loaded, none random
    model.generation_config.eos_token_id = None
    return model.eval()


def frame_sizes(inputs, config) -> dict[int, list[int]]:
    """Tokens per segment: one per image; one per video FRAME (Qwen3-VL separates frames by timestamps)."""
    sizes = qwen_segment_sizes(inputs, config)
    merge = config.vision_config.spatial_merge_size
    sizes[config.video_token_id] = [
        int(h * w) // merge**2
        for t, h, w in inputs.get("video_grid_thw", torch.zeros(0, 3)).tolist()
        for _ in range(int(t))
    ]
    return sizes


class StockReference:
    """The stock model's pieces: merged embeddings, DeepStack side features, M-RoPE positions."""

    def __init__(self, stock, inputs):
        self.stock = stock
        inner = stock.model
        ids = inputs["input_ids"]
        self.embeds = inner.get_input_embeddings()(ids).detach()
        self.visual = torch.zeros_like(ids, dtype=torch.bool)
        self.deepstack = None
        with torch.no_grad():
            for pixels, grid, token, encode in (
                ("pixel_values", "image_grid_thw", stock.config.image_token_id, inner.get_image_features),
                ("pixel_values_videos", "video_grid_thw", stock.config.video_token_id, inner.get_video_features),
            ):
                if pixels not in inputs:
                    continue
                out = encode(inputs[pixels], inputs[grid], return_dict=True)
                mask = ids == token
                self.visual |= mask
                self.embeds = self.embeds.masked_scatter(mask[..., None], torch.cat(out.pooler_output))
                levels = [torch.cat(level) for level in getattr(out, "deepstack_features", None) or []]
                if self.deepstack is None:
                    self.deepstack = [torch.zeros_like(self.embeds) for _ in levels]
                self.deepstack = [
                    d.masked_scatter(mask[..., None], f) for d, f in zip(self.deepstack, levels, strict=True)
                ]
            self.positions, _ = inner.get_rope_index(
                ids,
                mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=inputs.get("image_grid_thw"),
                video_grid_thw=inputs.get("video_grid_thw"),
                attention_mask=inputs["attention_mask"],
            )

    @torch.no_grad()
    def logits(self, b: int, kept: list[int], appended: list[int] = ()) -> torch.Tensor:
        """``(len(kept) + len(appended), V)``: the stock language model on the shortened sequence of sample ``b``
        plus ``appended`` text tokens (positions after the prompt's largest), no cache."""
        idx = torch.tensor(kept)
        embeds, positions = self.embeds[b, idx], self.positions[:, b, idx]
        visual = self.visual[b, idx]
        deepstack = [level[b, idx][visual] for level in self.deepstack or []]
        if appended:
            table = self.stock.model.get_input_embeddings()
            embeds = torch.cat([embeds, table(torch.tensor(list(appended)))])
            after = positions.amax() + torch.arange(1, len(appended) + 1)
            positions = torch.cat([positions, after[None].expand(3, -1)], dim=1)
            visual = torch.cat([visual, torch.zeros(len(appended), dtype=torch.bool)])
        extra = {"visual_pos_masks": visual[None], "deepstack_visual_embeds": deepstack} if deepstack else {}
        hidden = self.stock.model.language_model(
            inputs_embeds=embeds[None], position_ids=positions[:, None], **extra
        ).last_hidden_state
        return self.stock.lm_head(hidden)[0]


def test_keep_1_is_the_stock_model(stock, ours):
    inputs = make_qwen_inputs([A, B, TEXT, VIDEO], stock.config, video_frames=True)
    stock.generation_config.eos_token_id = None
    with torch.no_grad():
        assert torch.equal(ours(**inputs).logits, stock(**inputs).logits)
        assert torch.equal(
            ours.generate(**inputs, max_new_tokens=4, do_sample=False),
            stock.generate(**inputs, max_new_tokens=4, do_sample=False),
        )


@pytest.mark.parametrize("samples", [[A, B, TEXT], [VIDEO, A]], ids=["images", "video_frames"])
def test_fixed_scores_equal_the_stock_language_model_on_the_shortened_sequence(stock, ours, samples):
    """DeepStack features are pruned with their tokens: only the kept visual tokens get them, at their place.
    A video's frames (separated by timestamps) are separate segments."""
    inputs = make_qwen_inputs(samples, stock.config, video_frames=True)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, frame_sizes(inputs, stock.config), fixed_scores, 0.25)
    reference = StockReference(stock, inputs)
    with torch.no_grad():
        got = ours(**inputs).logits
    for b, idx in enumerate(kept):
        torch.testing.assert_close(got[b, -len(idx) :], reference.logits(b, idx), rtol=1e-5, atol=1e-5)


def test_generate_equals_the_naive_loop_and_is_batch_invariant(stock, ours):
    inputs = make_qwen_inputs([A, B], stock.config)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.25)
    reference = StockReference(stock, inputs)
    with torch.no_grad():
        out = ours.generate(
            **inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True
        )
        alone = ours.generate(**make_qwen_inputs([B], stock.config), max_new_tokens=4, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :prompt], inputs["input_ids"])
    for b in range(2):
        tokens = out.sequences[b, prompt:].tolist()
        for step in range(4):
            expected = reference.logits(b, kept[b], tokens[:step])[-1]
            torch.testing.assert_close(out.logits[step][b], expected, rtol=1e-5, atol=1e-5)
    assert out.sequences[1, -4:].tolist() == alone[0, -4:].tolist()
    assert out.past_key_values.get_seq_length() == max(len(k) for k in kept) + 4 - 1  # only the compressed prompt


def test_feature_path_equals_stock_eager_attention_with_qk_norms(stock, ours):
    if "linear_attention" in getattr(stock.config.text_config, "layer_types", []):
        pytest.skip("Qwen3.5's layer 0 has no softmax map: see test_qwen3_5_features_from_the_first_full_layer")
    inputs = make_qwen_inputs([A, B], stock.config)
    stock.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = stock(**inputs, output_attentions=True).attentions[0]
    finally:
        stock.set_attn_implementation("sdpa")
    ids = inputs["input_ids"]
    visual = ids == stock.config.image_token_id
    runs = visual_runs(ids, qwen_segment_sizes(inputs, stock.config))
    check_feature_path(ours, inputs, hand_features(attn, ids, visual, inputs["attention_mask"]), runs)


def test_qwen3_5_features_from_the_first_full_layer(stock, ours):
    """Qwen3.5: the (causal) features are the first full-attention layer's causal softmax, from its own q (query
    half of the gated projection) and k, their norms and its partial rotary table, applied to the LLM input
    embeddings - computed here with the stock layer's modules and the stock rotary function, averaged by hand over
    the instruction rows (rows before the image give it 0)."""
    if "linear_attention" not in getattr(stock.config.text_config, "layer_types", []):
        pytest.skip("Qwen3-VL: checked against the stock eager attention map")
    from transformers.models.qwen3_5 import modeling_qwen3_5 as stock_module

    inputs = make_qwen_inputs([A, B], stock.config)
    reference = StockReference(stock, inputs)
    text = stock.model.language_model
    layer = text.layers[text.config.layer_types.index("full_attention")]
    attn, ids, mask = layer.self_attn, inputs["input_ids"], inputs["attention_mask"]
    expected = torch.zeros(ids.shape)
    with torch.no_grad():
        cos, sin = text.rotary_emb(reference.embeds, reference.positions)
        h = layer.input_layernorm(reference.embeds)
        batch, length = ids.shape
        q, _gate = torch.chunk(attn.q_proj(h).view(batch, length, -1, attn.head_dim * 2), 2, dim=-1)
        q = attn.q_norm(q).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(h).view(batch, length, -1, attn.head_dim)).transpose(1, 2)
        q, k = stock_module.apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q @ k.transpose(-1, -2)) * attn.scaling
        for b, rows in enumerate(text_rows(ids, reference.visual, mask)):
            probs = []
            for i in rows:
                keys = [j for j in range(i + 1) if mask[b, j]]
                row = torch.full((q.shape[1], length), 0.0)
                row[:, keys] = torch.softmax(scores[b, :, i, keys], dim=-1)
                probs.append(row)
            expected[b] = torch.stack(probs).mean(dim=(0, 1))
    runs = visual_runs(ids, qwen_segment_sizes(inputs, stock.config))
    check_feature_path(ours, inputs, expected, runs)


def test_without_an_attention_mask_the_gapped_positions_are_not_packed_sequences(stock, ours):
    """One unpadded sample, no mask, no cache: the kept tokens' gapped positions must not be read as packed
    sequences (the contiguous text row of the 4-row ids prevents it)."""
    inputs = make_qwen_inputs([B], stock.config, video_frames=True)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, frame_sizes(inputs, stock.config), fixed_scores, 0.25)
    reference = StockReference(stock, inputs)
    del inputs["attention_mask"]
    with torch.no_grad():
        got = ours(**inputs, use_cache=False).logits
    torch.testing.assert_close(got[0], reference.logits(0, kept[0]), rtol=1e-5, atol=1e-5)
