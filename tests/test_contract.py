"""The generate / forward / loading contract: every standard workflow is exactly right or refused by name.

References are the STOCK model on the hand-shortened sequence with the original M-RoPE positions, run without a
cache (naive loops written here), or the stock class itself.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

from hf_tokcomp.runtime.selection import keep_count
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs
from hf_tokcomp.testing.tiny_qwen3 import tiny_config

from .conftest import FAMILIES
from .fixed_scores import FixedScores, fixed_scores
from .reference import NaiveStock, naive_kept_positions, qwen_segment_sizes, stock_positions

A = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]
B = [("text", [5]), ("image", (4, 6)), ("text", [10, 11]), ("image", (4, 4)), ("text", [12, 20, 21])]
TURN = [30, 31, 32]


def compressed(ours, keep=0.5):
    ours.compressor = FixedScores()
    ours.config.token_keep = keep
    ours.generation_config.eos_token_id = None
    return ours


def kept_for(stock, inputs, keep):
    return naive_kept_positions(inputs, qwen_segment_sizes(inputs, stock.config), fixed_scores, keep)


# ---- the attention implementation -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["constructor", "from_config"])
def test_attention_implementation_survives_the_config_conversion(family, how):
    stock_cls, ours_cls = FAMILIES[family]
    config = tiny_config(family)
    if how == "constructor":
        config._attn_implementation = "eager"
        model, reference = ours_cls(copy.deepcopy(config)), stock_cls(copy.deepcopy(config))
    else:
        model = ours_cls._from_config(config, attn_implementation="eager")
        reference = stock_cls._from_config(config, attn_implementation="eager")
    for name in ("", "text_config", "vision_config"):
        ours_config = getattr(model.config, name) if name else model.config
        stock_config = getattr(reference.config, name) if name else reference.config
        assert ours_config._attn_implementation == stock_config._attn_implementation == "eager", name
    inputs = make_qwen_inputs([A], config)
    with torch.no_grad():  # eager really runs: attention maps come back, as from the stock class
        assert model(**inputs, output_attentions=True).attentions[0] is not None


# ---- options refused by name ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option",
    [
        {"prompt_lookup_num_tokens": 2},
        {"assistant_model": "assistant"},
        {"prefill_chunk_size": 4},
        {"use_cache": False},
    ],
    ids=lambda o: next(iter(o)),
)
def test_options_that_cannot_be_exact_are_refused_by_name(stock, ours, option):
    model = compressed(ours)
    if "assistant_model" in option:
        option = {"assistant_model": stock}
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"`{name}`"):
        model.generate(**make_qwen_inputs([A], stock.config), max_new_tokens=3, **option)
    assert model.last_compression is None  # refused before anything ran


def test_prompt_lookup_at_keep_1_is_the_stock_model(stock, ours):
    inputs = make_qwen_inputs([A], stock.config)
    stock = copy.deepcopy(stock)  # the session's stock model stays as it is
    ours.generation_config.eos_token_id = stock.generation_config.eos_token_id = None
    with torch.no_grad():
        try:
            expected = stock.generate(**inputs, max_new_tokens=6, prompt_lookup_num_tokens=2)
        except ValueError as refused:  # Qwen3.5's recurrent layers: the stock class refuses assisted generation
            with pytest.raises(ValueError, match=str(refused).split(",")[0]):
                ours.generate(**inputs, max_new_tokens=6, prompt_lookup_num_tokens=2)
            return
        got = ours.generate(**inputs, max_new_tokens=6, prompt_lookup_num_tokens=2)
    assert torch.equal(got, expected)


# ---- continuing on the returned cache -------------------------------------------------------------------------
def test_second_turn_on_the_returned_cache_equals_the_naive_loop(stock, ours):
    inputs = make_qwen_inputs([A, B], stock.config)
    model = compressed(ours, keep=0.25)
    naive = NaiveStock(stock, inputs, kept_for(stock, inputs, 0.25))
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        turn = torch.tensor([TURN] * 2)
        second = model.generate(
            input_ids=torch.cat([first.sequences, turn], 1),
            attention_mask=torch.cat([inputs["attention_mask"], torch.ones(2, 3 + len(TURN), dtype=torch.long)], 1),
            past_key_values=first.past_key_values,
            max_new_tokens=4,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
        )
    length = first.sequences.shape[1] + len(TURN)
    assert torch.equal(second.sequences[:, :length], torch.cat([first.sequences, turn], 1))  # the caller's view
    for b in range(2):
        answer = first.sequences[b, inputs["input_ids"].shape[1] :].tolist()
        tokens, logits = naive.greedy(b, answer + TURN, 4)
        assert second.sequences[b, length:].tolist() == tokens
        for step, expected in enumerate(logits):  # every step's logits, not just the argmax
            torch.testing.assert_close(second.logits[step][b], expected, rtol=1e-5, atol=1e-5)


def test_a_manual_decoding_loop_on_forward_equals_the_naive_loop(stock, ours):
    inputs = make_qwen_inputs([A, B], stock.config)
    model = compressed(ours, keep=0.25)
    naive = NaiveStock(stock, inputs, kept_for(stock, inputs, 0.25))
    mask, tokens = inputs["attention_mask"], [[], []]
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        for _ in range(3):
            step = out.logits[:, -1].argmax(-1)
            for b in range(2):
                tokens[b].append(int(step[b]))
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            out = model(input_ids=step[:, None], attention_mask=mask, past_key_values=out.past_key_values)
            for b in range(2):
                torch.testing.assert_close(out.logits[b, -1], naive.last_logits(b, tokens[b]), rtol=1e-5, atol=1e-5)


def test_a_cache_from_another_prompt_is_refused(stock, ours):
    inputs = make_qwen_inputs([A], stock.config)
    model = compressed(ours)
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True)
        other = first.sequences.clone()
        other[0, 0] = 40
        with pytest.raises(ValueError, match="must start with the ids of the call that filled it"):
            model.generate(input_ids=other, past_key_values=first.past_key_values, max_new_tokens=2)


# ---- beam search against a naive beam search --------------------------------------------------------------------
def naive_beam_search(naive: NaiveStock, b: int, beams: int, steps: int) -> list[int]:
    """Plain beam search without end-of-sequence: keep the ``beams`` best cumulative log-probabilities."""
    alive = [([], 0.0)]
    for _ in range(steps):
        candidates = []
        for tokens, score in alive:
            logp = torch.log_softmax(naive.last_logits(b, tokens).float(), -1)
            top = torch.topk(logp, beams)
            candidates += [(tokens + [int(t)], score + float(v)) for v, t in zip(top.values, top.indices, strict=True)]
        alive = sorted(candidates, key=lambda c: -c[1])[:beams]
    return alive[0][0]


def test_beam_search_equals_a_naive_beam_search_on_the_stock_model(stock, ours):
    inputs = make_qwen_inputs([A, B], stock.config)
    model = compressed(ours, keep=0.25)
    naive = NaiveStock(stock, inputs, kept_for(stock, inputs, 0.25))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, num_beams=3, do_sample=False, length_penalty=0.0)
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_len], inputs["input_ids"])
    for b in range(2):
        assert out[b, prompt_len:].tolist() == naive_beam_search(naive, b, 3, 4)


# ---- training: what the collator labels does not change the selection ----------------------------------------------
HEADER = [3, 60]  # the tiny template's `<|im_start|> assistant`


def test_full_sequence_labels_select_what_generate_selects(stock, ours):
    """TRL-style labels (everything but padding and visual tokens) select exactly what generate() selects for
    the prompt, with feature-dependent scores (the layer-0 attention itself)."""
    ours.compressor, ours.config.token_keep = None, 0.25
    ours.config.answer_start_ids = HEADER
    prompt = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9, 2, *HEADER])]
    full = [*prompt[:2], ("text", [7, 8, 9, 2, *HEADER, *range(40, 60), 2])]
    prompt_inputs, train_inputs = make_qwen_inputs([prompt], stock.config), make_qwen_inputs([full], stock.config)
    prompt_inputs["pixel_values"] = train_inputs["pixel_values"]  # the same image
    ids = train_inputs["input_ids"]
    visual = ids == stock.config.image_token_id
    labels = ids.masked_fill(visual | (train_inputs["attention_mask"] == 0), -100)
    with torch.no_grad():
        ours.generate(**prompt_inputs, max_new_tokens=1)
        at_generate = ours.last_compression[0].kept[0]
        ours(**train_inputs, labels=labels)
        at_training = ours.last_compression[0].kept[0]
        ours.config.answer_start_ids = None  # the answer read as instruction: another selection (the test can fail)
        ours(**train_inputs, labels=torch.full_like(labels, -100))
        with_answer = ours.last_compression[0].kept[0]
    assert torch.equal(at_training, at_generate)
    assert not torch.equal(with_answer, at_generate)
    ours.config.answer_start_ids = None
    with pytest.raises(ValueError, match="answer_start_ids"):  # full labels and no header: refused, not guessed
        ours(**train_inputs, labels=labels)


def test_selection_is_the_same_in_train_mode_with_lora_dropout(stock, ours):
    peft = pytest.importorskip("peft")
    ours.compressor, ours.config.token_keep = None, 0.25
    config = peft.LoraConfig(target_modules=["q_proj", "k_proj"], lora_dropout=0.9, init_lora_weights=False, r=4)
    model = peft.get_peft_model(ours, config)
    inputs = make_qwen_inputs([A, B], stock.config)
    with torch.no_grad():
        model.eval()
        model(**inputs)
        expected = [r.kept for r in ours.last_compression]
        model.train()
        for _ in range(5):
            model(**inputs)
            got = [r.kept for r in ours.last_compression]
            assert all(torch.equal(x, y) for g, e in zip(got, expected, strict=True) for x, y in zip(g, e, strict=True))
    attention = next(layer.self_attn for layer in ours.model.language_model.layers if hasattr(layer, "self_attn"))
    dropout = attention.q_proj.lora_dropout["default"]
    assert dropout.training  # the caller's train mode is restored


def test_dtype_cast_leaves_the_compressor_in_float32(stock_checkpoint, family):
    import hf_tokcomp

    _, ours_cls = FAMILIES[family]
    torch.manual_seed(1)
    compressor = hf_tokcomp.TokenCompressor(hf_tokcomp.TokenCompressorConfig(base_model_type=family))
    weights = {k: v.clone() for k, v in compressor.state_dict().items()}
    cast = ours_cls.from_pretrained(stock_checkpoint[1], compressor=copy.deepcopy(compressor), token_keep=0.25)
    cast.to(torch.bfloat16)
    loaded = ours_cls.from_pretrained(
        stock_checkpoint[1], compressor=copy.deepcopy(compressor), token_keep=0.25, dtype=torch.bfloat16
    )
    for model in (cast, loaded):
        state = model.compressor.state_dict()
        assert all(state[k].dtype == torch.float32 and torch.equal(state[k], weights[k]) for k in weights)
    inputs = make_qwen_inputs([A, B], cast.config)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        cast(**inputs)
        loaded(**inputs)
    for x, y in zip(cast.last_compression, loaded.last_compression, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(x.kept, y.kept, strict=True))


# ---- state and batching -----------------------------------------------------------------------------------------
def test_last_compression_is_cleared_by_a_call_that_does_not_compress(stock, ours):
    model = compressed(ours)
    with torch.no_grad():
        model(**make_qwen_inputs([A], stock.config))
        assert model.last_compression is not None
        model(input_ids=torch.tensor([[5, 6, 7]]))
        assert model.last_compression is None
        model.generate(**make_qwen_inputs([A], stock.config), max_new_tokens=2)
        assert model.last_compression is not None  # generate's decoding steps do not clear it
        model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=2)
        assert model.last_compression is None


def test_the_compressor_runs_once_per_batch_and_selects_as_per_segment(stock, ours):
    """A learned compressor (feature-dependent scores) over 3 samples x 2-3 segments: one call; the kept tokens
    are each segment's own top-k of the compressor run on that segment alone (naive loop here)."""
    import hf_tokcomp

    torch.manual_seed(2)
    compressor = hf_tokcomp.TokenCompressor(hf_tokcomp.TokenCompressorConfig(base_model_type=stock.config.model_type))
    ours.compressor, ours.config.token_keep = compressor.eval(), 0.25
    calls = []
    compressor.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    samples = [B, [*B, ("image", (4, 8)), ("text", [22])], A]
    inputs = make_qwen_inputs(samples, stock.config)
    with torch.no_grad():
        ours(**inputs)
        assert len(calls) == 1
        features = ours.compressor_features(**inputs)
        for b, record in enumerate(ours.last_compression):
            offset = 0
            for (_, f), kept in zip(features[b], record.kept, strict=True):
                scores = compressor(f[None])[0]
                k = keep_count(0.25, f.shape[-1])
                expected = sorted(sorted(range(f.shape[-1]), key=lambda j: (-float(scores[j]), j))[:k])
                assert (kept - offset).tolist() == expected
                offset += f.shape[-1]
        alone = ours.generate(**make_qwen_inputs([samples[1]], stock.config), max_new_tokens=3, do_sample=False)
        ours.generation_config.eos_token_id = None
        batch = ours.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert batch[1, -3:].tolist() == alone[0, -3:].tolist()


