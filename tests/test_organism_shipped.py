"""The organism shipped inside the package: loads fully, answers as recorded, and needs the image."""

import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration as StockQwen2VL

from hf_tokcomp import TokenCompressor
from hf_tokcomp.organism import ORGANISM_COMPRESSOR_DIR, ORGANISM_DIR, load_organism
from hf_tokcomp.organism.task import make_split
from hf_tokcomp.organism.train import validate

RECORDED = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "organism.json").read_text())


@pytest.fixture(scope="module")
def stock():
    model, info = StockQwen2VL.from_pretrained(ORGANISM_DIR, output_loading_info=True)
    assert all(not v for v in info.values()), info
    return model.eval()


def test_shipped_weights_reach_the_recorded_accuracy_and_need_the_image(stock):
    _, processor = load_organism()
    test = make_split("test", 300)  # the first 300 of the recorded 1,200 test samples
    real, blank = validate(stock, processor, test), validate(stock, processor, test, blank=True)
    assert real["all"] >= RECORDED["accuracy"]["all"] - 0.05
    assert blank["all"] <= real["all"] - 0.2, "with the image blanked the organism must do far worse"


def test_shipped_compressor_loads_for_the_organism():
    model, processor = load_organism(token_keep=0.5, compressor="shipped")
    assert isinstance(model.compressor, TokenCompressor)
    assert model.compressor.config.base_model_type == "qwen2_vl"
    reference = TokenCompressor.from_pretrained(ORGANISM_COMPRESSOR_DIR)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.compressor.state_dict()[name], tensor), name
    sample = make_split("test", 1)[0]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    model.generate(**processor(text=[prompt], images=[sample.image], return_tensors="pt"), max_new_tokens=1)
    assert model.last_compression[0].num_tokens == [144] and len(model.last_compression[0].kept[0]) == 72
