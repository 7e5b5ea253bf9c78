"""The organism's architecture, processor and batches: a stock ``Qwen2VLForConditionalGeneration``, small.

The model is the real transformers class at a small size: a 2-layer vision tower with Qwen2-VL's 14 px
patches merged 2 x 2 (a 336 px image = 12 x 12 = 144 visual tokens), and a text model of ``hidden_size`` x
``num_layers`` (4). M-RoPE turns fast enough for a small model to see columns and rows: ``rope_theta=10`` and
``mrope_section=[2, 7, 7]`` (with the default 1e4 and [4, 6, 6], the column axis of 32-dim heads turns by only
~0.003-0.0002 rad per cell, and left / right relations cannot be learned). The processor is the stock Qwen2-VL
image processor (112-336 px images kept at their size) with a word-level tokenizer over the task's
:func:`~hf_tokcomp.organism.task.vocabulary` and a Qwen-style chat template.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import Qwen2VLConfig

from ..processor import ImageQwen2VLProcessor, word_level_qwen_processor
from ..testing.tiny_qwen import tiny_qwen_config
from .task import BACKGROUND, GRID, IMAGE_SIZE, Sample, vocabulary

__all__ = ["organism_config", "organism_processor", "chat_text", "encode_samples", "blank_image"]

VISUAL_TOKENS = GRID * GRID
MIN_IMAGE_SIZE = 4 * 28


def organism_config(hidden_size: int = 128, num_layers: int = 4, vision_dim: int = 64) -> Qwen2VLConfig:
    """The organism's ``Qwen2VLConfig``: 32-dim heads, M-RoPE theta 10 with sections [2, 7, 7], 300-token
    vocabulary."""
    if hidden_size < 32 or hidden_size % 32:
        raise ValueError(f"`hidden_size` must be a positive multiple of 32 (32-dim heads), got {hidden_size}")
    heads = hidden_size // 32
    return tiny_qwen_config(
        "qwen2_vl",
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2),
        vision_depth=2,
        patch_size=14,
        vision_embed_dim=vision_dim,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10.0, "mrope_section": [2, 7, 7]},
    )


def organism_processor() -> ImageQwen2VLProcessor:
    """The organism's processor: 336 x 336 px images in, 144 visual tokens out (112-336 px images, multiples of
    28, are kept at their size: the training curriculum's smaller grids); whitespace-separated words."""
    words = sorted(set(vocabulary()) | {"user", "assistant"})
    return word_level_qwen_processor(
        words, patch_size=14, min_pixels=MIN_IMAGE_SIZE**2, max_pixels=IMAGE_SIZE * IMAGE_SIZE
    )


def chat_text(processor: ImageQwen2VLProcessor, question: str, n_images: int = 1, question_first: bool = False) -> str:
    """The prompt of one question about ``n_images`` images (the question after them, or before them with
    ``question_first``), through the processor's chat template."""
    images = [{"type": "image"}] * n_images
    text = [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": text + images if question_first else images + text}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def blank_image() -> Image.Image:
    """An image with the task's background and no object (for the blanked-image control)."""
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)


def encode_samples(
    processor: ImageQwen2VLProcessor,
    samples: list[Sample],
    with_answers: bool = False,
    blank: bool = False,
    tokens_only: bool = False,
) -> dict[str, Any]:
    """A left-padded batch of the samples, through the processor (each sample's image(s), in its prompt order).

    With ``with_answers``, each row also holds its answer word and ``<|im_end|>``, and ``labels`` ``(B, L)``
    are -100 except on those two tokens (the training target). With ``tokens_only``, the text side only (no
    pixels; the same ids the processor makes, without running the image processor).

    Returns:
        the processor's ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` ``(B, L)``, ``pixel_values``
        ``(images * 576, 1176)``, ``image_grid_thw`` ``(images, 3)``; ``labels`` ``(B, L)`` with ``with_answers``.
    """
    texts = [chat_text(processor, s.question, len(s.images), s.question_first) for s in samples]
    if with_answers:
        texts = [f"{t}{s.answer} <|im_end|> " for t, s in zip(texts, samples, strict=True)]
    if tokens_only:
        sizes = [s.images[0].width // 28 for s in samples]
        texts = [
            t.replace(processor.image_token, processor.image_token * g * g) for t, g in zip(texts, sizes, strict=True)
        ]
        batch = dict(processor.tokenizer(texts, return_tensors="pt", padding=True))
        batch["mm_token_type_ids"] = (batch["input_ids"] == processor.image_token_id).int()
    else:
        images = [blank_image() if blank else image for s in samples for image in s.images]
        batch = dict(processor(text=texts, images=images, return_tensors="pt", padding=True))
    if with_answers:
        labels = torch.full_like(batch["input_ids"], -100)
        labels[:, -2:] = batch["input_ids"][:, -2:]
        batch["labels"] = labels
    return batch
