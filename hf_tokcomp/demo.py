"""`make demo`: one compressed `generate()` call on a tiny Qwen2-VL built in code (random weights, offline).

Shows what compression does to a batch: the prompt lengths before and after, the visual tokens kept per image
(as a map over the image's token grid), the KV-cache length, and that the returned sequences start with the
caller's own prompt.
"""

from __future__ import annotations

import argparse

import torch

from .models import Qwen2VLForConditionalGeneration
from .tiny import make_qwen_inputs, tiny_qwen_config

__all__ = ["main"]


def _token_map(kept: torch.Tensor, start: int, height: int, width: int) -> list[str]:
    """Rows of '#' (kept) and '.' (dropped) over an image's merged-token grid."""
    grid = [["."] * width for _ in range(height)]
    for index in kept.tolist():
        row, col = divmod(index - start, width)
        grid[row][col] = "#"
    return ["".join(row) for row in grid]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_tokcomp.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--token-keep", type=float, default=0.5, help="fraction of visual tokens kept (0, 1]")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate per sample")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model's weights and pixels")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    config = tiny_qwen_config("qwen2_vl")
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.config.token_keep = args.token_keep  # validated: a bad value raises here with the allowed range
    samples = {
        "a 16x16-patch image": [("text", [11, 12]), ("image", (16, 16)), ("text", [13, 14, 15, 16])],
        "two images (8x12, 8x8)": [
            ("text", [11]),
            ("image", (8, 12)),
            ("text", [17]),
            ("image", (8, 8)),
            ("text", [18, 19]),
        ],
    }
    inputs = make_qwen_inputs(list(samples.values()), config, seed=args.seed)
    merge = config.vision_config.spatial_merge_size

    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=args.max_new_tokens, do_sample=False, return_dict_in_generate=True
        )
    prompt_len = inputs["input_ids"].shape[1]
    cache_len = out.past_key_values.get_seq_length() - (args.max_new_tokens - 1)
    print(f"Tiny Qwen2-VL (random weights), token_keep={args.token_keep}, batch of {len(samples)}, left padded\n")
    grids = iter(inputs["image_grid_thw"].tolist())
    for b, (name, record) in enumerate(zip(samples, model.last_compression, strict=True)):
        real = int(inputs["attention_mask"][b].sum())
        total, kept = sum(record.num_tokens), record.num_kept
        print(f"sample {b} ({name}): prompt {real} -> {real - total + kept} tokens, visual {total} -> {kept}")
        start = 0
        for n, kept_idx in zip(record.num_tokens, record.kept, strict=True):
            _, h, w = next(grids)
            print(f"  image {h // merge}x{w // merge} tokens, kept {kept_idx.numel()}/{n} (# = kept):")
            for line in _token_map(kept_idx, start, h // merge, w // merge):
                print(f"    {line}")
            start += n
        print(f"  answer ids: {out.sequences[b, prompt_len:].tolist()}")
    print(f"\npadded prompt length {prompt_len} -> KV cache prompt length {cache_len}")
    print(
        f"returned sequences start with the caller's input_ids: "
        f"{bool(torch.equal(out.sequences[:, :prompt_len], inputs['input_ids']))}"
    )


if __name__ == "__main__":
    main()
