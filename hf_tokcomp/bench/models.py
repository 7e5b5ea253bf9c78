"""The published models the speed benchmark times: their real widths (layer counts are a parameter), how to build
a batch of one prompt with a given number of visual tokens, and how to run the vision path alone.

Random weights are enough for timing. Each model's prompt uses its own visual layout:

- Qwen2-VL: one image of ``grid x grid`` patches (``grid^2 / 4`` visual tokens, any count near the target).
- LLaVA-OneVision: one anyres image of ``384 i x 384 j`` pixels: ``729`` base tokens + ``27 i x 27 j`` grid tokens +
  ``27 i`` row-end tokens; the smallest ``i x j`` that reaches the target (1,485 tokens for 384 x 384).
- VILA1.5: ``ceil(target / 196)`` images of 196 tokens each (its images are always 384 x 384, 27 x 27 patches,
  merged 2x2).
- Qwen3-VL / Qwen3.5: as Qwen2-VL (16 px patches instead of 14; the token count depends only on the grid).
- InternVL3.5: ``ceil(target / 256)`` tiles of 448 px, 256 tokens each after pixel shuffle, as one image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["BenchModel", "BENCH_MODELS", "PREFIX", "llava_image_for", "llava_image_tokens"]

#: text before the visual tokens in every benchmark prompt (after it: the question's ``text_tokens`` ids)
PREFIX = [10, 11]


@dataclass(frozen=True)
class BenchModel:
    """One published model's shapes for the speed benchmark.

    Attributes:
        family: the prompt layout: "qwen2_vl" (also Qwen3-VL and Qwen3.5), "llava_onevision", "vila" or
            "internvl"; the model class comes from the config's ``model_type``.
        real_layers: (LLM layers, vision layers) of the published model.
        build_config: ``(llm_layers, vision_layers) -> config`` with the real widths.
        min_vision_layers: fewest vision layers the model can run with (VILA reads ``hidden_states[-2]``: 2).
    """

    family: str
    real_layers: tuple[int, int]
    build_config: Callable[[int, int], Any]
    min_vision_layers: int = 1

    def model_class(self, config) -> type:
        """hf_tokcomp's class for ``config`` (by its ``model_type``)."""
        from ..models import MODEL_CLASSES

        return MODEL_CLASSES[config.model_type]

    def make_inputs(self, model, batch: int, visual_tokens: int, text_tokens: int) -> dict[str, torch.Tensor]:
        """``batch`` copies of one prompt: :data:`PREFIX`, about ``visual_tokens`` visual tokens (see the module
        docstring for each layout), then ``text_tokens`` question ids; float pixels (the caller casts them)."""
        question = list(range(100, 100 + text_tokens))
        config = model.config
        if self.family == "qwen2_vl":
            from ..testing.tiny_qwen import make_qwen_inputs

            grid = max(2, 2 * round(visual_tokens**0.5))  # grid x grid patches -> grid^2 / 4 tokens
            sample = [("text", PREFIX), ("image", (grid, grid)), ("text", question)]
            return make_qwen_inputs([sample] * batch, config)
        if self.family == "internvl":
            from ..testing.tiny_internvl import make_internvl_inputs

            tiles = math.ceil(visual_tokens / config.image_seq_length)
            sample = [("text", PREFIX), ("image", tiles), ("text", question)]
            return make_internvl_inputs([sample] * batch, config)
        gen = torch.Generator().manual_seed(0)
        if self.family == "llava_onevision":
            height, width = llava_image_for(visual_tokens, config)
            crop = config.vision_config.image_size
            crops = 1 + (height // crop) * (width // crop)  # the base image + the anyres grid
            ids = PREFIX + [config.image_token_id] * llava_image_tokens(height, width, config) + question
            return {
                "input_ids": torch.tensor([ids] * batch),
                "attention_mask": torch.ones(batch, len(ids), dtype=torch.long),
                "pixel_values": torch.randn(batch, crops, 3, crop, crop, generator=gen),
                "image_sizes": torch.tensor([[height, width]] * batch),
                "batch_num_images": torch.ones(batch, dtype=torch.long),
            }
        side = config.vision_tower_cfg.image_size
        per_image = math.ceil(side // config.vision_tower_cfg.patch_size / 2) ** 2  # 2x2 merge of the patch grid
        images = math.ceil(visual_tokens / per_image)
        ids = PREFIX + [config.image_token_id] * (per_image * images) + question
        return {
            "input_ids": torch.tensor([ids] * batch),
            "attention_mask": torch.ones(batch, len(ids), dtype=torch.long),
            "pixel_values": torch.randn(batch * images, 3, side, side, generator=gen),
        }

    def vision(self, model, inputs: dict[str, torch.Tensor]) -> Any:
        """The vision tower and projector alone, on the batch's pixels."""
        if self.family == "qwen2_vl":
            return model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        if self.family == "llava_onevision":
            return model.model.get_image_features(
                inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
            )
        if self.family == "internvl":
            return model.model.get_image_features(inputs["pixel_values"])
        return model.get_image_features(inputs["pixel_values"])


def _llava_shapes(config) -> list[tuple[int, int]]:
    """Crop grids ``(i, j)`` of the pinpoints that anyres_max_9 keeps at full size (``i j <= 9``), smallest first."""
    crop = config.vision_config.image_size
    shapes = {(h // crop, w // crop) for h, w in config.image_grid_pinpoints}
    return sorted((s for s in shapes if s[0] * s[1] <= 9), key=lambda s: (s[0] * s[1], s))


def llava_image_tokens(height: int, width: int, config) -> int:
    """LLaVA-OneVision visual tokens of one ``(height, width) = (crop i, crop j)`` image: ``side^2`` base tokens,
    the ``side i x side j`` grid, and one row-end token per grid row (``side`` = patches per crop side)."""
    crop = config.vision_config.image_size
    side = crop // config.vision_config.patch_size
    i, j = height // crop, width // crop
    return side * side * (1 + i * j) + side * i


def llava_image_for(visual_tokens: int, config) -> tuple[int, int]:
    """Pixel size ``(crop i, crop j)`` of the smallest pinpoint-shaped image (of at most 9 crops, so anyres_max_9
    does not downscale it) whose token count (:func:`llava_image_tokens`) reaches ``visual_tokens``."""
    crop = config.vision_config.image_size
    sizes = [(crop * i, crop * j) for i, j in _llava_shapes(config)]
    for height, width in sizes:
        if llava_image_tokens(height, width, config) >= visual_tokens:
            return height, width
    most = max(llava_image_tokens(h, w, config) for h, w in sizes)
    raise ValueError(
        f"`visual_tokens`={visual_tokens} is more than one LLaVA-OneVision image gives without downscaling ({most}); "
        f"ask for at most {most}."
    )


def _qwen2_vl(hidden: int, inter: int, heads: int, kv: int, vocab: int, tied: bool) -> Callable[[int, int], Any]:
    def build(llm_layers: int, vision_layers: int):
        from transformers import Qwen2VLConfig

        return Qwen2VLConfig(
            text_config=dict(
                vocab_size=vocab,
                hidden_size=hidden,
                intermediate_size=inter,
                num_hidden_layers=llm_layers,
                num_attention_heads=heads,
                num_key_value_heads=kv,
                max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            ),
            vision_config=dict(depth=vision_layers, embed_dim=1280, hidden_size=hidden, num_heads=16, mlp_ratio=4),
            image_token_id=151655,
            video_token_id=151656,
            vision_start_token_id=151652,
            vision_end_token_id=151653,
            tie_word_embeddings=tied,
        )

    return build


#: SigLIP so400m patch14 at 384 px (LLaVA-OneVision's and VILA1.5's tower), without its layer count
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=384, patch_size=14)


def _llava_onevision_7b(llm_layers: int, vision_layers: int):
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(  # SigLIP so400m at 384 px + Qwen2-7B
        vision_config=dict(
            model_type="siglip_vision_model", num_hidden_layers=vision_layers, vision_use_head=False, **SIGLIP_SO400M
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=152128,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=llm_layers,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=32768,
            rope_theta=1e6,
        ),
    )


def _vila15_3b(llm_layers: int, vision_layers: int):
    from transformers import LlamaConfig, SiglipVisionConfig

    from ..models.vila import VilaConfig

    llm = LlamaConfig(  # Sheared-LLaMA-2.7B
        vocab_size=32000,
        hidden_size=2560,
        intermediate_size=6912,
        num_hidden_layers=llm_layers,
        num_attention_heads=20,
        num_key_value_heads=20,
        max_position_embeddings=4096,
    )
    tower = SiglipVisionConfig(num_hidden_layers=vision_layers, **SIGLIP_SO400M)
    return VilaConfig(llm_cfg=llm.to_dict(), vision_tower_cfg=tower.to_dict())


def _qwen3_vision(out_hidden: int, vision_layers: int, deepstack: bool) -> dict:
    """The Qwen3-VL / Qwen3.5 vision tower (SigLIP-2 so400m width, 16 px patches, 2x2 merge). Its DeepStack taps
    blocks 8 / 16 / 24 of 27; with fewer blocks the taps scale down (three levels at any depth)."""
    taps = [min(vision_layers - 1, i * vision_layers // 27) for i in (8, 16, 24)] if deepstack else []
    return dict(
        depth=vision_layers,
        hidden_size=1152,
        intermediate_size=4304,
        num_heads=16,
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
        in_channels=3,
        out_hidden_size=out_hidden,
        num_position_embeddings=2304,
        deepstack_visual_indexes=taps,
    )


#: Qwen3-VL's token ids (the Qwen2 vocabulary's)
_QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def _qwen3_vl(moe: bool) -> Callable[[int, int], Any]:
    def build(llm_layers: int, vision_layers: int):
        from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

        hidden = 2048 if moe else 4096
        text = dict(
            vocab_size=151936,
            hidden_size=hidden,
            intermediate_size=6144 if moe else 12288,
            num_hidden_layers=llm_layers,
            num_attention_heads=32,
            num_key_value_heads=4 if moe else 8,
            head_dim=128,
            max_position_embeddings=262144,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        )
        if moe:
            text.update(num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, decoder_sparse_step=1)
        cls = Qwen3VLMoeConfig if moe else Qwen3VLConfig
        vision = _qwen3_vision(hidden, vision_layers, deepstack=True)
        return cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **_QWEN_IDS)

    return build


def _qwen3_5_27b(llm_layers: int, vision_layers: int):
    """Qwen3.5-27B: 64 layers in groups of 3 Gated DeltaNet + 1 gated full attention (``llm_layers`` keeps that
    pattern: every 4th layer is full attention, so at least 4 layers are needed for one)."""
    from transformers import Qwen3_5Config

    text = dict(
        vocab_size=248320,
        hidden_size=5120,
        intermediate_size=17408,
        num_hidden_layers=llm_layers,
        num_attention_heads=24,
        num_key_value_heads=4,
        head_dim=256,
        linear_num_value_heads=48,
        linear_num_key_heads=16,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        max_position_embeddings=262144,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1e7,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
        },
    )
    vision = _qwen3_vision(5120, vision_layers, deepstack=False)
    return Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=False)


def _internvl3_5_8b(llm_layers: int, vision_layers: int):
    """InternVL3.5-8B: InternViT-300M at 448 px (patch 14, pixel shuffle 0.5: 256 tokens per tile) + Qwen3-8B."""
    from transformers import InternVLConfig

    vision = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=vision_layers,
        num_attention_heads=16,
        image_size=[448, 448],
        patch_size=[14, 14],
    )
    text = dict(
        model_type="qwen3",
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=llm_layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=151667,  # <IMG_CONTEXT> of the -hf checkpoints
        image_seq_length=256,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


#: real widths of the published models; ``--config`` picks one
BENCH_MODELS: dict[str, BenchModel] = {
    "qwen2-vl-2b": BenchModel("qwen2_vl", (28, 32), _qwen2_vl(1536, 8960, 12, 2, 151936, tied=True)),
    "qwen2-vl-7b": BenchModel("qwen2_vl", (28, 32), _qwen2_vl(3584, 18944, 28, 4, 152064, tied=False)),
    "llava-onevision-7b": BenchModel("llava_onevision", (28, 26), _llava_onevision_7b),
    "vila1.5-3b": BenchModel("vila", (32, 27), _vila15_3b, min_vision_layers=2),
    "qwen3-vl-8b": BenchModel("qwen2_vl", (36, 27), _qwen3_vl(moe=False)),
    "qwen3-vl-30b-a3b": BenchModel("qwen2_vl", (48, 27), _qwen3_vl(moe=True)),
    "qwen3.5-27b": BenchModel("qwen2_vl", (64, 27), _qwen3_5_27b),
    "internvl3.5-8b": BenchModel("internvl", (36, 24), _internvl3_5_8b),
}
