"""VILA1.5 port: loading the original layout, the forward against an independent reference written from the facts
in shared/research/vila15.md (never from the port's code), save/load, and the compression contract."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, SiglipVisionModel

import hf_tokcomp
from hf_tokcomp.models.vila import VilaPreTrainedForConditionalGeneration, VilaProcessor
from hf_tokcomp.testing.tiny_vila import write_tiny_vila_checkpoint

from .fixed_scores import FixedScores, fixed_scores
from .reference import naive_kept_positions

IMAGE = -200  # the original IMAGE_TOKEN_INDEX
NEW = 4


def picture(seed: int, size=(40, 24)) -> Image.Image:
    """A random RGB image (not square: the processor resizes without keeping the aspect ratio)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def video(seed: int, frames: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, 20, 20, 3), dtype=np.uint8)


# name -> (user message, images, videos)
SAMPLES = {
    "image": ("<image>\nWhat is in the picture?", [picture(0)], []),
    "two_images": ("<image>\nCompare it with <image>\nWhich is brighter?", [picture(1), picture(2, (24, 40))], []),
    "video": ("<video>\nWhat happens?", [], [video(3)]),
}
BATCHES = {"image": ["image"], "video": ["video"], "mixed": ["two_images", "image", "video"]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_vila_checkpoint(tmp_path_factory.mktemp("vila") / "VILA1.5-tiny")


@pytest.fixture(scope="module")
def ref(checkpoint):
    """The checkpoint read with stock classes and safetensors only."""
    return {
        "tower": SiglipVisionModel.from_pretrained(checkpoint / "vision_tower").eval(),
        "llm": LlamaForCausalLM.from_pretrained(checkpoint / "llm").eval(),
        "proj": load_file(checkpoint / "mm_projector" / "model.safetensors"),
    }


@pytest.fixture(scope="module")
def processor(checkpoint):
    return VilaProcessor.from_pretrained(checkpoint, template="vicuna_v1")


@pytest.fixture()
def ours(checkpoint):
    model = hf_tokcomp.VilaForConditionalGeneration.from_pretrained(checkpoint)
    model.generation_config.eos_token_id = None
    return model


# ---- the independent reference -------------------------------------------------------------------------------
def ref_image_tokens(ref, pixels: torch.Tensor, column_major: bool = True) -> list[torch.Tensor]:
    """Per image, ``(T, D)``: SigLIP hidden_states[-2], zero pad to even, 2x2 groups (column-major: token J*G+I),
    LayerNorm -> Linear -> GELU -> Linear with the file's weights, written with explicit loops."""
    w = ref["proj"]
    with torch.no_grad():
        hidden = ref["tower"](pixels, output_hidden_states=True).hidden_states[-2]
    side = int(round(hidden.shape[1] ** 0.5))
    half, channels = (side + 1) // 2, hidden.shape[-1]
    out = []
    for n in range(hidden.shape[0]):
        grid = torch.zeros(2 * half, 2 * half, channels)
        for r in range(side):
            for c in range(side):
                grid[r, c] = hidden[n, r * side + c]
        tokens = []
        for outer in range(half):
            for inner in range(half):
                i, j = (inner, outer) if column_major else (outer, inner)
                tokens.append(
                    torch.cat(
                        [grid[2 * i, 2 * j], grid[2 * i, 2 * j + 1], grid[2 * i + 1, 2 * j], grid[2 * i + 1, 2 * j + 1]]
                    )
                )
        x = F.layer_norm(torch.stack(tokens), (4 * channels,), w["layers.1.weight"], w["layers.1.bias"], eps=1e-5)
        x = F.linear(
            F.gelu(F.linear(x, w["layers.2.weight"], w["layers.2.bias"])), w["layers.4.weight"], w["layers.4.bias"]
        )
        out.append(x)
    return out


def original_ids(tokenizer, prompt: str) -> list[int]:
    """The original chunked tokenisation: split on <image>, tokenise each chunk, only the first keeps BOS, one
    IMAGE id per image."""
    chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
    ids = [chunks[0][0]] if chunks[0][0] == tokenizer.bos_token_id else []
    skip = len(ids)
    for k, chunk in enumerate(chunks):
        ids += chunk[skip:] + ([IMAGE] if k < len(chunks) - 1 else [])
    return ids


def ref_sample(ref, processor, name: str, column_major: bool = True):
    """(embeddings ``(L, D)``, sizes of the visual runs with their kind) of one sample built as the original does:
    video frames are images written "<image>\\n" * 8; each IMAGE id is replaced by the image's rows."""
    message, images, videos = SAMPLES[name]
    message = message.replace("<video>\n", "<image>\n" * 8)
    prompt = processor.apply_template(message)
    pixels = [processor.preprocess_image(i) for i in images]
    kinds = ["image"] * len(images)
    for v in videos:
        idx = np.linspace(0, len(v) - 2, 8).astype(int)  # VILA1.5's frame sampling
        pixels += [processor.preprocess_image(v[i]) for i in idx]
        kinds += ["video"] * 8
    feats = iter(ref_image_tokens(ref, torch.stack(pixels), column_major))
    rows, runs = [], []
    embed = ref["llm"].get_input_embeddings()
    for token in original_ids(processor.tokenizer, prompt):
        if token == IMAGE:
            rows.append(next(feats))
            runs.append(rows[-1].shape[0])
        else:
            rows.append(embed.weight[token][None].detach())
    assert len(runs) == len(kinds)
    return torch.cat(rows), list(zip(kinds, runs, strict=True))


def ref_logits(ref, embeds: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    n = embeds.shape[0]
    positions = torch.arange(n) if positions is None else positions
    with torch.no_grad():
        return ref["llm"](
            inputs_embeds=embeds[None], position_ids=positions[None], attention_mask=torch.ones(1, n, dtype=torch.long)
        ).logits[0]


def batch_inputs(processor, names: list[str], padding_side: str = "left"):
    prompts = [processor.apply_template(SAMPLES[n][0]) for n in names]
    images = [i for n in names for i in SAMPLES[n][1]]
    videos = [v for n in names for v in SAMPLES[n][2]]
    return processor(prompts, images=images or None, videos=videos or None, padding_side=padding_side)


# ---- loading ------------------------------------------------------------------------------------------------
def test_every_weight_of_the_original_layout_is_loaded(checkpoint, ref, ours):
    _, info = hf_tokcomp.VilaForConditionalGeneration.from_pretrained(checkpoint, output_loading_info=True)
    assert not any(info.values())
    expected = {f"llm.{k}": v for k, v in ref["llm"].state_dict().items()}
    expected |= {f"vision_tower.{k}": v for k, v in ref["tower"].state_dict().items()}
    expected |= {f"mm_projector.{k}": v for k, v in ref["proj"].items()}
    got = ours.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert ours.config.num_image_tokens == 16 and ours.config.mm_vision_select_layer == -2
    assert ours.config.llm_cfg.vocab_size == ref["llm"].get_input_embeddings().weight.shape[0]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_logits_equal_independent_reference(ref, processor, ours, name):
    inputs = batch_inputs(processor, [name])
    embeds, _ = ref_sample(ref, processor, name)
    with torch.no_grad():
        got = ours(**inputs).logits[0]
    assert got.shape[0] == embeds.shape[0]
    torch.testing.assert_close(got, ref_logits(ref, embeds), rtol=1e-5, atol=1e-5)


def test_padded_batch_equals_reference_per_sample(ref, processor, ours):
    for side in ("left", "right"):
        inputs = batch_inputs(processor, BATCHES["mixed"], side)
        with torch.no_grad():
            got = ours(**inputs).logits
        for b, name in enumerate(BATCHES["mixed"]):
            embeds, _ = ref_sample(ref, processor, name)
            n = embeds.shape[0]
            rows = got[b, -n:] if side == "left" else got[b, :n]
            torch.testing.assert_close(rows, ref_logits(ref, embeds), rtol=1e-5, atol=1e-5)


def test_token_order_flag_selects_nvila_order(ref, processor, checkpoint):
    inputs = batch_inputs(processor, ["image"])
    column, _ = ref_sample(ref, processor, "image", column_major=True)
    row, _ = ref_sample(ref, processor, "image", column_major=False)
    model = hf_tokcomp.VilaForConditionalGeneration.from_pretrained(checkpoint, token_order="row_major")
    with torch.no_grad():
        got = model(**inputs).logits[0]
    torch.testing.assert_close(got, ref_logits(ref, row), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, ref_logits(ref, column), atol=1e-4)  # the orders really differ


def test_save_pretrained_round_trip(tmp_path, processor, ours):
    ours.compressor = hf_tokcomp.TokenCompressor(hf_tokcomp.TokenCompressorConfig(base_model_type="llava_llama"))
    ours.config.token_keep = 0.5
    ours.save_pretrained(tmp_path / "saved")
    for folder in ("llm", "vision_tower", "mm_projector", "compressor"):
        assert (tmp_path / "saved" / folder / "config.json").is_file()
    root = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert root["model_type"] == "llava_llama" and {"llm_cfg", "vision_tower_cfg", "mm_projector_cfg"} <= set(root)
    assert sorted(load_file(tmp_path / "saved" / "mm_projector" / "model.safetensors")) == [
        f"layers.{i}.{p}" for i in (1, 2, 4) for p in ("bias", "weight")
    ]
    back = hf_tokcomp.VilaForConditionalGeneration.from_pretrained(tmp_path / "saved")
    assert back.config.token_keep == 0.5 and isinstance(back.compressor, hf_tokcomp.TokenCompressor)
    inputs = batch_inputs(processor, BATCHES["mixed"])
    with torch.no_grad():
        assert torch.equal(back(**inputs).logits, ours(**inputs).logits)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values(), strict=True))


