"""Processors: an image-only Qwen2-VL processor that needs no torchvision, a word-level builder for small
vocabularies (tests, the organism), and ``load_processor`` that picks ours or ``AutoProcessor``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoProcessor, PreTrainedTokenizerFast, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from .testing.tiny_qwen import VOCAB

__all__ = ["ImageQwen2VLProcessor", "load_processor", "word_level_qwen_processor", "CHAT_TEMPLATE"]

#: a Qwen-style chat template for whitespace-separated vocabularies
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|> <|image_pad|> <|vision_end|> {% else %}{{ c['text'] }} "
    "{% endif %}{% endfor %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


class ImageQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images only: the stock one requires a video processor, which needs torchvision."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs) -> None:
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


_SPECIALS = {
    "<pad>": VOCAB["pad"],
    "<bos>": VOCAB["bos"],
    "<|im_end|>": VOCAB["eos"],
    "<|im_start|>": 3,
    "<|vision_start|>": VOCAB["vision_start"],
    "<|vision_end|>": VOCAB["vision_end"],
    "<|image_pad|>": VOCAB["image"],
    "<|video_pad|>": VOCAB["video"],
}


def word_level_qwen_processor(
    words: list[str], patch_size: int = 2, min_pixels: int = 16, max_pixels: int = 4096, vocab_size: int = 300
) -> ImageQwen2VLProcessor:
    """A processor for whitespace-separated text over ``words``, with the special-token ids of
    :data:`hf_tokcomp.testing.tiny_qwen.VOCAB` (so it matches :func:`hf_tokcomp.testing.tiny_qwen.tiny_qwen_config`)."""
    first = max(v for v in _SPECIALS.values() if v < 100) + 1
    vocab = dict(_SPECIALS) | {w: first + i for i, w in enumerate(words)}
    if first + len(words) > VOCAB["vision_start"] or len(set(words)) != len(words):
        raise ValueError(f"`words` must be at most {VOCAB['vision_start'] - first} distinct words, got {len(words)}")
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(list(_SPECIALS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<bos>", padding_side="left"
    )
    images = Qwen2VLImageProcessorPil(
        patch_size=patch_size, temporal_patch_size=2, merge_size=2, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return ImageQwen2VLProcessor(image_processor=images, tokenizer=fast, chat_template=CHAT_TEMPLATE)


_OURS = {"ImageQwen2VLProcessor": ImageQwen2VLProcessor}


def load_processor(path: str | os.PathLike, **kwargs) -> ProcessorMixin:
    """The processor saved at ``path``: :class:`~hf_tokcomp.VilaProcessor` for a VILA1.5 checkpoint, ours when
    its ``processor_config.json`` names one of ours, else ``AutoProcessor``."""
    root = Path(path) / "config.json"
    if root.is_file() and json.loads(root.read_text()).get("model_type") == "llava_llama":
        from .models.vila import VilaProcessor  # VILA1.5's original layout: tokenizer in llm/

        return VilaProcessor.from_pretrained(path, **kwargs)
    config = Path(path) / "processor_config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("processor_class")
        if name in _OURS:
            return _OURS[name].from_pretrained(path, **kwargs)
    return AutoProcessor.from_pretrained(path, **kwargs)
