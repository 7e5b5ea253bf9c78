"""LLaVA-OneVision: the same contract as the Qwen models, against the stock transformers class."""

import pytest
import torch
import transformers

import hf_tokcomp
from hf_tokcomp.testing.tiny_llava import make_llava_inputs, tiny_llava_onevision_config

from .fixed_scores import FixedScores, fixed_scores
from .reference import naive_kept_positions

ANYRES = [("text", [5, 6]), ("image", (32, 16)), ("text", [7, 8, 9])]  # base crop + 2 crops + newlines
SQUARE = [("text", [5]), ("image", (32, 32)), ("text", [10, 11, 12, 13])]
TWO_IMAGES = [("text", [5]), ("image", (16, 16)), ("text", [14]), ("image", (16, 32)), ("text", [15, 16])]
VIDEO = [("text", [5, 6]), ("video", 4), ("text", [17, 18, 19])]
TEXT = [("text", [5, 6, 7, 8, 9])]
BATCHES = {
    "anyres": [ANYRES, SQUARE],
    "multi_image": [TWO_IMAGES, TEXT],
    "video": [VIDEO],
    "image_and_video": [ANYRES, VIDEO],
}
NEW = 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    stock = transformers.LlavaOnevisionForConditionalGeneration(tiny_llava_onevision_config()).eval()
    path = tmp_path_factory.mktemp("llava_ov")
    stock.save_pretrained(path)
    return stock, path


@pytest.fixture()
def stock(checkpoint):
    return checkpoint[0]


@pytest.fixture()
def ours(checkpoint):
    model = hf_tokcomp.LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint[1]).eval()
    model.generation_config.eos_token_id = None
    return model


def segment_sizes(stock, inputs):
    """Tokens per image / video from the stock feature path."""
    with torch.no_grad():
        images = videos = []
        if "pixel_values" in inputs:
            images = stock.model.get_image_features(
                inputs["pixel_values"],
                inputs["image_sizes"],
                batch_num_images=inputs["batch_num_images"],
                return_dict=True,
            ).pooler_output
        if "pixel_values_videos" in inputs:
            videos = stock.model.get_video_features(inputs["pixel_values_videos"], return_dict=True).pooler_output
    return {
        stock.config.image_token_id: [f.shape[0] for f in images],
        stock.config.video_token_id: [f.shape[0] for f in videos],
    }


def stock_shortened(stock, inputs, kept, new_tokens=0):
    """Per sample, stock logits on the hand-shortened sequence with the original 1-D positions (index among the
    sample's real tokens) and an explicit attention mask; with ``new_tokens`` > 0, a naive greedy loop."""
    with torch.no_grad():
        embeds = stock.model.get_input_embeddings()(inputs["input_ids"])
        sizes = segment_sizes(stock, inputs)
        if sizes[stock.config.image_token_id]:
            feats = torch.cat(
                stock.model.get_image_features(
                    inputs["pixel_values"],
                    inputs["image_sizes"],
                    batch_num_images=inputs["batch_num_images"],
                    return_dict=True,
                ).pooler_output
            )
            embeds = embeds.masked_scatter((inputs["input_ids"] == stock.config.image_token_id)[..., None], feats)
        if sizes[stock.config.video_token_id]:
            feats = stock.model.get_video_features(inputs["pixel_values_videos"], return_dict=True).pooler_output
            embeds = embeds.masked_scatter(
                (inputs["input_ids"] == stock.config.video_token_id)[..., None], feats.flatten(0, 1)
            )
        out = []
        for b, idx in enumerate(kept):
            pad = int((inputs["attention_mask"][b] == 0).sum())
            seq, pos = embeds[b, idx], torch.tensor(idx) - pad
            if not new_tokens:
                out.append(
                    stock(
                        inputs_embeds=seq[None],
                        position_ids=pos[None],
                        attention_mask=torch.ones(1, len(idx), dtype=torch.long),
                    ).logits[0]
                )
                continue
            tokens = []
            for _ in range(new_tokens):
                logits = stock(
                    inputs_embeds=seq[None],
                    position_ids=pos[None],
                    attention_mask=torch.ones(1, seq.shape[0], dtype=torch.long),
                ).logits
                tokens.append(int(logits[0, -1].argmax()))
                seq = torch.cat([seq, stock.model.get_input_embeddings()(torch.tensor([tokens[-1]]))])
                pos = torch.cat([pos, pos[-1:] + 1])
            out.append(tokens)
    return out


@pytest.mark.parametrize("name", list(BATCHES))
def test_keep_1_reproduces_stock(stock, ours, name):
    inputs = make_llava_inputs(BATCHES[name], stock)
    with torch.no_grad():
        assert torch.equal(ours(**inputs).logits, stock(**inputs).logits)
        stock.generation_config.eos_token_id = None
        assert torch.equal(
            ours.generate(**inputs, max_new_tokens=NEW, do_sample=False),
            stock.generate(**inputs, max_new_tokens=NEW, do_sample=False),
        )