# ---- the compression contract -------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", list(BATCHES))
def test_keep_1_reproduces_the_uncompressed_port(checkpoint, processor, ours, batch):
    port = VilaPreTrainedForConditionalGeneration.from_pretrained(checkpoint)
    port.generation_config.eos_token_id = None
    inputs = batch_inputs(processor, BATCHES[batch])
    with torch.no_grad():
        assert torch.equal(ours(**inputs).logits, port(**inputs).logits)
        assert torch.equal(
            ours.generate(**inputs, max_new_tokens=NEW, do_sample=False),
            port.generate(**inputs, max_new_tokens=NEW, do_sample=False),
        )
    assert ours.last_compression is None


def kept_reference(ref, processor, names, inputs, keep):
    """Per sample: the reference embeddings scattered onto the padded layout, and the kept positions."""
    sizes = {processor.image_token_id: [], processor.video_token_id: []}
    per_sample = []
    for b, name in enumerate(names):
        embeds, runs = ref_sample(ref, processor, name)
        pad = int((inputs["attention_mask"][b] == 0).sum())
        per_sample.append((embeds, pad))
        for kind, n in runs:
            sizes[processor.image_token_id if kind == "image" else processor.video_token_id].append(n)
    kept = naive_kept_positions(inputs, sizes, fixed_scores, keep)
    return [
        (embeds[torch.tensor(k) - pad], torch.tensor(k) - pad)
        for (embeds, pad), k in zip(per_sample, kept, strict=True)
    ]


