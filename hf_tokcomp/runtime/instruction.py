"""Which tokens are a visual segment's instruction: the user text of the turn it belongs to, wherever it stands.

A chat is a sequence of turns. Where the family's chat template has turn markers (``config.answer_start_ids``,
the assistant's generation prompt, is itself a turn header: ``<|im_start|> assistant \\n`` for Qwen), a turn
starts at its first id (``<|im_start|>``), its header is ``len(answer_start_ids)`` tokens long (the start id, the
role, the newline), and it ends at the end-of-turn id (``<|im_end|>``, the text config's ``eos_token_id``). The
instruction of a segment is then every token of ITS turn that is

- real (not padding) and in the prompt (never the answer: labels or generated tokens),
- not a visual token, not a template token (turn start / end, vision start / end, padding ids),
- not in the turn header, and not after the turn's end,

before or after the segment. Several images in one turn share it; an image from an earlier turn is scored
against the turn it came with; assistant turns (their header equals ``answer_start_ids``) and system turns are
never anyone's instruction. Without turn markers (``answer_start_ids`` None) the whole prompt is one turn.

Fallbacks, so a prompt always has rows: a segment whose turn holds no text (an image alone in a turn) uses every
instruction token of the sample; a sample without any (a bare image, e.g. captioning) uses the real tokens after
the segment (the generation prompt), as the original method does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TurnLayout", "turn_layout", "segment_instruction_rows", "generation_prompt_rows"]


@dataclass(frozen=True)
class TurnLayout:
    """The chat template's turn markers, as far as the instruction needs them.

    Attributes:
        turn_start: the id that opens a turn, or None (no turn markers: the prompt is one turn).
        header_length: tokens of a turn header, the start id included.
        assistant_header: the ids of the assistant's header (its turns are never instruction), or None.
        turn_end: ids that close a turn (tokens from there to the next turn start are template).
        template: ids that are never instruction (padding, vision start / end, turn start / end, ...).
    """

    turn_start: int | None
    header_length: int
    assistant_header: tuple[int, ...] | None
    turn_end: tuple[int, ...]
    template: tuple[int, ...]

    @classmethod
    def from_ids(
        cls, answer_start_ids: list[int] | tuple[int, ...] | None, eos: int | list[int] | None, template: list[int]
    ) -> TurnLayout:
        """The layout a family's ``answer_start_ids`` imply (see the module docstring)."""
        ends = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        if not answer_start_ids:
            return cls(None, 0, None, ends, tuple(sorted(set(template) | set(ends))))
        start = int(answer_start_ids[0])
        ids = set(template) | set(ends) | {start}
        return cls(start, len(answer_start_ids), tuple(int(i) for i in answer_start_ids), ends, tuple(sorted(ids)))


def _token_id(config, name: str) -> int | list[int] | None:
    """``name`` (e.g. ``eos_token_id``) of the text config, else of the model config (Qwen3-VL's text config
    declares no end-of-sequence id), else None."""
    for source in (config.get_text_config(), config):
        value = getattr(source, name, None)
        if value is not None:
            return value
    return None


def turn_layout(config) -> TurnLayout:
    """A model config's turn markers: ``answer_start_ids``, the end-of-sequence id (text config first), and the
    config's vision start / end and padding ids as template."""
    names = ("vision_start_token_id", "vision_end_token_id", "image_start_token_id", "image_end_token_id")
    template = [getattr(config, n, None) for n in names] + [_token_id(config, "pad_token_id")]
    template = [int(t) for t in template if isinstance(t, int)]
    return TurnLayout.from_ids(getattr(config, "answer_start_ids", None), _token_id(config, "eos_token_id"), template)


