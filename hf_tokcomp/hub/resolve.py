"""Turn the user's ``compressor=`` argument into a module, refusing anything that would score silently wrong."""

from __future__ import annotations

import os
import warnings

from torch import nn

from ..runtime.compressor import TokenCompressor
from ..runtime.features import compressor_spec
from .config import TokCompConfig
from .loader import is_compressor_repo, load_repo_compressor

__all__ = ["resolve_compressor", "check_repo_base", "check_feature_width"]

_HELP = (
    "Pass a directory or Hub id saved with `TokenCompressor.save_pretrained`, an `nn.Module` mapping "
    "(batch, in_channels, n) features to (batch, n) scores, or None for training-free scores."
)


def resolve_compressor(
    spec: str | os.PathLike | nn.Module | None, model_type: str, num_heads: int | None = None, **hub_kwargs
) -> tuple[nn.Module | None, TokCompConfig | None]:
    """Load or check a compressor for a model of ``model_type`` with ``num_heads`` attention heads (None: the
    feature width is checked later, by :func:`check_feature_width`).

    ``spec`` may be a ``TokenCompressor`` directory / Hub id, a compressor-only repo (``save_pretrained(...,
    compressor_only=True)``), a module, or None. Returns the module and, for a compressor-only repo, its
    :class:`TokCompConfig` (for :func:`check_repo_base` once the base model is loaded).

    Raises:
        ValueError: the weights are missing, incomplete or unreadable, the compressor was trained for another
            model type, its feature definition is of another version, or its feature width differs. Never falls
            back to random or training-free scores.
    """
    if spec is None or isinstance(spec, nn.Module):
        if isinstance(spec, TokenCompressor):
            _check_compatible(spec, str(type(spec).__name__), model_type, num_heads)
        return spec, None
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"`compressor` must be a path, a Hub id, an nn.Module or None, got {type(spec).__name__}. {_HELP}"
        )
    if is_compressor_repo(spec, **hub_kwargs):
        compressor, repo_config = load_repo_compressor(spec, **hub_kwargs)
        _check_compatible(compressor, str(spec), model_type, num_heads, repo_config.base_model_type)
        return compressor, repo_config
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
    _check_compatible(compressor, str(spec), model_type, num_heads)
    return compressor.eval(), None


def check_repo_base(repo_config: TokCompConfig, name: str, base_config, base_revision: str | None) -> None:
    """Refuse a compressor repo made for another hidden size; warn (naming both) on another base revision."""
    hidden = base_config.get_text_config().hidden_size
    if repo_config.base_hidden_size is not None and repo_config.base_hidden_size != hidden:
        raise ValueError(
            f"`compressor`={name!r} was trained on a base with hidden size {repo_config.base_hidden_size}, but this "
            f"model has {hidden}. Use the compressor made for this base model."
        )
    wanted = repo_config.base_model_revision
    if wanted is not None and base_revision is not None and wanted != base_revision:
        warnings.warn(
            f"`compressor`={name!r} was trained on base revision {wanted!r}, but the loaded base is revision "
            f"{base_revision!r}; its scores may not fit. Load the base with `revision={wanted!r}`.",
            stacklevel=3,
        )


def check_feature_width(compressor: nn.Module | None, name: str, num_heads: int) -> None:
    """Refuse a :class:`TokenCompressor` whose ``in_channels`` differ from what its feature definition makes on
    a model with ``num_heads`` heads (one channel, or one per head)."""
    if not isinstance(compressor, TokenCompressor):
        return
    expected = compressor_spec(compressor).channels(num_heads)
    if compressor.config.in_channels != expected:
        raise ValueError(
            f"`compressor`={name!r} expects {compressor.config.in_channels} feature channels, but its feature "
            f"definition {compressor.config.features!r} makes {expected} on this {num_heads}-head model. Use a "
            "compressor trained for this model."
        )


def _check_compatible(
    compressor: TokenCompressor, name: str, model_type: str, num_heads: int | None, repo_type: str | None = None
) -> None:
    cfg = compressor.config
    trained_for = repo_type or cfg.base_model_type
    if trained_for is not None and trained_for != model_type:
        raise ValueError(
            f"`compressor`={name!r} was trained for model_type {trained_for!r}, but this model is "
            f"{model_type!r}. Use a compressor trained for {model_type!r} (or None for training-free scores)."
        )
    try:
        compressor_spec(compressor)
    except ValueError as err:
        raise ValueError(f"`compressor`={name!r}: {err}") from None
    if num_heads is not None:
        check_feature_width(compressor, name, num_heads)
