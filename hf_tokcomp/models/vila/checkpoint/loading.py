"""Load and save the ORIGINAL VILA1.5 layout: root ``config.json`` + ``llm/`` (LlamaForCausalLM) +
``vision_tower/`` (SiglipVisionModel) + ``mm_projector/`` (``config.json``, ``model.safetensors``).

Each folder is loaded by its own stock class; any missing, unexpected or mismatched weight is an error that names
it (a VILA model must never run with randomly initialised layers). Only the SigLIP tower's pooling head and
post-layernorm may be absent: VILA's forward never runs them.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, SiglipVisionModel
from transformers.utils import cached_file

from ..config import VilaConfig
from ..projector import MlpDownsampleProjector
from ..templates import template_for_checkpoint

__all__ = ["load_original", "save_original", "FOLDERS"]

#: the three sub-folders, named as the original code derives them from the config keys
FOLDERS = {"llm_cfg": "llm", "vision_tower_cfg": "vision_tower", "mm_projector_cfg": "mm_projector"}
_HUB_KEYS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "proxies")
_LOAD_KEYS = ("attn_implementation", "device_map")
#: weights of the tower that VILA never uses (it reads hidden_states[-2]): allowed to be absent
_UNUSED_TOWER_PREFIXES = ("head.", "post_layernorm.", "vision_model.head.", "vision_model.post_layernorm.")
_PROJECTOR_ARCH = "MultimodalProjector"


def _read_json(path: str | os.PathLike, name: str, hub: dict[str, Any]) -> dict[str, Any]:
    try:
        resolved = cached_file(str(path), name, **hub)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{str(path)!r} has no readable {name!r}: a VILA1.5 checkpoint in the original layout needs a root "
            f"config.json and the folders {sorted(FOLDERS.values())}. ({err})"
        ) from err
    return json.loads(Path(resolved).read_text())


def _refuse_awq(path: str | os.PathLike) -> None:
    if "awq" in str(path).lower():
        raise ValueError(
            f"{str(path)!r} looks like an AWQ checkpoint: its LLM weights are TinyChat-packed 4-bit tensors, which "
            "the VILA1.5 port cannot load (it needs a plain LlamaForCausalLM in llm/). Use the non-AWQ checkpoint."
        )


def _root_config(root: dict[str, Any], overrides: dict[str, Any], path: str | os.PathLike) -> VilaConfig:
    """The VilaConfig of the root config.json (validated before any weight is read) with ``overrides``."""
    if root.get("model_type") != VilaConfig.model_type:
        raise ValueError(
            f"{str(path)!r} has model_type {root.get('model_type')!r}; VilaForConditionalGeneration loads VILA1.5 "
            f"checkpoints (model_type {VilaConfig.model_type!r})."
        )
    if root.get("vision_resolution", -1) not in (-1, None):
        raise ValueError(
            f"`vision_resolution`={root['vision_resolution']} (re-sized position embeddings) is not supported; "
            "VILA1.5 checkpoints use -1."
        )
    fields = {k: v for k, v in root.items() if k not in ("model_type", "transformers_version")}
    if "chat_template" not in fields and "chat_template" not in overrides:
        fields["chat_template"] = template_for_checkpoint(str(path))
    return VilaConfig(**(fields | overrides))


def _problems(info: dict[str, Any], allowed_missing: tuple[str, ...] = ()) -> dict[str, list[str]]:
    found = {}
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        items = [
            str(k) for k in info.get(key, ()) if not (key == "missing_keys" and str(k).startswith(allowed_missing))
        ]
        if items:
            found[key] = sorted(items)
    return found


def _load_projector(
    path: str | os.PathLike, config: VilaConfig, hub: dict[str, Any], dtype: Any
) -> tuple[MlpDownsampleProjector, dict[str, list[str]]]:
    weights = load_file(cached_file(str(path), f"{FOLDERS['mm_projector_cfg']}/model.safetensors", **hub))
    projector = MlpDownsampleProjector(config.mm_hidden_size, config.hidden_size)
    expected = projector.state_dict()
    problems: dict[str, list[str]] = {}
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if mismatched:
        problems["mismatched_keys"] = mismatched
    else:
        result = projector.load_state_dict(weights, strict=False)
        if result.missing_keys:
            problems["missing_keys"] = sorted(result.missing_keys)
        if result.unexpected_keys:
            problems["unexpected_keys"] = sorted(result.unexpected_keys)
    target = dtype if isinstance(dtype, torch.dtype) else next(iter(weights.values())).dtype
    return projector.to(target), problems


def load_original(cls, path: str | os.PathLike, **kwargs: Any):
    """Build ``cls`` (a VILA model class) from the original layout at ``path`` (directory or Hub id).

    Raises:
        ValueError: unsupported variant (AWQ, InternViT, S2, another projector) or any weight missing, unexpected
            or of the wrong shape, naming each.
        TypeError: an unknown keyword argument.
    """
    _refuse_awq(path)
    hub = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
    load = {k: kwargs.pop(k) for k in _LOAD_KEYS if k in kwargs}
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    output_loading_info = kwargs.pop("output_loading_info", False)
    unknown = [k for k in kwargs if k not in VilaConfig.__dataclass_fields__]
    if unknown:
        raise TypeError(
            f"unknown keyword argument(s) {unknown} for {cls.__name__}.from_pretrained; config overrides must be "
            f"VilaConfig fields (e.g. token_keep, token_order, chat_template)."
        )
    root = _read_json(path, "config.json", hub)
    _root_config(root, kwargs, path)  # refuse unsupported variants before reading any weight

    sub_kwargs = hub | load | ({} if dtype is None else {"dtype": dtype}) | {"output_loading_info": True}
    try:
        llm, llm_info = LlamaForCausalLM.from_pretrained(str(path), subfolder=FOLDERS["llm_cfg"], **sub_kwargs)
    except OSError as err:
        raise ValueError(
            f"the LLM of {str(path)!r} (folder llm/) could not be loaded as a LlamaForCausalLM: {err}. AWQ "
            "checkpoints (TinyChat-packed weights) are not supported."
        ) from err
    tower, tower_info = SiglipVisionModel.from_pretrained(
        str(path), subfolder=FOLDERS["vision_tower_cfg"], **sub_kwargs
    )
    attention = {"llm_cfg": llm.config._attn_implementation, "vision_tower_cfg": tower.config._attn_implementation}
    projector_cfg = _read_json(path, f"{FOLDERS['mm_projector_cfg']}/config.json", hub)
    config = _root_config(
        root | {"llm_cfg": llm.config, "vision_tower_cfg": tower.config, "mm_projector_cfg": projector_cfg},
        kwargs,
        path,
    )
    projector, projector_problems = _load_projector(path, config, hub, dtype)

    problems = (
        {f"llm/{k}": v for k, v in _problems(llm_info).items()}
        | {f"vision_tower/{k}": v for k, v in _problems(tower_info, _UNUSED_TOWER_PREFIXES).items()}
        | {f"mm_projector/{k}": v for k, v in projector_problems.items()}
    )
    if problems:
        raise ValueError(
            f"the checkpoint {str(path)!r} does not match the VILA1.5 architecture; refusing to run with randomly "
            f"initialised or dropped weights: {problems}"
        )

    # building the config reset the parts' attention implementations: put back what each part was loaded with
    config._attn_implementation = {"": attention["llm_cfg"]} | attention
    with torch.device("meta"):  # a shell without weights; its __init__ must not touch the loaded parts' configs
        model = cls(copy.deepcopy(config))
    model.config = config  # whose llm_cfg / vision_tower_cfg ARE the loaded parts' configs
    model.llm, model.vision_tower = llm, tower
    model.mm_projector = projector.to(llm.get_input_embeddings().weight.device)
    model.generation_config = llm.generation_config
    model.config._name_or_path = str(path)
    model.eval()
    if output_loading_info:
        return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return model


def save_original(model, save_directory: str | os.PathLike, **kwargs: Any) -> None:
    """Write ``model`` in the original layout; ``max_shard_size`` (if given) applies to the LLM and the tower."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    shard = {"max_shard_size": kwargs["max_shard_size"]} if kwargs.get("max_shard_size") else {}
    model.llm.save_pretrained(out / FOLDERS["llm_cfg"], **shard)
    model.vision_tower.save_pretrained(out / FOLDERS["vision_tower_cfg"], **shard)

    projector_dir = out / FOLDERS["mm_projector_cfg"]
    projector_dir.mkdir(exist_ok=True)
    projector_cfg = dict(model.config.mm_projector_cfg) | {"architectures": [_PROJECTOR_ARCH]}
    projector_cfg["_name_or_path"] = f"./{FOLDERS['mm_projector_cfg']}"
    (projector_dir / "config.json").write_text(json.dumps(projector_cfg, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.mm_projector.state_dict().items()}
    save_file(state, projector_dir / "model.safetensors", metadata={"format": "pt"})

    root = model.config.to_dict()
    for key, folder in FOLDERS.items():
        sub = root[key] if key == "mm_projector_cfg" else getattr(model.config, key).to_dict()
        root[key] = dict(sub) | {"_name_or_path": f"./{folder}"}
    root["vision_tower_cfg"]["architectures"] = ["SiglipVisionModel"]
    root["llm_cfg"]["architectures"] = ["LlamaForCausalLM"]
    root["mm_projector_cfg"]["architectures"] = [_PROJECTOR_ARCH]
    root["architectures"] = ["LlavaLlamaModel"]
    root["model_type"] = VilaConfig.model_type
    root.pop("_name_or_path", None)
    (out / "config.json").write_text(json.dumps(root, indent=2, sort_keys=True, default=str) + "\n")
