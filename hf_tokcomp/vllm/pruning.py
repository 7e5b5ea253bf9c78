"""What the vLLM plugin computes, in plain torch (no vLLM import): settings, kept tokens, their positions.

The plugin prunes each image's merged visual tokens where vLLM encodes the image (``embed_multimodal``), with the
same selectors and the same budget as the transformers classes (:mod:`hf_tokcomp.runtime.selectors`,
:func:`~hf_tokcomp.runtime.selection.keep_count`). vLLM decides the number of placeholders of a request before
any image is encoded, so the count depends only on the image's size and ``token_keep``; which tokens are kept
depends on the image's content. Their original M-RoPE coordinates travel with the embeddings as three extra
channels ``(t, h, w)`` and are written into the request's positions by :func:`rewrite_positions` (vLLM's
``recompute_mrope_positions`` hook), so every kept token keeps the position the stock model gives it and the
text after an image keeps its unpruned positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..runtime.config import check_token_keep
from ..runtime.selection import keep_count
from ..runtime.selectors import SELECTORS, SegmentBatch

__all__ = [
    "TEXT_FREE_SELECTORS",
    "QUESTION_SELECTORS",
    "POSITION_CHANNELS",
    "PruneSettings",
    "kept_tokens",
    "with_positions",
    "split_positions",
    "prompt_positions",
    "rewrite_positions",
]

#: selectors that need no question text: they run where vLLM encodes an image, before the prompt is seen
TEXT_FREE_SELECTORS = ("uniform", "divprune")
#: selectors that read the question (the layer-0 features, :mod:`hf_tokcomp.vllm.question`)
QUESTION_SELECTORS = ("attention", "learned")
#: extra channels appended to each kept token's embedding: its (t, h, w) inside the image's grid
POSITION_CHANNELS = 3


@dataclass(frozen=True)
class PruneSettings:
    """The plugin's settings, read from the model's config (``hf_overrides`` keys or a saved hf_tokcomp config).

    Attributes:
        token_keep: share of each image's visual tokens kept, in (0, 1].
        selector: one of :data:`TEXT_FREE_SELECTORS` or :data:`QUESTION_SELECTORS`.
        compressor: the learned compressor's directory or Hub id (``selector="learned"`` only).
    """

    token_keep: float = 1.0
    selector: str = "uniform"
    compressor: str | None = None

    def __post_init__(self) -> None:
        check_token_keep(self.token_keep)
        allowed = (*TEXT_FREE_SELECTORS, *QUESTION_SELECTORS)
        if self.selector not in allowed:
            raise ValueError(
                f"`selector` of the vLLM plugin must be one of {list(allowed)}, got {self.selector!r}; DART and "
                "CDPruner run with the transformers classes (their vision-side inputs are not built here)."
            )
        if (self.selector == "learned") != (self.compressor is not None):
            raise ValueError(
                "`selector='learned'` needs `compressor` (the compressor's directory or Hub id) in `hf_overrides`, "
                f"and only it reads one; got selector={self.selector!r}, compressor={self.compressor!r}."
            )

    @property
    def question_aware(self) -> bool:
        """Whether the selection reads the prompt (then each image is scored against its own prompt)."""
        return self.selector in QUESTION_SELECTORS

    @classmethod
    def from_config(cls, config: object) -> PruneSettings:
        """The settings in ``config`` (attributes ``token_keep`` / ``selector``; defaults where absent, and
        ``selector='auto'`` - an hf_tokcomp checkpoint's default - is refused by name like any other)."""
        keep = getattr(config, "token_keep", None)
        selector = getattr(config, "selector", None)
        coverage = getattr(config, "token_coverage", None)
        if coverage:
            raise ValueError(
                f"`token_coverage` ({coverage!r}) is not supported by the vLLM plugin yet (its text-free selectors "
                "choose their own sets); drop it from `hf_overrides` / the saved config."
            )
        compressor = getattr(config, "compressor", None)
        return cls(1.0 if keep is None else keep, "uniform" if selector is None else selector, compressor)

    def count(self, n: int) -> int:
        """Kept tokens of an image of ``n`` merged tokens (the transformers classes' rule)."""
        return keep_count(self.token_keep, n)


@torch.no_grad()
def kept_tokens(
    embeds: torch.Tensor,
    grid: tuple[int, int, int],
    settings: PruneSettings,
    features: torch.Tensor | None = None,
    compressor: torch.nn.Module | None = None,
) -> torch.Tensor:
    """The kept token indices of one image, ascending.

    Args:
        embeds: ``(n, D)`` the image's merged visual tokens (the LLM-input embeddings).
        grid: ``(t, h, w)`` its merged-token grid, ``t * h * w == n``.
        settings: budget and selector.
        features: ``(C, n)`` its layer-0 features (:func:`~hf_tokcomp.vllm.question.question_features`), for
            the question-aware selectors.
        compressor: the learned compressor (``selector="learned"``).

    Returns:
        ``(k,)`` int64, ``k = settings.count(n)``.
    """
    n = embeds.shape[0]
    if grid[0] * grid[1] * grid[2] != n:
        raise ValueError(f"the grid {grid} holds {grid[0] * grid[1] * grid[2]} tokens, the embeddings {n}")
    k = settings.count(n)
    if k == n:
        return torch.arange(n, device=embeds.device)
    selector = SELECTORS[settings.selector]()
    if settings.question_aware and features is None:
        raise ValueError(f"selector {settings.selector!r} needs the image's layer-0 features")
    batch = SegmentBatch(
        features=torch.zeros(1, 1, n, device=embeds.device) if features is None else features[None].float(),
        mask=torch.ones(1, n, dtype=torch.bool, device=embeds.device),
        lengths=[n],
        grids=[tuple(grid)],
        embeds=embeds[None],
        compressor=compressor,
    )
    selection = selector.select(batch, [k])
    return selection.kept[0, :k]


def _exact_limit(dtype: torch.dtype) -> int:
    """The largest integer the dtype holds exactly (coordinates ride in the embeddings' dtype)."""
    return 2 ** (round(-math.log2(torch.finfo(dtype).eps)) + 1)


def with_positions(embeds: torch.Tensor, kept: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """``(n, D)`` embeddings -> ``(k, D + 3)``: the kept rows, each followed by its ``(t, h, w)`` in the grid."""
    t, h, w = grid
    if max(t, h, w) > _exact_limit(embeds.dtype):
        raise ValueError(
            f"an image grid of {grid} tokens does not fit exactly in {embeds.dtype} position channels (largest "
            f"{_exact_limit(embeds.dtype)}); serve with dtype='float32' or use smaller images (`max_pixels`)."
        )
    coords = torch.stack((kept // (h * w), (kept // w) % h, kept % w), dim=-1).to(embeds.dtype)
    return torch.cat((embeds[kept], coords), dim=-1)


def split_positions(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, D + 3)`` -> the embeddings ``(m, D)`` and the coordinates ``(m, 3)`` int64."""
    return chunk[:, :-POSITION_CHANNELS], chunk[:, -POSITION_CHANNELS:].round().long()


def prompt_positions(length: int, images: Sequence[tuple[int, int, tuple[int, int, int]]]) -> tuple[torch.Tensor, int]:
    """The M-RoPE positions of a pruned prompt when vLLM admits it (``get_mrope_input_positions``).

    Text tokens get the positions the stock model gives them in the UNPRUNED prompt: after an image, text
    continues past the image's whole grid (``base + max(t, h, w)``), however few of its tokens are kept. An
    image's placeholders get provisional positions (its first grid cells), replaced by :func:`rewrite_positions`
    once the kept tokens are known.

    Args:
        length: ``L``, the pruned prompt's length.
        images: per image in prompt order, ``(offset, placeholders, (t, h, w))``: where its placeholder run
            starts, how many placeholders it has, and its merged-token grid.

    Returns:
        ``(3, L)`` int64 positions and the rope delta (``max position + 1 - L``).
    """
    pieces, start, next_pos = [], 0, 0
    for offset, count, (t, h, w) in sorted(images):
        pieces.append(torch.arange(offset - start).expand(3, -1) + next_pos)
        base = next_pos + offset - start
        cells = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
        pieces.append(cells.reshape(3, -1)[:, :count] + base)
        next_pos, start = base + max(t, h, w), offset + count
    pieces.append(torch.arange(length - start).expand(3, -1) + next_pos)
    positions = torch.cat(pieces, dim=1)
    return positions, int(positions.max()) + 1 - length


def rewrite_positions(
    input_ids: Sequence[int] | torch.Tensor,
    chunks: Sequence[torch.Tensor],
    positions: torch.Tensor,
    num_computed_tokens: int,
    image_token_id: int,
) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """Write the original M-RoPE positions of this step's kept image tokens (vLLM's pruning hook).

    The step's image embeddings (``chunks``, in prompt order, with their coordinate channels) belong to the first
    placeholder tokens at or after ``num_computed_tokens``. Each such token's position is the position right
    after its image's ``<|vision_start|>`` token plus its ``(t, h, w)``: what the stock model gives that token.
    Text positions are left as they are (the unpruned ones, set when the request was admitted).

    Args:
        input_ids: ``(L,)`` the whole prompt.
        chunks: per image overlapping this step, ``(m_i, D + 3)``.
        positions: ``(3, L)`` int64 the request's positions (not modified).
        num_computed_tokens: prompt tokens already computed before this step.
        image_token_id: the placeholder id.

    Returns:
        the chunks without their coordinate channels, the new ``(3, L)`` positions, and the rope delta
        (``max position + 1 - L``).
    """
    if not chunks:  # vLLM calls the hook for every request of every step; most steps hold no image rows
        return [], positions, int(positions.max()) + 1 - len(input_ids)
    ids = torch.as_tensor(input_ids, device=positions.device)
    out = positions.clone()
    stripped, coords = [], []
    for chunk in chunks:
        embeds, xyz = split_positions(chunk)
        stripped.append(embeds)
        coords.append(xyz)
    xyz = torch.cat(coords).to(positions.device)
    placeholder = (ids == image_token_id).nonzero().flatten()
    starts = torch.ones_like(placeholder, dtype=torch.bool)
    starts[1:] = placeholder[1:] != placeholder[:-1] + 1
    run_start = placeholder[starts][torch.cumsum(starts.long(), 0) - 1]
    todo = placeholder >= num_computed_tokens
    where, first = placeholder[todo][: len(xyz)], run_start[todo][: len(xyz)]
    if len(where) != len(xyz):
        raise RuntimeError(
            f"{len(xyz)} image embeddings for {len(where)} remaining placeholders: the prompt and the encoder "
            "outputs disagree (report this with the prompt)"
        )
    base = out[0, first - 1] + 1  # the token before an image's run is its <|vision_start|> (a text token)
    out[:, where] = base[None, :] + xyz.T.to(out.dtype)
    delta = int(out.max()) + 1 - len(ids)
    return stripped, out, delta
