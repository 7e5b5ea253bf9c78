"""A tiny InternVL built in code (InternViT tower, pixel shuffle, MLP projector, Qwen2 LLM) and a batch builder
with InternVL's prompt layout: ``<img> <IMG_CONTEXT> x (tiles x tokens per tile) </img>`` per image."""

from __future__ import annotations

import zlib
from typing import Any

import torch
from transformers import InternVLConfig

from .tiny_qwen import VOCAB

__all__ = ["IMG_START", "IMG_END", "tiny_internvl_config", "make_internvl_inputs"]

#: the tiny vocabulary's ``<img>`` / ``</img>`` ids (VOCAB["image"] is ``<IMG_CONTEXT>``)
IMG_START, IMG_END = VOCAB["vision_start"], VOCAB["vision_end"]


def tiny_internvl_config(hidden_size: int = 64, num_layers: int = 2, image_size: int = 32) -> InternVLConfig:
    """Tiles of ``image_size`` px, patches of 4 px, pixel shuffle 0.5: ``(image_size / 8) ** 2`` tokens per tile."""
    text = dict(
        model_type="qwen2",
        vocab_size=300,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=VOCAB["bos"],
        eos_token_id=VOCAB["eos"],
        pad_token_id=VOCAB["pad"],
        max_position_embeddings=4096,
    )
    vision = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[image_size, image_size],
        patch_size=[4, 4],
    )
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=VOCAB["image"],
        image_seq_length=(image_size // 8) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def make_internvl_inputs(samples: list[list[tuple[str, Any]]], config: InternVLConfig, seed: int = 0) -> dict:
    """Left-padded processor-style inputs. Parts: ``("text", [ids])`` or ``("image", tiles)``."""
    size = config.vision_config.image_size[0]
    per_tile = config.image_seq_length
    rows, pixels = [], []
    for parts in samples:
        gen = torch.Generator().manual_seed(seed + zlib.crc32(repr(parts).encode()))
        ids: list[int] = []
        for kind, value in parts:
            if kind == "text":
                ids += list(value)
            else:
                ids += [IMG_START, *[config.image_token_id] * (value * per_tile), IMG_END]
                pixels.append(torch.randn(value, 3, size, size, generator=gen))
        rows.append(ids)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), VOCAB["pad"], dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, ids in enumerate(rows):
        input_ids[b, length - len(ids) :] = torch.tensor(ids)
        attention_mask[b, length - len(ids) :] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
    return out