# ---- saving: what config.json says is what a stock class does ----------------------------------------------------
def test_full_save_keeps_compression_settings_out_of_the_stock_config(stock_checkpoint, family, tmp_path):
    _, ours_cls = FAMILIES[family]
    model = ours_cls.from_pretrained(stock_checkpoint[1], token_keep=0.25)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "token_keep" not in saved and "answer_start_ids" not in saved
    plain = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert not hasattr(plain.config, "token_keep")  # a stock class does not claim a setting it ignores
    assert ours_cls.from_pretrained(tmp_path).config.token_keep == 0.25
    assert ours_cls.from_pretrained(tmp_path, token_keep=0.5).config.token_keep == 0.5


def test_padding_free_packed_batches_are_refused(stock, ours):
    """Two samples packed in one row (no mask, positions restart): the compressed batch would let them attend
    to each other, so it is refused by name; the stock model runs them as separate sequences at keep 1."""
    first, second = make_qwen_inputs([A], stock.config), make_qwen_inputs([B], stock.config)
    packed = {
        "input_ids": torch.cat([first["input_ids"], second["input_ids"]], 1),
        "mm_token_type_ids": torch.cat([first["mm_token_type_ids"], second["mm_token_type_ids"]], 1),
        "pixel_values": torch.cat([first["pixel_values"], second["pixel_values"]]),
        "image_grid_thw": torch.cat([first["image_grid_thw"], second["image_grid_thw"]]),
    }
    with torch.no_grad():
        positions = torch.cat([stock_positions(stock, first), stock_positions(stock, second)], -1)
    packed["position_ids"] = positions
    model = compressed(ours)
    with pytest.raises(ValueError, match="padding-free"):
        model(**packed)


