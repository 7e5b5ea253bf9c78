"""vLLM serving speed with hf_tokcomp's plugin against unpruned vLLM: requests/s and time to first token.

Run in the vLLM environment (``make test-vllm`` builds it)::

    .venv-vllm/bin/python benchmarks/vllm_throughput.py --out benchmarks/results/vllm_throughput_cpu

A Qwen2-VL-2B-width model (LLM 1536 wide, vision tower 1280 wide; ``--llm-layers`` / ``--vision-layers`` of
them, random weights: vLLM's ``load_format="dummy"``) with the organism's small word-level tokenizer (so the
vocabulary is 300 rows, not 151,936). Every request holds one distinct random-noise image of ``--image-size`` px
(448 px = 256 visual tokens) and a short question. Cells, one engine process each, the same prompts: stock vLLM,
and the plugin at ``--keeps`` with ``--selectors`` (``uniform``, ``divprune``, and the question-aware
``attention`` / ``learned``: the latter with an untrained compressor of the default shape, seeded, which
measures its cost only; the model has the organism's ``answer_start_ids``). Per cell: ``--requests`` requests
submitted at once with 1 new token (prefill-bound) and with ``--new-tokens`` new tokens (requests/s), and time to first
token as the median latency of single requests with 1 new token. One run, so no confidence interval: the spread
of the single-request latencies is printed beside their median. On a GPU: the same command with
``--dtype bfloat16`` and the real layer counts (``--llm-layers 28 --vision-layers 32``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hf_tokcomp.vllm.checkpoint import use_stock_processor

ROOT = Path(__file__).resolve().parents[1]
ORGANISM = ROOT / "hf_tokcomp" / "organism" / "weights"


def _model_dir(folder: Path, llm_layers: int, vision_layers: int, image_size: int) -> Path:
    """A config-only Qwen2-VL-2B-width checkpoint with the organism's tokenizer and a fixed image size."""
    out = folder / "model"
    out.mkdir(parents=True, exist_ok=True)
    organism = json.loads((ORGANISM / "config.json").read_text())
    ids = {k: organism[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    config = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        **ids,
        "bos_token_id": organism["text_config"]["bos_token_id"],
        "eos_token_id": organism["text_config"]["eos_token_id"],
        "text_config": {
            "model_type": "qwen2_vl_text",
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": llm_layers,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "vocab_size": organism["text_config"]["vocab_size"],
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            "tie_word_embeddings": True,
            "bos_token_id": organism["text_config"]["bos_token_id"],
            "eos_token_id": organism["text_config"]["eos_token_id"],
            "pad_token_id": organism["text_config"]["pad_token_id"],
        },
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": vision_layers,
            "embed_dim": 1280,
            "hidden_size": 1536,
            "mlp_ratio": 4,
            "num_heads": 16,
            "in_chans": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "tie_word_embeddings": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        (out / name).write_bytes((ORGANISM / name).read_bytes())
    (out / "processor_config.json").write_bytes((ORGANISM / "processor_config.json").read_bytes())
    (out / "hf_tokcomp.json").write_bytes((ORGANISM / "hf_tokcomp.json").read_bytes())  # answer_start_ids
    use_stock_processor(out, pixels=image_size**2)
    return out


def _cell(args: argparse.Namespace) -> dict:
    """One engine: the measurements of one cell (run in its own process)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import numpy as np
    from PIL import Image
    from vllm import LLM, SamplingParams

    overrides = {"load_format": "dummy"}
    if args.selector != "stock":
        arch = {"architectures": ["TokCompQwen2VLForConditionalGeneration"]}
        overrides["hf_overrides"] = {**arch, "token_keep": args.keep, "selector": args.selector}
        if args.selector == "learned":
            import torch

            from hf_tokcomp.runtime.compressor import TokenCompressor, TokenCompressorConfig

            torch.manual_seed(0)
            path = Path(args.model).parent / "compressor"
            TokenCompressor(TokenCompressorConfig(base_model_type="qwen2_vl")).save_pretrained(path)
            overrides["hf_overrides"]["compressor"] = str(path)
    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=2048,
        enforce_eager=True,
        limit_mm_per_prompt={"image": 1, "video": 0},
        seed=0,
        **overrides,
    )
    rng = np.random.default_rng(0)
    prompt = (
        "<|im_start|> user <|vision_start|> <|image_pad|> <|vision_end|> what shape is the red object ? <|im_end|> "
    )
    prompt += "<|im_start|> assistant "

    def requests(n: int, seed_offset: int) -> list[dict]:
        size = args.image_size
        images = [
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n + seed_offset)
        ]
        return [{"prompt": prompt, "multi_modal_data": {"image": image}} for image in images[seed_offset:]]

    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    many = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
    llm.generate(requests(2, 0), one, use_tqdm=False)  # warm-up
    result = {"selector": args.selector, "keep": args.keep}
    batch = requests(args.requests, 0)
    started = time.perf_counter()
    outputs = llm.generate(batch, one, use_tqdm=False)
    result["prefill_requests_per_s"] = args.requests / (time.perf_counter() - started)
    result["prompt_tokens"] = len(outputs[0].prompt_token_ids)
    batch = requests(args.requests, 0)
    started = time.perf_counter()
    llm.generate(batch, many, use_tqdm=False)
    result["requests_per_s"] = args.requests / (time.perf_counter() - started)
    latencies = []
    for request in requests(args.single, 0):
        started = time.perf_counter()
        llm.generate([request], one, use_tqdm=False)
        latencies.append(time.perf_counter() - started)
    result["ttft_median_s"] = statistics.median(latencies)
    result["ttft_min_s"], result["ttft_max_s"] = min(latencies), max(latencies)
    return result


def _table(results: list[dict], args: argparse.Namespace) -> str:
    stock = results[0]
    lines = [
        "# vLLM serving speed with hf_tokcomp's plugin (`benchmarks/vllm_throughput.py`)",
        "",
        f"{args.device}; vLLM 0.32 (vllm-cpu), {args.dtype}; Qwen2-VL-2B widths with {args.llm_layers} LLM / "
        f"{args.vision_layers} vision layers (random weights), {args.image_size} px images, {args.requests} "
        f"requests at once ({args.new_tokens} new tokens, or 1), time to first token = single requests with 1 new "
        f"token (median of {args.single}, min-max). One run.",
        "",
        "| cell | prompt tokens | requests/s (1 token) | requests/s | TTFT s (min-max) | prefill req/s vs stock |"
        " req/s vs stock | TTFT vs stock |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = "stock vLLM" if r["selector"] == "stock" else f"plugin {r['selector']} @ {r['keep']}"
        lines.append(
            f"| {name} | {r['prompt_tokens']} | {r['prefill_requests_per_s']:.2f} | {r['requests_per_s']:.2f} | "
            f"{r['ttft_median_s']:.3f} ({r['ttft_min_s']:.3f}-{r['ttft_max_s']:.3f}) | "
            f"{r['prefill_requests_per_s'] / stock['prefill_requests_per_s']:.2f}x | "
            f"{r['requests_per_s'] / stock['requests_per_s']:.2f}x | "
            f"{r['ttft_median_s'] / stock['ttft_median_s']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument(
        "--selectors",
        nargs="+",
        default=["uniform", "divprune"],
        choices=["uniform", "divprune", "attention", "learned"],
    )
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=448, help="px, a multiple of 28 (448: 256 tokens)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--single", type=int, default=5, help="single requests timed for the TTFT")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="CPU: 2 shared cores", help="what to call the machine in the table")
    # internal: one cell in this process
    parser.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--selector", default="stock", help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.image_size % 28:
        parser.error(f"--image-size must be a multiple of 28 (Qwen2-VL's merged patch), got {args.image_size}")
    if args.cell:
        Path(args.result).write_text(json.dumps(_cell(args)))
        return
    if not args.out:
        parser.error("--out is required")
    cells = [("stock", 1.0)] + [(s, k) for s in args.selectors for k in args.keeps]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        model = _model_dir(Path(folder), args.llm_layers, args.vision_layers, args.image_size)
        for i, (selector, keep) in enumerate(cells, 1):
            print(f"[{i}/{len(cells)}] {selector} @ {keep}", flush=True)
            result = Path(folder) / f"cell{i}.json"
            shared = ["--image-size", str(args.image_size), "--requests", str(args.requests), "--new-tokens",
                      str(args.new_tokens), "--single", str(args.single), "--dtype", args.dtype]  # fmt: skip
            command = [sys.executable, __file__, "--cell", "--model", str(model), "--selector", selector, "--keep",
                       str(keep), "--result", str(result), *shared]  # fmt: skip
            subprocess.run(command, check=True)
            results.append(json.loads(result.read_text()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    table = _table(results, args)
    out.with_suffix(".md").write_text(
        table + f"\nCommand: `python benchmarks/vllm_throughput.py {' '.join(sys.argv[1:])}`\n"
    )
    print(table)


if __name__ == "__main__":
    main()
