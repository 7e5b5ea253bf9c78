"""What lmms-eval's own wrappers do to a task's visuals before the processor sees them, without torchvision.

lmms-eval's Qwen2-VL / Qwen2.5-VL wrappers re-encode every PIL image as a JPEG (quality 85) data URL and pass it
through ``qwen_vl_utils.process_vision_info``, which converts it to RGB and resizes it with PIL to the
``smart_resize`` grid (multiples of 28 px, between ``min_pixels`` and ``max_pixels``). ``qwen_vl_utils`` imports
torchvision at module level, which does not import beside the CPU torch, so the same steps are written here
(the resize rule is transformers' own ``smart_resize``). Videos are read with PyAV (lmms-eval's dependency) as
``max_num_frames`` frames spread evenly over the clip.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

__all__ = ["VisualPolicy", "prepare_image", "read_video", "split_visuals"]

_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass(frozen=True)
class VisualPolicy:
    """How a family's lmms-eval wrapper prepares visuals.

    Attributes:
        jpeg_quality: re-encode images as JPEG at this quality first (None: keep the pixels as given).
        min_pixels, max_pixels: resize to the ``smart_resize`` grid of ``resize_factor`` px within these bounds
            (None: leave the size to the processor).
        resize_factor: the grid of the resize (Qwen2-VL: 14 px patches merged 2 x 2 = 28).
        max_num_frames: frames sampled from a video file.
    """

    jpeg_quality: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    resize_factor: int = 28
    max_num_frames: int = 32

    def __post_init__(self) -> None:
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"`jpeg_quality` must be in [1, 100] or None, got {self.jpeg_quality}")
        if (self.min_pixels is None) != (self.max_pixels is None):
            raise ValueError(f"`min_pixels` and `max_pixels` go together, got {self.min_pixels} and {self.max_pixels}")
        if self.min_pixels is not None and not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        if self.max_num_frames < 1:
            raise ValueError(f"`max_num_frames` must be >= 1, got {self.max_num_frames}")


def prepare_image(image: Image.Image, policy: VisualPolicy) -> Image.Image:
    """``image`` as the family's lmms-eval wrapper hands it to the processor: JPEG round trip, RGB (RGBA
    composited on white), then resized with PIL's default filter to the ``smart_resize`` grid."""
    if policy.jpeg_quality is not None:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=policy.jpeg_quality)
        image = Image.open(io.BytesIO(buffer.getvalue()))
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        image = white
    image = image.convert("RGB")
    if policy.min_pixels is not None:
        height, width = smart_resize(
            image.height, image.width, policy.resize_factor, policy.min_pixels, policy.max_pixels
        )
        if (width, height) != image.size:
            image = image.resize((width, height))
    return image


def read_video(path: str, max_num_frames: int) -> list[Image.Image]:
    """``max_num_frames`` RGB frames of the video file at ``path``, evenly spaced from the first to the last."""
    try:
        import av
    except ImportError as err:
        raise ImportError("reading video files needs PyAV (`pip install av`; lmms-eval installs it)") from err
    with av.open(path) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"the video {path!r} has no frames")
    picks = np.linspace(0, len(frames) - 1, min(max_num_frames, len(frames))).round().astype(int)
    return [frames[i].convert("RGB") for i in picks]


def split_visuals(visuals: list[Any], policy: VisualPolicy) -> tuple[list[Image.Image], list[list[Image.Image]]]:
    """A task document's visuals as (images, videos): PIL images prepared by :func:`prepare_image`; video files
    (``.mp4`` ...) read as frames (resized like images, not re-encoded); anything else is refused by type."""
    images, videos = [], []
    for visual in visuals:
        if isinstance(visual, Image.Image):
            images.append(prepare_image(visual, policy))
        elif isinstance(visual, str) and visual.lower().endswith(_VIDEO_SUFFIXES):
            frames = read_video(visual, policy.max_num_frames)  # decoded frames: no JPEG round trip
            videos.append([prepare_image(f, replace(policy, jpeg_quality=None)) for f in frames])
        else:
            raise TypeError(
                f"a task's visuals must be PIL images or video file paths ({', '.join(_VIDEO_SUFFIXES)}), got "
                f"{type(visual).__name__} {str(visual)[:80]!r}"
            )
    return images, videos
