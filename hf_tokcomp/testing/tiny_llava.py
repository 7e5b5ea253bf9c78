"""A tiny LLaVA-OneVision config and processor-style inputs (anyres crops, multi-image, video), built in code."""

from __future__ import annotations

import zlib
from typing import Any

import torch
from transformers import LlavaOnevisionConfig
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from .tiny_qwen import VOCAB

__all__ = ["tiny_llava_onevision_config", "make_llava_inputs"]


def tiny_llava_onevision_config(hidden_size: int = 64, num_layers: int = 2, crop: int = 16) -> LlavaOnevisionConfig:
    """SigLIP tower (``crop`` px crops, 4 px patches -> 4x4 tokens per crop) + a small Qwen2 LLM; anyres grids up
    to 2x2 crops."""
    return LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=crop,
            patch_size=4,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=300,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            bos_token_id=VOCAB["bos"],
            eos_token_id=VOCAB["eos"],
            pad_token_id=VOCAB["pad"],
        ),
        image_token_index=VOCAB["image"],
        video_token_index=VOCAB["video"],
        image_grid_pinpoints=[[crop, crop], [crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop]],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )


def make_llava_inputs(
    samples: list[list[tuple[str, Any]]], model, seed: int = 0, padding_side: str = "left"
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for a batch.

    Args:
        samples: per sample, parts ``("text", [ids])``, ``("image", (height, width))`` in pixels (one image alone
            in its sample gets anyres crops; several images per sample get the base crop only, as the processor
            does), or ``("video", frames)``.
        model: a LLaVA-OneVision model (stock or ours): its own feature path counts the placeholder tokens.
        seed: mixed with each sample's content, so a sample is the same alone and in any batch.

    Returns:
        ``input_ids``, ``attention_mask`` ``(B, L)``; ``pixel_values`` ``(images, crops, 3, S, S)``,
        ``image_sizes`` ``(images, 2)``, ``batch_num_images`` ``(B,)`` when there are images;
        ``pixel_values_videos`` ``(videos, frames, 3, S, S)`` when there are videos.
    """
    config = model.config
    crop = config.vision_config.image_size
    images, sizes, videos, per_sample = [], [], [], []
    for parts in samples:
        gen = torch.Generator().manual_seed(seed + zlib.crc32(repr(parts).encode()))
        n_images = sum(kind == "image" for kind, _ in parts)
        per_sample.append(n_images)
        for kind, value in parts:
            if kind == "image":
                n_crops = 1
                if n_images == 1:
                    n_crops = image_size_to_num_patches(list(value), config.image_grid_pinpoints, crop)
                images.append(torch.randn(n_crops, 3, crop, crop, generator=gen))
                sizes.append(list(value))
            elif kind == "video":
                videos.append(torch.randn(value, 3, crop, crop, generator=gen))
    out: dict[str, torch.Tensor] = {}
    image_lens: list[int] = []
    video_lens: list[int] = []
    with torch.no_grad():
        if images:
            max_crops = max(i.shape[0] for i in images)
            out["pixel_values"] = torch.stack(
                [torch.cat([i, i.new_zeros(max_crops - i.shape[0], *i.shape[1:])]) for i in images]
            )
            out["image_sizes"] = torch.tensor(sizes)
            out["batch_num_images"] = torch.tensor(per_sample)
            features = model.model.get_image_features(
                out["pixel_values"], out["image_sizes"], batch_num_images=out["batch_num_images"], return_dict=True
            ).pooler_output
            image_lens = [f.shape[0] for f in features]
        if videos:
            out["pixel_values_videos"] = torch.stack(videos)
            features = model.model.get_video_features(out["pixel_values_videos"], return_dict=True).pooler_output
            video_lens = [features.shape[1]] * len(videos)

    image_iter, video_iter = iter(image_lens), iter(video_lens)
    rows = []
    for parts in samples:
        ids: list[int] = []
        for kind, value in parts:
            if kind == "text":
                ids += list(value)
            elif kind == "image":
                ids += [config.image_token_id] * next(image_iter)
            else:
                ids += [config.video_token_id] * next(video_iter)
        rows.append(ids)
    length = max(len(r) for r in rows)
    out["input_ids"] = torch.full((len(rows), length), VOCAB["pad"], dtype=torch.long)
    out["attention_mask"] = torch.zeros((len(rows), length), dtype=torch.long)
    for b, ids in enumerate(rows):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        out["input_ids"][b, span] = torch.tensor(ids)
        out["attention_mask"][b, span] = 1
    return out
