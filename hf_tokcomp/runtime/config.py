"""The typed config field every compressed model adds to its stock config: ``token_keep``."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import validated_field

from .selectors import check_selector

__all__ = [
    "COMPRESSION_FIELDS",
    "QWEN_ANSWER_START",
    "answer_start_field",
    "as_config_class",
    "check_answer_start_ids",
    "check_token_keep",
    "check_token_coverage",
    "coverage_field",
    "selector_field",
    "token_keep_field",
]


def check_token_keep(value: object) -> None:
    """Raise a ValueError unless ``value`` is a number in (0, 1] (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(
            f"`token_keep` must be a number in (0, 1] (the fraction of visual tokens to keep; 1.0 = no "
            f"compression), got {value!r}"
        )


def token_keep_field(default: float = 1.0):
    """A dataclass field validated on construction, on ``from_pretrained`` overrides and on assignment."""
    return validated_field(validator=check_token_keep, default=default)


def check_token_coverage(value: object) -> None:
    """Raise a ValueError unless ``value`` is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(
            f"`token_coverage` must be a number in [0, 1) (the share of each segment's budget spent on tokens "
            f"spread evenly over its grid before the scores choose the rest; 0 = the scores alone), got {value!r}"
        )


def coverage_field(default: float = 0.0):
    """The ``token_coverage`` field (see :mod:`hf_tokcomp.runtime.selectors.base`), validated like ``token_keep``."""
    return validated_field(validator=check_token_coverage, default=default)


#: the config fields every compression config adds to its stock config
COMPRESSION_FIELDS = ("token_keep", "token_coverage", "answer_start_ids", "selector")

#: ``<|im_start|>assistant\n`` in the Qwen2 tokenizer (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision's Qwen2 LLM)
QWEN_ANSWER_START = (151644, 77091, 198)


def check_answer_start_ids(value: object) -> None:
    """Raise a ValueError unless ``value`` is None or a non-empty list of non-negative token ids."""
    if value is None:
        return
    ok = isinstance(value, (list, tuple)) and len(value) > 0
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise ValueError(
            "`answer_start_ids` must be None or a non-empty list of token ids: the ids that open the assistant's "
            f"answer in the chat template (its generation prompt, e.g. `<|im_start|>assistant\\n`), got {value!r}"
        )


def selector_field(default: str = "auto"):
    """The ``selector`` field: the selection method by name (see :mod:`hf_tokcomp.runtime.selectors`), validated
    on construction, on ``from_pretrained`` overrides and on assignment."""
    return validated_field(validator=check_selector, default=default)


def answer_start_field(default: tuple[int, ...] | None = None):
    """The ``answer_start_ids`` field: where the answer starts in a training sequence, so that the selection
    never reads it whatever the collator labels. Validated like ``token_keep``."""
    if default is None:
        return validated_field(validator=check_answer_start_ids, default=None)
    return validated_field(validator=check_answer_start_ids, default_factory=lambda: list(default))


#: per-instance settings a config keeps out of ``to_dict()``, which a conversion must carry over itself
_UNSERIALISED = ("_attn_implementation_internal", "_experts_implementation_internal", "_commit_hash", "_name_or_path")


def _carry_unserialised(source: Any, target: Any) -> None:
    """Copy :data:`_UNSERIALISED` from ``source`` to ``target`` and recursively into their sub-configs."""
    for name in _UNSERIALISED:
        if name in vars(source):
            target.__dict__[name] = vars(source)[name]
    for key in getattr(source, "sub_configs", {}) or {}:
        sub_source, sub_target = getattr(source, key, None), getattr(target, key, None)
        if sub_source is not None and sub_target is not None:
            _carry_unserialised(sub_source, sub_target)


def as_config_class(config: Any, config_class: type) -> Any:
    """``config`` as an instance of ``config_class`` (a stock config's subclass that adds ``token_keep``).

    ``config_class(**config.to_dict())`` alone loses what ``to_dict`` leaves out - the attention implementation
    of the config and of every sub-config (a model asked for eager would silently run sdpa), the experts
    implementation, the commit hash - so those are carried over explicitly.
    """
    converted = config_class(**config.to_dict())
    _carry_unserialised(config, converted)
    return converted
