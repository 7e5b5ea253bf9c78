"""Prefill time and KV-cache bytes at several token_keep values, measured side by side in ONE run.

A scaled-down Qwen2-VL-2B (real widths: LLM hidden 1536, 12 heads / 2 KV heads, MLP 8960, vocab 151,936;
vision width 1280; fewer layers) with random weights, one image of ``--grid``x``--grid`` patches
(``grid**2 / 4`` visual tokens) and a short question. Stages are timed separately:

- vision: the vision tower + projector (input-stage pruning cannot shorten it);
- overhead: positions, layer-0 features, compressor scores, selection and gather;
- llm: the LLM prefill on the (compressed) sequence, first-token logits only;
- ttft: the whole forward from pixels to the first token.

Ideals: llm N/N' (N, N' = prompt lengths before / after); ttft (T_vision + T_llm(N)) / (T_vision + T_llm(N')).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Qwen2VLConfig

from hf_tokcomp import Qwen2VLForConditionalGeneration, TokenCompressor, TokenCompressorConfig
from hf_tokcomp.tiny import make_qwen_inputs

KEEPS = (1.0, 0.5, 0.25)


def scaled_qwen2_vl_2b(llm_layers: int, vision_layers: int) -> Qwen2VLConfig:
    """Qwen2-VL-2B widths with fewer layers."""
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=llm_layers,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(depth=vision_layers, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
    )


def measure(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    """Median and inter-quartile range of ``fn``'s wall time in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"median": statistics.median(times), "iqr": q3 - q1}


def kv_bytes(cache) -> int:
    """Bytes of every key and value tensor in a transformers cache."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    config = scaled_qwen2_vl_2b(args.llm_layers, args.vision_layers)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.compressor = TokenCompressor(TokenCompressorConfig(base_model_type="qwen2_vl")).eval()
    question = list(range(100, 100 + args.text_tokens))
    inputs = make_qwen_inputs([[("text", [10, 11]), ("image", (args.grid, args.grid)), ("text", question)]], config)
    visual = {k: inputs.get(k) for k in model._tokcomp_visual_keys}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    llm = model.model.language_model

    with torch.no_grad():
        vision = measure(
            lambda: model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]),
            args.warmup,
            args.repeats,
        )
        merged = model._tokcomp_merge(ids, visual)
        rows = []
        for keep in KEEPS:
            model.config.token_keep = keep
            batch = model._tokcomp_select(merged, ids, mask, None, None, visual)
            positions = model._tokcomp_llm_positions(batch)

            def prefill(batch=batch, positions=positions):
                hidden = llm(
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    position_ids=positions,
                    use_cache=True,
                )
                model.lm_head(hidden.last_hidden_state[:, -1:])
                return hidden

            row = {
                "token_keep": keep,
                "prompt_tokens": int(mask.sum()),
                "kept_tokens": int(batch.attention_mask.sum()),
                "visual_tokens": int(merged.visual_mask.sum()),
                "llm": measure(prefill, args.warmup, args.repeats),
                "kv_bytes": kv_bytes(prefill().past_key_values),
                "ttft": measure(lambda: model(**inputs, logits_to_keep=1, use_cache=True), args.warmup, args.repeats),
            }
            if keep < 1.0:
                row["overhead"] = measure(
                    lambda: model._tokcomp_select(merged, ids, mask, None, None, visual), args.warmup, args.repeats
                )
            rows.append(row)

    base = rows[0]
    t_vis = vision["median"]
    for row in rows:
        n, n_kept = base["prompt_tokens"], row["kept_tokens"]
        row["llm_speedup"] = base["llm"]["median"] / row["llm"]["median"]
        row["llm_ideal"] = n / n_kept
        row["ttft_speedup"] = base["ttft"]["median"] / row["ttft"]["median"]
        row["ttft_ideal"] = (t_vis + base["llm"]["median"]) / (t_vis + base["llm"]["median"] * n_kept / n)
        row["kv_ratio"] = row["kv_bytes"] / base["kv_bytes"]
        row["length_ratio"] = n_kept / n
        if "overhead" in row:
            row["overhead_share"] = row["overhead"]["median"] / base["llm"]["median"]
    return {
        "device": f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads",
        "config": f"Qwen2-VL-2B widths, {args.llm_layers} LLM layers, {args.vision_layers} vision layers, fp32, sdpa",
        "torch": torch.__version__,
        "vision": vision,
        "rows": rows,
    }


def table(result: dict) -> str:
    lines = [
        f"{result['config']}; {result['device']}; vision tower {result['vision']['median'] * 1e3:.0f} ms "
        "(same at every keep).",
        "",
        "| token_keep | prompt N -> N' | LLM prefill ms | LLM speed-up (ideal N/N') | % of ideal | overhead % "
        "of stock prefill | TTFT ms | TTFT speed-up (ideal) | KV bytes (ratio; N'/N) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        overhead = f"{100 * r['overhead_share']:.2f}" if "overhead_share" in r else "-"
        lines.append(
            f"| {r['token_keep']} | {r['prompt_tokens']} -> {r['kept_tokens']} | {r['llm']['median'] * 1e3:.0f} "
            f"(IQR {r['llm']['iqr'] * 1e3:.0f}) | {r['llm_speedup']:.2f}x ({r['llm_ideal']:.2f}x) | "
            f"{100 * r['llm_speedup'] / r['llm_ideal']:.0f}% | {overhead} | {r['ttft']['median'] * 1e3:.0f} | "
            f"{r['ttft_speedup']:.2f}x ({r['ttft_ideal']:.2f}x) | {r['kv_bytes']:,} ({r['kv_ratio']:.4f}; "
            f"{r['length_ratio']:.4f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=64, help="image size in 14-px patches (tokens = grid^2/4)")
    parser.add_argument("--text-tokens", type=int, default=40, help="question length in tokens")
    parser.add_argument("--llm-layers", type=int, default=4, help="LLM decoder layers (real model: 28)")
    parser.add_argument("--vision-layers", type=int, default=2, help="vision blocks (real model: 32)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/prefill_cpu"), help="writes OUT.json and OUT.md"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    text = table(result)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
