"""What ``generate`` needs around a compressed prompt: the caller's view of lengths, masks, streams and outputs.

The model generates from the COMPRESSED prompt, while the caller passed (and expects back) the full one. These
helpers translate between the two so that every option means what it means for the stock model.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

__all__ = [
    "PromptSwapStreamer",
    "check_generate_options",
    "infer_attention_mask",
    "lengths_as_new_tokens",
    "with_caller_prompt",
]


class PromptSwapStreamer(BaseStreamer):
    """Hands the caller's own prompt to the user's streamer instead of the compressed one."""

    def __init__(self, inner: BaseStreamer, prompt: torch.Tensor) -> None:
        self.inner, self.prompt, self.first = inner, prompt, True

    def put(self, value: torch.Tensor) -> None:
        if self.first:
            self.first, value = False, self.prompt.cpu()
        self.inner.put(value)

    def end(self) -> None:
        self.inner.end()


#: generate options that cannot run on a compressed prompt: what they need and why
_REFUSED = {
    "assistant_model": "speculative decoding verifies candidates with forwards that do not see the compressed prompt",
    "prompt_lookup_num_tokens": "prompt-lookup decoding verifies candidates with forwards that do not see the "
    "compressed prompt",
    "assistant_early_exit": "self-speculative decoding verifies candidates with forwards that do not see the "
    "compressed prompt",
    "prefill_chunk_size": "chunked prefill re-feeds the prompt by ids, but the compressed prompt exists only as "
    "embeddings",
}


def check_generate_options(generation_config: Any, kwargs: dict[str, Any]) -> None:
    """Refuse, naming the option, every ``generate`` option that would be silently wrong on a compressed prompt.

    Args:
        generation_config: the config ``generate`` will use (the caller's, else the model's).
        kwargs: the ``generate`` keyword arguments (which override the config).
    """
    for name, why in _REFUSED.items():
        value = kwargs.get(name, getattr(generation_config, name, None))
        if value is not None:
            shown = repr(value) if isinstance(value, (int, float, str)) else f"<{type(value).__name__}>"
            raise ValueError(
                f"`{name}`={shown} is not supported with token compression: {why}. Drop `{name}`, or set "
                "`model.config.token_keep = 1.0` to run the stock model."
            )
    if kwargs.get("use_cache", getattr(generation_config, "use_cache", True)) is False:
        raise ValueError(
            "`use_cache`=False is not supported with token compression: without a cache every step would re-run "
            "the prompt from its ids, but the compressed prompt exists only as embeddings. Use the default "
            "`use_cache=True` (the same tokens), or set `model.config.token_keep = 1.0`."
        )


def infer_attention_mask(input_ids: torch.Tensor, generation_config: Any) -> torch.Tensor:
    """``(B, L)`` what stock ``generate`` infers without an ``attention_mask``: padding where the pad id (distinct
    from the end-of-sequence ids) occurs, else all ones."""
    pad, eos = generation_config.pad_token_id, generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if pad is None or pad in eos or not bool((input_ids == pad).any()):
        return torch.ones_like(input_ids)
    return (input_ids != pad).long()


def lengths_as_new_tokens(kwargs: dict[str, Any], configs: list[Any], prompt_len: int) -> None:
    """An absolute ``max_length`` / ``min_length`` counts the caller's prompt; turn it (in ``kwargs``, in place)
    into new tokens so the compressed prompt generates exactly as many tokens as the stock model would.

    Args:
        kwargs: the ``generate`` keyword arguments.
        configs: the generation configs in stock precedence (the caller's, then the model's).
        prompt_len: the caller's prompt length ``L``.
    """
    for name in ("max", "min"):
        absolute, relative = f"{name}_length", f"{name}_new_tokens"
        if kwargs.get(relative) is not None or (
            kwargs.get(absolute) is None and any(getattr(c, relative, None) is not None for c in configs)
        ):
            continue
        value = kwargs.pop(absolute, None)
        for config in configs:
            value = value if value is not None else getattr(config, absolute, None)
        if value is not None and (name == "max" or value > 0):
            kwargs[relative] = max(value - prompt_len, 0)


def with_caller_prompt(out: Any, input_ids: torch.Tensor, compressed_len: int) -> Any:
    """Replace the compressed prompt at the start of the generated sequences with the caller's ``input_ids``
    (``(B, L)``; the sequences hold ``B x num_return_sequences`` rows)."""
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    prompt = input_ids.to(sequences.device).repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
    restored = torch.cat([prompt, sequences[:, compressed_len:]], dim=1)
    if isinstance(out, torch.Tensor):
        return restored
    out.sequences = restored
    return out
