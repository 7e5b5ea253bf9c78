"""A tiny Qwen2.5-VL checkpoint in the real layout, and the transformers reference of the plugin on it.

Run with the MAIN environment's python: ``python tests_vllm/qwen2_5_reference.py --prompts DIR/prompts.json
--out OUT``. Builds a seeded, randomly initialised ``Qwen2_5_VLForConditionalGeneration`` (the organism's
tokenizer and image processor; a 2-block vision tower with window attention and one full-attention block; a
2-layer LLM of the organism's widths), saves it with the stock ``save_pretrained`` into ``OUT/model`` (processor
files naming the stock classes vLLM loads), writes those prompts to ``prompts_qwen2_5.json`` beside
``prompts.json``, and ``OUT/reference.json``: per cell ``SELECTOR@KEEP`` the
greedy tokens, first-token log-probabilities and kept tokens of hf_tokcomp's ``Qwen2_5_VLForConditionalGeneration``
on the first one-image prompts of ``prompts.json``.
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


def build(out: Path) -> Path:
    """The checkpoint folder (stock classes, stock save_pretrained)."""
    config = json.loads((ORGANISM_DIR / "config.json").read_text())
    text = {**config["text_config"], "model_type": "qwen2_5_vl_text", "num_hidden_layers": 2}
    text["layer_types"] = text["layer_types"][:2]
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 128,
              "window_size": 112, "fullatt_block_indexes": [1], "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "tokens_per_second": 2, "model_type": "qwen2_5_vl_vision"}  # fmt: skip
    ids = {k: config[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    qwen25 = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(qwen25).eval()
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
    parser.add_argument("--cells", nargs="+", default=["uniform@0.5", "attention@0.25"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    folder = build(out)
    processor = load_processor(ORGANISM_DIR)
    model = hf_tokcomp.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    prompts_file = Path(args.prompts)
    prompts = [p for p in json.loads(prompts_file.read_text()) if len(p["images"]) == 1][:PROMPTS]
    (prompts_file.parent / "prompts_qwen2_5.json").write_text(json.dumps(prompts, indent=1))
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
    use_stock_processor(folder, processor_class="Qwen2_5_VLProcessor")
    (out / "reference.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