@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_fixed_scores_equal_reference_on_hand_shortened_sequence(ref, processor, ours, batch, with_mask):
    names = BATCHES[batch] if with_mask else BATCHES[batch][:1]
    inputs = batch_inputs(processor, names)
    reference = kept_reference(ref, processor, names, inputs, 0.5)
    if not with_mask:  # gapped 1-D positions must not be read as packed sequences
        del inputs["attention_mask"]
    ours.compressor, ours.config.token_keep = FixedScores(), 0.5
    with torch.no_grad():
        got = ours(**inputs, use_cache=False).logits
    for b, (embeds, positions) in enumerate(reference):
        torch.testing.assert_close(got[b, -embeds.shape[0] :], ref_logits(ref, embeds, positions), rtol=1e-5, atol=1e-5)
    frames = [[k for k in r.kinds] for r in ours.last_compression]
    expected = {"image": ["image"], "two_images": ["image", "image"], "video": ["video"] * 8}
    assert frames == [expected[n] for n in names]
    assert all(n == 16 for r in ours.last_compression for n in r.num_tokens)
    assert all(len(k) == 8 for r in ours.last_compression for k in r.kept)  # round(0.5 * 16)


def test_generate_matches_naive_loop_and_is_batch_invariant(ref, processor, ours):
    ours.compressor, ours.config.token_keep = FixedScores(), 0.25
    names = BATCHES["mixed"]
    inputs = batch_inputs(processor, names)
    reference = kept_reference(ref, processor, names, inputs, 0.25)
    with torch.no_grad():
        out = ours.generate(**inputs, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
        alone = ours.generate(**batch_inputs(processor, [names[1]]), max_new_tokens=NEW, do_sample=False)
        prompt_len = inputs["input_ids"].shape[1]
        assert torch.equal(out.sequences[:, :prompt_len], inputs["input_ids"])
        for b, (embeds, positions) in enumerate(reference):
            tokens = []
            for _ in range(NEW):  # naive greedy loop on the stock LLM, no cache
                tokens.append(int(ref_logits(ref, embeds, positions)[-1].argmax()))
                embeds = torch.cat([embeds, ref["llm"].get_input_embeddings().weight[tokens[-1]][None]])
                positions = torch.cat([positions, positions[-1:] + 1])
            assert out.sequences[b, prompt_len:].tolist() == tokens
    assert out.sequences[1, -NEW:].tolist() == alone[0, -NEW:].tolist()
    assert out.past_key_values.get_seq_length() == max(e.shape[0] for e, _ in reference) + NEW - 1


def test_fastv_keeping_everything_equals_naive_greedy_loop(ref, processor, ours):
    """FastV reaches VILA's LLM through the model hooks (``llm.model``, ``llm.lm_head``)."""
    from hf_tokcomp.evaluation.fastv import fastv_generate

    names = BATCHES["mixed"]
    inputs = batch_inputs(processor, names)
    out = fastv_generate(ours, inputs, token_keep=1.0, k=1, max_new_tokens=NEW)
    prompt_len = inputs["input_ids"].shape[1]
    for b, (embeds, positions) in enumerate(kept_reference(ref, processor, names, inputs, 1.0)):
        tokens = []
        for _ in range(NEW):
            tokens.append(int(ref_logits(ref, embeds, positions)[-1].argmax()))
            embeds = torch.cat([embeds, ref["llm"].get_input_embeddings().weight[tokens[-1]][None]])
            positions = torch.cat([positions, positions[-1:] + 1])
        assert out.sequences[b, prompt_len:].tolist() == tokens
    half = fastv_generate(ours, inputs, token_keep=0.5, k=1, max_new_tokens=2)
    visual = inputs["input_ids"] < 0
    assert half.keep[visual].sum() * 2 == visual.sum()  # 16 tokens per image / frame: exactly half of each kept


# ---- errors -------------------------------------------------------------------------------------------------
def copy_checkpoint(checkpoint, tmp_path):
    target = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, target)
    return target


