"""Retention harness: accuracy of every selection method at several keep ratios, against the uncompressed model.

Methods (all input-stage methods go through the model's own budget rule, gather and positions):

- ``ours``: the learned compressor given to :func:`evaluate`;
- ``attention``: the layer-0 attention features themselves (``compressor=None``, training-free);
- ``uniform``, ``random``: :class:`~hf_tokcomp.baselines.UniformScores`, seeded
  :class:`~hf_tokcomp.baselines.RandomScores`;
- ``fastv``: FastV, pruning after layer ``fastv_k`` by the last token's attention (more FLOPs at equal keep;
  K = 2 as in the paper by default, 1 for a 2-layer LLM);
- ``teacher``: the GAE relevance of the model's own answer (what the compressor is trained to imitate; it needs
  the answer, so it is a reference, not a deployable method);
- ``occlusion``: the alternative teacher signal, leave-one-out occlusion of the model's own answer (a reference);
- ``oracle``: the records' ground-truth ``evidence`` token indices first (a reference; needs ``evidence``).

Retention = accuracy / uncompressed accuracy, overall and per question type (the records' ``qtype`` field).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .baselines import PresetScores, RandomScores, UniformScores, fastv_generate, oracle_scores
from .data import build_batch, normalise_answer
from .explain import visual_relevance
from .occlusion import occlusion_relevance
from .selection import keep_count

__all__ = ["METHODS", "EvalSettings", "evaluate", "prefill_flops"]

METHODS = ("ours", "attention", "uniform", "random", "fastv", "teacher", "occlusion", "oracle")


@dataclass
class EvalSettings:
    keeps: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.1)
    methods: tuple[str, ...] = METHODS
    batch_size: int = 32
    max_new_tokens: int = 8
    fastv_k: int | None = None  # None: 2 (the paper's K), or 1 for a 2-layer LLM
    seed: int = 0
    flops: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"`methods` must be a non-empty subset of {list(METHODS)}, got {list(self.methods)}")
        bad = [k for k in self.keeps if not (isinstance(k, (int, float)) and 0 < k <= 1)]
        if bad or not self.keeps:
            raise ValueError(f"`keeps` must be values in (0, 1], got {list(self.keeps)}")
        for name in ("batch_size", "max_new_tokens", "fastv_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")


@dataclass
class _Batch:
    records: list[dict[str, Any]]
    inputs: dict[str, torch.Tensor]
    segment_sizes: list[list[int]] = field(default_factory=list)
    teacher: list[torch.Tensor] = field(default_factory=list)
    occlusion: list[torch.Tensor] = field(default_factory=list)


def _cut_at_eos(model, sequences: torch.Tensor, prompt: int) -> list[torch.Tensor]:
    """Per row, the new tokens up to the first end-of-sequence token (excluded)."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    out = []
    for row in sequences[:, prompt:]:
        tokens = row.tolist()
        out.append(row[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))])
    return out


def _answers(model, batch: _Batch, max_new_tokens: int, fastv: tuple[float, int] | None = None) -> list[torch.Tensor]:
    """Greedy answers (token ids, end-of-sequence excluded) with the model's current settings, or FastV's."""
    with torch.no_grad():
        if fastv is None:
            out = model.generate(**batch.inputs, max_new_tokens=max_new_tokens, do_sample=False)
        else:
            out = fastv_generate(model, batch.inputs, fastv[0], k=fastv[1], max_new_tokens=max_new_tokens).sequences
    return _cut_at_eos(model, out, batch.inputs["input_ids"].shape[1])


def _right(tokenizer, answers: list[torch.Tensor], records: list[dict[str, Any]]) -> list[bool]:
    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    return [normalise_answer(t) == normalise_answer(str(r["answer"])) for t, r in zip(texts, records, strict=True)]


def _segment_sizes(model, inputs: dict[str, torch.Tensor]) -> list[list[int]]:
    visual = {k: inputs.get(k) for k in model._tokcomp_visual_keys}
    with torch.no_grad():
        merged = model._tokcomp_merge(inputs["input_ids"], visual)
    return [[end - start for _, start, end in segs] for segs in merged.segments]


