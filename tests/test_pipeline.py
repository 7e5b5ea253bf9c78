"""Label shards, compressor training and the `tokcomp` CLI on a tiny Qwen2-VL with a word-level processor."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import hf_tokcomp
from hf_tokcomp import TokenCompressor
from hf_tokcomp.cli import main as tokcomp
from hf_tokcomp.processor import load_processor, word_level_qwen_processor
from hf_tokcomp.testing.tiny_qwen import tiny_qwen_config
from hf_tokcomp.training.labels import LabelError, build_inputs, label_dataset, load_label_dir, read_records
from hf_tokcomp.training.train import (
    TrainArguments,
    evaluate_segments,
    load_label_dirs,
    relevance_target,
    train_compressor,
)

WORDS = ["what", "colour", "is", "the", "square", "circle", "?", "red", "blue", "green", "how", "many"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved model + processor directory, and a JSONL dataset of 7 images (sizes vary)."""
    root = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    model = hf_tokcomp.Qwen2VLForConditionalGeneration(tiny_qwen_config("qwen2_vl")).eval()
    model.generation_config.max_new_tokens = 4
    model.save_pretrained(root / "model")
    word_level_qwen_processor(WORDS).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(7):
        size = (8 * (2 + i % 3), 8 * (2 + (i + 1) % 3))
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        lines.append(json.dumps({"image": f"img{i}.png", "question": "what colour is the " + WORDS[4 + i % 2] + " ?"}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _load(workspace):
    model = hf_tokcomp.Qwen2VLForConditionalGeneration.from_pretrained(workspace / "model").eval()
    return model, load_processor(workspace / "model")


def _shards(path):
    manifest = json.loads((path / "manifest.json").read_text())
    return manifest, [load_file(str(path / s["file"])) for s in manifest["shards"]]


def test_shard_features_are_what_the_runtime_feeds_the_compressor(workspace, tmp_path):
    model, processor = _load(workspace)
    records = read_records(workspace / "data.jsonl")
    manifest = label_dataset(model, processor, records, tmp_path, shard_size=3, max_new_tokens=3, progress=False)
    assert manifest["labelled"] == 7 and len(manifest["shards"]) == 3

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, features):
            self.seen.append(features[0].clone())
            return features[:, 0]

    model.compressor, model.config.token_keep = Recorder(), 0.5
    for record in records:
        with torch.no_grad():
            model(**build_inputs(processor, record))
    _, shards = _shards(tmp_path)
    stored = [f.T for s in shards for f in torch.split(s["features"], s["lengths"].tolist())]
    assert len(stored) == len(model.compressor.seen) == 7
    for got, seen in zip(stored, model.compressor.seen, strict=True):
        torch.testing.assert_close(got, seen, rtol=0, atol=0)


def test_interrupted_label_run_resumes_to_the_same_shards(workspace, tmp_path, monkeypatch):
    model, processor = _load(workspace)
    records = read_records(workspace / "data.jsonl")
    label_dataset(model, processor, records, tmp_path / "whole", shard_size=2, max_new_tokens=3, progress=False)

    import hf_tokcomp.training.labels as data

    calls = {"n": 0}
    real = data.visual_relevance

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # in the middle of the second shard
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "visual_relevance", interrupting)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(model, processor, records, tmp_path / "resumed", shard_size=2, max_new_tokens=3, progress=False)
    assert json.loads((tmp_path / "resumed" / "manifest.json").read_text())["next_sample"] == 2
    monkeypatch.setattr(data, "visual_relevance", real)
    label_dataset(model, processor, records, tmp_path / "resumed", shard_size=2, max_new_tokens=3, progress=False)

    whole, whole_shards = _shards(tmp_path / "whole")
    resumed, resumed_shards = _shards(tmp_path / "resumed")
    assert whole == resumed
    for a, b in zip(whole_shards, resumed_shards, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_empty_answers_are_skipped_not_stored(workspace, tmp_path):
    model, processor = _load(workspace)
    records = list(read_records(workspace / "data.jsonl"))[:2]
    first = model.generate(**build_inputs(processor, records[0]), max_new_tokens=1, do_sample=False)[0, -1]
    model.generation_config.eos_token_id = int(first)  # the model now "answers" with end-of-sequence at once
    manifest = label_dataset(model, processor, records[:1], tmp_path, max_new_tokens=3, progress=False)
    assert (manifest["labelled"], manifest["skipped_empty_answer"]) == (0, 1)


def test_wrong_answers_are_skipped_and_counted(workspace, tmp_path):
    model, processor = _load(workspace)
    records = [dict(r) for r in read_records(workspace / "data.jsonl")][:3]
    first = model.generate(**build_inputs(processor, records[0]), max_new_tokens=3, do_sample=False)
    prompt_len = build_inputs(processor, records[0])["input_ids"].shape[1]
    records[0]["answer"] = processor.tokenizer.decode(first[0, prompt_len:], skip_special_tokens=True)
    records[1]["answer"] = "certainly not this"
    manifest = label_dataset(model, processor, records, tmp_path, max_new_tokens=3, progress=False)
    assert (manifest["labelled"], manifest["skipped_wrong"]) == (2, 1)


def _synthetic_labels(path, model_type="qwen2_vl", segments=240, seed=0):
    """Features: random positive attention. Relevance: where the two NEIGHBOURS are strong (not the token itself),
    so copying the features cannot score well, but a small convolution can."""
    gen = torch.Generator().manual_seed(seed)
    feats, targets, lengths = [], [], []
    for _ in range(segments):
        n = int(torch.randint(16, 48, (1,), generator=gen))
        f = torch.rand(n, generator=gen) ** 3
        r = torch.zeros(n)
        r[1:-1] = f[:-2] * f[2:]
        feats.append(f[:, None])
        targets.append(r)
        lengths.append(n)
    path.mkdir(parents=True)
    tensors = {
        "features": torch.cat(feats),
        "targets": torch.cat(targets),
        "lengths": torch.tensor(lengths),
        "sample_ids": torch.arange(segments),
        "kinds": torch.zeros(segments, dtype=torch.int8),
    }
    save_file(tensors, str(path / "shard-00000.safetensors"))
    manifest = {
        "format": 1,
        "model_type": model_type,
        "hidden_size": 64,
        "features": "v2:hybrid",
        "feature_channels": 1,
        "model_name_or_path": "synthetic",
        "shards": [{"file": "shard-00000.safetensors"}],
    }
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_training_lowers_kl_and_beats_random_recall(tmp_path):
    _synthetic_labels(tmp_path / "labels")
    args = TrainArguments(epochs=12, batch_size=32, learning_rate=3e-3, seed=0, compressor={"kernel_size": 3})
    _, segments = load_label_dirs([tmp_path / "labels"])
    val = [(s.features, relevance_target(s.target), s.target) for s in segments[:24]]
    torch.manual_seed(0)
    before = evaluate_segments(TokenCompressor(hf_tokcomp.TokenCompressorConfig(kernel_size=3)), val)
    result = train_compressor(tmp_path / "labels", tmp_path / "out", args, progress=False)
    after = result["history"][-1]
    assert after["kl"] < 0.7 * result["history"][0]["kl"] and after["kl"] < before["kl"]
    assert after["recall@25%"] > 0.6 and after["recall@50%"] > 0.75  # random: about 0.25 and 0.5
    loaded = TokenCompressor.from_pretrained(tmp_path / "out")
    assert (loaded.config.base_model_type, loaded.config.features) == ("qwen2_vl", "v2:hybrid")


def test_training_resumes_to_the_same_weights(tmp_path):
    _synthetic_labels(tmp_path / "labels", segments=60)
    args = dict(batch_size=16, learning_rate=3e-3, seed=1)
    train_compressor(tmp_path / "labels", tmp_path / "whole", TrainArguments(epochs=4, **args), progress=False)
    train_compressor(tmp_path / "labels", tmp_path / "resumed", TrainArguments(epochs=2, **args), progress=False)
    result = train_compressor(
        tmp_path / "labels", tmp_path / "resumed", TrainArguments(epochs=4, **args), progress=False
    )
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4]
    with pytest.raises(Exception, match="other settings"):
        train_compressor(
            tmp_path / "labels", tmp_path / "resumed", TrainArguments(epochs=5, **{**args, "seed": 9}), progress=False
        )
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_label_then_train_end_to_end(workspace, tmp_path, capsys):
    assert (
        tokcomp(
            [
                "label",
                "--model",
                str(workspace / "model"),
                "--data",
                str(workspace / "data.jsonl"),
                "--out",
                str(tmp_path / "labels"),
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["labelled"] == 7
    assert (
        tokcomp(
            [
                "train",
                "--labels",
                str(tmp_path / "labels"),
                "--out",
                str(tmp_path / "comp"),
                "--epochs",
                "2",
                "--val-fraction",
                "0.3",
            ]
        )
        == 0
    )
    model = hf_tokcomp.Qwen2VLForConditionalGeneration.from_pretrained(
        workspace / "model", compressor=tmp_path / "comp", token_keep=0.5
    )
    assert isinstance(model.compressor, TokenCompressor)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["label", "--model", "MODEL", "--data", "nowhere.jsonl", "--out", "OUT"], "no such file"),
        (["label", "--model", "MODEL", "--data", "EMPTY", "--out", "OUT"], "holds no samples"),
        (["train", "--labels", "nowhere", "--out", "OUT"], "has no manifest.json"),
        (["train", "--labels", "LABELS", "OTHER", "--out", "OUT"], "train one compressor per model"),
    ],
)
def test_cli_errors_are_one_clear_line(workspace, tmp_path, capsys, argv, message):
    (tmp_path / "empty.jsonl").write_text("\n")
    _synthetic_labels(tmp_path / "labels")
    _synthetic_labels(tmp_path / "other", model_type="llava_onevision")
    subst = {
        "MODEL": str(workspace / "model"),
        "EMPTY": str(tmp_path / "empty.jsonl"),
        "OUT": str(tmp_path / "o"),
        "LABELS": str(tmp_path / "labels"),
        "OTHER": str(tmp_path / "other"),
    }
    assert tokcomp([subst.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_crash_while_writing_leaves_the_last_shard_and_manifest_intact(workspace, tmp_path, monkeypatch):
    """Writes are atomic: a crash half-way through writing the second shard (a truncated file on disk) and then
    through writing the manifest leaves every file under its final name complete, and the run resumes to the
    same shards as an uninterrupted one."""
    import hf_tokcomp.training.labels as data

    model, processor = _load(workspace)
    records = read_records(workspace / "data.jsonl")
    label_dataset(model, processor, records, tmp_path / "whole", shard_size=2, max_new_tokens=3, progress=False)
    real_save = data.save_file

    def crash_on_second(tensors, path, *args, **kwargs):
        if "shard-00001" in str(path):
            with open(path, "wb") as handle:
                handle.write(b"\x00" * 10)  # a partial write, then the process dies
            raise KeyboardInterrupt
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(data, "save_file", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(model, processor, records, tmp_path / "run", shard_size=2, max_new_tokens=3, progress=False)
    monkeypatch.setattr(data, "save_file", real_save)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.safetensors"]
    assert not (tmp_path / "run" / "shard-00001.safetensors").exists()  # only a .tmp, never the final name
    load_label_dir(tmp_path / "run")  # what is there reads back

    real_write_text = Path.write_text

    def crash_on_manifest(self, text, *args, **kwargs):
        if self.name.startswith("manifest.json"):
            real_write_text(self, text[:5])
            raise KeyboardInterrupt
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(model, processor, records, tmp_path / "run", shard_size=2, max_new_tokens=3, progress=False)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text()) == manifest  # the old one, whole
    label_dataset(model, processor, records, tmp_path / "run", shard_size=2, max_new_tokens=3, progress=False)
    whole, whole_shards = _shards(tmp_path / "whole")
    resumed, resumed_shards = _shards(tmp_path / "run")
    assert whole == resumed
    for a, b in zip(whole_shards, resumed_shards, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_labelling_split_over_processes_merges_to_the_one_process_run(workspace, tmp_path, monkeypatch):
    """Three processes (run one after the other here, one interrupted and resumed) each label their shards;
    the merge gives byte-identical shard files and the same manifest as one process."""
    import hf_tokcomp.training.labels as data
    from hf_tokcomp.training.distributed import merge_ranks

    model, processor = _load(workspace)
    records = read_records(workspace / "data.jsonl")
    label_dataset(model, processor, records, tmp_path / "one", shard_size=2, max_new_tokens=3, progress=False)
    real, calls = data.visual_relevance, {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    for rank in range(3):
        if rank == 1:
            monkeypatch.setattr(data, "visual_relevance", interrupting)
            with pytest.raises(KeyboardInterrupt):
                label_dataset(model, processor, records, tmp_path / "many", 2, 3, progress=False, rank=1, world_size=3)
            monkeypatch.setattr(data, "visual_relevance", real)
        label_dataset(model, processor, records, tmp_path / "many", 2, 3, progress=False, rank=rank, world_size=3)
    merged = merge_ranks(tmp_path / "many", 3)
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert merged == one
    for shard in one["shards"]:
        assert (tmp_path / "one" / shard["file"]).read_bytes() == (tmp_path / "many" / shard["file"]).read_bytes()


def test_merge_refuses_missing_or_foreign_process_manifests(workspace, tmp_path):
    from hf_tokcomp.training.distributed import merge_ranks
    from hf_tokcomp.training.labels import LabelError

    model, processor = _load(workspace)
    records = read_records(workspace / "data.jsonl")
    label_dataset(model, processor, records, tmp_path, 2, 3, progress=False, rank=0, world_size=2)
    with pytest.raises(LabelError, match="process 1 of 2 did not finish"):
        merge_ranks(tmp_path, 2)


def test_two_processes_write_the_one_process_shards(workspace, tmp_path, launcher):
    """A real two-process run (gloo on this CPU), `python -m hf_tokcomp` under torchrun and `accelerate launch`."""
    import os
    import subprocess

    common = ["--model", str(workspace / "model"), "--data", str(workspace / "data.jsonl"), "--shard-size", "2"]
    common += ["--max-new-tokens", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([*launcher, "label", *common, "--out", str(tmp_path / "two")], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    from hf_tokcomp.training.labels import rank_manifest_name

    for rank in range(2):  # two processes really ran (one process alone would write the whole run)
        assert (tmp_path / "two" / rank_manifest_name(rank, 2)).is_file()
    assert tokcomp(["label", *common, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert json.loads((tmp_path / "two" / "manifest.json").read_text()) == one
    for shard in one["shards"]:
        assert (tmp_path / "one" / shard["file"]).read_bytes() == (tmp_path / "two" / shard["file"]).read_bytes()


# ---- the pipeline never fails quietly ---------------------------------------------------------------------------
def test_label_warns_when_most_answers_are_wrong(workspace, tmp_path, capsys):
    from hf_tokcomp.teachers.gae import greedy_answers

    model, processor = _load(workspace)
    records = read_records(workspace / "data.jsonl")
    lines = []
    for i, record in enumerate(records):  # the model's own answer for two records, a wrong one for five
        inputs = build_inputs(processor, record)
        own = processor.tokenizer.decode(greedy_answers(model, inputs, 3)[0], skip_special_tokens=True)
        row = {"image": str(workspace / f"img{i}.png"), "question": record["question"]}
        lines.append(json.dumps(row | {"answer": own if i < 2 else "nothing like it"}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["label", "--model", str(workspace / "model"), "--data", str(tmp_path / "data.jsonl")]
    assert tokcomp([*argv, "--out", str(tmp_path / "labels"), "--max-new-tokens", "3"]) == 0
    err = capsys.readouterr().err
    assert "warning: 5 of 7 answers were judged wrong" in err and "--max-new-tokens=3" in err


def test_a_missing_processor_names_the_option(workspace, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(workspace / "model" / name, bare / name)
    argv = ["label", "--model", str(bare), "--data", str(workspace / "data.jsonl"), "--out", str(tmp_path / "o")]
    assert tokcomp(argv) == 2
    err = capsys.readouterr().err
    assert "--processor" in err and "tokenizer_config.json" in err


def test_train_stops_early_and_keeps_the_best_weights(workspace, tmp_path, capsys):
    model, processor = _load(workspace)
    records = read_records(workspace / "data.jsonl")
    label_dataset(model, processor, records, tmp_path / "labels", shard_size=4, max_new_tokens=3, progress=False)
    argv = ["train", "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "comp"), "--epochs", "60"]
    assert tokcomp([*argv, "--patience", "2", "--lr", "0.05"]) == 0
    log = json.loads((tmp_path / "comp" / "train_log.json").read_text())
    kls = [m["kl"] for m in log["history"]]
    best = min(range(len(kls)), key=lambda i: kls[i])
    assert log["stopped_early"] and log["epochs_run"] == len(kls) < 60 and log["best_epoch"] == best + 1
    assert len(kls) - 1 - best == 2  # stopped two epochs after the best
    final = load_file(str(tmp_path / "comp" / "model.safetensors"))
    kept = load_file(str(tmp_path / "comp" / "best" / "model.safetensors"))
    assert all(torch.equal(final[k], kept[k]) for k in kept)
    assert "stopped after" in capsys.readouterr().err


def test_messages_and_llava_datasets_read_as_the_equivalent_jsonl(workspace, tmp_path):
    """A `messages`-format (TRL / chat template) and a LLaVA `conversations` dataset saved with `datasets` give
    the same records - question, answer, image pixels - as the plain JSONL."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from hf_tokcomp.training.formats import open_image

    plain = read_records(workspace / "data.jsonl")
    answers = [f"answer {i}" for i in range(len(plain))]
    images = [Image.open(r["image"]).convert("RGB") for r in plain]
    messages = datasets.Dataset.from_dict(
        {
            "messages": [
                [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["question"]}]},
                    {"role": "assistant", "content": [{"type": "text", "text": a}]},
                ]
                for r, a in zip(plain, answers, strict=True)
            ],
            "images": [[image] for image in images],
        }
    )
    llava = datasets.Dataset.from_dict(
        {
            "conversations": [
                [{"from": "human", "value": "<image>\n" + r["question"]}, {"from": "gpt", "value": a}]
                for r, a in zip(plain, answers, strict=True)
            ],
            "image": images,
        }
    )
    messages.save_to_disk(str(tmp_path / "messages"))
    llava.save_to_disk(str(tmp_path / "llava"))
    for name in ("messages", "llava"):
        got = read_records(tmp_path / name)
        assert len(got) == len(plain)
        for record, reference, answer in zip(got, plain, answers, strict=True):
            assert record["question"] == reference["question"] and record["answer"] == answer
            pixels = open_image(record["image"]).tobytes()
            assert pixels == Image.open(reference["image"]).convert("RGB").tobytes()


def test_image_urls_without_a_network_fail_clearly():
    from hf_tokcomp.training.formats import open_image

    with pytest.raises(ValueError, match="could not be fetched"):
        open_image("http://127.0.0.1:9/none.png")


def test_review_fixes_for_labelling(workspace, tmp_path):
    """Found by review: a dataset's fingerprint is stable across reads; processes without shards still report;
    a resume with another --shard-size is refused; an `images` column with a plain `question` keeps its image."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from hf_tokcomp.training.distributed import merge_ranks
    from hf_tokcomp.training.formats import normalise_record
    from hf_tokcomp.training.labels import LabelError, _fingerprint

    plain = read_records(workspace / "data.jsonl")
    images = [Image.open(r["image"]).convert("RGB") for r in plain]
    datasets.Dataset.from_dict({"question": [r["question"] for r in plain], "image": images}).save_to_disk(
        str(tmp_path / "ds")
    )
    assert _fingerprint(read_records(tmp_path / "ds")) == _fingerprint(read_records(tmp_path / "ds"))

    model, processor = _load(workspace)
    for rank in range(4):  # 7 records in 2 shards of 4: processes 2 and 3 have none
        label_dataset(model, processor, plain, tmp_path / "four", 4, 3, progress=False, rank=rank, world_size=4)
    assert merge_ranks(tmp_path / "four", 4)["labelled"] == 7

    label_dataset(model, processor, plain[:5], tmp_path / "sizes", 2, 3, progress=False)
    with pytest.raises(LabelError, match="shard_size"):
        label_dataset(model, processor, plain[:5], tmp_path / "sizes", 4, 3, progress=False)

    record = normalise_record({"question": "what ?", "images": ["a.png"]})
    assert record["image"] == "a.png" and "images" not in record


@pytest.mark.parametrize(
    ("features", "match"),
    [(None, "v1 \\(unversioned"), ("v3:hybrid", "'v3:hybrid', but this hf_tokcomp computes version 2")],
)
def test_labels_of_another_feature_version_are_refused_naming_both(tmp_path, features, match):
    _synthetic_labels(tmp_path / "labels")
    manifest = json.loads((tmp_path / "labels" / "manifest.json").read_text())
    manifest["features"] = features
    (tmp_path / "labels" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LabelError, match=match):
        train_compressor(tmp_path / "labels", tmp_path / "out", TrainArguments(epochs=1), progress=False)


def test_labels_of_two_feature_definitions_are_not_mixed(tmp_path):
    _synthetic_labels(tmp_path / "a")
    _synthetic_labels(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["features"] = "v2:noncausal"
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LabelError, match="features='v2:noncausal', the first for 'v2:hybrid'"):
        train_compressor([tmp_path / "a", tmp_path / "b"], tmp_path / "out", TrainArguments(epochs=1), progress=False)


def test_cli_label_limit_labels_the_first_samples_only(workspace, tmp_path, capsys):
    common = ["label", "--model", str(workspace / "model"), "--data", str(workspace / "data.jsonl")]
    common += ["--max-new-tokens", "3"]
    assert tokcomp([*common, "--out", str(tmp_path / "three"), "--limit", "3"]) == 0
    manifest = json.loads((tmp_path / "three" / "manifest.json").read_text())
    assert manifest["num_records"] == 3 and manifest["shards"][-1]["end_sample"] == 3
    assert tokcomp([*common, "--out", str(tmp_path / "zero"), "--limit", "0"]) != 0
    assert "--limit must be >= 1, got 0" in capsys.readouterr().err


def test_columns_map_the_datas_own_names_to_record_fields(workspace, tmp_path, capsys):
    """A JSONL whose columns are named otherwise reads, with --columns, as the plain JSONL; a mapped column the
    data lacks, and a malformed pair, are refused by name."""
    plain = read_records(workspace / "data.jsonl")
    renamed = workspace / "renamed.jsonl"
    lines = [json.loads(line) for line in (workspace / "data.jsonl").read_text().splitlines()]
    with renamed.open("w") as f:
        for line in lines:
            f.write(json.dumps({"img": line["image"], "prompt": line["question"], "question": "x"}))  # relative paths
            f.write("\n")
    got = read_records(renamed, columns={"image": "img", "question": "prompt"})
    assert [(r["image"], r["question"]) for r in got] == [(str(r["image"]), r["question"]) for r in plain]
    with pytest.raises(LabelError, match=r"--columns.*no column\(s\) \['label'\]"):
        read_records(renamed, columns={"answer": "label"})
    args = ["label", "--model", str(workspace / "model"), "--data", str(renamed), "--out", str(tmp_path / "l")]
    assert tokcomp([*args, "--columns", "image"]) == 2
    assert "--columns takes FIELD=COLUMN pairs" in capsys.readouterr().err


def test_streaming_reads_only_the_first_limit_samples(workspace, tmp_path):
    """`--streaming --limit N` on a folder of data files (what a Hub dataset is): the first N records, equal to the
    JSONL's; streaming without --limit, or on a JSONL file, is refused by name."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from hf_tokcomp.training.formats import open_image

    plain = read_records(workspace / "data.jsonl")
    images = [Image.open(r["image"]).convert("RGB") for r in plain]
    table = datasets.Dataset.from_dict({"question": [r["question"] for r in plain], "image": images})
    table = table.cast_column("image", datasets.Image())
    (tmp_path / "parquet").mkdir()
    table.to_parquet(str(tmp_path / "parquet" / "train-00000.parquet"))
    got = read_records(tmp_path / "parquet", limit=3, streaming=True)
    assert len(got) == 3
    for record, reference, image in zip(got, plain, images, strict=False):
        assert record["question"] == reference["question"]
        assert open_image(record["image"]).convert("RGB").tobytes() == image.tobytes()
    with pytest.raises(LabelError, match="--limit"):
        read_records(tmp_path / "parquet", streaming=True)
    with pytest.raises(LabelError, match="drop --streaming"):
        read_records(workspace / "data.jsonl", limit=2, streaming=True)
    argv = ["label", "--model", str(workspace / "model"), "--data", str(tmp_path / "parquet"), "--streaming"]
    assert tokcomp([*argv, "--limit", "2", "--out", str(tmp_path / "labels"), "--max-new-tokens", "2"]) == 0
    assert json.loads((tmp_path / "labels" / "manifest.json").read_text())["labelled"] == 2


def test_a_video_record_without_a_video_processor_says_what_is_missing(workspace):
    """The word-level / image-only processor has no video processor (transformers' needs torchvision)."""
    import numpy as np
    from PIL import Image

    from hf_tokcomp.training.labels import build_batch

    processor = load_processor(workspace / "model")
    frames = [Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    with pytest.raises(LabelError, match="no video processor.*torchvision"):
        build_batch(processor, [{"video": frames, "question": "what colour is the square ?"}])


def test_answer_end_targets_cover_the_token_that_ends_the_answer(tmp_path):
    """On the organism (whose answers end with its end-of-sequence token): with ``answer_end`` the stored target
    is the GAE relevance of the answer followed by that token, computed here from the model's own generation;
    the manifest records it, and label directories of both kinds are not mixed."""
    from hf_tokcomp.organism import load_organism
    from hf_tokcomp.organism.export import write_split
    from hf_tokcomp.teachers.gae import visual_relevance
    from hf_tokcomp.training.train import load_label_dirs

    model, processor = load_organism()
    records = read_records(write_split("test", 3, tmp_path / "data"))
    ended = label_dataset(model, processor, records, tmp_path / "end", 64, 4, progress=False, answer_end=True)
    label_dataset(model, processor, records, tmp_path / "plain", max_new_tokens=4, progress=False)
    assert ended["answer_end"] is True and ended["labelled"] == 3
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    (_, end_shard), (_, plain_shard) = _shards(tmp_path / "end"), _shards(tmp_path / "plain")
    offsets = [0, *torch.cumsum(end_shard[0]["lengths"], 0).tolist()]
    for i, record in enumerate(records):
        inputs = build_inputs(processor, record)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        assert eos in new
        answer = new[: new.index(eos) + 1]  # the answer and the token that ends it
        want = visual_relevance(model, inputs, [torch.tensor(answer)])[0]
        torch.testing.assert_close(end_shard[0]["targets"][offsets[i] : offsets[i + 1]], want)
    assert not torch.allclose(end_shard[0]["targets"], plain_shard[0]["targets"])
    with pytest.raises(LabelError, match="answer_end"):
        load_label_dirs([tmp_path / "end", tmp_path / "plain"])