def test_unsupported_checkpoints_are_refused(checkpoint, tmp_path):
    cls = hf_tokcomp.VilaForConditionalGeneration
    bad = copy_checkpoint(checkpoint, tmp_path)
    root = json.loads((bad / "config.json").read_text())
    intern = root | {"vision_tower_cfg": {"model_type": "intern_vit_6b", "architectures": ["InternVisionModel"]}}
    (bad / "config.json").write_text(json.dumps(intern))
    with pytest.raises(ValueError, match="InternViT-6B"):
        cls.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps(root | {"s2": True}))
    with pytest.raises(ValueError, match="`s2`=True"):
        cls.from_pretrained(bad)
    with pytest.raises(ValueError, match="AWQ"):
        cls.from_pretrained(tmp_path / "VILA1.5-3b-AWQ", compressor=None)


def test_missing_or_extra_weights_are_named(checkpoint, tmp_path):
    bad = copy_checkpoint(checkpoint, tmp_path)
    weights = load_file(bad / "mm_projector" / "model.safetensors")
    weights["layers.9.weight"] = weights.pop("layers.4.weight")
    save_file(weights, bad / "mm_projector" / "model.safetensors")
    llm = load_file(bad / "llm" / "model.safetensors")
    del llm["model.layers.1.mlp.up_proj.weight"]
    save_file(llm, bad / "llm" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"(?s)model\.layers\.1\.mlp\.up_proj\.weight.*layers\.4\.weight.*layers\.9"):
        hf_tokcomp.VilaForConditionalGeneration.from_pretrained(bad)


