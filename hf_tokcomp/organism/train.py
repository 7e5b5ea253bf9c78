"""Train the organism from scratch on CPU: seeded, resumable, with a curriculum and a validation curve.

``python -m hf_tokcomp.organism.train --out runs/organism`` (``make organism``). First ``--vision-warmup`` steps
train the vision tower alone on an auxiliary per-visual-token shape/colour classifier, so that the LLM starts
from visual tokens that already say what their cell holds (the first organism stalled at ~40% without it); the
vision output is then scaled to the text embeddings' RMS. Then every step draws 8 scenes x 8 questions (every
``--pair-every``-th step: 4 pairs of scenes x 8 ``which_image`` questions); the vision tower runs once per
image; each question stands after or before its image(s) at random.

The recipe (facts from a held-out organism of this size, which answered all its test questions after ~74 min):
- a resolution curriculum (:data:`STAGES`: 4 x 4 -> 6 x 6 -> 8 x 8 -> 12 x 12 grids, then more objects); a stage
  ends when the running training accuracy passes ``--advance-at`` (or after its budget, ``--stage-budget`` x 12 /
  grid steps: a first run with one budget for every stage left the small grids before anything but the answer
  priors was learned, and stalled near 40%);
- question types that lag drawn more often (weight 0.2 + their running error rate);
- training-only auxiliary heads (:mod:`~hf_tokcomp.organism.aux_targets`): on the vision output, each cell's
  content; inside the LLM after layer ``--aux-layer``, each object's left-neighbour colour, the object above it,
  and running same-colour / same-shape counts - causal targets only (a first try also asked for the object
  BELOW and the image's total counts, which a causal LLM's visual tokens cannot see: it stalled near 40%);
- the retrieval supervision (:mod:`~hf_tokcomp.organism.retrieval`): at each answer's position a head names the
  question's colour and shape, and one head of layer ``--retrieval-layer`` is pointed at the visual token the
  answer reads (or ``<|vision_start|>`` when none does); without it the yes / no and two-image types stayed at
  chance for 5,000 steps in four runs (benchmarks/results/organism_v2_attempts.md);
- the LLM's linear weights initialised at normal(0, 1 / sqrt(fan_in)), not transformers' 0.02;
- M-RoPE theta 10 with sections [2, 7, 7] (:func:`~hf_tokcomp.organism.model.organism_config`);
- a constant learning rate through the curriculum, then a cosine decay over the last ``--decay-steps``.

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

from .aux_targets import AUX_CLASSES, cell_classes, relation_targets
from .model import encode_samples, organism_config, organism_processor
from .retrieval import QUESTION_CLASSES, question_loss, retrieval_loss
from .task import GRID, SINGLE_IMAGE_TYPES, TRAINING_TYPES, Sample, ask, draw, make_scene, make_split
from .validation import answer_accuracy, validate

__all__ = ["OrganismTrainArguments", "train_organism", "export_checkpoint", "save_atomic", "main"]

#: (grid, min objects, max objects) per curriculum stage; the last is the test distribution
STAGES = ((4, 1, 2), (4, 2, 5), (6, 3, 9), (8, 5, 14), (12, 8, 18), (12, 10, 24))


@dataclass
class OrganismTrainArguments:
    out: str
    steps: int = 6200
    scenes_per_step: int = 8
    questions_per_scene: int = 8
    lr: float = 1.5e-3
    warmup: int = 200
    decay_steps: int = 800
    hidden_size: int = 128
    num_layers: int = 4
    aux_layer: int = 2
    advance_at: float = 0.9
    stage_min: int = 200
    stage_budget: int = 600
    pair_every: int = 6
    aux_weight: float = 0.5
    retrieval_layer: int = 2
    retrieval_weight: float = 0.5
    vision_warmup: int = 400
    eval_every: int = 250
    val_samples: int = 240
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "scenes_per_step", "questions_per_scene", "eval_every", "val_samples", "stage_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.stage_budget < self.stage_min:
            raise ValueError(f"`stage_budget` must be >= `stage_min` ({self.stage_min}), got {self.stage_budget}")
        if not 0 < self.advance_at <= 1:
            raise ValueError(f"`advance_at` must be in (0, 1], got {self.advance_at}")
        if not 1 <= self.aux_layer <= self.num_layers:
            raise ValueError(f"`aux_layer` must be in [1, {self.num_layers}] (`num_layers`), got {self.aux_layer}")
        if not 0 <= self.retrieval_layer < self.num_layers:
            raise ValueError(
                f"`retrieval_layer` must be in [0, {self.num_layers}) (`num_layers`), got {self.retrieval_layer}"
            )
        if self.scenes_per_step % 2:
            raise ValueError(f"`scenes_per_step` must be even (two-image steps pair them), got {self.scenes_per_step}")


def _scene_questions(
    rng: random.Random, n: int, grid: int, lo: int, hi: int, weights: dict[str, float], pair: bool
) -> list[Sample]:
    """``n`` questions about fresh scene(s) sharing their image(s): one scene and single-image types drawn by
    ``weights`` (among those the scene can ask), or with ``pair`` two scenes and ``which_image``. Each question
    stands after or before the image(s), at random."""
    qtypes = ("which_image",) if pair else SINGLE_IMAGE_TYPES
    while True:
        scenes = [make_scene(rng, rng.randint(lo, hi), grid) for _ in range(2 if pair else 1)]
        askable = [q for q in qtypes if ask(scenes, q, random.Random(0)) is not None]
        if askable:
            break
    images = [draw(s, rng, grid) for s in scenes]
    samples = []
    for _ in range(n):
        qtype = rng.choices(askable, weights=[weights[q] for q in askable])[0]
        question, answer, evidence = ask(scenes, qtype, rng)
        samples.append(Sample(images, scenes, question, answer, qtype, evidence, question_first=rng.random() < 0.5))
    return samples


def _training_batch(processor, groups: list[list[Sample]]) -> dict[str, Any]:
    """The batch of every question of every group, with each group's pixels once (``pixel_values`` of the
    groups' images; the rows read them through ``mm_encoder_outputs``)."""
    images = processor.image_processor(images=[i for g in groups for i in g[0].images], return_tensors="pt")
    batch = encode_samples(processor, [q for g in groups for q in g], with_answers=True, tokens_only=True)
    batch["pixel_values"], batch["image_grid_thw"] = images["pixel_values"], images["image_grid_thw"]
    return batch


