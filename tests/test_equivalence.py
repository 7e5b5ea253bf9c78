"""Compressed models against the stock transformers model."""

import pytest
import torch

from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs

from .conftest import FAMILIES
from .fixed_scores import FixedScores, fixed_scores
from .reference import NaiveStock, naive_kept_positions, qwen_segment_sizes, stock_logits_on_shortened

IMAGE = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]
SMALL_IMAGE = [("text", [5]), ("image", (4, 6)), ("text", [10, 11, 12, 13])]
TWO_IMAGES = [("text", [5]), ("image", (4, 4)), ("text", [14]), ("image", (6, 4)), ("text", [15, 16])]
VIDEO = [("text", [5, 6]), ("video", (4, 4, 6)), ("text", [17, 18, 19])]
TEXT_ONLY = [("text", [5, 6, 7, 8, 9])]

BATCHES = {
    "images": [IMAGE, SMALL_IMAGE],
    "multi_image": [TWO_IMAGES, IMAGE],
    "video": [VIDEO],
    "image_and_video": [IMAGE, VIDEO],
    "with_text_only_sample": [TEXT_ONLY, SMALL_IMAGE],
}


@pytest.mark.parametrize("name", list(BATCHES))
def test_keep_1_reproduces_stock_logits_and_generate(stock_checkpoint, family, ours, name):
    # the stock class loaded from the same checkpoint: a reloaded MoE's expert weights can differ in memory layout
    # from the freshly built model's, which moves grouped_mm's results by ~3e-8 (the stock class reloaded vs built)
    stock = FAMILIES[family][0].from_pretrained(stock_checkpoint[1]).eval()
    inputs = make_qwen_inputs(BATCHES[name], stock.config)
    ours.config.token_keep = 1.0
    with torch.no_grad():
        assert torch.equal(ours(**inputs).logits, stock(**inputs).logits)
        assert torch.equal(
            ours.generate(**inputs, max_new_tokens=6, do_sample=False),
            stock.generate(**inputs, max_new_tokens=6, do_sample=False),
        )


@pytest.mark.parametrize("keep", [0.5, 0.25])
@pytest.mark.parametrize("name", list(BATCHES))
def test_fixed_scores_equal_stock_on_hand_shortened_sequence(stock, ours, name, keep):
    inputs = make_qwen_inputs(BATCHES[name], stock.config)
    ours.compressor = FixedScores()
    ours.config.token_keep = keep
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, keep)
    with torch.no_grad():
        got = ours(**inputs).logits
        expected = stock_logits_on_shortened(stock, inputs, kept)
    assert got.shape[1] == max(len(k) for k in kept)
    for b, ref in enumerate(expected):  # left padded: the sample's tokens are the last len(ref)
        torch.testing.assert_close(got[b, -ref.shape[0] :], ref, rtol=1e-5, atol=1e-5)


def test_text_only_sample_in_a_compressed_batch_is_the_stock_model(stock, ours):
    inputs = make_qwen_inputs([TEXT_ONLY, IMAGE], stock.config)
    ours.config.token_keep = 0.5
    with torch.no_grad():
        got = ours(**inputs).logits[0]
        alone = make_qwen_inputs([TEXT_ONLY], stock.config)
        expected = stock(**alone).logits[0]
    torch.testing.assert_close(got[-expected.shape[0] :], expected, rtol=1e-5, atol=1e-5)


def test_last_compression_records_kept_visual_indices(stock, ours):
    inputs = make_qwen_inputs([TWO_IMAGES], stock.config)
    ours.compressor = FixedScores()
    ours.config.token_keep = 0.5
    with torch.no_grad():
        ours(**inputs)
    record = ours.last_compression[0]
    assert record.kinds == ["image", "image"] and record.num_tokens == [4, 6]
    first = sorted(sorted(range(4), key=lambda j: -fixed_scores(4)[j])[:2])
    second = sorted(sorted(range(6), key=lambda j: -fixed_scores(6)[j])[:3])
    assert record.kept[0].tolist() == first
    assert record.kept[1].tolist() == [4 + j for j in second]
    torch.testing.assert_close(record.scores[1], fixed_scores(6)[second])