def test_bad_inputs_raise(checkpoint, tmp_path, processor, ours):
    cls = hf_tokcomp.VilaForConditionalGeneration
    with pytest.raises(Exception, match="token_keep"):
        cls.from_pretrained(checkpoint, token_keep=1.5)
    with pytest.raises(TypeError, match="tokn_keep"):
        cls.from_pretrained(checkpoint, tokn_keep=0.5)
    hf_tokcomp.TokenCompressor(hf_tokcomp.TokenCompressorConfig(base_model_type="qwen2_vl")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trained for model_type 'qwen2_vl'"):
        cls.from_pretrained(checkpoint, compressor=tmp_path)
    inputs = batch_inputs(processor, ["two_images"])
    for keep in (1.0, 0.5):
        ours.config.token_keep = keep
        with pytest.raises(ValueError, match="placeholder tokens and image features do not match"):
            ours(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:1])
        with pytest.raises(ValueError, match="`pixel_values` must be"):
            ours(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][0])
    with pytest.raises(ValueError, match="no `pixel_values`"):
        ours(input_ids=inputs["input_ids"])
    with pytest.raises(Exception, match="token_keep"):
        ours.config.token_keep = 0


def test_registry_and_auto_config(checkpoint):
    from hf_tokcomp.models.registry import load_compressed_model

    model = load_compressed_model(str(checkpoint), token_keep=0.5)
    assert isinstance(model, hf_tokcomp.VilaForConditionalGeneration) and model.config.token_keep == 0.5


def test_load_options_reach_every_part(checkpoint, processor, ours):
    eager = hf_tokcomp.VilaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager")
    assert eager.llm.config._attn_implementation == eager.vision_tower.config._attn_implementation == "eager"
    assert eager.config.llm_cfg is eager.llm.config
    inputs = batch_inputs(processor, BATCHES["mixed"])
    with torch.no_grad():
        real = inputs["attention_mask"].bool()  # padded rows are fully masked: kernels differ there
        torch.testing.assert_close(eager(**inputs).logits[real], ours(**inputs).logits[real], rtol=1e-5, atol=1e-5)
    half = hf_tokcomp.VilaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_prefill_flops_split_finds_the_vila_tower_on_every_path(processor, ours):
    from hf_tokcomp.evaluation.baselines import UniformScores
    from hf_tokcomp.evaluation.harness import prefill_flops

    inputs = dict(batch_inputs(processor, ["image"]))
    full = prefill_flops(ours, inputs, "attention", 1.0)
    ours.compressor = UniformScores()
    half = prefill_flops(ours, inputs, "ours", 0.5)
    assert full["vision"] == half["vision"] > 0
    assert full["compressor"] == half["compressor"] == 0  # UniformScores has no FLOPs
    assert full["total"] == full["vision"] + full["llm"] and half["total"] == half["vision"] + half["llm"]


