"""The organism's synthetic visual question-answering task, with the evidence tokens of every answer.

Images are 224 x 224 px on a plain background: with Qwen2-VL's 14 px patches merged 2 x 2 they make an 8 x 8
grid of visual tokens, one per 28 px cell, in row-major order (token index = row * 8 + col). Each object (a
shape in a colour, 16-24 px) is drawn inside ONE cell, so the evidence of an answer is a known set of tokens.

Question types (the last three have evidence that is NOT where the question's words point):

- ``colour``: "what colour is the triangle ?" (the shape is unique in the image); evidence: its cell.
- ``exists``: "is there a red square ?" yes / no; evidence: the object's cell, or every object's for "no".
- ``left_of``: "what colour is the object left of the red square ?" (nearest in the same row); evidence: the
  answer's cell and the anchor's.
- ``below``: "what shape is below the blue circle ?" (nearest in the same column); evidence: both cells.
- ``count``: "how many red objects ?"; evidence: every matching cell.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "SHAPES",
    "QUESTION_TYPES",
    "SceneObject",
    "Sample",
    "make_sample",
    "make_scene_samples",
    "make_split",
    "vocabulary",
]

IMAGE_SIZE, CELL, GRID = 224, 28, 8
BACKGROUND = (235, 235, 230)
SHAPES = ("square", "circle", "triangle")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (225, 195, 30),
    "purple": (135, 55, 165),
    "orange": (240, 135, 25),
}
QUESTION_TYPES = ("colour", "exists", "left_of", "below", "count")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    row: int
    col: int

    @property
    def token(self) -> int:
        """Index of the visual token (8 x 8 grid, row-major) that holds this object."""
        return self.row * GRID + self.col


@dataclass
class Sample:
    """One question about one image. ``evidence``: visual-token indices that hold the answer's evidence."""

    image: Image.Image
    objects: list[SceneObject]
    question: str
    answer: str
    qtype: str
    evidence: list[int] = field(default_factory=list)


def _draw(objects: list[SceneObject], rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for obj in objects:
        size = rng.randint(16, 24)
        x0 = obj.col * CELL + rng.randint(0, CELL - size)
        y0 = obj.row * CELL + rng.randint(0, CELL - size)
        box, fill = (x0, y0, x0 + size - 1, y0 + size - 1), COLOURS[obj.colour]
        if obj.shape == "square":
            pen.rectangle(box, fill=fill)
        elif obj.shape == "circle":
            pen.ellipse(box, fill=fill)
        else:
            pen.polygon([(x0 + size // 2, y0), (x0, y0 + size - 1), (x0 + size - 1, y0 + size - 1)], fill=fill)
    return image


def _scene(rng: random.Random, n_objects: int) -> list[SceneObject]:
    pairs = rng.sample([(s, c) for s in SHAPES for c in COLOURS], n_objects)
    cells = rng.sample(range(GRID * GRID), n_objects)
    return [SceneObject(s, c, cell // GRID, cell % GRID) for (s, c), cell in zip(pairs, cells, strict=True)]


def _question(objects: list[SceneObject], qtype: str, rng: random.Random) -> tuple[str, str, list[int]] | None:
    """(question, answer, evidence) of the type, or None when this scene cannot ask it."""
    if qtype == "colour":
        unique = [o for o in objects if sum(p.shape == o.shape for p in objects) == 1]
        if not unique:
            return None
        obj = rng.choice(unique)
        return f"what colour is the {obj.shape} ?", obj.colour, [obj.token]
    if qtype == "exists":
        if rng.random() < 0.5:
            obj = rng.choice(objects)
            return f"is there a {obj.colour} {obj.shape} ?", "yes", [obj.token]
        absent = [(s, c) for s in SHAPES for c in COLOURS if all((o.shape, o.colour) != (s, c) for o in objects)]
        shape, colour = rng.choice(absent)
        return f"is there a {colour} {shape} ?", "no", sorted(o.token for o in objects)
    if qtype in ("left_of", "below"):
        options = []
        for anchor in objects:
            if qtype == "left_of":
                found = [o for o in objects if o.row == anchor.row and o.col < anchor.col]
                target = max(found, key=lambda o: o.col, default=None)
            else:
                found = [o for o in objects if o.col == anchor.col and o.row > anchor.row]
                target = min(found, key=lambda o: o.row, default=None)
            if target is not None:
                options.append((anchor, target))
        if not options:
            return None
        anchor, target = rng.choice(options)
        if qtype == "left_of":
            question, answer = f"what colour is the object left of the {anchor.colour} {anchor.shape} ?", target.colour
        else:
            question, answer = f"what shape is below the {anchor.colour} {anchor.shape} ?", target.shape
        return question, answer, sorted([target.token, anchor.token])
    if qtype == "count":
        colour = rng.choice(sorted({o.colour for o in objects}))
        matching = [o for o in objects if o.colour == colour]
        return f"how many {colour} objects ?", NUMBERS[len(matching)], sorted(o.token for o in matching)
    raise ValueError(f"`qtype` must be one of {QUESTION_TYPES}, got {qtype!r}")


def make_sample(rng: random.Random, qtype: str, min_objects: int = 3, max_objects: int = 6) -> Sample:
    """A scene with ``min_objects..max_objects`` objects and one question of ``qtype`` about it."""
    if not 1 <= min_objects <= max_objects <= len(SHAPES) * len(COLOURS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 18, got {min_objects}, {max_objects}")
    while True:
        objects = _scene(rng, rng.randint(min_objects, max_objects))
        asked = _question(objects, qtype, rng)
        if asked is not None:
            question, answer, evidence = asked
            return Sample(_draw(objects, rng), objects, question, answer, qtype, evidence)


def make_scene_samples(
    rng: random.Random, n_questions: int, qtypes: tuple[str, ...], min_objects: int, max_objects: int
) -> list[Sample]:
    """One scene and ``n_questions`` questions about it (types drawn from ``qtypes`` among those the scene can
    ask); the samples share one image (training runs the image once for all of them)."""
    while True:
        objects = _scene(rng, rng.randint(min_objects, max_objects))
        askable = [q for q in qtypes if _question(objects, q, random.Random(0)) is not None]
        if askable:
            break
    image = _draw(objects, rng)
    samples = []
    for _ in range(n_questions):
        qtype = rng.choice(askable)
        question, answer, evidence = _question(objects, qtype, rng)
        samples.append(Sample(image, objects, question, answer, qtype, evidence))
    return samples


def make_split(
    split: str,
    n: int,
    seed: int = 0,
    qtypes: tuple[str, ...] = QUESTION_TYPES,
    min_objects: int = 3,
    max_objects: int = 6,
) -> list[Sample]:
    """``n`` samples of a split (``train`` / ``validation`` / ``test``), question types in turn; the same
    arguments always give the same samples, and splits never share a random stream."""
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"`split` must be one of {sorted(_SPLIT_SEEDS)}, got {split!r}")
    rng = random.Random(seed * 1_000 + _SPLIT_SEEDS[split])
    return [make_sample(rng, qtypes[i % len(qtypes)], min_objects, max_objects) for i in range(n)]


def vocabulary() -> list[str]:
    """Every word a question or an answer uses (for the organism's word-level tokenizer)."""
    words = {
        "what",
        "colour",
        "shape",
        "is",
        "the",
        "there",
        "a",
        "object",
        "left",
        "of",
        "below",
        "how",
        "many",
        "objects",
        "?",
        "yes",
        "no",
    }
    return sorted(words | set(SHAPES) | set(COLOURS) | set(NUMBERS))
