"""The speed benchmark's bookkeeping, on tiny models of each family: token counts, kept tokens, KV bytes and FLOPs
against hand counts, the FastV token match, and the prompt layouts against the models' own feature paths.
(Timings are not asserted: they belong to benchmarks/, not tests.)"""

import math

import pytest
import torch

from hf_tokcomp.bench.models import BENCH_MODELS, PREFIX, BenchModel, llava_image_for, llava_image_tokens
from hf_tokcomp.bench.speed import (
    BenchSpec,
    add_ratios,
    cell_count,
    fastv_keep_for_equal_tokens,
    headline,
    worker,
)
from hf_tokcomp.evaluation.flops import flop_counter
from hf_tokcomp.models.vila import VilaConfig
from hf_tokcomp.testing.tiny_internvl import tiny_internvl_config
from hf_tokcomp.testing.tiny_llava import tiny_llava_onevision_config
from hf_tokcomp.testing.tiny_qwen import tiny_qwen_config
from hf_tokcomp.testing.tiny_qwen3 import tiny_qwen3_5_config, tiny_qwen3_vl_config
from hf_tokcomp.testing.tiny_vila import tiny_vila_sub_configs


def _tiny_vila(llm_layers: int, vision_layers: int) -> VilaConfig:
    llm, tower = tiny_vila_sub_configs(vocab_size=300, num_layers=llm_layers)
    tower.num_hidden_layers = vision_layers
    return VilaConfig(llm_cfg=llm.to_dict(), vision_tower_cfg=tower.to_dict())


TINY = {
    "tiny-qwen2-vl": BenchModel("qwen2_vl", (4, 1), lambda n, v: tiny_qwen_config(num_layers=n, vision_depth=v)),
    "tiny-llava-ov": BenchModel("llava_onevision", (4, 1), lambda n, v: tiny_llava_onevision_config(num_layers=n)),
    "tiny-vila": BenchModel("vila", (4, 2), _tiny_vila, min_vision_layers=2),
    "tiny-qwen3-vl": BenchModel("qwen2_vl", (4, 2), lambda n, v: tiny_qwen3_vl_config(num_layers=n)),
    "tiny-qwen3.5": BenchModel("qwen2_vl", (4, 2), lambda n, v: tiny_qwen3_5_config(num_layers=n)),
    "tiny-internvl": BenchModel("internvl", (4, 1), lambda n, v: tiny_internvl_config(num_layers=n)),
}
QWEN_LAYOUT = ("tiny-qwen2-vl", "tiny-qwen3-vl", "tiny-qwen3.5")
#: the families FastV runs on (Qwen3.5's linear-attention layers are refused)
FASTV = [name for name in TINY if name != "tiny-qwen3.5"]
TEXT = 5


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch):
    for name, model in TINY.items():
        monkeypatch.setitem(BENCH_MODELS, name, model)


def spec(config: str, **kw) -> BenchSpec:
    fields = dict(llm_layers=4, vision_layers=TINY[config].min_vision_layers, visual_tokens=40, text_tokens=TEXT)
    return BenchSpec(config=config, new_tokens=3, warmup=0, repeats=2, **(fields | kw))


def expected_prompt(config: str) -> int:
    """Prefix + visual tokens + question (+ the vision start / end tokens of Qwen, <img> / </img> of InternVL)."""
    markers = 2 if config in QWEN_LAYOUT or config == "tiny-internvl" else 0
    return len(PREFIX) + sum(expected_visual(config)) + TEXT + markers


def expected_visual(config: str) -> list[int]:
    """Visual tokens per segment of the 40-token target, counted by hand from each family's layout."""
    if config in QWEN_LAYOUT:
        return [36]  # sqrt(40) = 6.3 tokens a side -> 12 x 12 patches -> 6 x 6 tokens after the 2x2 merge
    if config == "tiny-internvl":
        return [48]  # 32 px tiles of 4 px patches, pixel shuffle 0.5: 16 tokens a tile; ceil(40 / 16) tiles
    if config == "tiny-llava-ov":
        return [4 * 4 * (1 + 2) + 4 * 1]  # 16 px crops of 4 px patches: (1, 2) grid: base + 2 crops + 1 row end
    return [16] * 3  # 28 px / 4 px = 7 patches -> 4 x 4 after the 2x2 merge; ceil(40 / 16) images


def kv_bytes(config_name: str, tokens_per_layer: list[int], batch: int) -> int:
    """Keys and values of the attention layers, float32 (Qwen3.5's linear-attention layers hold none)."""
    text = TINY[config_name].build_config(4, 2).get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kinds = getattr(text, "layer_types", None) or ["full_attention"] * len(tokens_per_layer)
    return batch * sum(
        2 * text.num_key_value_heads * head_dim * n * 4
        for n, kind in zip(tokens_per_layer, kinds, strict=True)
        if kind == "full_attention"
    )


