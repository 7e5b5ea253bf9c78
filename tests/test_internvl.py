"""InternVL: the same contract as the other families, against the stock transformers class."""

from __future__ import annotations

import pytest
import torch
import transformers

import hf_tokcomp
from hf_tokcomp.testing.tiny_internvl import VOCAB, make_internvl_inputs, tiny_internvl_config

from .fixed_scores import FixedScores, fixed_scores
from .reference import naive_kept_positions
from .test_features import check_feature_path, hand_features, visual_runs

ONE = [("text", [5, 6]), ("image", 2), ("text", [7, 8, 9])]  # two tiles: one segment of 32 tokens
TWO = [("text", [5]), ("image", 1), ("text", [10]), ("image", 3), ("text", [11, 12])]
TEXT = [("text", [5, 6, 7])]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    stock = transformers.InternVLForConditionalGeneration(tiny_internvl_config()).eval()
    path = tmp_path_factory.mktemp("internvl")
    stock.save_pretrained(path)
    return stock, path


@pytest.fixture()
def stock(checkpoint):
    return checkpoint[0]


@pytest.fixture()
def ours(checkpoint):
    model, info = hf_tokcomp.InternVLForConditionalGeneration.from_pretrained(checkpoint[1], output_loading_info=True)
    assert not any(info.values()), info
    model.generation_config.eos_token_id = None
    return model.eval()


def sizes(inputs, config) -> dict[int, list[int]]:
    """Tokens per image: the placeholder runs, in order (an image = all its tiles)."""
    runs, current = [], 0
    for row in (inputs["input_ids"] == config.image_token_id).tolist():
        for flag in [*row, False]:
            if flag:
                current += 1
            elif current:
                runs.append(current)
                current = 0
    return {config.image_token_id: runs}


def shortened_logits(stock, inputs, kept, appended=()):
    """Per sample, the stock LLM on the hand-shortened sequence at the original 1-D positions (no cache)."""
    with torch.no_grad():
        ids = inputs["input_ids"]
        tiles = stock.model.get_image_features(inputs["pixel_values"], return_dict=True).pooler_output
        embeds = stock.model.get_input_embeddings()(ids).masked_scatter(
            (ids == stock.config.image_token_id)[..., None], tiles.reshape(-1, tiles.shape[-1])
        )
        out = []
        for b, idx in enumerate(kept):
            pad = int((inputs["attention_mask"][b] == 0).sum())
            seq, pos = embeds[b, idx], torch.tensor(idx) - pad
            if appended and appended[b]:
                extra = torch.tensor(appended[b], dtype=torch.long)
                seq = torch.cat([seq, stock.model.get_input_embeddings()(extra)])
                pos = torch.cat([pos, pos[-1] + torch.arange(1, len(appended[b]) + 1)])
            mask = torch.ones(1, seq.shape[0], dtype=torch.long)
            hidden = stock.model.language_model(inputs_embeds=seq[None], position_ids=pos[None], attention_mask=mask)
            out.append(stock.lm_head(hidden.last_hidden_state)[0])
        return out


def test_keep_1_is_the_stock_model(stock, ours):
    inputs = make_internvl_inputs([ONE, TWO, TEXT], stock.config)
    stock.generation_config.eos_token_id = None
    with torch.no_grad():
        assert torch.equal(ours(**inputs).logits, stock(**inputs).logits)
        assert torch.equal(
            ours.generate(**inputs, max_new_tokens=4, do_sample=False),
            stock.generate(**inputs, max_new_tokens=4, do_sample=False),
        )


def test_fixed_scores_equal_the_stock_llm_on_the_shortened_sequence(stock, ours):
    inputs = make_internvl_inputs([ONE, TWO, TEXT], stock.config)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, sizes(inputs, stock.config), fixed_scores, 0.25)
    with torch.no_grad():
        got = ours(**inputs).logits
    for b, reference in enumerate(shortened_logits(stock, inputs, kept)):
        torch.testing.assert_close(got[b, -reference.shape[0] :], reference, rtol=1e-5, atol=1e-5)
    assert [r.num_tokens for r in ours.last_compression] == [[32], [16, 48], []]


