"""The organism's task generator against a naive re-derivation from the scene and the pixels."""

import numpy as np
import pytest

from hf_tokcomp.organism.task import BACKGROUND, COLOURS, NUMBERS, QUESTION_TYPES, make_split, vocabulary
from hf_tokcomp.processor import word_level_qwen_processor

SAMPLES = make_split("validation", 60, seed=0)


def test_splits_are_reproducible_and_distinct():
    again = make_split("validation", 60, seed=0)
    assert [(s.question, s.answer, s.evidence) for s in SAMPLES] == [(s.question, s.answer, s.evidence) for s in again]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(SAMPLES, again, strict=True))
    test = make_split("test", 60, seed=0)
    assert [s.question for s in test] != [s.question for s in SAMPLES]


def test_each_object_is_drawn_inside_its_own_cell():
    for sample in SAMPLES[:20]:
        pixels = np.asarray(sample.image).astype(int)
        for obj in sample.objects:
            cell = pixels[obj.row * 28 : obj.row * 28 + 28, obj.col * 28 : obj.col * 28 + 28]
            assert (np.abs(cell - np.array(COLOURS[obj.colour])).sum(-1) == 0).sum() > 50
        occupied = {o.token for o in sample.objects}
        for token in set(range(64)) - occupied:  # every other cell is plain background: no object spills over
            r, c = divmod(token, 8)
            assert (pixels[r * 28 : r * 28 + 28, c * 28 : c * 28 + 28] == np.array(BACKGROUND)).all()


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_answers_and_evidence_follow_from_the_scene(qtype):
    of_type = [s for s in SAMPLES if s.qtype == qtype]
    assert len(of_type) >= 5
    for s in of_type:
        objs, words = s.objects, s.question.split()
        by_name = {(o.colour, o.shape): o for o in objs}
        if qtype == "colour":
            (obj,) = [o for o in objs if o.shape == words[4]]
            assert (s.answer, s.evidence) == (obj.colour, [obj.token])
        elif qtype == "exists":
            present = (words[3], words[4]) in by_name
            assert s.answer == ("yes" if present else "no")
            assert s.evidence == ([by_name[(words[3], words[4])].token] if present else sorted(o.token for o in objs))
        elif qtype == "left_of":
            anchor = by_name[(words[8], words[9])]
            left = [o for o in objs if o.row == anchor.row and o.col < anchor.col]
            target = max(left, key=lambda o: o.col)
            assert (s.answer, s.evidence) == (target.colour, sorted([target.token, anchor.token]))
        elif qtype == "below":
            anchor = by_name[(words[5], words[6])]
            target = min((o for o in objs if o.col == anchor.col and o.row > anchor.row), key=lambda o: o.row)
            assert (s.answer, s.evidence) == (target.shape, sorted([target.token, anchor.token]))
        else:
            matching = [o for o in objs if o.colour == words[2]]
            assert (s.answer, s.evidence) == (NUMBERS[len(matching)], sorted(o.token for o in matching))


def test_vocabulary_tokenizes_every_question_and_answer():
    tokenizer = word_level_qwen_processor(vocabulary()).tokenizer
    unknown = tokenizer.convert_tokens_to_ids("<pad>")
    for s in SAMPLES:
        ids = tokenizer(f"{s.question} {s.answer}")["input_ids"]
        assert unknown not in ids
