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
from .reference import NaiveStock, naive_kept_positions, qwen_segment_sizes, stock_positions, stock_visual
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


def test_keep_1_is_the_stock_model(stock, ours):
    inputs = make_qwen_inputs([A, B, TEXT, VIDEO], stock.config)
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
    inputs = make_qwen_inputs(samples, stock.config)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.25)
    reference = NaiveStock(stock, inputs, kept)
    with torch.no_grad():
        got = ours(**inputs).logits
    for b, idx in enumerate(kept):
        torch.testing.assert_close(got[b, -len(idx) :], reference.logits(b), rtol=1e-5, atol=1e-5)


def test_generate_equals_the_naive_loop_and_is_batch_invariant(stock, ours):
    inputs = make_qwen_inputs([A, B], stock.config)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.25)
    reference = NaiveStock(stock, inputs, kept)
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
            expected = reference.last_logits(b, tokens[:step])
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
    with torch.no_grad():
        embeds, visual, _ = stock_visual(stock, inputs)
    positions = stock_positions(stock, inputs)
    text = stock.model.language_model
    layer = text.layers[text.config.layer_types.index("full_attention")]
    attn, ids, mask = layer.self_attn, inputs["input_ids"], inputs["attention_mask"]
    expected = torch.zeros(ids.shape)
    with torch.no_grad():
        cos, sin = text.rotary_emb(embeds, positions)
        h = layer.input_layernorm(embeds)
        batch, length = ids.shape
        q, _gate = torch.chunk(attn.q_proj(h).view(batch, length, -1, attn.head_dim * 2), 2, dim=-1)
        q = attn.q_norm(q).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(h).view(batch, length, -1, attn.head_dim)).transpose(1, 2)
        q, k = stock_module.apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q @ k.transpose(-1, -2)) * attn.scaling
        for b, rows in enumerate(text_rows(ids, visual, mask)):
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
    inputs = make_qwen_inputs([B], stock.config)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.25)
    reference = NaiveStock(stock, inputs, kept)
    del inputs["attention_mask"]
    with torch.no_grad():
        got = ours(**inputs, use_cache=False).logits
    torch.testing.assert_close(got[0], reference.logits(0), rtol=1e-5, atol=1e-5)


def naive_switch_loss(router_logits: list[torch.Tensor], experts: int, top_k: int) -> torch.Tensor:
    """Switch Transformer load balancing written out: over every layer's ``(N, E)`` router logits of the N real
    tokens, E * sum_e (share of top-k assignments to e) * (mean routing probability of e), both pooled over layers."""
    counts, probs, rows = torch.zeros(experts), torch.zeros(experts), 0
    for logits in router_logits:
        p = logits.float().softmax(-1)
        for token in range(p.shape[0]):
            for e in p[token].topk(top_k).indices.tolist():
                counts[e] += 1
        probs += p.sum(0)
        rows += p.shape[0]
    return experts * (counts / rows * probs / rows).sum()


def test_moe_router_aux_loss_uses_the_compressed_sequence(stock, ours):
    """The router's auxiliary loss (and the loss it is added to) counts exactly the kept tokens: the router
    logits of the stock language model run on each hand-shortened sample, pooled by hand."""
    text = stock.config.text_config
    if not getattr(text, "num_experts", 0):
        pytest.skip("dense model: no router")
    inputs = make_qwen_inputs([A, B], stock.config)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.25)
    reference = NaiveStock(stock, inputs, kept)
    routers = [m for m in stock.model.language_model.modules() if type(m).__name__.endswith("TopKRouter")]
    assert len(routers) == text.num_hidden_layers
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _a, out: seen.append(out[0].reshape(-1, out[0].shape[-1]))) for m in routers
    ]
    try:
        per_sample = []
        for b in range(len(kept)):
            seen.clear()
            reference.logits(b)
            per_sample.append(list(seen))
    finally:
        for hook in hooks:
            hook.remove()
    layers = [torch.cat([sample[i] for sample in per_sample]) for i in range(len(routers))]
    expected = naive_switch_loss(layers, text.num_experts, text.num_experts_per_tok)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -2:] = inputs["input_ids"][:, -2:]  # the answer: the last two tokens (the rest is the instruction)
    with torch.no_grad():
        out = ours(**inputs, labels=labels, output_router_logits=True)
        full = stock(**inputs, output_router_logits=True)
    torch.testing.assert_close(out.aux_loss, expected, rtol=1e-5, atol=1e-6)
    assert (full.aux_loss - expected).abs() > 1e-4  # the uncompressed sequence routes other tokens
    torch.testing.assert_close(out.loss - text.router_aux_loss_coef * out.aux_loss, ours(**inputs, labels=labels).loss)


def test_a_text_config_without_an_end_of_sequence_id_reads_the_model_configs():
    """transformers' Qwen3VLTextConfig declares no ``eos_token_id``: the turn end comes from the model config, and
    a checkpoint with neither still compresses (it then has no turn end to skip)."""
    from transformers import Qwen3VLConfig

    from hf_tokcomp.runtime.instruction import turn_layout

    assert not hasattr(Qwen3VLConfig().text_config, "eos_token_id")
    assert turn_layout(Qwen3VLConfig(eos_token_id=151645)).turn_end == (151645,)
    assert turn_layout(Qwen3VLConfig()).turn_end == ()


def test_the_experts_implementation_is_the_stock_classs(stock, ours):
    """transformers decides from the defining module's source whether a class may use grouped_mm experts (else
    it silently falls back to the eager loop, or refuses an explicit request); ours (defined in hf_tokcomp) gets
    the stock default, accepts every implementation the stock class accepts, and gives its logits."""
    if not getattr(stock.config.text_config, "num_experts", 0):
        pytest.skip("dense model: no experts")
    config = stock.config
    for cls in type(ours).__mro__:  # transformers caches the answer on the class asked first: start clean
        if "_can_set_experts_implementation_cached_value" in vars(cls):
            delattr(cls, "_can_set_experts_implementation_cached_value")
    for requested in (None, "grouped_mm", "batched_mm", "eager"):
        options = {} if requested is None else {"experts_implementation": requested}
        model = type(ours)._from_config(config, **options)
        reference = type(stock)._from_config(config, **options)
        got = model.config.get_text_config()._experts_implementation
        assert got == reference.config.get_text_config()._experts_implementation == (requested or "grouped_mm")
    inputs = make_qwen_inputs([A], stock.config)
    saved = stock.config.get_text_config()._experts_implementation
    try:
        for implementation in ("eager", "batched_mm"):
            ours.set_experts_implementation(implementation)
            stock.set_experts_implementation(implementation)
            with torch.no_grad():
                torch.testing.assert_close(ours(**inputs).logits, stock(**inputs).logits, rtol=1e-5, atol=1e-5)
    finally:
        stock.set_experts_implementation(saved)