def _preset(method: str, batch: _Batch) -> list[torch.Tensor]:
    if method in ("teacher", "occlusion"):
        out = []
        for sizes, relevance in zip(batch.segment_sizes, getattr(batch, method), strict=True):
            out += list(torch.split(relevance, sizes))
        return out
    out = []
    for sizes, record in zip(batch.segment_sizes, batch.records, strict=True):
        if len(sizes) != 1:
            raise ValueError(f"the `oracle` method needs one visual segment per sample, got {len(sizes)}")
        out.append(oracle_scores(sizes[0], list(record["evidence"])))
    return out


_VISION_ATTRS = ("visual", "vision_tower", "multi_modal_projector", "mm_projector")


def prefill_flops(model, inputs: dict[str, torch.Tensor], method: str, keep: float, fastv_k: int = 2) -> dict:
    """FLOPs of one prefill (up to the first token's logits), counted by ``torch.utils.flop_counter`` with the
    model's current compressor: ``total``, and its parts ``vision`` (tower + projector), ``compressor`` and
    ``llm`` (the rest: the LLM, the layer-0 features and the selection)."""
    from torch.utils.flop_counter import FlopCounterMode

    saved = model.config.token_keep
    model.config.token_keep = 1.0 if method == "fastv" else keep
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            if method == "fastv":
                fastv_generate(model, inputs, keep, k=fastv_k, max_new_tokens=1)
            else:
                model.generate(**inputs, max_new_tokens=1, do_sample=False)
    finally:
        model.config.token_keep = saved
    counts = {name: sum(per_op.values()) for name, per_op in counter.get_flop_counts().items()}
    inner = getattr(model, "model", model)
    vision_names = {type(getattr(inner, a)).__name__ for a in _VISION_ATTRS if hasattr(inner, a)}
    vision_suffixes = tuple(f".model.{a}" for a in _VISION_ATTRS)
    vision = sum(v for k, v in counts.items() if k in vision_names or k.endswith(vision_suffixes))
    compressor_name = type(model.compressor).__name__ if model.compressor is not None else None
    compressor = sum(v for k, v in counts.items() if k == compressor_name or k.endswith(".compressor"))
    total = counts.get("Global", 0)
    return {"total": total, "vision": vision, "compressor": compressor, "llm": total - vision - compressor}


