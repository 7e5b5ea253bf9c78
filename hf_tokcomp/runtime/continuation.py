"""Continuing from a cache that holds a COMPRESSED prompt (the multi-turn pattern, a manual decoding loop).

After a compressed prefill the KV cache holds ``Lc`` kept tokens where the caller's prompt had ``L``; the caller
keeps working with its own ids (``generate`` returns sequences that start with them). The cache therefore
carries a :class:`CompressedPrompt` record, and a later call on that cache is translated: the caller's first
``L`` ids / mask columns become the compressed ones, and the new tokens continue at the original positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CompressedPrompt", "attach_prompt", "prompt_of"]

_ATTRIBUTE = "tokcomp_compressed_prompt"


@dataclass
class CompressedPrompt:
    """What a compressed prefill put in the cache in place of the caller's prompt.

    Attributes:
        caller_ids: ``(B, L)`` the caller's prompt ids.
        input_ids: ``(B, Lc)`` the compressed prompt's ids (left padded).
        attention_mask: ``(B, Lc)`` its mask.
        positions: ``(*P, B, Lc)`` the position ids the LLM was given for it (original positions).
    """

    caller_ids: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor

    def rows(self, batch: int) -> CompressedPrompt:
        """The record for a cache of ``batch`` rows (beams / returned sequences repeat each sample)."""
        have = self.input_ids.shape[0]
        if batch == have:
            return self
        if batch % have:
            raise ValueError(f"the cache has {batch} rows, not a multiple of the compressed prompt's {have}")
        n = batch // have
        return CompressedPrompt(
            self.caller_ids.repeat_interleave(n, 0),
            self.input_ids.repeat_interleave(n, 0),
            self.attention_mask.repeat_interleave(n, 0),
            self.positions.repeat_interleave(n, -2),
        )

    def compressed_view(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The caller's ``(B, L + m)`` ids and mask (the prompt, then everything after it) as the cache sees
        them: ``(B, Lc + m)``.

        Raises:
            ValueError: ``input_ids`` does not start with the prompt the cache was filled from.
        """
        prompt_len = self.caller_ids.shape[1]
        caller = self.caller_ids.to(input_ids.device)
        if input_ids.shape[1] < prompt_len or not torch.equal(input_ids[:, :prompt_len], caller):
            raise ValueError(
                "`past_key_values` holds a compressed prompt, so `input_ids` must start with the ids of the call "
                f"that filled it ({prompt_len} tokens, as `generate` returned them), followed by the new tokens. "
                "Pass the returned sequences plus the new turn, or start from an empty cache."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ids = torch.cat([self.input_ids.to(input_ids.device), input_ids[:, prompt_len:]], dim=1)
        return ids, self.compressed_mask(attention_mask)

    def compressed_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The caller's ``(B, L + m)`` attention mask as the cache sees it: ``(B, Lc + m)``."""
        prompt_len = self.caller_ids.shape[1]
        return torch.cat([self.attention_mask.to(attention_mask), attention_mask[:, prompt_len:]], dim=1)

    def positions_after(self, offset: int, count: int) -> torch.Tensor:
        """``(*P, B, count)`` positions of the tokens ``offset .. offset + count - 1`` after the prompt: they
        continue from the prompt's largest real position on each row (its last text token's, whatever the
        padding side)."""
        real = self.attention_mask.to(self.positions.device).bool()
        last = self.positions.masked_fill(~real, torch.iinfo(self.positions.dtype).min).amax(-1, keepdim=True)
        step = torch.arange(offset + 1, offset + count + 1, device=self.positions.device)
        return last + step


def attach_prompt(cache: Any, prompt: CompressedPrompt) -> None:
    """Record on ``cache`` (a transformers ``Cache``) that it was filled from ``prompt``."""
    if cache is not None:
        setattr(cache, _ATTRIBUTE, prompt)


def prompt_of(cache: Any) -> CompressedPrompt | None:
    """The :class:`CompressedPrompt` a non-empty ``cache`` was filled from, or None.

    An EMPTY cache forgets its record (``cache.reset()``, or a fresh start on the same object), so a later prefill
    that does not compress is never translated. A cache cropped into the compressed prompt is refused.
    """
    prompt = getattr(cache, _ATTRIBUTE, None)  # checked first: a plain cache costs no tensor op (torch.compile)
    if prompt is None:
        return None
    length = cache.get_seq_length()
    if length == 0:
        setattr(cache, _ATTRIBUTE, None)
        return None
    if length < prompt.input_ids.shape[1]:
        raise ValueError(
            f"`past_key_values` was cropped to {length} tokens, inside the compressed prompt it holds "
            f"({prompt.input_ids.shape[1]} tokens): the dropped part cannot be re-fed by ids. Crop only tokens "
            "after the prompt, or start from an empty cache."
        )
    return prompt
