"""Run vLLM on the test prompts once (one engine per process): greedy tokens per prompt, as JSON.

``python tests_vllm/run_vllm.py --model DIR --prompts DIR/prompts.json --out OUT.json [--arch A] [--keep K]
[--selector S] [--max-batched-tokens N]``. ``--arch stock`` serves the checkpoint's own architecture; any other
value is an architecture of hf_tokcomp's plugin (``hf_overrides``). A small ``--max-batched-tokens`` (16) splits
each prompt, images included, over several prefill steps (chunked prefill). With the plugin, ``kept`` lists every
image's kept token indices in the order vLLM encoded them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default="TokCompQwen2VLForConditionalGeneration")
    parser.add_argument("--keep", type=float, default=1.0)
    parser.add_argument("--selector", default="uniform")
    parser.add_argument("--max-batched-tokens", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--video-limit", type=int, default=0, help="videos per prompt the engine accepts")
    parser.add_argument("--image-limit", type=int, default=2, help="images per prompt; prompts with more are skipped")
    parser.add_argument("--compressor", default=None, help="the learned compressor (selector learned)")
    parser.add_argument("--no-prefix-caching", action="store_true", help="switch vLLM's prefix cache off")
    args = parser.parse_args(argv)
    from PIL import Image
    from vllm import LLM, SamplingParams

    kept: list[list[int]] = []
    if args.arch != "stock":  # record every kept set (the engine core runs in this process: multiprocessing off)
        from hf_tokcomp.vllm import models

        select = models.kept_tokens

        def recording(*a, **k):
            indices = select(*a, **k)
            kept.append(indices.tolist())
            return indices

        models.kept_tokens = recording
    overrides = {}
    if args.arch != "stock":
        overrides = {"architectures": [args.arch], "token_keep": args.keep, "selector": args.selector}
        if args.compressor:
            overrides["compressor"] = args.compressor
    started = time.perf_counter()
    llm = LLM(
        model=args.model,
        dtype="float32",
        max_model_len=512,
        max_num_batched_tokens=args.max_batched_tokens,
        enable_chunked_prefill=True,
        enforce_eager=True,
        limit_mm_per_prompt={"image": args.image_limit, "video": args.video_limit},
        enable_prefix_caching=not args.no_prefix_caching,
        hf_overrides=overrides,
        seed=0,
    )
    ready = time.perf_counter()
    kept.clear()  # the engine's start-up profiling encodes dummy images
    folder = Path(args.prompts).parent
    prompts = json.loads(Path(args.prompts).read_text())
    served = [i for i, p in enumerate(prompts) if len(p["images"]) <= args.image_limit]
    prompts = [prompts[i] for i in served]
    requests = [
        {
            "prompt": p["text"],
            "multi_modal_data": {"image": [Image.open(folder / i).convert("RGB") for i in p["images"]]},
        }
        for p in prompts
    ]
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, logprobs=5)
    outputs = llm.generate(requests, params, use_tqdm=False)
    done = time.perf_counter()
    result = {
        "served": served,
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "first_logprobs": [{i: lp.logprob for i, lp in o.outputs[0].logprobs[0].items()} for o in outputs],
        "kept": kept,
        "prompt_lengths": [len(o.prompt_token_ids) for o in outputs],
        "engine_start_s": ready - started,
        "generate_s": done - ready,
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
