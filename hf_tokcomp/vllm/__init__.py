"""hf_tokcomp's vLLM plugin: serve Qwen2-VL / Qwen2.5-VL / Qwen3-VL with a share of each image's visual tokens pruned.

Installed with ``pip install hf_tokcomp[vllm]`` (its own environment: vLLM pins its transformers; ``make
test-vllm`` builds one), it registers, in every vLLM process (the ``vllm.general_plugins`` entry point
``tokcomp``), the architectures of :mod:`hf_tokcomp.vllm.models`. Choose one and the pruning with
``hf_overrides``::

    from vllm import LLM
    llm = LLM(
        model="Qwen/Qwen2-VL-7B-Instruct",
        hf_overrides={"architectures": ["TokCompQwen2VLForConditionalGeneration"],
                      "token_keep": 0.5, "selector": "divprune"},
        limit_mm_per_prompt={"video": 0},
    )

(``vllm serve MODEL --hf-overrides '{...}' --limit-mm-per-prompt '{"video": 0}'``.) ``selector`` is one of
:data:`~hf_tokcomp.vllm.pruning.TEXT_FREE_SELECTORS`, chosen where the image is encoded, so vLLM's encoder and
prefix caches may share an image's pruned tokens across requests (they do not depend on the question).
"""

from __future__ import annotations

import functools

from .pruning import TEXT_FREE_SELECTORS, PruneSettings

__all__ = ["register", "ARCHITECTURE_NAMES", "TEXT_FREE_SELECTORS", "PruneSettings"]


def _switch_on_pruning_hook(runner_class: type) -> None:
    """After ``load_model``, switch vLLM's pruning hook on for the plugin's models.

    vLLM calls a model's ``recompute_mrope_positions`` only when ``runner.is_multimodal_pruning_enabled``, which
    it sets from ``video_pruning_rate > 0`` (video EVS) on GPU and never on CPU (``CPUModelRunner.load_model``
    does not set it; docs/vllm-bug-cpu-pruning-flag.md). Idempotent: a class is wrapped once."""
    original = runner_class.load_model
    if getattr(original, "_tokcomp_wrapped", False):
        return

    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if getattr(self.get_model(), "tokcomp_pruning", False):
            self.is_multimodal_pruning_enabled = True
        return result

    load_model._tokcomp_wrapped = True
    runner_class.load_model = load_model


#: the plugin's architectures (``hf_overrides={"architectures": [...]}``), classes in :mod:`hf_tokcomp.vllm.models`
ARCHITECTURE_NAMES = (
    "TokCompQwen2VLForConditionalGeneration",
    "TokCompQwen2_5_VLForConditionalGeneration",
    "TokCompQwen3VLForConditionalGeneration",
)


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the architectures (idempotent, lazily by name)."""
    from vllm import ModelRegistry

    for arch in ARCHITECTURE_NAMES:
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, f"hf_tokcomp.vllm.models:{arch}")
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    _switch_on_pruning_hook(GPUModelRunner)
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # a vLLM build without the CPU runner
        return
    _switch_on_pruning_hook(CPUModelRunner)
