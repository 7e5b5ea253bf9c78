"""The occlusion teacher against the stock model run on hand-shortened sequences (one token left out)."""

import pytest
import torch

from hf_tokcomp.teachers.occlusion import occlusion_relevance
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs

from .reference import stock_logits_on_shortened


def test_occlusion_is_the_answer_logprob_drop_of_the_stock_model(stock, ours):
    prompt, answer = [5, 6, 7], [40, 41]
    parts = [("text", prompt), ("image", (4, 6)), ("text", [8, 9])]
    inputs = make_qwen_inputs([parts], stock.config)
    with_answer = make_qwen_inputs([[*parts, ("text", answer)]], stock.config)
    inputs["pixel_values"] = with_answer["pixel_values"]  # pixels are seeded by the sample's content
    relevance = occlusion_relevance(ours, inputs, torch.tensor(answer), chunk=4)  # chunks of 3 + the full copy

    ids = with_answer["input_ids"][0].tolist()
    visual = [i for i, t in enumerate(ids) if t == stock.config.image_token_id]
    n = len(ids)

    def logprob(kept: list[int]) -> float:
        with torch.no_grad():
            logits = stock_logits_on_shortened(stock, with_answer, [kept])[0].log_softmax(-1)
        # the answer's tokens are the last len(answer) kept positions, each predicted by the one before
        return sum(float(logits[len(kept) - len(answer) - 1 + t, a]) for t, a in enumerate(answer))

    base = logprob(list(range(n)))
    expected = torch.tensor([base - logprob([i for i in range(n) if i != v]) for v in visual])
    assert relevance.shape == (len(visual),) == (6,)
    torch.testing.assert_close(relevance, expected, atol=1e-4, rtol=1e-4)
    assert expected.abs().max() > 1e-3  # the reference is not trivially zero


def test_occlusion_takes_one_sample(stock, ours):
    inputs = make_qwen_inputs([[("image", (2, 2)), ("text", [5])]] * 2, stock.config)
    with pytest.raises(ValueError, match="one sample"):
        occlusion_relevance(ours, inputs, torch.tensor([4]))
