"""Make a saved Qwen2-VL checkpoint's processor files loadable by vLLM (plain JSON edits, no vLLM import).

hf_tokcomp saves small models (the organism, ``tokcomp processor`` output) with its image-only processor class,
``ImageQwen2VLProcessor``, which vLLM does not know; vLLM's Qwen2-VL loads ``Qwen2VLProcessor``, which also wants a
video processor. :func:`use_stock_processor` rewrites the folder's ``processor_config.json`` /
``tokenizer_config.json`` to name the stock class, with a video processor block copied from the image
processor's settings (vLLM needs it to exist; the plugin serves images only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["use_stock_processor"]


def use_stock_processor(
    folder: str | os.PathLike,
    pixels: int | None = None,
    processor_class: str = "Qwen2VLProcessor",
    video_processor_class: str = "Qwen2VLVideoProcessor",
) -> None:
    """Rewrite ``folder``'s processor files for vLLM (in place). ``pixels``: also fix every image's size to
    ``pixels`` pixels (min = max), e.g. ``448 ** 2`` for 256 visual tokens. ``processor_class``: the stock class
    to name (``"Qwen2_5_VLProcessor"`` for a Qwen2.5-VL checkpoint, ``"Qwen3VLProcessor"`` with
    ``video_processor_class="Qwen3VLVideoProcessor"`` for a Qwen3-VL one)."""
    folder = Path(folder)
    path = folder / "processor_config.json"
    processor = json.loads(path.read_text())
    if pixels is not None:
        processor["image_processor"]["size"] = {"shortest_edge": pixels, "longest_edge": pixels}
    processor["processor_class"] = processor_class
    video = {k: v for k, v in processor["image_processor"].items() if k != "image_processor_type"}
    processor["video_processor"] = {**video, "video_processor_type": video_processor_class}
    path.write_text(json.dumps(processor, indent=1))
    path = folder / "tokenizer_config.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["processor_class"] = processor_class
    path.write_text(json.dumps(tokenizer, indent=1))
