"""``VilaProcessor``: VILA1.5's prompt templates, chunked tokenisation and image / video preprocessing.

Tokenisation follows the original exactly: the prompt is split on the image markers, each text chunk is tokenised
on its own with the tokenizer's special tokens, and when the first chunk starts with BOS only the first chunk keeps
it (every chunk loses its first token). Each marker becomes ``num_image_tokens`` placeholder ids. A ``<video>``
marker stands for ``num_video_frames`` frames written as the original writes them, ``"<image>\\n" * 8`` minus the
last newline, each frame with the video placeholder id.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase
from transformers.utils import cached_file

from .config import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VilaConfig
from .templates import get_template, template_for_checkpoint

__all__ = ["VilaProcessor", "sample_frame_indices"]

ImageInput = Image.Image | np.ndarray
_MARKERS = re.compile(r"(<image>|<video>)")


def sample_frame_indices(num_frames: int, wanted: int = 8) -> list[int]:
    """Frame indices VILA1.5 samples from a video of ``num_frames`` frames: ``linspace(0, num_frames - 2, wanted)``
    truncated to integers. Shorter videos (fewer than ``wanted`` frames) use all their frames (see
    :meth:`VilaProcessor.sample_video`)."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num_frames < wanted:
        return list(range(num_frames))
    return np.linspace(0, num_frames - 2, wanted).astype(int).tolist()


