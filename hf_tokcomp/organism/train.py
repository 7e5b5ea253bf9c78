"""Train the organism from scratch on CPU: seeded, resumable, with a curriculum and a validation curve.

``python -m hf_tokcomp.organism.train --out runs/organism`` (``make organism``). First ``--vision-warmup`` steps
train the vision tower alone on an auxiliary per-visual-token shape/colour classifier (dropped after training),
so that the LLM starts from visual tokens that already say what their cell holds. Then every step draws 16
scenes x 8 questions; the vision tower runs once per scene. The curriculum stages are 1, 2, 3-4 and 3-6
objects (training starts at 2); a stage ends when the running training accuracy passes ``--advance-at`` (or
its step budget runs out); the auxiliary loss stays on until the last stage.

Measured while building this recipe (``runs/``, the curves are in benchmarks/results/organism.md): without the
vision warm-up the model learned to answer from the question's TYPE and the image alone, its answers did not
change with the question's colour and shape words, and it stalled at about 40% validation accuracy (2,000
steps from 1 object at lr 1.5e-3; 1,500 steps from 2 objects at 4e-3); with 600 warm-up steps, colour
questions about 2 objects reached 59% after 100 steps and 69% after 200 (11-17% without).

A checkpoint (model, optimiser, schedule, curriculum, random states) is written atomically every
``--eval-every`` steps and on Ctrl-C (after the running step completes); running the same command again
resumes from it, to the same weights as an uninterrupted run. The end result,
``OUT/final``, is a stock ``Qwen2VLForConditionalGeneration`` checkpoint with its processor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import threading
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Qwen2VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .model import encode_samples, organism_config, organism_processor
from .task import COLOURS, QUESTION_TYPES, SHAPES, Sample, make_scene_samples, make_split

__all__ = ["OrganismTrainArguments", "train_organism", "answer_accuracy", "save_atomic", "main"]

#: (min objects, max objects, question types) per curriculum stage
STAGES = (
    (1, 1, ("colour", "exists", "count")),
    (2, 2, QUESTION_TYPES),
    (3, 4, QUESTION_TYPES),
    (3, 6, QUESTION_TYPES),
)


@dataclass
class OrganismTrainArguments:
    out: str
    steps: int = 4000
    scenes_per_step: int = 16
    questions_per_scene: int = 8
    lr: float = 1.5e-3
    warmup: int = 200
    hidden_size: int = 128
    num_layers: int = 2
    advance_at: float = 0.9
    first_stage: int = 1
    stage_min: int = 100
    stage_budget: int = 1200
    aux_weight: float = 1.0
    vision_warmup: int = 600
    eval_every: int = 250
    val_samples: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "scenes_per_step",
            "questions_per_scene",
            "eval_every",
            "val_samples",
            "stage_min",
            "stage_budget",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.first_stage < len(STAGES):
            raise ValueError(f"`first_stage` must be in [0, {len(STAGES) - 1}], got {self.first_stage}")
        if not 0 < self.advance_at <= 1:
            raise ValueError(f"`advance_at` must be in (0, 1], got {self.advance_at}")


def _cell_classes(samples: list[Sample]) -> torch.Tensor:
    """Per scene, the class of each of the 64 visual tokens: 0 = empty, 1 + shape * 6 + colour. ``(S, 64)``."""
    colours = list(COLOURS)
    out = torch.zeros(len(samples), 64, dtype=torch.long)
    for i, sample in enumerate(samples):
        for obj in sample.objects:
            out[i, obj.token] = 1 + SHAPES.index(obj.shape) * len(colours) + colours.index(obj.colour)
    return out


def _training_batch(processor, scenes: list[list[Sample]]) -> dict[str, Any]:
    """The batch of every question of every scene, with each scene's pixels once."""
    images = processor.image_processor(images=[s[0].image for s in scenes], return_tensors="pt")
    flat = [q for scene in scenes for q in scene]
    batch = encode_samples(processor, flat, with_answers=True, tokens_only=True)
    batch["pixel_values"], batch["image_grid_thw"] = images["pixel_values"], images["image_grid_thw"]
    return batch


