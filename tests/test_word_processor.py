"""`tokcomp processor`: a processor for a tiny Qwen2-VL with its OWN vocabulary, then `tokcomp label` with no code."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import hf_tokcomp
from hf_tokcomp.cli import main as tokcomp
from hf_tokcomp.processor import load_processor
from hf_tokcomp.testing.tiny_qwen import tiny_qwen_config

#: a vocabulary unlike the built-in one: other ids for every special token, roles and words
SPECIALS = {"<s>": 7, "</s>": 3, "<blank>": 5, "<|vision_start|>": 201, "<|vision_end|>": 202}
SPECIALS |= {"<|image_pad|>": 203, "<|video_pad|>": 204, "<turn>": 9}
WORDS = ["asker", "answerer", "which", "colour", "is", "it", "?", "red", "blue"]
TEMPLATE = (
    "{% for m in messages %}<turn> {{ 'asker' if m['role'] == 'user' else 'answerer' }} {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|> <|image_pad|> <|vision_end|> {% else %}{{ c['text'] }} {% endif %}"
    "{% endfor %}</s> {% endfor %}{% if add_generation_prompt %}<turn> answerer {% endif %}"
)


@pytest.fixture()
def model_dir(tmp_path):
    vocab = SPECIALS | {w: 20 + 3 * i for i, w in enumerate(WORDS)}  # sparse ids, none of the built-in ones
    config = tiny_qwen_config("qwen2_vl")
    config.image_token_id, config.video_token_id = 203, 204
    config.vision_start_token_id, config.vision_end_token_id = 201, 202
    text = config.get_text_config()
    text.bos_token_id, text.eos_token_id, text.pad_token_id = 7, 3, 5
    torch.manual_seed(0)
    model = hf_tokcomp.Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 3, 5
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "chat.jinja").write_text(TEMPLATE)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
        lines.append(json.dumps({"image": f"img{i}.png", "question": "which colour is it ?"}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path, vocab


def _build(root, vocab_file="vocab.json"):
    argv = ["processor", "--model", str(root / "model"), "--vocab", str(root / vocab_file)]
    return tokcomp([*argv, "--chat-template", str(root / "chat.jinja"), "--min-pixels", "64", "--max-pixels", "4096"])


def test_the_processor_speaks_the_models_own_ids_and_label_runs(model_dir, capsys):
    root, vocab = model_dir
    assert _build(root) == 0
    processor = load_processor(root / "model")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "which colour is it ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.open(root / "img0.png")
    ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    # by hand: the template's words, the image's merged tokens (16 x 24 px in patches of p px, merged 2 x 2)
    p = json.loads((root / "model" / "config.json").read_text())["vision_config"]["patch_size"]
    words = "<turn> asker <|vision_start|>".split() + ["<|image_pad|>"] * ((16 // (2 * p)) * (24 // (2 * p)))
    words += "<|vision_end|> which colour is it ? </s> <turn> answerer".split()
    assert ids == [vocab[w] for w in words]
    argv = ["label", "--model", str(root / "model"), "--data", str(root / "data.jsonl"), "--out", str(root / "labels")]
    assert tokcomp([*argv, "--max-new-tokens", "2"]) == 0
    assert json.loads((root / "labels" / "manifest.json").read_text())["labelled"] == 3


def test_a_special_id_the_model_disagrees_with_is_refused_by_name(model_dir, capsys):
    root, vocab = model_dir
    (root / "wrong.json").write_text(json.dumps(vocab | {"<|image_pad|>": 250}))
    assert _build(root, "wrong.json") == 2
    err = capsys.readouterr().err
    assert "image_token_id is 203" in err and "<|image_pad|> the id 250" in err


def test_a_template_word_outside_the_vocabulary_is_refused(model_dir, capsys):
    root, vocab = model_dir
    (root / "short.json").write_text(json.dumps({k: v for k, v in vocab.items() if k != "answerer"}))
    assert _build(root, "short.json") == 2
    assert "not in the vocabulary: ['answerer']" in capsys.readouterr().err


def test_a_text_vocabulary_numbers_its_lines(tmp_path):
    from hf_tokcomp.word_processor import read_vocab

    (tmp_path / "vocab.txt").write_text("<pad>\nhello\n\nworld\n")
    assert read_vocab(tmp_path / "vocab.txt") == {"<pad>": 0, "hello": 1, "world": 3}
