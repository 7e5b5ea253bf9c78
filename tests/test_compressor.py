import pytest
import torch

from hf_tokcomp import TokenCompressor, TokenCompressorConfig


def test_architecture_is_the_papers_depthwise_separable_cnn():
    model = TokenCompressor(TokenCompressorConfig())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    depthwise = [c for c in convs if c.groups == c.in_channels and c.kernel_size[0] > 1]
    assert [c.out_channels for c in depthwise] == [1, 32, 64, 128, 256]
    assert [c.out_channels for c in convs if c.kernel_size[0] == 1] == [32, 64, 128, 256, 512, 1]


def test_scores_one_per_token_for_any_length():
    model = TokenCompressor(TokenCompressorConfig()).eval()
    for n in (1, 5, 300):
        assert model(torch.rand(2, 1, n)).shape == (2, n)


def test_padded_batch_scores_equal_each_segment_alone():
    torch.manual_seed(0)
    model = TokenCompressor(TokenCompressorConfig()).eval()
    a, b = torch.rand(1, 1, 7), torch.rand(1, 1, 4)
    batch = torch.zeros(2, 1, 7)
    batch[0], batch[1, :, :4] = a[0], b[0]
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0], mask[1, :4] = True, True
    out = model(batch, mask=mask)
    torch.testing.assert_close(out[0], model(a)[0])
    torch.testing.assert_close(out[1, :4], model(b)[0])
    assert torch.isinf(out[1, 4:]).all()


def test_save_and_load_roundtrip_in_safetensors(tmp_path):
    model = TokenCompressor(TokenCompressorConfig(kernel_size=5)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded, info = TokenCompressor.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    x = torch.rand(1, 1, 11)
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kernel_size": 4}, "kernel_size"), ({"channels": []}, "channels"), ({"in_channels": 0}, "in_channels")],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(Exception, match=match):
        TokenCompressorConfig(**kwargs)


def test_wrong_feature_shape_raises():
    with pytest.raises(ValueError, match="batch, 1, n"):
        TokenCompressor(TokenCompressorConfig())(torch.rand(1, 3, 5))
