"""Load a compressor-only repo: the compressor from the repo, the base model from its own repo."""

from __future__ import annotations

import json
import os
from typing import Any

from safetensors.torch import load_file
from transformers.utils import cached_file

from ..runtime.compressor import TokenCompressor, TokenCompressorConfig
from ..runtime.registry import family_class
from .config import TokCompConfig

__all__ = ["COMPRESSOR_WEIGHTS", "is_compressor_repo", "load_repo_compressor", "TokCompForImageTextToText"]

COMPRESSOR_WEIGHTS = "model.safetensors"


def load_repo_compressor(repo: str | os.PathLike, config: TokCompConfig | None = None, **hub_kwargs: Any):
    """``(TokenCompressor, TokCompConfig)`` of a compressor-only repo; refuses missing or incomplete weights."""
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    config = config or TokCompConfig.from_pretrained(repo, **hub_kwargs)
    weights = cached_file(str(repo), COMPRESSOR_WEIGHTS, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if weights is None:
        raise ValueError(
            f"`compressor`={str(repo)!r} has no {COMPRESSOR_WEIGHTS}; compressor repos are loaded from safetensors "
            "only. Re-save it with `save_pretrained(..., compressor_only=True)`."
        )
    # a repo written before the feature definition was versioned records none: None, refused by the runtime
    compressor = TokenCompressor(TokenCompressorConfig(**{"features": None, **config.compressor}))
    state = load_file(weights)
    expected = set(compressor.state_dict())
    if set(state) != expected:
        raise ValueError(
            f"`compressor`={str(repo)!r}: weights do not match its config (missing {sorted(expected - set(state))}, "
            f"unexpected {sorted(set(state) - expected)}); refusing to run with randomly initialised layers."
        )
    compressor.load_state_dict(state)
    return compressor.eval(), config


class TokCompForImageTextToText:
    """What ``AutoModelForImageTextToText`` resolves a compressor repo to. ``from_pretrained`` returns the
    compressed model class of the base's family, with the base weights from the base repo (at the recorded
    revision) and the compressor from this repo."""

    config_class = TokCompConfig

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoModelForImageTextToText") -> None:
        """Called by transformers when this class comes from a repo's remote code; nothing to record."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        config: TokCompConfig | None = None,
        token_keep: float | None = None,
        **kwargs: Any,
    ):
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only") if k in kwargs}
        # `revision` names a revision of THIS repo; the base is loaded at the revision the repo records
        revision = kwargs.pop("revision", None)
        compressor, config = load_repo_compressor(
            pretrained_model_name_or_path, config, revision=revision, **hub_kwargs
        )
        family = family_class(config.base_model_type, f"compressor repo {str(pretrained_model_name_or_path)!r}")
        kwargs.pop("trust_remote_code", None)
        if config.base_model_revision is not None:
            kwargs["revision"] = config.base_model_revision
        kwargs["token_keep"] = config.token_keep if token_keep is None else token_keep
        return family.from_pretrained(config.base_model_name_or_path, *model_args, compressor=compressor, **kwargs)


def is_compressor_repo(path: str | os.PathLike, **hub_kwargs: Any) -> bool:
    """Whether ``path`` holds a compressor-only repo (its config.json has model_type 'hf_tokcomp')."""
    try:
        config_file = cached_file(str(path), "config.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if config_file is None:
            return False
        with open(config_file) as handle:
            return json.load(handle).get("model_type") == TokCompConfig.model_type
    except (OSError, ValueError):  # not reachable or not JSON: let the regular loader report it
        return False
