"""A processor for a small model with its own word-level vocabulary: ``tokcomp processor`` (no code needed).

A user who trained a tiny Qwen2-VL-architecture model on whitespace-separated words has a vocabulary
(token -> id) and maybe a chat template, but no Hugging Face processor. :func:`processor_for_model` builds one
from them: a word-level tokenizer over exactly that vocabulary (special tokens never split; a word outside the
vocabulary is an error, never a silent ``<unk>``), the stock Qwen2-VL image processor with the model's own patch
/ merge sizes, and the model's chat template (default: :data:`~hf_tokcomp.processor.CHAT_TEMPLATE`). Every id
the model's config names (image, video, vision start / end, end of sequence, padding) is checked against the
vocabulary, and a mismatch is refused by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .processor import CHAT_TEMPLATE, ImageQwen2VLProcessor

__all__ = ["QWEN_SPECIAL_TOKENS", "read_vocab", "processor_for_model"]

#: config id field -> the token string the processor uses for it
QWEN_SPECIAL_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
    """A vocabulary file: JSON ``{token: id}``, or text with one token per line (its id = its line number)."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        vocab = json.loads(text)
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise ValueError(f"--vocab {path}: a JSON vocabulary must map every token to an integer id")
        return vocab
    return {token: i for i, token in enumerate(line.strip() for line in text.splitlines()) if token}


def _token_of(vocab: Mapping[str, int], token_id: int | None, what: str) -> str | None:
    if token_id is None:
        return None
    names = [t for t, i in vocab.items() if i == token_id]
    if not names:
        raise ValueError(f"the model's {what} id {token_id} is not in the vocabulary: add its token to --vocab")
    return names[0]


def processor_for_model(
    model: str | os.PathLike,
    vocab: Mapping[str, int],
    chat_template: str | None = None,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> ImageQwen2VLProcessor:
    """The processor of a Qwen2-VL-architecture ``model`` (a directory or Hub id) with a word-level ``vocab``.

    Args:
        model: where the model's ``config.json`` is.
        vocab: every token (words and special tokens) -> the model's id for it.
        chat_template: the model's Jinja chat template (whitespace between tokens); default Qwen-style.
        min_pixels, max_pixels: the image processor's resize bounds.
    """
    config = AutoConfig.from_pretrained(model)
    if config.model_type not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(
            f"`tokcomp processor` builds Qwen2-VL / Qwen2.5-VL processors, the model is {config.model_type!r}"
        )
    ids = sorted(vocab.values())
    if len(set(ids)) != len(ids):
        raise ValueError("the vocabulary gives the same id to two tokens: every token needs its own id")
    text = config.get_text_config()
    if ids[-1] >= text.vocab_size:
        raise ValueError(f"the vocabulary has id {ids[-1]}, the model's embedding only {text.vocab_size} rows")
    for field, token in QWEN_SPECIAL_TOKENS.items():
        wanted = getattr(config, field)
        if vocab.get(token) != wanted:
            raise ValueError(
                f"the model's {field} is {wanted}, the vocabulary gives {token} the id {vocab.get(token)}: "
                f"the processor writes {token} for it, so --vocab must map {token} to {wanted}"
            )
    eos = _token_of(vocab, text.eos_token_id, "eos_token_id")
    pad = _token_of(vocab, text.pad_token_id, "pad_token_id") or eos
    bos = _token_of(vocab, getattr(text, "bos_token_id", None), "bos_token_id")
    template = CHAT_TEMPLATE if chat_template is None else chat_template
    specials = [t for t in vocab if t.startswith("<") and t.endswith(">")]
    tokenizer = Tokenizer(models.WordLevel(vocab=dict(vocab), unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=pad, eos_token=eos, bos_token=bos, padding_side="left"
    )
    vision = config.vision_config
    images = Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    processor = ImageQwen2VLProcessor(image_processor=images, tokenizer=fast, chat_template=template)
    sample = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ""}]}]
    rendered = processor.apply_chat_template(sample, add_generation_prompt=True, tokenize=False)
    unknown = sorted({w for w in rendered.split() if w not in vocab})
    if unknown:
        raise ValueError(f"the chat template writes tokens that are not in the vocabulary: {unknown}")
    return processor
