"""benchmarks/gpu.sh, the real-size GPU run, checked without a GPU: every setting passes the benchmark's own
validation and the planned cells are the ones the script promises (a lent GPU's minutes are never lost to a bad
argument)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: per model: LLM layers at full depth, and cells per batch size (stock + ours at 2 keeps + FastV at 2 keeps;
#: Qwen3.5 has no FastV cells)
MODELS = {
    "qwen2-vl-7b": (28, 5),
    "qwen3-vl-8b": (36, 5),
    "internvl3.5-8b": (36, 5),
    "qwen3.5-27b": (64, 3),
    "qwen3-vl-30b-a3b": (48, 5),
    "llava-onevision-7b": (28, 5),
}


def test_the_gpu_script_plans_every_familys_full_depth_bf16_cells_on_cuda(tmp_path):
    env = dict(os.environ, PLAN="1", PY=sys.executable, OUT=str(tmp_path), OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    plans = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"plan"')]
    expected = [(model, batch, cells) for batch in (1, 8) for model, (_, cells) in MODELS.items()]
    assert [(p["plan"]["config"], p["plan"]["batch_sizes"], p["cells"]) for p in plans] == [
        (model, [batch], cells) for model, batch, cells in expected
    ]
    for p in plans:
        spec = p["plan"]
        assert (spec["device"], spec["dtype"]) == ("cuda", "bfloat16")
        assert spec["llm_layers"] == MODELS[spec["config"]][0]  # full depth
        assert spec["keeps"] == [0.5, 0.25] and spec["visual_tokens"] == 1024
        assert Path(p["out"]).parent == tmp_path and Path(p["out"]).name.startswith("speed_gpu_plan_")
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written
