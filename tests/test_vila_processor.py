"""VilaProcessor: templates written out literally, token ids against the original chunked tokenisation, frames."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_tokcomp.models.vila import VilaProcessor, template_for_checkpoint
from hf_tokcomp.testing.tiny_vila import tiny_vila_tokenizer

N = 16  # visual tokens per image in the tiny processor
Q = "<image>\nWhat is it?"
SYSTEM_L3 = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, and assist the user with a variety of "
    "tasks using natural language."
)
EXPECTED_PROMPTS = {
    "vicuna_v1": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT:",
    "llama_3": SYSTEM_L3 + "<|end_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?"
    "<|end_of_text|><|start_header_id|>system<|end_header_id|>\n\n",
    "llama_3_fix": SYSTEM_L3 + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "hermes-2": "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?"
    "<|im_end|><|im_start|>assistant\n",
}


@pytest.fixture(scope="module")
def processor():
    return VilaProcessor(tiny_vila_tokenizer(), template="vicuna_v1", image_size=28, num_image_tokens=N)


def chunked(tokenizer, prompt: str, placeholder: int) -> list[int]:
    """The original: split on <image>, tokenise each chunk, drop every chunk's BOS but the first's."""
    chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
    assert all(c[0] == tokenizer.bos_token_id for c in chunks)
    ids = chunks[0]
    for chunk in chunks[1:]:
        ids = ids + [placeholder] * N + chunk[1:]
    return ids


@pytest.mark.parametrize("template", list(EXPECTED_PROMPTS))
def test_template_and_ids_match_original_chunked_tokenisation(processor, template):
    prompt = processor.apply_template(Q, template)
    assert prompt == EXPECTED_PROMPTS[template]
    image = Image.new("RGB", (30, 20), (10, 200, 30))
    ids = processor(prompt, images=[image])["input_ids"][0].tolist()
    assert ids == chunked(processor.tokenizer, prompt, processor.image_token_id)
    assert ids.count(processor.tokenizer.bos_token_id) == 1
    tok = processor.tokenizer
    start = ids.index(processor.image_token_id)
    after = ids[start + N :]
    assert after[:2] == [tok.convert_tokens_to_ids("▁"), 13]  # "\nWhat": the 29871, 13 of the real tokenizer
    if template == "vicuna_v1":
        assert ids[start - 1] == tok.convert_tokens_to_ids("▁")  # "USER: " ends with a lone "▁"
    if template.startswith("llama_3"):  # <|begin_of_text|> on top of the tokenizer's BOS, as trained
        assert ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<|begin_of_text|>")]


def test_template_defaults_from_checkpoint_name():
    assert template_for_checkpoint("Efficient-Large-Model/VILA1.5-3b") == "vicuna_v1"
    assert template_for_checkpoint("Efficient-Large-Model/VILA1.5-13b") == "vicuna_v1"
    assert template_for_checkpoint("Efficient-Large-Model/Llama-3-VILA1.5-8B") == "llama_3"
    assert template_for_checkpoint("Efficient-Large-Model/Llama-3-VILA1.5-8B-Fix") == "llama_3_fix"
    assert template_for_checkpoint("Efficient-Large-Model/VILA1.5-40b") == "hermes-2"
    assert template_for_checkpoint("my/model") is None


def test_video_frames_and_ids(processor):
    frames = np.stack([np.full((12, 16, 3), 10 * i, dtype=np.uint8) for i in range(20)])
    prompt = processor.apply_template("<video>\nWhat happens?")
    out = processor(prompt, videos=[frames])
    # 8 frames at linspace(0, 18, 8) truncated: the frame index is readable from its constant colour
    first_pixel = ((out["pixel_values_videos"][0, :, 0, 0, 0] * 0.5 + 0.5) * 255).round().long() // 10
    assert first_pixel.tolist() == [0, 2, 5, 7, 10, 12, 15, 18]
    expected_prompt = processor.apply_template("<image>\n" * 8 + "What happens?")
    ids = out["input_ids"][0].tolist()
    assert ids == chunked(processor.tokenizer, expected_prompt, processor.video_token_id)
    short = processor(prompt, videos=[frames[:3]])["pixel_values_videos"][0]
    assert torch.all(short[:5] == -1) and not torch.all(short[5:] == -1)  # left-padded with black frames


def test_images_resized_without_keeping_aspect_ratio(processor):
    pixels = processor(
        ["<image>a", "bcd<image>"], images=[Image.new("RGB", (50, 10), (255, 0, 51)), np.zeros((9, 3, 3), np.uint8)]
    )
    assert pixels["pixel_values"].shape == (2, 3, 28, 28)
    torch.testing.assert_close(pixels["pixel_values"][0, :, 5, 5], torch.tensor([1.0, -1.0, -0.6]))
    assert pixels["attention_mask"][:, 0].tolist() == [0, 1]  # the shorter prompt is padded on the left


def test_bad_inputs_raise(processor):
    with pytest.raises(ValueError, match="1 <image> marker.*0 images"):
        processor("<image>hi")
    with pytest.raises(ValueError, match="`template` must be one of"):
        processor.apply_template("hi", "vicuna")
    with pytest.raises(ValueError, match="uint8"):
        processor("<image>", images=[np.zeros((4, 4, 3), np.float32)])