def _turn_text(
    input_ids: torch.Tensor, candidates: torch.Tensor, layout: TurnLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L)`` turn index of every position (0 before the first turn) and ``(B, L)`` bool instruction text:
    ``candidates`` minus template ids, turn headers, what follows a turn's end, and assistant turns."""
    device = input_ids.device
    text = candidates & ~torch.isin(input_ids, torch.tensor(layout.template, device=device, dtype=input_ids.dtype))
    if layout.turn_start is None:
        return torch.zeros_like(input_ids), text
    starts = input_ids == layout.turn_start
    turn = starts.long().cumsum(dim=1)
    positions = torch.arange(input_ids.shape[1], device=device)[None, :].expand_as(input_ids)
    turn_pos = torch.where(starts, positions, -1).cummax(dim=1).values  # where the current turn starts, or -1
    text &= ~((turn_pos >= 0) & (positions - turn_pos < layout.header_length))  # the header
    if layout.turn_end:
        ends = torch.isin(input_ids, torch.tensor(layout.turn_end, device=device, dtype=input_ids.dtype)).long()
        before = ends.cumsum(dim=1) - ends  # end marks strictly before each position
        at_turn_start = before.gather(1, turn_pos.clamp_min(0)) * (turn_pos >= 0)
        text &= (before - at_turn_start) == 0  # nothing after the turn's end counts
    if layout.assistant_header is not None and input_ids.shape[1] >= len(layout.assistant_header):
        header = torch.tensor(layout.assistant_header, device=device, dtype=input_ids.dtype)
        found = (input_ids.unfold(1, header.numel(), 1) == header).all(-1)  # an assistant header starts here
        found = torch.nn.functional.pad(found, (0, header.numel() - 1)).long()
        # one slot per possible turn (at most one per position): no host sync to count them
        assistant = torch.zeros(input_ids.shape[0], input_ids.shape[1] + 1, dtype=torch.long, device=device)
        assistant = assistant.scatter_reduce(1, turn, found, reduce="amax")  # (B, turns) 1 on assistant turns
        text &= assistant.gather(1, turn) == 0
    return turn, text


def segment_instruction_rows(
    input_ids: torch.Tensor,
    visual_mask: torch.Tensor,
    prompt_mask: torch.Tensor,
    sample: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    layout: TurnLayout,
    prompt_header: bool = False,
) -> torch.Tensor:
    """The instruction rows of every visual segment (see the module docstring); with ``prompt_header``, also
    the generation prompt (the last assistant header of the prompt) of the segment's sample.

    Args:
        input_ids: ``(B, L)``.
        visual_mask: ``(B, L)`` bool, True on visual tokens.
        prompt_mask: ``(B, L)`` 1 on real prompt tokens (padding and the answer 0).
        sample, start, end: ``(S,)`` each segment's sample, first position and end (exclusive).
        layout: the chat template's turn markers.

    Returns:
        ``(S, L)`` bool, True on the rows of each segment.

    Raises:
        ValueError: a segment with no row at all (nothing but visual tokens and padding in its prompt).
    """
    prompt = prompt_mask.bool()
    turn, text = _turn_text(input_ids, prompt & ~visual_mask, layout)
    seg_turn = turn[sample, start]  # (S,)
    rows = text[sample] & (turn[sample] == seg_turn[:, None])
    anywhere = text[sample]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    after = prompt[sample] & ~visual_mask[sample] & (positions >= end[:, None])
    rows = torch.where(rows.any(1, keepdim=True), rows, anywhere)
    rows = torch.where(rows.any(1, keepdim=True), rows, after)
    if prompt_header:
        rows |= generation_prompt_rows(input_ids, prompt, sample, layout)
    missing = ~rows.any(1)
    if missing.any():
        raise ValueError(
            f"visual segment(s) of sample(s) {sorted(set(sample[missing].tolist()))} have no instruction: the prompt "
            "holds no text besides the visual tokens (with `labels`, the answer never counts: it starts after "
            "`config.answer_start_ids` where the sequence holds them, else it is every labelled token). Add the "
            "question or the chat template's generation prompt, or set `token_keep=1.0`."
        )
    return rows


def generation_prompt_rows(
    input_ids: torch.Tensor, prompt_mask: torch.Tensor, sample: torch.Tensor, layout: TurnLayout
) -> torch.Tensor:
    """``(S, L)`` bool: the generation prompt of each segment's sample (the last assistant header among its prompt
    tokens ``prompt_mask`` ``(B, L)``), the rows ``prompt_header`` adds; all False where the template has no
    assistant header or the prompt holds none. ``input_ids`` ``(B, L)``, ``sample`` ``(S,)`` as in
    :func:`segment_instruction_rows`."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    if layout.assistant_header is None or input_ids.shape[1] < len(layout.assistant_header):
        return torch.zeros(sample.shape[0], input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
    header = torch.tensor(layout.assistant_header, device=input_ids.device, dtype=input_ids.dtype)
    n = header.numel()
    found = (input_ids.unfold(1, n, 1) == header).all(-1) & prompt_mask.bool()[:, n - 1 :]  # (B, L - n + 1)
    seq = torch.arange(found.shape[1], device=input_ids.device)
    last = torch.where(found, seq, -1).amax(dim=1, keepdim=True)  # the last header in the prompt, or -1
    return ((positions >= last) & (positions < last + n) & (last >= 0))[sample]
