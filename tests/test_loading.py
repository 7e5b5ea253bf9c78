"""Loading stock checkpoints and compressors, and refusing bad input with a clear message."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from hf_tokcomp import TokenCompressor, TokenCompressorConfig
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs
from hf_tokcomp.testing.tiny_qwen3 import tiny_config

from .conftest import FAMILIES

SAMPLE = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]


def _no_problems(info):
    return not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))


def test_stock_checkpoint_loads_every_weight(stock_checkpoint, family):
    stock, path = stock_checkpoint
    model, info = FAMILIES[family][1].from_pretrained(path, output_loading_info=True)
    assert _no_problems(info), info
    reference = stock.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_the_trap_is_real_a_naive_subclass_loses_the_llm(stock_checkpoint, family):
    """Guards the check above: without our fix, transformers reports the LLM weights missing."""
    if family.startswith("qwen3"):
        pytest.skip("the Qwen3 families' stock checkpoints need no key remapping: a plain subclass loads them")
    naive = type("NaiveSubclass", (FAMILIES[family][0],), {})
    _, info = naive.from_pretrained(stock_checkpoint[1], output_loading_info=True)
    assert any("language_model" in key for key in info["missing_keys"])


def test_token_keep_is_a_config_field(stock_checkpoint, family):
    model = FAMILIES[family][1].from_pretrained(stock_checkpoint[1], token_keep=0.25)
    assert model.config.token_keep == 0.25
    model.config.token_keep = 0.5
    assert model.config.token_keep == 0.5


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "0.5", True, None])
def test_bad_token_keep_raises_and_changes_nothing(stock_checkpoint, family, bad):
    cls = FAMILIES[family][1]
    with pytest.raises(Exception, match="token_keep"):
        cls.from_pretrained(stock_checkpoint[1], token_keep=bad)
    model = cls.from_pretrained(stock_checkpoint[1], token_keep=0.5)
    with pytest.raises(Exception, match="token_keep"):
        model.config.token_keep = bad
    assert model.config.token_keep == 0.5


def _saved_compressor(tmp_path, **config):
    torch.manual_seed(1)
    compressor = TokenCompressor(TokenCompressorConfig(**config)).eval()
    compressor.save_pretrained(tmp_path)
    return compressor


def test_compressor_from_directory_scores_the_tokens(stock_checkpoint, family, tmp_path):
    saved = _saved_compressor(tmp_path, base_model_type=family)
    model = FAMILIES[family][1].from_pretrained(stock_checkpoint[1], token_keep=0.5, compressor=tmp_path)
    assert isinstance(model.compressor, TokenCompressor)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.compressor.state_dict()[name], tensor)
    with torch.no_grad():
        model(**make_qwen_inputs([SAMPLE], model.config))
    assert model.last_compression[0].num_kept == 8


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"base_model_type": "llava_onevision"}, "trained for model_type 'llava_onevision'"),
        ({"in_channels": 3}, "expects 3 feature channels"),
    ],
)
def test_compressor_for_another_model_is_refused(stock_checkpoint, family, tmp_path, config, match):
    _saved_compressor(tmp_path, **config)
    with pytest.raises(ValueError, match=match):
        FAMILIES[family][1].from_pretrained(stock_checkpoint[1], compressor=tmp_path)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (None, "v1 \\(unversioned"),  # saved before the definition was versioned
        ("v1:hybrid", "'v1:hybrid', but this hf_tokcomp computes version 2"),
        ("v3:hybrid", "'v3:hybrid', but this hf_tokcomp computes version 2"),
    ],
)
def test_compressor_of_another_feature_version_is_refused_naming_both(
    stock_checkpoint, family, tmp_path, features, match
):
    """A compressor records the feature definition it was trained on; another version is never run."""
    saved = _saved_compressor(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    if features is None:
        del config["features"]
    else:
        config["features"] = features
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        FAMILIES[family][1].from_pretrained(stock_checkpoint[1], compressor=tmp_path)
    model = FAMILIES[family][1].from_pretrained(stock_checkpoint[1], token_keep=0.5)
    saved.config.features = features
    model.compressor = saved  # assigned directly: refused when it is used
    with pytest.raises(ValueError, match=match), torch.no_grad():
        model(**make_qwen_inputs([SAMPLE], model.config))


def test_a_per_head_compressor_reads_one_channel_per_head(stock_checkpoint, family, tmp_path):
    """``v2:hybrid+heads`` takes as many channels as the LLM has heads, and the runtime feeds it exactly the
    per-head features the labels would hold."""
    heads = tiny_config(family).text_config.num_attention_heads
    _saved_compressor(tmp_path, features="v2:hybrid+heads", in_channels=heads)
    model = FAMILIES[family][1].from_pretrained(stock_checkpoint[1], token_keep=0.5, compressor=tmp_path)
    inputs = make_qwen_inputs([SAMPLE], model.config)
    seen = []
    model.compressor.register_forward_hook(lambda module, args, kwargs, out: seen.append(args[0]), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
        expected = model.compressor_features(**inputs, features="v2:hybrid+heads")[0][0][1]
    assert seen[0].shape[1] == heads
    torch.testing.assert_close(seen[0][0, :, : expected.shape[-1]], expected)
    _saved_compressor(tmp_path, features="v2:hybrid+heads", in_channels=1)
    with pytest.raises(ValueError, match=f"makes {heads} on this {heads}-head model"):
        FAMILIES[family][1].from_pretrained(stock_checkpoint[1], compressor=tmp_path)


def test_missing_corrupt_or_partial_compressor_weights_are_refused(stock_checkpoint, family, tmp_path):
    cls = FAMILIES[family][1]
    _saved_compressor(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)

    save_file({k: v for k, v in state.items() if not k.startswith("head.")}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="incomplete or mismatched weights"):
        cls.from_pretrained(stock_checkpoint[1], compressor=tmp_path)

    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not be loaded"):
        cls.from_pretrained(stock_checkpoint[1], compressor=tmp_path)

    weights.unlink()
    with pytest.raises(ValueError, match="could not be loaded"):
        cls.from_pretrained(stock_checkpoint[1], compressor=tmp_path)

    with pytest.raises(ValueError, match="could not be loaded"):
        cls.from_pretrained(stock_checkpoint[1], compressor=tmp_path / "nowhere")


def test_failed_set_compressor_keeps_the_previous_one(ours, tmp_path):
    previous = TokenCompressor(TokenCompressorConfig())
    ours.compressor = previous
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "tokcomp_compressor", "in_channels": 2}))
    with pytest.raises(ValueError):
        ours.set_compressor(tmp_path)
    with pytest.raises(TypeError, match="`compressor` must be"):
        ours.set_compressor(3)
    assert ours.compressor is previous


def test_compressor_breaking_the_contract_is_reported(ours):
    class WrongShape(torch.nn.Module):
        def forward(self, features):
            return features  # (batch, 1, n) instead of (batch, n)

    ours.compressor = WrongShape()
    ours.config.token_keep = 0.5
    with pytest.raises(ValueError, match=r"must map \(batch, in_channels, n\)"), torch.no_grad():
        ours(**make_qwen_inputs([SAMPLE], ours.config))


def test_inputs_embeds_without_input_ids_is_refused_when_compressing(ours):
    ours.config.token_keep = 0.5
    inputs = make_qwen_inputs([SAMPLE], ours.config)
    embeds = ours.model.get_input_embeddings()(inputs.pop("input_ids"))
    with pytest.raises(ValueError, match="input_ids"), torch.no_grad():
        ours(inputs_embeds=embeds, **inputs)


@pytest.mark.parametrize("auto_name", ["AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"])
def test_auto_classes_build_from_our_config_as_from_the_stock_one(stock_checkpoint, ours, family, auto_name):
    """A stock class made from our model's config (transformers' own Qwen3.5 suite chains them) is the class the
    stock config gives; the image-text-to-text auto class gives ours."""
    auto = getattr(transformers, auto_name)
    stock_config = stock_checkpoint[0].config
    try:
        expected = type(auto.from_config(stock_config))
    except ValueError:  # this family has no such stock head: ours must not invent one
        with pytest.raises(ValueError, match="Unrecognized configuration class"):
            auto.from_config(ours.config)
        return
    assert type(auto.from_config(ours.config)) is expected
    assert type(transformers.AutoModelForImageTextToText.from_config(ours.config)) is FAMILIES[family][1]
