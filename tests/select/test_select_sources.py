"""Source selection on a synthetic target whose loss is lowered by a known set of sources."""

import numpy as np
import pytest

from raytag.select import (
    greedy_forward_selection,
    random_sources,
    rank_by_gradient_cosine,
    rank_by_marginal_effect,
    rank_by_representation_cosine,
    sample_source_subsets,
)

N_TASKS, TARGET = 12, 0
HELPFUL, HARMFUL = {3, 5, 7}, {2}


def synthetic_loss(sources):
    chosen = set(sources)
    return 1.0 - 0.1 * len(chosen & HELPFUL) + 0.2 * len(chosen & HARMFUL)


def test_sample_source_subsets_are_valid():
    subsets = sample_source_subsets(N_TASKS, TARGET, m=300, size=4, seed=0)
    assert subsets.shape == (300, 4)
    assert not (subsets == TARGET).any()
    assert all(len(set(row)) == 4 for row in subsets.tolist())
    assert set(np.unique(subsets)) == set(range(1, N_TASKS))
    with pytest.raises(ValueError, match="size"):
        sample_source_subsets(N_TASKS, TARGET, m=3, size=N_TASKS)


def test_marginal_effect_finds_helpful_and_harmful_sources():
    rng = np.random.default_rng(0)
    subsets = sample_source_subsets(N_TASKS, TARGET, m=400, size=4, seed=1)
    losses = np.array([synthetic_loss(row) for row in subsets.tolist()]) + rng.normal(0, 0.01, size=400)
    result = rank_by_marginal_effect(subsets, losses, N_TASKS, TARGET)
    assert set(result["ranking"][:3]) == HELPFUL
    assert result["ranking"][-1] in HARMFUL
    assert TARGET not in result["ranking"] and len(result["ranking"]) == N_TASKS - 1
    # Reference computed directly, one source at a time.
    for source in range(1, N_TASKS):
        has = (subsets == source).any(1)
        assert result["effect"][source] == pytest.approx(losses[~has].mean() - losses[has].mean())
        assert result["count_with"][source] == has.sum()
    assert all(result["effect"][j] > 0.05 for j in HELPFUL) and result["effect"][2] < -0.1


def test_marginal_effect_ranks_unsampled_source_last():
    subsets = np.array([[1, 2], [1, 3], [2, 3]])
    result = rank_by_marginal_effect(subsets, np.array([0.5, 0.4, 0.9]), 5, 0)
    assert result["ranking"][-1] == 4 and np.isnan(result["effect"][4])
    assert result["ranking"][0] == 1  # subsets with 1 average 0.45, without 1: 0.9


def test_greedy_forward_selection_picks_helpful_then_stops():
    result = greedy_forward_selection(synthetic_loss, range(1, N_TASKS), budget=5)
    assert set(result["selected"]) == HELPFUL
    assert result["gains"] == pytest.approx([0.1, 0.1, 0.1])
    assert result["losses"] == pytest.approx([0.9, 0.8, 0.7]) and result["base_loss"] == 1.0
    capped = greedy_forward_selection(synthetic_loss, range(1, N_TASKS), budget=2)
    assert len(capped["selected"]) == 2 and set(capped["selected"]) <= HELPFUL
    forced = greedy_forward_selection(synthetic_loss, range(1, N_TASKS), budget=4, stop_when_no_gain=False)
    assert len(forced["selected"]) == 4 and 2 not in forced["selected"]


def test_cosine_baselines_rank_by_similarity():
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    grad = rank_by_gradient_cosine(0, vectors)
    assert grad["ranking"] == [1, 5, 2, 3, 4]  # zero vector: undefined cosine, ranked last
    assert grad["cosine"][5] == pytest.approx(1 / np.sqrt(2))
    assert rank_by_representation_cosine(0, vectors)["ranking"] == grad["ranking"]
    with pytest.raises(ValueError, match="target"):
        rank_by_gradient_cosine(9, vectors)


def test_random_sources_exclude_target():
    picks = random_sources(N_TASKS, 3, 5, seed=2)
    assert len(set(picks)) == 5 and 3 not in picks
