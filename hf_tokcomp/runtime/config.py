"""The typed config field every compressed model adds to its stock config: ``token_keep``."""

from __future__ import annotations

from huggingface_hub.dataclasses import validated_field

__all__ = ["check_token_keep", "token_keep_field"]


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
