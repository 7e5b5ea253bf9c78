"""The layer-0 features against independent references built from the stock model: its own eager layer-0
attention (the causal part) and its layer-0 attention module run with a hand-built non-causal mask (how a
question BEFORE the image reads it), averaged by hand over hand-derived instruction rows."""

import pytest
import torch

from hf_tokcomp.runtime.features import FeatureSpec, segment_features
from hf_tokcomp.testing.tiny_qwen import VOCAB, make_qwen_inputs

from .reference import qwen_segment_sizes, stock_merged_embeddings, stock_positions

SAMPLES = [
    [("text", [5, 6, 7]), ("image", (8, 8)), ("text", [8, 9, 10, 11])],
    [("text", [5]), ("image", (4, 6)), ("text", [12]), ("image", (4, 4)), ("text", [13, 14])],
]
#: the tiny vocabulary's ids that are never instruction: padding, end of turn, vision start / end
TEMPLATE = (VOCAB["pad"], VOCAB["eos"], VOCAB["vision_start"], VOCAB["vision_end"])
CAUSAL = FeatureSpec("causal")


def text_rows(ids: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor, template=TEMPLATE) -> list[list[int]]:
    """Per sample (a prompt without turn markers: one turn), the instruction rows written out: every real token
    that is neither visual nor a template id, before or after the images."""
    return [
        [i for i in range(ids.shape[1]) if mask[b, i] and not visual[b, i] and int(ids[b, i]) not in template]
        for b in range(ids.shape[0])
    ]


def hand_features(attn: torch.Tensor, ids: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor, template=TEMPLATE):
    """``(B, L)``: the stock CAUSAL layer-0 attention ``(B, H, L, L)`` averaged over heads and over the sample's
    instruction rows (:func:`text_rows`; rows before a segment give it 0, as causal attention does)."""
    out = torch.zeros(visual.shape)
    for b, rows in enumerate(text_rows(ids, visual, mask, template)):
        out[b] = attn[b][:, rows].mean(dim=(0, 1))
    return out


