"""Labelling with many processes (``accelerate launch -m hf_tokcomp label ...``): who labels what, and the merge.

Shard ``k`` holds samples ``[k * shard_size, (k + 1) * shard_size)`` whatever the number of processes, and process
``r`` of ``N`` labels the shards with ``k % N == r`` (each sample is labelled alone, so a sample's features and
target do not depend on which process labels it). Each process writes its shard files and its own manifest;
:func:`merge_ranks` then writes the ``manifest.json`` of a one-process run: the same shard files, the same
records, the same label tensors, whatever ``N``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .labels import COUNTERS, MANIFEST, LabelError, _write_atomic, rank_manifest_name

__all__ = ["merge_ranks", "process_info"]


def process_info() -> tuple[int, int, Any]:
    """``(rank, world_size, device)`` of this process: from accelerate's state when a launcher started several
    processes (``accelerate launch``, ``torchrun``; on a machine without GPUs the processes talk over gloo), else
    ``(0, 1, None)``.

    Raises:
        RuntimeError: the launcher started several processes but they could not form a group (each would
            otherwise label everything and overwrite the others' files).
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != launched:
        raise RuntimeError(
            f"WORLD_SIZE={launched} processes were launched but accelerate sees {state.num_processes}; start them "
            "with `accelerate launch --num_processes N` (GPUs) or `torchrun --nproc_per_node N` (CPU)."
        )
    return state.process_index, state.num_processes, state.device


def merge_ranks(out: str | os.PathLike, world_size: int) -> dict[str, Any]:
    """Write ``out/manifest.json`` from the ``world_size`` per-process manifests, as one process would have.

    Raises:
        LabelError: a process's manifest is missing, belongs to another run, or its shards do not cover the data.
    """
    out = Path(out)
    parts = []
    for rank in range(world_size):
        path = out / rank_manifest_name(rank, world_size)
        if not path.is_file():
            raise LabelError(f"{path} is missing: process {rank} of {world_size} did not finish; rerun to resume it")
        parts.append({"answer_end": False, **json.loads(path.read_text())})  # older manifests lack it
    keys = ("format", "model_type", "model_name_or_path", "hidden_size", "features", "feature_channels")
    keys += ("data_fingerprint",)
    keys += ("teacher", "answer_end", "num_records", "shard_size")  # the order of a one-process manifest
    first = parts[0]
    for rank, part in enumerate(parts):
        clash = {k: (first.get(k), part.get(k)) for k in keys if part.get(k) != first.get(k)}
        if clash:
            raise LabelError(f"process {rank}'s manifest belongs to another run (differs in {clash}); use a new --out")
    shards = sorted((shard for part in parts for shard in part["shards"]), key=lambda s: s["first_sample"])
    expected = -(-first["num_records"] // first["shard_size"])
    if [s["first_sample"] // first["shard_size"] for s in shards] != list(range(expected)):
        raise LabelError(f"the processes' shards do not cover the {first['num_records']} records; rerun to resume")
    manifest = {k: first[k] for k in keys}
    manifest |= {"next_sample": first["num_records"]}
    manifest |= {k: sum(part[k] for part in parts) for k in COUNTERS}
    manifest["shards"] = shards
    _write_atomic(out / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2)))
    return manifest
