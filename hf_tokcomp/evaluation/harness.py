"""Retention harness: accuracy of every selection method at several keep ratios, against the uncompressed model.

Methods (all input-stage methods go through the model's own budget rule, gather and positions):

- ``ours``: the learned compressor given to :func:`evaluate`;
- ``attention``: the layer-0 attention features themselves (``compressor=None``, training-free);
- ``uniform``, ``divprune``, ``dart``, ``cdpruner``: the runtime selectors of those names (``config.selector``;
  ``uniform`` spreads over the segment's (t, h, w) grid); ``random``: seeded
  :class:`~hf_tokcomp.evaluation.baselines.RandomScores`;
- ``fastv``: FastV, pruning after layer ``fastv_k`` by the last token's attention (more FLOPs at equal keep;
  K = 2 as in the paper by default, 1 for a 2-layer LLM);
- ``teacher``: the GAE relevance of the model's own answer (what the compressor is trained to imitate; it needs
  the answer, so it is a reference, not a deployable method);
- ``occlusion``: the alternative teacher signal, leave-one-out occlusion of the model's own answer (a reference);
- ``oracle``: the records' ground-truth ``evidence`` token indices first (a reference; needs ``evidence``);
- ``downsample``: no selection, the image at a lower resolution making about ``keep`` x its tokens
  (:mod:`~hf_tokcomp.evaluation.downsample`; a comparison for Qwen-VL processors; ``downsample_tokens``
  records what it made).

Retention = accuracy / uncompressed accuracy, overall, per question type (the records' ``qtype`` field) and per
prompt order (where records say ``question_first``: ``question_before`` / ``question_after`` the image(s)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..runtime.config import check_token_coverage
from ..runtime.selection import keep_count
from ..teachers.gae import cut_at_eos, visual_relevance
from ..teachers.occlusion import occlusion_relevance
from ..training.labels import build_batch, normalise_answer
from .baselines import PresetScores, RandomScores, UniformScores, oracle_scores, uniform_scores
from .downsample import downsampled_processor
from .fastv import fastv_generate
from .flops import flop_counter
from .intervals import retention_interval
from .memo import MergeMemo

__all__ = ["METHODS", "DEFAULT_METHODS", "EvalSettings", "evaluate", "prefill_flops", "segment_sizes"]

METHODS = (
    "ours",
    "attention",
    "uniform",
    "random",
    "divprune",
    "dart",
    "cdpruner",
    "fastv",
    "teacher",
    "occlusion",
    "oracle",
    "downsample",
)
#: what :class:`EvalSettings` measures unless told: every method but ``downsample`` (Qwen-VL processors only)
DEFAULT_METHODS = tuple(m for m in METHODS if m != "downsample")
#: methods that are runtime selectors (``model.config.selector``); the others set ``model.compressor``
SELECTOR_METHODS = ("uniform", "divprune", "dart", "cdpruner")
#: methods that score tokens (so ``coverage`` shares their budget); the others choose their sets themselves, and
#: the evidence oracle stays the reference it is (evidence first)
COVERAGE_METHODS = ("ours", "attention", "uniform", "random", "teacher", "occlusion")


@dataclass
class EvalSettings:
    """What :func:`evaluate` measures: ``methods`` (see :data:`METHODS`) at each of ``keeps``; ``fastv_k``
    None = 2 (the paper's K), or 1 for a 2-layer LLM; ``flops``: also count prefill FLOPs per method and keep;
    ``coverage``: ``config.token_coverage`` for the methods of :data:`COVERAGE_METHODS` (the others run without,
    and the result lists which methods it applied to)."""

    keeps: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.1)
    methods: tuple[str, ...] = DEFAULT_METHODS
    batch_size: int = 32
    max_new_tokens: int = 8
    fastv_k: int | None = None  # None: 2 (the paper's K), or 1 for a 2-layer LLM
    seed: int = 0
    flops: bool = True
    coverage: float = 0.0

    def __post_init__(self) -> None:
        check_token_coverage(self.coverage)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(
                f"`methods` must be distinct names from {list(METHODS)}, got {list(self.methods)}; pick from the list"
            )
        bad = [k for k in self.keeps if not (isinstance(k, (int, float)) and 0 < k <= 1)]
        if bad or not self.keeps:
            raise ValueError(f"`keeps` must be values in (0, 1] (e.g. 1 0.5 0.25), got {list(self.keeps)}")
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


def _on(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(model.device) for k, v in inputs.items()}


def _answers(model, batch: _Batch, max_new_tokens: int, fastv: tuple[float, int] | None = None) -> list[torch.Tensor]:
    """Greedy answers (token ids on the CPU, end-of-sequence excluded) with the model's current settings, or
    FastV's. The batch's inputs stay on the CPU between calls (only one batch is on the device at a time)."""
    inputs = _on(model, batch.inputs)
    with torch.no_grad():
        if fastv is None:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        else:
            out = fastv_generate(model, inputs, fastv[0], k=fastv[1], max_new_tokens=max_new_tokens).sequences
    return [a.cpu() for a in cut_at_eos(model, out, inputs["input_ids"].shape[1])]


def _right(tokenizer, answers: list[torch.Tensor], records: list[dict[str, Any]]) -> tuple[list[bool], list[str]]:
    """Per record, whether the answer is right, and the answer's text."""
    texts = [normalise_answer(t) for t in tokenizer.batch_decode(answers, skip_special_tokens=True)]
    return [t == normalise_answer(str(r["answer"])) for t, r in zip(texts, records, strict=True)], texts


def _kept(model, n: int) -> list[list[int] | None]:
    """Per sample of the last call, the kept visual-token indices (over its segments in order), or None where
    the call did not compress (FastV prunes inside the LLM)."""
    selections = model.last_compression
    if selections is None:
        return [None] * n
    if len(selections) != n:
        raise RuntimeError(f"evaluation: the last call recorded {len(selections)} selections for {n} samples")
    return [sorted(int(i) for kept in s.kept for i in kept.tolist()) for s in selections]


def _groups(record: dict[str, Any]) -> list[str]:
    """The result groups a record counts in besides ``all``: its ``qtype``, and its prompt order where the record
    says (``question_first``: ``question_before`` / ``question_after`` the image(s))."""
    out = [] if record["qtype"] == "all" else [record["qtype"]]
    if "question_first" in record:
        out.append("question_before" if record["question_first"] else "question_after")
    return out


def segment_sizes(model, inputs: dict[str, torch.Tensor]) -> list[list[int]]:
    """Per row of ``inputs``, the visual tokens of each of its segments before compression (one vision pass)."""
    inputs = _on(model, inputs)
    visual = {k: inputs.get(k) for k in model._tokcomp_visual_keys}
    with torch.no_grad():
        merged = model._tokcomp_merge(inputs["input_ids"], visual)
    return [[end - start for _, start, end in segs] for segs in merged.segments]


def _preset(method: str, batch: _Batch) -> list[torch.Tensor]:
    if method in ("teacher", "occlusion"):
        out = []
        for sizes, relevance in zip(batch.segment_sizes, getattr(batch, method), strict=True):
            if relevance.numel() != sum(sizes) or not relevance.abs().sum() > 0:
                # no signal (an empty uncompressed answer, or no token matters): spend it like the uniform baseline
                out += [uniform_scores(n) for n in sizes]
            else:
                out += list(torch.split(relevance, sizes))
        return out
    out = []
    for sizes, record in zip(batch.segment_sizes, batch.records, strict=True):
        evidence, start = list(record["evidence"]), 0  # indices over the sample's segments, one after the other
        bad = [i for i in evidence if not 0 <= i < sum(sizes)]
        if bad:
            raise ValueError(f"`evidence` indices must be in [0, {sum(sizes)}) (the sample's visual tokens), got {bad}")
        for n in sizes:
            out.append(oracle_scores(n, [i - start for i in evidence if start <= i < start + n]))
            start += n
    return out


_VISION_ATTRS = ("visual", "vision_tower", "multi_modal_projector", "mm_projector")


def _flop_names(model, attrs: tuple[str, ...]) -> set[str]:
    """The names ``FlopCounterMode`` may file these sub-modules' FLOPs under: their class name when called on
    their own, ``<Top>.<path>`` when called inside the model's forward."""
    top = type(model).__name__
    names = set()
    for path, module in model.named_modules():
        if path and path.split(".")[-1] in attrs and path.count(".") <= 1:
            names |= {type(module).__name__, f"{top}.{path}"}
    return names


def prefill_flops(model, inputs: dict[str, torch.Tensor], method: str, keep: float, fastv_k: int = 2) -> dict:
    """FLOPs of one prefill (up to the first token's logits), counted by ``torch.utils.flop_counter`` with the
    model's current compressor: ``total``, and its parts ``vision`` (tower + projector), ``compressor`` and
    ``llm`` (the rest: the LLM, the layer-0 features and the selection)."""
    saved = model.config.token_keep
    model.config.token_keep = 1.0 if method == "fastv" else keep
    try:
        with flop_counter() as counter, torch.no_grad():
            if method == "fastv":
                fastv_generate(model, inputs, keep, k=fastv_k, max_new_tokens=1)
            else:
                model.generate(**inputs, max_new_tokens=1, do_sample=False)
    finally:
        model.config.token_keep = saved
    counts = {name: sum(per_op.values()) for name, per_op in counter.get_flop_counts().items()}
    vision = sum(v for k, v in counts.items() if k in _flop_names(model, _VISION_ATTRS))
    compressor = sum(v for k, v in counts.items() if k in _flop_names(model, ("compressor",)))
    total = counts.get("Global", 0)
    return {"total": total, "vision": vision, "compressor": compressor, "llm": total - vision - compressor}


def evaluate(
    model,
    processor,
    records: Sequence[dict[str, Any]],
    compressor: torch.nn.Module | None = None,
    settings: EvalSettings | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[list[Any]], list[Any]] | None = None,
) -> dict[str, Any] | None:
    """Accuracy and retention of every method at every keep ratio on ``records`` (``question``, ``answer``,
    image(s); optional ``qtype``; ``evidence`` for the oracle).

    Args:
        model: an hf_tokcomp model; its compressor and ``token_keep`` are restored afterwards.
        processor: the model's processor.
        compressor: the learned compressor (``ours``); required when ``ours`` is among the methods.

    Returns:
        A JSON-able dict: ``accuracy[method][keep][group]`` (groups: ``"all"``, each ``qtype``, each prompt
        order), ``retention`` (same layout, accuracy / uncompressed accuracy; None where the uncompressed accuracy
        is 0),
        ``visual_tokens[keep]`` (mean kept per sample),
        ``flops[method][keep]`` (:func:`prefill_flops` of the first sample; ``flops["none"]["1.0"]``: uncompressed),
        ``counts[qtype]``, ``settings``, and ``samples``: per record (in order) its groups, the expected answer,
        and for the uncompressed model and each method at each keep whether it answered right (``methods``), its
        answer (``answers``) and the kept visual-token indices (``kept``; None for FastV, which prunes inside).

    With ``world_size`` > 1 (one call per process, e.g. under ``accelerate launch``) process ``rank`` evaluates
    the batches ``i % world_size == rank``; ``gather`` (e.g. accelerate's ``gather_object``) collects every
    process's per-sample results, and every process returns the same result, computed on all records.
    """
    settings = settings or EvalSettings()
    methods = list(settings.methods)
    if len(records) == 0:
        raise ValueError("`records` is empty: nothing to evaluate")
    if "fastv" in methods:
        layers = model.config.get_text_config().num_hidden_layers
        if layers < 2:
            raise ValueError(
                f"the `fastv` method needs an LLM of at least 2 layers; {type(model).__name__} has {layers}. Leave "
                "`fastv` out of `methods`."
            )
        if settings.fastv_k is None:
            settings = EvalSettings(**{**asdict(settings), "fastv_k": min(2, layers - 1)})
        elif not 0 < settings.fastv_k < layers:
            raise ValueError(
                f"`fastv_k` must be in [1, {layers - 1}] for this {layers}-layer LLM, got {settings.fastv_k}"
            )
    if "downsample" in methods:
        downsampled_processor(processor, 0.5, 1)  # refuses a processor without pixel bounds before any work
    if "ours" in methods and compressor is None:
        raise ValueError("`compressor` is required for the `ours` method (or leave `ours` out of `methods`)")
    if "oracle" in methods and any("evidence" not in r for r in records):
        raise ValueError("the `oracle` method needs an `evidence` field (visual token indices) in every record")
    missing = [i for i, r in enumerate(records) if r.get("answer") is None]
    if missing:
        raise ValueError(f"every record needs an `answer`; records {missing[:5]} have none")
    records = [dict(r) | {"qtype": str(r.get("qtype") if r.get("qtype") is not None else "all")} for r in records]
    if compressor is not None:
        compressor = compressor.to(model.device).eval()
    model.eval()
    tokenizer = getattr(processor, "tokenizer", processor)
    keeps = sorted({float(k) for k in settings.keeps} - {1.0}, reverse=True)
    saved = (model.compressor, model.config.token_keep, model.config.selector, model.config.token_coverage)
    modules: dict[str, torch.nn.Module | None] = {
        "ours": compressor,
        "attention": None,
        "random": RandomScores(settings.seed),
        "teacher": PresetScores(),
        "occlusion": PresetScores(),
        "oracle": PresetScores(),
    }
    if world_size > 1 and gather is None:
        raise ValueError("`gather` is required with world_size > 1 (e.g. accelerate.utils.gather_object)")
    starts = list(range(0, len(records), settings.batch_size))[rank::world_size]
    batches = [_Batch(records[i : i + settings.batch_size], {}) for i in starts]
    correct: dict[str, dict[float, list[bool]]] = {m: {} for m in methods}
    given: dict[str, dict[float, list[str]]] = {m: {} for m in methods}
    chosen: dict[str, dict[float, list[list[int] | None]]] = {m: {} for m in methods}
    full: list[bool] = []
    full_answers: list[str] = []
    used: dict[float, list[int]] = {}  # visual tokens per sample that `downsample` made
    steps = len(batches) * (1 + len(methods) * len(keeps))
    bar = tqdm(total=steps, desc="evaluating", disable=not progress)
    memo = MergeMemo(model)
    try:
        for start, batch in zip(starts, batches, strict=True):  # every method on one batch, then the next
            model.compressor, model.config.selector = saved[0], saved[2]
            model.config.token_keep, model.config.token_coverage = 1.0, 0.0
            batch.inputs = build_batch(processor, batch.records)
            with memo.on():
                batch.segment_sizes = segment_sizes(model, batch.inputs)
                answers = _answers(model, batch, settings.max_new_tokens)
            right, texts = _right(tokenizer, answers, batch.records)
            full += right
            full_answers += texts
            if "teacher" in methods:
                batch.teacher = visual_relevance(model, _on(model, batch.inputs), answers)
            if "occlusion" in methods:
                for record, answer in zip(batch.records, answers, strict=True):
                    one = _on(model, build_batch(processor, [record]))
                    batch.occlusion.append(occlusion_relevance(model, one, answer))
            bar.update(1)
            for method in methods:
                model.compressor = modules.get(method)
                model.config.selector = method if method in SELECTOR_METHODS else "auto"
                model.config.token_coverage = settings.coverage if method in COVERAGE_METHODS else 0.0
                for keep in keeps:
                    model.config.token_keep = 1.0 if method in ("fastv", "downsample") else keep
                    if isinstance(model.compressor, RandomScores):  # the same draws whatever the process count
                        model.compressor.generator.manual_seed(settings.seed * 1_000_003 + start)
                    if isinstance(model.compressor, PresetScores):
                        model.compressor.load(_preset(method, batch))
                    fastv = (keep, settings.fastv_k) if method == "fastv" else None
                    run = batch
                    if method == "downsample":
                        largest = max(n for sizes in batch.segment_sizes for n in sizes)  # one image's tokens
                        smaller = downsampled_processor(processor, keep, largest)
                        run = _Batch(batch.records, build_batch(smaller, batch.records))
                        used.setdefault(keep, []).extend(map(sum, segment_sizes(model, run.inputs)))
                    with memo.on():
                        answers = _answers(model, run, settings.max_new_tokens, fastv)
                    right, texts = _right(tokenizer, answers, batch.records)
                    correct[method].setdefault(keep, []).extend(right)
                    given[method].setdefault(keep, []).extend(texts)
                    kept = [None] * len(texts) if fastv or run is not batch else _kept(model, len(texts))
                    chosen[method].setdefault(keep, []).extend(kept)
                    if isinstance(model.compressor, PresetScores) and model.compressor.queue:
                        raise RuntimeError(f"{method}: {len(model.compressor.queue)} preset segment(s) were not scored")
                    bar.update(1)
            batch.inputs, batch.teacher, batch.occlusion = {}, [], []  # only one batch's tensors are held at a time
        flops: dict[str, dict[str, int]] = {}
        if settings.flops and rank == 0:
            first = _on(model, build_batch(processor, [records[0]]))
            model.compressor, model.config.selector = None, "auto"
            flops["none"] = {"1.0": prefill_flops(model, first, "attention", 1.0)}
            for method in methods:
                model.compressor = modules.get(method)
                model.config.selector = method if method in SELECTOR_METHODS else "auto"
                model.config.token_coverage = settings.coverage if method in COVERAGE_METHODS else 0.0
                if isinstance(model.compressor, PresetScores):
                    model.compressor = UniformScores()  # same cost as preset scores
                if method == "downsample":  # the smaller image, uncompressed
                    largest = max(segment_sizes(model, first)[0])
                    small = {k: downsampled_processor(processor, k, largest) for k in keeps}
                    first_at = {k: _on(model, build_batch(small[k], [records[0]])) for k in keeps}
                    flops[method] = {str(k): prefill_flops(model, first_at[k], method, 1.0) for k in keeps}
                    continue
                flops[method] = {str(k): prefill_flops(model, first, method, k, settings.fastv_k) for k in keeps}
    finally:
        bar.close()
        memo.remove()
        model.compressor, model.config.token_keep, model.config.selector, model.config.token_coverage = saved

    mine = [start + j for start, batch in zip(starts, batches, strict=True) for j in range(len(batch.records))]
    sizes = [sizes for batch in batches for sizes in batch.segment_sizes]
    samples = [
        {
            "index": index,
            "qtype": records[index]["qtype"],
            "groups": _groups(records[index]),
            "segment_tokens": sizes[i],
            "expected": normalise_answer(str(records[index]["answer"])),
            "uncompressed": full[i],
            "uncompressed_answer": full_answers[i],
            "methods": {m: {str(k): correct[m][k][i] for k in keeps} for m in methods},
            "answers": {m: {str(k): given[m][k][i] for k in keeps} for m in methods},
            "kept": {m: {str(k): chosen[m][k][i] for k in keeps} for m in methods},
        }
        | ({"downsample_tokens": {str(k): used[k][i] for k in keeps}} if used else {})
        for i, index in enumerate(mine)
    ]
    if world_size > 1:
        samples = sorted(gather(samples), key=lambda sample: sample["index"])
        flops = next(iter(f for f in gather([flops]) if f), {})
    if [sample["index"] for sample in samples] != list(range(len(records))):
        raise RuntimeError("evaluation: the processes' results do not cover every record exactly once")
    full = [sample["uncompressed"] for sample in samples]
    correct = {m: {k: [sample["methods"][m][str(k)] for sample in samples] for k in keeps} for m in methods}
    total_tokens = sum(sum(sample["segment_tokens"]) for sample in samples)
    kept_tokens = {k: sum(keep_count(k, n) for sample in samples for n in sample["segment_tokens"]) for k in keeps}
    member = [_groups(r) for r in records]
    qtypes = [g for g in sorted({g for gs in member for g in gs}) if not g.startswith("question_")]
    qtypes += [g for g in ("question_after", "question_before") if any(g in gs for gs in member)]
    picks = {q: [i for i, gs in enumerate(member) if q in gs] for q in qtypes}

    def by_type(hits: list[bool]) -> dict[str, float]:
        out = {"all": sum(hits) / len(hits)}
        for q in qtypes:
            out[q] = sum(hits[i] for i in picks[q]) / len(picks[q])
        return out

    base = by_type(full)
    accuracy = {m: {"1.0": base} | {str(k): by_type(correct[m][k]) for k in keeps} for m in methods}
    retention = {
        m: {k: {q: (a / base[q] if base[q] else None) for q, a in per.items()} for k, per in acc.items()}
        for m, acc in accuracy.items()
    }

    def intervals(hits: list[bool]) -> dict[str, list[float] | None]:
        out = {"all": retention_interval(hits, full, seed=settings.seed)}
        for q in qtypes:
            out[q] = retention_interval([hits[i] for i in picks[q]], [full[i] for i in picks[q]], seed=settings.seed)
        return out

    retention_ci = {m: {str(k): intervals(correct[m][k]) for k in keeps} for m in methods}
    return {
        "num_samples": len(records),
        "counts": {"all": len(records)} | {q: len(picks[q]) for q in qtypes},
        "keeps": [1.0, *keeps],
        "methods": methods,
        "accuracy": accuracy,
        "retention": retention,
        "retention_ci95": retention_ci,
        "visual_tokens": {"1.0": total_tokens / len(records)} | {str(k): kept_tokens[k] / len(records) for k in keeps},
        **(
            {
                "downsample_tokens": {
                    str(k): sum(x["downsample_tokens"][str(k)] for x in samples) / len(records) for k in keeps
                }
            }
            if "downsample" in methods
            else {}
        ),
        "flops": flops,
        "settings": asdict(settings),
        "coverage_applied_to": [m for m in methods if m in COVERAGE_METHODS] if settings.coverage else [],
        "samples": samples,
    }