def layer0_probs(stock, layer, embeds, cos, sin, mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """``(B, H, L, L)``: a stock layer-0 attention module (eager) on ``embeds`` with the rotary tables ``cos`` /
    ``sin`` and a hand-built additive mask: padding keys hidden, and future keys too when ``causal``."""
    mask = mask.bool()
    with torch.no_grad():
        length = mask.shape[1]
        visible = mask[:, None, None, :].expand(-1, 1, length, -1).clone()
        if causal:
            visible &= torch.ones(length, length, dtype=torch.bool).tril()
        additive = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
        stock.set_attn_implementation("eager")
        try:
            _, probs = layer.self_attn(
                layer.input_layernorm(embeds), attention_mask=additive, position_embeddings=(cos, sin)
            )
        finally:
            stock.set_attn_implementation("sdpa")
    return probs


def feature_layer(text) -> torch.nn.Module:
    """The decoder layer whose attention the features read: layer 0, or for Qwen3.5 (linear-attention layers
    first, no softmax map) its first full-attention layer, found here from the stock config's ``layer_types``."""
    kinds = getattr(text.config, "layer_types", None) or ["full_attention"]
    return text.layers[kinds.index("full_attention")]


def stock_layer0_probs(stock, inputs: dict, causal: bool) -> torch.Tensor:
    """:func:`layer0_probs` of the stock Qwen model's feature layer on the LLM INPUT embeddings (the merged
    embeddings, before any decoder layer) and its M-RoPE tables."""
    text = stock.model.language_model
    with torch.no_grad():
        embeds = stock_merged_embeddings(stock, inputs)
        cos, sin = text.rotary_emb(embeds, stock_positions(stock, inputs))
    return layer0_probs(stock, feature_layer(text), embeds, cos, sin, inputs["attention_mask"], causal)


def test_the_causal_reference_is_the_stock_models_own_attention(stock):
    """The hand-masked stock module reproduces the full stock forward's eager layer-0 attention (real rows)."""
    if "linear_attention" in getattr(stock.config.text_config, "layer_types", []):
        pytest.skip("Qwen3.5: its full-attention layer reads hidden states, not the input embeddings the features use")
    inputs = make_qwen_inputs(SAMPLES, stock.config)
    stock.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = stock(**inputs, output_attentions=True).attentions[0]
    finally:
        stock.set_attn_implementation("sdpa")
    real = inputs["attention_mask"].bool()
    probs = stock_layer0_probs(stock, inputs, causal=True)
    for b in range(attn.shape[0]):
        torch.testing.assert_close(probs[b][:, real[b]], attn[b][:, real[b]], rtol=1e-5, atol=1e-6)


def naive_segment_features(
    causal, full, ids, visual, mask, runs, mode: str, template=TEMPLATE
) -> list[list[torch.Tensor]]:
    """Per sample, per segment ``(start, n)``: ``(H, n)`` attention from the sample's instruction rows, each row
    read causally (``causal`` probabilities ``(B, H, L, L)``) when it follows the segment, else non-causally
    (``full``) for ``hybrid``, or always one way (``causal`` / ``noncausal``); averaged over the rows by hand."""
    out = []
    for b, rows in enumerate(text_rows(ids, visual, mask, template)):
        per_segment = []
        for start, n in runs[b]:
            picked = []
            for r in rows:
                use_causal = mode == "causal" or (mode == "hybrid" and r >= start + n)
                picked.append((causal if use_causal else full)[b, :, r, start : start + n])
            per_segment.append(torch.stack(picked).mean(dim=0))
        out.append(per_segment)
    return out


def moved_rows_probs(stock, inputs: dict, b: int, before: list[int], end: int) -> torch.Tensor:
    """``(H, R, L)``: how sample ``b``'s rows ``before`` (before a segment ending at index ``end``) would attend at
    layer 0 if they followed it in order (the ``moved`` read): the stock module on the sequence with a copy of
    each row appended, the ``j``-th at the stock position of index ``end`` plus ``j`` on every axis, seeing the
    real keys up to ``end`` except the rows after it in ``before`` (and no copy)."""
    text = stock.model.language_model
    mask = inputs["attention_mask"][b].bool()
    length, count = mask.shape[0], len(before)
    with torch.no_grad():
        embeds = stock_merged_embeddings(stock, inputs)[b : b + 1]
        positions = stock_positions(stock, inputs)[:, b : b + 1]
        moved = positions[:, :, end : end + 1] + torch.arange(count)
        embeds = torch.cat([embeds, embeds[:, before]], dim=1)
        cos, sin = text.rotary_emb(embeds, torch.cat([positions, moved], dim=2))
    visible = torch.zeros(length + count, length + count, dtype=torch.bool)
    visible[:length, :length] = mask[None, :] & torch.ones(length, length, dtype=torch.bool).tril()
    for j in range(count):
        visible[length + j, : end + 1] = mask[: end + 1]
        visible[length + j, before[j + 1 :]] = False
    additive = torch.zeros(1, 1, *visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    layer = feature_layer(text)
    stock.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            _, probs = layer.self_attn(
                layer.input_layernorm(embeds), attention_mask=additive, position_embeddings=(cos, sin)
            )
    finally:
        stock.set_attn_implementation("sdpa")
    return probs[0, :, length:, :length]


@pytest.mark.parametrize("with_causal", [False, True])
def test_moved_features_equal_the_rows_placed_after_the_segment(stock, ours, with_causal):
    """``moved``: the rows BEFORE a segment read it as if they followed it in order (copies appended at the
    positions after the segment, each seeing the keys up to it but not the later rows); rows after it read it
    causally. Against the stock module run on that hand-built sequence, for text before, between and after two
    images. ``+causal``: the stock causal attention averaged over all the rows follows as channels of its own."""
    inputs = make_qwen_inputs(SAMPLES, stock.config)
    ids = inputs["input_ids"]
    runs = visual_runs(ids, qwen_segment_sizes(inputs, stock.config))
    visual = (ids == stock.config.image_token_id) | (ids == stock.config.video_token_id)
    causal = stock_layer0_probs(stock, inputs, True)
    with torch.no_grad():
        got = ours.compressor_features(**inputs, features=FeatureSpec("moved", per_head=True, with_causal=with_causal))
    heads, checked = causal.shape[1], 0
    for b, rows in enumerate(text_rows(ids, visual, inputs["attention_mask"])):
        for (_, features), (start, n) in zip(got[b], runs[b], strict=True):
            end = start + n
            before = [r for r in rows if r < end]
            picked = [causal[b, :, r, start:end] for r in rows if r >= end]
            if before:
                picked += list(moved_rows_probs(stock, inputs, b, before, end)[:, :, start:end].unbind(1))
                checked += len(before)
            assert features.shape[0] == heads * (2 if with_causal else 1)
            torch.testing.assert_close(features[:heads], torch.stack(picked).mean(dim=0), rtol=1e-5, atol=1e-6)
            if with_causal:
                want = causal[b][:, rows, start:end].mean(dim=1)  # rows before the segment give it 0
                torch.testing.assert_close(features[heads:], want, rtol=1e-5, atol=1e-6)
    assert checked >= 4  # rows before the first image of each sample and between the two images


@pytest.mark.parametrize("per_head", [False, True])
def test_split_features_average_the_instruction_and_the_generation_prompt_apart(stock, per_head):
    """``+split``: the rows marked as the generation prompt are averaged into channels of their own, after the
    instruction's; against the stock causal layer-0 attention averaged by hand over the two row sets (the last two
    text tokens of each sample play the generation prompt)."""
    inputs = make_qwen_inputs(SAMPLES, stock.config)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    runs = visual_runs(ids, qwen_segment_sizes(inputs, stock.config))
    visual = (ids == stock.config.image_token_id) | (ids == stock.config.video_token_id)
    text = stock.model.language_model
    with torch.no_grad():
        embeds = stock_merged_embeddings(stock, inputs)
        cos, sin = text.rotary_emb(embeds, stock_positions(stock, inputs))
    causal = stock_layer0_probs(stock, inputs, True)
    segments = [(b, start, n) for b, sample_runs in enumerate(runs) for start, n in sample_runs]
    hand_rows = text_rows(ids, visual, mask)
    rows = torch.zeros(len(segments), ids.shape[1], dtype=torch.bool)
    header = torch.zeros_like(rows)
    n_max = max(n for _, _, n in segments)
    index = torch.tensor([[start + min(j, n - 1) for j in range(n_max)] for _, start, n in segments])
    for s, (b, _, _) in enumerate(segments):
        rows[s, hand_rows[b]] = True
        header[s, hand_rows[b][-2:]] = True
    spec = FeatureSpec("causal", per_head, prompt_header=True, split=True)
    sample = torch.tensor([b for b, _, _ in segments])
    end = torch.tensor([start + n for _, start, n in segments])
    with torch.no_grad():
        got = segment_features(embeds, feature_layer(text), cos, sin, mask, rows, sample, index, end, spec, header)
    assert got.shape[1] == spec.channels(causal.shape[1])
    for s, (b, start, n) in enumerate(segments):
        parts = []
        for picked in (hand_rows[b][:-2], hand_rows[b][-2:]):
            mean = causal[b][:, picked, start : start + n].mean(dim=1)  # (H, n)
            parts.append(mean if per_head else mean.mean(dim=0, keepdim=True))
        torch.testing.assert_close(got[s, :, :n], torch.cat(parts), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="generation prompt"):
        segment_features(embeds, feature_layer(text), cos, sin, mask, rows, sample, index, end, spec)


@pytest.mark.parametrize("mode", ["hybrid", "noncausal", "causal"])
@pytest.mark.parametrize("per_head", [False, True])
def test_features_equal_the_stock_layer0_read_both_ways(stock, ours, mode, per_head):
    """Question before AND after the images, padded batch: the runtime's features per segment equal the naive
    reference, head-averaged or one channel per head."""
    inputs = make_qwen_inputs([*SAMPLES, [("image", (4, 4)), ("text", [6, 7])]], stock.config)
    ids = inputs["input_ids"]
    runs = visual_runs(ids, qwen_segment_sizes(inputs, stock.config))
    visual = (ids == stock.config.image_token_id) | (ids == stock.config.video_token_id)
    causal, full = stock_layer0_probs(stock, inputs, True), stock_layer0_probs(stock, inputs, False)
    expected = naive_segment_features(causal, full, ids, visual, inputs["attention_mask"], runs, mode)
    spec = FeatureSpec(mode, per_head)
    with torch.no_grad():
        got = ours.compressor_features(**inputs, features=spec)
    for b in range(len(runs)):
        for (_, features), want in zip(got[b], expected[b], strict=True):
            want = want if per_head else want.mean(dim=0, keepdim=True)
            torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-6)


def test_the_rows_before_the_image_change_the_hybrid_features(stock, ours):
    """Only the words of the question BEFORE the image differ: the hybrid features (which read them without the
    causal mask) and their top tokens differ too."""
    a = make_qwen_inputs([[("text", [5, 6, 7, 8]), ("image", (8, 8)), ("text", [9])]], stock.config)
    b = make_qwen_inputs([[("text", [5, 30, 41, 8]), ("image", (8, 8)), ("text", [9])]], stock.config)
    hybrid = FeatureSpec("hybrid", prompt_header=True)
    with torch.no_grad():
        fa = ours.compressor_features(**a, features=hybrid)[0][0][1]
        fb = ours.compressor_features(**b, features=hybrid)[0][0][1]
    assert (fa - fb).abs().max() > 1e-5  # the tiny random model attends almost uniformly: small but real
    assert set(fa[0].topk(4).indices.tolist()) != set(fb[0].topk(4).indices.tolist())


def hand_selection(features: torch.Tensor, runs: list[list[tuple[int, int]]], keep: float) -> list[list[int]]:
    """Per sample, the kept indices among its visual tokens: each run ``(start, n)`` keeps its top
    max(1, round(keep * n)) features, ties to the earlier token (plain Python)."""
    kept_all = []
    for b, sample_runs in enumerate(runs):
        kept, offset = [], 0
        for start, n in sample_runs:
            scores = features[b, start : start + n].tolist()
            k = max(1, round(keep * n))
            kept += [offset + j for j in sorted(sorted(range(n), key=lambda j: (-scores[j], j))[:k])]
            offset += n
        kept_all.append(kept)
    return kept_all


def visual_runs(ids: torch.Tensor, sizes: dict[int, list[int]]) -> list[list[tuple[int, int]]]:
    """Per sample, ``(start, n)`` of each visual segment: placeholder runs cut by the segment sizes in order."""
    queues = {token: list(s) for token, s in sizes.items()}
    runs = []
    for row in ids.tolist():
        found, i = [], 0
        while i < len(row):
            if row[i] in queues and queues[row[i]]:
                n = queues[row[i]].pop(0)
                found.append((i, n))
                i += n
            else:
                i += 1
        runs.append(found)
    return runs


def check_feature_path(model, inputs, expected: torch.Tensor, runs, keep=0.25, spec=CAUSAL):
    """``compressor_features`` of ``spec`` per segment equal ``expected`` there; ``compressor=None`` (with that
    definition) keeps its top-k."""
    model.compressor, model.config.token_keep = None, keep
    model._tokcomp_features_override = spec
    try:
        with torch.no_grad():
            features = model.compressor_features(**inputs, features=spec)
            model(**inputs)
    finally:
        del model._tokcomp_features_override
    for b, sample_runs in enumerate(runs):
        for (_, got), (start, n) in zip(features[b], sample_runs, strict=True):
            torch.testing.assert_close(got[0], expected[b, start : start + n], rtol=1e-5, atol=1e-6)
    got_kept = [torch.cat(r.kept).tolist() for r in model.last_compression]
    assert got_kept == hand_selection(expected, runs, keep)


def test_qwen_feature_path_equals_stock_eager_attention_padded_with_video(stock, ours):
    if "linear_attention" in getattr(stock.config.text_config, "layer_types", []):
        pytest.skip("Qwen3.5: no layer-0 softmax map; its feature layer is checked by the read-both-ways test")
    samples = [*SAMPLES, [("text", [5, 6]), ("video", (4, 4, 6)), ("text", [17, 18, 19])]]
    inputs = make_qwen_inputs(samples, stock.config)
    stock.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = stock(**inputs, output_attentions=True).attentions[0]
    finally:
        stock.set_attn_implementation("sdpa")
    ids = inputs["input_ids"]
    visual = (ids == stock.config.image_token_id) | (ids == stock.config.video_token_id)
    runs = visual_runs(ids, qwen_segment_sizes(inputs, stock.config))
    check_feature_path(ours, inputs, hand_features(attn, ids, visual, inputs["attention_mask"]), runs)


def test_feature_names_round_trip_and_bad_flags_are_refused_by_name():
    for spec in [FeatureSpec("moved", True, True, True, True), FeatureSpec("moved", with_causal=True), CAUSAL]:
        assert FeatureSpec.parse(spec.name) == spec
    assert FeatureSpec.parse("v2:moved+gen+heads+causal").channels(4) == 8
    with pytest.raises(ValueError, match="'\\+causal' .* needs mode 'moved', got 'hybrid'"):
        FeatureSpec.parse("v2:hybrid+causal")
    with pytest.raises(ValueError, match="unknown layer-0 feature definition 'v2:moved\\+causal\\+causal'"):
        FeatureSpec.parse("v2:moved+causal+causal")
