"""Question-aware selection where vLLM encodes an image: the layer-0 features of the image's tokens, from its prompt.

vLLM encodes an image without its prompt, so the plugin's processor hands each image the prompt's token ids as an
extra item field (``tokcomp_context``, see :mod:`hf_tokcomp.vllm.models`), and the model computes here what the
transformers classes compute (:func:`~hf_tokcomp.runtime.features.segment_features` on the LLM input): the
prompt with every image expanded to its merged tokens, the text embeddings, the image's own embeddings in its
place, the stock M-RoPE positions of the unpruned prompt, the instruction rows of the image's turn
(:mod:`hf_tokcomp.runtime.instruction`), and layer 0's norm and q / k projections. Only those projections run
(no decoder layer), on the prompt's tokens. Plain torch: no vLLM import, so it is tested in the main environment
against the transformers classes.

Several images per prompt: the keys of an instruction row include every earlier token of the prompt, other
images' tokens too, and vLLM may encode a prompt's images in different batches, so each image's item carries all
of the prompt's pixels and the model encodes the others again (:mod:`hf_tokcomp.vllm.models`); each image is one
segment, scored against the instruction of its own turn, as in the transformers classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..runtime.features import FeatureSpec, rotary_after, segment_features
from ..runtime.instruction import TurnLayout, generation_prompt_rows, segment_instruction_rows
from .pruning import prompt_positions

__all__ = ["Layer0", "expand_prompt", "mrope_tables", "question_features"]


@dataclass
class Layer0:
    """What the features read of the LLM's decoder layer 0, in the shape
    :func:`~hf_tokcomp.runtime.features.segment_features` reads it (``layer.input_layernorm``,
    ``layer.self_attn.q_proj`` / ``k_proj`` / ``head_dim`` / ``scaling``).

    Attributes:
        norm: ``(..., D) -> (..., D)`` the layer's input norm.
        query, key: ``(..., D) -> (..., heads * head_dim)`` / ``(..., kv_heads * head_dim)`` its projections.
        head_dim, scaling: of its attention.
        q_norm, k_norm: ``(..., head_dim) -> (..., head_dim)`` the per-head norms before RoPE (Qwen3), or None.
    """

    norm: Callable[[torch.Tensor], torch.Tensor]
    query: Callable[[torch.Tensor], torch.Tensor]
    key: Callable[[torch.Tensor], torch.Tensor]
    head_dim: int
    scaling: float
    q_norm: Callable[[torch.Tensor], torch.Tensor] | None = None
    k_norm: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def input_layernorm(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.norm

    @property
    def self_attn(self) -> Layer0:
        return self

    def q_proj(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(x)

    def k_proj(self, x: torch.Tensor) -> torch.Tensor:
        return self.key(x)


def expand_prompt(prompt: Sequence[int], image_token_id: int, counts: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """The prompt with image ``j``'s placeholder run (one id, or any number) replaced by ``counts[j]`` ids.

    Returns:
        ``(L,)`` int64 ids and each image's first position.
    """
    ids: list[int] = []
    starts: list[int] = []
    i = 0
    while i < len(prompt):
        if prompt[i] == image_token_id:
            if len(starts) == len(counts):
                raise ValueError(f"the prompt holds more image placeholder runs than the {len(counts)} image(s) given")
            while i < len(prompt) and prompt[i] == image_token_id:
                i += 1
            starts.append(len(ids))
            ids += [image_token_id] * counts[len(starts) - 1]
        else:
            ids.append(int(prompt[i]))
            i += 1
    if len(starts) != len(counts):
        raise ValueError(f"the prompt holds {len(starts)} image placeholder run(s) for {len(counts)} image(s)")
    return torch.tensor(ids, dtype=torch.long), starts


def mrope_tables(
    positions: torch.Tensor, head_dim: int, theta: float, sections: Sequence[int], interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, L, head_dim)`` cos / sin of Qwen2-VL's M-RoPE at ``positions`` ``(3, L)``: each frequency band
    takes the temporal, height or width position as ``sections`` (e.g. [16, 24, 24]) say, as the stock model.
    ``interleaved`` (Qwen3-VL): the bands cycle t, h, w over the first ``3 * sections[1..2]`` frequencies
    instead of lying in three blocks."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (3, L, d / 2)
    if interleaved:
        mixed = freqs[0].clone()
        for axis in (1, 2):  # height on frequencies 1, 4, 7, ...; width on 2, 5, 8, ...
            band = slice(axis, 3 * sections[axis], 3)
            mixed[..., band] = freqs[axis][..., band]
        emb = torch.cat((mixed, mixed), dim=-1)[None]
        return emb.cos(), emb.sin()
    emb = torch.cat((freqs, freqs), dim=-1)  # (3, L, d)
    parts = [*sections, *sections]
    cos = torch.cat([c[i % 3] for i, c in enumerate(emb.cos().split(parts, dim=-1))], dim=-1)
    sin = torch.cat([s[i % 3] for i, s in enumerate(emb.sin().split(parts, dim=-1))], dim=-1)
    return cos[None], sin[None]


@torch.no_grad()
def question_features(
    images: Sequence[tuple[torch.Tensor, tuple[int, int, int]]],
    own: int,
    prompt: Sequence[int],
    image_token_id: int,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    layer0: Layer0,
    rope: tuple[float, Sequence[int], bool],
    layout: TurnLayout,
    spec: FeatureSpec,
) -> torch.Tensor:
    """``(C, n)`` float32 layer-0 features of image ``own`` of a prompt, as the transformers classes compute them.

    Args:
        images: every image of the prompt in prompt order: ``(n_j, D')`` its merged visual tokens (the vision
            tower's output; Qwen3-VL's deepstack channels after the first ``D`` are not read) and its
            ``(t, h, w)`` merged-token grid.
        own: the index of the image whose features are returned (its segment).
        prompt: the prompt's token ids (each image as one placeholder run).
        image_token_id: the placeholder id.
        embed_tokens: ``(L,) -> (L, D)`` the LLM's input embedding.
        layer0: the LLM's layer 0 (see :class:`Layer0`).
        rope: ``(theta, mrope_section, interleaved)`` of the text config.
        layout: the chat template's turn markers (:func:`~hf_tokcomp.runtime.instruction.turn_layout`).
        spec: the feature definition (the learned compressor's own, or the default).
    """
    embeds = images[own][0]
    counts = [e.shape[0] for e, _ in images]
    ids, starts = expand_prompt(prompt, image_token_id, counts)
    ids = ids.to(embeds.device)
    spans = [(start, n, grid) for start, n, (_, grid) in zip(starts, counts, images, strict=True)]
    positions = prompt_positions(len(ids), spans)[0].to(embeds.device)
    hidden = embed_tokens(ids).to(embeds.dtype).clone()
    visual = torch.zeros(1, len(ids), dtype=torch.bool, device=embeds.device)
    for start, (e, _) in zip(starts, images, strict=True):
        hidden[start : start + e.shape[0]] = e[:, : hidden.shape[-1]]
        visual[0, start : start + e.shape[0]] = True
    cos, sin = mrope_tables(positions, layer0.head_dim, *rope)
    mask = torch.ones(1, len(ids), dtype=torch.long, device=embeds.device)
    sample = torch.zeros(1, dtype=torch.long, device=embeds.device)
    start, n = starts[own], counts[own]
    first, end = torch.tensor([start], device=embeds.device), torch.tensor([start + n], device=embeds.device)
    rows = segment_instruction_rows(ids[None], visual, mask, sample, first, end, layout, spec.prompt_header)
    index = torch.arange(start, start + n, device=embeds.device)[None]
    header = generation_prompt_rows(ids[None], mask, sample, layout) if spec.split else None

    def text_tables(x: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # at: (3, S, R)
        cos, sin = mrope_tables(at.flatten(1), layer0.head_dim, *rope)
        return cos.view(*at.shape[1:], -1).to(x.dtype), sin.view(*at.shape[1:], -1).to(x.dtype)

    shifted = rotary_after(text_tables, hidden[None], positions[:, None]) if spec.mode == "moved" else None
    features = segment_features(hidden[None], layer0, cos.to(embeds.dtype), sin.to(embeds.dtype), mask, rows,
                                sample, index, end, spec, header, shifted)  # fmt: skip
    return features[0]