class VilaProcessor:
    """Prompts, token ids and pixels for :class:`~hf_tokcomp.VilaForConditionalGeneration`.

    Args:
        tokenizer: the checkpoint's tokenizer (``llm/``).
        template: conversation template name (see ``hf_tokcomp.models.vila.templates.TEMPLATES``), or None.
        image_size: side of the square the images are resized to (aspect ratio not kept), 384 for VILA1.5.
        num_image_tokens: visual tokens per image (196 for VILA1.5).
        num_video_frames: frames sampled per video (8).
        image_token_id, video_token_id: placeholder ids (as in the model's config).
    """

    image_mean = 0.5
    image_std = 0.5

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: str | None = "vicuna_v1",
        image_size: int = 384,
        num_image_tokens: int = 196,
        num_video_frames: int = 8,
        image_token_id: int = IMAGE_TOKEN_ID,
        video_token_id: int = VIDEO_TOKEN_ID,
    ) -> None:
        if template is not None:
            get_template(template)
        self.tokenizer = tokenizer
        self.template = template
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.num_video_frames = num_video_frames
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase, config: VilaConfig, template: str | None = None):
        """The processor matching a model ``config`` (template: ``template``, else the config's)."""
        return cls(
            tokenizer,
            template=template or config.chat_template,
            image_size=config.vision_tower_cfg.image_size,
            num_image_tokens=config.num_image_tokens,
            num_video_frames=config.num_video_frames,
            image_token_id=config.image_token_id,
            video_token_id=config.video_token_id,
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, template: str | None = None, **hub_kwargs: Any):
        """Read a checkpoint in the original layout: the tokenizer from ``llm/``, sizes from the root config.
        ``template`` defaults to the checkpoint's ``chat_template``, else to the one its name implies."""
        root = json.loads(Path(cached_file(str(path), "config.json", **hub_kwargs)).read_text())
        fields = {k: v for k, v in root.items() if k not in ("model_type", "transformers_version")}
        config = VilaConfig(**fields)
        tokenizer = AutoTokenizer.from_pretrained(str(path), subfolder="llm", **hub_kwargs)
        template = template or config.chat_template or template_for_checkpoint(str(path))
        if template is None:
            raise ValueError(
                f"could not tell the chat template of {str(path)!r} from its config or name; pass `template=` (one "
                "of 'vicuna_v1', 'llama_3', 'llama_3_fix', 'hermes-2')."
            )
        return cls.from_config(tokenizer, config, template)

    # ---- text ------------------------------------------------------------------------------------------------
    def apply_template(self, message: str, template: str | None = None) -> str:
        """The prompt for one user ``message`` (with its own ``<image>`` / ``<video>`` markers, e.g.
        ``"<image>\\nWhat is shown?"``) in ``template`` (default: the processor's)."""
        name = template or self.template
        if name is None:
            raise ValueError("this processor has no chat template; pass `template=` or set `processor.template`")
        return get_template(name).format(message)

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, tokenize: bool = False, **_: Any
    ) -> str:
        """A one-turn conversation in the transformers message format (``{"role": "user", "content": [{"type":
        "image"}, {"type": "text", "text": ...}]}``) as this processor's template prompt, each image / video
        written as ``<image>\n`` / ``<video>\n`` before the text (how VILA1.5's evaluation builds prompts). Lets
        ``tokcomp label`` / ``tokcomp eval`` drive VILA like the other families."""
        if tokenize or not add_generation_prompt or [m.get("role") for m in messages] != ["user"]:
            raise ValueError(
                "VilaProcessor.apply_chat_template takes one user message, with add_generation_prompt=True and "
                "tokenize=False; for other conversations write the prompt with `apply_template`"
            )
        pieces = []
        for item in messages[0]["content"]:
            if item["type"] in ("image", "video"):
                pieces.append(f"<{item['type']}>\n")
            elif item["type"] == "text":
                pieces.append(item["text"])
            else:
                raise ValueError(f"message content type must be 'image', 'video' or 'text', got {item['type']!r}")
        return self.apply_template("".join(pieces))

    def _expand_video_markers(self, prompt: str) -> list[str]:
        """``prompt`` split into text and markers, each ``<video>`` written as its frames."""
        parts: list[str] = []
        for part in _MARKERS.split(prompt):
            if part == "<video>":
                frames = ["<video>", "\n"] * self.num_video_frames
                parts += frames[:-1]
            else:
                parts.append(part)
        merged: list[str] = []  # join neighbouring text pieces
        for part in parts:
            if merged and part not in ("<image>", "<video>") and merged[-1] not in ("<image>", "<video>"):
                merged[-1] += part
            else:
                merged.append(part)
        return merged

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of one prompt, each marker expanded to its placeholder ids (the original's chunked
        tokenisation; see the module docstring)."""
        parts = self._expand_video_markers(prompt)
        chunks: list[str] = [""]
        markers: list[str] = []
        for part in parts:
            if part in ("<image>", "<video>"):
                markers.append(part)
                chunks.append("")
            else:
                chunks[-1] += part
        ids = [self.tokenizer(chunk).input_ids for chunk in chunks]
        bos = self.tokenizer.bos_token_id
        offset = 1 if ids[0] and ids[0][0] == bos else 0
        out = ids[0][:1] if offset else []
        for i, chunk_ids in enumerate(ids):
            out += chunk_ids[offset:]
            if i < len(markers):
                token = self.image_token_id if markers[i] == "<image>" else self.video_token_id
                out += [token] * self.num_image_tokens
        return out

    def batch_decode(self, sequences: torch.Tensor | list[list[int]], **kwargs: Any) -> list[str]:
        """``tokenizer.batch_decode`` without the (negative) placeholder ids."""
        rows = sequences.tolist() if isinstance(sequences, torch.Tensor) else sequences
        return self.tokenizer.batch_decode([[t for t in row if t >= 0] for row in rows], **kwargs)

    def decode(self, ids: torch.Tensor | list[int], **kwargs: Any) -> str:
        return self.batch_decode([ids.tolist() if isinstance(ids, torch.Tensor) else ids], **kwargs)[0]

    # ---- pixels ----------------------------------------------------------------------------------------------
    def preprocess_image(self, image: ImageInput) -> torch.Tensor:
        """``(3, S, S)`` float32: RGB, bicubic resize to S x S (aspect ratio not kept), x / 255, (x - 0.5) / 0.5."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(
                    f"an image array must be (height, width, 3) uint8, got {image.dtype} {image.shape}; pass a "
                    "PIL image or convert the array."
                )
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"`images` must be PIL images or (H, W, 3) uint8 arrays, got {type(image).__name__}")
        image = image.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
        pixels = (pixels - np.float32(self.image_mean)) / np.float32(self.image_std)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def sample_video(self, video: list[ImageInput] | np.ndarray) -> list[ImageInput]:
        """The ``num_video_frames`` frames VILA1.5 reads from ``video`` (frames, or a ``(T, H, W, 3)`` uint8 array):
        :func:`sample_frame_indices`; a shorter video is left-padded with black frames, as the original does."""
        frames = list(video)
        picked = [frames[i] for i in sample_frame_indices(len(frames), self.num_video_frames)]
        if len(picked) < self.num_video_frames:
            last = picked[-1]
            width, height = last.size if isinstance(last, Image.Image) else (last.shape[1], last.shape[0])
            black = Image.new("RGB", (width, height))
            picked = [black] * (self.num_video_frames - len(picked)) + picked
        return picked

    def __call__(
        self,
        text: str | list[str],
        images: list[ImageInput] | None = None,
        videos: list[list[ImageInput] | np.ndarray] | None = None,
        padding_side: str = "left",
        return_tensors: str = "pt",
        padding: bool = True,
    ) -> BatchFeature:
        """Model inputs for a batch of prompts (already templated, see :meth:`apply_template`).

        Args:
            text: one prompt or a batch; ``<image>`` / ``<video>`` mark where each image / video goes.
            images: the images of all prompts, in marker order; ``videos``: likewise, each a list of frames or a
                ``(T, H, W, 3)`` uint8 array.
            padding_side: "left" (generation) or "right".
            padding: must be True (a batch is always padded to its longest prompt).

        Returns:
            ``input_ids``, ``attention_mask`` ``(B, L)``; ``pixel_values`` ``(N, 3, S, S)`` with images;
            ``pixel_values_videos`` ``(V, F, 3, S, S)`` with videos.
        """
        if return_tensors != "pt":
            raise ValueError(f"`return_tensors` must be 'pt', got {return_tensors!r}")
        if padding is not True:
            raise ValueError(f"`padding` must be True (batches are padded to the longest prompt), got {padding!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"`padding_side` must be 'left' or 'right', got {padding_side!r}")
        prompts = [text] if isinstance(text, str) else list(text)
        images, videos = list(images or []), list(videos or [])
        for marker, given, name in (("<image>", images, "images"), ("<video>", videos, "videos")):
            wanted = sum(p.count(marker) for p in prompts)
            if wanted != len(given):
                raise ValueError(
                    f"the prompts hold {wanted} {marker} marker(s) but {len(given)} {name} were passed; put one "
                    f"{marker} in the text for each of the {name}, in order."
                )
        rows = [self.tokenize(p) for p in prompts]
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, ids in enumerate(rows):
            span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
            input_ids[b, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, span] = 1
        data: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if images:
            data["pixel_values"] = torch.stack([self.preprocess_image(i) for i in images])
        if videos:
            data["pixel_values_videos"] = torch.stack(
                [torch.stack([self.preprocess_image(f) for f in self.sample_video(v)]) for v in videos]
            )
        return BatchFeature(data=data, tensor_type="pt")
