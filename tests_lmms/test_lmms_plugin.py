"""The lmms-eval plugin (run by ``make test-lmms`` in ``.venv-lmms``): lmms-eval's own CLI drives ``--model
tokcomp`` over a local task of organism test samples; its per-sample answers must be exactly ``tokcomp eval``'s
(same selector, same keep), at batch 1 and batch 8, and at keep 1.0 exactly the stock transformers model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval")

from hf_tokcomp.organism import ORGANISM_COMPRESSOR_DIR, ORGANISM_DIR  # noqa: E402
from hf_tokcomp.runtime.selection import keep_count  # noqa: E402
from hf_tokcomp.training.labels import normalise_answer  # noqa: E402

N = 48
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    from hf_tokcomp.lmms.organism_task import write_task

    return write_task(tmp_path_factory.mktemp("task"), n=N)


@pytest.fixture(scope="module")
def tokcomp_eval(task, tmp_path_factory) -> dict:
    """``tokcomp eval`` on the same JSONL: the uncompressed answers, layer-0 attention and the shipped
    compressor at keep 0.5 and 0.25."""
    out = tmp_path_factory.mktemp("eval")
    cmd = [sys.executable, "-m", "hf_tokcomp", "eval", "--model", str(ORGANISM_DIR), "--compressor",
           str(ORGANISM_COMPRESSOR_DIR), "--data", str(task / "test.jsonl"), "--out", str(out), "--methods",
           "attention", "ours", "--keeps", "1.0", "0.5", "0.25", "--batch-size", "16"]  # fmt: skip
    subprocess.run(cmd, check=True, env=ENV, capture_output=True)
    result = json.loads((out / "eval.json").read_text())
    result["samples"] = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return result


def run_lmms(task: Path, out: Path, model_args: str, batch_size: int, processes: int = 1) -> tuple[list[dict], dict]:
    """lmms-eval's CLI on the organism task (under ``accelerate launch`` with ``processes`` > 1): (logged samples in
    document order, the results JSON)."""
    launch = [sys.executable, "-m", "lmms_eval"]
    if processes > 1:
        accelerate = str(Path(sys.executable).with_name("accelerate"))
        # accelerate's multi-process launcher: with `--cpu` it starts ONE process; without GPUs they use gloo
        launch = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "-m", "lmms_eval"]
    cmd = [*launch, "--model", "tokcomp", "--model_args", model_args, "--tasks",
           "organism_vqa", "--include_path", str(task), "--batch_size", str(batch_size), "--device", "cpu",
           "--output_path", str(out), "--log_samples"]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (samples_file,) = out.rglob("*_samples_organism_vqa.jsonl")
    (results_file,) = [p for p in out.rglob("*_results.json")]
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    return samples, json.loads(results_file.read_text())


def answer(sample: dict) -> str:
    """A logged sample's filtered response (a string, or a one-element list in other lmms-eval versions)."""
    response = sample["filtered_resps"]
    return response if isinstance(response, str) else response[0]


CASES = [  # (model_args beyond pretrained, tokcomp eval method, keep)
    ("token_keep=1.0", None, 1.0),
    ("token_keep=0.5,selector=attention", "attention", 0.5),
    ("token_keep=0.25,selector=attention", "attention", 0.25),
    ("token_keep=0.25,compressor=shipped", "ours", 0.25),
]


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize(("args", "method", "keep"), CASES, ids=[c[0] for c in CASES])
def test_answers_equal_tokcomp_eval(task, tokcomp_eval, tmp_path, args, method, keep, batch_size):
    if batch_size == 1 and method == "ours":
        pytest.skip("batch 1 is covered by the two training-free keeps")
    samples, results = run_lmms(task, tmp_path, f"pretrained=organism,{args}", batch_size)
    reference = tokcomp_eval["samples"]
    assert [s["doc_id"] for s in samples] == list(range(N))
    expected = [r["uncompressed_answer"] if method is None else r["answers"][method][str(keep)] for r in reference]
    got = [normalise_answer(answer(s)) for s in samples]
    assert got == expected
    accuracy = results["results"]["organism_vqa"]["exact_match,none"]
    assert accuracy == pytest.approx(tokcomp_eval["accuracy"][method or "attention"][str(keep)]["all"])
    # what compression did: per sample (144 visual tokens, the budget rule's count kept) and over the run
    kept = keep_count(keep, 144)
    for sample in samples:
        (counts,) = sample["token_counts"]
        assert (counts["visual_tokens"], counts["visual_tokens_kept"]) == (144, kept)
        assert counts["token_keep"] == keep
        assert counts["selector"] == {None: "auto", "attention": "attention", "ours": "learned"}[method]
    throughput = results["throughput"]
    assert throughput["avg_visual_tokens_per_sample"] == 144
    assert throughput["avg_visual_tokens_kept_per_sample"] == kept
    assert throughput["avg_visual_keep_ratio"] == pytest.approx(kept / 144)