# ---- README claims ----------------------------------------------------------------------------------------------
class NanScores(torch.nn.Module):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scores = fixed_scores(features.shape[-1]).expand(features.shape[0], -1).clone()
        scores[:, 1] = float("nan")
        return scores


def test_non_finite_compressor_scores_raise(stock, ours):
    ours.compressor, ours.config.token_keep = NanScores(), 0.5
    with pytest.raises(ValueError, match="non-finite scores"):
        ours(**make_qwen_inputs([A], stock.config))


def test_visual_inputs_on_a_non_empty_cache_raise(stock, ours):
    model = compressed(ours)
    inputs = make_qwen_inputs([A], stock.config)
    with torch.no_grad():
        cache = model(**inputs, use_cache=True).past_key_values
        with pytest.raises(ValueError, match="already holds tokens"):
            model(**inputs, past_key_values=cache)


def test_a_prompt_without_any_text_is_refused_through_the_model(stock, ours):
    """Nothing but the image after its opening template token: no instruction to score against, refused by
    name (a generation prompt after the image would count, as in the original method)."""
    model = compressed(ours)
    inputs = make_qwen_inputs([[("image", (4, 4))]], stock.config)
    inputs = {
        k: v[:, :-1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in inputs.items()
    }
    with pytest.raises(ValueError, match="have no instruction"):
        model(**inputs)


def test_a_prompt_ending_in_a_visual_token_reads_the_question_before_it(stock, ours):
    """The question first, the image last (its closing template token cut too): compressed like any prompt."""
    model = compressed(ours)
    inputs = make_qwen_inputs([[("text", [5, 6]), ("image", (4, 4))]], stock.config)
    inputs = {
        k: v[:, :-1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in inputs.items()
    }
    with torch.no_grad():
        model(**inputs)
    assert model.last_compression[0].num_kept == 2  # half of the image's 4 tokens


def test_eager_and_sdpa_give_equal_logits_under_compression(stock_checkpoint, family):
    _, ours_cls = FAMILIES[family]
    inputs = make_qwen_inputs([A, B], tiny_config(family))
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = ours_cls.from_pretrained(stock_checkpoint[1], attn_implementation=implementation, token_keep=0.25)
        model.compressor = FixedScores()
        assert model.config.text_config._attn_implementation == implementation
        with torch.no_grad():
            logits[implementation] = model(**inputs).logits
    kept = kept_for(stock_checkpoint[0], inputs, 0.25)
    for b, positions in enumerate(kept):  # real tokens only (left padded): padding rows are undefined
        n = len(positions)
        torch.testing.assert_close(logits["eager"][b, -n:], logits["sdpa"][b, -n:], rtol=1e-5, atol=1e-5)


# ---- found by review: the cache record, masks, loading options, merged generation configs ------------------------
def test_a_reset_cache_forgets_its_compressed_prompt(stock, ours):
    from transformers import DynamicCache

    model = compressed(ours)
    inputs = make_qwen_inputs([A], stock.config)
    text = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        cache = DynamicCache(config=model.config.get_text_config())
        model.generate(**inputs, max_new_tokens=2, past_key_values=cache)
        cache.reset()
        first = model(input_ids=text, past_key_values=cache, use_cache=True)
        step = model(input_ids=torch.tensor([[9]]), past_key_values=first.past_key_values).logits
        fresh = model(input_ids=text, use_cache=True)
        expected = model(input_ids=torch.tensor([[9]]), past_key_values=fresh.past_key_values).logits
    torch.testing.assert_close(step, expected, rtol=1e-6, atol=1e-6)


def test_a_cache_cropped_into_the_compressed_prompt_is_refused(stock, ours):
    if "linear_attention" in getattr(stock.config.text_config, "layer_types", []):
        pytest.skip("Qwen3.5's recurrent state cannot be cropped (the stock cache refuses `crop`)")
    model = compressed(ours)
    inputs = make_qwen_inputs([A], stock.config)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True)
        out.past_key_values.crop(-(out.past_key_values.get_seq_length() - 3))
        with pytest.raises(ValueError, match="cropped"):
            model.generate(input_ids=out.sequences, past_key_values=out.past_key_values, max_new_tokens=2)


def test_manual_decoding_without_a_mask_ignores_the_compressed_padding(stock, ours):
    """Equal-length prompts (no mask needed) whose compressed lengths differ: the re-padding must stay masked."""
    samples = [
        [("text", [5, 6]), ("image", (8, 8)), ("text", [7])],
        [("text", [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]), ("image", (4, 6)), ("text", [7])],
    ]
    inputs = make_qwen_inputs(samples, stock.config)
    assert bool(inputs["attention_mask"].all())
    model = compressed(ours, keep=0.25)
    step = torch.tensor([[20], [20]])
    with torch.no_grad():
        first = model(**inputs, use_cache=True)
        no_mask = model(input_ids=step, past_key_values=first.past_key_values).logits
        first = model(**inputs, use_cache=True)
        mask = torch.ones(2, inputs["input_ids"].shape[1] + 1, dtype=torch.long)
        with_mask = model(input_ids=step, attention_mask=mask, past_key_values=first.past_key_values).logits
    torch.testing.assert_close(no_mask, with_mask, rtol=1e-6, atol=1e-6)


def test_loading_with_a_config_object_or_a_subfolder(stock_checkpoint, family, tmp_path):
    _, ours_cls = FAMILIES[family]
    model = ours_cls.from_pretrained(stock_checkpoint[1], token_keep=0.25)
    model.save_pretrained(tmp_path / "sub")
    assert ours_cls.from_pretrained(tmp_path, subfolder="sub").config.token_keep == 0.25
    config = ours_cls.config_class.from_pretrained(tmp_path / "sub")
    assert ours_cls.from_pretrained(tmp_path / "sub", config=config).config.token_keep == config.token_keep


def test_options_in_the_models_generation_config_are_checked_too(stock, ours):
    model = compressed(ours)
    model.generation_config.prompt_lookup_num_tokens = 2
    own = transformers.GenerationConfig(max_new_tokens=2)  # stock fills what it leaves unset from the model's
    with pytest.raises(ValueError, match="`prompt_lookup_num_tokens`"):
        model.generate(**make_qwen_inputs([A], stock.config), generation_config=own)


def test_the_rope_delta_after_a_compressed_prefill(stock, ours):
    """Decoding continues at (largest original position + 1): the cached delta is that minus the sample's number
    of kept tokens, the stock convention (largest position + 1 - real tokens), computed here from the stock M-RoPE
    ids and the naive kept positions."""
    inputs = make_qwen_inputs([A, B], stock.config)
    model = compressed(ours, keep=0.25)
    kept = kept_for(stock, inputs, 0.25)
    with torch.no_grad():
        model(**inputs)
        positions = stock_positions(stock, inputs)
    expected = [int(positions[:, b, k].max()) + 1 - len(k) for b, k in enumerate(kept)]
    assert model.model.rope_deltas[:, 0].tolist() == expected


def test_pre_encoded_visual_features_are_refused_under_compression(stock, ours):
    """`mm_encoder_outputs` carries the visual features without pixels: the compression cannot select among them,
    so it is refused by name instead of running uncompressed."""
    inputs = make_qwen_inputs([A], stock.config)
    with torch.no_grad():
        encoded = {"image": stock.model.get_image_features(inputs.pop("pixel_values"), inputs["image_grid_thw"])}
    model = compressed(ours)
    with pytest.raises(ValueError, match="`mm_encoder_outputs`"):
        model(**inputs, mm_encoder_outputs=encoded)
    with pytest.raises(ValueError, match="`mm_encoder_outputs`"):
        model.generate(**inputs, mm_encoder_outputs=encoded, max_new_tokens=2)
    model.config.token_keep = 1.0  # the stock model takes them
    with torch.no_grad():
        torch.testing.assert_close(
            model(**inputs, mm_encoder_outputs=encoded).logits, stock(**inputs, mm_encoder_outputs=encoded).logits
        )
