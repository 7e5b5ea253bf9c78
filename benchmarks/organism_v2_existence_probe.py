"""Can organism v2's LLM learn the existence question at all? A probe with the vision tower taken out.

Existence ("is there a red circle ?", 1-2 objects on a 4 x 4 grid, the question after or before the image) on
the organism's ``Qwen2VLForConditionalGeneration`` (4 layers, width 128). With ``--features oracle`` the vision
tower is replaced by a learnable embedding per cell class (empty, or one of the 32 shape x colour pairs), so
perception is perfect and only the LLM has to learn. ``--init`` chooses the LLM's linear-weight init: ``stock``
(transformers' normal(0, 0.02)) or ``fan-in`` (normal(0, 1 / sqrt(fan_in))). Prints the running training
accuracy of the yes / no answer every 50 steps (each step: 64 fresh questions).

Measured (2026-12-01, 2-core CPU, seed 0; benchmarks/results/organism_v2_attempts.md):

    python benchmarks/organism_v2_existence_probe.py --features oracle --init stock   # 0.51 at step 300
    python benchmarks/organism_v2_existence_probe.py --features oracle --init fan-in  # 0.76 at step 300
"""

from __future__ import annotations

import argparse
import random

import torch
from transformers import Qwen2VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf_tokcomp.organism.aux_targets import cell_classes
from hf_tokcomp.organism.model import encode_samples, organism_config, organism_processor
from hf_tokcomp.organism.task import Sample, ask, draw, make_scene
from hf_tokcomp.organism.validation import answer_accuracy

GRID = 4


def existence_questions(rng: random.Random, n: int, question_first: bool = False) -> list[Sample]:
    """``n`` existence questions, each about a fresh 4 x 4 scene of 1-2 objects."""
    samples = []
    for _ in range(n):
        scene = make_scene(rng, rng.randint(1, 2), GRID)
        question, answer, evidence = ask([scene], "exists", rng)
        samples.append(Sample([draw(scene, rng, GRID)], [scene], question, answer, "exists", evidence, question_first))
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", choices=("oracle", "vision"), default="oracle", help="default: oracle")
    parser.add_argument("--init", choices=("stock", "fan-in"), default="stock", help="default: stock")
    parser.add_argument("--order", choices=("after", "before"), default="after", help="question after / before")
    parser.add_argument("--steps", type=int, default=300, help="default: 300")
    parser.add_argument("--lr", type=float, default=1.5e-3, help="default: 1.5e-3")
    parser.add_argument("--oracle-std", type=float, default=0.02, help="init std of the oracle table (0.02)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    torch.manual_seed(0)
    rng = random.Random(0)
    processor = organism_processor()
    model = Qwen2VLForConditionalGeneration(organism_config(128, 4))
    if args.init == "fan-in":
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name and "lm_head" not in name:
                torch.nn.init.normal_(param, std=param.shape[1] ** -0.5)
    table = torch.nn.Embedding(33, 128)
    torch.nn.init.normal_(table.weight, std=args.oracle_std)
    current: dict[str, list] = {}
    if args.features == "oracle":

        def oracle(pixel_values, image_grid_thw, **kwargs):
            return BaseModelOutputWithPooling(pooler_output=tuple(table(cell_classes(current["scenes"], GRID))))

        model.model.get_image_features = oracle
    params = list(model.parameters()) + list(table.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    hits: list[float] = []
    for step in range(args.steps):
        samples = existence_questions(rng, 64, args.order == "before")
        current["scenes"] = [s.scenes[0] for s in samples]
        batch = encode_samples(processor, samples, with_answers=True)
        labels = batch.pop("labels")
        output = model(**batch, labels=labels)
        optimizer.zero_grad()
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        hits.append(answer_accuracy(output.logits.detach(), labels).float().mean().item())
        if (step + 1) % 50 == 0:
            print(
                f"step {step + 1}: loss {output.loss.item():.3f}, accuracy (last 50 steps) {sum(hits[-50:]) / 50:.3f}"
            )


if __name__ == "__main__":
    main()
