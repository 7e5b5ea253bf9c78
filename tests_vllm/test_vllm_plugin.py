"""hf_tokcomp's vLLM plugin against hf_tokcomp's transformers classes and the stock model's positions."""

from __future__ import annotations

import json

import pytest

from hf_tokcomp.runtime.selection import keep_count
from hf_tokcomp.vllm import register

ATOL = 1e-4  # first-token log-probabilities, float32 on both sides (measured: <= 2e-5 with the same kept tokens)


def _agree(run: dict, ref: dict, prompts: list[int]) -> None:
    """Same greedy tokens and first-token log-probabilities on ``prompts``."""
    for i in prompts:
        assert run["tokens"][i] == ref["tokens"][i], f"prompt {i}"
        best = max(ref["first_logprobs"][i], key=ref["first_logprobs"][i].get)
        assert abs(run["first_logprobs"][i][best] - ref["first_logprobs"][i][best]) < ATOL, f"prompt {i}"


def _kept_sets(run: dict) -> set[tuple[int, ...]]:
    return {tuple(k) for k in run["kept"]}


def _tokens(image) -> int:
    """Visual tokens of an image file for the organism's processor: one per 28 px cell."""
    from PIL import Image

    width, height = Image.open(image).size
    return (width // 28) * (height // 28)


def test_keep_1_is_vllms_unpruned_output(engine):
    stock, ours = engine(arch="stock"), engine(keep=1.0)
    assert ours["tokens"] == stock["tokens"]
    assert ours["prompt_lengths"] == stock["prompt_lengths"]


@pytest.mark.parametrize("max_batched_tokens", [2048, 16], ids=["whole-prefill", "chunked-16"])
def test_uniform_pruning_equals_the_transformers_classes(engine, reference, max_batched_tokens):
    prompts, results = reference  # prompts.json and the transformers results
    ref = results["uniform@0.5"]
    run = engine(keep=0.5, selector="uniform", max_batched_tokens=max_batched_tokens)
    _agree(run, ref, range(len(ref["tokens"])))
    # the same tokens kept of every image (vLLM encodes each distinct image once, in its own batches: the two-image
    # prompts reuse images of the first prompts, so compared as sets)
    assert _kept_sets(run) == {tuple(k) for prompt in ref["kept"] for k in prompt}
    # the prompt shrinks by exactly the pruned tokens of every image (one per 28 px cell: 144 for the organism's
    # 336 px images, 64 for the 224 px noise images)
    stock = engine(arch="stock")
    sizes = [[_tokens(prompts.parent / name) for name in p["images"]] for p in json.loads(prompts.read_text())]
    for kept, n, length, unpruned in zip(
        ref["kept"], sizes, run["prompt_lengths"], stock["prompt_lengths"], strict=True
    ):
        assert unpruned - length == sum(t - len(k) for k, t in zip(kept, n, strict=True))
        assert [len(k) for k in kept] == [keep_count(0.5, t) for t in n]


@pytest.mark.parametrize("max_batched_tokens", [2048, 16], ids=["whole-prefill", "chunked-16"])
def test_divprune_equals_the_transformers_classes(engine, reference, max_batched_tokens):
    """Exact on images whose tokens are all distinct (noise). On the organism's plain backgrounds many tokens are
    near-identical (cosine distance ~1e-7 apart): which of them DivPrune keeps is decided by float noise, which
    differs between vLLM's and transformers' vision kernels (their outputs differ by ~1e-5), so there the kept
    background tokens differ: on the current organism (10-24 objects, 36 of 144 tokens kept) no image kept the
    same set in both engines, and after such a tie the greedy max-min order can leave out another object, so the
    answers may differ too. Exactness is therefore asserted on the noise images (the same code path); the uniform
    test above covers the organism images exactly."""
    prompts_file, results = reference
    kinds = [p["kind"] for p in json.loads(prompts_file.read_text())]
    ref = results["divprune@0.25"]
    run = engine(keep=0.25, selector="divprune", max_batched_tokens=max_batched_tokens)
    noise = [i for i, kind in enumerate(kinds) if kind == "noise"]
    assert len(noise) >= 20
    _agree(run, ref, noise)
    assert {tuple(ref["kept"][i][0]) for i in noise} <= _kept_sets(run)


@pytest.mark.parametrize("selector", ["attention", "learned"])
@pytest.mark.parametrize("max_batched_tokens", [2048, 16], ids=["whole-prefill", "chunked-16"])
def test_question_aware_pruning_equals_the_transformers_classes(engine, reference, selector, max_batched_tokens):
    """Every prompt (organism, noise, two-image prompts, the same images under other questions, and one image twice
    in a prompt), one engine, prefix cache on: the same greedy tokens, first-token log-probabilities and kept tokens
    as the transformers classes (layer-0 attention, or the shipped compressor), at keep 0.25."""
    prompts_file, results = reference
    ref = results[f"{selector}@0.25"]
    run = engine(keep=0.25, selector=selector, max_batched_tokens=max_batched_tokens, image_limit=2)
    prompts = json.loads(prompts_file.read_text())
    assert run["served"] == list(range(len(prompts))) and len(prompts) == 49
    assert sum(len(p["images"]) == 2 for p in prompts) == 5
    _agree(run, ref, range(len(prompts)))
    # one encode per (prompt, image): an image's kept tokens depend on its prompt and on the prompt's other image
    assert sorted(map(tuple, run["kept"])) == sorted(tuple(k) for prompt in ref["kept"] for k in prompt)
    # the same image under another question keeps other tokens: the caches did not share them
    same = [i for i, p in enumerate(prompts) if p["kind"] == "same_image"]
    assert any(ref["kept"][i] != ref["kept"][int(prompts[i]["images"][0][6:8])] for i in same)


#: the plugin's architecture per tiny family
TINY_ARCHS = {"qwen2_5": "TokCompQwen2_5_VLForConditionalGeneration", "qwen3": "TokCompQwen3VLForConditionalGeneration"}


@pytest.mark.parametrize("cell", [0, 1])
def test_tiny_checkpoints_pruning_equals_the_transformers_classes(engine, tiny_family, cell):
    """Tiny random checkpoints in the real layouts: Qwen2.5-VL (window attention in the vision tower; uniform 0.5,
    attention 0.25) and Qwen3-VL (deepstack, interleaved M-RoPE, q / k norms; the same cells): the plugin's
    architecture gives hf_tokcomp's class's tokens, first-token log-probabilities and kept tokens on 12 one-image
    prompts, 16-token prefill chunks."""
    family, model, prompt_file, ref = tiny_family
    name = list(ref)[cell]
    selector, keep = name.split("@")
    run = engine(arch=TINY_ARCHS[family], keep=float(keep), selector=selector,
                 image_limit=1, model=model, prompt_file=prompt_file, max_batched_tokens=16)  # fmt: skip
    _agree(run, ref[name], range(len(ref[name]["tokens"])))
    assert sorted(map(tuple, run["kept"])) == sorted(map(tuple, ref[name]["kept"]))
    assert len({tuple(t) for t in ref[name]["tokens"]}) > 1  # the random model's answers depend on the prompt


def test_pruning_changes_the_answers(engine, reference):
    """The cells above are not trivially equal: pruned runs differ from the unpruned reference somewhere."""
    _, results = reference
    assert engine(keep=0.5, selector="uniform")["tokens"] != results["uniform@1.0"]["tokens"]
    assert results["divprune@0.25"]["tokens"] != results["uniform@0.5"]["tokens"]


def test_register_is_idempotent():
    from vllm import ModelRegistry
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    register()
    wrapped = CPUModelRunner.load_model
    register()
    assert CPUModelRunner.load_model is wrapped
    from hf_tokcomp.vllm import ARCHITECTURE_NAMES
    from hf_tokcomp.vllm.models import ARCHITECTURES

    # the lazily registered names are exactly the classes the models module defines
    assert set(ARCHITECTURE_NAMES) == set(ARCHITECTURES) and len(ARCHITECTURES) == 3
    assert set(ARCHITECTURE_NAMES) <= set(ModelRegistry.get_supported_archs())


def test_torchvision_imports_next_to_the_cpu_torch():
    import torchvision  # noqa: F401  (the environment's .pth declared the missing op schemas)

    from hf_tokcomp.vllm._torchvision import declare_missing_ops

    assert declare_missing_ops() == []  # already declared (or torchvision's own ops are there)


def test_an_engine_that_accepts_videos_is_refused_at_start(organism_dir, reference):
    import subprocess
    import sys
    from pathlib import Path

    prompts, _ = reference
    script = Path(__file__).with_name("run_vllm.py")
    command = [sys.executable, str(script), "--model", str(organism_dir), "--prompts", str(prompts), "--out", "-",
               "--keep", "0.5", "--video-limit", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode != 0
    assert "prunes images only" in done.stderr and "limit_mm_per_prompt" in done.stderr