@pytest.mark.parametrize("config", list(TINY))
def test_counts_kept_tokens_kv_and_flops_match_hand_counts(config):
    segments = expected_visual(config)
    prompt = expected_prompt(config)
    with torch.no_grad():
        stock = worker(spec(config), "stock", 1.0, batch=2)
        ours = worker(spec(config), "ours", 0.5, batch=2)
    assert (stock["prompt_tokens"], stock["visual_tokens"]) == (prompt, sum(segments))
    kept = prompt - sum(segments) + sum(max(1, round(0.5 * n)) for n in segments)
    assert (stock["kept_tokens"], ours["kept_tokens"]) == (prompt, kept)
    assert stock["kv_bytes"] == kv_bytes(config, [prompt] * 4, 2)
    assert ours["kv_bytes"] == kv_bytes(config, [kept] * 4, 2)
    # the compressor's cost does not depend on the keep ratio, the LLM's does (tiny models: the compressor
    # costs more than the LLM saves, so stock is not the upper bound here)
    with torch.no_grad():
        quarter = worker(spec(config), "ours", 0.25, batch=2)
    assert 0 < quarter["prefill_flops"] < ours["prefill_flops"]
    assert ours["overhead"]["median"] > 0 and ours["decode_tokens_per_s"] > 0


def test_ratios_and_headline_of_one_batch():
    with torch.no_grad():
        rows = [worker(spec("tiny-qwen2-vl"), m, k, batch=1) for m, k in (("stock", 1.0), ("ours", 0.5))]
        rows.append(worker(spec("tiny-qwen2-vl"), "fastv", 0.25, batch=1))
    stock, ours, fastv = add_ratios(rows)
    assert stock["llm_speedup"] == stock["llm_ideal"] == stock["ttft_speedup"] == stock["ttft_ideal"] == 1.0
    assert ours["llm_ideal"] == stock["prompt_tokens"] / ours["kept_tokens"]
    t_vis, t_llm, share = stock["vision"]["median"], stock["llm_prefill"]["median"], 1 / ours["llm_ideal"]
    assert math.isclose(ours["ttft_ideal"], (t_vis + t_llm) / (t_vis + share * t_llm))
    assert ours["llm_speedup"] == t_llm / ours["llm_prefill"]["median"]
    # 45 prompt tokens (36 visual); FastV keeps all for K=2 of 4 layers, then 9 of the 36: (2 * 45 + 2 * 18) / 4
    assert stock["prompt_tokens"] == 45 and fastv["avg_tokens_per_layer"] == (2 * 45 + 2 * 18) / 4
    table = headline({"rows": rows})
    assert table.count("\n") == 2 and "| 1 | 0.5 |" in table  # header, rule, one `ours` row (no FastV match)


@pytest.mark.parametrize("config", FASTV)
def test_fastv_cell_keeps_every_token_for_k_layers(config):
    s = spec(config)
    segments = expected_visual(config)
    with torch.no_grad():
        row = worker(s, "fastv", 0.5, batch=1)
    prompt = expected_prompt(config)
    assert row["prompt_tokens"] == prompt
    kept = prompt - sum(segments) + sum(max(1, round(0.5 * n)) for n in segments)
    assert row["kept_tokens"] == kept
    assert row["cache_tokens_per_layer"] == [prompt] * s.fastv_k + [kept] * (4 - s.fastv_k)
    assert row["kv_bytes"] == kv_bytes(config, row["cache_tokens_per_layer"], 1)


def test_no_fastv_cells_for_linear_attention_models():
    assert cell_count(spec("tiny-qwen3.5", batch_sizes=(1, 8), keeps=(0.5, 0.25))) == 2 * (1 + 2)
    assert cell_count(spec("tiny-qwen3-vl", batch_sizes=(1, 8), keeps=(0.5, 0.25))) == 2 * (1 + 2 * 2)


def test_fastv_keep_gives_the_same_average_tokens_per_layer():
    visual, text, layers, k = 1000, 60, 28, 2
    for keep in (0.75, 0.5, 0.25, 0.1):
        fv = fastv_keep_for_equal_tokens(keep, visual, text, layers, k)
        average = (k * (visual + text) + (layers - k) * (text + fv * visual)) / layers
        assert math.isclose(average, text + keep * visual)
    assert fastv_keep_for_equal_tokens(0.1, visual, text, layers=4, k=2) is None  # would need a negative keep


def test_llava_image_sizes_and_counts_match_the_stock_feature_path():
    """Sizes chosen by hand from the tiny config's pinpoints (16 px crops of 4x4 patches: (1,1) 36 tokens,
    (1,2) 52, (2,1) 56, (2,2) 88), and each count against the stock LLaVA-OneVision unpadding and row ends."""
    from hf_tokcomp import LlavaOnevisionForConditionalGeneration
    from hf_tokcomp.testing.tiny_llava import make_llava_inputs

    model = LlavaOnevisionForConditionalGeneration(tiny_llava_onevision_config()).eval()
    config = model.config
    chosen = {1: (16, 16), 36: (16, 16), 37: (16, 32), 52: (16, 32), 53: (32, 16), 56: (32, 16), 57: (32, 32)}
    for target, size in chosen.items():
        assert llava_image_for(target, config) == size, target
    for size, tokens in {(16, 16): 36, (16, 32): 52, (32, 16): 56, (32, 32): 88}.items():
        ids = make_llava_inputs([[("image", size)]], model)["input_ids"]
        assert llava_image_tokens(*size, config) == int((ids == config.image_token_id).sum()) == tokens
    with pytest.raises(ValueError, match="`visual_tokens`=89 .* at most 88"):
        llava_image_for(89, config)
    real = BENCH_MODELS["llava-onevision-7b"].build_config(2, 1)
    assert llava_image_for(1024, real) == (384, 384) and llava_image_tokens(384, 384, real) == 729 * 2 + 27


