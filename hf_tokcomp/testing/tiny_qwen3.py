"""A tiny Qwen3-VL (dense or MoE) built in code: the real architecture (DeepStack mergers, interleaved M-RoPE,
q/k norms) at toy sizes, with the token ids of :data:`hf_tokcomp.testing.tiny_qwen.VOCAB` so that
:func:`~hf_tokcomp.testing.tiny_qwen.make_qwen_inputs` builds its inputs."""

from __future__ import annotations

from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

from .tiny_qwen import VOCAB, mrope_section, tiny_qwen_config

__all__ = ["tiny_qwen3_vl_config", "tiny_qwen3_5_config", "tiny_config", "QWEN_FAMILIES"]


#: the tiny vocabulary's placeholder and marker ids, as the Qwen3 configs name them
_TOKENS = dict(
    image_token_id=VOCAB["image"],
    video_token_id=VOCAB["video"],
    vision_start_token_id=VOCAB["vision_start"],
    vision_end_token_id=VOCAB["vision_end"],
    tie_word_embeddings=False,
)


def _vision(out_hidden_size: int) -> dict:
    """A tiny Qwen3-style vision tower: 2 blocks, 2 x 2 patches of 2 px merged 2 x 2, 8 x 8 position table."""
    return dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=2,
        temporal_patch_size=2,
        spatial_merge_size=2,
        in_channels=3,
        out_hidden_size=out_hidden_size,
        num_position_embeddings=64,
    )


def tiny_qwen3_vl_config(
    moe: bool = False, hidden_size: int = 64, num_layers: int = 4, num_heads: int = 4, vocab_size: int = 300
) -> Qwen3VLConfig | Qwen3VLMoeConfig:
    """A small but complete Qwen3-VL config: 2x2 patch merging, DeepStack features added after LLM layers 0 and
    1 (from vision blocks 0 and 1), interleaved M-RoPE sections scaled to the head size."""
    head_dim = hidden_size // num_heads
    section = mrope_section(head_dim)
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads // 2,
        head_dim=head_dim,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": section,
            "mrope_interleaved": True,
        },
        bos_token_id=VOCAB["bos"],
        eos_token_id=VOCAB["eos"],
        pad_token_id=VOCAB["pad"],
        max_position_embeddings=4096,
    )
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size, decoder_sparse_step=1)
    vision = _vision(hidden_size) | {"deepstack_visual_indexes": [0, 1]}
    cls = Qwen3VLMoeConfig if moe else Qwen3VLConfig
    return cls(
        text_config=text,
        vision_config=vision,
        pad_token_id=VOCAB["pad"],
        **_TOKENS,
    )


def tiny_qwen3_5_config(moe: bool = False, hidden_size: int = 64, num_layers: int = 4, vocab_size: int = 300):
    """A small but complete Qwen3.5 (natively multimodal, hybrid): layers 0-2 linear attention (Gated DeltaNet),
    layer 3 full attention with a gated q projection and partial rotary embedding; the tiny token ids."""
    from transformers import Qwen3_5Config, Qwen3_5MoeConfig

    head_dim = 16
    rotary = head_dim // 4  # partial_rotary_factor 0.25, as the published models
    section = mrope_section(rotary)
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": section,
            "mrope_interleaved": True,
            "partial_rotary_factor": 0.25,
        },
        bos_token_id=VOCAB["bos"],
        eos_token_id=VOCAB["eos"],
        pad_token_id=VOCAB["pad"],
        max_position_embeddings=4096,
    )
    if moe:
        text.update(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=hidden_size,
            shared_expert_intermediate_size=hidden_size,
        )
    vision = _vision(hidden_size)
    cls = Qwen3_5MoeConfig if moe else Qwen3_5Config
    return cls(
        text_config=text,
        vision_config=vision,
        **_TOKENS,
    )


#: the tiny config of each Qwen family (by ``model_type``); they share the inputs of ``make_qwen_inputs``
_BUILDERS = {
    "qwen2_vl": lambda: tiny_qwen_config("qwen2_vl"),
    "qwen2_5_vl": lambda: tiny_qwen_config("qwen2_5_vl"),
    "qwen3_vl": tiny_qwen3_vl_config,
    "qwen3_vl_moe": lambda: tiny_qwen3_vl_config(moe=True),
    "qwen3_5": tiny_qwen3_5_config,
    "qwen3_5_moe": lambda: tiny_qwen3_5_config(moe=True),
}
QWEN_FAMILIES = tuple(_BUILDERS)


def tiny_config(family: str):
    """The tiny config of any Qwen family in :data:`QWEN_FAMILIES` (its ``model_type``)."""
    if family not in _BUILDERS:
        raise ValueError(f"`family`={family!r} has no tiny Qwen config; choose one of {list(_BUILDERS)}")
    return _BUILDERS[family]()
