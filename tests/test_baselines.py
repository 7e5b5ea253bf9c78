"""Baselines: FastV against the stock model, and the input-stage baseline scorers."""

import torch
import transformers

import hf_tokcomp
from hf_tokcomp.evaluation.baselines import RandomScores, UniformScores
from hf_tokcomp.evaluation.fastv import fastv_generate
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs, tiny_qwen_config

A = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]
B = [("text", [5]), ("image", (4, 6)), ("text", [10, 11, 12, 13])]


def _models(layers=4):
    torch.manual_seed(0)
    stock = transformers.Qwen2VLForConditionalGeneration(tiny_qwen_config("qwen2_vl", num_layers=layers)).eval()
    ours = hf_tokcomp.Qwen2VLForConditionalGeneration(stock.config).eval()
    ours.load_state_dict(stock.state_dict())
    stock.generation_config.eos_token_id = None
    return stock, ours


def test_fastv_keeping_everything_is_stock_greedy_generate():
    stock, ours = _models()
    inputs = make_qwen_inputs([A, B], stock.config)
    with torch.no_grad():
        expected = stock.generate(**inputs, max_new_tokens=6, do_sample=False)
    out = fastv_generate(ours, inputs, token_keep=1.0, k=2, max_new_tokens=6)
    assert torch.equal(out.sequences, expected)


def test_fastv_keeps_the_tokens_the_last_token_attends_most_at_layer_k():
    stock, ours = _models()
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


def test_fastv_prefill_at_keep_a_quarter_equals_a_naive_two_stage_forward():
    """Stage 1: the stock model on each sample alone (its hidden states after layer K); stage 2: the stock decoder
    layers K.. called by hand on the tokens FastV kept, at their original M-RoPE positions."""
    from hf_tokcomp.evaluation.fastv import fastv_prefill, fastv_prepare

    stock, ours = _models()
    k, samples = 2, [A, B]
    inputs = make_qwen_inputs(samples, stock.config)
    with torch.no_grad():
        state = fastv_prefill(ours, *fastv_prepare(ours, inputs), token_keep=0.25, k=k)
        lm = stock.model.language_model
        for b, sample in enumerate(samples):
            alone = make_qwen_inputs([sample], stock.config)
            positions, _ = stock.model.get_rope_index(
                alone["input_ids"],
                mm_token_type_ids=alone["mm_token_type_ids"],
                image_grid_thw=alone["image_grid_thw"],
                attention_mask=alone["attention_mask"],
            )
            hidden = stock(**alone, output_hidden_states=True).hidden_states[k][0]  # after layer K
            pad = inputs["input_ids"].shape[1] - alone["input_ids"].shape[1]
            kept = state.keep[b, pad:].nonzero().flatten()
            h, pos = hidden[kept][None], positions[:, :, kept]
            cos_sin = lm.rotary_emb(h, pos)
            for layer in lm.layers[k:]:
                h = layer(h, attention_mask=None, position_embeddings=cos_sin)
            torch.testing.assert_close(state.hidden[b, -kept.numel() :], h[0], rtol=1e-5, atol=1e-5)
            assert kept.numel() < alone["input_ids"].shape[1]  # something was pruned
