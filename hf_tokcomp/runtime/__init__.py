"""What runs inside every compressed forward / generate: the ``token_keep`` field, visual segments, layer-0
features, the learned :class:`TokenCompressor`, selection, compression, the family registry and the mixin.

Imports nothing else of hf_tokcomp: every other part depends on this one.
"""

from .compression import CompressedBatch, compress_batch
from .compressor import TokenCompressor, TokenCompressorConfig
from .config import check_token_keep, token_keep_field
from .mixin import MergedInputs, TokenCompressionMixin, compressed_forward
from .registry import FAMILIES, family_class, register_family
from .selection import SampleSelection, keep_count, select_top

__all__ = [
    "CompressedBatch",
    "FAMILIES",
    "MergedInputs",
    "SampleSelection",
    "TokenCompressionMixin",
    "TokenCompressor",
    "TokenCompressorConfig",
    "check_token_keep",
    "compress_batch",
    "compressed_forward",
    "family_class",
    "keep_count",
    "register_family",
    "select_top",
    "token_keep_field",
]
