"""Encode a batch's images once for every method and keep ratio that the harness runs on it.

The vision tower's output does not depend on the selection, and on the organism it is half the cost of a greedy
answer. :class:`MergeMemo` stands in for the model's ``_tokcomp_merge`` (token embeddings with the visual
features scattered in) while it is switched :meth:`~MergeMemo.on`: a call with the very same ``input_ids`` and
visual tensors as the previous one (the same objects, held by the memo so that no other tensor can take their
place) returns the previous result. Only evaluation under ``torch.no_grad`` switches it on (a teacher that
back-propagates through the embeddings must not get a cached, graph-less result).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["MergeMemo"]


class MergeMemo:
    """The last ``_tokcomp_merge`` call of ``model`` and its result, reused while :meth:`on`."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.original = model._tokcomp_merge
        self.key: tuple[Any, ...] | None = None
        self.value: Any = None
        self.active = False
        self.hits = 0
        model._tokcomp_merge = self  # an instance attribute: shadows the class's method until `remove`

    def __call__(self, input_ids: torch.Tensor, visual: dict[str, Any]) -> Any:
        key = (input_ids, *(visual.get(k) for k in sorted(visual)))
        if (
            self.active
            and self.key is not None
            and len(key) == len(self.key)
            and all(a is b for a, b in zip(key, self.key, strict=True))
        ):
            self.hits += 1
            return self.value
        value = self.original(input_ids, visual)
        if self.active:
            self.key, self.value = key, value
        return value

    @contextmanager
    def on(self) -> Iterator[None]:
        """Reuse the last result for identical inputs inside the block (which must run without gradients)."""
        self.active = True
        try:
            with torch.no_grad():
                yield
        finally:
            self.active = False

    def remove(self) -> None:
        """Give the model its own ``_tokcomp_merge`` back and drop the held tensors."""
        if self.model.__dict__.get("_tokcomp_merge") is self:
            del self.model._tokcomp_merge
        self.key = self.value = None