def evaluate(
    model,
    processor,
    records: Sequence[dict[str, Any]],
    compressor: torch.nn.Module | None = None,
    settings: EvalSettings | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy and retention of every method at every keep ratio on ``records`` (``question``, ``answer``,
    image(s); optional ``qtype``; ``evidence`` for the oracle).

    Args:
        model: an hf_tokcomp model; its compressor and ``token_keep`` are restored afterwards.
        processor: the model's processor.
        compressor: the learned compressor (``ours``); required when ``ours`` is among the methods.

    Returns:
        A JSON-able dict: ``accuracy[method][keep][qtype]`` (``qtype`` includes ``"all"``), ``retention`` (same
        layout, accuracy / uncompressed accuracy), ``visual_tokens[keep]`` (mean kept per sample),
        ``flops[method][keep]`` (:func:`prefill_flops` of the first sample; ``flops["none"]["1.0"]``: uncompressed),
        ``counts[qtype]``, ``settings``.
    """
    settings = settings or EvalSettings()
    if settings.fastv_k is None:
        layers = model.config.get_text_config().num_hidden_layers
        settings = EvalSettings(**{**asdict(settings), "fastv_k": min(2, layers - 1)})
    methods = list(settings.methods)
    if "ours" in methods and compressor is None:
        raise ValueError("`compressor` is required for the `ours` method (or leave `ours` out of `methods`)")
    if "oracle" in methods and any("evidence" not in r for r in records):
        raise ValueError("the `oracle` method needs an `evidence` field (visual token indices) in every record")
    missing = [i for i, r in enumerate(records) if r.get("answer") is None]
    if missing:
        raise ValueError(f"every record needs an `answer`; records {missing[:5]} have none")
    tokenizer = getattr(processor, "tokenizer", processor)
    keeps = sorted({float(k) for k in settings.keeps} - {1.0}, reverse=True)
    saved = (model.compressor, model.config.token_keep)
    modules: dict[str, torch.nn.Module | None] = {
        "ours": compressor,
        "attention": None,
        "uniform": UniformScores(),
        "random": RandomScores(settings.seed),
        "teacher": PresetScores(),
        "occlusion": PresetScores(),
        "oracle": PresetScores(),
    }
    batches = [
        _Batch(list(records[i : i + settings.batch_size]), {}) for i in range(0, len(records), settings.batch_size)
    ]
    correct: dict[str, dict[float, list[bool]]] = {m: {} for m in methods}
    full: list[bool] = []
    kept_tokens: dict[float, int] = dict.fromkeys(keeps, 0)
    total_tokens = 0
    steps = len(batches) * (1 + len(methods) * len(keeps))
    bar = tqdm(total=steps, desc="evaluating", disable=not progress)
    try:
        model.config.token_keep = 1.0
        for batch in batches:
            batch.inputs = {k: v.to(model.device) for k, v in build_batch(processor, batch.records).items()}
            batch.segment_sizes = _segment_sizes(model, batch.inputs)
            answers = _answers(model, batch, settings.max_new_tokens)
            full += _right(tokenizer, answers, batch.records)
            if "teacher" in methods:
                batch.teacher = visual_relevance(model, batch.inputs, answers)
            if "occlusion" in methods:
                for record, answer in zip(batch.records, answers, strict=True):
                    one = {k: v.to(model.device) for k, v in build_batch(processor, [record]).items()}
                    batch.occlusion.append(occlusion_relevance(model, one, answer))
            for sizes in batch.segment_sizes:
                total_tokens += sum(sizes)
                for keep in keeps:
                    kept_tokens[keep] += sum(keep_count(keep, n) for n in sizes)
            bar.update(1)
        for method in methods:
            model.compressor = modules.get(method)
            for keep in keeps:
                hits = correct[method].setdefault(keep, [])
                for batch in batches:
                    model.config.token_keep = 1.0 if method == "fastv" else keep
                    if isinstance(model.compressor, PresetScores):
                        model.compressor.load(_preset(method, batch))
                    fastv = (keep, settings.fastv_k) if method == "fastv" else None
                    hits += _right(tokenizer, _answers(model, batch, settings.max_new_tokens, fastv), batch.records)
                    bar.update(1)
        flops: dict[str, dict[str, int]] = {}
        if settings.flops:
            first = {k: v.to(model.device) for k, v in build_batch(processor, [records[0]]).items()}
            model.compressor = None
            flops["none"] = {"1.0": prefill_flops(model, first, "attention", 1.0)}
            for method in methods:
                model.compressor = modules.get(method)
                if isinstance(model.compressor, PresetScores):
                    model.compressor = UniformScores()  # same cost as preset scores
                flops[method] = {str(k): prefill_flops(model, first, method, k, settings.fastv_k) for k in keeps}
    finally:
        bar.close()
        model.compressor, model.config.token_keep = saved

    qtypes = sorted({str(r.get("qtype", "all")) for r in records} - {"all"})

    def by_type(hits: list[bool]) -> dict[str, float]:
        out = {"all": sum(hits) / len(hits)}
        for q in qtypes:
            sel = [h for h, r in zip(hits, records, strict=True) if r.get("qtype") == q]
            out[q] = sum(sel) / len(sel)
        return out

    base = by_type(full)
    accuracy = {m: {"1.0": base} | {str(k): by_type(correct[m][k]) for k in keeps} for m in methods}
    retention = {
        m: {k: {q: (a / base[q] if base[q] else math.nan) for q, a in per.items()} for k, per in acc.items()}
        for m, acc in accuracy.items()
    }
    return {
        "num_samples": len(records),
        "counts": {"all": len(records)} | {q: sum(r.get("qtype") == q for r in records) for q in qtypes},
        "keeps": [1.0, *keeps],
        "methods": methods,
        "accuracy": accuracy,
        "retention": retention,
        "visual_tokens": {"1.0": total_tokens / len(records)} | {str(k): kept_tokens[k] / len(records) for k in keeps},
        "flops": flops,
        "settings": asdict(settings),
    }
