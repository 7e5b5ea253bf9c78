"""The vLLM plugin's question-aware features (plain torch, hf_tokcomp/vllm/question.py) against the transformers
classes: on the organism, from the tokenizer's one-placeholder-per-image prompt and the stock vision tower's
output, they equal what ``compressor_features`` computes on the processor's expanded prompt, in both prompt orders,
with one image and with two."""

from __future__ import annotations

import pytest
import torch

from hf_tokcomp.organism import load_organism
from hf_tokcomp.organism.task import make_split
from hf_tokcomp.runtime.features import DEFAULT_FEATURES, FeatureSpec
from hf_tokcomp.runtime.instruction import turn_layout
from hf_tokcomp.vllm.question import Layer0, expand_prompt, mrope_tables, question_features

from .reference import stock_visual


@pytest.fixture(scope="module")
def organism():
    return load_organism()


def _layer0(model) -> Layer0:
    layer = model.model.language_model.layers[0]
    attn = layer.self_attn
    return Layer0(layer.input_layernorm, attn.q_proj, attn.k_proj, attn.head_dim, attn.scaling)


def _samples(n_images: int) -> list:
    samples = [s for s in make_split("test", 60) if len(s.images) == n_images][:4]
    assert len(samples) == 4
    return samples


@pytest.mark.parametrize("n_images", [1, 2])
@pytest.mark.parametrize("question_first", [False, True])
@pytest.mark.parametrize(
    "spec",
    [
        DEFAULT_FEATURES,
        FeatureSpec(prompt_header=True, per_head=True),
        FeatureSpec("moved", True, True, with_causal=True),
    ],
    ids=str,
)
def test_question_features_equal_the_transformers_features(organism, question_first, spec, n_images):
    """Every image of one- and two-image prompts (each image its own segment, the other one's tokens among the
    keys)."""
    model, processor = organism
    text_config = model.config.text_config
    rope = (text_config.rope_parameters["rope_theta"], text_config.rope_parameters["mrope_section"], False)
    for sample in _samples(n_images):
        parts = [*({"type": "image"} for _ in sample.images), {"type": "text", "text": sample.question}]
        content = parts[::-1] if question_first else parts
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = processor(text=[text], images=list(sample.images), return_tensors="pt")
        prompt = processor.tokenizer(text)["input_ids"]  # what vLLM's processor sees: one placeholder per image
        assert prompt.count(model.config.image_token_id) == n_images
        with torch.no_grad():
            want = [f for _, f in model.compressor_features(**inputs, features=spec)[0]]
            embeds, visual, _ = stock_visual(model, inputs)
            tokens = embeds[0][visual[0]]
            sizes = [t * (h // 2) * (w // 2) for t, h, w in inputs["image_grid_thw"].tolist()]
            grids = [(t, h // 2, w // 2) for t, h, w in inputs["image_grid_thw"].tolist()]
            images = list(zip(tokens.split(sizes), grids, strict=True))
            assert len(want) == n_images
            for own in range(n_images):
                got = question_features(
                    images,
                    own,
                    prompt,
                    model.config.image_token_id,
                    model.model.get_input_embeddings(),
                    _layer0(model),
                    rope,
                    turn_layout(model.config),
                    spec,
                )
                torch.testing.assert_close(got, want[own], rtol=1e-5, atol=1e-7)


def test_expand_prompt_replaces_each_run_and_refuses_a_mismatch():
    ids, starts = expand_prompt([1, 9, 2, 9, 9, 3], 9, [3, 2])
    assert ids.tolist() == [1, 9, 9, 9, 2, 9, 9, 3] and starts == [1, 5]
    with pytest.raises(ValueError, match="more image placeholder runs than the 1 image"):
        expand_prompt([1, 9, 2, 9], 9, [3])


@pytest.mark.parametrize("interleaved", [False, True], ids=["qwen2-vl", "qwen3-vl"])
def test_mrope_tables_equal_the_stock_rotary_embedding(interleaved):
    """Against the stock rotary module of each layout (Qwen2-VL's three blocks, Qwen3-VL's interleaved bands)."""
    import transformers

    sections, head_dim, theta = [4, 6, 6], 32, 10.0
    rope = {"rope_type": "default", "rope_theta": theta, "mrope_section": sections}
    if interleaved:
        config = transformers.Qwen3VLTextConfig(head_dim=head_dim, rope_parameters={**rope, "mrope_interleaved": True})
        stock = transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding(config)
    else:
        config = transformers.Qwen2VLTextConfig(hidden_size=head_dim * 4, num_attention_heads=4, rope_parameters=rope)
        stock = transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLRotaryEmbedding(config)
    positions = torch.stack([torch.arange(20), torch.arange(20) % 5 + 3, torch.arange(20) // 5 + 7])  # (3, L)
    cos, sin = stock(torch.zeros(1, dtype=torch.float32), positions[:, None])
    got = mrope_tables(positions, head_dim, theta, sections, interleaved)
    torch.testing.assert_close(got[0], cos)
    torch.testing.assert_close(got[1], sin)