def test_two_processes_under_accelerate_give_the_one_process_answers(task, tokcomp_eval, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` (gloo on the CPU): the same answers, and the compression
    counts gathered over both processes."""
    samples, results = run_lmms(task, tmp_path, "pretrained=organism,token_keep=0.25,selector=attention", 8, 2)
    expected = [r["answers"]["attention"]["0.25"] for r in tokcomp_eval["samples"]]
    assert [normalise_answer(answer(s)) for s in samples] == expected
    assert results["throughput"]["avg_visual_tokens_kept_per_sample"] == keep_count(0.25, 144)
    assert results["throughput"]["avg_processes"] == 2  # two processes really ran


def test_keep_1_equals_the_stock_model_driven_the_same_way(task, tmp_path):
    """The stock transformers class, prompts written here by hand (image, then the question; the organism's
    chat template; greedy), one sample at a time."""
    from datasets import load_from_disk
    from transformers import Qwen2VLForConditionalGeneration

    from hf_tokcomp.processor import load_processor

    samples, _ = run_lmms(task, tmp_path, "pretrained=organism,token_keep=1.0", 8)
    stock = Qwen2VLForConditionalGeneration.from_pretrained(ORGANISM_DIR).eval()
    processor = load_processor(ORGANISM_DIR)
    docs = load_from_disk(str(task / "hf"))["test"]
    for sample, doc in zip(samples, docs, strict=True):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": doc["question"]}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[doc["image"].convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            out = stock.generate(**inputs, max_new_tokens=8, do_sample=False)
        reference = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert answer(sample).strip() == reference.strip(), doc["question"]


def test_loglikelihood_at_keep_1_equals_the_stock_model(task):
    """``loglikelihood`` (answer log-probability after the prompt) against the stock model's logits summed by hand."""
    from datasets import load_from_disk
    from transformers import Qwen2VLForConditionalGeneration

    from hf_tokcomp.lmms.model import TokComp
    from hf_tokcomp.lmms.organism_task import doc_to_visual

    docs = load_from_disk(str(task / "hf"))["test"]
    lm = TokComp(pretrained="organism", token_keep=1.0, device="cpu")
    lm.task_dict = {"organism_vqa": {"test": docs}}

    class Request:
        def __init__(self, args):
            self.args = args

    requests = [
        Request((docs[i]["question"], docs[i]["answer"], doc_to_visual, i, "organism_vqa", "test")) for i in range(6)
    ]
    got = lm.loglikelihood(requests)
    stock = Qwen2VLForConditionalGeneration.from_pretrained(ORGANISM_DIR).eval()
    processor = lm.processor
    for (logprob, greedy), i in zip(got, range(6), strict=True):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": docs[i]["question"]}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(
            text=[text + docs[i]["answer"]], images=[docs[i]["image"].convert("RGB")], return_tensors="pt"
        )
        target = processor.tokenizer(docs[i]["answer"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = stock(**inputs).logits[0]
        n = len(target)
        rows = torch.log_softmax(logits[-n - 1 : -1].float(), -1)
        assert logprob == pytest.approx(sum(rows[j, t].item() for j, t in enumerate(target)), abs=1e-4)
        assert greedy == all(rows[j].argmax().item() == t for j, t in enumerate(target))


def test_unknown_model_args_are_refused_by_name():
    from hf_tokcomp.lmms.model import TokComp

    with pytest.raises(ValueError, match="unknown --model_args.*tokn_keep"):
        TokComp(pretrained="organism", tokn_keep=0.5)
    with pytest.raises(ValueError, match="token_keep"):
        TokComp(pretrained="organism", token_keep=1.5)
