"""Compressor-only repos: write (weights, config with ``auto_map``, generated remote code, model card) and push.

The remote code is GENERATED from this package's own modules (never edited by hand): the modules the runtime
needs are concatenated with their package-relative imports removed, so the repo's code imports only the
standard library, torch, transformers (and huggingface_hub, which transformers depends on).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import tempfile
from pathlib import Path
from string import Template
from typing import Any

from safetensors.torch import save_file

from .compressor import TokenCompressor
from .hub_config import TokCompConfig
from .hub_loader import COMPRESSOR_WEIGHTS

__all__ = ["save_compressor_repo", "push_compressor_repo", "remote_code", "render_card", "REPO_FILES"]

CONFIG_MODULE, MODELING_MODULE = "configuration_tokcomp", "modeling_tokcomp"
#: every file a compressor-only repo holds
REPO_FILES = ("config.json", COMPRESSOR_WEIGHTS, f"{CONFIG_MODULE}.py", f"{MODELING_MODULE}.py", "README.md")
#: the package modules the remote code is generated from, in dependency order
_REMOTE_MODULES = (
    "_compat",
    "config",
    "compressor",
    "selection",
    "features",
    "compression",
    "segments",
    "hub_config",
    "hub_loader",
    "resolve",
    "mixin",
    "models.qwen_vl",
    "models.qwen2_vl",
    "models.qwen2_5_vl",
    "models.llava_onevision",
    "models.vila.config",
    "models.vila.projector",
    "models.vila.templates",
    "models.vila.checkpoint.loading",
    "models.vila.modeling",
    "models.registry",
)
_CARDS = Path(__file__).resolve().parent.parent / "hub_cards"


def _strip(source: str, module: str) -> tuple[str, set[str]]:
    """Remove ``from __future__``, package-relative imports and ``__all__``; return the source and the
    top-level names it defines."""
    tree = ast.parse(source)
    drop: set[int] = set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == "__future__"):
            drop.update(range(node.lineno, node.end_lineno + 1))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            drop.update(range(node.lineno, node.end_lineno + 1))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    lines = [line for i, line in enumerate(source.splitlines(), 1) if i not in drop]
    return f"# ---- hf_tokcomp/{module.replace('.', '/')}.py ----\n" + "\n".join(lines).strip() + "\n", names


def remote_code() -> dict[str, str]:
    """``{file name: source}`` of the repo's self-contained code, generated from the installed package."""
    from . import __version__

    header = (
        f'"""Generated from hf_tokcomp {__version__} by hf_tokcomp.hub.remote_code(): do not edit. '
        'Imports only torch, transformers and the standard library."""\n\nfrom __future__ import annotations\n\n'
    )
    chunks, seen = [], {}
    for module in _REMOTE_MODULES:
        source = inspect.getsource(importlib.import_module(f"hf_tokcomp.{module}"))
        chunk, names = _strip(source, module)
        clash = {n for n in names if n in seen and not n.startswith("_Stock")}
        if clash:
            raise RuntimeError(
                f"remote code generation: {sorted(clash)} defined in both {module} and "
                f"{[seen[n] for n in clash]}; rename one"
            )
        seen.update(dict.fromkeys(names, module))
        chunks.append(chunk)
    modeling = header + "\n\n".join(chunks) + "\n\ncheck_transformers_version()\n"
    config_chunk, _ = _strip(inspect.getsource(importlib.import_module("hf_tokcomp.hub_config")), "hub_config")
    return {f"{MODELING_MODULE}.py": modeling, f"{CONFIG_MODULE}.py": header + config_chunk}


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
        if k in ("in_channels", "channels", "kernel_size", "normalize_input", "base_model_type")
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
    from . import __version__

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
                "version": __version__,
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
