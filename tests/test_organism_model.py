"""The organism's batches and training script (tiny settings; the shipped weights are tested separately)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_tokcomp.organism.model import encode_samples, organism_processor
from hf_tokcomp.organism.task import make_split
from hf_tokcomp.organism.train import OrganismTrainArguments, train_organism


def test_training_batches_hold_the_processors_ids():
    processor = organism_processor()
    samples = make_split("train", 6)
    full = encode_samples(processor, samples, with_answers=True)
    fast = encode_samples(processor, samples, with_answers=True, tokens_only=True)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "labels"):
        assert torch.equal(full[key], fast[key]), key
    words = processor.tokenizer.convert_ids_to_tokens(full["input_ids"][0].tolist())
    assert "<pad>" not in words[words.index("<|im_start|>") :], "every prompt word must be in the vocabulary"
    answers = processor.tokenizer.batch_decode(full["labels"][:, -2:-1])
    assert answers == [s.answer for s in samples]


def _args(out, steps):
    return OrganismTrainArguments(
        out=str(out),
        steps=steps,
        scenes_per_step=2,
        questions_per_scene=2,
        hidden_size=64,
        eval_every=2,
        val_samples=5,
        warmup=2,
    )


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    straight = train_organism(_args(tmp_path / "a", 4), progress=False)
    train_organism(_args(tmp_path / "b", 2), progress=False)
    resumed = train_organism(_args(tmp_path / "b", 4), progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and set(log[0]["val"]) >= {"all", "colour"}


def test_resuming_with_other_settings_is_refused(tmp_path):
    train_organism(_args(tmp_path, 2), progress=False)
    other = _args(tmp_path, 4)
    other.lr = 1e-2
    with pytest.raises(ValueError, match="other settings"):
        train_organism(other, progress=False)
