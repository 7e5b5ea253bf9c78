"""The organism's training-only retrieval targets, re-derived from the scenes (never from the code's own rules)."""

import math
import random

import pytest
import torch

from hf_tokcomp.organism.aux_targets import relation_targets
from hf_tokcomp.organism.model import encode_samples, organism_processor
from hf_tokcomp.organism.retrieval import pointer, question_targets, retrieval_loss
from hf_tokcomp.organism.task import COLOURS, GRID, NUMBERS, SHAPES, make_split
from hf_tokcomp.organism.train import OrganismTrainArguments, _match_text_scale, _new_model

SAMPLES = make_split("validation", 360, seed=0)


def _named(question: str) -> tuple[str | None, str | None]:
    words = question.split()
    return next((w for w in words if w in COLOURS), None), next((w for w in words if w in SHAPES), None)


def _object_at(sample, index: int):
    image, token = divmod(index, GRID * GRID)
    (obj,) = [o for o in sample.scenes[image] if o.token == token]
    return image, obj


@pytest.mark.parametrize("qtype", ["shape", "exists", "left_of", "below", "count", "which_image"])
def test_the_pointer_is_the_token_that_holds_what_the_answer_needs(qtype):
    samples = [s for s in SAMPLES if s.qtype == qtype]
    assert len(samples) >= 50
    for s in samples:
        colour, shape = _named(s.question)
        k = pointer(s)
        if (qtype, s.answer) in (("exists", "no"), ("count", "zero")):
            assert k is None, s.question
            continue
        image, obj = _object_at(s, k)
        targets = relation_targets([s.scenes[image]], GRID)
        if qtype in ("exists", "which_image"):
            assert (obj.colour, obj.shape) == (colour, shape)
            assert image == (0 if s.answer in ("yes", "first") else 1)
        elif qtype == "shape":
            assert obj.colour == colour and obj.shape == s.answer
        elif qtype == "left_of":  # the anchor, which knows its left neighbour's colour
            assert (obj.colour, obj.shape) == (colour, shape)
            assert targets["left_colour"][0, obj.token] == 1 + list(COLOURS).index(s.answer)
        elif qtype == "below":  # the answer's object, which knows the object above it: the anchor
            assert obj.shape == s.answer
            anchor = 1 + SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour)
            assert targets["above_cell"][0, obj.token] == anchor
        else:  # count: the last matching object in raster order carries the running count
            matches = [o for o in s.objects if o.colour == colour or o.shape == shape]
            assert obj == max(matches, key=lambda o: o.token)
            name = "colour_count" if colour else "shape_count"
            assert NUMBERS[int(targets[name][0, obj.token])] == s.answer


def test_question_targets_name_the_question_words():
    colours, shapes = question_targets([s for s in SAMPLES[:60]])
    for s, c, h in zip(SAMPLES[:60], colours.tolist(), shapes.tolist(), strict=True):
        colour, shape = _named(s.question)
        assert c == (0 if colour is None else 1 + list(COLOURS).index(colour))
        assert h == (0 if shape is None else 1 + SHAPES.index(shape))


def test_retrieval_loss_reads_the_pointer_or_the_first_vision_start():
    processor = organism_processor()
    rng = random.Random(0)
    samples = [next(s for s in SAMPLES if s.qtype == "exists" and s.answer == a) for a in ("yes", "no")]
    samples.append(next(s for s in SAMPLES if s.qtype == "which_image" and s.answer == "second"))
    ids = encode_samples(processor, samples, with_answers=True, tokens_only=True)["input_ids"]
    image_id = processor.image_token_id
    start_id = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    want = []
    for row, s in enumerate(samples):  # the expected positions, found by walking the row
        visual = [i for i, t in enumerate(ids[row].tolist()) if t == image_id]
        starts = [i for i, t in enumerate(ids[row].tolist()) if t == start_id]
        want.append(starts[0] if pointer(s) is None else visual[pointer(s)])
    attention = torch.rand(len(samples), ids.shape[1], generator=torch.Generator().manual_seed(rng.randint(0, 99)))
    attention = attention / attention.sum(-1, keepdim=True)
    expected = -sum(math.log(attention[r, p].item()) for r, p in enumerate(want)) / len(want)
    assert retrieval_loss(attention, ids, samples, image_id, start_id).item() == pytest.approx(expected, rel=1e-5)


def test_visual_tokens_are_scaled_to_the_text_embeddings_and_the_cell_head_still_agrees():
    model, heads = _new_model(OrganismTrainArguments(out="", hidden_size=64))
    processor = organism_processor()
    image = make_split("test", 1)[0].image
    pixels = processor.image_processor(images=[image], return_tensors="pt")

    def visual():
        with torch.no_grad():
            out = model.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"], return_dict=True)
        return out.pooler_output[0]

    before = visual()
    logits = heads["cell"](before)
    factor = _match_text_scale(model, heads, processor, random.Random(0))
    after = visual()
    torch.testing.assert_close(after, before * factor, rtol=1e-4, atol=1e-6)
    text = model.model.language_model.embed_tokens.weight.pow(2).mean().sqrt()
    assert after.pow(2).mean().sqrt() == pytest.approx(text.item(), rel=0.3)
    torch.testing.assert_close(heads["cell"](after), logits, rtol=1e-4, atol=1e-4)
