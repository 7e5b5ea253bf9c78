"""Loading and saving a compressed model with its compressor: ``from_pretrained(compressor=...)``,
``set_compressor``, ``save_pretrained`` / ``push_to_hub`` (full checkpoint or ``compressor_only=True``).

Every family class lists :class:`CompressorHubMixin` first, before the runtime mixin and the stock class.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedConfig
from transformers.utils import cached_file

from ..runtime.compressor import TokenCompressor
from ..runtime.config import COMPRESSION_FIELDS
from .resolve import check_feature_width, check_repo_base, resolve_compressor
from .writer import push_compressor_repo, save_compressor_repo

__all__ = ["CompressorHubMixin", "SAVED", "SAVED_COMPRESSOR_DIR", "SETTINGS_FILE"]

#: default of ``from_pretrained(compressor=...)``: the compressor saved with the checkpoint, if any
SAVED = object()
#: where a full ``save_pretrained`` puts the compressor
SAVED_COMPRESSOR_DIR = "compressor"
#: where a full ``save_pretrained`` puts the compression settings (``token_keep``, ...): NOT in config.json, which
#: stock classes read and would then report a ``token_keep`` they do not apply
SETTINGS_FILE = "hf_tokcomp.json"


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("revision", "cache_dir", "token", "local_files_only", "subfolder", "force_download", "proxies")
    return {k: kwargs[k] for k in keys if k in kwargs}


def _saved_settings(path: str | os.PathLike | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The compression settings saved next to a checkpoint (:data:`SETTINGS_FILE`), or {}."""
    if path is None:
        return {}
    try:
        found = cached_file(
            str(path), SETTINGS_FILE, _raise_exceptions_for_missing_entries=False, **_hub_kwargs(kwargs)
        )
    except (OSError, ValueError):
        return {}
    if found is None:
        return {}
    with open(found) as handle:
        settings = json.load(handle)
    unknown = sorted(set(settings) - set(COMPRESSION_FIELDS))
    if unknown:
        raise ValueError(
            f"{str(path)!r}: {SETTINGS_FILE} holds unknown settings {unknown}; known: {list(COMPRESSION_FIELDS)}. "
            "It was written by another hf_tokcomp version: upgrade hf_tokcomp or remove those keys."
        )
    return settings


def _move_settings(save_directory: str | os.PathLike, config: Any) -> None:
    """Take the compression settings out of the saved config.json (a stock class would report them without
    applying them) and write them to :data:`SETTINGS_FILE`, which our ``from_pretrained`` reads."""
    config_file = Path(save_directory) / "config.json"
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
        if any(field in saved for field in COMPRESSION_FIELDS):
            for field in COMPRESSION_FIELDS:
                saved.pop(field, None)
            _write_atomic(config_file, json.dumps(saved, indent=2, sort_keys=True) + "\n")
    settings = {field: getattr(config, field) for field in COMPRESSION_FIELDS if hasattr(config, field)}
    _write_atomic(Path(save_directory) / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _saved_compressor(path: str | os.PathLike | None, kwargs: dict[str, Any]) -> str | None:
    """The ``compressor/`` folder saved next to a checkpoint (local or Hub), or None."""
    if path is None:
        return None
    hub = _hub_kwargs(kwargs)
    try:
        found = cached_file(
            str(path), f"{SAVED_COMPRESSOR_DIR}/config.json", _raise_exceptions_for_missing_entries=False, **hub
        )
    except (OSError, ValueError) as err:
        warnings.warn(
            f"could not check {str(path)!r} for a saved compressor ({err}); loading without one "
            "(training-free scores). Pass `compressor=` explicitly to choose.",
            stacklevel=3,
        )
        return None
    return None if found is None else os.path.dirname(found)


class CompressorHubMixin:
    """Compressor-aware ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` for a compressed model class."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *model_args: Any,
        compressor: str | os.PathLike | nn.Module | None | object = SAVED,
        **kwargs: Any,
    ):
        """Load the stock checkpoint, then attach ``compressor``: a ``TokenCompressor`` directory / Hub id, a
        compressor-only repo, a module, None (training-free), or by default the compressor saved with the
        checkpoint (``compressor/``) if there is one. The compressor is loaded and checked FIRST, so a bad one
        fails before the large download. ``token_keep=`` is a config override like any other; without it, the
        setting saved by our ``save_pretrained`` (:data:`SETTINGS_FILE`) applies."""
        if not isinstance(kwargs.get("config"), PreTrainedConfig):  # a config object given is authoritative
            for field, value in _saved_settings(pretrained_model_name_or_path, kwargs).items():
                kwargs.setdefault(field, value)
        if compressor is SAVED:
            compressor = _saved_compressor(pretrained_model_name_or_path, kwargs)
        resolved = resolve_compressor(compressor, cls.config_class.model_type)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded)._tokcomp_attach(*resolved, str(compressor))
        return loaded

    def set_compressor(self, compressor: str | os.PathLike | nn.Module | None, **hub_kwargs: Any) -> None:
        """Attach a compressor: a saved directory or Hub id, a compressor-only repo, a module, or None
        (training-free). On any error the current compressor stays."""
        resolved = resolve_compressor(compressor, self.config.model_type, **hub_kwargs)
        self._tokcomp_attach(*resolved, str(compressor))

    def _tokcomp_attach(self, module: nn.Module | None, repo_config, name: str) -> None:
        """Check a compressor repo against this base (hidden size, revision), then attach on the model's device."""
        if repo_config is not None:
            check_repo_base(repo_config, name, self.config, getattr(self.config, "_commit_hash", None))
        check_feature_width(module, name, self.config.get_text_config().num_attention_heads)
        self.compressor = None if module is None else module.to(self.device)

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args: Any, compressor_only: bool = False, **kwargs: Any
    ) -> None:
        """``compressor_only=False``: the stock checkpoint (loadable by stock transformers) plus the compressor in
        ``compressor/``, which our ``from_pretrained`` re-attaches. ``compressor_only=True``: a small
        compressor-only repo (see :func:`hf_tokcomp.hub.writer.save_compressor_repo`; its keyword arguments apply)."""
        if compressor_only:
            save_compressor_repo(self, save_directory, **kwargs)
            return
        push = kwargs.pop("push_to_hub", False)
        repo_id = kwargs.pop("repo_id", None)
        compressor = self._modules.pop("compressor", None)
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self._modules["compressor"] = compressor
        _move_settings(save_directory, self.config)
        if isinstance(compressor, TokenCompressor):
            compressor.save_pretrained(os.path.join(save_directory, SAVED_COMPRESSOR_DIR))
        elif compressor is not None:
            warnings.warn(
                f"`model.compressor` is a {type(compressor).__name__}, not a TokenCompressor: it is not "
                "saved; reattach it after loading.",
                stacklevel=2,
            )
        if push:  # after the compressor is written, so the upload holds it
            from huggingface_hub import HfApi

            repo_id = repo_id or os.path.basename(os.path.normpath(save_directory))
            api = HfApi(token=kwargs.get("token"))
            api.create_repo(repo_id, private=kwargs.get("private"), exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=str(save_directory),
                commit_message=kwargs.get("commit_message") or "Upload model (hf_tokcomp)",
            )

    def push_to_hub(self, repo_id: str, *args: Any, compressor_only: bool = False, **kwargs: Any):
        """``compressor_only=True`` uploads exactly what ``save_pretrained(..., compressor_only=True)`` writes."""
        if not compressor_only:
            return super().push_to_hub(repo_id, *args, **kwargs)
        return push_compressor_repo(self, repo_id, **kwargs)
