"""Training-only auxiliary targets of the organism: what each visual token should come to know.

Used by :mod:`~hf_tokcomp.organism.train` through small linear heads that are dropped after training:

- on the vision tower's output, each cell's content (empty, or shape x colour): the LLM then starts from visual
  tokens that already say what their cell holds;
- inside the LLM (at a middle layer), on each object's token: the colour of its nearest left neighbour in the
  row, the content of its nearest neighbour above in the column, and the running counts of its colour and of
  its shape (objects up to and including it in raster order). Every target is causal - it depends only on
  EARLIER visual tokens, the only ones a token of a causal LLM sees - so the heads can fit them; they unlocked
  relations and counts, while the answer still has to read the object's own token.

Every target is ``(images, grid * grid)`` long, -100 where it does not apply (empty cells for the LLM heads).
"""

from __future__ import annotations

import torch

from .task import COLOURS, NUMBERS, SHAPES, SceneObject

__all__ = ["AUX_CLASSES", "cell_classes", "relation_targets"]

_COLOURS, _NONE = list(COLOURS), 0
#: classes of each auxiliary head
AUX_CLASSES = {
    "cell": 1 + len(SHAPES) * len(COLOURS),
    "left_colour": 1 + len(COLOURS),
    "above_cell": 1 + len(SHAPES) * len(COLOURS),
    "colour_count": 1 + len(SHAPES),
    "shape_count": len(NUMBERS),
}


def _class(obj: SceneObject) -> int:
    return 1 + SHAPES.index(obj.shape) * len(_COLOURS) + _COLOURS.index(obj.colour)


def cell_classes(scenes: list[list[SceneObject]], grid: int) -> torch.Tensor:
    """Per image, each cell's class: 0 = empty, ``1 + shape * colours + colour``. ``(images, grid * grid)``."""
    out = torch.zeros(len(scenes), grid * grid, dtype=torch.long)
    for i, objects in enumerate(scenes):
        for obj in objects:
            out[i, obj.token] = _class(obj)
    return out


def relation_targets(scenes: list[list[SceneObject]], grid: int) -> dict[str, torch.Tensor]:
    """Per image, on each object's token: the left neighbour's colour (0 = none, else 1 + colour), the class of
    the nearest object above (0 = none), and the running counts of its colour and of its shape in raster order;
    -100 on empty cells. Each ``(images, grid * grid)``."""
    names = ("left_colour", "above_cell", "colour_count", "shape_count")
    out = {name: torch.full((len(scenes), grid * grid), -100, dtype=torch.long) for name in names}
    for i, objects in enumerate(scenes):
        at = {(o.row, o.col): o for o in objects}
        for obj in objects:
            left = next((at[obj.row, c] for c in range(obj.col - 1, -1, -1) if (obj.row, c) in at), None)
            above = next((at[r, obj.col] for r in range(obj.row - 1, -1, -1) if (r, obj.col) in at), None)
            earlier = [o for o in objects if o.token <= obj.token]
            out["left_colour"][i, obj.token] = _NONE if left is None else 1 + _COLOURS.index(left.colour)
            out["above_cell"][i, obj.token] = _NONE if above is None else _class(above)
            out["colour_count"][i, obj.token] = sum(o.colour == obj.colour for o in earlier)
            out["shape_count"][i, obj.token] = sum(o.shape == obj.shape for o in earlier)
    return out
