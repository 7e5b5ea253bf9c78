"""Each selector's own cost on one segment of 1k and 4k visual tokens at Qwen2-VL-2B's width (D = 1536): wall time
(median of repeats, this machine) and the matrix-multiply FLOPs torch's counter sees, at keep 0.25.

    python benchmarks/selector_overhead.py --out benchmarks/results/selector_overhead_cpu.json

The inputs are random (embeddings, features, a 32-token instruction); the selection cost does not depend on the
values. The layer-0 features themselves (shared by every method) are not included: see selection_overhead.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from hf_tokcomp import TokenCompressor, TokenCompressorConfig
from hf_tokcomp.runtime.selection import keep_count
from hf_tokcomp.runtime.selectors import SELECTORS, SegmentBatch


def make_batch(n: int, dim: int, rows: int, layer0, seed: int = 0) -> SegmentBatch:
    gen = torch.Generator().manual_seed(seed)
    side = int(n**0.5)
    return SegmentBatch(
        features=torch.rand(1, n, generator=gen),
        embeds=torch.randn(1, n, dim, generator=gen),
        mask=torch.ones(1, n, dtype=torch.bool),
        lengths=[n],
        grids=[(1, side, n // side)] if side * (n // side) == n else [(1, 1, n)],
        query=torch.randn(1, rows, dim, generator=gen),
        query_mask=torch.ones(1, rows, dtype=torch.bool),
        layer0=layer0,
        compressor=TokenCompressor(TokenCompressorConfig()).eval(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096], help="segment sizes (default 1k, 4k)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (default 3)")
    parser.add_argument("--keep", type=float, default=0.25, help="token_keep (default 0.25)")
    args = parser.parse_args(argv)
    dim = 1536
    config = Qwen2Config(hidden_size=dim, intermediate_size=64, num_attention_heads=12, num_key_value_heads=2)
    layer0 = Qwen2DecoderLayer(config, 0).eval()
    rows = []
    with torch.no_grad():
        for n in args.tokens:
            batch = make_batch(n, dim, 32, layer0)
            counts = [keep_count(args.keep, n)]
            for name, cls in SELECTORS.items():
                selector = cls()
                with FlopCounterMode(display=False) as counter:
                    selector.select(batch, counts)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    selector.select(batch, counts)
                    times.append(time.perf_counter() - start)
                rows.append(
                    {
                        "selector": name,
                        "tokens": n,
                        "kept": counts[0],
                        "median_ms": 1e3 * statistics.median(times),
                        "min_ms": 1e3 * min(times),
                        "max_ms": 1e3 * max(times),
                        "matmul_gflops": counter.get_total_flops() / 1e9,
                    }
                )
                r = rows[-1]
                print(
                    f"{name:>9} n={n:5d} k={r['kept']:4d}: {r['median_ms']:9.1f} ms "
                    f"(min {r['min_ms']:.1f}, max {r['max_ms']:.1f}), {r['matmul_gflops']:.2f} GFLOP"
                )
    result = {"device": "cpu", "threads": torch.get_num_threads(), "dim": dim, "keep": args.keep, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
