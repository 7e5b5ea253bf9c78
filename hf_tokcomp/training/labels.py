"""Label shards: per sample, the compressor's input features and the GAE relevance target (stage A).

A label directory holds ``manifest.json`` and ``shard-XXXXX.safetensors`` files. Each shard stores, for a run of
consecutive samples, every visual segment's features and target, concatenated:

- ``features`` ``(tokens, in_channels)`` float32, exactly what the runtime feeds the compressor;
- ``targets`` ``(tokens,)`` float32, the relevance averaged over the answer tokens;
- ``lengths`` ``(segments,)`` tokens per segment; ``sample_ids`` ``(segments,)`` the sample of each segment;
  ``kinds`` ``(segments,)`` 0 = image, 1 = video.

Shards and the manifest are written atomically (temporary file + rename) and the manifest only lists finished
shards, so an interrupted run resumes at the first sample of the first unfinished shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..runtime.features import DEFAULT_FEATURES, FeatureSpec
from ..teachers.gae import eos_ids, greedy_answers, visual_relevance
from ..teachers.occlusion import occlusion_relevance
from .formats import normalise_record, open_image

__all__ = [
    "LabelSegment",
    "read_records",
    "build_inputs",
    "build_batch",
    "normalise_answer",
    "label_dataset",
    "load_label_dir",
    "MANIFEST",
    "TEACHERS",
    "COUNTERS",
    "rank_manifest_name",
]

MANIFEST = "manifest.json"
#: the per-sample outcomes a manifest counts
COUNTERS = ("labelled", "skipped_wrong", "skipped_no_visual", "skipped_empty_answer")


def rank_manifest_name(rank: int, world_size: int) -> str:
    """The manifest of one process of a ``world_size``-process labelling run."""
    return f"manifest-rank{rank:03d}-of-{world_size:03d}.json"


#: teacher signals ``label_dataset`` can store: GAE relevance (the paper's) and leave-one-out occlusion
TEACHERS = ("gae", "occlusion")
_FORMAT = 1
_KINDS = {"image": 0, "video": 1}


class LabelError(ValueError):
    """A problem with label data the user can fix (bad path, empty data, mismatched shards)."""


@dataclass
class LabelSegment:
    """One visual segment of a labelled sample: ``features`` ``(C, n)``, ``target`` ``(n,)``."""

    features: torch.Tensor
    target: torch.Tensor
    sample_id: int
    kind: str


def _beside(data_file: Path, value: str) -> str:
    return value if value.startswith(("http://", "https://")) else str(data_file.parent / value)


def read_records(
    data: str | os.PathLike,
    split: str = "train",
    columns: dict[str, str] | None = None,
    limit: int | None = None,
    streaming: bool = False,
) -> Sequence[dict[str, Any]]:
    """Samples from a JSONL file (one object per line: ``image`` path(s) relative to the file, ``question``,
    optional ``answer``) or a Hugging Face ``datasets`` dataset (a ``save_to_disk`` folder, or a Hub name with
    ``split``) with the same columns, or in the ``messages`` / LLaVA ``conversations`` formats
    (:mod:`hf_tokcomp.training.formats`). ``columns`` maps a record field to the data's own column name
    (``{"question": "prompt", "answer": "label"}``). ``limit``: the first ``limit`` samples only. ``streaming``:
    read a Hub dataset (or a folder of data files) as a stream, only as far as ``limit`` (required), so a large
    set is never downloaded whole."""
    if limit is not None and limit < 1:
        raise LabelError(f"--limit must be >= 1, got {limit}")
    path = Path(data)
    if streaming and (path.suffix == ".jsonl" or limit is None):
        raise LabelError(
            "--streaming reads the first --limit samples of a Hub dataset (or a folder of data files) as a stream: "
            + ("pass --limit N" if limit is None else "a .jsonl file is read directly; drop --streaming")
        )
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise LabelError(f"--data {str(data)!r}: no such file")
        records = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = _renamed(json.loads(line), columns or {}, data)  # before paths are resolved
            except json.JSONDecodeError as err:
                raise LabelError(f"--data {str(data)!r} line {number}: not JSON ({err.msg})") from err
            for key in ("image", "video", "images"):  # paths relative to the file; URLs as they are
                if isinstance(record.get(key), str):
                    record[key] = _beside(path, record[key])
                elif isinstance(record.get(key), list):
                    record[key] = [_beside(path, p) for p in record[key]]
            records.append(record)
    else:
        try:
            import datasets
        except ImportError as err:
            raise LabelError(
                f"--data {str(data)!r} is not a .jsonl file; reading datasets needs `pip install datasets`"
            ) from err
        try:
            if streaming:
                records = list(datasets.load_dataset(str(data), split=split, streaming=True).take(limit))
            elif path.is_dir():
                records = datasets.load_from_disk(str(path))
            else:
                records = datasets.load_dataset(str(data), split=split)
        except Exception as err:  # noqa: BLE001 - one clear line for the CLI
            raise LabelError(f"--data {str(data)!r} could not be read as a dataset: {err}") from err
        if isinstance(records, datasets.DatasetDict):
            records = records[split]
    if limit is not None:
        records = [records[i] for i in range(min(limit, len(records)))]
    if columns and path.suffix != ".jsonl":
        records = [_renamed(r, columns, data) for r in records]
    try:
        records = [normalise_record(r) for r in records]
    except ValueError as err:
        raise LabelError(f"--data {str(data)!r}: {err}") from err
    if len(records) == 0:
        raise LabelError(f"--data {str(data)!r} holds no samples")
    missing = [k for k in ("question",) if k not in records[0]] + (
        [] if {"image", "video"} & set(records[0]) else ["image or video"]
    )
    if missing:
        raise LabelError(f"--data {str(data)!r}: samples need the field(s) {missing}; got {sorted(records[0])}")
    return records


def _renamed(record: dict[str, Any], columns: dict[str, str], data: Any) -> dict[str, Any]:
    """``record`` with the data's own column names turned into record fields (``columns``: field -> column);
    a field's name used as a column the mapping does not name is dropped, so it cannot shadow the mapped one."""
    if not columns:
        return record
    missing = sorted(c for c in columns.values() if c not in record)
    if missing:
        raise LabelError(f"--columns: --data {str(data)!r} has no column(s) {missing}; it has {sorted(record)}")
    source = {column: field for field, column in columns.items()}
    return {source.get(k, k): v for k, v in record.items() if k not in columns or k in source}


