"""Time and peak memory of `visual_relevance` against the naive GAE reference, as the token count grows.

Scaled-down Qwen2-VL (LLM hidden 256, 8 heads / 2 KV heads, 8 layers; a tiny vision tower) with random weights.
The N visual tokens come from one video (16x16-patch frames), so the vision tower stays cheap at every N.
Each measurement runs in a fresh subprocess (large allocations served by mmap, so freed memory leaves at once),
and its peak memory is the growth of the peak resident set size over the size after loading the model.

Naive reference: eager attention returning every layer's maps, one backward per answer token, then the full
rollout R <- R + mean_h(relu(A * dA)) @ R with N x N matrices. Ours: `hf_tokcomp.teachers.gae.visual_relevance`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SIZES = (256, 512, 1024, 2048, 4096)
ANSWER_LENGTHS = (1, 2, 4, 8)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(n_visual: int, seed: int = 0):
    import hf_tokcomp
    from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs, tiny_qwen_config

    torch.manual_seed(seed)
    config = tiny_qwen_config("qwen2_vl", hidden_size=256, num_layers=8, num_heads=8, num_kv_heads=2)
    model = hf_tokcomp.Qwen2VLForConditionalGeneration(config).eval()
    frames = 2 * n_visual // 64  # 64 merged tokens per 2-frame temporal patch
    inputs = make_qwen_inputs([[("text", [5, 6]), ("video", (frames, 16, 16)), ("text", list(range(10, 42)))]], config)
    return model, inputs


def naive_relevance(model, inputs: dict, answer: torch.Tensor) -> torch.Tensor:
    """The textbook computation (see the module docstring); returns the visual tokens' relevance."""
    model.set_attn_implementation("eager")
    ids = torch.cat([inputs["input_ids"][0], answer])[None]
    types = torch.cat([inputs["mm_token_type_ids"][0], torch.zeros_like(answer, dtype=torch.int)])[None]
    visual_inputs = {k: v for k, v in inputs.items() if k.startswith(("pixel", "video_grid", "image_grid"))}
    model.config.token_keep = 1.0
    out = model(input_ids=ids, mm_token_type_ids=types, output_attentions=True, use_cache=False, **visual_inputs)
    n = ids.shape[1]
    total = torch.zeros(n)
    for t in range(len(answer)):
        q = n - len(answer) + t - 1
        grads = torch.autograd.grad(out.logits[0, q, ids[0, q + 1]], out.attentions, retain_graph=True)
        relevance = torch.eye(n)
        for attn, grad in zip(out.attentions, grads, strict=True):
            relevance = relevance + (attn[0] * grad[0]).clamp_min(0).mean(0) @ relevance
        total += relevance[q]
    visual = (ids[0] == model.config.video_token_id) | (ids[0] == model.config.image_token_id)
    return total[visual] / len(answer)


def worker(method: str, n_visual: int, answer_len: int) -> dict:
    from hf_tokcomp.teachers.gae import visual_relevance

    model, inputs = _setup(n_visual)
    answer = torch.arange(100, 100 + answer_len)
    base = _rss_mb()
    start = time.perf_counter()
    if method == "ours":
        visual_relevance(model, inputs, [answer])
    else:
        naive_relevance(model, inputs, answer)
    return {
        "method": method,
        "n_visual": n_visual,
        "answer_tokens": answer_len,
        "seconds": time.perf_counter() - start,
        "peak_mb": _rss_mb() - base,
    }


def _run(method: str, n: int, t: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(n), str(t)]
    # Large blocks straight from mmap: freed memory leaves the resident set at once, so the peak RSS measures
    # live tensors rather than the allocator's caching (same setting for both methods).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        return {"method": method, "n_visual": n, "answer_tokens": t, "error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="visual token counts")
    parser.add_argument(
        "--answer-lengths",
        type=int,
        nargs="+",
        default=list(ANSWER_LENGTHS),
        help="answer lengths for the scaling run (ours, at --scaling-size tokens)",
    )
    parser.add_argument("--scaling-size", type=int, default=1024, help="visual tokens of the answer-length run")
    parser.add_argument("--naive-max", type=int, default=4096, help="largest N for the naive reference")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/relevance_cpu"), help="OUT.json/.md")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        torch.set_num_threads(torch.get_num_threads())
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))))
        return

    from tqdm.auto import tqdm

    rows = []
    for n in tqdm(args.sizes, desc="token counts"):
        ours = _run("ours", n, 1)
        naive = _run("naive", n, 1) if n <= args.naive_max else {"error": "skipped"}
        rows.append({"n_visual": n, "ours": ours, "naive": naive})
    scaling = [_run("ours", args.scaling_size, t) for t in tqdm(args.answer_lengths, desc="answer lengths")]

    lines = [
        "| visual tokens | ours s | ours peak MB | naive s | naive peak MB | memory ratio (naive/ours) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        o, v = row["ours"], row["naive"]
        if "error" in v:
            lines.append(f"| {row['n_visual']} | {o['seconds']:.2f} | {o['peak_mb']:.0f} | - | - | - |")
            continue
        lines.append(
            f"| {row['n_visual']} | {o['seconds']:.2f} | {o['peak_mb']:.0f} | {v['seconds']:.2f} | "
            f"{v['peak_mb']:.0f} | {v['peak_mb'] / max(o['peak_mb'], 1):.1f}x |"
        )
    lines += [
        "",
        f"Answer length at {args.scaling_size} visual tokens (ours):",
        "",
        "| answer tokens | seconds | seconds per token | peak MB |",
        "|---|---|---|---|",
    ]
    for s in scaling:
        lines.append(
            f"| {s['answer_tokens']} | {s['seconds']:.2f} | {s['seconds'] / s['answer_tokens']:.2f} | "
            f"{s['peak_mb']:.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"sizes": rows, "answer_lengths": scaling}, indent=2))
    args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
