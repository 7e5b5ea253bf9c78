"""The selection step's cost: time and device->host syncs of everything compression adds after the vision tower
(positions, layer-0 features, scores, top-k, gather), at batch 1 x 1 image and batch 8 x 4 images. The syncs of
the stock ``get_rope_index`` (which every stock Qwen prefill runs too) are counted apart.

Runs against whatever ``hf_tokcomp`` is importable, so the same script measures two versions side by side:

    python benchmarks/selection_overhead.py --out benchmarks/results/selection_overhead_after.json
    PYTHONPATH=/path/to/old/checkout python benchmarks/selection_overhead.py --out ..._before.json

Syncs are counted on any device (CPU included) as the operations that force one on an accelerator: ``.item()``,
``.tolist()``, ``.cpu()``, ``bool()/int()/float()`` of a tensor, ``nonzero`` and boolean-mask indexing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import hf_tokcomp

try:  # the layout of wave 2, then that of wave 1
    from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs, tiny_qwen_config
except ImportError:  # pragma: no cover - the older checkout
    from hf_tokcomp.tiny import make_qwen_inputs, tiny_qwen_config

_SYNCS = {"item", "tolist", "cpu", "__bool__", "__int__", "__float__", "nonzero", "masked_select"}


class SyncCounter(TorchFunctionMode):
    """Counts the tensor operations that make the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _SYNCS:
            self.count += 1
        elif name in ("__getitem__", "__setitem__", "index_put_") and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in _flat(args[1:2])
        ):
            self.count += 1
        return func(*args, **kwargs)


def _flat(items):
    for item in items:
        if isinstance(item, (tuple, list)):
            yield from _flat(item)
        else:
            yield item


def measure(batch: int, images: int, repeats: int, hidden: int) -> dict:
    torch.manual_seed(0)
    config = tiny_qwen_config("qwen2_vl", hidden_size=hidden, num_layers=1)
    model = hf_tokcomp.Qwen2VLForConditionalGeneration(config).eval()
    compressor = hf_tokcomp.TokenCompressor(hf_tokcomp.TokenCompressorConfig(base_model_type="qwen2_vl")).eval()
    model.compressor, model.config.token_keep = compressor, 0.25
    parts = [("text", [5, 6])]
    for i in range(images):
        parts += [("image", (8, 8)), ("text", [7 + i])]
    parts += [("text", [20, 21, 22])]
    inputs = make_qwen_inputs([parts] * batch, config)
    visual = {k: inputs.get(k) for k in model._tokcomp_visual_keys}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        merged = model._tokcomp_merge(ids, visual)
        model._tokcomp_select(merged, ids, mask, None, None, visual)  # warm-up
        counter, positions = SyncCounter(), SyncCounter()
        with counter:
            model._tokcomp_select(merged, ids, mask, None, None, visual)
        with positions:  # the stock M-RoPE index (get_rope_index), which the stock prefill runs as well
            model._tokcomp_positions(ids, mask, visual, None)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model._tokcomp_select(merged, ids, mask, None, None, visual)
            times.append(time.perf_counter() - start)
    return {
        "batch": batch,
        "images_per_sample": images,
        "segments": batch * images,
        "sequence_length": int(ids.shape[1]),
        "host_syncs": counter.count,
        "host_syncs_stock_positions": positions.count,
        "host_syncs_selection": counter.count - positions.count,
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats per shape (default: 30)")
    parser.add_argument("--hidden", type=int, default=256, help="LLM hidden size (default: 256)")
    args = parser.parse_args(argv)
    rows = [measure(b, i, args.repeats, args.hidden) for b, i in ((1, 1), (8, 4))]
    result = {"hf_tokcomp": hf_tokcomp.__file__, "torch_threads": torch.get_num_threads(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(
            f"batch {row['batch']} x {row['images_per_sample']} images ({row['segments']} segments): "
            f"{row['host_syncs_selection']} host syncs in the selection (+{row['host_syncs_stock_positions']} in the "
            f"stock M-RoPE index), median {row['median_ms']:.2f} ms "
            f"(min {row['min_ms']:.2f}, max {row['max_ms']:.2f}, n={row['repeats']})"
        )


if __name__ == "__main__":
    main()