def _vision_warmup(model, aux: torch.nn.Linear, processor, rng: random.Random, args, progress: bool) -> None:
    """``args.vision_warmup`` steps of the auxiliary shape/colour loss alone (vision tower + aux head, no LLM):
    the LLM then starts from visual tokens that already say what is in their cell."""
    params = list(model.model.visual.parameters()) + list(aux.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    for _ in tqdm(range(args.vision_warmup), desc="vision warm-up", disable=not progress):
        scenes = [make_scene_samples(rng, 1, ("exists",), 1, 6) for _ in range(args.scenes_per_step)]
        images = processor.image_processor(images=[s[0].image for s in scenes], return_tensors="pt")
        visual = model.model.get_image_features(
            images["pixel_values"], images["image_grid_thw"], return_dict=True
        ).pooler_output
        loss = F.cross_entropy(aux(torch.stack(visual)).flatten(0, 1), _cell_classes([s[0] for s in scenes]).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, whether the answer word (the first labelled token) is predicted greedily. ``(B,)`` bool."""
    first = (labels != -100).int().argmax(-1)
    rows = torch.arange(labels.shape[0])
    return logits[rows, first - 1].argmax(-1) == labels[rows, first]


@torch.no_grad()
def validate(model, processor, samples: list[Sample], batch_size: int = 100, blank: bool = False) -> dict[str, float]:
    """Greedy answer accuracy per question type (and ``all``) on ``samples`` (with ``blank``: every image
    replaced by an empty background, the control that shows the model uses the image)."""
    training = model.training
    model.eval()
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = encode_samples(processor, chunk, with_answers=True, blank=blank)
        labels = batch.pop("labels")
        correct = answer_accuracy(model(**batch).logits, labels)
        for sample, ok in zip(chunk, correct.tolist(), strict=True):
            hits.setdefault(sample.qtype, []).append(ok)
            hits.setdefault("all", []).append(ok)
    model.train(training)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def _lr_factor(step: int, args: OrganismTrainArguments) -> float:
    if step < args.warmup:
        return (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: an interruption never leaves a half-written file."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_organism(args: OrganismTrainArguments, progress: bool = True) -> Path:
    """Train (or resume) the organism; returns the directory of the final checkpoint."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    torch.manual_seed(args.seed)
    processor = organism_processor()
    model = Qwen2VLForConditionalGeneration(organism_config(args.hidden_size, args.num_layers))
    aux = torch.nn.Linear(args.hidden_size, 1 + len(SHAPES) * len(COLOURS))
    params = list(model.parameters()) + list(aux.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, args))
    rng = random.Random(args.seed)
    state = {"step": 0, "stage": args.first_stage, "stage_start": 0, "args": asdict(args)}
    recent: deque[float] = deque(maxlen=100)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        saved = {k: v for k, v in ckpt["state"]["args"].items() if k != "out"}
        mine = {k: v for k, v in asdict(args).items() if k != "out"}
        if saved != mine:
            differ = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
            raise ValueError(
                f"{ckpt_path} was written with other settings (saved, given): {differ}; resume with the saved "
                "settings (the learning-rate schedule depends on them) or use another `--out`"
            )
        model.load_state_dict(ckpt["model"])
        aux.load_state_dict(ckpt["aux"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        rng.setstate(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        state, recent = ckpt["state"], deque(ckpt["recent"], maxlen=100)
        state["args"] = asdict(args)

    def checkpoint() -> None:
        save_atomic(
            {
                "model": model.state_dict(),
                "aux": aux.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
                "recent": list(recent),
            },
            ckpt_path,
        )

    if state["step"] == 0 and args.vision_warmup > 0 and not ckpt_path.exists():
        _vision_warmup(model, aux, processor, rng, args, progress)
        checkpoint()
    val = make_split("validation", args.val_samples, seed=args.seed)
    model.train()
    bar = tqdm(total=args.steps, initial=state["step"], disable=not progress, desc="organism")
    interrupted: list[int] = []
    main_thread = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    if main_thread:
        previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        while state["step"] < args.steps:
            lo, hi, qtypes = STAGES[state["stage"]]
            scenes = [
                make_scene_samples(rng, args.questions_per_scene, qtypes, lo, hi) for _ in range(args.scenes_per_step)
            ]
            batch = _training_batch(processor, scenes)
            labels = batch.pop("labels")
            pixels, grid = batch.pop("pixel_values"), batch.pop("image_grid_thw")
            visual = model.model.get_image_features(pixels, grid, return_dict=True).pooler_output
            repeat = args.questions_per_scene
            shared = BaseModelOutputWithPooling(pooler_output=tuple(v for v in visual for _ in range(repeat)))
            output = model(
                **batch,
                labels=labels,
                image_grid_thw=grid.repeat_interleave(repeat, 0),
                mm_encoder_outputs={"image": shared},
            )
            loss = output.loss
            final_stage = state["stage"] == len(STAGES) - 1
            if args.aux_weight > 0 and not final_stage:
                targets = _cell_classes([s[0] for s in scenes])
                aux_loss = F.cross_entropy(aux(torch.stack(visual)).flatten(0, 1), targets.flatten())
                loss = loss + args.aux_weight * aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            recent.append(answer_accuracy(output.logits.detach(), labels).float().mean().item())
            state["step"] += 1
            bar.update(1)
            running = sum(recent) / len(recent)
            bar.set_postfix(stage=state["stage"], loss=f"{output.loss.item():.3f}", acc=f"{running:.3f}")
            in_stage = state["step"] - state["stage_start"]
            record = {"step": state["step"], "stage": state["stage"], "train_acc": running}
            advance = running >= args.advance_at or in_stage >= args.stage_budget
            if not final_stage and in_stage >= args.stage_min and advance:
                state["stage"], state["stage_start"] = state["stage"] + 1, state["step"]
                recent.clear()
            if state["step"] % args.eval_every == 0 or state["step"] == args.steps:
                record["val"] = validate(model, processor, val)
                checkpoint()
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.write(json.dumps(record))
            elif interrupted:
                checkpoint()
            if interrupted:  # Ctrl-C: the step just finished is saved whole
                bar.write(f"interrupted: checkpoint saved at step {state['step']} in {ckpt_path}; run again to resume")
                raise KeyboardInterrupt
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous_handler)
    bar.close()
    final = out / "final"
    model.save_pretrained(final)
    processor.save_pretrained(final)
    # the organism's own chat template: its generation prompt opens the answer (a turn header of 2 tokens)
    header = processor.tokenizer.convert_tokens_to_ids(["<|im_start|>", "assistant"])
    (final / "hf_tokcomp.json").write_text(json.dumps({"answer_start_ids": header}))
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_tokcomp.organism.train", description=__doc__.split("\n")[0])
    for name, default in asdict(OrganismTrainArguments(out="")).items():
        flag = "--" + name.replace("_", "-")
        if name == "out":
            parser.add_argument(flag, required=True, help="run directory (checkpoint, log, final model)")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"default: {default}")
    args = OrganismTrainArguments(**{k.replace("-", "_"): v for k, v in vars(parser.parse_args(argv)).items()})
    print(f"final model: {train_organism(args)}")


if __name__ == "__main__":
    main()
