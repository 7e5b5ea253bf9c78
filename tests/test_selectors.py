"""Selectors against naive implementations written here from each paper's definition (plain loops, no shared
code), on random embeddings and through generate() on the tiny models (batch > 1, left padding)."""

from __future__ import annotations

import math

import pytest
import torch

from hf_tokcomp.runtime.selectors import SELECTOR_NAMES, SELECTORS, SegmentBatch
from hf_tokcomp.testing.tiny_qwen import make_qwen_inputs

from .reference import qwen_segment_sizes, stock_merged_embeddings
from .test_features import TEMPLATE, feature_layer

# ---- naive references -----------------------------------------------------------------------------------------


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / max(math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)), 1e-12)


def naive_divprune(embeds: list[list[float]], k: int) -> list[int]:
    n = len(embeds)
    d = [[1 - cos(embeds[i], embeds[j]) for j in range(n)] for i in range(n)]
    nearest = [min((d[i][j] for j in range(n) if j != i), default=0.0) for i in range(n)]
    kept = [max(range(n), key=lambda i: (nearest[i], -i))]
    while len(kept) < k:
        rest = [i for i in range(n) if i not in kept]
        kept.append(max(rest, key=lambda i: (min(d[i][j] for j in kept), -i)))
    return sorted(kept)


def naive_cdpruner(embeds: list[list[float]], query: list[list[float]], k: int) -> list[int]:
    n = len(embeds)
    rel = [sum(cos(e, q) for q in query) / len(query) for e in embeds]
    low, high = min(rel), max(rel)
    rel = [(r - low) / (high - low) if high > low else 1.0 for r in rel]
    kernel = torch.tensor(
        [[rel[i] * cos(embeds[i], embeds[j]) * rel[j] for j in range(n)] for i in range(n)], dtype=torch.float64
    )
    kept: list[int] = []
    while len(kept) < k:  # the greedy MAP by brute force: the largest det of the grown kernel
        dets = {i: float(torch.linalg.det(kernel[kept + [i]][:, kept + [i]])) for i in range(n) if i not in kept}
        kept.append(max(dets, key=lambda i: (dets[i], -i)))
    return sorted(kept)


def naive_dart(embeds, keys, query, query_keys, k, pivot_image=4, pivot_text=4) -> list[int]:
    n = len(embeds)
    norm = [sum(abs(x) for x in key) for key in keys]
    qnorm = [sum(abs(x) for x in key) for key in query_keys]
    image = sorted(range(n), key=lambda i: (-norm[i], i))[: min(pivot_image, k)]
    text = sorted(range(len(query)), key=lambda j: (-qnorm[j], j))[: min(pivot_text, len(query))]
    kept = list(image)
    pivots = [embeds[i] for i in image] + [query[j] for j in text]
    left = k - len(kept)
    for p, pivot in enumerate(pivots):
        take = left // len(pivots) + (1 if p < left % len(pivots) else 0)
        rest = sorted((i for i in range(n) if i not in kept), key=lambda i: (cos(embeds[i], pivot), i))
        kept += rest[:take]
    return sorted(kept)