def test_cpu_sdpa_attention_is_counted():
    """4 b h s_q s_k d: the scores and the weighted sum, two flops per multiply-add."""
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 12, 8), torch.randn(2, 4, 12, 8)
    with flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 4 * 2 * 4 * 10 * 12 * 8


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(config="nope"), "config"),
        (dict(vision_layers=1), "vision_layers"),
        (dict(llm_layers=2), "llm_layers"),
        (dict(keeps=(0.5, 0.0)), "keeps"),
        (dict(repeats=1), "repeats"),
        (dict(batch_sizes=(1, 0)), "batch_sizes"),
        (dict(visual_tokens=10**6, config="llava-onevision-7b", vision_layers=1), "visual_tokens"),
        (dict(dtype="float99"), "dtype"),
    ],
)
def test_bad_specs_are_named(change, match):
    bad = spec("tiny-vila")
    for key, value in change.items():
        setattr(bad, key, value)
    with pytest.raises(ValueError, match=match):
        bad.check()


def test_real_configs_have_the_published_widths():
    """Widths from the published config.json files (layer counts are a parameter)."""
    widths = {  # LLM: vocab, hidden, MLP, heads, KV heads; vision: width, patch, image size
        "qwen2-vl-2b": ((151936, 1536, 8960, 12, 2), (1280, 14, None)),
        "qwen2-vl-7b": ((152064, 3584, 18944, 28, 4), (1280, 14, None)),
        "llava-onevision-7b": ((152128, 3584, 18944, 28, 4), (1152, 14, 384)),
        "vila1.5-3b": ((32000, 2560, 6912, 20, 20), (1152, 14, 384)),
        "qwen3-vl-8b": ((151936, 4096, 12288, 32, 8), (1152, 16, None)),
        "qwen3-vl-30b-a3b": ((151936, 2048, 6144, 32, 4), (1152, 16, None)),
        "qwen3.5-27b": ((248320, 5120, 17408, 24, 4), (1152, 16, None)),
        "internvl3.5-8b": ((151936, 4096, 12288, 32, 8), (1024, [14, 14], [448, 448])),
    }
    for name, (llm, vision) in widths.items():
        config = BENCH_MODELS[name].build_config(2, 2)
        text = config.get_text_config()
        got = (text.vocab_size, text.hidden_size, text.intermediate_size)
        assert got + (text.num_attention_heads, text.num_key_value_heads) == llm, name
        tower = getattr(config, "vision_config", None) or config.vision_tower_cfg
        width = getattr(tower, "embed_dim", None) or tower.hidden_size
        assert (width, tower.patch_size, getattr(tower, "image_size", None)) == vision, name
    moe = BENCH_MODELS["qwen3-vl-30b-a3b"].build_config(2, 2).text_config
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size) == (128, 8, 768)
    qwen3_5 = BENCH_MODELS["qwen3.5-27b"].build_config(8, 2).text_config
    assert qwen3_5.layer_types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + [
        "full_attention"
    ]
    assert (qwen3_5.head_dim, qwen3_5.linear_num_value_heads, qwen3_5.linear_num_key_heads) == (256, 48, 16)
    deepstack = BENCH_MODELS["qwen3-vl-8b"].build_config(2, 27).vision_config.deepstack_visual_indexes
    assert list(deepstack) == [8, 16, 24]


def test_cpu_peak_window_sees_an_allocation_after_a_larger_one():
    """The peak window starts at the reset: an earlier, larger allocation does not hide a later one."""
    from hf_tokcomp.bench.speed import _peak_mb, _reset_peak

    big = torch.ones(400 * 2**20 // 4)  # 400 MB, freed before the window starts
    del big
    baseline = _reset_peak(spec("tiny-qwen2-vl"))
    block = torch.ones(100 * 2**20 // 4)  # 100 MB, touched
    peak = _peak_mb(spec("tiny-qwen2-vl"), baseline)
    del block
    assert 95 <= peak <= 140


def test_a_cell_runs_in_its_own_worker_process():
    """The worker process that every real cell runs in (``python -m hf_tokcomp.bench.speed <job>``), on a real
    config cut to 3 LLM layers and a 16-token image."""
    from hf_tokcomp.bench.speed import _cell

    small = BenchSpec(config="qwen2-vl-2b", llm_layers=3, vision_layers=1, visual_tokens=16, text_tokens=4)
    small.new_tokens, small.repeats, small.warmup = 2, 2, 0
    row = _cell(small, "ours", 0.5, 1)
    assert (row["method"], row["visual_tokens"], row["kept_tokens"]) == ("ours", 16, len(PREFIX) + 2 + 8 + 4)
