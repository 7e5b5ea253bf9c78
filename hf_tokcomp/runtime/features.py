"""Layer-0 attention features: what the selection reads, computed without running any full layer.

For every visual segment, the rows are its instruction (:mod:`hf_tokcomp.runtime.instruction`: the user text of
its turn, before or after it); the value of a visual token is the layer-0 attention probability it gets from
those rows, averaged over the rows and over heads (or one channel per head). Only the layer-0 norm and the q/k
projections are evaluated, and q only on the instruction rows, so the cost is a small fraction of one decoder
layer; the main pass keeps whatever attention kernel the user chose.

A row BEFORE the segment cannot attend to it in a causal LLM, so the attention matrix alone says nothing about
it. The feature definition (:class:`FeatureSpec`) says how such rows are read:

- ``causal``: the model's own causal attention (rows before the segment contribute 0);
- ``noncausal``: every row's softmax over ALL prompt tokens (the same q / k, no causal mask);
- ``hybrid``: causal for rows after the segment, non-causal for rows before it;
- ``moved``: rows before the segment are read as if they followed it, in their order: the first at the position of
  the token after the segment, the next one further, each seeing the keys up to the segment's end and the earlier
  moved rows (the question as the model reads it when it follows the image); rows after it read as in ``causal``.

With ``+causal`` (``moved`` only) the ``causal`` read's channels follow the ``moved`` ones, so a learned compressor
sees both the re-positioned read and the model's own (which tells the prompt orders apart); on organism v2 it
measured no better than ``moved`` alone (benchmarks/results/compressor_seeds.md).

The definition is versioned (:data:`FEATURES_VERSION`): label shards and compressors record the name they were
made with (e.g. ``"v2:hybrid+heads"``) and a mismatch is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "FEATURES_VERSION",
    "FEATURE_MODES",
    "FeatureSpec",
    "DEFAULT_FEATURES",
    "answer_mask",
    "segment_features",
    "last_token_attention",
    "compressor_spec",
    "eval_mode",
    "ShiftedTables",
    "rotary_after",
]

#: ``(sample (S,), index (S,), offset (S, R)) -> (cos, sin)``, each ``(S, R, d)``: rotary tables of layer 0 at
#: the TEXT position ``offset`` steps after the position of token ``index`` of ``sample`` (``moved`` reads rows there)
ShiftedTables = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: the version of the feature definition; bumped whenever what a given name computes changes
FEATURES_VERSION = 2
FEATURE_MODES = ("causal", "noncausal", "hybrid", "moved")


@dataclass(frozen=True)
class FeatureSpec:
    """Which layer-0 features: ``mode`` (see the module docstring), ``per_head`` (one channel per attention
    head instead of their mean; the head mean is their average, what the training-free selection reads), and
    ``prompt_header`` (the generation prompt - the assistant's header that ends the prompt, where the answer is
    read - counts as rows too: its layer-0 attention does not depend on the question, a saliency prior; a
    template without turn markers, ``answer_start_ids`` None, counts every prompt token already) and ``split``
    (the generation prompt's rows are averaged into channels of their own, after the instruction's: the
    question's attention and the saliency prior stay apart for the learned compressor) and ``with_causal`` (``moved``
    only: the ``causal`` read's channels after the ``moved`` ones)."""

    mode: str = "hybrid"
    per_head: bool = False
    prompt_header: bool = False
    split: bool = False
    with_causal: bool = False

    def __post_init__(self) -> None:
        if self.mode not in FEATURE_MODES:
            raise ValueError(f"feature `mode` must be one of {FEATURE_MODES}, got {self.mode!r}")
        if self.split and not self.prompt_header:
            raise ValueError("feature flag '+split' (the generation prompt's rows as their own channels) needs '+gen'")
        if self.with_causal and self.mode != "moved":
            raise ValueError(
                f"feature flag '+causal' (the causal read's channels too) needs mode 'moved', got {self.mode!r}"
            )

    @property
    def name(self) -> str:
        """The versioned name recorded in label shards and compressor configs, e.g. ``"v2:hybrid+heads"``."""
        return (
            f"v{FEATURES_VERSION}:{self.mode}"
            + ("+gen" if self.prompt_header else "")
            + ("+heads" if self.per_head else "")
            + ("+split" if self.split else "")
            + ("+causal" if self.with_causal else "")
        )

    @classmethod
    def parse(cls, name: str | None, what: str = "features") -> FeatureSpec:
        """The spec a recorded ``name`` stands for; a name of another version (or none: made before the
        definition was versioned, v1 = rows after the last visual token only) is refused with both versions."""
        prefix = f"v{FEATURES_VERSION}:"
        if not isinstance(name, str) or not name.startswith(prefix):
            made = "v1 (unversioned: rows after the last visual token)" if name is None else repr(name)
            raise ValueError(
                f"{what} were made with layer-0 feature definition {made}, but this hf_tokcomp computes version "
                f"{FEATURES_VERSION} ({', '.join(repr(f'{prefix}{m}') for m in FEATURE_MODES)}, optionally '+gen', "
                "'+heads', '+split', '+causal'); "
                "features of different definitions are never mixed: re-label the data (`tokcomp label`) and retrain "
                "the compressor (`tokcomp train`)."
            )
        mode, *flags = name[len(prefix) :].split("+")
        if set(flags) - {"heads", "gen", "split", "causal"} or len(set(flags)) != len(flags):
            raise ValueError(
                f"{what}: unknown layer-0 feature definition {name!r} (flags: '+gen', '+heads', '+split', '+causal')"
            )
        try:
            return cls(mode, "heads" in flags, "gen" in flags, "split" in flags, "causal" in flags)
        except ValueError as err:
            raise ValueError(f"{what}: unknown layer-0 feature definition {name!r} ({err})") from err

    def channels(self, num_heads: int) -> int:
        """Feature channels per visual token for a model with ``num_heads`` attention heads."""
        return (num_heads if self.per_head else 1) * (2 if self.split else 1) * (2 if self.with_causal else 1)


#: what the runtime computes when no compressor asks for another definition, and what `tokcomp label` stores
#: unless told: the image's instruction rows read as the model reads a question that FOLLOWS the image (``moved``:
#: causal rows after it; rows before it re-positioned after it, in order), plus the generation prompt's rows. On
#: organism v2, 3,000 scenes asked both ways (benchmarks/results/instruction_features_parity.md), it equals the
#: causal read with the question after the image, and with the question first keeps more of the answer's evidence
#: at keep 0.25 (0.788 vs 0.727) and more answers (70.5 vs 66.6%); the non-causal read (``hybrid``) lost there.
DEFAULT_FEATURES = FeatureSpec("moved", prompt_header=True)


def rotary_after(
    rotary: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    embeds: torch.Tensor,
    positions: torch.Tensor,
) -> ShiftedTables:
    """:data:`ShiftedTables` from a rotary embedding ``rotary(x, position_ids) -> (cos, sin)`` and the sequence's
    ``(*P, B, L)`` position ids: every positional axis of a text token advances together (M-RoPE included)."""

    def tables(sample: torch.Tensor, index: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = positions[..., sample, index]  # (*P, S)
        return rotary(embeds[:1].expand(len(sample), -1, -1), start[..., None] + offset)

    return tables


def compressor_spec(compressor: nn.Module | None) -> FeatureSpec:
    """The feature definition a compressor was trained on: its config's ``features`` (a compressor config
    without one was made before the definition was versioned, and is refused); modules without a compressor
    config get :data:`DEFAULT_FEATURES`."""
    config = getattr(compressor, "config", None)
    if config is None or not hasattr(config, "in_channels"):
        return DEFAULT_FEATURES
    what = f"the compressor ({type(compressor).__name__}) was trained on features that"
    return FeatureSpec.parse(getattr(config, "features", None), what=what)


@contextmanager
def eval_mode(module: nn.Module | None) -> Iterator[None]:
    """Run ``module`` (and its children) in eval mode, then restore every submodule's own training flag: the
    selection must not depend on dropout (``model.train()``, LoRA dropout on layer 0)."""
    modules = [] if module is None else [m for m in module.modules() if m.training]
    for m in modules:  # plain attribute writes: nn.Module.train() would walk and re-set the whole tree
        object.__setattr__(m, "training", False)
    try:
        yield
    finally:
        for m in modules:
            object.__setattr__(m, "training", True)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, d); cos, sin: (B, T, r) with r <= d (partial rotary: the last d - r dims pass) -> (B, H, T, d)."""
    rot = cos.shape[-1]
    turned = x[..., :rot] * cos[:, None] + _rotate_half(x[..., :rot]) * sin[:, None]
    return turned if rot == x.shape[-1] else torch.cat([turned, x[..., rot:]], dim=-1)


def answer_mask(input_ids: torch.Tensor, labels: torch.Tensor, answer_start_ids: list[int] | None) -> torch.Tensor:
    """``(B, L)`` bool, True on the answer of a training sequence: the tokens the selection must never read.

    The answer starts after the LAST occurrence of ``answer_start_ids`` (the chat template's generation prompt,
    which ``generate`` sees at the end of its prompt), whatever ``labels`` marks: collators that label the whole
    conversation (TRL's vision-language collator) then select exactly what ``generate`` selects for the prompt.
    Where the sequence has no such ids (or they are None), the answer is the labelled tokens (``!= -100``).

    Args:
        input_ids: ``(B, L)``.
        labels: ``(B, L)``, -100 on tokens without a label.
        answer_start_ids: the ids that open the answer, or None.
    """
    labelled = labels != -100
    if not answer_start_ids or input_ids.shape[1] < len(answer_start_ids):
        return labelled
    header = torch.tensor(answer_start_ids, device=input_ids.device)
    windows = input_ids.unfold(1, header.numel(), 1)  # (B, L - h + 1, h)
    found = (windows == header).all(-1)
    seq = torch.arange(found.shape[1], device=input_ids.device)
    last = torch.where(found, seq, -1).amax(dim=1, keepdim=True)  # (B, 1) start of the last header, or -1
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    after_header = positions >= last + header.numel()
    return torch.where(last >= 0, after_header, labelled)


def _rows_block(
    rows: torch.Tensor, sample: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Every sample's rows (the union over its segments), packed to the left: ``(B, R)`` positions (padded with
    the last one), ``(B, R)`` validity, ``(S, R)`` which of its sample's packed rows each segment uses, ``(S,)``
    each segment's slot among its sample's segments, and the most segments of one sample (one host sync)."""
    union = torch.zeros(batch, rows.shape[1], device=rows.device).index_add_(0, sample, rows.float()) > 0
    n_rows = union.sum(dim=1)
    slot = (sample[None, :] == sample[:, None]).tril(-1).sum(dim=1)  # earlier segments of the same sample
    r_max, g_max = torch.stack([n_rows.max().clamp_min(1), slot.max() + 1]).tolist()
    order = torch.sort(union.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :r_max]
    valid = torch.arange(r_max, device=rows.device)[None, :] < n_rows[:, None]
    mine = rows.gather(1, order[sample]) & valid[sample]
    return order, valid, mine, slot, g_max


def _projections(
    hidden: torch.Tensor, layer: nn.Module, cos: torch.Tensor, sin: torch.Tensor, order: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's float32 ``(B, H, R, d)`` queries of the rows at positions ``order`` ``(B, R)``, BEFORE rotary, and
    its ``(B, H, L, d)`` keys of every token, rotated and repeated to the query heads: the layer's own norm, q / k
    projections (gated q, q / k norms) and rotary tables ``(B, L, d)``."""
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    head_dim, r_max = attn.head_dim, order.shape[1]
    h = layer.input_layernorm(hidden)
    h_rows = h.gather(1, order[..., None].expand(-1, -1, h.shape[-1]))
    q = attn.q_proj(h_rows)
    k = attn.k_proj(h).view(batch, length, -1, head_dim)
    heads = getattr(getattr(attn, "config", None), "num_attention_heads", None)
    if heads is not None and q.shape[-1] == 2 * heads * head_dim:  # Qwen3.5: q_proj also makes an output gate
        q = q.view(batch, r_max, heads, 2 * head_dim)[..., :head_dim]
    else:
        q = q.view(batch, r_max, -1, head_dim)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3: RMSNorm over each head's q and k before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float()
    k = _apply_rope(k, cos.float(), sin.float())
    return q, k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)


def _row_logits(
    hidden: torch.Tensor, layer: nn.Module, cos: torch.Tensor, sin: torch.Tensor, order: torch.Tensor
) -> torch.Tensor:
    """``(B, H, R, L)`` float32 layer-0 attention logits of the rows at positions ``order`` ``(B, R)`` against
    every key (see :func:`_projections`)."""
    q, k = _projections(hidden, layer, cos, sin, order)
    cos_rows = cos.gather(1, order[..., None].expand(-1, -1, cos.shape[-1])).float()
    sin_rows = sin.gather(1, order[..., None].expand(-1, -1, sin.shape[-1])).float()
    return torch.matmul(_apply_rope(q, cos_rows, sin_rows), k.transpose(-1, -2)) * layer.self_attn.scaling


@torch.no_grad()
def last_token_attention(
    hidden: torch.Tensor, layer: nn.Module, cos: torch.Tensor, sin: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``(B, L)`` float32: the attention the last position gives every key in ``layer`` (causal, padding-aware,
    averaged over heads; FastV's signal). Arguments as :func:`segment_features`."""
    length = hidden.shape[1]
    order = torch.full((hidden.shape[0], 1), length - 1, device=hidden.device)
    logits = _row_logits(hidden, layer, cos, sin, order)[:, :, 0]  # (B, H, L)
    visible = attention_mask.bool()[:, None, :]
    window = getattr(layer.self_attn, "sliding_window", None)
    if window:
        visible = visible & (torch.arange(length, device=hidden.device) > length - 1 - window)
    return torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0).mean(dim=1)


@torch.no_grad()
def segment_features(
    hidden: torch.Tensor,
    layer: nn.Module,
    cos: torch.Tensor,
    sin: torch.Tensor,
    prompt_mask: torch.Tensor,
    rows: torch.Tensor,
    sample: torch.Tensor,
    index: torch.Tensor,
    end: torch.Tensor,
    spec: FeatureSpec = DEFAULT_FEATURES,
    header: torch.Tensor | None = None,
    shifted: ShiftedTables | None = None,
) -> torch.Tensor:
    """Layer-0 attention each visual token of each segment gets from the segment's instruction rows.

    Args:
        hidden: ``(B, L, D)`` merged input embeddings (the LLM's input).
        layer: decoder layer 0; needs ``input_layernorm`` and ``self_attn`` with ``q_proj``, ``k_proj``,
            ``head_dim``, ``scaling`` (Llama/Qwen2 style), and ``q_norm`` / ``k_norm`` where it has them (Qwen3); a
            gated ``q_proj`` (query and gate per head, Qwen3.5) and partial rotary tables are handled.
        cos, sin: ``(B, L, head_dim)`` rotary tables at the original positions (M-RoPE already mixed in).
        prompt_mask: ``(B, L)`` 1 on real prompt tokens (the keys; padding and any answer 0).
        rows: ``(S, L)`` bool, each segment's instruction rows (see :mod:`hf_tokcomp.runtime.instruction`).
        sample: ``(S,)`` each segment's sample; ``index``: ``(S, N)`` its token positions (padding repeats the last);
            ``end``: ``(S,)`` the position after its last token.
        spec: the feature definition.
        header: ``(S, L)`` bool, the rows among ``rows`` that are the generation prompt
            (:func:`~hf_tokcomp.runtime.instruction.generation_prompt_rows`); needed by ``spec.split`` only.
        shifted: rotary tables at positions after a token (:data:`ShiftedTables`); needed by ``moved`` only.

    Returns:
        ``(S, C, N)`` float32, ``C`` = 1 (head mean) or the number of heads, twice that with ``split`` (the
        instruction's channels, then the generation prompt's) and twice again with ``with_causal`` (the ``moved``
        channels, then the ``causal`` ones). Keys are padding-aware and, like the model's layer 0, limited to its
        sliding window when it has one.
    """
    order, row_valid, mine, slot, g_max = _rows_block(rows, sample, hidden.shape[0])
    groups = mine[:, None, :]  # (S, G, R) the rows each channel group averages over
    if spec.split:
        if header is None:
            raise ValueError(f"feature definition {spec.name!r} needs the generation prompt's rows (`header`)")
        in_header = header.gather(1, order[sample]) & mine
        groups = torch.stack([mine & ~in_header, in_header], dim=1)
    weights = groups.float() / groups.sum(dim=2, keepdim=True).clamp_min(1)  # (S, G, R) means over the rows
    window = getattr(layer.self_attn, "sliding_window", None)
    if spec.mode == "moved":
        if shifted is None:
            raise ValueError(f"feature definition {spec.name!r} needs rotary tables after the segment (`shifted`)")
        slots = (slot, g_max)
        moved = _moved(hidden, layer, cos, sin, prompt_mask, order, mine, sample, slots, index, end, window, shifted)
        grouped = torch.einsum("shnr,sgr->sghn", moved, weights)
        if spec.with_causal:
            causal = _masked_read(hidden, layer, cos, sin, prompt_mask, order, row_valid, sample, index, end, "causal")
            grouped = torch.cat([grouped, torch.einsum("shrn,sgr->sghn", causal, weights)], dim=1)
        return _channels(grouped, spec)
    chosen = _masked_read(hidden, layer, cos, sin, prompt_mask, order, row_valid, sample, index, end, spec.mode)
    return _channels(torch.einsum("shrn,sgr->sghn", chosen, weights), spec)


def _masked_read(
    hidden: torch.Tensor,
    layer: nn.Module,
    cos: torch.Tensor,
    sin: torch.Tensor,
    prompt_mask: torch.Tensor,
    order: torch.Tensor,
    row_valid: torch.Tensor,
    sample: torch.Tensor,
    index: torch.Tensor,
    end: torch.Tensor,
    mode: str,
) -> torch.Tensor:
    """``(S, H, R, N)``: the attention each segment's visual tokens get from its sample's packed rows (``order``,
    ``row_valid`` ``(B, R)``, see :func:`_rows_block`) read in ``mode`` ``causal`` / ``noncausal`` / ``hybrid`` at
    their own positions. Arguments as :func:`segment_features`."""
    length = hidden.shape[1]
    keys = torch.arange(length, device=hidden.device)[None, None, :]
    window = getattr(layer.self_attn, "sliding_window", None)
    logits = _row_logits(hidden, layer, cos, sin, order)  # (B, H, R, L)
    visible = prompt_mask.bool()[:, None, :] & row_valid[:, :, None]  # (B, R, L)
    if window:
        visible &= (keys - order[:, :, None]).abs() < window
    probs = {}
    if mode in ("causal", "hybrid"):
        causal = visible & (keys <= order[:, :, None])
        probs["causal"] = torch.softmax(logits.masked_fill(~causal[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
    if mode in ("noncausal", "hybrid"):
        probs["noncausal"] = torch.softmax(logits.masked_fill(~visible[:, None], float("-inf")), dim=-1).nan_to_num(0.0)

    def at_segments(p: torch.Tensor) -> torch.Tensor:  # (B, H, R, L) -> (S, H, R, N)
        p = p[sample]
        return p.gather(3, index[:, None, None, :].expand(-1, p.shape[1], p.shape[2], -1))

    if mode == "hybrid":
        after = order[sample] >= end[:, None]  # (S, R) rows after the segment read it causally
        return torch.where(after[:, None, :, None], at_segments(probs["causal"]), at_segments(probs["noncausal"]))
    return at_segments(probs[mode])


def _channels(grouped: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """``(S, G, H, N)`` row-group means per head -> ``(S, C, N)``: per head or their mean, group after group."""
    grouped = grouped if spec.per_head else grouped.mean(dim=2, keepdim=True)
    return grouped.flatten(1, 2)


def _moved(
    hidden: torch.Tensor,
    layer: nn.Module,
    cos: torch.Tensor,
    sin: torch.Tensor,
    prompt_mask: torch.Tensor,
    order: torch.Tensor,
    mine: torch.Tensor,
    sample: torch.Tensor,
    slots: tuple[torch.Tensor, int],
    index: torch.Tensor,
    end: torch.Tensor,
    window: int | None,
    shifted: ShiftedTables,
) -> torch.Tensor:
    """``(S, H, N, R)``: the ``moved`` read of each segment's packed rows (``order`` ``(B, R)``, ``mine`` ``(S, R)``;
    ``slots``: each segment's slot among its sample's segments and their most, see :func:`_rows_block`).
    Rows after the segment read it causally from their own positions. The ``j``-th row before it is read from the
    text position ``j`` steps after the token at ``end`` (the token after the segment; the last token if the
    segment ends the prompt), seeing the keys up to ``end`` except the later rows before the segment. Arguments
    as :func:`segment_features`."""
    q, k = _projections(hidden, layer, cos, sin, order)
    at = end.clamp(max=hidden.shape[1] - 1)  # (S,)
    rows = order[sample]  # (S, R) positions
    before = (rows < end[:, None]) & mine
    rank = (before.cumsum(dim=1) - 1).clamp_min(0)  # rows are packed in position order
    moved_cos, moved_sin = shifted(sample, at, rank)  # (S, R, d)
    own_cos, own_sin = cos[sample[:, None], rows], sin[sample[:, None], rows]  # (S, R, d)
    row_cos = torch.where(before[..., None], moved_cos.to(own_cos.dtype), own_cos).float()
    row_sin = torch.where(before[..., None], moved_sin.to(own_sin.dtype), own_sin).float()
    # one matmul per sample against its keys (never copied per segment): its segments' rows side by side
    slot, g_max = slots
    queries = q.new_zeros(q.shape[0], q.shape[1], g_max, *q.shape[2:])  # (B, H, G, R, d)
    queries[sample, :, slot] = _apply_rope(q[sample], row_cos, row_sin)
    logits = torch.matmul(queries.flatten(2, 3), k.transpose(-1, -2)).unflatten(2, queries.shape[2:4])
    logits = logits[sample, :, slot]  # (S, H, R, L)
    keys = torch.arange(hidden.shape[1], device=hidden.device)[None, None, :]
    key_rank = torch.full_like(prompt_mask, -1, dtype=torch.long)[sample]  # (S, L) rank of a moved row's key
    key_rank.scatter_reduce_(1, torch.where(before, rows, 0), torch.where(before, rank, -1), reduce="amax")
    reach = torch.where(before, at[:, None], rows)  # (S, R) the last key position each row may see
    visible = prompt_mask.bool()[sample][:, None, :] & (keys <= reach[:, :, None])
    visible &= ~(before[:, :, None] & (key_rank[:, None, :] > rank[:, :, None]))  # not the later moved rows
    if window:
        visible &= (reach[:, :, None] + torch.where(before, rank, 0)[:, :, None] - keys) < window
    logits = logits * layer.self_attn.scaling
    probs = torch.softmax(logits.masked_fill(~visible[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
    picked = probs.gather(3, index[:, None, None, :].expand(-1, probs.shape[1], probs.shape[2], -1))  # (S, H, R, N)
    return picked.transpose(2, 3)
