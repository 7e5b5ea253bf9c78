"""Which training signal lets the organism's LLM learn yes / no questions? Existence alone, with the vision tower.

Existence ("is there a red circle ?", 1-2 objects on a 4 x 4 grid, the question after the image, 64 fresh
questions per step) on the organism as ``hf_tokcomp.organism.train`` builds it (fan-in LLM init, eager text
attention): first ``--vision-warmup`` steps of the vision tower alone on each cell's content, then the visual
tokens scaled to the text embeddings' RMS, then the LLM trained on the answer with, optionally, the two
retrieval losses of :mod:`hf_tokcomp.organism.retrieval` (``--hop1``: the question head at the answer position;
``--hop2``: one head of layer 2 pointed at the named object, or at ``<|vision_start|>`` for "no"). Prints the
running training accuracy every 50 steps.

Measured with this probe's first version (2026-12-02, 2-core CPU, seed 0; pointer and question head at layer 1,
the visual tokens rescaled per batch; accuracy over steps 251-300, benchmarks/results/organism_v2_attempts.md):
answer loss only 0.50, ``--hop1 0.5`` 0.51, ``--hop2 0.5`` 0.58, both 0.89. This version (layer 2 and the
fixed scale, as the shipped recipe), 2026-12-02, 1 thread:

    python benchmarks/organism_retrieval_probe.py --hop1 0.5 --hop2 0.5  # both hops: 0.87 (0.59 at step 100)
    python benchmarks/organism_retrieval_probe.py                        # answer loss only: not yet run
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F
from organism_v2_existence_probe import existence_questions  # the sibling script (run from benchmarks/ or the root)
from tqdm.auto import tqdm

from hf_tokcomp.organism.aux_targets import cell_classes
from hf_tokcomp.organism.model import encode_samples, organism_processor
from hf_tokcomp.organism.retrieval import question_loss, retrieval_loss
from hf_tokcomp.organism.task import draw, make_scene
from hf_tokcomp.organism.train import OrganismTrainArguments, _match_text_scale, _new_model
from hf_tokcomp.organism.validation import answer_accuracy

GRID, LAYER = 4, 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hop1", type=float, default=0.0, help="weight of the question head's loss (default: 0)")
    parser.add_argument("--hop2", type=float, default=0.0, help="weight of the attention-pointer loss (default: 0)")
    parser.add_argument("--steps", type=int, default=300, help="LLM steps (default: 300)")
    parser.add_argument("--vision-warmup", type=int, default=400, help="vision-only steps first (default: 400)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.vision_warmup < 0:
        parser.error(f"need --steps >= 1 and --vision-warmup >= 0, got {args.steps}, {args.vision_warmup}")
    torch.manual_seed(0)
    rng = random.Random(0)
    processor = organism_processor()
    model, heads = _new_model(OrganismTrainArguments(out=""))
    optimizer = torch.optim.AdamW([*model.model.visual.parameters(), *heads["cell"].parameters()], lr=1.5e-3)
    for _ in tqdm(range(args.vision_warmup), desc="vision warm-up"):
        scenes = [make_scene(rng, rng.randint(1, 2), GRID) for _ in range(16)]
        images = processor.image_processor(images=[draw(s, rng, GRID) for s in scenes], return_tensors="pt")
        visual = model.model.get_image_features(images["pixel_values"], images["image_grid_thw"], return_dict=True)
        logits = heads["cell"](torch.stack(visual.pooler_output)).flatten(0, 1)
        loss = F.cross_entropy(logits, cell_classes(scenes, GRID).flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _match_text_scale(model, heads, processor, rng)
    params = [*model.parameters(), *heads["question"].parameters()]
    optimizer = torch.optim.AdamW(params, lr=1.5e-3, weight_decay=0.01)
    captured: list[torch.Tensor] = []
    layer = model.model.language_model.layers[LAYER].self_attn
    layer.register_forward_hook(lambda module, inputs, outputs: captured.append(outputs[1][:, 0, -3]))
    start_id = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    hits: list[float] = []
    for step in range(args.steps):
        samples = existence_questions(rng, 64)
        batch = encode_samples(processor, samples, with_answers=True)
        labels = batch.pop("labels")
        captured.clear()
        output = model(**batch, labels=labels, output_hidden_states=True)
        loss = output.loss
        if args.hop1:
            loss = loss + args.hop1 * question_loss(heads["question"], output.hidden_states[LAYER][:, -3], samples)
        if args.hop2:
            hop2 = retrieval_loss(captured[0], batch["input_ids"], samples, processor.image_token_id, start_id)
            loss = loss + args.hop2 * hop2
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        hits.append(answer_accuracy(output.logits.detach(), labels).float().mean().item())
        if (step + 1) % 50 == 0:
            print(
                f"step {step + 1}: answer loss {output.loss.item():.3f}, accuracy (last 50) {sum(hits[-50:]) / 50:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
