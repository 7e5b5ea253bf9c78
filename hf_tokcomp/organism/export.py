"""Write an organism split as a dataset the ``tokcomp`` commands read: ``SPLIT.jsonl`` + PNG images.

``python -m hf_tokcomp.organism.export --split test --n 500 --out data/organism``: each line holds ``image``
(path relative to the file), ``question``, ``answer``, ``qtype`` and ``evidence`` (visual-token indices).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .task import make_split

__all__ = ["write_split", "main"]


def write_split(split: str, n: int, out: str | os.PathLike, seed: int = 0) -> Path:
    """Write ``n`` samples of ``split`` under ``out``; returns the JSONL path (written last, atomically, so a
    JSONL file always lists images that exist)."""
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, sample in enumerate(make_split(split, n, seed=seed)):
        name = f"images/{split}-{i:05d}.png"
        sample.image.save(out / name)
        record = {"image": name, "question": sample.question, "answer": sample.answer}
        lines.append(json.dumps(record | {"qtype": sample.qtype, "evidence": sample.evidence}))
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
