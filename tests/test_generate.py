"""generate() on compressed prompts: against a naive greedy loop on the stock model, batching, decoding modes."""

import torch
from transformers.generation.streamers import BaseStreamer

from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs

from .fixed_scores import FixedScores, fixed_scores
from .reference import (
    NaiveStock,
    naive_kept_positions,
    qwen_segment_sizes,
)

A = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]
B = [("text", [5]), ("image", (4, 6)), ("text", [10, 11, 12, 13, 20, 21])]
C = [("text", [5, 6]), ("video", (4, 4, 6)), ("text", [17, 18, 19])]
NEW = 6


def naive_greedy(stock, inputs, kept, steps):
    """Per sample: the stock model on [shortened prompt + generated so far], no cache (:class:`NaiveStock`)."""
    naive = NaiveStock(stock, inputs, kept)
    return [naive.greedy(b, [], steps)[0] for b in range(len(kept))]


def compressed(ours, keep=0.5):
    ours.compressor = FixedScores()
    ours.config.token_keep = keep
    ours.generation_config.eos_token_id = None  # always NEW tokens, so lengths are comparable
    return ours


def test_greedy_matches_naive_loop_on_the_stock_model(stock, ours):
    inputs = make_qwen_inputs([A, B, C], stock.config)
    model = compressed(ours)
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.5)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
        expected = naive_greedy(stock, inputs, kept, NEW)
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_len], inputs["input_ids"])  # starts with the caller's own ids
    assert out[:, prompt_len:].tolist() == expected


def test_sample_alone_equals_sample_in_left_padded_batch(stock, ours):
    model = compressed(ours)
    with torch.no_grad():
        alone = model.generate(**make_qwen_inputs([B], stock.config), max_new_tokens=NEW, do_sample=False)
        batch_inputs = make_qwen_inputs([A, B, C], stock.config)
        batch = model.generate(**batch_inputs, max_new_tokens=NEW, do_sample=False)
    assert batch_inputs["attention_mask"][1, 0] == 0  # B really is left padded in the batch
    assert batch[1, -NEW:].tolist() == alone[0, -NEW:].tolist()


def test_kv_cache_holds_only_the_compressed_prompt(stock, ours):
    inputs = make_qwen_inputs([A, B], stock.config)
    model = compressed(ours, keep=0.25)
    kept = naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.25)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    assert out.past_key_values.get_seq_length() == max(len(k) for k in kept) + NEW - 1
    assert out.sequences.shape == (2, inputs["input_ids"].shape[1] + NEW)


def test_max_and_min_length_count_the_callers_prompt(stock, ours):
    """``max_length`` / ``min_length`` are absolute in the caller's view: the compressed prompt generates exactly
    the tokens of the naive loop, and end-of-sequence is held back until ``min_length`` is reached."""
    inputs = make_qwen_inputs([A, B], stock.config)
    model = compressed(ours)
    prompt_len = inputs["input_ids"].shape[1]
    naive = NaiveStock(
        stock, inputs, naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.5)
    )
    with torch.no_grad():
        by_length = model.generate(**inputs, max_length=prompt_len + 3, do_sample=False)
        assert by_length.shape[1] == prompt_len + 3
        assert [by_length[b, prompt_len:].tolist() for b in range(2)] == [naive.greedy(b, [], 3)[0] for b in range(2)]
        first3 = naive.greedy(0, [], 3)[0]
        eos = first3[2]  # an end-of-sequence id that greedy emits at step 2 only when steps 0-1 may not end
        assert eos not in first3[:2]
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = 0
        held = model.generate(**inputs, min_length=prompt_len + 2, max_new_tokens=5, do_sample=False)
    appended = []
    while len(appended) < 5 and eos not in appended:  # naive: eos forbidden while fewer than 2 new tokens
        logits = naive.last_logits(0, appended)
        if len(appended) < 2:
            logits[eos] = -float("inf")
        appended.append(int(logits.argmax()))
    assert eos in appended  # the case where min_length decides
    assert held[0, prompt_len : prompt_len + len(appended)].tolist() == appended


def test_sampling_and_beams_follow_the_stock_model_on_the_shortened_sequence(stock, ours):
    """Every sampled step's logits equal the stock model's on the shortened sequence plus the sampled prefix; beams
    with several returned sequences start with the caller's prompt and the best equals the naive beam search."""
    inputs = make_qwen_inputs([A, B], stock.config)
    model = compressed(ours)
    prompt_len = inputs["input_ids"].shape[1]
    naive = NaiveStock(
        stock, inputs, naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, 0.5)
    )
    with torch.no_grad():
        torch.manual_seed(0)
        sampled = model.generate(
            **inputs, max_new_tokens=NEW, do_sample=True, top_k=50, return_dict_in_generate=True, output_logits=True
        )
        beams = model.generate(**inputs, max_new_tokens=NEW, num_beams=3, num_return_sequences=2, do_sample=False)
    assert torch.equal(sampled.sequences[:, :prompt_len], inputs["input_ids"])
    for b in range(2):
        tokens = sampled.sequences[b, prompt_len:].tolist()
        for step in range(NEW):
            expected = naive.last_logits(b, tokens[:step])
            torch.testing.assert_close(sampled.logits[step][b], expected, rtol=1e-5, atol=1e-5)
    assert beams.shape == (4, prompt_len + NEW)
    assert torch.equal(beams[:, :prompt_len], inputs["input_ids"].repeat_interleave(2, dim=0))


class _Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.chunks.append("end")


def test_streamer_sees_the_callers_prompt_then_each_token(stock, ours):
    inputs = make_qwen_inputs([A], stock.config)
    streamer = _Collect()
    with torch.no_grad():
        out = compressed(ours).generate(**inputs, max_new_tokens=NEW, do_sample=False, streamer=streamer)
    assert torch.equal(streamer.chunks[0], inputs["input_ids"])
    assert [int(c) for c in streamer.chunks[1:-1]] == out[0, -NEW:].tolist()
    assert streamer.chunks[-1] == "end"
