"""Tiny random Qwen2.5-VL / Qwen3-VL checkpoints in the real layouts, and the transformers reference of the plugin.

Run with the MAIN environment's python: ``python tests_vllm/tiny_reference.py --family qwen2_5 --prompts
DIR/prompts.json --out OUT``. Builds a seeded, randomly initialised stock model of the family (the organism's
tokenizer and image processor, 14 px patches; a 2-block vision tower: Qwen2.5-VL with window attention and one
full-attention block, Qwen3-VL with one deepstack level and learned position embeddings; a 2-layer LLM of the
organism's widths, Qwen3-VL's with q / k norms and interleaved M-RoPE), saves it with the stock
``save_pretrained`` into ``OUT/model`` (processor files naming the stock classes vLLM loads), writes those prompts
to ``prompts_FAMILY.json`` beside ``prompts.json``, and ``OUT/reference.json``: per cell ``SELECTOR@KEEP`` the
greedy tokens, first-token log-probabilities and kept tokens of hf_tokcomp's class of the family on the first
one-image prompts of ``prompts.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
import transformers
from PIL import Image

import hf_tokcomp
from hf_tokcomp.organism import ORGANISM_DIR
from hf_tokcomp.processor import load_processor
from hf_tokcomp.vllm.checkpoint import use_stock_processor

PROMPTS = 12
NEW_TOKENS = 4


def _qwen2_5(config: dict, ids: dict) -> transformers.PretrainedConfig:
    text = {**config["text_config"], "model_type": "qwen2_5_vl_text", "num_hidden_layers": 2}
    text["layer_types"] = text["layer_types"][:2]
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 128,
              "window_size": 112, "fullatt_block_indexes": [1], "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "tokens_per_second": 2, "model_type": "qwen2_5_vl_vision"}  # fmt: skip
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


def _qwen3(config: dict, ids: dict) -> transformers.PretrainedConfig:
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
            "rms_norm_eps", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")  # fmt: skip
    rope = {"rope_type": "default", "rope_theta": 10.0, "mrope_section": [4, 6, 6], "mrope_interleaved": True}
    text = {**{k: config["text_config"][k] for k in keys}, "num_hidden_layers": 2, "head_dim": 32,
            "rope_parameters": rope, "model_type": "qwen3_vl_text"}  # fmt: skip
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 128,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 144,
              "deepstack_visual_indexes": [0], "model_type": "qwen3_vl_vision"}  # fmt: skip
    return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)


#: family -> (its config, the stock class, hf_tokcomp's class, the stock processor and video processor vLLM loads)
FAMILIES = {
    "qwen2_5": (_qwen2_5, "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3": (_qwen3, "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}


def build(out: Path, family: str) -> Path:
    """The checkpoint folder (stock classes, stock save_pretrained)."""
    make_config, model_class, _, _ = FAMILIES[family]
    config = json.loads((ORGANISM_DIR / "config.json").read_text())
    ids = {k: config[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(make_config(config, ids)).eval()
    for p in model.parameters():  # random, but not near-uniform logits: greedy tokens are not decided by noise
        if p.ndim > 1:
            p.data.normal_(0, 0.2)
    folder = out / "model"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                 "processor_config.json", "hf_tokcomp.json"):  # fmt: skip
        shutil.copy(ORGANISM_DIR / name, folder / name)
    return folder


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", required=True, help="prompts.json of reference_hf.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--cells", nargs="+", default=["uniform@0.5", "attention@0.25"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    folder = build(out, args.family)
    _, model_class, processor_class, video_class = FAMILIES[args.family]
    processor = load_processor(ORGANISM_DIR)
    model = getattr(hf_tokcomp, model_class).from_pretrained(folder).eval()
    prompts_file = Path(args.prompts)
    prompts = [p for p in json.loads(prompts_file.read_text()) if len(p["images"]) == 1][:PROMPTS]
    (prompts_file.parent / f"prompts_{args.family}.json").write_text(json.dumps(prompts, indent=1))
    results = {}
    for cell in args.cells:
        selector, keep = cell.split("@")
        model.config.selector, model.config.token_keep = selector, float(keep)
        tokens, kept, logprobs = [], [], []
        for prompt in prompts:
            images = [Image.open(prompts_file.parent / p).convert("RGB") for p in prompt["images"]]
            inputs = processor(text=[prompt["text"]], images=images, return_tensors="pt")
            generated = model.generate(
                **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
            tokens.append(generated.sequences[0, inputs["input_ids"].shape[1] :].tolist())
            top = torch.log_softmax(generated.scores[0][0].float(), -1).topk(5)
            logprobs.append(dict(zip(top.indices.tolist(), top.values.tolist(), strict=True)))
            kept.append(model.last_compression[0].kept[0].tolist())
        results[cell] = {"tokens": tokens, "kept": kept, "first_logprobs": logprobs}
    use_stock_processor(folder, processor_class=processor_class, video_processor_class=video_class)
    (out / "reference.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
