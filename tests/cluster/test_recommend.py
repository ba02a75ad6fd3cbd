import numpy as np
import pytest

from raytag.cluster.recommend import recommend_split

NAMES = ["a", "b", "c", "d"]


def test_groups_that_beat_all_in_one_and_random_are_recommended():
    verdict = recommend_split([0.1, 0.2, 0.05, -0.01], [0.02, 0.01, 0.03, -0.005], NAMES)
    assert verdict["split"] and verdict["groups_beat_random"]
    assert verdict["tasks_improved"] == 3 and verdict["tasks_improved_vs_random"] == 3
    assert verdict["predicted_gain"] == pytest.approx(np.mean([0.1, 0.2, 0.05, -0.01]))
    assert verdict["reason"].endswith("train one model per group")
    assert verdict["per_task_gain_vs_random"]["d"] == -0.005


def test_a_split_no_better_than_random_says_any_grouping_does():
    # splitting pays for every task, but random groups of the same sizes do as well for half
    verdict = recommend_split([0.1, 0.1, 0.1, 0.1], [0.01, -0.01, 0.02, -0.03], NAMES)
    assert verdict["split"] and not verdict["groups_beat_random"]
    assert "than random groups of the same sizes for 2/4" in verdict["reason"]
    assert "barely matters" in verdict["reason"]


def test_no_predicted_gain_keeps_one_model():
    verdict = recommend_split([-0.1, 0.05, -0.2, -0.01], [0.1, 0.1, 0.1, 0.1], NAMES)
    assert not verdict["split"] and not verdict["groups_beat_random"]
    assert verdict["reason"].endswith("train one all-task model")


def test_gains_must_cover_every_task():
    with pytest.raises(ValueError, match="one value per task \\(4\\)"):
        recommend_split([0.1, 0.2], [0.1, 0.2, 0.3, 0.4], NAMES)
