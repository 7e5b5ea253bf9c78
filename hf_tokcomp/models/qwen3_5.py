"""Qwen3.5 (dense and MoE), natively multimodal with hybrid attention, with input-stage visual token compression.

"Layer-0 attention" needs a definition here: Qwen3.5's first decoder layers are linear-attention (Gated DeltaNet)
layers, which have no softmax attention map. The features use the FIRST FULL-ATTENTION layer's input norm and
q / k projections (its gated q projection's query half, its q / k norms, its partial rotary embedding at the
original M-RoPE positions) applied to the LLM INPUT embeddings - the same cost as for the other families, and
still no decoder layer run in full. Segments, positions and decoding are Qwen3-VL's (frames separated by
timestamps are segments of their own); Qwen3.5 has no DeepStack features. Its vocabulary is new, so
``answer_start_ids`` has no default: set it to the tokenizer's ids of ``<|im_start|>assistant\n`` to train with
collators that label the whole conversation. The linear layers' recurrent state is
built by the stock forward on the compressed sequence it runs, so it only ever sees the kept tokens.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import Qwen3_5Config, Qwen3_5MoeConfig
from transformers import Qwen3_5ForConditionalGeneration as _StockQwen3_5
from transformers import Qwen3_5MoeForConditionalGeneration as _StockQwen3_5Moe
from transformers.generation import GenerationMixin

from ..hub.mixin import CompressorHubMixin
from ..runtime.config import answer_start_field, coverage_field, selector_field, token_keep_field
from ..runtime.mixin import compressed_forward
from ..runtime.registry import register_family
from .qwen3_vl import Qwen3VLCompressionMixin

__all__ = [
    "Qwen3_5CompressionConfig",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeCompressionConfig",
    "Qwen3_5MoeForConditionalGeneration",
]


@strict
class Qwen3_5CompressionConfig(Qwen3_5Config):
    """The stock Qwen3.5 config plus the compression fields (``token_keep``, ``answer_start_ids``, ``selector``)."""

    token_keep: float | int = token_keep_field()

    token_coverage: float | int = coverage_field()
    answer_start_ids: list[int] | None = answer_start_field()  # a new vocabulary: set from its tokenizer
    selector: str = selector_field()


@strict
class Qwen3_5MoeCompressionConfig(Qwen3_5MoeConfig):
    """The stock Qwen3.5-MoE config plus the compression fields."""

    token_keep: float | int = token_keep_field()

    token_coverage: float | int = coverage_field()
    answer_start_ids: list[int] | None = answer_start_field()  # a new vocabulary: set from its tokenizer
    selector: str = selector_field()


class Qwen3_5CompressionMixin(Qwen3VLCompressionMixin):
    """Qwen3-VL's plumbing without DeepStack; the features read the first full-attention layer."""

    def _tokcomp_decoder_layer0(self) -> nn.Module:
        text = self._tokcomp_text_model()
        kinds = text.config.layer_types
        if "full_attention" not in kinds:
            raise ValueError(
                f"{type(self).__name__}: no full-attention layer in `layer_types` {kinds}; the layer-0 features "
                "need one. Set `model.config.token_keep = 1.0` for this checkpoint."
            )
        return text.layers[kinds.index("full_attention")]


@register_family("qwen3_5")
class Qwen3_5ForConditionalGeneration(CompressorHubMixin, Qwen3_5CompressionMixin, _StockQwen3_5, GenerationMixin):
    """``transformers.Qwen3_5ForConditionalGeneration`` that keeps ``config.token_keep`` of each image's (each video
    frame's) visual tokens. Load with ``from_pretrained(base, token_keep=0.5)``."""

    config_class = Qwen3_5CompressionConfig
    config: Qwen3_5CompressionConfig

    forward = compressed_forward(_StockQwen3_5.forward)


@register_family("qwen3_5_moe")
class Qwen3_5MoeForConditionalGeneration(
    CompressorHubMixin, Qwen3_5CompressionMixin, _StockQwen3_5Moe, GenerationMixin
):
    """``transformers.Qwen3_5MoeForConditionalGeneration`` with the same compression as the dense model."""

    config_class = Qwen3_5MoeCompressionConfig
    config: Qwen3_5MoeCompressionConfig

    forward = compressed_forward(_StockQwen3_5Moe.forward)
