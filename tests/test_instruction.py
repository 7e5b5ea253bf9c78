"""Which tokens are a visual segment's instruction, per prompt layout, against hand-written expectations.

The sequences are written out token by token in a ChatML-like template over small ids (turn start ``S``, role
words, ``NL``, end of turn ``E``, vision start / end ``VS`` / ``VE``); the expected rows are the question words
of the segment's own user turn, listed by hand.
"""

import pytest
import torch

import hf_tokcomp
from hf_tokcomp.models.vila.config import VilaConfig
from hf_tokcomp.runtime.features import answer_mask
from hf_tokcomp.runtime.instruction import segment_instruction_rows, turn_layout
from hf_tokcomp.testing.tiny_llava import tiny_llava_onevision_config
from hf_tokcomp.testing.tiny_qwen import VOCAB, tiny_qwen_config
from hf_tokcomp.testing.tiny_vila import write_tiny_vila_checkpoint

S, E, NL, USER, ASSISTANT, SYSTEM = 3, VOCAB["eos"], 41, 42, 40, 43
VS, VE, IMG = VOCAB["vision_start"], VOCAB["vision_end"], VOCAB["image"]
HEADER = [S, ASSISTANT, NL]  # the generation prompt = the assistant turn's header = answer_start_ids


def qwen_config(family: str):
    config = {
        "qwen2_vl": hf_tokcomp.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": hf_tokcomp.Qwen2_5_VLForConditionalGeneration,
    }[family].config_class(**tiny_qwen_config(family).to_dict())
    config.answer_start_ids = HEADER
    return config


def llava_config():
    config = hf_tokcomp.LlavaOnevisionForConditionalGeneration.config_class(**tiny_llava_onevision_config().to_dict())
    config.answer_start_ids = HEADER
    return config


def image(wrapped: bool = True) -> list:
    return [VS, IMG, IMG, IMG, IMG, VE] if wrapped else [IMG, IMG, IMG, IMG]


def rows_of(config, ids: list[int], labels: list[int] | None = None, header: bool = False) -> list[list[int]]:
    """Per visual segment (placeholder runs), the instruction rows the runtime finds, as token VALUES."""
    ids_t = torch.tensor([ids])
    visual = ids_t == IMG
    prompt = torch.ones_like(ids_t)
    if labels is not None:
        prompt = prompt * ~answer_mask(ids_t, torch.tensor([labels]), config.answer_start_ids)
    starts = [i for i in range(len(ids)) if ids[i] == IMG and (i == 0 or ids[i - 1] != IMG)]
    ends = [i + 1 for i in range(len(ids)) if ids[i] == IMG and (i + 1 == len(ids) or ids[i + 1] != IMG)]
    rows = segment_instruction_rows(
        ids_t,
        visual,
        prompt,
        torch.zeros(len(starts), dtype=torch.long),
        torch.tensor(starts),
        torch.tensor(ends),
        turn_layout(config),
        header,
    )
    return [[ids[i] for i in r.nonzero().flatten().tolist()] for r in rows]


def user(*content) -> list[int]:
    return [S, USER, NL, *[t for part in content for t in part], E, NL]


LAYOUTS = {
    # question after the image: its words
    "question_after": (user(image(), [10, 11, 12]) + HEADER, None, [[10, 11, 12]]),
    # question before the image: the same words, though they precede it
    "question_before": (user([10, 11], image()) + HEADER, None, [[10, 11]]),
    # "compare <image1> and <image2> please": both images share their turn's words
    "two_images": (user([10], image(), [11], image(), [12]) + HEADER, None, [[10, 11, 12], [10, 11, 12]]),
    # system prompt + an earlier turn with an image + its answer + a new question: the image keeps ITS turn
    "system_and_earlier_turn": (
        [S, SYSTEM, NL, 20, 21, E, NL]
        + user(image(), [10])
        + [S, ASSISTANT, NL, 30, 31, E, NL]
        + user([12, 13])
        + HEADER,
        None,
        [[10]],
    ),
    # an image alone in its turn: every instruction token of the conversation (never the assistant's)
    "image_alone_in_its_turn": (
        user(image()) + [S, ASSISTANT, NL, 30, E, NL] + user([12, 13]) + HEADER,
        None,
        [[12, 13]],
    ),
    # a training sequence whose labels cover everything (TRL's collator): the answer never counts
    "labels_cover_the_whole_sequence": (
        user([10, 11], image(), [12]) + HEADER + [30, 31, E],
        "all",
        [[10, 11, 12]],
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava_onevision"])
def test_instruction_rows_per_layout(family, layout):
    ids, labels, expected = LAYOUTS[layout]
    config = llava_config() if family == "llava_onevision" else qwen_config(family)
    if family == "llava_onevision":  # no vision start / end ids in its config or its prompts
        ids = [t for t in ids if t not in (VS, VE)]
    assert rows_of(config, ids, None if labels is None else ids) == expected


def test_without_turn_markers_every_non_template_token_counts(tmp_path):
    """VILA (``answer_start_ids`` None): the prompt is one turn; its text before and after the image counts,
    padding and end-of-sequence ids do not, nor the answer when labels mark it."""
    config = VilaConfig.from_pretrained(write_tiny_vila_checkpoint(tmp_path))
    assert config.answer_start_ids is None
    eos, pad = config.get_text_config().eos_token_id, config.get_text_config().pad_token_id
    ids = [1, 10, 11, *image(False), 12, 13, eos]
    assert rows_of(config, ids) == [[1, 10, 11, 12, 13]]
    labels = [-100] * 7 + [12, 13, eos]  # the last two words are the answer
    assert rows_of(config, ids, labels) == [[1, 10, 11]]
    assert pad not in rows_of(config, [pad, pad, *ids])[0]


def test_the_generation_prompt_rows_are_added_when_asked():
    """``+gen``: the assistant header that ends the prompt (or precedes a training answer) joins every segment's
    rows; an assistant header of an earlier turn does not."""
    config = qwen_config("qwen2_vl")
    ids = user(image(), [10]) + [S, ASSISTANT, NL, 30, E, NL] + user([12]) + HEADER
    assert rows_of(config, ids, header=True) == [[10, S, ASSISTANT, NL]]
    train = user([10], image()) + HEADER + [30, E]
    assert rows_of(config, train, labels=train, header=True) == [[10, S, ASSISTANT, NL]]
