"""Write an organism split as a dataset the ``tokcomp`` commands read: ``SPLIT.jsonl`` + PNG images.

``python -m hf_tokcomp.organism.export --split test --n 1200 --out data/organism``: each line holds ``image``
(path relative to the file; a list of two for ``which_image``), ``question``, ``answer``, ``question_first``
(whether the question stands before the image(s)), ``qtype``, ``objects`` (how many in the first image) and
``evidence`` (visual-token indices over the images' tokens one image after the other, the answer's own first).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .task import QUESTION_TYPES, make_split

__all__ = ["write_split", "main"]


def write_split(
    split: str,
    n: int,
    out: str | os.PathLike,
    seed: int = 0,
    qtypes: tuple[str, ...] = QUESTION_TYPES,
    question_first: bool | None = None,
) -> Path:
    """Write ``n`` samples of ``split`` (of the question types ``qtypes``) under ``out``; returns the JSONL path
    (written last, atomically, so a JSONL file always lists images that exist). The prompt orders alternate as
    in :func:`~hf_tokcomp.organism.task.make_split`, or are all ``question_first`` where it is given."""
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, sample in enumerate(make_split(split, n, seed=seed, qtypes=qtypes)):
        if question_first is not None:
            sample.question_first = question_first
        names = [
            f"images/{split}-{i:05d}" + (f"-{k}" if len(sample.images) > 1 else "") + ".png"
            for k in range(len(sample.images))
        ]
        for name, image in zip(names, sample.images, strict=True):
            image.save(out / name)
        record = {"image": names[0] if len(names) == 1 else names, "question": sample.question, "answer": sample.answer}
        record |= {"question_first": sample.question_first, "qtype": sample.qtype, "objects": len(sample.objects)}
        lines.append(json.dumps(record | {"evidence": sample.evidence}))
    path = out / f"{split}.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_tokcomp.organism.export", description=__doc__.split("\n")[0])
    parser.add_argument("--split", required=True, choices=["train", "validation", "test"])
    parser.add_argument("--n", type=int, required=True, help="number of samples")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    args = parser.parse_args(argv)
    print(write_split(args.split, args.n, args.out, args.seed))


if __name__ == "__main__":
    main()
