"""GAE relevance against a naive reference: full N x N matrices on the stock model with eager attention."""

import pytest
import torch
import transformers

import hf_tokcomp
from hf_tokcomp.teachers.gae import visual_relevance
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs
from hf_tokcomp.testing.tiny_qwen3 import tiny_config

A = [("text", [5, 6]), ("image", (4, 6)), ("text", [7, 8, 9])]
B = [("text", [5]), ("image", (4, 4)), ("text", [10]), ("image", (4, 4)), ("text", [11, 12])]


def naive_relevance(stock, inputs, answers):
    """Per sample: append the answer, one backward per answer token through every layer's full attention map,
    R <- R + mean_h(relu(A * dA)) @ R over the layers, row of the predicting position, visual columns, mean."""
    stock.set_attn_implementation("eager")
    try:
        out = []
        for b, answer in enumerate(answers):
            keep = inputs["attention_mask"][b].bool()
            ids = torch.cat([inputs["input_ids"][b][keep], answer])[None]
            types = torch.cat([inputs["mm_token_type_ids"][b][keep], torch.zeros_like(answer, dtype=torch.int)])[None]
            pixels = {k: v for k, v in inputs.items() if k.startswith(("pixel", "image_grid", "video_grid"))}
            if b == 1:  # this sample's own images only (the batch stacks both samples' pixels)
                pixels = {"pixel_values": inputs["pixel_values"][24:], "image_grid_thw": inputs["image_grid_thw"][1:]}
            else:
                pixels = {"pixel_values": inputs["pixel_values"][:24], "image_grid_thw": inputs["image_grid_thw"][:1]}
            result = stock(input_ids=ids, mm_token_type_ids=types, output_attentions=True, use_cache=False, **pixels)
            n = ids.shape[1]
            visual = ids[0] == stock.config.image_token_id
            total = torch.zeros(n)
            for t in range(len(answer)):
                q = n - len(answer) + t - 1
                target = result.logits[0, q, ids[0, q + 1]]
                grads = torch.autograd.grad(target, result.attentions, retain_graph=True)
                relevance = torch.eye(n)
                for attn, grad in zip(result.attentions, grads, strict=True):
                    relevance = relevance + (attn[0] * grad[0]).clamp_min(0).mean(0) @ relevance
                total += relevance[q]
            out.append(total[visual] / len(answer))
        return out
    finally:
        stock.set_attn_implementation("sdpa")


#: the rollout attention is model-agnostic; Qwen3-VL is here for its DeepStack inputs, which the teacher's forward
#: must hand to the LLM as the stock forward does
CLASSES = {
    "qwen2_vl": (transformers.Qwen2VLForConditionalGeneration, hf_tokcomp.Qwen2VLForConditionalGeneration),
    "qwen3_vl": (transformers.Qwen3VLForConditionalGeneration, hf_tokcomp.Qwen3VLForConditionalGeneration),
}


@pytest.fixture(params=list(CLASSES))
def stock(request):
    torch.manual_seed(0)
    return CLASSES[request.param][0](tiny_config(request.param)).eval()


@pytest.fixture()
def ours(stock):
    model = CLASSES[stock.config.model_type][1](stock.config).eval()
    model.load_state_dict(stock.state_dict())
    return model


@pytest.mark.parametrize("lengths", [(1, 1), (3, 2), (2, 5)])
def test_relevance_equals_naive_full_matrix_rollout(stock, ours, lengths):
    inputs = make_qwen_inputs([A, B], stock.config)
    gen = torch.Generator().manual_seed(sum(lengths))
    answers = [torch.randint(3, 280, (n,), generator=gen) for n in lengths]
    got = visual_relevance(ours, inputs, answers)
    expected = naive_relevance(stock, inputs, answers)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and e.abs().sum() > 0
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_relevance_leaves_the_model_as_it_was(ours):
    ours.config.token_keep = 0.5
    implementation = ours.config.get_text_config()._attn_implementation
    inputs = make_qwen_inputs([A], ours.config)
    relevance = visual_relevance(ours, inputs, max_new_tokens=3)
    assert relevance[0].shape == (6,)
    assert ours.config.token_keep == 0.5
    assert ours.config.get_text_config()._attn_implementation == implementation
    assert all(p.grad is None for p in ours.parameters())
