"""Tiny Qwen-VL configs and hand-built processor-style inputs: for the demo, the tests and the benchmarks.

Everything is built in code (no downloads). The inputs have the exact layout the real processors produce:
``<|vision_start|>`` + one placeholder per merged visual token + ``<|vision_end|>``, flattened patches in
``pixel_values`` with ``image_grid_thw``, left padding, and ``mm_token_type_ids``.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

__all__ = ["VOCAB", "TIMESTAMP", "mrope_section", "frames_are_segments", "tiny_qwen_config", "make_qwen_inputs"]

#: ids of the special tokens in the tiny vocabulary (300 tokens; ids below 280 are ordinary text)
#: first id of the stand-in timestamp tokens of Qwen3-VL-style videos (one per frame)
TIMESTAMP = 250
VOCAB = {"pad": 0, "bos": 1, "eos": 2, "vision_start": 290, "vision_end": 291, "image": 292, "video": 293}


def mrope_section(rotary_dim: int) -> list[int]:
    """M-RoPE (temporal, height, width) sections for a rotary dimension, in the real models' 2 : 3 : 3 spirit."""
    half = rotary_dim // 2
    return [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]


def frames_are_segments(config) -> bool:
    """Whether the family writes a video frame by frame with timestamp text between frames (Qwen3-VL, Qwen3.5), so
    each frame is a segment of its own; Qwen2-VL and Qwen2.5-VL write a video as one run."""
    return config.model_type.startswith("qwen3")


def tiny_qwen_config(
    family: str = "qwen2_vl",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_depth: int = 1,
    patch_size: int = 2,
    vocab_size: int = 300,
    vision_embed_dim: int = 32,
    **text_overrides: Any,
) -> Qwen2VLConfig | Qwen2_5_VLConfig:
    """A small but complete Qwen2-VL (``family="qwen2_vl"``) or Qwen2.5-VL (``"qwen2_5_vl"``) config.

    M-RoPE sections are scaled to the head size; the vision tower merges 2x2 patches as the real ones do.
    ``vision_embed_dim`` is the Qwen2-VL tower's width; ``text_overrides`` replace text-config defaults.
    """
    head_dim = hidden_size // num_heads
    section = mrope_section(head_dim)
    text = (
        dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            bos_token_id=VOCAB["bos"],
            eos_token_id=VOCAB["eos"],
            pad_token_id=VOCAB["pad"],
            max_position_embeddings=4096,
        )
        | text_overrides
    )
    vision = dict(depth=vision_depth, hidden_size=hidden_size, num_heads=2, patch_size=patch_size, in_channels=3)
    if family == "qwen2_vl":
        vision.update(embed_dim=vision_embed_dim, mlp_ratio=2)
        cls = Qwen2VLConfig
    elif family == "qwen2_5_vl":
        vision.update(
            intermediate_size=64,
            out_hidden_size=hidden_size,
            hidden_size=32,
            window_size=4 * patch_size,
            fullatt_block_indexes=[0],
        )
        cls = Qwen2_5_VLConfig
    else:
        raise ValueError(f"`family` must be 'qwen2_vl' or 'qwen2_5_vl', got {family!r}")
    return cls(
        text_config=text,
        vision_config=vision,
        image_token_id=VOCAB["image"],
        video_token_id=VOCAB["video"],
        vision_start_token_id=VOCAB["vision_start"],
        vision_end_token_id=VOCAB["vision_end"],
        tie_word_embeddings=False,
    )


def make_qwen_inputs(
    samples: list[list[tuple[str, Any]]],
    config: Qwen2VLConfig | Qwen2_5_VLConfig,
    seed: int = 0,
    padding_side: str = "left",
    video_frames: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for a batch.

    Args:
        samples: per sample, a list of parts: ``("text", [ids])``, ``("image", (h, w))`` in patches, or
            ``("video", (t, h, w))`` with ``t`` a multiple of the temporal patch size (in frames).
        config: the model config (token ids, patch and merge sizes).
        seed: seed of the random pixels (mixed with each sample's content).
        padding_side: ``"left"`` (generation) or ``"right"``.
        video_frames: lay a video out frame by frame, each with a timestamp token and its own vision start / end
            (Qwen3-VL's layout), instead of one run; ``None`` (default): the layout of the config's family (frames
            for Qwen3-VL and Qwen3.5, one run for Qwen2-VL and Qwen2.5-VL).

    Returns:
        ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` ``(B, L)``; ``pixel_values`` ``(patches, C*T*P*P)``
        and ``image_grid_thw`` ``(images, 3)`` when there are images; the ``*_videos`` pair when there are videos.
    """
    if video_frames is None:
        video_frames = frames_are_segments(config)
    vision = config.vision_config
    merge, temporal = vision.spatial_merge_size, vision.temporal_patch_size
    patch_dim = vision.in_channels * temporal * vision.patch_size**2
    ids_per_sample, types_per_sample = [], []
    pixels: dict[str, list[torch.Tensor]] = {"image": [], "video": []}
    grids: dict[str, list[list[int]]] = {"image": [], "video": []}
    for parts in samples:
        # pixels depend on the sample's own content only, so a sample is the same alone and in any batch
        gen = torch.Generator().manual_seed(seed + zlib.crc32(repr(parts).encode()))
        ids: list[int] = []
        types: list[int] = []
        for kind, value in parts:
            if kind == "text":
                ids += list(value)
                types += [0] * len(value)
                continue
            t, h, w = (1, *value) if kind == "image" else (value[0] // temporal, *value[1:])
            n_tokens = t * h * w // merge**2
            token, type_id = (config.image_token_id, 1) if kind == "image" else (config.video_token_id, 2)
            if kind == "video" and video_frames:  # Qwen3-VL: "<t> <vision_start> frame <vision_end>" per frame
                per_frame = n_tokens // t
                for frame in range(t):
                    ids += [TIMESTAMP + frame, config.vision_start_token_id, *[token] * per_frame]
                    ids += [config.vision_end_token_id]
                    types += [0, 0, *[type_id] * per_frame, 0]
            else:
                ids += [config.vision_start_token_id, *[token] * n_tokens, config.vision_end_token_id]
                types += [0, *[type_id] * n_tokens, 0]
            pixels[kind].append(torch.randn(t * h * w, patch_dim, generator=gen))
            grids[kind].append([t, h, w])
        ids_per_sample.append(ids)
        types_per_sample.append(types)

    length = max(len(ids) for ids in ids_per_sample)
    batch = len(samples)
    input_ids = torch.full((batch, length), VOCAB["pad"], dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    token_types = torch.zeros((batch, length), dtype=torch.int)
    for b, (ids, types) in enumerate(zip(ids_per_sample, types_per_sample, strict=True)):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[b, span] = torch.tensor(ids)
        attention_mask[b, span] = 1
        token_types[b, span] = torch.tensor(types, dtype=torch.int)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": token_types}
    if pixels["image"]:
        out["pixel_values"] = torch.cat(pixels["image"])
        out["image_grid_thw"] = torch.tensor(grids["image"])
    if pixels["video"]:
        out["pixel_values_videos"] = torch.cat(pixels["video"])
        out["video_grid_thw"] = torch.tensor(grids["video"])
    return out
