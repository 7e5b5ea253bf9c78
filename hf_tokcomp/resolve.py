"""Turn the user's ``compressor=`` argument into a module, refusing anything that would score silently wrong."""

from __future__ import annotations

import os

from torch import nn

from .compressor import TokenCompressor

__all__ = ["resolve_compressor"]

_HELP = (
    "Pass a directory or Hub id saved with `TokenCompressor.save_pretrained`, an `nn.Module` mapping "
    "(batch, in_channels, n) features to (batch, n) scores, or None for training-free scores."
)


def resolve_compressor(
    spec: str | os.PathLike | nn.Module | None, model_type: str, in_channels: int = 1, **hub_kwargs
) -> nn.Module | None:
    """Load or check a compressor for a model of ``model_type`` whose runtime makes ``in_channels`` features.

    Raises:
        ValueError: the weights are missing, incomplete or unreadable, the compressor was trained for another
            model type, or its feature width differs. Never falls back to random or training-free scores.
    """
    if spec is None or isinstance(spec, nn.Module):
        if isinstance(spec, TokenCompressor):
            _check_compatible(spec, str(type(spec).__name__), model_type, in_channels)
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"`compressor` must be a path, a Hub id, an nn.Module or None, got {type(spec).__name__}. {_HELP}"
        )
    try:
        compressor, info = TokenCompressor.from_pretrained(spec, output_loading_info=True, **hub_kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with the parameter named
        raise ValueError(f"`compressor`={str(spec)!r} could not be loaded: {err}. {_HELP}") from err
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v} | (
        {"errors": info["error_msgs"]} if info.get("error_msgs") else {}
    )
    if problems:
        raise ValueError(
            f"`compressor`={str(spec)!r} has incomplete or mismatched weights ({problems}); refusing to run with "
            "randomly initialised layers. Re-save the compressor or pass a complete checkpoint."
        )
    _check_compatible(compressor, str(spec), model_type, in_channels)
    return compressor.eval()


def _check_compatible(compressor: TokenCompressor, name: str, model_type: str, in_channels: int) -> None:
    cfg = compressor.config
    if cfg.base_model_type is not None and cfg.base_model_type != model_type:
        raise ValueError(
            f"`compressor`={name!r} was trained for model_type {cfg.base_model_type!r}, but this model is "
            f"{model_type!r}. Use a compressor trained for {model_type!r} (or None for training-free scores)."
        )
    if cfg.in_channels != in_channels:
        raise ValueError(
            f"`compressor`={name!r} expects {cfg.in_channels} feature channels, but this model's runtime makes "
            f"{in_channels}. Use a compressor trained with this hf_tokcomp feature width."
        )
