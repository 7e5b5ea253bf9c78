"""Compressor-only repos: write (weights, config with ``auto_map``, generated remote code, model card) and push.

The remote code comes from :mod:`hf_tokcomp.hub.remote_code`; the card from ``hub_cards/``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from string import Template
from typing import Any

from safetensors.torch import save_file

from ..runtime._compat import VERSION
from ..runtime.compressor import TokenCompressor
from .config import TokCompConfig
from .loader import COMPRESSOR_WEIGHTS
from .remote_code import CONFIG_MODULE, MODELING_MODULE, remote_code

__all__ = ["save_compressor_repo", "push_compressor_repo", "render_card", "REPO_FILES"]

#: every file a compressor-only repo holds
REPO_FILES = ("config.json", COMPRESSOR_WEIGHTS, f"{CONFIG_MODULE}.py", f"{MODELING_MODULE}.py", "README.md")
_CARDS = Path(__file__).resolve().parents[2] / "hub_cards"


def render_card(values: dict[str, Any], template: str = "compressor.md") -> str:
    """The model card from ``hub_cards/<template>`` with ``values`` substituted (every placeholder required)."""
    path = _CARDS / template
    if not path.is_file():
        raise FileNotFoundError(f"model card template {path} not found (hub_cards/ ships with the source tree)")
    return Template(path.read_text()).substitute({k: str(v) for k, v in values.items()})


def save_compressor_repo(
    model,
    save_directory: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    base_revision: str | None = None,
    repo_id: str | None = None,
    evaluation: str | None = None,
    license: str = "apache-2.0",
) -> list[str]:
    """Write a compressor-only repo for ``model`` (an hf_tokcomp model with a ``TokenCompressor`` attached).

    Args:
        base_model_name_or_path: the base repo (default: where ``model`` was loaded from).
        base_revision: the base revision to record (default: the loaded commit, if known).
        repo_id: the repo's Hub id, for the card's usage lines (default: the directory name).
        evaluation: a markdown table for the card (e.g. from ``tokcomp eval``).

    Returns:
        The names of the files written (:data:`REPO_FILES`).
    """
    compressor = model.compressor
    if not isinstance(compressor, TokenCompressor):
        raise ValueError(
            f"`compressor_only=True` saves a TokenCompressor, but `model.compressor` is "
            f"{type(compressor).__name__}; attach one with `model.set_compressor(...)` first"
        )
    base = base_model_name_or_path or getattr(model.config, "_name_or_path", None)
    if not base:
        raise ValueError("`base_model_name_or_path` is needed: this model was not loaded with from_pretrained")
    revision = base_revision or getattr(model.config, "_commit_hash", None)
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        k: v
        for k, v in compressor.config.to_dict().items()
        if k in ("in_channels", "channels", "kernel_size", "normalize_input", "base_model_type", "features")
    }
    settings["channels"] = list(settings["channels"])
    config = TokCompConfig(
        base_model_name_or_path=str(base),
        base_model_revision=revision,
        base_model_type=model.config.model_type,
        base_hidden_size=model.config.get_text_config().hidden_size,
        token_keep=model.config.token_keep,
        compressor=settings,
    )
    config.auto_map = {
        "AutoConfig": f"{CONFIG_MODULE}.TokCompConfig",
        "AutoModelForImageTextToText": f"{MODELING_MODULE}.TokCompForImageTextToText",
    }
    config.save_pretrained(out)
    state = {k: v.detach().cpu().contiguous() for k, v in compressor.state_dict().items()}
    save_file(state, str(out / COMPRESSOR_WEIGHTS), metadata={"format": "pt"})
    for name, source in remote_code().items():
        (out / name).write_text(source)
    (out / "README.md").write_text(
        render_card(
            {
                "title": f"{repo_id or out.name}",
                "repo_id": repo_id or out.name,
                "base_model": base,
                "base_model_type": config.base_model_type,
                "base_hidden_size": config.base_hidden_size,
                "base_revision": revision or "not recorded",
                "base_revision_literal": repr(revision),
                "model_class": type(model).__name__,
                "token_keep": config.token_keep,
                "token_keep_percent": f"{100 * config.token_keep:g}",
                "num_parameters": f"{compressor.num_parameters():,}",
                "compressor_settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
                "version": VERSION,
                "license": license,
                "evaluation": evaluation
                or "Not evaluated yet: `tokcomp eval` writes the retention table to paste here.",
            }
        )
    )
    return list(REPO_FILES)


def push_compressor_repo(
    model,
    repo_id: str,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload compressor (hf_tokcomp)",
    **save_kwargs: Any,
):
    """Save the compressor-only repo to a temporary folder and upload exactly those files."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_compressor_repo(model, tmp, repo_id=repo_id, **save_kwargs)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
