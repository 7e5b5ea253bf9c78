"""A tiny VILA1.5 built in code: a SentencePiece-style Llama tokenizer over a character vocabulary, a tiny config,
and a writer for a checkpoint in the ORIGINAL three-folder layout (made with the stock classes only, not with the
port's own ``save_pretrained``), for tests and demos without downloads."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer, SiglipVisionConfig, SiglipVisionModel

__all__ = ["tiny_vila_tokenizer", "tiny_vila_sub_configs", "write_tiny_vila_checkpoint", "TEMPLATE_TOKENS"]

#: special tokens the chat templates use (single tokens in the tiny vocabulary, as in the real tokenizers)
TEMPLATE_TOKENS = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|im_start|>",
    "<|im_end|>",
)


def tiny_vila_tokenizer() -> LlamaTokenizer:
    """A Llama tokenizer like VILA1.5's (``<unk>``, ``<s>``, ``</s>`` = 0, 1, 2; byte fallback ``<0x00>``..
    ``<0xFF>`` = 3..258, so ``"\\n"`` is 13; then ``"▁"`` and single characters; no merges), ``legacy=False``,
    plus :data:`TEMPLATE_TOKENS` as added special tokens."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab |= {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in ["▁", *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(piece, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[], legacy=False, add_prefix_space=True, add_bos_token=True)
    tokenizer.add_special_tokens({"additional_special_tokens": list(TEMPLATE_TOKENS)})
    return tokenizer


def tiny_vila_sub_configs(
    vocab_size: int, hidden_size: int = 64, num_layers: int = 2, image_size: int = 28, patch_size: int = 4
) -> tuple[LlamaConfig, SiglipVisionConfig]:
    """(Llama, SigLIP) configs: a 7x7 patch grid (odd, so the projector pads) -> 16 tokens per image; three
    tower layers, so ``hidden_states[-2]`` differs from the last layer and from the embeddings."""
    llm = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    tower = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    return llm, tower


def _with_name(config, folder: str, architecture: str) -> dict:
    return config.to_dict() | {"_name_or_path": f"./{folder}", "architectures": [architecture]}


def write_tiny_vila_checkpoint(path: str | Path, seed: int = 0, hidden_size: int = 64) -> Path:
    """Write a random tiny VILA1.5 checkpoint in the original layout at ``path``; returns ``path``.

    ``llm/`` (LlamaForCausalLM + tokenizer), ``vision_tower/`` (SiglipVisionModel), ``mm_projector/`` (config.json
    and ``layers.{1,2,4}`` weights, LayerNorm weights random too) and a root config.json shaped like the release's.
    """
    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = tiny_vila_tokenizer()
    llm_cfg, tower_cfg = tiny_vila_sub_configs(len(tokenizer), hidden_size)
    LlamaForCausalLM(llm_cfg).save_pretrained(path / "llm")
    tokenizer.save_pretrained(path / "llm")
    SiglipVisionModel(tower_cfg).save_pretrained(path / "vision_tower")
    # the release's tower weights carry the "vision_model." prefix of the transformers 4.x SiglipVisionModel
    tower_file = path / "vision_tower" / "model.safetensors"
    save_file({f"vision_model.{k}": v for k, v in load_file(tower_file).items()}, tower_file, metadata={"format": "pt"})

    width = 4 * tower_cfg.hidden_size
    gen = torch.Generator().manual_seed(seed + 1)
    projector = {
        "layers.1.weight": 1 + 0.1 * torch.randn(width, generator=gen),
        "layers.1.bias": 0.1 * torch.randn(width, generator=gen),
        "layers.2.weight": 0.1 * torch.randn(hidden_size, width, generator=gen),
        "layers.2.bias": 0.1 * torch.randn(hidden_size, generator=gen),
        "layers.4.weight": 0.1 * torch.randn(hidden_size, hidden_size, generator=gen),
        "layers.4.bias": 0.1 * torch.randn(hidden_size, generator=gen),
    }
    (path / "mm_projector").mkdir(parents=True, exist_ok=True)
    save_file(projector, path / "mm_projector" / "model.safetensors", metadata={"format": "pt"})
    projector_cfg = {
        "_name_or_path": "./mm_projector",
        "architectures": ["MultimodalProjector"],
        "mm_projector_type": "mlp_downsample",
        "model_type": "v2l_projector",
    }
    (path / "mm_projector" / "config.json").write_text(json.dumps(projector_cfg, indent=2))
    root = {
        "_name_or_path": "./vlm",
        "architectures": ["LlavaLlamaModel"],
        "model_type": "llava_llama",
        "hidden_size": hidden_size,
        "mm_hidden_size": tower_cfg.hidden_size,
        "image_aspect_ratio": "resize",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "num_video_frames": 8,
        "s2": False,
        "vision_resolution": -1,
        "model_dtype": "torch.float32",
        "resume_path": "./vlm",
        "llm_cfg": _with_name(llm_cfg, "llm", "LlamaForCausalLM"),
        "vision_tower_cfg": _with_name(tower_cfg, "vision_tower", "SiglipVisionModel"),
        "mm_projector_cfg": projector_cfg,
    }
    (path / "config.json").write_text(json.dumps(root, indent=2, default=str))
    return path
