"""Conversation formats people keep their data in, turned into the records ``tokcomp`` reads.

A record is ``{"image": path | PIL image | [...], "question": str, "answer": str (optional), ...}`` (or
``"video"``); the question follows the image(s) unless ``"question_first": true``. Also accepted, per sample:

- ``messages`` (TRL / HF chat templates): a list of ``{"role", "content"}`` turns whose content is a string or a
  list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts, with the images in an ``images`` (or
  ``image``) column; the first user turn is the question, the assistant turn after it the answer.
- LLaVA ``conversations``: ``[{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]``
  with an ``image`` column; ``<image>`` markers are removed from the question.

Images may be paths, PIL images, ``{"bytes": ..., "path": ...}`` dicts, raw bytes, or http(s) URLs (fetched when
a network is reachable, else a clear error).
"""

from __future__ import annotations

import io
import os
from typing import Any

__all__ = ["normalise_record", "open_image"]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [] if part.get("type") == "text").strip()


def normalise_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` in the common form (see the module docstring); records already in it are returned unchanged.

    Raises:
        ValueError: a conversation without a user turn.
    """
    record = dict(record)
    if "images" in record and "image" not in record:  # the chat-template column name, whatever the format
        images = record.pop("images")
        record["image"] = images if not isinstance(images, list) or len(images) != 1 else images[0]
    if "question" in record:
        return record
    if record.get("messages"):
        turns = record.pop("messages")
        user = next((i for i, t in enumerate(turns) if t.get("role") == "user"), None)
        if user is None:
            raise ValueError(f"a `messages` sample has no user turn (roles: {[t.get('role') for t in turns]})")
        record["question"] = _text(turns[user]["content"])
        reply = next((t for t in turns[user + 1 :] if t.get("role") == "assistant"), None)
        if reply is not None:
            record["answer"] = _text(reply["content"])
        return record
    if record.get("conversations"):
        turns = record.pop("conversations")
        human = next((i for i, t in enumerate(turns) if t.get("from") in ("human", "user")), None)
        if human is None:
            raise ValueError(f"a `conversations` sample has no human turn (speakers: {[t.get('from') for t in turns]})")
        record["question"] = " ".join(turns[human]["value"].replace("<image>", " ").split())
        reply = next((t for t in turns[human + 1 :] if t.get("from") in ("gpt", "assistant")), None)
        if reply is not None:
            record["answer"] = reply["value"].strip()
        return record
    return record


def open_image(value: Any):
    """An RGB PIL image from a path, an http(s) URL, bytes, a ``{"bytes", "path"}`` dict or a PIL image."""
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(value, timeout=30) as response:  # noqa: S310 - the user's own data
                return Image.open(io.BytesIO(response.read())).convert("RGB")
        except OSError as err:
            raise ValueError(
                f"image URL {value!r} could not be fetched ({err}); without a network, download the images and "
                "give their paths instead"
            ) from err
    if isinstance(value, (str, os.PathLike)):
        return Image.open(value).convert("RGB")
    return value.convert("RGB")
