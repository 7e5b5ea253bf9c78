"""The transformers reference for the vLLM plugin's tests: hf_tokcomp's own classes on the shipped organism.

Run with the MAIN environment's python (transformers 5.23; the vLLM environment has vLLM's older transformers):
``python tests_vllm/reference_hf.py --out DIR --cells uniform@0.5 divprune@0.25``. Writes ``DIR/prompts.json``
(49 chat prompts: 20 one-image questions of the organism's test split, 4 two-image prompts, 20 questions about
random-noise images, 4 other questions about images of the first prompts, and one prompt holding one image
twice; images as PNG beside it) and
``DIR/reference.json``: per cell ``SELECTOR@KEEP`` the greedy tokens (4 new tokens) of every prompt, one prompt
at a time, the kept token indices of each image, and the log-probabilities of the 5 likeliest first tokens.
``learned@KEEP`` uses the shipped organism compressor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from hf_tokcomp.organism import ORGANISM_COMPRESSOR_DIR, load_organism, make_split
from hf_tokcomp.runtime.compressor import TokenCompressor

NEW_TOKENS = 4
NOISE_PROMPTS = 20
SAME_IMAGE_PROMPTS = 4


def _prompts(processor, out: Path) -> list[dict]:
    samples = make_split("test", 24)
    prompts = []
    for i, sample in enumerate(samples):
        images = [sample.image] if i < 20 else [sample.image, samples[i - 20].image]
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": sample.question}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        paths = []
        for j, image in enumerate(images):
            path = out / f"prompt{i:02d}_image{j}.png"
            image.save(path)
            paths.append(path.name)
        prompts.append({"text": text, "images": paths, "kind": "organism"})
    # random-noise images: every visual token distinct, so diversity selection has no near-ties (on the
    # organism's plain backgrounds many tokens are near-identical, and float noise decides between them)
    generator = torch.Generator().manual_seed(0)
    for i, sample in enumerate(samples[:NOISE_PROMPTS]):
        pixels = torch.randint(0, 256, (224, 224, 3), generator=generator, dtype=torch.uint8).numpy()
        path = out / f"noise{i:02d}.png"
        Image.fromarray(pixels).save(path)
        content = [{"type": "image"}, {"type": "text", "text": sample.question}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        prompts.append({"text": text, "images": [path.name], "kind": "noise"})
    # the same image under another question: a question-aware selection keeps other tokens, so no cache may hand
    # one question the tokens kept for the other
    for i in range(SAME_IMAGE_PROMPTS):
        other = samples[i + 5]
        content = [{"type": "image"}, {"type": "text", "text": other.question}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        prompts.append({"text": text, "images": [f"prompt{i:02d}_image0.png"], "kind": "same_image"})
    # one image twice in a prompt: two segments, each with its own kept tokens (no cache may merge them)
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": samples[1].question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    prompts.append({"text": text, "images": ["prompt01_image0.png"] * 2, "kind": "image_twice"})
    return prompts


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for prompts.json, the images and reference.json")
    parser.add_argument("--cells", nargs="+", required=True, help="SELECTOR@KEEP, e.g. uniform@0.5")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = load_organism()
    prompts = _prompts(processor, out)
    (out / "prompts.json").write_text(json.dumps(prompts, indent=1))
    results = {}
    for cell in args.cells:
        selector, keep = cell.split("@")
        model.config.selector, model.config.token_keep = selector, float(keep)
        model.compressor = TokenCompressor.from_pretrained(ORGANISM_COMPRESSOR_DIR) if selector == "learned" else None
        tokens, kept, logprobs = [], [], []
        for prompt in prompts:
            images = [Image.open(out / p).convert("RGB") for p in prompt["images"]]
            inputs = processor(text=[prompt["text"]], images=images, return_tensors="pt")
            generated = model.generate(
                **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
            tokens.append(generated.sequences[0, inputs["input_ids"].shape[1] :].tolist())
            top = torch.log_softmax(generated.scores[0][0].float(), -1).topk(5)
            logprobs.append(dict(zip(top.indices.tolist(), top.values.tolist(), strict=True)))
            selection = model.last_compression  # None at keep 1.0: nothing compressed
            if selection is None:
                kept.append(None)
            else:  # per image, its kept indices within the image (SampleSelection counts over the sample)
                starts = [sum(selection[0].num_tokens[:j]) for j in range(len(selection[0].kept))]
                kept.append([(k - start).tolist() for k, start in zip(selection[0].kept, starts, strict=True)])
        results[cell] = {"tokens": tokens, "kept": kept, "first_logprobs": logprobs}
    (out / "reference.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