def build_inputs(processor, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Processor output for one record: the user turn holds its image(s) / video, then the question."""
    return build_batch(processor, [record])


def build_batch(
    processor, records: Sequence[dict[str, Any]], system_prompt: str | None = None
) -> dict[str, torch.Tensor]:
    """Processor output for a left-padded batch of records (each: its image(s) / video, then the question; the
    question first where the record's ``question_first`` is true), after a system message ``system_prompt``
    where one is given (lmms-eval's Qwen wrappers send "You are a helpful assistant.")."""
    texts, images, videos = [], [], []
    system = [] if system_prompt is None else [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}]
    for record in records:
        own = record.get("image")
        own = [] if own is None else [open_image(i) for i in (own if isinstance(own, list) else [own])]
        video = record.get("video")
        content = [{"type": "image"} for _ in own] + ([{"type": "video"}] if video is not None else [])
        text = {"type": "text", "text": record["question"]}
        content = [text, *content] if record.get("question_first") else [*content, text]
        texts.append(
            processor.apply_chat_template(
                [*system, {"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        )
        images += own
        if video is not None:
            videos.append([open_image(f) for f in video])
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": "left"}
    if images:
        kwargs["images"] = images
    if videos:
        if getattr(processor, "video_processor", None) is None:
            raise LabelError(
                f"a record holds a video, but the processor ({type(processor).__name__}) has no video processor: "
                "transformers' Qwen-VL video processors need torchvision (install the torchvision build that "
                "matches your torch, and a processor folder with a video processor), or give the frames as an "
                "`image` list, which the image processor reads as separate images"
            )
        kwargs["videos"] = videos
    return dict(processor(**kwargs))


def normalise_answer(text: str) -> str:
    """Lower case, trailing punctuation and spaces removed: how answers are compared."""
    return re.sub(r"[\s.!?]+$", "", text.strip().lower())


def _fingerprint(records: Sequence[dict[str, Any]]) -> str:
    """Identifies the dataset (its size and questions), so a resume never mixes two datasets."""
    fingerprint = getattr(records, "_fingerprint", None)  # a `datasets` dataset knows its own
    if fingerprint is not None:
        return str(fingerprint)[:16]
    digest = hashlib.sha256(str(len(records)).encode())
    for record in records:
        fields = [record.get(k) for k in ("image", "video", "question", "answer")]
        digest.update(json.dumps(fields, default=_content).encode())
    return digest.hexdigest()[:16]


def _content(value: Any) -> str:
    """A stable text for a non-JSON value: an image's pixels (never its repr, which holds a memory address)."""
    if hasattr(value, "tobytes"):
        return hashlib.sha256(value.tobytes()).hexdigest()
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha256(value).hexdigest()
    return str(value)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def label_dataset(
    model,
    processor,
    records: Sequence[dict[str, Any]],
    out: str | os.PathLike,
    shard_size: int = 64,
    max_new_tokens: int = 32,
    model_name: str | None = None,
    progress: bool = True,
    teacher: str = "gae",
    rank: int = 0,
    world_size: int = 1,
    features: FeatureSpec | str | None = None,
    answer_end: bool = False,
) -> dict[str, Any]:
    """Label ``records`` into ``out`` (resuming if ``out`` holds a manifest for the same model and data).

    Shard ``k`` always holds samples ``[k * shard_size, (k + 1) * shard_size)``. With ``world_size`` > 1 (one call
    per process, e.g. under ``accelerate launch``) process ``rank`` labels the shards ``k % world_size == rank``
    and records them in its own manifest (resumed per rank); :func:`~hf_tokcomp.training.distributed.merge_ranks`
    then writes the ``manifest.json`` a one-process run would have written.

    Each sample: the model answers greedily (uncompressed); with a reference ``answer`` a wrong answer is skipped
    and counted; the features are the runtime's :meth:`compressor_features` of the definition ``features``
    (recorded in the manifest, so that a compressor trained on them computes the same ones); the target is
    :func:`~hf_tokcomp.teachers.gae.visual_relevance` (``teacher="gae"``, the paper's) or
    :func:`~hf_tokcomp.occlusion.occlusion_relevance` (``teacher="occlusion"``) for the model's own answer tokens,
    and with ``answer_end`` also for the end-of-sequence token that ends it (what the model needs to STOP: a
    selection that loses it makes the model run on after a right answer; recorded in the manifest).

    Returns:
        The manifest (counts of labelled and skipped samples, shards).
    """
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise LabelError(f"--shard-size must be >= 1, got {shard_size}")
    if teacher not in TEACHERS:
        raise LabelError(f"--teacher must be one of {list(TEACHERS)}, got {teacher!r}")
    try:
        spec = FeatureSpec.parse(features, what="--features") if isinstance(features, str) else features
        spec = spec or DEFAULT_FEATURES
    except ValueError as err:
        raise LabelError(str(err)) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    identity = {
        "format": _FORMAT,
        "model_type": model.config.model_type,
        "model_name_or_path": model_name or getattr(model.config, "_name_or_path", None),
        "hidden_size": model.config.get_text_config().hidden_size,
        "features": spec.name,
        "feature_channels": spec.channels(model.config.get_text_config().num_attention_heads),
        "data_fingerprint": _fingerprint(records),
        "teacher": teacher,
        "answer_end": answer_end,
        "num_records": len(records),
        "shard_size": shard_size,
    }
    if not 0 <= rank < world_size:
        raise LabelError(f"rank {rank} is not in [0, {world_size}): check the launcher's process count")
    manifest_name = MANIFEST if world_size == 1 else rank_manifest_name(rank, world_size)
    if world_size > 1:
        identity = {**identity, "rank": rank, "world_size": world_size}
    counters = COUNTERS
    manifest = {**identity, "next_sample": 0, **dict.fromkeys(counters, 0), "shards": []}
    if (out / manifest_name).is_file():
        saved = json.loads((out / manifest_name).read_text())
        if "shard_size" not in saved:  # written before shard_size was recorded: read it off the shards
            sizes = {s["end_sample"] - s["first_sample"] for s in saved["shards"] if s["end_sample"] < len(records)}
            saved["shard_size"] = sizes.pop() if len(sizes) == 1 else (shard_size if not sizes else None)
        saved.setdefault("answer_end", False)  # written before the end token could be a target
        clash = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
        if clash:
            raise LabelError(
                f"--out {str(out)!r} holds labels of another run (differs in {clash}); use a new directory"
            )
        manifest = saved
    tokenizer = getattr(processor, "tokenizer", processor)
    pending: list[tuple[int, list[torch.Tensor], torch.Tensor, list[str]]] = []
    counts = dict.fromkeys(counters, 0)

    def flush(index: int, first: int, end: int) -> None:
        name = f"shard-{index:05d}.safetensors"
        lengths = [f.shape[-1] for _, feats, _, _ in pending for f in feats]
        tensors = {
            "features": torch.cat([f.T for _, feats, _, _ in pending for f in feats])
            if pending
            else torch.zeros(0, identity["feature_channels"]),
            "targets": torch.cat([t for _, _, t, _ in pending]) if pending else torch.zeros(0),
            "lengths": torch.tensor(lengths, dtype=torch.long),
            "sample_ids": torch.tensor([i for i, feats, _, _ in pending for _ in feats], dtype=torch.long),
            "kinds": torch.tensor([_KINDS[k] for _, _, _, kinds in pending for k in kinds], dtype=torch.int8),
        }
        _write_atomic(out / name, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
        manifest["shards"].append(
            {
                "file": name,
                "first_sample": first,
                "end_sample": end,
                "segments": len(lengths),
                "tokens": sum(lengths),
            }
        )
        manifest["next_sample"] = end
        for key, value in counts.items():
            manifest[key] += value
            counts[key] = 0
        _write_atomic(out / manifest_name, lambda p: p.write_text(json.dumps(manifest, indent=2)))
        pending.clear()

    if not (out / manifest_name).is_file():  # a process with no shards still reports that it finished
        _write_atomic(out / manifest_name, lambda p: p.write_text(json.dumps(manifest, indent=2)))
    done = {entry["first_sample"] // shard_size for entry in manifest["shards"]}
    mine = [k for k in range(-(-len(records) // shard_size)) if k % world_size == rank and k not in done]
    todo = [i for k in mine for i in range(k * shard_size, min((k + 1) * shard_size, len(records)))]
    total = sum(
        min((k + 1) * shard_size, len(records)) - k * shard_size
        for k in range(-(-len(records) // shard_size))
        if k % world_size == rank
    )
    bar = tqdm(todo, initial=total - len(todo), total=total, desc="labelling", disable=not progress)
    for index in bar:
        record = records[index]
        inputs = {k: v.to(model.device) for k, v in build_inputs(processor, record).items()}
        segments = model.compressor_features(**inputs, features=spec)[0]
        if not segments:
            counts["skipped_no_visual"] += 1
        else:
            full = greedy_answers(model, inputs, max_new_tokens, keep_eos=answer_end)[0]
            ended = answer_end and full.numel() > 0 and int(full[-1]) in eos_ids(model)
            answer = full[:-1] if ended else full
            reference = record.get("answer")
            if answer.numel() == 0:
                counts["skipped_empty_answer"] += 1
            elif reference is not None and normalise_answer(
                tokenizer.decode(answer, skip_special_tokens=True)
            ) != normalise_answer(str(reference)):
                counts["skipped_wrong"] += 1
            else:
                target = full if answer_end else answer
                if teacher == "gae":
                    relevance = visual_relevance(model, inputs, [target])[0]
                else:
                    relevance = occlusion_relevance(model, inputs, target)
                if relevance.numel() != sum(f.shape[-1] for _, f in segments):
                    raise RuntimeError(
                        f"sample {index}: {relevance.numel()} relevance values for "
                        f"{sum(f.shape[-1] for _, f in segments)} visual tokens"
                    )
                kinds, features = zip(*segments, strict=True)
                pending.append((index, list(features), relevance.float(), list(kinds)))
                counts["labelled"] += 1
        if (index + 1) % shard_size == 0 or index + 1 == len(records):
            shard = index // shard_size
            flush(shard, shard * shard_size, index + 1)
        bar.set_postfix(
            labelled=manifest["labelled"] + counts["labelled"],
            wrong=manifest["skipped_wrong"] + counts["skipped_wrong"],
        )
    return manifest


def load_label_dir(path: str | os.PathLike) -> tuple[dict[str, Any], list[LabelSegment]]:
    """The manifest and every labelled segment of a label directory."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise LabelError(f"--labels {str(path)!r} has no {MANIFEST}; create it with `tokcomp label`")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != _FORMAT:
        raise LabelError(f"--labels {str(path)!r}: label format {manifest.get('format')} is not {_FORMAT}")
    try:
        FeatureSpec.parse(manifest.get("features"), what=f"the labels in {str(path)!r}")
    except ValueError as err:
        raise LabelError(str(err)) from None
    segments: list[LabelSegment] = []
    kinds = {v: k for k, v in _KINDS.items()}
    for shard in manifest["shards"]:
        tensors = load_file(str(path / shard["file"]))
        if tensors["features"].shape[-1] != manifest["feature_channels"]:
            raise LabelError(
                f"{shard['file']}: feature width {tensors['features'].shape[-1]} != the manifest's "
                f"{manifest['feature_channels']}"
            )
        if tensors["targets"].shape[0] != tensors["features"].shape[0] or tensors["features"].shape[0] != int(
            tensors["lengths"].sum()
        ):
            raise LabelError(f"{shard['file']}: features, targets and lengths disagree; the shard is corrupt")
        offsets = [0, *torch.cumsum(tensors["lengths"], 0).tolist()]
        for i in range(len(tensors["lengths"])):
            lo, hi = offsets[i], offsets[i + 1]
            segments.append(
                LabelSegment(
                    tensors["features"][lo:hi].T.contiguous(),
                    tensors["targets"][lo:hi],
                    int(tensors["sample_ids"][i]),
                    kinds[int(tensors["kinds"][i])],
                )
            )
    return manifest, segments
