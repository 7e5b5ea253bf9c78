"""FLOP counting with ``torch.utils.flop_counter``, plus the formula it lacks for the CPU sdpa kernel.

On CPU, ``scaled_dot_product_attention`` runs ``aten._scaled_dot_product_flash_attention_for_cpu``, which the
counter has no formula for: the attention products would count as zero. :func:`flop_counter` registers the same
formula torch uses for the GPU kernels (``4 b h s_q s_k d``: scores and weighted sum; causal masking not
discounted, as for every sdpa kernel) before handing out a counter.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

__all__ = ["flop_counter"]

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the CPU sdpa kernel."""
    if _CPU_SDPA not in flop_registry:
        register_flop_formula(_CPU_SDPA)(_cpu_sdpa_flops)
    return FlopCounterMode(display=False)