def test_labels_give_the_loss_of_the_compressed_sequence(stock, ours):
    inputs = make_qwen_inputs([IMAGE], stock.config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -2:] = inputs["input_ids"][:, -2:]  # the last two tokens play the answer; the prompt is masked
    ours.compressor = FixedScores()
    ours.config.token_keep = 0.5
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.5)[0]
    with torch.no_grad():
        loss = ours(**inputs, labels=labels).loss
        logits = stock_logits_on_shortened(stock, inputs, [kept])[0]
    short = labels[0, kept]
    expected = torch.nn.functional.cross_entropy(logits[:-1], short[1:], ignore_index=-100)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sample", [TWO_IMAGES, VIDEO])
def test_no_mask_no_cache_path_keeps_one_sequence(stock, ours, sample):
    """Without a mask or cache transformers reads position gaps as packed sequences; the M-RoPE gaps must not be."""
    inputs = make_qwen_inputs([sample], stock.config)
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.25)
    del inputs["attention_mask"]
    with torch.no_grad():
        got = ours(**inputs, use_cache=False).logits[0]
        full = {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])}
        expected = stock_logits_on_shortened(stock, full, kept)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_labelled_answer_tokens_do_not_steer_the_selection(stock, ours):
    """Teacher forcing must score as generation would: answer tokens (labels != -100) are not query rows."""

    class Recorder(torch.nn.Module):
        def forward(self, features):
            self.seen = features.clone()
            return features[:, 0]

    ours.compressor, ours.config.token_keep = Recorder(), 0.25
    prompt = make_qwen_inputs([IMAGE], stock.config)
    answer = torch.tensor([[40, 41, 42]])
    full = dict(
        prompt,
        input_ids=torch.cat([prompt["input_ids"], answer], 1),
        attention_mask=torch.ones(1, prompt["input_ids"].shape[1] + 3, dtype=torch.long),
        mm_token_type_ids=torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(answer, dtype=torch.int)], 1),
    )
    labels = torch.full_like(full["input_ids"], -100)
    labels[:, -3:] = answer
    with torch.no_grad():
        ours.generate(**prompt, max_new_tokens=1, do_sample=False)
        from_prompt = ours.compressor.seen
        ours(**full, labels=labels)
        torch.testing.assert_close(ours.compressor.seen, from_prompt)
        ours(**full)  # without labels the answer rows would count
        assert not torch.allclose(ours.compressor.seen, from_prompt)


def test_generate_without_attention_mask_infers_the_padding_like_stock(stock, ours):
    inputs = make_qwen_inputs([IMAGE, SMALL_IMAGE], stock.config)
    assert not inputs["attention_mask"].all()
    ours.compressor, ours.config.token_keep = FixedScores(), 0.5
    ours.generation_config.pad_token_id = 0
    ours.generation_config.eos_token_id = None
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.5)
    naive = NaiveStock(stock, inputs, kept)  # built from the true mask
    prompt_len = inputs["input_ids"].shape[1]
    del inputs["attention_mask"]
    with torch.no_grad():
        without = ours.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert [without[b, prompt_len:].tolist() for b in range(2)] == [naive.greedy(b, [], 4)[0] for b in range(2)]


def test_qwen2_5_video_with_seconds_per_grid_equals_stock_on_the_shortened_sequence(stock, ours, family):
    """Qwen2.5-VL's temporal M-RoPE depends on ``second_per_grid_ts``: a video sampled at 2 s per temporal patch
    gets other positions than the default, and the compressed model must use the same."""
    if family != "qwen2_5_vl":
        pytest.skip("second_per_grid_ts is a Qwen2.5-VL input")
    video = [("text", [5, 6]), ("video", (4, 4, 6)), ("text", [17, 18, 19])]
    inputs = make_qwen_inputs([video, [("text", [5]), ("image", (4, 6)), ("text", [7, 8])]], stock.config)
    inputs["second_per_grid_ts"] = torch.tensor([2.0])
    ours.compressor, ours.config.token_keep = FixedScores(), 0.5
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.5)
    with torch.no_grad():
        got = ours(**inputs).logits
        expected = stock_logits_on_shortened(stock, inputs, kept)
        default = stock_logits_on_shortened(stock, {k: v for k, v in inputs.items() if k != "second_per_grid_ts"}, kept)
    assert not torch.allclose(expected[0], default[0], atol=1e-4)  # the seconds matter on this input
    for b, ref in enumerate(expected):
        torch.testing.assert_close(got[b, -ref.shape[0] :], ref, rtol=1e-5, atol=1e-5)
