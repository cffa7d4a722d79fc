"""Token-budget batching: the plan's bounds and optimality, and embedding results equal to one text at a time."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from conftest import tiny_clip

from longclip.batching import padded_tokens, plan_batches
from longclip.models import LongCLIPModel


def _brute_force_cost(lengths, batch_size, budget, overhead):
    """Cheapest contiguous split of the length-sorted items, by trying every set of cut points."""
    ordered = sorted(lengths, reverse=True)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(ordered) - 1):
        batches, current = [], [ordered[0]]
        for length, cut in zip(ordered[1:], cuts, strict=True):
            if cut:
                batches.append(current)
                current = []
            current.append(length)
        batches.append(current)
        if any(len(b) > batch_size or (len(b) > 1 and len(b) * b[0] > budget) for b in batches):
            continue
        best = min(best, sum(len(b) * b[0] + overhead for b in batches))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_the_cheapest_split_within_its_bounds(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(5, 20), rng.randint(150, 230)]) for _ in range(11)]
    batch_size, budget, overhead = 4, 600, 32
    plan = plan_batches(lengths, batch_size, budget, overhead)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) <= batch_size
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= budget
    cost = padded_tokens(lengths, plan) + overhead * len(plan)
    assert cost == _brute_force_cost(lengths, batch_size, budget, overhead)


def test_a_batch_never_straddles_long_and_short_texts_when_that_costs_padding():
    lengths = [200] * 20 + [12] * 20
    plan = plan_batches(lengths, batch_size=32, token_budget=None)
    for batch in plan:
        assert len({lengths[i] for i in batch}) == 1
    # fixed batches of 32 would compute 32*200 + 8*200 = 8000 tokens; the plan computes the real 4240
    assert padded_tokens(lengths, plan) == 20 * 200 + 20 * 12


def test_token_budget_bounds_every_batch_and_an_overlong_item_stands_alone():
    lengths = [300, 120, 120, 120, 60, 60, 60, 60, 60]
    plan = plan_batches(lengths, batch_size=64, token_budget=250)
    assert [0] in plan
    for batch in plan:
        if len(batch) > 1:
            assert len(batch) * max(lengths[i] for i in batch) <= 250


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        plan_batches([3], 0)
    with pytest.raises(ValueError, match="token_budget must be positive or None, got 0"):
        plan_batches([3], 4, token_budget=0)
    assert plan_batches([], 4) == []


@pytest.fixture(scope="module")
def model():
    return LongCLIPModel(tiny_clip())


def _text_of(rng: random.Random, words: int) -> str:
    vocabulary = ["red", "cube", "left", "a", "small", "blue", "circle", "striped", "above", "the", "green", "large"]
    return " ".join(rng.choice(vocabulary) for _ in range(words))


@pytest.mark.parametrize("seed", range(3))
def test_embedding_equals_one_text_at_a_time_for_random_length_mixes(model, seed):
    rng = random.Random(seed)
    texts = [_text_of(rng, rng.choice([rng.randint(2, 12), rng.randint(100, 240)])) for _ in range(40)]
    texts.insert(rng.randrange(len(texts)), _text_of(rng, 600))  # one very long text among many (truncated)
    batched = model.embed_texts(texts, batch_size=16, token_budget=1024)
    alone = torch.cat([model.embed_texts([t], batch_size=1) for t in texts])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_chunk_mode_with_budget_equals_one_text_at_a_time(model):
    rng = random.Random(7)
    texts = [_text_of(rng, 5), _text_of(rng, 700), _text_of(rng, 30), _text_of(rng, 400)]
    batched = model.embed_texts(texts, long_texts="chunk", batch_size=8, token_budget=600)
    alone = torch.cat([model.embed_texts([t], long_texts="chunk", batch_size=1) for t in texts])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
