"""The organism's batches and training script (tiny settings; the shipped weights are tested separately)."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

import hf_tokcomp.organism.train as train_module
from hf_tokcomp.organism.model import encode_samples, organism_processor
from hf_tokcomp.organism.task import make_split
from hf_tokcomp.organism.train import OrganismTrainArguments, train_organism


def test_training_batches_hold_the_processors_ids():
    processor = organism_processor()
    samples = make_split("train", 12)
    full = encode_samples(processor, samples, with_answers=True)
    fast = encode_samples(processor, samples, with_answers=True, tokens_only=True)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "labels"):
        assert torch.equal(full[key], fast[key]), key
    words = processor.tokenizer.convert_ids_to_tokens(full["input_ids"][0].tolist())
    assert "<pad>" not in words[words.index("<|im_start|>") :], "every prompt word must be in the vocabulary"
    answers = processor.tokenizer.batch_decode(full["labels"][:, -2:-1])
    assert answers == [s.answer for s in samples]
    images = [len(s.images) for s in samples]  # two-image samples and both prompt orders are in the batch
    assert full["image_grid_thw"].shape[0] == sum(images) and 2 in images
    assert {s.question_first for s in samples} == {True, False}


def _args(out, steps):
    return OrganismTrainArguments(
        out=str(out),
        steps=steps,
        scenes_per_step=2,
        questions_per_scene=2,
        hidden_size=64,
        eval_every=2,
        val_samples=12,
        warmup=2,
        stage_min=1,
        stage_budget=1,  # stage budgets 3, 3, 2, 2, 1, 1 steps (12 / grid each)
        vision_warmup=2,
    )


def test_ctrl_c_then_resume_gives_the_same_weights_as_one_run(tmp_path, monkeypatch):
    straight = train_organism(_args(tmp_path / "a", 7), progress=False)
    calls = []

    def batch_then_ctrl_c(processor, scenes):
        calls.append(1)
        if len(calls) == 3:  # a real SIGINT in the middle of step 3 (not at a checkpoint step)
            os.kill(os.getpid(), signal.SIGINT)
        return real_batch(processor, scenes)

    real_batch = train_module._training_batch
    monkeypatch.setattr(train_module, "_training_batch", batch_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train_organism(_args(tmp_path / "b", 7), progress=False)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["state"]["step"] == 3
    monkeypatch.setattr(train_module, "_training_batch", real_batch)
    resumed = train_organism(_args(tmp_path / "b", 7), progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6, 7] and [r["stage"] for r in log] == [0, 1, 1, 2]
    assert set(log[0]["val"]) >= {"all", "shape", "which_image", "question_before", "question_after"}


def test_resuming_with_other_settings_is_refused(tmp_path):
    train_organism(_args(tmp_path, 2), progress=False)
    other = _args(tmp_path, 2)
    other.lr = 1e-2
    with pytest.raises(ValueError, match="other settings"):
        train_organism(other, progress=False)