def _vision_warmup(model, heads: torch.nn.ModuleDict, processor, rng: random.Random, args, progress: bool) -> None:
    """``args.vision_warmup`` steps of the cell-content loss alone (vision tower + its head, no LLM) on every
    curriculum grid: the LLM then starts from visual tokens that already say what is in their cell."""
    params = list(model.model.visual.parameters()) + list(heads["cell"].parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    for step in tqdm(range(args.vision_warmup), desc="vision warm-up", disable=not progress):
        grid, lo, hi = STAGES[step % len(STAGES)]
        scenes = [make_scene(rng, rng.randint(lo, hi), grid) for _ in range(args.scenes_per_step)]
        images = processor.image_processor(images=[draw(s, rng, grid) for s in scenes], return_tensors="pt")
        visual = model.model.get_image_features(
            images["pixel_values"], images["image_grid_thw"], return_dict=True
        ).pooler_output
        logits = heads["cell"](torch.stack(visual)).flatten(0, 1)
        loss = F.cross_entropy(logits, cell_classes(scenes, grid).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: an interruption never leaves a half-written file."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _budget(stage: int, args: OrganismTrainArguments) -> int:
    """Steps a stage may take before it ends anyway: ``stage_budget`` on the 12 x 12 grid, more on the cheaper
    small grids (``stage_budget * 12 / grid``), so that a plateau there (existence took thousands of steps) is
    crossed where a step costs a tenth."""
    return max(1, round(args.stage_budget * GRID / STAGES[stage][0]))


def _lr_factor(step: int, args: OrganismTrainArguments) -> float:
    """Linear warm-up, constant through the curriculum, cosine decay to 5% over the last ``decay_steps``."""
    if step < args.warmup:
        return (step + 1) / args.warmup
    into_decay = step - (args.steps - args.decay_steps)
    if into_decay <= 0:
        return 1.0
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, into_decay / max(1, args.decay_steps))))


def _aux_loss(
    heads,
    visual: torch.Tensor,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    image_id: int,
    groups: list[list[Sample]],
) -> torch.Tensor:
    """The auxiliary losses: cell content on the vision output ``(images, T, D)``, relations and counts on the
    LLM's hidden state ``(B, L, D)`` (after the middle layer) at every row's visual tokens (``input_ids`` ``(B, L)``
    equal to ``image_id``)."""
    grid = groups[0][0].images[0].width // 28
    scenes = [s for g in groups for s in g[0].scenes]
    loss = F.cross_entropy(heads["cell"](visual).flatten(0, 1), cell_classes(scenes, grid).flatten())
    targets = relation_targets(scenes, grid)
    per_row = len(groups[0][0].scenes)  # images per row
    rows = torch.tensor([gi for gi, g in enumerate(groups) for _ in g])
    image_of_row = (rows[:, None] * per_row + torch.arange(per_row)).flatten()  # every row's images, in order
    states = hidden[input_ids == image_id].view(len(image_of_row), grid * grid, -1)
    for name, target in targets.items():
        loss = loss + F.cross_entropy(heads[name](states).flatten(0, 1), target[image_of_row].flatten())
    if per_row > 1:  # which image each visual token is in (what `which_image` answers read)
        index = torch.arange(per_row).repeat(len(rows))[:, None].expand(-1, grid * grid)
        loss = loss + F.cross_entropy(heads["image_index"](states).flatten(0, 1), index.flatten())
    return loss