def test_label_and_eval_commands_drive_vila(checkpoint, processor, tmp_path, capsys):
    """VilaProcessor speaks the message format, so `tokcomp label` and `tokcomp eval` work on VILA too."""
    import shutil

    from hf_tokcomp.cli import main as tokcomp

    named = shutil.copytree(checkpoint, tmp_path / "VILA1.5-3b-tiny")  # the name tells the template (vicuna_v1)
    for i in range(3):
        picture(10 + i).save(tmp_path / f"{i}.png")
    lines = [json.dumps({"image": f"{i}.png", "question": "What is in the picture?", "answer": "x"}) for i in range(3)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    assert processor.apply_chat_template(messages) == processor.apply_template(SAMPLES["image"][0])
    common = ["--model", str(named), "--data", str(tmp_path / "data.jsonl"), "--max-new-tokens", "2"]
    assert tokcomp(["label", *common, "--out", str(tmp_path / "labels")]) == 2  # every answer wrong: not quiet
    assert "nothing was labelled" in capsys.readouterr().err
    assert json.loads((tmp_path / "labels" / "manifest.json").read_text())["num_records"] == 3
    from hf_tokcomp.training.labels import load_label_dir

    # without reference answers the model's own answers are explained: every segment gets a real target
    unanswered = [json.dumps({k: v for k, v in json.loads(line).items() if k != "answer"}) for line in lines]
    (tmp_path / "own.jsonl").write_text("\n".join(unanswered) + "\n")
    for teacher in ("gae", "occlusion"):
        out = tmp_path / f"labels-{teacher}"
        own = ["--model", str(named), "--data", str(tmp_path / "own.jsonl"), "--max-new-tokens", "2"]
        assert tokcomp(["label", *own, "--out", str(out), "--teacher", teacher]) == 0
        _, segments = load_label_dir(out)
        assert len(segments) == 3 and all(float(s.target.abs().sum()) > 0 for s in segments), teacher
    argv = ["eval", *common, "--out", str(tmp_path / "eval"), "--keeps", "1", "0.5"]
    assert tokcomp([*argv, "--methods", "attention", "uniform", "teacher", "occlusion"]) == 2  # accuracy 0: refused
    assert "retention is undefined" in capsys.readouterr().err
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["visual_tokens"] == {"1.0": 16.0, "0.5": 8.0}
    assert tokcomp([*argv, "--methods", "fastv"]) == 2
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(result["accuracy"]["fastv"]) == {"1.0", "0.5"}  # FastV itself is checked in test_fastv_keeping_...


def test_feature_path_equals_reference_eager_attention(ref, processor, ours):
    """compressor=None on a padded batch keeps each image's (each frame's) top-k of the reference Llama's eager
    layer-0 attention, run per sample without padding on the reference embeddings, averaged by hand."""
    from .test_features import check_feature_path, hand_features, visual_runs

    names = BATCHES["mixed"]
    inputs = batch_inputs(processor, names)
    ids = inputs["input_ids"]
    visual = (ids == processor.image_token_id) | (ids == processor.video_token_id)
    expected = torch.zeros(ids.shape)
    text_config = ours.config.get_text_config()  # no turn markers: every non-template token is instruction
    template = tuple(t for t in (text_config.pad_token_id, text_config.eos_token_id) if t is not None)
    sizes = {processor.image_token_id: [], processor.video_token_id: []}
    ref["llm"].set_attn_implementation("eager")
    try:
        for b, name in enumerate(names):
            embeds, sample_runs = ref_sample(ref, processor, name)
            for kind, n in sample_runs:
                sizes[processor.image_token_id if kind == "image" else processor.video_token_id].append(n)
            with torch.no_grad():
                attn = ref["llm"](inputs_embeds=embeds[None], output_attentions=True).attentions[0]
            pad = ids.shape[1] - embeds.shape[0]  # left padding: reference index = padded index - pad
            own = (ids[b : b + 1, pad:], visual[b : b + 1, pad:], torch.ones(1, embeds.shape[0]))
            expected[b, pad:] = hand_features(attn, *own, template)[0]
    finally:
        ref["llm"].set_attn_implementation("sdpa")
    check_feature_path(ours, inputs, expected, visual_runs(ids, sizes))


def test_teachers_equal_naive_references_on_the_reference_llm(ref, processor, ours):
    """GAE: the naive full-matrix rollout on the reference Llama (eager) over the reference embeddings plus the
    answer; occlusion: its answer log-prob drop with one visual token left out (original positions kept)."""
    from hf_tokcomp.teachers.gae import visual_relevance
    from hf_tokcomp.teachers.occlusion import occlusion_relevance

    from .reference import naive_rollout

    inputs = batch_inputs(processor, ["image"])
    answer = torch.tensor([40, 41, 42])
    embeds, runs = ref_sample(ref, processor, "image")
    table = ref["llm"].get_input_embeddings()
    full = torch.cat([embeds, table(answer).detach()])
    ids = torch.cat([inputs["input_ids"][0], answer])
    visual = ids == processor.image_token_id
    got = visual_relevance(ours, inputs, [answer])[0]
    ref["llm"].set_attn_implementation("eager")
    try:
        result = ref["llm"](inputs_embeds=full[None], output_attentions=True, use_cache=False)
        expected = naive_rollout(result.logits, result.attentions, ids, len(answer))[visual]
    finally:
        ref["llm"].set_attn_implementation("sdpa")
    assert expected.abs().sum() > 0 and int(visual.sum()) == runs[0][1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    relevance = occlusion_relevance(ours, inputs, answer, chunk=8)
    n = full.shape[0]

    def logprob(kept: list[int]) -> float:
        index = torch.tensor(kept)
        logits = ref_logits(ref, full[index], index).log_softmax(-1)
        return sum(float(logits[len(kept) - len(answer) - 1 + t, a]) for t, a in enumerate(answer.tolist()))

    base = logprob(list(range(n)))
    occluded = torch.tensor([base - logprob([i for i in range(n) if i != v]) for v in visual.nonzero().flatten()])
    assert occluded.abs().max() > 1e-3
    torch.testing.assert_close(relevance, occluded, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["hybrid", "noncausal"])
def test_features_read_text_before_the_images_like_the_reference_layer0(ref, processor, ours, mode):
    """The template's text before the images (VILA has no turn markers: every non-template token is instruction)
    is read non-causally: the features equal the reference Llama's layer-0 attention module run by hand with a
    causal and a non-causal mask on the reference embeddings, per sample without padding, averaged by hand."""
    from hf_tokcomp.runtime.features import FeatureSpec

    from .test_features import layer0_probs, naive_segment_features, visual_runs

    names = BATCHES["mixed"]
    inputs = batch_inputs(processor, names)
    ids = inputs["input_ids"]
    text_config = ours.config.get_text_config()
    template = tuple(t for t in (text_config.pad_token_id, text_config.eos_token_id) if t is not None)
    with torch.no_grad():
        got = ours.compressor_features(**inputs, features=FeatureSpec(mode))
    llm = ref["llm"]
    for b, name in enumerate(names):
        embeds, sample_runs = ref_sample(ref, processor, name)
        n = embeds.shape[0]
        own = ids[b : b + 1, ids.shape[1] - n :]  # left padding removed
        visual = (own == processor.image_token_id) | (own == processor.video_token_id)
        sizes = {processor.image_token_id: [], processor.video_token_id: []}
        for kind, size in sample_runs:
            sizes[processor.image_token_id if kind == "image" else processor.video_token_id].append(size)
        with torch.no_grad():
            cos, sin = llm.model.rotary_emb(embeds[None], torch.arange(n)[None])
        mask = torch.ones(1, n)
        causal = layer0_probs(llm, llm.model.layers[0], embeds[None], cos, sin, mask, True)
        full = layer0_probs(llm, llm.model.layers[0], embeds[None], cos, sin, mask, False)
        runs = visual_runs(own, sizes)
        expected = naive_segment_features(causal, full, own, visual, mask, runs, mode, template)[0]
        assert any(not visual[0, :start].all() for start, _ in runs[0])  # text stands before the images
        for (_, features), want in zip(got[b], expected, strict=True):
            torch.testing.assert_close(features, want.mean(dim=0, keepdim=True), rtol=1e-5, atol=1e-6)
