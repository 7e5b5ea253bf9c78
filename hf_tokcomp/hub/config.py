"""``TokCompConfig``: the config.json of a compressor-only repo (small weights here, base weights elsewhere)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

__all__ = ["TokCompConfig"]


class TokCompConfig(PreTrainedConfig):
    """What a compressor-only repo records, so it can rebuild the compressed model from the base repo.

    Args:
        base_model_name_or_path: Hub id or path of the base MLLM (its weights are loaded from there).
        base_model_revision: the base revision the compressor was trained on (None for local bases).
        base_model_type: ``model_type`` of the base (chooses the model class, checked at load).
        base_hidden_size: hidden size of the base LLM (checked at load).
        token_keep: default fraction of visual tokens kept (overridable with ``token_keep=``).
        compressor: the :class:`TokenCompressorConfig` settings of the stored weights.
    """

    model_type = "hf_tokcomp"

    def __init__(
        self,
        base_model_name_or_path: str | None = None,
        base_model_revision: str | None = None,
        base_model_type: str | None = None,
        base_hidden_size: int | None = None,
        token_keep: float = 0.5,
        compressor: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self.base_model_type = base_model_type
        self.base_hidden_size = base_hidden_size
        self.token_keep = token_keep
        self.compressor = dict(compressor or {})
        super().__init__(**kwargs)
