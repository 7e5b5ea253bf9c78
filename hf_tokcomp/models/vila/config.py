"""``VilaConfig``: the root ``config.json`` of a VILA1.5 checkpoint (``model_type "llava_llama"``) as a typed config.

The original layout nests three configs (``llm_cfg``, ``vision_tower_cfg``, ``mm_projector_cfg``); the first two
become stock transformers configs (``LlamaConfig``, ``SiglipVisionConfig``). Unsupported variants (the 40b's
InternViT tower, the S2 multi-scale tower, other projectors) are refused here with a message naming what is missing.
"""

from __future__ import annotations

from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ...runtime.config import answer_start_field, coverage_field, selector_field, token_keep_field

__all__ = ["VilaConfig", "IMAGE_TOKEN_ID", "VIDEO_TOKEN_ID", "TOKEN_ORDERS"]

#: placeholder id of an image token in ``input_ids`` (the original code's ``IMAGE_TOKEN_INDEX``; never embedded)
IMAGE_TOKEN_ID = -200
#: placeholder id of a video-frame token (frames are images in VILA1.5; the id only marks them as a video)
VIDEO_TOKEN_ID = -201
#: "column_major": VILA1.5's order of the 2x2-merged tokens (what its weights were trained with);
#: "row_major": the order of the later NVILA release
TOKEN_ORDERS = ("column_major", "row_major")

_SUPPORTED = "the SigLIP-tower VILA1.5 checkpoints (VILA1.5-3b, Llama-3-VILA1.5-8b(-Fix), VILA1.5-13b)"


def _check_vision_tower(cfg: Any) -> None:
    """Refuse vision towers transformers has no class for (the 40b's InternViT-6B)."""
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else getattr(cfg, "model_type", None)
    if isinstance(cfg, dict) and model_type not in (None, "siglip_vision_model"):
        arch = (cfg.get("architectures") or ["?"])[0]
        raise ValueError(
            f"`vision_tower_cfg` has model_type {model_type!r} ({arch}); hf_tokcomp's VILA port needs a SigLIP tower "
            "(model_type 'siglip_vision_model'). VILA1.5-40b's InternViT-6B tower is custom code with no "
            f"transformers class and is not supported. Supported: {_SUPPORTED}."
        )


@strict
class VilaConfig(PreTrainedConfig):
    """VILA1.5: a SigLIP tower, the ``mlp_downsample`` projector and a Llama LLM, plus ``token_keep``.

    Attributes:
        llm_cfg: the Llama config (``llm/config.json``).
        vision_tower_cfg: the SigLIP vision config (``vision_tower/config.json``).
        mm_projector_cfg: ``{"mm_projector_type": "mlp_downsample", ...}`` (``mm_projector/config.json``).
        hidden_size, mm_hidden_size: LLM and vision widths (checked against the sub-configs).
        mm_vision_select_layer: which ``hidden_states`` entry of the tower feeds the projector (-2).
        mm_vision_select_feature: "cls_patch" (SigLIP has no CLS: all patch tokens).
        num_video_frames: frames sampled per video (8).
        image_token_id, video_token_id: placeholder ids in ``input_ids`` (negative: never embedded).
        token_order: order of the merged tokens, see :data:`TOKEN_ORDERS`.
        chat_template: conversation template name (see ``hf_tokcomp.models.vila.templates``), or None.
        token_keep: fraction of each image's (each video frame's) visual tokens kept, in (0, 1].
        token_coverage: share of each segment's budget spread evenly over its grid first, in [0, 1).
        answer_start_ids: the ids that open the assistant's answer (template-dependent; None: labels decide).
        selector: the selection method (see ``hf_tokcomp.runtime.selectors``); "auto" by default.
    """

    model_type = "llava_llama"
    sub_configs_defaults = {
        "llm_cfg": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "vision_tower_cfg": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
    }

    llm_cfg: dict | PreTrainedConfig | None = None
    vision_tower_cfg: dict | PreTrainedConfig | None = None
    mm_projector_cfg: dict | None = None
    hidden_size: int | None = None
    mm_hidden_size: int | None = None
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "cls_patch"
    image_aspect_ratio: str = "resize"
    num_video_frames: int = 8
    mm_use_im_start_end: bool = False
    s2: bool = False
    image_token_id: int = IMAGE_TOKEN_ID
    video_token_id: int = VIDEO_TOKEN_ID
    token_order: Literal["column_major", "row_major"] = "column_major"
    chat_template: str | None = None
    tie_word_embeddings: bool = False
    token_keep: float | int = token_keep_field()
    token_coverage: float | int = coverage_field()
    answer_start_ids: list[int] | None = answer_start_field()
    selector: str = selector_field()

    def __post_init__(self, **kwargs: Any) -> None:
        _check_vision_tower(self.vision_tower_cfg)
        if self.mm_projector_cfg is None:
            self.mm_projector_cfg = {"model_type": "v2l_projector", "mm_projector_type": "mlp_downsample"}
        super().__post_init__(**kwargs)
        self._check_supported()
        for name, sub, attr in (
            ("hidden_size", self.llm_cfg, "hidden_size"),
            ("mm_hidden_size", self.vision_tower_cfg, "hidden_size"),
        ):
            value = getattr(sub, attr)
            if getattr(self, name) is None:
                setattr(self, name, value)
            elif getattr(self, name) != value:
                raise ValueError(
                    f"`{name}`={getattr(self, name)} in the root config disagrees with the sub-config's "
                    f"{attr}={value}; the checkpoint is inconsistent."
                )

    def _check_supported(self) -> None:
        projector = self.mm_projector_cfg.get("mm_projector_type")
        if projector != "mlp_downsample":
            raise ValueError(
                f"`mm_projector_cfg.mm_projector_type` is {projector!r}; the VILA1.5 port implements only "
                f"'mlp_downsample'. Supported: {_SUPPORTED}."
            )
        if self.s2:
            raise ValueError(
                "`s2`=True (a multi-scale S2 vision tower, e.g. VILA1.5-3b-s2) is not supported by the VILA1.5 "
                f"port. Supported: {_SUPPORTED}."
            )
        if self.mm_vision_select_feature != "cls_patch":
            raise ValueError(
                f"`mm_vision_select_feature` must be 'cls_patch' (SigLIP has no CLS token), got "
                f"{self.mm_vision_select_feature!r}."
            )
        if self.image_aspect_ratio != "resize":
            raise ValueError(
                f"`image_aspect_ratio` must be 'resize' (what VILA1.5 uses), got {self.image_aspect_ratio!r}."
            )
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"`token_order` must be one of {TOKEN_ORDERS}, got {self.token_order!r}.")
        layers = self.vision_tower_cfg.num_hidden_layers
        if not -layers <= self.mm_vision_select_layer <= layers:
            raise ValueError(
                f"`mm_vision_select_layer` must index the tower's {layers + 1} hidden states "
                f"({-layers - 1}..{layers}), got {self.mm_vision_select_layer}."
            )
        if self.image_token_id == self.video_token_id:
            raise ValueError(f"`image_token_id` and `video_token_id` must differ, both are {self.image_token_id}.")

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PreTrainedConfig:
        """The LLM's config (``llm_cfg``): the only text model."""
        return self.llm_cfg

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens per image: ceil(g / 2) ** 2 for a g x g patch grid (196 for SigLIP 384 / 14)."""
        grid = self.vision_tower_cfg.image_size // self.vision_tower_cfg.patch_size
        return ((grid + 1) // 2) ** 2