def naive_uniform(t: int, h: int, w: int, k: int) -> list[int]:
    bits = [max(0, (s - 1).bit_length()) for s in (t, h, w)]
    keys = []
    for index in range(t * h * w):
        coords = (index // (h * w), (index // w) % h, index % w)
        code = ""  # least significant level first: x, y, t at each level; read backwards = reversed
        for level in range(max(bits)):
            for axis in (2, 1, 0):
                if level < bits[axis]:
                    code += str((coords[axis] >> level) & 1)
        keys.append((code, index))  # the string IS the reversed code, most significant character first
    return sorted(i for _, i in sorted(keys)[:k])


# ---- on random embeddings -------------------------------------------------------------------------------------
def random_batch(lengths, grids=None, dim=16, rows=(3, 5, 2), seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    embeds = torch.randn(len(lengths), width, dim, generator=gen)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    query = torch.randn(len(lengths), max(rows), dim, generator=gen)
    query_mask = torch.arange(max(rows))[None, :] < torch.tensor(rows[: len(lengths)])[:, None]
    return SegmentBatch(
        features=torch.rand(len(lengths), 1, width, generator=gen) * mask[:, None],
        embeds=embeds,
        mask=mask,
        lengths=list(lengths),
        grids=grids or [(1, 1, n) for n in lengths],
        query=query,
        query_mask=query_mask,
    )


def kept_lists(selection):
    return [row[valid].tolist() for row, valid in zip(selection.kept, selection.valid, strict=True)]


LENGTHS, COUNTS = (12, 7, 16), [3, 5, 6]


def test_divprune_equals_the_naive_greedy():
    batch = random_batch(LENGTHS)
    got = kept_lists(SELECTORS["divprune"]().select(batch, COUNTS))
    expected = [
        naive_divprune(batch.embeds[s, :n].tolist(), k) for s, (n, k) in enumerate(zip(LENGTHS, COUNTS, strict=True))
    ]
    assert got == expected


def test_cdpruner_equals_the_brute_force_greedy_map():
    batch = random_batch(LENGTHS)
    got = kept_lists(SELECTORS["cdpruner"]().select(batch, COUNTS))
    expected = []
    for s, (n, k) in enumerate(zip(LENGTHS, COUNTS, strict=True)):
        rows = int(batch.query_mask[s].sum())
        expected.append(naive_cdpruner(batch.embeds[s, :n].tolist(), batch.query[s, :rows].tolist(), k))
    assert got == expected


def test_dart_equals_the_naive_pivot_rule_without_a_layer():
    batch = random_batch(LENGTHS)
    counts = [9, 5, 11]
    got = kept_lists(SELECTORS["dart"]().select(batch, counts))
    expected = []
    for s, (n, k) in enumerate(zip(LENGTHS, counts, strict=True)):
        rows = int(batch.query_mask[s].sum())
        e, q = batch.embeds[s, :n].tolist(), batch.query[s, :rows].tolist()
        expected.append(naive_dart(e, e, q, q, k))  # without a layer the keys are the embeddings
    assert got == expected


@pytest.mark.parametrize("grid", [(1, 4, 4), (1, 3, 5), (2, 4, 6), (1, 1, 9)])
def test_uniform_spreads_over_the_grid_like_the_naive_order(grid):
    n = math.prod(grid)
    batch = random_batch([n], grids=[grid])
    for k in (1, 3, n // 4, n // 2, n):
        got = kept_lists(SELECTORS["uniform"]().select(batch, [max(1, k)]))[0]
        assert got == naive_uniform(*grid, max(1, k)), k
    if grid == (1, 4, 4):  # a quarter of a 4 x 4 grid: one token in each 2 x 2 quadrant
        quarter = naive_uniform(1, 4, 4, 4)
        assert sorted((i // 4 // 2, i % 4 // 2) for i in quarter) == [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("name", list(SELECTORS))
def test_every_selector_keeps_exactly_the_budget(name):
    batch = random_batch(LENGTHS)
    batch.compressor = None if name != "learned" else _features_as_scores()
    selection = SELECTORS[name]().select(batch, COUNTS)
    for row, n, k in zip(kept_lists(selection), LENGTHS, COUNTS, strict=True):
        assert len(row) == k and len(set(row)) == k and row == sorted(row) and all(0 <= i < n for i in row)


def _features_as_scores():
    class Identity(torch.nn.Module):
        def forward(self, features, mask=None):
            return features[:, 0]

    return Identity()


# ---- through the model ------------------------------------------------------------------------------------------
A = [("text", [5, 6]), ("image", (8, 8)), ("text", [7, 8, 9])]
B = [("text", [5]), ("image", (4, 6)), ("text", [10, 11]), ("image", (4, 4)), ("text", [12, 20, 21])]


@pytest.mark.parametrize("name", ["divprune", "cdpruner", "dart", "uniform"])
def test_selectors_through_generate_equal_the_naive_reference_and_are_batch_invariant(stock, ours, name):
    """Left-padded batch of two samples with three images: the kept tokens of every image equal the naive
    method on the stock model's merged embeddings (instruction = the sample's text, before and after), and a
    sample keeps and generates the same alone and in the batch."""
    ours.config.token_keep, ours.config.selector = 0.25, name
    ours.generation_config.eos_token_id = None
    inputs = make_qwen_inputs([A, B], stock.config)
    with torch.no_grad():
        batch_out = ours.generate(**inputs, max_new_tokens=3, do_sample=False)
        records = ours.last_compression
        alone_out = ours.generate(**make_qwen_inputs([B], stock.config), max_new_tokens=3, do_sample=False)
        alone = ours.last_compression
        embeds = stock_merged_embeddings(stock, inputs)
    assert records[0].selector == name
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    sizes = qwen_segment_sizes(inputs, stock.config)[stock.config.image_token_id]
    grids = [tuple(g) for g in inputs["image_grid_thw"].tolist()]
    layer0 = feature_layer(stock.model.language_model)
    segment = 0
    for b, record in enumerate(records):
        row = ids[b].tolist()
        visual = [i for i, t in enumerate(row) if t == stock.config.image_token_id]
        rows = [i for i in range(len(row)) if mask[b, i] and i not in visual and row[i] not in TEMPLATE]
        query = embeds[b, rows]
        starts = [i for i in visual if i - 1 not in visual]  # the images are separated by text
        offset = 0
        for start, kept in zip(starts, record.kept, strict=True):
            n = sizes[segment]
            e = embeds[b, start : start + n]
            k = len(kept)
            if name == "divprune":
                expected = naive_divprune(e.tolist(), k)
            elif name == "cdpruner":
                expected = naive_cdpruner(e.tolist(), query.tolist(), k)
            elif name == "dart":
                with torch.no_grad():
                    keys = layer0.self_attn.k_proj(layer0.input_layernorm(e)).tolist()
                    query_keys = layer0.self_attn.k_proj(layer0.input_layernorm(query)).tolist()
                expected = naive_dart(e.tolist(), keys, query.tolist(), query_keys, k)
            else:
                t, h, w = grids[segment]
                expected = naive_uniform(t, h // 2, w // 2, k)
            assert k == max(1, round(0.25 * n))
            assert (kept - offset).tolist() == expected, (b, segment)
            offset += n
            segment += 1
    assert all(torch.equal(x, y) for x, y in zip(records[1].kept, alone[0].kept, strict=True))
    assert batch_out[1, -3:].tolist() == alone_out[0, -3:].tolist()


def test_bad_selector_values_raise_listing_the_allowed_ones(stock_checkpoint, family, ours):
    from .conftest import FAMILIES

    with pytest.raises(Exception, match="`selector` must be one of"):  # huggingface_hub's validation error
        ours.config.selector = "divprun"
    assert ours.config.selector == "auto"
    with pytest.raises(Exception, match=r"'divprune'"):
        FAMILIES[family][1].from_pretrained(stock_checkpoint[1], selector=3)
    for name in SELECTOR_NAMES:
        ours.config.selector = name
    ours.config.selector = "learned"
    with pytest.raises(ValueError, match="needs a compressor"):
        ours.config.token_keep = 0.5
        ours(**make_qwen_inputs([A], ours.config))


# ---- token_coverage ---------------------------------------------------------------------------------------------
def naive_coverage(scores: list[float], grid: tuple[int, int, int], k: int, coverage: float) -> list[int]:
    """The first round(coverage * k) tokens of the grid's coarse-to-fine order, then the best scores of the rest
    (ties to the earlier token), in plain Python."""
    first = naive_uniform(*grid, round(coverage * k))
    rest = sorted((i for i in range(len(scores)) if i not in first), key=lambda i: (-scores[i], i))
    return sorted(first + rest[: k - len(first)])


@pytest.mark.parametrize("coverage", [0.25, 0.5, 0.9])
def test_coverage_reserves_the_grid_order_then_takes_the_best_scores(coverage):
    grids = [(1, 4, 4), (1, 3, 5), (2, 4, 6)]
    lengths = [math.prod(g) for g in grids]
    batch = random_batch(lengths, grids=grids)
    batch.compressor, batch.coverage = _features_as_scores(), coverage
    counts = [6, 7, 20]
    got = kept_lists(SELECTORS["learned"]().select(batch, counts))
    for s, (grid, n, k) in enumerate(zip(grids, lengths, counts, strict=True)):
        assert got[s] == naive_coverage(batch.features[s, 0, :n].tolist(), grid, k, coverage), s
    batch.coverage = 0.0  # without it: the plain top-k, which differs here
    assert kept_lists(SELECTORS["learned"]().select(batch, counts)) != got


def test_coverage_through_generate_equals_the_naive_rule_on_the_models_features(stock, ours):
    """Two samples, three images, keep 0.25 with half of each budget spread over the grid: every image keeps the
    naive rule's tokens on the layer-0 features (checked against the stock model in test_features)."""
    ours.config.token_keep, ours.config.selector, ours.config.token_coverage = 0.25, "attention", 0.5
    ours.generation_config.eos_token_id = None
    inputs = make_qwen_inputs([A, B], stock.config)
    with torch.no_grad():
        ours.generate(**inputs, max_new_tokens=2, do_sample=False)
        records = ours.last_compression
        features = ours.compressor_features(**inputs)
    grids = [tuple(g) for g in inputs["image_grid_thw"].tolist()]
    segment = 0
    for b, record in enumerate(records):
        offset = 0
        for kept, (_, f) in zip(record.kept, features[b], strict=True):
            t, h, w = grids[segment]
            n = f.shape[-1]
            expected = naive_coverage(f.mean(dim=0).tolist(), (t, h // 2, w // 2), max(1, round(0.25 * n)), 0.5)
            assert (kept - offset).tolist() == expected, (b, segment)
            offset, segment = offset + n, segment + 1


def test_coverage_is_refused_where_it_cannot_apply(stock, ours, stock_checkpoint, family):
    from .conftest import FAMILIES

    ours.config.token_keep, ours.config.selector, ours.config.token_coverage = 0.25, "divprune", 0.5
    inputs = make_qwen_inputs([A], stock.config)
    with pytest.raises(ValueError, match=r"`token_coverage` \(0.5\) applies to score selectors.*'divprune'"):
        ours(**inputs)
    for bad in (1.0, -0.1, True, "half"):
        with pytest.raises(Exception, match="`token_coverage` must be a number in \\[0, 1\\)"):
            ours.config.token_coverage = bad
    loaded = FAMILIES[family][1].from_pretrained(stock_checkpoint[1], token_keep=0.5, token_coverage=0.25)
    assert loaded.config.token_coverage == 0.25
