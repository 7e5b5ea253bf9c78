"""The vLLM plugin's pure-torch part (hf_tokcomp.vllm.pruning), in the main environment (no vLLM needed).

The positions are checked against transformers' own Qwen2-VL ``get_rope_index`` on the unpruned prompt; the
plugin's end-to-end tests (vLLM against hf_tokcomp's transformers classes) are in tests_vllm (make test-vllm).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2VLConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

from hf_tokcomp.organism import ORGANISM_DIR as ORGANISM
from hf_tokcomp.runtime.selection import keep_count
from hf_tokcomp.vllm.pruning import PruneSettings, kept_tokens, prompt_positions, rewrite_positions, with_positions


def _stock_positions(ids: torch.Tensor, grids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """transformers' own Qwen2-VL ``get_rope_index`` on an unpruned prompt: ``(3, L)`` and the delta."""
    config = Qwen2VLConfig.from_pretrained(ORGANISM)
    model = Qwen2VLModel(config)
    mm = (ids == config.image_token_id).int()[None]
    positions, delta = model.get_rope_index(ids[None], mm, image_grid_thw=grids)
    return positions[:, 0], int(delta[0])


@pytest.mark.parametrize("chunk", [5, 16, 1000])
def test_positions_of_kept_tokens_are_the_stock_get_rope_index(chunk):
    config = json.loads((ORGANISM / "config.json").read_text())
    image, start, end = config["image_token_id"], config["vision_start_token_id"], config["vision_end_token_id"]
    grids = torch.tensor([[1, 16, 16], [1, 12, 20]])  # merged: 8 x 8 and 6 x 10
    sizes = [64, 60]
    text = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    full = text[0] + [start] + [image] * sizes[0] + [end] + text[1] + [start] + [image] * sizes[1] + [end] + text[2]
    reference, ref_delta = _stock_positions(torch.tensor(full), grids)
    generator = torch.Generator().manual_seed(0)
    kept = [torch.sort(torch.randperm(n, generator=generator)[: keep_count(0.3, n)]).values for n in sizes]
    # the pruned prompt, and for each of its tokens the index it had in the unpruned one
    ids, origin, images, at = [], [], [], 0
    pieces = [text[0] + [start], kept[0], [end] + text[1] + [start], kept[1], [end] + text[2]]
    for i, piece in enumerate(pieces):
        if i % 2:
            image_index = i // 2
            images.append((len(ids), len(piece), (1, *(g // 2 for g in grids[image_index, 1:].tolist()))))
            origin += [at + int(k) for k in piece]
            ids += [image] * len(piece)
            at += sizes[image_index]
        else:
            origin += list(range(at, at + len(piece)))
            ids += piece
            at += len(piece)
    positions, delta = prompt_positions(len(ids), images)
    embeds = [
        with_positions(torch.randn(n, 4), k, (1, *(g // 2 for g in grid[1:].tolist())))
        for n, k, grid in zip(sizes, kept, grids, strict=True)
    ]
    # vLLM's prefill steps: each step gets the image rows whose placeholders fall inside it
    rows = torch.cat(embeds)
    placeholder = [j for j, t in enumerate(ids) if t == image]
    for step in range(0, len(ids), chunk):
        inside = [r for r, j in enumerate(placeholder) if step <= j < step + chunk]
        slices = [rows[inside]] if inside else []
        stripped, positions, delta = rewrite_positions(ids, slices, positions, step, image)
        assert all(s.shape[1] == 4 for s in stripped)
    assert torch.equal(positions, reference[:, origin])
    assert delta == ref_delta + (len(full) - len(ids))


def test_kept_tokens_follow_the_runtime_selectors():
    embeds = torch.randn(24, 8, generator=torch.Generator().manual_seed(1))
    uniform = kept_tokens(embeds, (1, 4, 6), PruneSettings(0.25, "uniform"))
    assert len(uniform) == keep_count(0.25, 24) and bool((uniform.diff() > 0).all())
    divprune = kept_tokens(embeds, (1, 4, 6), PruneSettings(0.25, "divprune"))
    # DivPrune's first pick, by its definition: the token whose nearest other token is farthest (cosine)
    unit = torch.nn.functional.normalize(embeds, dim=-1)
    distance = 1 - unit @ unit.T
    distance.fill_diagonal_(float("inf"))
    assert int(distance.min(-1).values.argmax()) in divprune.tolist()
    assert len(divprune) == keep_count(0.25, 24)
    assert torch.equal(kept_tokens(embeds, (1, 4, 6), PruneSettings(1.0, "divprune")), torch.arange(24))


@pytest.mark.parametrize(
    ("keep", "selector", "match"),
    [
        (0.0, "uniform", "token_keep"),
        (1.5, "uniform", "token_keep"),
        (0.5, "dart", "selector"),
        (0.5, "auto", "selector"),
        (0.5, "learned", "needs `compressor`"),
    ],
)
def test_settings_refuse_what_the_plugin_cannot_do(keep, selector, match):
    with pytest.raises(ValueError, match=match):
        PruneSettings(keep, selector)
    with pytest.raises(ValueError, match="only it reads one"):
        PruneSettings(0.5, "attention", "some/compressor")


def test_settings_refuse_token_coverage_instead_of_ignoring_it():
    from types import SimpleNamespace

    assert PruneSettings.from_config(SimpleNamespace(token_keep=0.5, selector="uniform", token_coverage=0.0))
    with pytest.raises(ValueError, match=r"`token_coverage` \(0.5\) is not supported by the vLLM plugin"):
        PruneSettings.from_config(SimpleNamespace(token_keep=0.5, selector="uniform", token_coverage=0.5))


def test_positions_in_bfloat16_refuse_grids_they_cannot_hold():
    with pytest.raises(ValueError, match="float32"):
        with_positions(torch.zeros(300, 4, dtype=torch.bfloat16), torch.arange(3), (1, 1, 300))


def test_the_transformers_version_check_names_both_versions():
    """vLLM's environment holds transformers 5.19: the model classes must refuse it by name."""
    from hf_tokcomp.runtime._compat import check_transformers_version, transformers_supported

    assert transformers_supported("5.23.0") and not transformers_supported("5.19.0")
    with pytest.raises(ImportError, match=r"transformers>=5\.23\.0,<5\.24.*5\.19\.0 is installed"):
        check_transformers_version("5.19.0")