@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize("name", list(BATCHES))
def test_fixed_scores_equal_stock_on_hand_shortened_sequence(stock, ours, name, with_mask):
    # without a mask (one unpadded sample): gapped 1-D positions must not be read as packed sequences
    inputs = make_llava_inputs(BATCHES[name] if with_mask else BATCHES[name][:1], stock)
    if not with_mask:
        del inputs["attention_mask"]
    ours.compressor, ours.config.token_keep = FixedScores(), 0.5
    full = {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])} if not with_mask else inputs
    kept = naive_kept_positions(full, segment_sizes(stock, inputs), fixed_scores, 0.5)
    with torch.no_grad():  # no cache either: the packed-sequence check only runs without one
        got = ours(**inputs, use_cache=False).logits
    for b, ref in enumerate(stock_shortened(stock, full, kept)):
        torch.testing.assert_close(got[b, -ref.shape[0] :], ref, rtol=1e-5, atol=1e-5)


def test_generate_matches_naive_loop_and_is_batch_invariant(stock, ours):
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    inputs = make_llava_inputs([ANYRES, TWO_IMAGES, VIDEO], stock)
    kept = naive_kept_positions(inputs, segment_sizes(stock, inputs), fixed_scores, 0.25)
    with torch.no_grad():
        out = ours.generate(**inputs, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
        kinds = [r.kinds for r in ours.last_compression]
        alone = ours.generate(**make_llava_inputs([TWO_IMAGES], stock), max_new_tokens=NEW, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :prompt_len], inputs["input_ids"])
    assert out.sequences[:, prompt_len:].tolist() == stock_shortened(stock, inputs, kept, NEW)
    assert out.sequences[1, -NEW:].tolist() == alone[0, -NEW:].tolist()
    assert out.past_key_values.get_seq_length() == max(len(k) for k in kept) + NEW - 1
    assert kinds == [["image"], ["image", "image"], ["video"]]


