"""Make a CUDA-only torchvision importable next to the CPU torch (the vLLM CPU environment).

PyPI's torchvision 0.28 is a CUDA build: with ``torch==2.13.0+cpu`` its compiled ops fail to load (torchvision
catches that), and then ``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms``
and ``torchvision::qnms`` without checking that the ops exist, so ``import torchvision`` raises. transformers'
Qwen2-VL image processor, which vLLM imports, needs torchvision's pure-Python transforms only. Declaring the two
op schemas (no kernels) before torchvision is imported lets it import; calling ``nms`` then raises torch's "no
kernel" error instead of running. Nothing is done where the ops exist (a torchvision that matches torch).

The vLLM environment runs :func:`declare_missing_ops` at interpreter start from a ``.pth`` file
(``make test-vllm`` writes it), because vLLM imports transformers before any plugin code runs.
"""

from __future__ import annotations

import torch

__all__ = ["declare_missing_ops"]

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY: list[torch.library.Library] = []  # kept alive: the definitions live as long as the library object


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def declare_missing_ops() -> list[str]:
    """Declare the schemas of torchvision's ``nms`` / ``qnms`` where no build of torchvision defined them;
    returns the names declared (empty when torchvision's own ops are there, or on a second call)."""
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if missing:
        library = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            library.define(_SCHEMAS[name])
        _LIBRARY.append(library)
    return missing
