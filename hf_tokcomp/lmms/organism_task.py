"""A local lmms-eval task over organism test samples: ``python -m hf_tokcomp.lmms.organism_task --out DIR``.

Writes, under ``DIR``:
- ``test.jsonl`` + ``images/`` (:func:`hf_tokcomp.organism.export.write_split`: what ``tokcomp eval --data`` reads;
  the single-image question types, each question after its image);
- ``hf/``: the same samples as a ``datasets`` DatasetDict ``{"test": ...}`` saved to disk (lmms-eval iterates
  over a dataset's splits, so a bare Dataset does not do);
- ``organism_vqa.yaml`` + ``organism_vqa_utils.py``: the task (the bare question, greedy, exact match after
  hf_tokcomp's answer normalisation), for ``python -m lmms_eval --include_path DIR --tasks organism_vqa``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..organism.export import write_split
from ..organism.task import QUESTION_TYPES
from ..training.labels import normalise_answer

#: the question types of the task: every type of the organism's test split with one image
SINGLE_IMAGE_TYPES = tuple(q for q in QUESTION_TYPES if q != "which_image")

__all__ = ["SINGLE_IMAGE_TYPES", "write_task", "doc_to_visual", "doc_to_text", "process_results", "main"]

_YAML = """task: organism_vqa
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function organism_vqa_utils.doc_to_visual
doc_to_text: !function organism_vqa_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
process_results: !function organism_vqa_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""

_UTILS = '''"""Written by hf_tokcomp.lmms.organism_task: the organism task's functions live in the package."""
from hf_tokcomp.lmms.organism_task import doc_to_text, doc_to_visual, process_results  # noqa: F401
'''


def doc_to_visual(doc: dict[str, Any]) -> list:
    """The sample's image, RGB."""
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The bare question (the organism knows no other words)."""
    return doc["question"]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match after :func:`hf_tokcomp.training.labels.normalise_answer` (as ``tokcomp eval`` scores)."""
    return {"exact_match": float(normalise_answer(results[0]) == normalise_answer(doc["answer"]))}


def write_task(out: str | Path, n: int = 200, max_new_tokens: int = 8, seed: int = 0) -> Path:
    """Write the task for ``n`` organism test samples under ``out``; returns ``out``."""
    import datasets

    out = Path(out).resolve()
    # one image per sample, the question after it: lmms-eval's doc_to_visual / doc_to_text say nothing about where
    # the question stands or which image is which
    jsonl = write_split("test", n, out, seed=seed, qtypes=SINGLE_IMAGE_TYPES, question_first=False)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    columns = {key: [row[key] for row in rows] for key in ("question", "answer", "qtype")}
    columns["image"] = [str(out / row["image"]) for row in rows]
    table = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    datasets.DatasetDict({"test": table}).save_to_disk(str(out / "hf"))
    (out / "organism_vqa.yaml").write_text(_YAML.format(data=out / "hf", max_new_tokens=max_new_tokens))
    (out / "organism_vqa_utils.py").write_text(_UTILS)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_tokcomp.lmms.organism_task", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="task directory (lmms-eval's --include_path)")
    parser.add_argument("--n", type=int, default=200, help="organism test samples (default: 200)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answer length limit (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    args = parser.parse_args(argv)
    print(write_task(args.out, args.n, args.max_new_tokens, args.seed))


if __name__ == "__main__":
    main()
