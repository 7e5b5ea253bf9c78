"""The organism's synthetic visual question-answering task (v2), with the evidence tokens of every answer.

Images are ``28 * grid`` px square on a plain background (the test images: 336 px, a 12 x 12 grid = 144 visual
tokens). With Qwen2-VL's 14 px patches merged 2 x 2, each 28 px cell is one visual token, in row-major order
(token index = row * grid + col). Each object (a shape in a colour, 16-24 px) is drawn inside ONE cell, so the
evidence of an answer is a known set of tokens. A scene holds 10-24 objects (every (shape, colour) pair at most
once), so at 11% of 144 tokens the objects of most scenes do not all fit in the budget.

Question types (only ``shape`` and ``exists`` have evidence where the question's words point):

- ``shape``: "what shape is the red object ?" (the colour is unique in the image); evidence: its cell.
- ``exists``: "is there a red square ?" yes / no; half of the "no" cases are hard (a red object and a square
  are both there); evidence: the object's cell, or for "no" the objects of the named colour or shape.
- ``left_of``: "what colour is the object left of the red square ?" (nearest in the same row); evidence: the
  answer's cell, then the anchor's.
- ``below``: "what shape is below the blue circle ?" (nearest in the same column); evidence: both cells.
- ``count``: "how many red objects ?" / "how many square objects ?"; evidence: every matching cell.
- ``which_image`` (two images): "which image has a red circle ?" first / second (exactly one has it);
  evidence: its cell, indexed in the two images' visual tokens one after the other.

Every sample also says where the question stands: after its image(s) (the usual "<image> question") or, with
``question_first``, before them. The splits alternate the two orders, so each type is measured in both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "SHAPES",
    "NUMBERS",
    "QUESTION_TYPES",
    "GRID",
    "IMAGE_SIZE",
    "MIN_OBJECTS",
    "MAX_OBJECTS",
    "SceneObject",
    "Sample",
    "make_scene",
    "draw",
    "ask",
    "make_sample",
    "make_split",
    "vocabulary",
]

CELL, GRID = 28, 12
IMAGE_SIZE = CELL * GRID
MIN_OBJECTS, MAX_OBJECTS = 10, 24
BACKGROUND = (235, 235, 230)
SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (225, 195, 30),
    "purple": (135, 55, 165),
    "orange": (240, 135, 25),
    "cyan": (40, 195, 205),
    "black": (30, 30, 30),
}
QUESTION_TYPES = ("shape", "exists", "left_of", "below", "count", "which_image")
#: training also asks "what colour is the square ?" (the shape unique in the image): the only type whose answer
#: is the colour of the object the question names, it teaches colour answers before ``left_of`` needs them (in
#: a scene of 10+ objects a shape is almost never unique, so the test split does not ask it)
TRAINING_TYPES = ("colour", *QUESTION_TYPES)
SINGLE_IMAGE_TYPES = tuple(q for q in TRAINING_TYPES if q != "which_image")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    row: int
    col: int
    grid: int = GRID

    @property
    def token(self) -> int:
        """Index of the visual token (``grid x grid``, row-major) that holds this object."""
        return self.row * self.grid + self.col


@dataclass
class Sample:
    """One question about one or two images. ``evidence``: visual-token indices that hold the answer's evidence
    (ranked: the answer's own token(s) first), counted over the images' tokens one image after the other."""

    images: list[Image.Image]
    scenes: list[list[SceneObject]]
    question: str
    answer: str
    qtype: str
    evidence: list[int] = field(default_factory=list)
    question_first: bool = False

    @property
    def image(self) -> Image.Image:
        """The first (for single-image types, the only) image."""
        return self.images[0]

    @property
    def objects(self) -> list[SceneObject]:
        """The first image's objects."""
        return self.scenes[0]


def make_scene(rng: random.Random, n_objects: int, grid: int = GRID) -> list[SceneObject]:
    """``n_objects`` objects with distinct (shape, colour) pairs in distinct cells of a ``grid x grid`` image."""
    if not 1 <= n_objects <= min(len(SHAPES) * len(COLOURS), grid * grid):
        raise ValueError(f"`n_objects` must be in [1, {min(len(SHAPES) * len(COLOURS), grid * grid)}], got {n_objects}")
    pairs = rng.sample([(s, c) for s in SHAPES for c in COLOURS], n_objects)
    cells = rng.sample(range(grid * grid), n_objects)
    return [SceneObject(s, c, cell // grid, cell % grid, grid) for (s, c), cell in zip(pairs, cells, strict=True)]


def draw(objects: list[SceneObject], rng: random.Random, grid: int = GRID) -> Image.Image:
    """The scene as a ``28 * grid`` px image (each object at a random size and offset inside its cell)."""
    image = Image.new("RGB", (CELL * grid, CELL * grid), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for obj in objects:
        size = rng.randint(16, 24)
        x0 = obj.col * CELL + rng.randint(0, CELL - size)
        y0 = obj.row * CELL + rng.randint(0, CELL - size)
        x1, y1, fill = x0 + size - 1, y0 + size - 1, COLOURS[obj.colour]
        if obj.shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "triangle":
            pen.polygon([(x0 + size // 2, y0), (x0, y1), (x1, y1)], fill=fill)
        else:  # cross: a plus sign with arms a third of the size wide
            a, b = x0 + size // 3, x0 + 2 * size // 3
            c, d = y0 + size // 3, y0 + 2 * size // 3
            pen.rectangle((a, y0, b, y1), fill=fill)
            pen.rectangle((x0, c, x1, d), fill=fill)
    return image


def _neighbour(objects: list[SceneObject], anchor: SceneObject, relation: str) -> SceneObject | None:
    """The nearest object left of ``anchor`` in its row (``left_of``) or below it in its column (``below``)."""
    if relation == "left_of":
        return max(
            (o for o in objects if o.row == anchor.row and o.col < anchor.col), key=lambda o: o.col, default=None
        )
    return min((o for o in objects if o.col == anchor.col and o.row > anchor.row), key=lambda o: o.row, default=None)


def ask(scenes: list[list[SceneObject]], qtype: str, rng: random.Random) -> tuple[str, str, list[int]] | None:
    """(question, answer, evidence) of ``qtype`` about the scene(s), or None when they cannot ask it."""
    objects = scenes[0]
    if qtype == "which_image":
        if len(scenes) != 2:
            return None
        sets = [{(o.colour, o.shape) for o in s} for s in scenes]
        only = [(k, pair) for k in (0, 1) for pair in sorted(sets[k] - sets[1 - k])]
        if not only:
            return None
        k, (colour, shape) = rng.choice(only)
        (obj,) = [o for o in scenes[k] if (o.colour, o.shape) == (colour, shape)]
        offset = k * obj.grid * obj.grid
        return f"which image has a {colour} {shape} ?", ("first", "second")[k], [offset + obj.token]
    if len(scenes) != 1:
        return None
    if qtype == "colour":
        unique = [o for o in objects if sum(p.shape == o.shape for p in objects) == 1]
        if not unique:
            return None
        obj = rng.choice(unique)
        return f"what colour is the {obj.shape} ?", obj.colour, [obj.token]
    if qtype == "shape":
        unique = [o for o in objects if sum(p.colour == o.colour for p in objects) == 1]
        if not unique:
            return None
        obj = rng.choice(unique)
        return f"what shape is the {obj.colour} object ?", obj.shape, [obj.token]
    if qtype == "exists":
        if rng.random() < 0.5:
            obj = rng.choice(objects)
            return f"is there a {obj.colour} {obj.shape} ?", "yes", [obj.token]
        present = {(o.colour, o.shape) for o in objects}
        colours, shapes = {o.colour for o in objects}, {o.shape for o in objects}
        hard = sorted((c, s) for c in colours for s in shapes if (c, s) not in present)
        absent = sorted((c, s) for c in COLOURS for s in SHAPES if (c, s) not in present)
        if not absent:
            return None
        colour, shape = rng.choice(hard if hard and rng.random() < 0.5 else absent)
        near = [o.token for o in objects if o.colour == colour or o.shape == shape]
        return f"is there a {colour} {shape} ?", "no", sorted(near)
    if qtype in ("left_of", "below"):
        pairs = [(a, t) for a in objects if (t := _neighbour(objects, a, qtype)) is not None]
        if not pairs:
            return None
        anchor, target = rng.choice(pairs)
        if qtype == "left_of":
            question, answer = f"what colour is the object left of the {anchor.colour} {anchor.shape} ?", target.colour
        else:
            question, answer = f"what shape is below the {anchor.colour} {anchor.shape} ?", target.shape
        return question, answer, [target.token, anchor.token]
    if qtype == "count":
        if rng.random() < 0.5:
            colour = rng.choice(sorted(COLOURS))
            matching = [o for o in objects if o.colour == colour]
            question = f"how many {colour} objects ?"
        else:
            shape = rng.choice(SHAPES)
            matching = [o for o in objects if o.shape == shape]
            question = f"how many {shape} objects ?"
        return question, NUMBERS[len(matching)], sorted(o.token for o in matching)
    raise ValueError(f"`qtype` must be one of {TRAINING_TYPES}, got {qtype!r}")


def make_sample(
    rng: random.Random,
    qtype: str,
    min_objects: int = MIN_OBJECTS,
    max_objects: int = MAX_OBJECTS,
    grid: int = GRID,
    question_first: bool = False,
) -> Sample:
    """One question of ``qtype`` about fresh scene(s) of ``min_objects..max_objects`` objects each (two scenes
    for ``which_image``)."""
    if qtype not in TRAINING_TYPES:
        raise ValueError(f"`qtype` must be one of {TRAINING_TYPES}, got {qtype!r}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    n_images = 2 if qtype == "which_image" else 1
    while True:
        scenes = [make_scene(rng, rng.randint(min_objects, max_objects), grid) for _ in range(n_images)]
        asked = ask(scenes, qtype, rng)
        if asked is not None:
            images = [draw(s, rng, grid) for s in scenes]
            question, answer, evidence = asked
            return Sample(images, scenes, question, answer, qtype, evidence, question_first)


def make_split(
    split: str,
    n: int,
    seed: int = 0,
    qtypes: tuple[str, ...] = QUESTION_TYPES,
    min_objects: int = MIN_OBJECTS,
    max_objects: int = MAX_OBJECTS,
) -> list[Sample]:
    """``n`` samples of a split (``train`` / ``validation`` / ``test``): question types in turn, and every
    other round of types with the question before the image(s). The same arguments always give the same
    samples, and splits never share a random stream."""
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"`split` must be one of {sorted(_SPLIT_SEEDS)}, got {split!r}")
    rng = random.Random(seed * 1_000 + _SPLIT_SEEDS[split])
    k = len(qtypes)
    return [
        make_sample(rng, qtypes[i % k], min_objects, max_objects, question_first=bool((i // k) % 2)) for i in range(n)
    ]


def vocabulary() -> list[str]:
    """Every word a question or an answer uses (for the organism's word-level tokenizer)."""
    words = {"what", "colour", "shape", "is", "the", "there", "a", "object", "left", "of", "below", "how", "many"}
    words |= {"objects", "?", "yes", "no", "which", "image", "has", "first", "second"}
    return sorted(words | set(SHAPES) | set(COLOURS) | set(NUMBERS))