def test_loading_and_bad_inputs(checkpoint, tmp_path):
    cls = hf_tokcomp.LlavaOnevisionForConditionalGeneration
    _, info = cls.from_pretrained(checkpoint[1], output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    with pytest.raises(Exception, match="token_keep"):
        cls.from_pretrained(checkpoint[1], token_keep=2)
    hf_tokcomp.TokenCompressor(hf_tokcomp.TokenCompressorConfig(base_model_type="qwen2_vl")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trained for model_type 'qwen2_vl'"):
        cls.from_pretrained(checkpoint[1], compressor=tmp_path)


def naive_last_logits(stock, inputs, kept, b, appended):
    """``(V,)`` stock logits after sample ``b``'s hand-shortened prompt plus ``appended`` tokens, which continue
    the original 1-D positions (no cache, explicit mask)."""
    with torch.no_grad():
        embeds = stock.model.get_input_embeddings()(inputs["input_ids"])
        feats = torch.cat(
            stock.model.get_image_features(
                inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
            ).pooler_output
        )
        embeds = embeds.masked_scatter((inputs["input_ids"] == stock.config.image_token_id)[..., None], feats)
        pad = int((inputs["attention_mask"][b] == 0).sum())
        idx = kept[b]
        seq, pos = embeds[b, idx], torch.tensor(idx) - pad
        if appended:
            seq = torch.cat([seq, stock.model.get_input_embeddings()(torch.tensor(appended))])
            pos = torch.cat([pos, pos[-1] + torch.arange(1, len(appended) + 1)])
        mask = torch.ones(1, seq.shape[0], dtype=torch.long)
        return stock(inputs_embeds=seq[None], position_ids=pos[None], attention_mask=mask).logits[0, -1]


def test_manual_decoding_loop_and_second_turn_continue_at_the_original_positions(stock, ours):
    """1-D RoPE has no rope delta: without the compressed prompt recorded on the cache, the new tokens would take
    the compressed length as their position."""
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    inputs = make_llava_inputs([ANYRES, SQUARE], stock)
    kept = naive_kept_positions(inputs, segment_sizes(stock, inputs), fixed_scores, 0.25)
    mask, tokens = inputs["attention_mask"], [[], []]
    with torch.no_grad():
        out = ours(**inputs, use_cache=True)
        for _ in range(2):
            step = out.logits[:, -1].argmax(-1)
            for b in range(2):
                tokens[b].append(int(step[b]))
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            out = ours(input_ids=step[:, None], attention_mask=mask, past_key_values=out.past_key_values)
            for b in range(2):
                expected = naive_last_logits(stock, inputs, kept, b, tokens[b])
                torch.testing.assert_close(out.logits[b, -1], expected, rtol=1e-5, atol=1e-5)
        first = ours.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
        turn = torch.tensor([[20, 21]] * 2)
        second = ours.generate(
            input_ids=torch.cat([first.sequences, turn], 1),
            attention_mask=torch.cat([inputs["attention_mask"], torch.ones(2, 4, dtype=torch.long)], 1),
            past_key_values=first.past_key_values,
            max_new_tokens=2,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
        )
    prompt_len = inputs["input_ids"].shape[1]
    for b in range(2):
        history = first.sequences[b, prompt_len:].tolist() + [20, 21]
        expected = naive_last_logits(stock, inputs, kept, b, history)
        torch.testing.assert_close(second.logits[0][b], expected, rtol=1e-5, atol=1e-5)
        assert int(second.sequences[b, prompt_len + 4]) == int(expected.argmax())


def test_feature_path_equals_stock_eager_attention(stock, ours):
    """compressor=None keeps each segment's top-k of the stock eager layer-0 attention averaged by hand (padded
    batch, anyres image with newline tokens, video); the compressor's input equals it per segment."""
    from .test_features import check_feature_path, hand_features, visual_runs

    inputs = make_llava_inputs([ANYRES, VIDEO, TWO_IMAGES], stock)
    stock.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = stock(**inputs, output_attentions=True).attentions[0]
    finally:
        stock.set_attn_implementation("sdpa")
    ids = inputs["input_ids"]
    visual = (ids == stock.config.image_token_id) | (ids == stock.config.video_token_id)
    runs = visual_runs(ids, segment_sizes(stock, inputs))
    check_feature_path(ours, inputs, hand_features(attn, ids, visual, inputs["attention_mask"]), runs)


def test_teachers_equal_naive_references_on_the_stock_model(stock, ours):
    """GAE: the naive full-matrix rollout on the stock eager model; occlusion: the stock model's answer log-prob
    drop on the hand-shortened sequence (one visual token left out). One anyres sample with its newline tokens."""
    from hf_tokcomp.teachers.gae import visual_relevance
    from hf_tokcomp.teachers.occlusion import occlusion_relevance

    from .reference import naive_rollout

    inputs = make_llava_inputs([SQUARE], stock)
    answer = torch.tensor([40, 41, 42])
    ids = torch.cat([inputs["input_ids"][0], answer])
    visual = ids == stock.config.image_token_id
    pixels = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    got = visual_relevance(ours, inputs, [answer])[0]
    stock.set_attn_implementation("eager")
    try:
        result = stock(input_ids=ids[None], output_attentions=True, use_cache=False, **pixels)
        expected = naive_rollout(result.logits, result.attentions, ids, len(answer))[visual]
    finally:
        stock.set_attn_implementation("sdpa")
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    relevance = occlusion_relevance(ours, inputs, answer, chunk=8)
    full = {**inputs, "input_ids": ids[None], "attention_mask": torch.ones(1, ids.shape[0], dtype=torch.long)}
    n = ids.shape[0]

    def logprob(kept: list[int]) -> float:
        logits = stock_shortened(stock, full, [kept])[0].log_softmax(-1)
        return sum(float(logits[len(kept) - len(answer) - 1 + t, a]) for t, a in enumerate(answer.tolist()))

    base = logprob(list(range(n)))
    positions = visual.nonzero().flatten().tolist()
    occluded = torch.tensor([base - logprob([i for i in range(n) if i != v]) for v in positions])
    assert occluded.abs().max() > 1e-3
    torch.testing.assert_close(relevance, occluded, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["hybrid", "noncausal"])
def test_features_read_a_question_before_the_image_like_the_stock_layer0(stock, ours, mode):
    """Text before and after the images, padded batch: the features equal the stock Qwen2 layer-0 attention
    module run by hand with a causal and a non-causal mask on the stock merged embeddings and 1-D positions,
    averaged over the instruction rows by hand."""
    from hf_tokcomp.runtime.features import FeatureSpec

    from .test_features import layer0_probs, naive_segment_features, visual_runs

    inputs = make_llava_inputs([ANYRES, TWO_IMAGES], stock)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    text = stock.model.language_model
    with torch.no_grad():
        embeds = stock.model.get_input_embeddings()(ids)
        feats = torch.cat(
            stock.model.get_image_features(
                inputs["pixel_values"],
                inputs["image_sizes"],
                batch_num_images=inputs["batch_num_images"],
                return_dict=True,
            ).pooler_output
        )
        embeds = embeds.masked_scatter((ids == stock.config.image_token_id)[..., None], feats)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # index among the sample's real tokens
        cos, sin = text.rotary_emb(embeds, positions)
    causal = layer0_probs(stock, text.layers[0], embeds, cos, sin, mask, True)
    full = layer0_probs(stock, text.layers[0], embeds, cos, sin, mask, False)
    visual = ids == stock.config.image_token_id
    runs = visual_runs(ids, segment_sizes(stock, inputs))
    template = (stock.config.text_config.pad_token_id, stock.config.text_config.eos_token_id)
    expected = naive_segment_features(causal, full, ids, visual, mask, runs, mode, template)
    with torch.no_grad():
        got = ours.compressor_features(**inputs, features=FeatureSpec(mode))
    for b in range(len(runs)):
        for (_, features), want in zip(got[b], expected[b], strict=True):
            torch.testing.assert_close(features, want.mean(dim=0, keepdim=True), rtol=1e-5, atol=1e-6)
