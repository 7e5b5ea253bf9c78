"""The stock forward of an hf_tokcomp model on a batch that is already laid out (the teachers' occluded or full
copies): no selection runs, and each family hands over its own LLM inputs, so Qwen3-VL's DeepStack features reach
their decoder layers exactly as in a compressed prefill."""

from __future__ import annotations

from typing import Any

from .compression import CompressedBatch
from .mixin import TokenCompressionMixin

__all__ = ["stock_forward_on"]


def stock_forward_on(model: TokenCompressionMixin, batch: CompressedBatch, **kwargs: Any) -> Any:
    """The stock class's ``forward`` on ``batch`` (``(B, L')`` ids / embeddings / mask, original positions, side
    inputs), with ``kwargs`` (e.g. ``use_cache=False``) passed on; returns the stock output (``logits`` ``(B, L', V)``).
    """
    stock = super(TokenCompressionMixin, model).forward
    return stock(
        **model._tokcomp_llm_inputs(batch, generating=False),
        attention_mask=batch.attention_mask,
        position_ids=model._tokcomp_llm_positions(batch),
        **kwargs,
    )
