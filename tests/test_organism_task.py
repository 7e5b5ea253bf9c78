"""The organism's task generator (v2) against a naive re-derivation from the scene and the pixels."""

import random

import numpy as np
import pytest

from hf_tokcomp.organism.aux_targets import relation_targets
from hf_tokcomp.organism.task import (
    BACKGROUND,
    COLOURS,
    GRID,
    NUMBERS,
    QUESTION_TYPES,
    SHAPES,
    make_scene,
    make_split,
    vocabulary,
)
from hf_tokcomp.processor import word_level_qwen_processor

SAMPLES = make_split("validation", 120, seed=0)


def test_splits_are_reproducible_and_distinct():
    again = make_split("validation", 120, seed=0)
    assert [(s.question, s.answer, s.evidence) for s in SAMPLES] == [(s.question, s.answer, s.evidence) for s in again]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(SAMPLES, again, strict=True))
    test = make_split("test", 120, seed=0)
    assert [s.question for s in test] != [s.question for s in SAMPLES]


def test_both_prompt_orders_for_every_type_and_many_objects():
    for qtype in QUESTION_TYPES:
        orders = {s.question_first for s in SAMPLES if s.qtype == qtype}
        assert orders == {True, False}, qtype
    sizes = [len(scene) for s in SAMPLES for scene in s.scenes]
    assert min(sizes) >= 10 and max(sizes) <= 24
    assert sum(n > 0.11 * GRID * GRID for n in sizes) / len(sizes) > 0.5  # most do not fit in 11% of 144 tokens
    assert all(s.image.size == (28 * GRID, 28 * GRID) for s in SAMPLES)


def test_each_object_is_drawn_inside_its_own_cell():
    for sample in SAMPLES[:20]:
        for image, objects in zip(sample.images, sample.scenes, strict=True):
            pixels = np.asarray(image).astype(int)
            for obj in objects:
                cell = pixels[obj.row * 28 : obj.row * 28 + 28, obj.col * 28 : obj.col * 28 + 28]
                assert (np.abs(cell - np.array(COLOURS[obj.colour])).sum(-1) == 0).sum() > 40
            occupied = {o.token for o in objects}
            for token in set(range(GRID * GRID)) - occupied:  # every other cell is plain background
                r, c = divmod(token, GRID)
                assert (pixels[r * 28 : r * 28 + 28, c * 28 : c * 28 + 28] == np.array(BACKGROUND)).all()


def _nearest(objs, anchor, relation):
    if relation == "left_of":
        found = [o for o in objs if o.row == anchor.row and o.col < anchor.col]
        return max(found, key=lambda o: o.col)
    return min((o for o in objs if o.col == anchor.col and o.row > anchor.row), key=lambda o: o.row)


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_answers_and_evidence_follow_from_the_scene(qtype):
    of_type = [s for s in SAMPLES if s.qtype == qtype]
    assert len(of_type) >= 10
    for s in of_type:
        objs, words = s.objects, s.question.split()
        by_name = {(o.colour, o.shape): o for o in objs}
        if qtype == "shape":
            (obj,) = [o for o in objs if o.colour == words[4]]
            assert (s.answer, s.evidence) == (obj.shape, [obj.token])
        elif qtype == "exists":
            present = (words[3], words[4]) in by_name
            assert s.answer == ("yes" if present else "no")
            near = sorted(o.token for o in objs if o.colour == words[3] or o.shape == words[4])
            assert s.evidence == ([by_name[(words[3], words[4])].token] if present else near)
        elif qtype in ("left_of", "below"):
            anchor = by_name[(words[-3], words[-2])]
            target = _nearest(objs, anchor, qtype)
            answer = target.colour if qtype == "left_of" else target.shape
            assert (s.answer, s.evidence) == (answer, [target.token, anchor.token])  # the answer's token first
        elif qtype == "count":
            matching = [o for o in objs if words[2] in (o.colour, o.shape)]
            assert (s.answer, s.evidence) == (NUMBERS[len(matching)], sorted(o.token for o in matching))
        else:
            pair = (words[4], words[5])
            has = [pair in {(o.colour, o.shape) for o in scene} for scene in s.scenes]
            assert has.count(True) == 1 and s.answer == ("first", "second")[has.index(True)]
            (obj,) = [o for o in s.scenes[has.index(True)] if (o.colour, o.shape) == pair]
            assert s.evidence == [has.index(True) * GRID * GRID + obj.token]


def test_hard_no_cases_exist():
    """Some "no" answers name a colour and a shape that are both in the image, just not together."""
    hard = 0
    for s in SAMPLES:
        if s.qtype == "exists" and s.answer == "no":
            words = s.question.split()
            hard += any(o.colour == words[3] for o in s.objects) and any(o.shape == words[4] for o in s.objects)
    assert hard >= 2


def test_auxiliary_targets_are_causal_and_right():
    """Every auxiliary target depends only on objects at EARLIER tokens (what a causal LLM's token sees)."""
    rng = random.Random(3)
    for _ in range(20):
        objects = make_scene(rng, 12)
        targets = relation_targets([objects], GRID)
        for obj in objects:
            earlier = [o for o in objects if o.token <= obj.token]
            left = [o for o in objects if o.row == obj.row and o.col < obj.col]
            want_left = 0 if not left else 1 + list(COLOURS).index(max(left, key=lambda o: o.col).colour)
            assert targets["left_colour"][0, obj.token] == want_left
            above = [o for o in objects if o.col == obj.col and o.row < obj.row]
            if above:
                top = max(above, key=lambda o: o.row)
                want = 1 + SHAPES.index(top.shape) * len(COLOURS) + list(COLOURS).index(top.colour)
                assert targets["above_cell"][0, obj.token] == want
            assert targets["colour_count"][0, obj.token] == sum(o.colour == obj.colour for o in earlier)
            assert targets["shape_count"][0, obj.token] == sum(o.shape == obj.shape for o in earlier)


def test_vocabulary_tokenizes_every_question_and_answer():
    tokenizer = word_level_qwen_processor(vocabulary()).tokenizer
    unknown = tokenizer.convert_tokens_to_ids("<pad>")
    for s in SAMPLES:
        ids = tokenizer(f"{s.question} {s.answer}")["input_ids"]
        assert unknown not in ids
