"""The speed benchmark's bookkeeping, on tiny models of each family: token counts, kept tokens, KV bytes and FLOPs
against hand counts, the FastV token match, and the prompt layouts against the models' own feature paths.
(Timings are not asserted: they belong to benchmarks/, not tests.)"""

import math

import pytest
import torch
from transformers import LlavaOnevisionConfig

from hf_tokcomp.bench import BenchSpec, fastv_keep_for_equal_tokens, worker
from hf_tokcomp.bench_models import BENCH_MODELS, PREFIX, BenchModel, llava_image_for
from hf_tokcomp.models.vila import VilaConfig
from hf_tokcomp.tiny import tiny_qwen_config
from hf_tokcomp.tiny_llava import tiny_llava_onevision_config
from hf_tokcomp.tiny_vila import tiny_vila_sub_configs


def _tiny_vila(llm_layers: int, vision_layers: int) -> VilaConfig:
    llm, tower = tiny_vila_sub_configs(vocab_size=300, num_layers=llm_layers)
    tower.num_hidden_layers = vision_layers
    return VilaConfig(llm_cfg=llm.to_dict(), vision_tower_cfg=tower.to_dict())


TINY = {
    "tiny-qwen2-vl": BenchModel("qwen2_vl", (4, 1), lambda n, v: tiny_qwen_config(num_layers=n, vision_depth=v)),
    "tiny-llava-ov": BenchModel("llava_onevision", (4, 1), lambda n, v: tiny_llava_onevision_config(num_layers=n)),
    "tiny-vila": BenchModel("vila", (4, 2), _tiny_vila, min_vision_layers=2),
}
TEXT = 5


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch):
    for name, model in TINY.items():
        monkeypatch.setitem(BENCH_MODELS, name, model)


def spec(config: str, **kw) -> BenchSpec:
    fields = dict(llm_layers=4, vision_layers=TINY[config].min_vision_layers, visual_tokens=40, text_tokens=TEXT)
    return BenchSpec(config=config, new_tokens=3, warmup=0, repeats=2, **(fields | kw))


def expected_visual(config: str) -> list[int]:
    """Visual tokens per segment of the 40-token target, counted by hand from each family's layout."""
    if config == "tiny-qwen2-vl":
        return [(2 * round(40**0.5)) ** 2 // 4]  # 12 x 12 patches -> 36 tokens
    if config == "tiny-llava-ov":
        return [4 * 4 * (1 + 2) + 4 * 1]  # 16 px crops of 4 px patches: (1, 2) grid: base + 2 crops + 1 row end
    return [16] * 3  # 28 px / 4 px = 7 patches -> 4 x 4 after the 2x2 merge; ceil(40 / 16) images


def kv_bytes(config_name: str, tokens_per_layer: list[int], batch: int) -> int:
    text = TINY[config_name].build_config(4, 2).get_text_config()
    head_dim = text.hidden_size // text.num_attention_heads
    return batch * sum(2 * text.num_key_value_heads * head_dim * n * 4 for n in tokens_per_layer)  # float32


@pytest.mark.parametrize("config", list(TINY))
def test_counts_kept_tokens_kv_and_flops_match_hand_counts(config):
    segments = expected_visual(config)
    prompt = len(PREFIX) + sum(segments) + TEXT + (2 if config == "tiny-qwen2-vl" else 0)  # + vision start/end
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


@pytest.mark.parametrize("config", list(TINY))
def test_fastv_cell_keeps_every_token_for_k_layers(config):
    s = spec(config)
    segments = expected_visual(config)
    with torch.no_grad():
        row = worker(s, "fastv", 0.5, batch=1)
    prompt = row["prompt_tokens"]
    kept = prompt - sum(segments) + sum(max(1, round(0.5 * n)) for n in segments)
    assert row["kept_tokens"] == kept
    assert row["cache_tokens_per_layer"] == [prompt] * s.fastv_k + [kept] * (4 - s.fastv_k)
    assert row["kv_bytes"] == kv_bytes(config, row["cache_tokens_per_layer"], 1)


def test_fastv_keep_gives_the_same_average_tokens_per_layer():
    visual, text, layers, k = 1000, 60, 28, 2
    for keep in (0.75, 0.5, 0.25, 0.1):
        fv = fastv_keep_for_equal_tokens(keep, visual, text, layers, k)
        average = (k * (visual + text) + (layers - k) * (text + fv * visual)) / layers
        assert math.isclose(average, text + keep * visual)
    assert fastv_keep_for_equal_tokens(0.1, visual, text, layers=4, k=2) is None  # would need a negative keep


def test_llava_image_sizes_give_the_counted_tokens():
    """The layout formula against the stock LLaVA-OneVision feature path (its own unpadding and row ends)."""
    from hf_tokcomp import LlavaOnevisionForConditionalGeneration
    from hf_tokcomp.tiny_llava import make_llava_inputs

    model = LlavaOnevisionForConditionalGeneration(tiny_llava_onevision_config()).eval()
    config = model.config
    for target in (1, 36, 37, 40, 52, 80):
        height, width = llava_image_for(target, config)
        ids = make_llava_inputs([[("image", (height, width))]], model)["input_ids"]
        assert (ids == config.image_token_id).sum() >= target
    with pytest.raises(ValueError, match="visual_tokens"):
        llava_image_for(10**6, config)
    real = LlavaOnevisionConfig()  # SigLIP so400m at 384 px, as LLaVA-OneVision-7B
    assert llava_image_for(1024, real) == (384, 384) and llava_image_for(1486, real) == (384, 768)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(config="nope"), "config"),
        (dict(vision_layers=1), "vision_layers"),
        (dict(llm_layers=2), "llm_layers"),
        (dict(keeps=(0.5, 0.0)), "keeps"),
        (dict(repeats=1), "repeats"),
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
    widths = {
        "qwen2-vl-2b": (1536, 8960, 12, 2),
        "qwen2-vl-7b": (3584, 18944, 28, 4),
        "llava-onevision-7b": (3584, 18944, 28, 4),
        "vila1.5-3b": (2560, 6912, 20, 20),
    }
    for name, (hidden, inter, heads, kv) in widths.items():
        text = BENCH_MODELS[name].build_config(2, 2).get_text_config()
        got = (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads)
        assert got == (hidden, inter, heads, kv), name
