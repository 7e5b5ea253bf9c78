"""Fixtures of the vLLM plugin's tests (run in the vLLM environment, ``make test-vllm``).

The reference is produced by hf_tokcomp's transformers classes in the MAIN environment (its python is
``HF_TOKCOMP_MAIN_PYTHON``, default ``.venv/bin/python``): this environment holds vLLM's older transformers.
Each vLLM engine runs in its own process (``run_vllm.py``), as a server would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_tokcomp.vllm.checkpoint import use_stock_processor

HERE = Path(__file__).parent
ROOT = HERE.parent
ORGANISM = ROOT / "hf_tokcomp" / "organism" / "weights"
#: the (selector, keep) cells the engines are compared on
CELLS = (("uniform", 1.0), ("uniform", 0.5), ("divprune", 0.25), ("attention", 0.25), ("learned", 0.25))
#: the cells of the tiny checkpoints per family
TINY_CELLS = {"qwen2_5": ("uniform@0.5", "attention@0.25"), "qwen3": ("uniform@0.5", "attention@0.25")}
#: the shipped organism compressor (the `learned` cells)
COMPRESSOR = ROOT / "hf_tokcomp" / "organism" / "compressor"


def _main_python() -> str:
    python = os.environ.get("HF_TOKCOMP_MAIN_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    if not Path(python).is_file():
        pytest.fail(
            f"the main environment's python {python} is missing: run `make setup` (or set HF_TOKCOMP_MAIN_PYTHON)"
        )
    return python


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """``(prompts.json path, reference results)`` from hf_tokcomp's transformers classes."""
    out = tmp_path_factory.mktemp("reference")
    cells = [f"{s}@{k}" for s, k in CELLS]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [_main_python(), str(HERE / "reference_hf.py"), "--out", str(out), "--cells", *cells]
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    return out / "prompts.json", json.loads((out / "reference.json").read_text())


@pytest.fixture(scope="session")
def organism_dir(tmp_path_factory) -> Path:
    """The shipped organism with the stock processor classes vLLM loads (hf_tokcomp ships an image-only
    processor class; vLLM's Qwen2-VL asks ``Qwen2VLProcessor`` for a video processor too)."""
    out = tmp_path_factory.mktemp("organism") / "weights"
    shutil.copytree(ORGANISM, out)
    use_stock_processor(out)
    return out


@pytest.fixture(scope="session")
def engine(organism_dir, reference, tmp_path_factory):
    """``engine(arch=..., keep=..., selector=..., max_batched_tokens=..., image_limit=..., prefix_caching=...)`` ->
    the run's results (cached). ``selector="learned"`` serves the shipped organism compressor."""
    prompts, _ = reference
    folder = tmp_path_factory.mktemp("engines")
    cache: dict[tuple, dict] = {}

    def run(
        arch: str = "TokCompQwen2VLForConditionalGeneration",
        keep: float = 1.0,
        selector: str = "uniform",
        max_batched_tokens: int = 2048,
        image_limit: int = 2,
        prefix_caching: bool = True,
        model: Path | None = None,
        prompt_file: Path | None = None,
    ) -> dict:
        key = (arch, keep, selector, max_batched_tokens, image_limit, prefix_caching, model, prompt_file)
        if key not in cache:
            out = folder / f"run{len(cache)}.json"
            command = [
                sys.executable,
                str(HERE / "run_vllm.py"),
                "--model",
                str(model or organism_dir),
                "--prompts",
                str(prompt_file or prompts),
                "--out",
                str(out),
                "--arch",
                arch,
                "--keep",
                str(keep),
                "--selector",
                selector,
                "--max-batched-tokens",
                str(max_batched_tokens),
                "--image-limit",
                str(image_limit),
            ]
            command += ["--compressor", str(COMPRESSOR)] if selector == "learned" else []
            command += [] if prefix_caching else ["--no-prefix-caching"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                pytest.fail(f"vLLM run {key} failed:\n{done.stderr[-4000:]}")
            cache[key] = json.loads(out.read_text())
        return cache[key]

    return run


@pytest.fixture(scope="session", params=["qwen2_5", "qwen3"])
def tiny_family(request, reference, tmp_path_factory) -> tuple[str, Path, Path, dict]:
    """A tiny random Qwen2.5-VL or Qwen3-VL checkpoint in the real layout: ``(family, model dir, its prompts file,
    reference)``."""
    prompts, _ = reference
    family = request.param
    out = tmp_path_factory.mktemp(family)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [_main_python(), str(HERE / "tiny_reference.py"), "--family", family, "--prompts", str(prompts),
               "--out", str(out), "--cells", *TINY_CELLS[family]]  # fmt: skip
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    reference_json = json.loads((out / "reference.json").read_text())
    return family, out / "model", prompts.parent / f"prompts_{family}.json", reference_json