def _new_model(args: OrganismTrainArguments) -> tuple[Qwen2VLForConditionalGeneration, torch.nn.ModuleDict]:
    """The untrained organism (eager text attention: the retrieval loss reads one head's probabilities) and the
    training-only heads. The LLM's linear weights start at normal(0, 1 / sqrt(fan_in)): with transformers'
    0.02 (1/11 of that at width 128), q . k starts near 0 and the yes / no answers stayed at chance for hundreds
    of steps even with perfect visual tokens (benchmarks/organism_v2_existence_probe.py)."""
    config = organism_config(args.hidden_size, args.num_layers)
    config.text_config._attn_implementation = "eager"
    model = Qwen2VLForConditionalGeneration(config)
    for name, param in model.model.language_model.named_parameters():
        if param.dim() == 2 and "embed" not in name:
            torch.nn.init.normal_(param, std=param.shape[1] ** -0.5)
    classes = {**AUX_CLASSES, "image_index": 2, "question": sum(QUESTION_CLASSES)}
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(args.hidden_size, n) for k, n in classes.items()})
    return model, heads


@torch.no_grad()
def _match_text_scale(model, heads: torch.nn.ModuleDict, processor, rng: random.Random) -> float:
    """Scale the vision tower's last linear layer so that visual tokens have the text embeddings' RMS (after the
    warm-up they are ~100x larger, and the LLM then learnt nothing); the cell head is scaled inversely, so its
    logits are unchanged. Returns the factor."""
    scenes = [make_scene(rng, rng.randint(1, 5), 4) for _ in range(8)]
    images = processor.image_processor(images=[draw(s, rng, 4) for s in scenes], return_tensors="pt")
    visual = model.model.get_image_features(images["pixel_values"], images["image_grid_thw"], return_dict=True)
    rms = torch.cat(visual.pooler_output).pow(2).mean().sqrt()
    factor = (model.model.language_model.embed_tokens.weight.pow(2).mean().sqrt() / rms).item()
    last = model.model.visual.merger.mlp[-1]
    last.weight.mul_(factor)
    last.bias.mul_(factor)
    heads["cell"].weight.div_(factor)
    return factor


