"""generate() on compressed prompts: against a naive greedy loop on the stock model, batching, decoding modes."""

import torch
from transformers.generation.streamers import BaseStreamer

from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs

from .fixed_scores import FixedScores, fixed_scores
from .reference import naive_kept_positions, qwen_segment_sizes, stock_merged_embeddings, stock_positions

A = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]
B = [("text", [5]), ("image", (4, 6)), ("text", [10, 11, 12, 13, 20, 21])]
C = [("text", [5, 6]), ("video", (4, 4, 6)), ("text", [17, 18, 19])]
NEW = 6


def naive_greedy(stock, inputs, kept, steps):
    """Per sample: stock forward on [shortened prompt + generated so far], no cache; the generated tokens take
    positions last+1, last+2, ... on all three M-RoPE axes."""
    embeds, positions = stock_merged_embeddings(stock, inputs), stock_positions(stock, inputs)
    table = stock.model.get_input_embeddings()
    out = []
    for b, idx in enumerate(kept):
        idx = torch.tensor(idx)
        seq_embeds, seq_pos, tokens = embeds[b, idx], positions[:, b, idx], []
        for _ in range(steps):
            logits = stock(inputs_embeds=seq_embeds[None], position_ids=seq_pos[:, None]).logits
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            seq_embeds = torch.cat([seq_embeds, table(torch.tensor([token]))])
            seq_pos = torch.cat([seq_pos, seq_pos[:, -1:].amax(0, keepdim=True).expand(3, 1) + 1], dim=1)
        out.append(tokens)
    return out


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


def test_max_length_counts_the_callers_prompt(stock, ours):
    inputs = make_qwen_inputs([A, B], stock.config)
    model = compressed(ours)
    with torch.no_grad():
        by_length = model.generate(**inputs, max_length=inputs["input_ids"].shape[1] + 3, do_sample=False)
        by_new = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(by_length, by_new)


def test_beam_search_and_sampling_return_the_callers_prompt(stock, ours):
    inputs = make_qwen_inputs([A, B], stock.config)
    model = compressed(ours)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        beams = model.generate(**inputs, max_new_tokens=NEW, num_beams=3, num_return_sequences=2, do_sample=False)
        torch.manual_seed(0)
        sampled = model.generate(**inputs, max_new_tokens=NEW, do_sample=True, top_k=50)
        torch.manual_seed(0)
        again = model.generate(**inputs, max_new_tokens=NEW, do_sample=True, top_k=50)
    assert beams.shape == (4, prompt_len + NEW)
    assert torch.equal(beams[:, :prompt_len], inputs["input_ids"].repeat_interleave(2, dim=0))
    assert torch.equal(sampled[:, :prompt_len], inputs["input_ids"]) and torch.equal(sampled, again)


def test_beam_search_single_beam_equals_greedy(stock, ours):
    inputs = make_qwen_inputs([A, C], stock.config)
    model = compressed(ours)
    with torch.no_grad():
        greedy = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
        beam = model.generate(**inputs, max_new_tokens=NEW, num_beams=1, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(greedy, beam.sequences)


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
