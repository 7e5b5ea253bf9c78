"""Speed and memory of compressed prefill and decoding against the stock model and FastV, measured in one run.

Every (method, keep, batch) cell runs in a fresh worker process (so peak memory is its own) on the same
randomly initialised model (real widths, optionally fewer layers) and the same prompt: about ``visual_tokens``
visual tokens in the model's own layout (``bench_models.py``) and ``text_tokens`` question tokens per sample.
Per cell, after warm-up, the medians and inter-quartile ranges of: the vision tower; time to first token (TTFT:
``generate`` with one new token, FastV's own loop for FastV); the LLM prefill alone (FastV: its layers with
the scoring at layer K); decode tokens/s; plus peak memory, KV-cache bytes and counted prefill FLOPs
(``torch.utils.flop_counter``). ``python benchmarks/speed.py --help`` / ``tokcomp bench --help``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .models import BENCH_MODELS, llava_image_for
from .report import headline, markdown, plot

__all__ = [
    "BenchSpec",
    "run_benchmark",
    "cell_count",
    "fastv_keep_for_equal_tokens",
    "add_ratios",
    "markdown",
    "headline",
    "plot",
]


@dataclass
class BenchSpec:
    """One benchmark run (all cells share it)."""

    config: str = "qwen2-vl-2b"
    llm_layers: int = 6
    vision_layers: int = 1
    visual_tokens: int = 1024
    text_tokens: int = 40
    batch_sizes: tuple[int, ...] = (1, 8)
    batch_visual_tokens: dict[int, int] = field(default_factory=dict)  # per-batch-size override of visual_tokens
    keeps: tuple[float, ...] = (0.75, 0.5, 0.25, 0.1)
    fastv_k: int = 2
    new_tokens: int = 16
    warmup: int = 1
    repeats: int = 3
    dtype: str = "float32"
    attn: str = "sdpa"
    device: str = "cpu"

    def visual_for(self, batch: int) -> int:
        return int(self.batch_visual_tokens.get(batch, self.visual_tokens))

    def check(self) -> None:
        """Raise a ValueError naming the first bad field."""
        if self.config not in BENCH_MODELS:
            raise ValueError(f"`config`={self.config!r} is not a benchmark model; choose one of {sorted(BENCH_MODELS)}")
        fewest = BENCH_MODELS[self.config].min_vision_layers
        if self.vision_layers < fewest:
            raise ValueError(f"`vision_layers`={self.vision_layers}: {self.config} needs at least {fewest}")
        if self.llm_layers <= self.fastv_k:
            raise ValueError(
                f"`llm_layers`={self.llm_layers} must exceed FastV's K={self.fastv_k} (FastV prunes after layer K)"
            )
        if not all(0 < k <= 1 for k in self.keeps):
            raise ValueError(f"`keeps` must lie in (0, 1], got {list(self.keeps)}")
        least = {"visual_tokens": 1, "text_tokens": 1, "new_tokens": 2, "repeats": 2, "warmup": 0, "fastv_k": 1}
        for name, low in least.items():
            if getattr(self, name) < low:
                raise ValueError(f"`{name}`={getattr(self, name)} must be at least {low}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"`batch_sizes` must be positive integers, got {list(self.batch_sizes)}")
        for batch, visual in self.batch_visual_tokens.items():
            if visual < 1:
                raise ValueError(f"`batch_visual_tokens[{batch}]`={visual} must be at least 1")
        if BENCH_MODELS[self.config].family == "llava_onevision":  # raises if one image cannot hold the tokens
            config = BENCH_MODELS[self.config].build_config(1, 1)
            for batch in self.batch_sizes:
                llava_image_for(self.visual_for(batch), config)
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"`dtype`={self.dtype!r} is not a torch dtype; use float32 (CPU) or bfloat16 (GPU)")


def fastv_keep_for_equal_tokens(keep: float, visual: int, text: int, layers: int, k: int) -> float | None:
    """FastV's visual keep after layer ``k`` that gives the same per-layer average token count as input-stage
    pruning at ``keep`` (so about equal prefill FLOPs); None if it would have to drop more than every token."""
    full, ours = visual + text, text + keep * visual
    after_k = (layers * ours - k * full) / (layers - k)
    fraction = (after_k - text) / visual
    return None if fraction <= 0 else min(1.0, fraction)


def _timed(fn: Callable[[], Any], spec: BenchSpec) -> dict[str, float]:
    for _ in range(spec.warmup):
        fn()
    times = []
    for _ in range(spec.repeats):
        if spec.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if spec.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"median": statistics.median(times), "iqr": q3 - q1}


def _kv_bytes(cache) -> int:
    """Bytes of the attention layers' keys and values (Qwen3.5's linear-attention layers keep a recurrent state of
    fixed size instead, which pruning does not change: not counted)."""
    tensors = [getattr(layer, name, None) for layer in cache.layers for name in ("keys", "values")]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _flops(fn: Callable[[], Any]) -> int:
    from ..evaluation.flops import flop_counter

    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


class _Clock(StoppingCriteria):
    """Calls ``tick`` after every generated token and never stops generation."""

    def __init__(self, tick: Callable[[], None]) -> None:
        self.tick = tick

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.tick()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak(spec: BenchSpec) -> float:
    """Start a fresh peak-memory window; returns the memory in use now (MB), the baseline of :func:`_peak_mb`.

    GPU: ``torch.cuda`` peak statistics. CPU (Linux): writing "5" to ``/proc/self/clear_refs`` resets the
    process's resident-set high-water mark (``VmHWM``) to its current size, so the model's own set-up peak
    does not hide the peak of the measured work."""
    if spec.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as err:
        raise RuntimeError(
            f"cannot reset the peak resident set size ({err}); the CPU benchmark needs Linux's /proc/self/clear_refs"
        ) from err
    return _proc_status_kb("VmRSS") / 1024


def _peak_mb(spec: BenchSpec, baseline: float) -> float:
    """Peak memory above ``baseline`` since :func:`_reset_peak` (MB)."""
    if spec.device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20 - baseline
    return _proc_status_kb("VmHWM") / 1024 - baseline


def worker(spec: BenchSpec, method: str, keep: float, batch: int) -> dict[str, Any]:
    """Measure one cell (runs inside a fresh process)."""
    from ..evaluation.fastv import fastv_generate, fastv_prefill, fastv_prepare
    from ..runtime.compressor import TokenCompressor, TokenCompressorConfig
    from ..runtime.stock_call import stock_forward_on

    torch.manual_seed(0)
    bench_model = BENCH_MODELS[spec.config]
    config = bench_model.build_config(spec.llm_layers, spec.vision_layers)
    config._attn_implementation = spec.attn
    dtype = getattr(torch, spec.dtype)
    with torch.device(spec.device):  # weights initialised where they run (a 7B model on the CPU takes minutes)
        model = bench_model.model_class(config)(config)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.compressor = TokenCompressor(TokenCompressorConfig()).to(spec.device).eval()
    model.config.token_keep = keep if method == "ours" else 1.0
    with torch.no_grad():
        inputs = bench_model.make_inputs(model, batch, spec.visual_for(batch), spec.text_tokens)
    inputs = {k: v.to(spec.device, dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
    visual_keys = {k: inputs.get(k) for k in model._tokcomp_visual_keys}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    baseline = _reset_peak(spec)

    def generate(new: int, on_token: Callable[[], None] | None = None):
        if method == "fastv":
            hook = None if on_token is None else (lambda _token: on_token())
            return fastv_generate(model, inputs, keep, k=spec.fastv_k, max_new_tokens=new, on_token=hook)
        criteria = None if on_token is None else StoppingCriteriaList([_Clock(on_token)])
        return model.generate(
            **inputs,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            return_dict_in_generate=True,
            stopping_criteria=criteria,
        )

    def decode_step_seconds() -> float:
        """Median time between consecutive new tokens (the first token, i.e. the prefill, excluded)."""
        stamps: list[float] = []
        generate(spec.new_tokens, lambda: stamps.append(time.perf_counter()))
        return statistics.median(b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True))

    with torch.no_grad():
        vision = _timed(lambda: bench_model.vision(model, inputs), spec)
        vision_flops = _flops(lambda: bench_model.vision(model, inputs))
        ttft = _timed(lambda: generate(1), spec)
        decode = statistics.median(decode_step_seconds() for _ in range(spec.warmup + spec.repeats))
        # peak of the user's path (vision, prefill, decoding); the diagnostics below hold a second KV cache
        peak_mb = _peak_mb(spec, baseline)
        first = generate(1)
        prefill_flops = _flops(lambda: generate(1)) - vision_flops
        row: dict[str, Any] = {
            "method": method,
            "keep": keep,
            "batch": batch,
            "prompt_tokens": int(mask[0].sum()),
            "visual_tokens": int((ids[0] == config.image_token_id).sum()),
            "vision": vision,
            "ttft": ttft,
            "decode_tokens_per_s": 1.0 / decode,  # per sequence
            "prefill_flops": prefill_flops,
        }
        if method == "fastv":
            row["kept_tokens"] = int(first.keep[0].sum())
            cache = first.cache
            row["cache_tokens_per_layer"] = first.cache_tokens
            layers = config.get_text_config().num_hidden_layers
            row["avg_tokens_per_layer"] = (
                spec.fastv_k * row["prompt_tokens"] + (layers - spec.fastv_k) * row["kept_tokens"]
            ) / layers
            merged, full = fastv_prepare(model, inputs)
            lm, head = model._tokcomp_text_model(), model._tokcomp_lm_head()

            def fastv_llm_prefill():  # FastV's scoring at layer K is inside its LLM, so it is timed here
                head(lm.norm(fastv_prefill(model, merged, full, keep, spec.fastv_k).hidden[:, -1:]))

            row["llm_prefill"] = _timed(fastv_llm_prefill, spec)
        else:
            cache = first.past_key_values
            merged = model._tokcomp_merge(ids, visual_keys)
            batch_inputs = model._tokcomp_select(merged, ids, mask, None, None, visual_keys)

            def llm_prefill():  # the stock forward on the (compressed) batch: DeepStack included, one logit row
                stock_forward_on(model, batch_inputs, use_cache=True, logits_to_keep=1)

            row["kept_tokens"] = int(batch_inputs.attention_mask[0].sum())
            row["avg_tokens_per_layer"] = row["kept_tokens"]
            row["llm_prefill"] = _timed(llm_prefill, spec)
            if method == "ours":
                row["overhead"] = _timed(
                    lambda: model._tokcomp_select(merged, ids, mask, None, None, visual_keys), spec
                )
        # KV bytes of the prompt (FastV: the first K layers hold every token, the others the kept ones)
        row["kv_bytes"] = _kv_bytes(cache)
        row["peak_mb"] = peak_mb
    return row


def _cell(spec: BenchSpec, method: str, keep: float, batch: int) -> dict[str, Any]:
    payload = json.dumps({"spec": asdict(spec), "method": method, "keep": keep, "batch": batch})
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-m", "hf_tokcomp.bench.speed", payload], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker {method}@{keep} (batch {batch}) failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _no_fastv(spec: BenchSpec) -> bool:
    from ..evaluation.fastv import fastv_unsupported

    return fastv_unsupported(BENCH_MODELS[spec.config].build_config(spec.llm_layers, spec.vision_layers))


def cell_count(spec: BenchSpec) -> int:
    """Cells :func:`run_benchmark` runs at most: per batch size the stock cell, ours at each keep, and FastV at each
    keep unless the model has linear-attention layers (FastV's equal-token keep may still rule one out)."""
    return len(spec.batch_sizes) * (1 + (1 if _no_fastv(spec) else 2) * len(spec.keeps))


def run_benchmark(
    spec: BenchSpec, progress: bool = True, on_cell: Callable[[list[dict[str, Any]]], None] | None = None
) -> dict[str, Any]:
    """All cells of ``spec`` side by side, with the ratios (speed-ups vs stock and vs their ideals).
    ``on_cell(rows)`` is called after every cell with the rows so far (e.g. to save them as they come)."""
    from tqdm.auto import tqdm

    spec.check()

    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_cell is not None:
            on_cell(rows)

    no_fastv = _no_fastv(spec)
    if no_fastv and progress:
        print(f"{spec.config}: no FastV cells (its linear-attention layers are not run by the FastV loop)")
    bar = tqdm(total=cell_count(spec), desc="benchmark cells", disable=not progress)
    for batch in spec.batch_sizes:
        stock = _cell(spec, "stock", 1.0, batch)
        add(stock)
        bar.update()
        for keep in spec.keeps:
            add(_cell(spec, "ours", keep, batch))
            bar.update()
        # FastV's keep from the prompt as built (visual and other tokens counted by the stock cell)
        visual, other = stock["visual_tokens"], stock["prompt_tokens"] - stock["visual_tokens"]
        for keep in [] if no_fastv else spec.keeps:
            fv = fastv_keep_for_equal_tokens(keep, visual, other, spec.llm_layers, spec.fastv_k)
            if fv is not None:
                add(_cell(spec, "fastv", round(fv, 4), batch))
            bar.update()
    bar.close()
    device = (
        torch.cuda.get_device_name() if spec.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    )
    result = {"spec": asdict(spec), "device": device, "torch": torch.__version__, "rows": add_ratios(rows)}
    if no_fastv:
        result["fastv"] = "not run: FastV is not implemented for linear-attention (Gated DeltaNet) layers"
    return result


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add to each row its ratios to the stock row of its batch: speed-ups, their ideals, FLOPs, decode rate and
    overhead share (ideal LLM prefill speed-up N / N'; ideal TTFT (T_vis + T_llm) / (T_vis + T_llm N' / N))."""
    for row in rows:
        base = next(r for r in rows if r["method"] == "stock" and r["batch"] == row["batch"])
        n, n_kept = base["prompt_tokens"], row["avg_tokens_per_layer"]
        t_vis, t_llm = base["vision"]["median"], base["llm_prefill"]["median"]
        row["llm_speedup"] = t_llm / row["llm_prefill"]["median"]
        row["llm_ideal"] = n / n_kept
        row["ttft_speedup"] = base["ttft"]["median"] / row["ttft"]["median"]
        row["ttft_ideal"] = (t_vis + t_llm) / (t_vis + t_llm * n_kept / n)
        row["flops_ratio"] = row["prefill_flops"] / base["prefill_flops"]
        row["decode_ratio"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        if "overhead" in row:
            row["overhead_share"] = row["overhead"]["median"] / t_llm
    return rows


def main(argv: list[str] | None = None) -> None:
    import argparse
    import shlex

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--plan-lines"]:  # one process checks many runs: each line of the file is one run's arguments
        for line in Path(argv[1]).read_text().splitlines():
            main([*shlex.split(line), "--plan"])
        return None

    parser = argparse.ArgumentParser(prog="tokcomp bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="qwen2-vl-2b", choices=sorted(BENCH_MODELS), help="model widths")
    real = ", ".join(f"{name} {m.real_layers[0]}/{m.real_layers[1]}" for name, m in BENCH_MODELS.items())
    parser.add_argument("--llm-layers", type=int, default=6, help="LLM layers (CPU default: 6)")
    parser.add_argument("--vision-layers", type=int, default=None, help="vision blocks (default: the fewest, 1 or 2)")
    parser.add_argument("--full-depth", action="store_true", help=f"the real LLM/vision layer counts ({real})")
    parser.add_argument(
        "--visual-tokens", type=int, default=1024, help="visual tokens per sample (a target: see bench_models.py)"
    )
    parser.add_argument("--text-tokens", type=int, default=40, help="question tokens after the visual tokens")
    batch8_help = "visual tokens per sample at batch 8 (default: --visual-tokens)"
    parser.add_argument("--batch8-visual-tokens", type=int, default=None, help=batch8_help)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.75, 0.5, 0.25, 0.1])
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated for the decode rate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float32", help="float32 (CPU) or bfloat16 (GPU)")
    parser.add_argument("--attn", default="sdpa", help="sdpa, eager or flash_attention_2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed_cpu"), help="OUT.json/.md/.png")
    parser.add_argument("--plan", action="store_true", help="check the settings and print the cells, run nothing")
    parser.epilog = "--plan-lines FILE (alone): --plan for each line of FILE, one run's arguments per line"
    args = parser.parse_args(argv)
    model = BENCH_MODELS[args.config]
    llm_layers, vision_layers = model.real_layers if args.full_depth else (args.llm_layers, args.vision_layers)
    spec = BenchSpec(
        config=args.config,
        llm_layers=llm_layers,
        vision_layers=model.min_vision_layers if vision_layers is None else vision_layers,
        visual_tokens=args.visual_tokens,
        text_tokens=args.text_tokens,
        batch_sizes=tuple(args.batch_sizes),
        keeps=tuple(args.keeps),
        batch_visual_tokens={} if args.batch8_visual_tokens is None else {8: args.batch8_visual_tokens},
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        dtype=args.dtype,
        attn=args.attn,
        device=args.device,
    )
    try:
        spec.check()
    except ValueError as err:
        parser.error(str(err))
    if args.plan:  # the cells of run_benchmark, without running them
        return print(json.dumps({"plan": asdict(spec), "cells": cell_count(spec), "out": str(args.out)}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.json")  # the cells done so far: an interrupted run keeps them

    def save(rows: list[dict[str, Any]]) -> None:
        partial.write_text(json.dumps({"spec": asdict(spec), "rows": rows}, indent=2))

    result = run_benchmark(spec, on_cell=save)
    partial.unlink(missing_ok=True)
    text = markdown(result)
    print(text)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(text + "\n")
    plot(result, args.out.with_suffix(".png"))


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # worker mode (see _cell)
        job = json.loads(sys.argv[1])
        spec = BenchSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["spec"].items()})
        spec.batch_visual_tokens = {int(k): v for k, v in spec.batch_visual_tokens.items()}
        print(json.dumps(worker(spec, job["method"], job["keep"], job["batch"])))
    else:
        main()
