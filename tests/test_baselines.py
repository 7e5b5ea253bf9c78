"""Baselines: FastV against the stock model, and the input-stage baseline scorers."""

import pytest
import torch
import transformers

import hf_tokcomp
from hf_tokcomp.evaluation.baselines import RandomScores, UniformScores
from hf_tokcomp.evaluation.fastv import fastv_generate
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs, tiny_qwen_config
from hf_tokcomp.testing.tiny_qwen3 import tiny_qwen3_5_config, tiny_qwen3_vl_config

from .reference import stock_positions, stock_visual

A = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]
B = [("text", [5]), ("image", (4, 6)), ("text", [10, 11, 12, 13])]


#: FastV's families here: Qwen2-VL, and Qwen3-VL for the DeepStack features it adds after its first layers
FASTV = {
    "qwen2_vl": (
        transformers.Qwen2VLForConditionalGeneration,
        hf_tokcomp.Qwen2VLForConditionalGeneration,
        lambda layers: tiny_qwen_config("qwen2_vl", num_layers=layers),
    ),
    "qwen3_vl": (
        transformers.Qwen3VLForConditionalGeneration,
        hf_tokcomp.Qwen3VLForConditionalGeneration,
        lambda layers: tiny_qwen3_vl_config(num_layers=layers),
    ),
}


def _models(layers=4, family="qwen2_vl"):
    stock_cls, ours_cls, config = FASTV[family]
    torch.manual_seed(0)
    stock = stock_cls(config(layers)).eval()
    ours = ours_cls(stock.config).eval()
    ours.load_state_dict(stock.state_dict())
    stock.generation_config.eos_token_id = None
    return stock, ours


@pytest.mark.parametrize("family", list(FASTV))
def test_fastv_keeping_everything_is_stock_greedy_generate(family):
    stock, ours = _models(family=family)
    inputs = make_qwen_inputs([A, B], stock.config)
    with torch.no_grad():
        expected = stock.generate(**inputs, max_new_tokens=6, do_sample=False)
    out = fastv_generate(ours, inputs, token_keep=1.0, k=2, max_new_tokens=6)
    assert torch.equal(out.sequences, expected)


@pytest.mark.parametrize("family", list(FASTV))
def test_fastv_keeps_the_tokens_the_last_token_attends_most_at_layer_k(family):
    stock, ours = _models(family=family)
    inputs = make_qwen_inputs([A, B], stock.config)
    k = 2
    stock.set_attn_implementation("eager")
    with torch.no_grad():
        attention = stock(**inputs, output_attentions=True).attentions[k - 1]  # (B, H, L, L)
    out = fastv_generate(ours, inputs, token_keep=0.25, k=k, max_new_tokens=3)
    ids = inputs["input_ids"]
    for b in range(ids.shape[0]):
        visual = (ids[b] == stock.config.image_token_id).nonzero().flatten().tolist()
        scores = attention[b, :, -1, visual].mean(0).tolist()
        n_keep = max(1, round(0.25 * len(visual)))
        best = sorted(sorted(range(len(visual)), key=lambda i: -scores[i])[:n_keep])
        assert out.keep[b, visual].nonzero().flatten().tolist() == best
    prompt, new = ids.shape[1], 3
    kept = int(out.keep.sum(1).max())
    assert out.cache_tokens == [prompt + new - 1] * k + [kept + new - 1] * 2


def test_input_stage_baselines_use_the_core_budget():
    _, ours = _models(layers=2)
    inputs = make_qwen_inputs([A, B], ours.config)
    ours.config.token_keep = 0.5
    for scorer in (RandomScores(seed=3), UniformScores()):
        ours.compressor = scorer
        with torch.no_grad():
            ours(**inputs)
        assert [r.num_kept for r in ours.last_compression] == [8, 3]
    ours.compressor = UniformScores()
    with torch.no_grad():
        ours(**make_qwen_inputs([A], ours.config))
    kept = ours.last_compression[0].kept[0].tolist()
    assert kept == [0, 2, 4, 6, 8, 10, 12, 14]  # evenly spread over the 16 tokens


@pytest.mark.parametrize("family", list(FASTV))
def test_fastv_prefill_at_keep_a_quarter_equals_a_naive_two_stage_forward(family):
    """Each sample alone, the stock decoder layers called by hand at the stock M-RoPE positions: layers < K on
    every token, layers >= K on the tokens FastV kept; Qwen3-VL's DeepStack level i is added to layer i's output
    at the (kept) visual tokens, as the stock text model does."""
    from hf_tokcomp.evaluation.fastv import fastv_prefill, fastv_prepare

    stock, ours = _models(family=family)
    k, samples = 2, [A, B]
    inputs = make_qwen_inputs(samples, stock.config)
    with torch.no_grad():
        state = fastv_prefill(ours, *fastv_prepare(ours, inputs), token_keep=0.25, k=k)
        lm = stock.model.language_model
        for b, sample in enumerate(samples):
            alone = make_qwen_inputs([sample], stock.config)
            embeds, visual, deepstack = stock_visual(stock, alone)
            h, positions, visual = embeds, stock_positions(stock, alone), visual[0]
            pad = inputs["input_ids"].shape[1] - alone["input_ids"].shape[1]
            kept = state.keep[b, pad:].nonzero().flatten()
            for i, layer in enumerate(lm.layers):
                if i == k:  # FastV drops the tokens it did not keep
                    h, positions, visual = h[:, kept], positions[:, :, kept], visual[kept]
                    deepstack = [level[:, kept] for level in deepstack]
                h = layer(h, attention_mask=None, position_embeddings=lm.rotary_emb(h, positions))
                if i < len(deepstack):
                    h = h + deepstack[i]  # zero off the visual tokens
            torch.testing.assert_close(state.hidden[b, -kept.numel() :], h[0], rtol=1e-5, atol=1e-5)
            assert kept.numel() < alone["input_ids"].shape[1]  # something was pruned


def test_fastv_refuses_linear_attention_models():
    torch.manual_seed(0)
    model = hf_tokcomp.Qwen3_5ForConditionalGeneration(tiny_qwen3_5_config()).eval()
    with pytest.raises(ValueError, match="FastV is not implemented for Qwen3_5ForConditionalGeneration"):
        fastv_generate(model, make_qwen_inputs([A], model.config), token_keep=0.5)