def test_generate_equals_the_naive_loop_and_is_batch_invariant(stock, ours):
    inputs = make_internvl_inputs([ONE, TWO], stock.config)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, sizes(inputs, stock.config), fixed_scores, 0.25)
    with torch.no_grad():
        out = ours.generate(
            **inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_logits=True
        )
        alone = ours.generate(**make_internvl_inputs([TWO], stock.config), max_new_tokens=3, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    tokens = [out.sequences[b, prompt:].tolist() for b in range(2)]
    for step in range(3):
        expected = shortened_logits(stock, inputs, kept, [t[:step] for t in tokens])
        for b in range(2):
            torch.testing.assert_close(out.logits[step][b], expected[b][-1], rtol=1e-5, atol=1e-5)
    assert tokens[1] == alone[0, -3:].tolist()
    assert out.past_key_values.get_seq_length() == max(len(k) for k in kept) + 3 - 1  # only the compressed prompt


def test_feature_path_equals_stock_eager_attention(stock, ours):
    inputs = make_internvl_inputs([ONE, TWO], stock.config)
    stock.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = stock(**inputs, output_attentions=True).attentions[0]
    finally:
        stock.set_attn_implementation("sdpa")
    ids = inputs["input_ids"]
    visual = ids == stock.config.image_token_id
    check_feature_path(
        ours,
        inputs,
        # InternVL's config names no <img> / </img> ids: they count as instruction text like any other token
        hand_features(attn, ids, visual, inputs["attention_mask"], template=(VOCAB["pad"], VOCAB["eos"])),
        visual_runs(ids, sizes(inputs, stock.config)),
    )


def test_features_and_placeholders_must_agree(ours, stock):
    inputs = make_internvl_inputs([ONE], stock.config)
    inputs["input_ids"] = inputs["input_ids"][:, 4:]  # a truncated prompt loses placeholders
    inputs["attention_mask"] = inputs["attention_mask"][:, 4:]
    ours.config.token_keep = 0.5
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        ours(**inputs)


def test_without_an_attention_mask_the_gapped_positions_are_not_packed_sequences(stock, ours):
    inputs = make_internvl_inputs([TWO], stock.config)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, sizes(inputs, stock.config), fixed_scores, 0.25)
    reference = shortened_logits(stock, inputs, kept)[0]
    del inputs["attention_mask"]
    with torch.no_grad():
        got = ours(**inputs, use_cache=False).logits
    torch.testing.assert_close(got[0], reference, rtol=1e-5, atol=1e-5)


def test_fastv_on_internvl_keeps_the_tokens_the_last_token_attends_most(stock, ours):
    """FastV (the in-LLM baseline) on the 1-D RoPE LLM: at keep 1 the stock greedy output; at keep 0.25 each
    image keeps the tokens the last prompt token attends most at layer K = 1 of the stock eager model."""
    from hf_tokcomp.evaluation.fastv import fastv_generate

    inputs = make_internvl_inputs([ONE, TWO], stock.config)
    stock.generation_config.eos_token_id = None
    with torch.no_grad():
        expected = stock.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(fastv_generate(ours, inputs, token_keep=1.0, k=1, max_new_tokens=4).sequences, expected)
    stock.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attention = stock(**inputs, output_attentions=True).attentions[0]  # (B, H, L, L), layer K - 1 = 0
    finally:
        stock.set_attn_implementation("sdpa")
    out = fastv_generate(ours, inputs, token_keep=0.25, k=1, max_new_tokens=2)
    ids = inputs["input_ids"]
    for b in range(ids.shape[0]):
        visual = (ids[b] == stock.config.image_token_id).nonzero().flatten().tolist()
        scores = attention[b, :, -1].mean(0)
        runs, current = [], [visual[0]]
        for i in visual[1:]:
            if i == current[-1] + 1:
                current.append(i)
            else:
                runs.append(current)
                current = [i]
        runs.append(current)
        for run in runs:
            n_keep = max(1, round(0.25 * len(run)))
            best = sorted(sorted(run, key=lambda i: -float(scores[i]))[:n_keep])
            assert [i for i in run if out.keep[b, i]] == best
