"""The lmms-eval model ``tokcomp``: any hf_tokcomp family, compressed, behind lmms-eval's ``generate_until``.

``python -m lmms_eval --model tokcomp --model_args pretrained=Qwen/Qwen2-VL-7B-Instruct,token_keep=0.5,
selector=divprune --tasks mme --batch_size 8``. The family comes from the checkpoint's ``model_type``
(:func:`hf_tokcomp.models.load_compressed_model`); ``pretrained=organism`` is the shipped organism.

Prompts are built as lmms-eval's own wrapper for the family builds them: the visuals first, then the task's text
(``<image>`` marks removed), after the family's default system prompt, with the wrapper's image preprocessing
(:mod:`~hf_tokcomp.lmms.visuals`); batches are left-padded and ordered longest prompt first by lmms-eval's
``Collator``. What compression did is written into the results: per sample in the logged samples'
``token_counts`` (``visual_tokens``, ``visual_tokens_kept``, ``selector``, ``token_keep``), and over the run in
the results JSON's ``throughput`` block (``avg_visual_tokens_per_sample``, ``avg_visual_tokens_kept_per_sample``,
``avg_visual_keep_ratio``, ``avg_token_keep``), gathered over every process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from lmms_eval import utils
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from tqdm.auto import tqdm

from ..models import load_compressed_model
from ..organism import ORGANISM_COMPRESSOR_DIR, ORGANISM_DIR
from ..processor import load_processor
from ..runtime.config import check_token_keep
from ..teachers.gae import cut_at_eos
from ..training.labels import build_batch
from .visuals import VisualPolicy, split_visuals

__all__ = ["TokComp", "CompressionCounts", "FAMILY_DEFAULTS"]

_QWEN_SYSTEM = "You are a helpful assistant."
#: per ``model_type``: (system prompt, visual policy) of lmms-eval 0.7.3's own wrapper for the family
FAMILY_DEFAULTS: dict[str, tuple[str | None, VisualPolicy]] = {
    "qwen2_vl": (_QWEN_SYSTEM, VisualPolicy(jpeg_quality=85, min_pixels=3136, max_pixels=602112)),
    "qwen2_5_vl": (_QWEN_SYSTEM, VisualPolicy(jpeg_quality=85, min_pixels=256 * 28 * 28, max_pixels=1605632)),
    "qwen3_vl": (_QWEN_SYSTEM, VisualPolicy(min_pixels=256 * 28 * 28, max_pixels=1605632, resize_factor=32)),
    "qwen3_vl_moe": (_QWEN_SYSTEM, VisualPolicy(min_pixels=256 * 28 * 28, max_pixels=1605632, resize_factor=32)),
}
_NONE = ("", "none", "None", "null")


@dataclass
class CompressionCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus what compression did to the sample's visual tokens."""

    visual_tokens: int | None = None
    visual_tokens_kept: int | None = None
    selector: str | None = None
    token_keep: float | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {
            "visual_tokens": self.visual_tokens,
            "visual_tokens_kept": self.visual_tokens_kept,
            "selector": self.selector,
            "token_keep": self.token_keep,
        }
        return super().to_dict() | {k: v for k, v in extra.items() if v is not None}


def _optional(value: Any) -> Any:
    """lmms-eval's ``--model_args`` strings: ``none`` / empty as None."""
    return None if isinstance(value, str) and value in _NONE else value


