"""Selection methods, one file each, behind one contract (:mod:`.base`); chosen by ``config.selector``.

``auto`` (the default) is ``learned`` when a compressor is attached, else ``attention``.
"""

from __future__ import annotations

from .attention import AttentionSelector
from .base import ScoreSelector, SegmentBatch, Selection, Selector
from .cdpruner import CDPrunerSelector
from .dart import DARTSelector
from .divprune import DivPruneSelector
from .learned import LearnedSelector
from .random_tokens import RandomSelector
from .uniform import UniformSelector

__all__ = [
    "SELECTORS",
    "SELECTOR_NAMES",
    "AttentionSelector",
    "CDPrunerSelector",
    "DARTSelector",
    "DivPruneSelector",
    "LearnedSelector",
    "RandomSelector",
    "ScoreSelector",
    "SegmentBatch",
    "Selection",
    "Selector",
    "UniformSelector",
    "check_selector",
    "resolve_selector",
]

#: name -> selector class; every name ``config.selector`` accepts, with "auto"
SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (
        LearnedSelector,
        AttentionSelector,
        RandomSelector,
        UniformSelector,
        DivPruneSelector,
        DARTSelector,
        CDPrunerSelector,
    )
}
SELECTOR_NAMES = ("auto", *SELECTORS)


def check_selector(value: object) -> None:
    """Raise a ValueError unless ``value`` is one of :data:`SELECTOR_NAMES`."""
    if not isinstance(value, str) or value not in SELECTOR_NAMES:
        raise ValueError(
            f"`selector` must be one of {list(SELECTOR_NAMES)} (the method that picks the kept visual tokens; "
            f"'auto' = the learned compressor if one is attached, else layer-0 attention), got {value!r}"
        )


def resolve_selector(name: str, has_compressor: bool) -> str:
    """The concrete method ``name`` stands for: ``auto`` -> ``learned`` / ``attention``."""
    check_selector(name)
    if name == "auto":
        return "learned" if has_compressor else "attention"
    return name