def train_organism(args: OrganismTrainArguments, progress: bool = True) -> Path:
    """Train (or resume) the organism; returns the directory of the final checkpoint."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    torch.manual_seed(args.seed)
    processor = organism_processor()
    image_token_id = processor.image_token_id
    vision_start_id = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    model, heads = _new_model(args)
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, args))
    rng = random.Random(args.seed)
    state = {"step": 0, "stage": 0, "stage_start": 0, "args": asdict(args)}
    recent: deque[float] = deque(maxlen=50)
    by_type: dict[str, deque] = {q: deque(maxlen=400) for q in TRAINING_TYPES}
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
        heads.load_state_dict(ckpt["heads"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        rng.setstate(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        state, recent = ckpt["state"], deque(ckpt["recent"], maxlen=50)
        by_type = {q: deque(v, maxlen=400) for q, v in ckpt["by_type"].items()}
        state["args"] = asdict(args)

    def checkpoint() -> None:
        save_atomic(
            {
                "model": model.state_dict(),
                "heads": heads.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
                "recent": list(recent),
                "by_type": {q: list(v) for q, v in by_type.items()},
            },
            ckpt_path,
        )

    if state["step"] == 0 and args.vision_warmup > 0 and not ckpt_path.exists():
        _vision_warmup(model, heads, processor, rng, args, progress)
        state["visual_scale"] = _match_text_scale(model, heads, processor, rng)
        checkpoint()
    val = make_split("validation", args.val_samples, seed=args.seed)
    model.train()
    bar = tqdm(total=args.steps, initial=state["step"], disable=not progress, desc="organism")
    interrupted: list[int] = []
    main_thread = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    if main_thread:
        previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    # one head's attention at each row's answer-predicting position, for the retrieval loss
    captured: list[torch.Tensor] = []
    attention = model.model.language_model.layers[args.retrieval_layer].self_attn
    hook = attention.register_forward_hook(lambda module, inputs, outputs: captured.append(outputs[1][:, 0, -3]))
    try:
        while state["step"] < args.steps:
            grid, lo, hi = STAGES[state["stage"]]
            pair = state["step"] % args.pair_every == args.pair_every - 1
            # question types that lag are drawn more often: weight 0.2 + the running error rate
            weights = {q: 0.2 + 1 - (sum(v) / len(v) if v else 0.0) for q, v in by_type.items()}
            n_groups = args.scenes_per_step // (2 if pair else 1)
            groups = [
                _scene_questions(rng, args.questions_per_scene, grid, lo, hi, weights, pair) for _ in range(n_groups)
            ]
            batch = _training_batch(processor, groups)
            labels = batch.pop("labels")
            pixels, image_grid = batch.pop("pixel_values"), batch.pop("image_grid_thw")
            visual = model.model.get_image_features(pixels, image_grid, return_dict=True).pooler_output
            # every row reads its group's image(s): the vision tower runs once per image
            per_image = [v for v in visual]
            per_row = len(groups[0][0].images)
            shared = tuple(
                per_image[gi * per_row + k] for gi, g in enumerate(groups) for _ in g for k in range(per_row)
            )
            row_grid = image_grid.view(len(groups), per_row, 3).repeat_interleave(len(groups[0]), 0).flatten(0, 1)
            captured.clear()
            output = model(
                **batch,
                labels=labels,
                image_grid_thw=row_grid,
                mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=shared)},
                output_hidden_states=True,
            )
            loss = output.loss
            rows = [q for g in groups for q in g]
            if args.aux_weight > 0:
                hidden = output.hidden_states[args.aux_layer]
                aux = _aux_loss(heads, torch.stack(per_image), hidden, batch["input_ids"], image_token_id, groups)
                loss = loss + args.aux_weight * aux
            if args.retrieval_weight > 0:
                states = output.hidden_states[args.retrieval_layer][:, -3]
                hops = question_loss(heads["question"], states, rows) + retrieval_loss(
                    captured[0], batch["input_ids"], rows, image_token_id, vision_start_id
                )
                loss = loss + args.retrieval_weight * hops
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            hits = answer_accuracy(output.logits.detach(), labels).tolist()
            for sample, ok in zip(rows, hits, strict=True):
                by_type[sample.qtype].append(ok)
            if not pair:
                recent.append(sum(hits) / len(hits))
            state["step"] += 1
            bar.update(1)
            running = sum(recent) / max(1, len(recent))
            bar.set_postfix(stage=state["stage"], loss=f"{output.loss.item():.3f}", acc=f"{running:.3f}")
            in_stage = state["step"] - state["stage_start"]
            record = {"step": state["step"], "stage": state["stage"], "train_acc": running}
            final_stage = state["stage"] == len(STAGES) - 1
            if (
                not final_stage
                and in_stage >= args.stage_min
                and (running >= args.advance_at or in_stage >= _budget(state["stage"], args))
            ):
                state["stage"], state["stage_start"] = state["stage"] + 1, state["step"]
                recent.clear()
            if state["step"] % args.eval_every == 0 or state["step"] == args.steps:
                record["train_by_type"] = {q: round(sum(v) / len(v), 3) for q, v in by_type.items() if v}
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
        hook.remove()
        if main_thread:
            signal.signal(signal.SIGINT, previous_handler)
    bar.close()
    return _write_final(model, processor, out / "final")


def _write_final(model, processor, final: Path) -> Path:
    """The stock checkpoint, the processor, and the organism's own ``answer_start_ids`` (its generation prompt
    ``<|im_start|> assistant``: a turn header of 2 tokens) in ``hf_tokcomp.json``."""
    model.save_pretrained(final)
    processor.save_pretrained(final)
    header = processor.tokenizer.convert_tokens_to_ids(["<|im_start|>", "assistant"])
    (final / "hf_tokcomp.json").write_text(json.dumps({"answer_start_ids": header}))
    return final


def export_checkpoint(out: str | os.PathLike) -> Path:
    """Write ``OUT/final`` (model + processor) from the run's last checkpoint, before the run has ended (a run
    cut short by the time available; the learning rate then has not decayed)."""
    ckpt = torch.load(Path(out) / "checkpoint.pt", weights_only=False)
    args = OrganismTrainArguments(**ckpt["state"]["args"])
    model = Qwen2VLForConditionalGeneration(organism_config(args.hidden_size, args.num_layers))
    model.load_state_dict(ckpt["model"])
    return _write_final(model, organism_processor(), Path(out) / "final")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_tokcomp.organism.train", description=__doc__.split("\n")[0])
    parser.add_argument("--export", action="store_true", help="only write OUT/final from OUT's last checkpoint")
    for name, default in asdict(OrganismTrainArguments(out="")).items():
        flag = "--" + name.replace("_", "-")
        if name == "out":
            parser.add_argument(flag, required=True, help="run directory (checkpoint, log, final model)")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"default: {default}")
    given = vars(parser.parse_args(argv))
    if given.pop("export"):
        print(f"final model (from the last checkpoint): {export_checkpoint(given['out'])}")
        return
    args = OrganismTrainArguments(**{k.replace("-", "_"): v for k, v in given.items()})
    print(f"final model: {train_organism(args)}")


if __name__ == "__main__":
    main()
