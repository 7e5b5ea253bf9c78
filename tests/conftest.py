"""Shared fixtures: tiny stock Qwen models built in code (seeded), and their stock-saved checkpoints."""

from __future__ import annotations

import sys

import pytest
import torch
import transformers

import hf_tokcomp
from hf_tokcomp.testing.tiny_qwen3 import tiny_config

torch.set_num_threads(1)

FAMILIES = {
    "qwen2_vl": (transformers.Qwen2VLForConditionalGeneration, hf_tokcomp.Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": (transformers.Qwen2_5_VLForConditionalGeneration, hf_tokcomp.Qwen2_5_VLForConditionalGeneration),
    "qwen3_vl": (transformers.Qwen3VLForConditionalGeneration, hf_tokcomp.Qwen3VLForConditionalGeneration),
    "qwen3_vl_moe": (transformers.Qwen3VLMoeForConditionalGeneration, hf_tokcomp.Qwen3VLMoeForConditionalGeneration),
    "qwen3_5": (transformers.Qwen3_5ForConditionalGeneration, hf_tokcomp.Qwen3_5ForConditionalGeneration),
    "qwen3_5_moe": (transformers.Qwen3_5MoeForConditionalGeneration, hf_tokcomp.Qwen3_5MoeForConditionalGeneration),
}


@pytest.fixture(scope="session", params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def stock_checkpoint(tmp_path_factory, family):
    """(stock model, directory it was saved to with stock `save_pretrained`) for the family."""
    stock_cls, _ = FAMILIES[family]
    torch.manual_seed(0)
    stock = stock_cls(tiny_config(family)).eval()
    path = tmp_path_factory.mktemp(f"{family}_stock")
    stock.save_pretrained(path)
    return stock, path


@pytest.fixture()
def stock(stock_checkpoint):
    return stock_checkpoint[0]


@pytest.fixture()
def ours(stock_checkpoint, family):
    """Our class loaded from the stock checkpoint (training-free scores, no compression yet)."""
    _, ours_cls = FAMILIES[family]
    return ours_cls.from_pretrained(stock_checkpoint[1]).eval()


#: how a 2-process run of `python -m hf_tokcomp` is started on this CPU (gloo): torchrun, and accelerate's launcher
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "hf_tokcomp"],
    # accelerate's multi-process launcher (with `--cpu` it starts ONE process); without GPUs they use gloo
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    + ["-m", "hf_tokcomp"],
}


@pytest.fixture(params=list(LAUNCHERS))
def launcher(request) -> list[str]:
    """The command prefix of a 2-process ``python -m hf_tokcomp`` run (each launcher in turn)."""
    return LAUNCHERS[request.param]
