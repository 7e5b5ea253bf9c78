"""A real client: TRL's SFTTrainer fine-tunes a LoRA on the trained organism with compression active, through TRL's
own vision-language collator (which labels the whole conversation, prompt included)."""

import pytest
import torch

trl = pytest.importorskip("trl")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")


def test_sft_trainer_lora_with_compression(tmp_path):
    from hf_tokcomp.organism import load_organism, make_split

    model, processor = load_organism(token_keep=0.5, compressor="shipped")
    tokenizer = processor.tokenizer
    model.config.answer_start_ids = tokenizer.convert_tokens_to_ids(["<|im_start|>", "assistant"])
    rows = []
    for sample in make_split("train", 32):
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}
        answer = {"role": "assistant", "content": [{"type": "text", "text": sample.answer}]}
        rows.append({"messages": [user, answer], "images": [sample.image]})
    data = datasets.Dataset.from_list(rows)
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=8,
        learning_rate=5e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        max_length=None,
        seed=0,
    )
    lora = peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor, peft_config=lora)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])  # the loss falls

    # training-time selection (train mode, TRL's own batch with its full-conversation labels) equals the
    # selection generate() makes for the same prompt
    tuned = trainer.model
    batch = trainer.data_collator([data[0]])
    assert (batch["labels"][0] != -100).sum() > 10  # the collator really labels the prompt too
    prompt = processor.apply_chat_template(rows[0]["messages"][:1], add_generation_prompt=True)
    prompt_inputs = processor(text=[prompt], images=rows[0]["images"], return_tensors="pt")
    with torch.no_grad():
        tuned.train()
        tuned(**batch)
        at_training = model.last_compression[0].kept[0]
        tuned.eval()
        tuned.generate(**prompt_inputs, max_new_tokens=2)
        at_generate = model.last_compression[0]
    assert torch.equal(at_training, at_generate.kept[0])
    assert at_generate.num_kept == round(0.5 * at_generate.num_tokens[0]) < at_generate.num_tokens[0]  # compresses