class TokComp(lmms):
    """An hf_tokcomp model under lmms-eval.

    Args:
        pretrained: a checkpoint of a supported family (Hub id or directory), or ``organism``.
        token_keep, compressor, selector, attn_implementation, dtype, device_map: as for ``from_pretrained``
            (``compressor=shipped`` with the organism: its shipped compressor).
        device: where the model runs without ``device_map`` (default: ``cuda`` when available, else ``cpu``);
            under ``accelerate launch`` each process uses its own GPU.
        batch_size: prompts per ``generate`` call (left-padded).
        system_prompt: ``default`` (the family's lmms-eval wrapper's), ``none``, or the text.
        jpeg_quality, min_pixels, max_pixels, max_num_frames: override the family's image preprocessing
            (``none`` switches a step off).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        token_keep: float = 1.0,
        compressor: str | None = None,
        selector: str = "auto",
        attn_implementation: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        device_map: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        system_prompt: str | None = "default",
        jpeg_quality: int | str | None = "default",
        min_pixels: int | str | None = "default",
        max_pixels: int | str | None = "default",
        max_num_frames: int | str = "default",
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"unknown --model_args for `tokcomp`: {sorted(unknown)}; allowed: pretrained, token_keep, "
                "compressor, selector, attn_implementation, dtype, device, device_map, system_prompt, jpeg_quality, "
                "min_pixels, max_pixels, max_num_frames"
            )
        check_token_keep(token_keep)
        if max_batch_size is not None:
            raise ValueError(
                f"`max_batch_size` ({max_batch_size}) belongs to batch_size=auto, which `tokcomp` does not do"
            )
        if not (isinstance(batch_size, int) or str(batch_size).isdigit()) or int(batch_size) < 1:
            raise ValueError(f"`batch_size` must be a positive integer (no automatic sizing), got {batch_size!r}")
        from accelerate import Accelerator

        accelerator = Accelerator()
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        if self._world_size > 1:
            self.accelerator = accelerator
            device = str(accelerator.device)  # each process its own device
        device = _optional(device) or ("cuda" if torch.cuda.is_available() else "cpu")
        compressor = _optional(compressor)
        organism = pretrained == "organism"
        if organism:
            pretrained = str(ORGANISM_DIR)
            compressor = str(ORGANISM_COMPRESSOR_DIR) if compressor == "shipped" else compressor
        kwargs: dict[str, Any] = {"token_keep": float(token_keep), "compressor": compressor, "selector": selector}
        if _optional(attn_implementation) is not None:
            kwargs["attn_implementation"] = attn_implementation
        if _optional(dtype) is not None:
            if dtype != "auto" and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
                raise ValueError(
                    f"`dtype` must be `auto` or a torch dtype name (bfloat16, float16, float32), got {dtype!r}"
                )
            kwargs["dtype"] = dtype if dtype == "auto" else getattr(torch, str(dtype))
        if _optional(device_map) is not None:
            kwargs["device_map"] = device_map
        self._model = load_compressed_model(pretrained, **kwargs).eval()
        if "device_map" not in kwargs:
            self._model.to(device)
        self.processor = load_processor(pretrained)
        self._tokenizer = getattr(self.processor, "tokenizer", self.processor)
        family_system, policy = (
            (None, VisualPolicy())
            if organism
            else FAMILY_DEFAULTS.get(self._model.config.model_type, (None, VisualPolicy()))
        )
        self.system_prompt = family_system if system_prompt == "default" else _optional(system_prompt)
        overrides = {
            name: _optional(value)
            for name, value in {
                "jpeg_quality": jpeg_quality,
                "min_pixels": min_pixels,
                "max_pixels": max_pixels,
                "max_num_frames": max_num_frames,
            }.items()
            if value != "default"
        }
        self.policy = VisualPolicy(**{**policy.__dict__, **overrides})
        self.batch_size_per_gpu = int(batch_size)
        self.compression: list[dict[str, Any]] = []  # per sample of this process in the last generate_until call

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._model.device

    def _records(self, chunk: list[tuple]) -> list[dict[str, Any]]:
        """The chunk's requests as hf_tokcomp records (visuals first, then the text, as lmms-eval's wrappers)."""
        records = []
        for context, _, doc_to_visual, doc_id, task, split in chunk:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            visuals = visuals if isinstance(visuals, list) else [visuals]
            if len(visuals) == 1 and isinstance(visuals[0], list):
                visuals = visuals[0]
            images, videos = split_visuals(visuals, self.policy)
            if len(videos) > 1:
                raise ValueError(f"{task} document {doc_id}: one video per prompt is supported, got {len(videos)}")
            record: dict[str, Any] = {"question": context.replace("<image>", "")}
            if images:
                record["image"] = images
            if videos:
                record["video"] = videos[0]
            records.append(record)
        return records

    def _visual_tokens(self, inputs: dict[str, torch.Tensor]) -> list[int]:
        """Per row, its visual tokens before compression."""
        from ..evaluation.harness import segment_sizes

        return [sum(sizes) for sizes in segment_sizes(self._model, inputs)]

    def _counts(self, inputs: dict[str, torch.Tensor], answers: list[torch.Tensor]) -> list:
        """Per row, lmms-eval's token counts with what compression did (``input_tokens``: the row's prompt tokens,
        padding excluded, after compression)."""
        selections = self._model.last_compression
        keep, selector = float(self._model.config.token_keep), self._model.config.selector
        if selections is not None:
            totals = [sum(s.num_tokens) for s in selections]
            kept = [s.num_kept for s in selections]
            selector = selections[0].selector
        else:  # nothing compressed (keep 1.0, or no visual input)
            totals = (
                self._visual_tokens(inputs) if any(k.startswith("pixel_values") for k in inputs) else [0] * len(answers)
            )
            kept = totals
        counts = []
        lengths = inputs["attention_mask"].sum(1).tolist()
        for length, total, k, answer in zip(lengths, totals, kept, answers, strict=True):
            counts.append(
                CompressionCounts(
                    input_tokens=int(length) - (total - k),
                    output_tokens=int(answer.numel()),
                    visual_tokens=total,
                    visual_tokens_kept=k,
                    selector=selector,
                    token_keep=keep,
                )
            )
            self.compression.append({"visual_tokens": total, "visual_tokens_kept": k})
        return counts

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answers to ``requests`` in their order, batched ``batch_size`` at a time (same generation settings
        per batch); greedy unless the task asks for ``temperature`` > 0."""
        out: list[GenerationResult] = []
        started, generated, self.compression = time.perf_counter(), 0, []
        collator = utils.Collator(
            [r.args for r in requests], lambda a: (-len(self._tokenizer.encode(a[0])), a[0]), grouping=True
        )
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="tokcomp responding")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            gen_kwargs = dict(chunk[0][1])
            until = gen_kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            inputs = build_batch(self.processor, self._records(chunk), self.system_prompt)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            generate = self._generate_kwargs(gen_kwargs)
            with torch.no_grad():
                sequences = self._model.generate(**inputs, **generate)
            answers = cut_at_eos(self._model, sequences, inputs["input_ids"].shape[1])
            counts = self._counts(inputs, answers)
            for answer, count in zip(answers, counts, strict=True):
                text = self._tokenizer.decode(answer, skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                out.append(GenerationResult(text=text, token_counts=count))
                generated += int(answer.numel())
            bar.update(len(chunk))
        bar.close()
        self._log_compression(time.perf_counter() - started, generated)
        return collator.get_original(out)

    def _generate_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """lmms-eval's generation settings as ``generate`` arguments; the ones we cannot honour are refused."""
        allowed = {"max_new_tokens", "temperature", "top_p", "num_beams", "do_sample"}
        unknown = sorted(set(gen_kwargs) - allowed)
        if unknown:
            raise ValueError(
                f"generation settings {unknown} are not supported by `tokcomp`; allowed: {sorted(allowed)}"
            )
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        sample = bool(gen_kwargs.get("do_sample", temperature > 0))
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens", 128)),
            "do_sample": sample,
            "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
        }
        if sample:
            kwargs["temperature"] = temperature
            if gen_kwargs.get("top_p") is not None:
                kwargs["top_p"] = float(gen_kwargs["top_p"])
        return kwargs

    def _log_compression(self, seconds: float, generated: int) -> None:
        """The run's compression over every process into the results JSON (lmms-eval's ``throughput`` block)."""
        mine = self.compression
        if self.world_size > 1:
            from accelerate.utils import gather_object

            every = gather_object(mine)
        else:
            every = mine
        if self.rank != 0 or not every:
            return
        total = sum(c["visual_tokens"] for c in every)
        kept = sum(c["visual_tokens_kept"] for c in every)
        log_metrics(
            total_elapsed_time=seconds,
            total_gen_tokens=generated,
            avg_speed=generated / seconds if seconds > 0 else 0.0,
            additional_metrics={
                "visual_tokens_per_sample": total / len(every),
                "visual_tokens_kept_per_sample": kept / len(every),
                "visual_keep_ratio": kept / total if total else 1.0,
                "token_keep": float(self._model.config.token_keep),
                "processes": self.world_size,
            },
        )

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Per request ``(context, continuation, ...)``: the log-probability of the continuation after the
        compressed prompt, and whether it is the greedy continuation. One request per forward."""
        results = []
        for context, continuation, doc_to_visual, doc_id, task, split in tqdm(
            [r.args for r in requests], disable=self.rank != 0, desc="tokcomp loglikelihood"
        ):
            (record,) = self._records([(context, None, doc_to_visual, doc_id, task, split)])
            inputs = build_batch(self.processor, [record], self.system_prompt)
            target = self._tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
            n = target.shape[1]
            if n == 0:
                raise ValueError(f"{task} document {doc_id}: the continuation {continuation!r} has no tokens")
            inputs["input_ids"] = torch.cat([inputs["input_ids"], target], dim=1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(target)], dim=1)
            if "mm_token_type_ids" in inputs:
                inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(target)], dim=1)
            labels = torch.full_like(inputs["input_ids"], -100)
            labels[:, -n:] = target  # the answer: never read as instruction by the selection
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.no_grad():
                logits = self._model(**inputs, labels=labels.to(self.device)).logits[0, -n - 1 : -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            target = target[0].to(logprobs.device)
            total = float(logprobs.gather(1, target[:, None]).sum())
            results.append((total, bool((logprobs.argmax(-1) == target).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("`tokcomp` has no multi-round generation; use single-round tasks")
