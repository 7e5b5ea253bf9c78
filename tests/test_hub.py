"""Compressor-only repos: three ways to load, remote code without hf_tokcomp, push, card, errors; PEFT."""

import ast
import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model

import hf_tokcomp
from hf_tokcomp.hub.writer import REPO_FILES
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs, tiny_qwen_config

SAMPLE = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A stock base checkpoint, a compressed model with a trained-looking compressor, its compressor-only repo,
    fixed inputs and the logits the saved model gives on them."""
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    transformers.Qwen2VLForConditionalGeneration(tiny_qwen_config("qwen2_vl")).save_pretrained(root / "base")
    model = hf_tokcomp.Qwen2VLForConditionalGeneration.from_pretrained(root / "base", token_keep=0.5).eval()
    torch.manual_seed(1)
    model.compressor = hf_tokcomp.TokenCompressor(hf_tokcomp.TokenCompressorConfig(base_model_type="qwen2_vl"))
    model.save_pretrained(root / "repo", compressor_only=True)
    inputs = make_qwen_inputs([SAMPLE, [("text", [5]), ("image", (4, 8)), ("text", [9, 10])]], model.config)
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save({"inputs": dict(inputs), "logits": logits}, root / "expected.pt")
    return root, model


LOADERS = {
    "our_class": "import hf_tokcomp; m = hf_tokcomp.Qwen2VLForConditionalGeneration.from_pretrained("
    "BASE, compressor=REPO, token_keep=0.5)",
    "auto_after_import": "import hf_tokcomp; from transformers import AutoModelForImageTextToText as A; "
    "m = A.from_pretrained(REPO, token_keep=0.5)",
    "remote_code_without_hf_tokcomp": "import sys; sys.modules['hf_tokcomp'] = None\n"
    "from transformers import AutoModelForImageTextToText as A\n"
    "try:\n    A.from_pretrained(REPO, token_keep=0.5)\n"
    "except Exception as err:\n    print('WITHOUT FLAG:', err)\n"
    "m = A.from_pretrained(REPO, trust_remote_code=True, token_keep=0.5)",
}


@pytest.mark.parametrize("way", list(LOADERS))
def test_three_ways_to_load_give_the_saved_logits(saved, way, tmp_path):
    root, _ = saved
    script = LOADERS[way].replace("BASE", repr(str(root / "base"))).replace("REPO", repr(str(root / "repo")))
    script += textwrap.dedent(f"""
        import torch
        data = torch.load({str(root / "expected.pt")!r})
        with torch.no_grad():
            logits = m.eval()(**data["inputs"]).logits
        print("MODULE", type(m).__module__)
        print("EQUAL", torch.equal(logits, data["logits"]))
    """)
    env = {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "EQUAL True" in done.stdout
    if way == "remote_code_without_hf_tokcomp":
        assert "transformers_modules" in done.stdout  # really the repo's own code
        assert "trust_remote_code=True" in done.stdout  # the error without the flag says what to add


def test_repo_files_and_remote_code_imports(saved):
    root, _ = saved
    assert sorted(p.name for p in (root / "repo").iterdir()) == sorted(REPO_FILES)
    allowed = {"torch", "transformers", "huggingface_hub", "safetensors", "packaging", "__future__"}
    for name in ("modeling_tokcomp.py", "configuration_tokcomp.py"):
        tree = ast.parse((root / "repo" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import left: {ast.unparse(node)}"
                top = node.module.split(".")[0]
            elif isinstance(node, ast.Import):
                top = node.names[0].name.split(".")[0]
            else:
                continue
            assert top in allowed or top in sys.stdlib_module_names, f"{name} imports {top}"
    config = json.loads((root / "repo" / "config.json").read_text())
    assert config["model_type"] == "hf_tokcomp" and "AutoModelForImageTextToText" in config["auto_map"]
    assert config["base_model_type"] == "qwen2_vl" and config["base_hidden_size"] == 64


def test_model_card_front_matter_and_content(saved):
    card = (saved[0] / "repo" / "README.md").read_text()
    front = card.split("---")[1]
    for line in (
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "license: apache-2.0",
        f"base_model: {saved[0] / 'base'}",
        "- hf_tokcomp",
    ):
        assert line in front
    assert "trust_remote_code=True" in card and "revision=" in card and "2506.01097" in card


def test_push_to_hub_uploads_exactly_the_saved_files(saved, monkeypatch):
    _, model = saved
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = repo_id

    def upload_folder(self, repo_id, folder_path, **kwargs):
        from pathlib import Path

        calls["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", create_repo)
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload_folder)
    model.push_to_hub("org/tiny-tokcomp", compressor_only=True)
    assert calls["repo"] == "org/tiny-tokcomp" and sorted(calls["files"]) == sorted(REPO_FILES)
    assert b"org/tiny-tokcomp" in calls["files"]["README.md"]
    assert calls["files"]["model.safetensors"] == (saved[0] / "repo" / "model.safetensors").read_bytes()


def test_full_save_with_push_uploads_the_compressor_too(saved, tmp_path, monkeypatch):
    uploaded = {}
    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda self, repo_id, **kw: None)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        from pathlib import Path

        uploaded["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*.json"))

    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload_folder)
    saved[1].save_pretrained(tmp_path / "full", push_to_hub=True, repo_id="org/full")
    assert "compressor/config.json" in uploaded["files"] and "config.json" in uploaded["files"]


def test_full_save_is_a_stock_checkpoint_plus_the_compressor(saved, tmp_path):
    _, model = saved
    model.save_pretrained(tmp_path)
    _, info = transformers.Qwen2VLForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    again = hf_tokcomp.Qwen2VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert again.config.token_keep == 0.5 and isinstance(again.compressor, hf_tokcomp.TokenCompressor)
    data = torch.load(saved[0] / "expected.pt")
    with torch.no_grad():
        assert torch.equal(again(**data["inputs"]).logits, data["logits"])


def _edit_repo(root, tmp_path, **changes):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(root / "repo", repo)
    config = json.loads((repo / "config.json").read_text())
    config.update(changes)
    (repo / "config.json").write_text(json.dumps(config))
    return repo


def test_repo_errors(saved, tmp_path):
    root, model = saved
    cls = hf_tokcomp.Qwen2VLForConditionalGeneration
    with pytest.raises(ValueError, match="trained for model_type 'llava_onevision'"):
        cls.from_pretrained(
            root / "base", compressor=_edit_repo(root, tmp_path / "a", base_model_type="llava_onevision")
        )
    with pytest.raises(ValueError, match="hidden size 4096"):
        cls.from_pretrained(root / "base", compressor=_edit_repo(root, tmp_path / "b", base_hidden_size=4096))
    no_weights = _edit_repo(root, tmp_path / "c")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="only"):
        cls.from_pretrained(root / "base", compressor=no_weights)
    other_revision = _edit_repo(root, tmp_path / "d", base_model_revision="abc123")
    model.config._commit_hash = "def456"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.set_compressor(other_revision)
    finally:
        model.config._commit_hash = None
    assert any("abc123" in str(w.message) and "def456" in str(w.message) for w in caught)
    plain = hf_tokcomp.Qwen2VLForConditionalGeneration(tiny_qwen_config("qwen2_vl"))
    with pytest.raises(ValueError, match="TokenCompressor"):
        plain.save_pretrained(tmp_path / "e", compressor_only=True)


def test_lora_trains_with_compression_and_reloads(saved, tmp_path):
    root, _ = saved
    model = hf_tokcomp.Qwen2VLForConditionalGeneration.from_pretrained(
        root / "base", compressor=root / "repo", token_keep=0.5
    )
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    assert not any(p.requires_grad for p in model.compressor.parameters())
    inputs = make_qwen_inputs([SAMPLE], model.config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -2:] = inputs["input_ids"][:, -2:]
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        out = peft_model(**inputs, labels=labels)
        assert out.logits.shape[1] == inputs["input_ids"].shape[1] - 8  # 16 image tokens -> 8 kept
        losses.append(out.loss.item())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0]
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**inputs).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    fresh = hf_tokcomp.Qwen2VLForConditionalGeneration.from_pretrained(
        root / "base", compressor=root / "repo", token_keep=0.5
    )
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, expected)
        out = reloaded.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert fresh.last_compression[0].num_kept == 8
    assert out.past_key_values.get_seq_length() == inputs["input_ids"].shape[1] - 8 + 4 - 1


def test_lora_trained_on_the_stock_model_works_under_compression(saved, tmp_path):
    root, _ = saved
    stock = transformers.Qwen2VLForConditionalGeneration.from_pretrained(root / "base")
    torch.manual_seed(2)
    adapter = get_peft_model(stock, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "stock_adapter")
    inputs = make_qwen_inputs([SAMPLE], stock.config)
    with torch.no_grad():
        stock_logits = adapter.eval()(**inputs).logits
    ours = hf_tokcomp.Qwen2VLForConditionalGeneration.from_pretrained(root / "base", token_keep=1.0)
    with_adapter = PeftModel.from_pretrained(ours, tmp_path / "stock_adapter").eval()
    with torch.no_grad():
        assert torch.equal(with_adapter(**inputs).logits, stock_logits)
        ours.config.token_keep = 0.25
        assert with_adapter(**inputs).logits.shape[1] == inputs["input_ids"].shape[1] - 12
