"""benchmarks/gpu.sh, the real-size GPU run, checked without a GPU: every setting passes the benchmark's own
validation and the planned cells are the ones the script promises (a lent GPU's minutes are never lost to a bad
argument)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_script_plans_full_depth_bf16_cells_on_cuda(tmp_path):
    env = dict(os.environ, PLAN="1", PY=sys.executable, OUT=str(tmp_path), OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    plans = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"plan"')]
    assert [(p["plan"]["config"], p["cells"]) for p in plans] == [("qwen2-vl-7b", 14), ("llava-onevision-7b", 5)]
    for p in plans:
        spec = p["plan"]
        assert (spec["device"], spec["dtype"], spec["llm_layers"]) == ("cuda", "bfloat16", 28)
        assert Path(p["out"]).parent == tmp_path
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written
