"""The validate stage on the tiny run: keys and values of validation.json, determinism of the
truth, reuse of cached trials, and the truth against an independent in-process fine-tune."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from run_helpers import copy_run, independent_gd_truth

METRIC_KEYS = ("within_task_spearman", "delta_relative_error", "affinity_spearman", "mean_relative_error",
               "spearman")
REQUIRED_KEYS = (*METRIC_KEYS, "baselines", "rerun_max_abs_diff", "stochastic_within_task_spearman",
                 "flops_ratio", "time_ratio", "n_subsets", "estimator", "projector", "d")


@pytest.fixture(scope="module")
def validated(tiny_run, tmp_path_factory):
    """The tiny run validated twice: (run, config, first result, second result, file mtimes
    after the first call, file mtimes after the second)."""
    from raytag.distributed.validate import run_validation

    run, config = tiny_run
    run = copy_run(run, tmp_path_factory.mktemp("validate") / "run")
    first = run_validation(run, config)
    trial_files = sorted((run.root / "validate").glob("trials-*/*.json"))
    mtimes = {path: path.stat().st_mtime_ns for path in trial_files}
    second = run_validation(run, config)
    mtimes_again = {path: path.stat().st_mtime_ns for path in trial_files}
    return run, config, first, second, mtimes, mtimes_again


def test_validation_json_has_every_key_with_finite_values(validated):
    run, _, result, _, _, _ = validated
    written = json.loads(run.validation.read_text())
    assert written["n_subsets"] == result["n_subsets"] == 8
    for key in REQUIRED_KEYS:
        assert key in written, key
    for key in (*METRIC_KEYS, "rerun_max_abs_diff", "flops_ratio", "time_ratio"):
        assert written[key] is not None and math.isfinite(written[key]), key
    for name in ("no_change", "task_mean"):
        assert set(METRIC_KEYS) <= set(written["baselines"][name])
    # the loss at θ* does not vary across subsets: its within-task rank correlation is undefined
    assert written["baselines"]["no_change"]["within_task_spearman"] is None
    assert written["baselines"]["no_change"]["delta_relative_error"] == pytest.approx(1.0)
    assert written["d"] == 24 and written["steps"] == 10 and written["output"] == "validation.json"
    assert written["estimator"].startswith("LinearizedFineTune(lr=0.05, steps=10")
    assert written["projector"] == "taskgrad"
    assert 0 < written["flops_ratio"] < 1
    stochastic = written["stochastic_within_task_spearman"]
    assert stochastic is None or -1 <= stochastic <= 1
    assert written["base_loss_check"] < 1e-4  # the store's base logits are the model's


def test_design_is_recorded_and_covers_validated_tasks(validated):
    _, _, result, _, _, _ = validated
    design = result["design"]
    subsets = np.array(design["subsets"])
    assert subsets.shape == (8, 3) and len(design["validated_tasks"]) == 4
    assert set(subsets.ravel()) <= set(design["validated_tasks"])
    # 8 subsets of 3 over 4 tasks reach 6 appearances each, not 8: the lowered floor is recorded
    assert design["min_appearances"] == 6
    appearances = [(subsets == t).any(1).sum() for t in design["validated_tasks"]]
    assert appearances == design["appearances"] and min(appearances) >= 6


def test_truth_is_deterministic_and_moves_the_losses(validated):
    run, _, result, _, _, _ = validated
    assert result["rerun_max_abs_diff"] < 1e-6
    pairs = json.loads((run.root / "validation_pairs.json").read_text())
    true, base = np.array(pairs["true"]), np.array(pairs["base"])
    assert true.size == result["n_pairs"] == 8 * 3
    assert np.abs(true - base).max() > 1e-3


def test_second_call_reuses_cached_trials(validated):
    _, _, first, second, mtimes, mtimes_again = validated
    distinct = {tuple(subset) for subset in first["design"]["subsets"]}  # a repeated subset runs once
    n_trials = len(distinct) + 1 + 2  # design subsets, the rerun, one subset under two Adam seeds
    assert first["trials_run"] == n_trials and first["trials_cached"] == 0
    assert second["trials_run"] == 0 and second["trials_cached"] == n_trials
    assert len(mtimes) == n_trials and mtimes == mtimes_again
    for key in METRIC_KEYS:
        assert second[key] == first[key]


def test_true_loss_matches_independent_fine_tune(validated):
    run, config, result, _, _, _ = validated
    pairs = json.loads((run.root / "validation_pairs.json").read_text())
    subset_index = 1
    subset = np.array(result["design"]["subsets"][subset_index])
    expected = independent_gd_truth(run, subset, config.finetune.lr, config.finetune.steps)
    rows = np.array(pairs["subset"]) == subset_index
    tasks = np.array(pairs["task"])[rows]
    np.testing.assert_allclose(np.array(pairs["true"])[rows], expected[tasks], rtol=0, atol=2e-5)


def test_overlapping_subsets_make_tasks_recur():
    from raytag.distributed.validate import _overlapping_subsets

    subsets = np.array([[0, 1, 2], [3, 4, 5], [0, 1, 3], [6, 7, 8], [0, 1, 4]])
    chosen = _overlapping_subsets(subsets, 9, 3)
    assert chosen.tolist() == [0, 2, 4]  # tasks 0 and 1 appear in all three


def test_output_paths_keep_longer_fine_tunes_apart(tmp_path):
    from raytag.distributed.validate import output_paths
    from raytag.rundir import RunDir

    run = RunDir(tmp_path)
    assert output_paths(run, 1.0) == (run.validation, run.root / "validation_pairs.json")
    assert [p.name for p in output_paths(run, 4.0)] == ["validation_x4.json", "validation_pairs_x4.json"]
    assert [p.name for p in output_paths(run, 0.5)] == ["validation_x0.5.json", "validation_pairs_x0.5.json"]


def test_anchor_offsets_are_real_minus_estimated_loss_and_shift_the_stored_estimates(validated):
    from raytag.pipeline import load_gradient_data, make_estimator

    run, config, result, _, _, _ = validated
    record = json.loads((run.estimate_dir / "anchors.json").read_text())
    names, offsets = record["tasks"], np.array(record["offsets"])
    assert sorted(name for anchor in record["anchors"] for name in anchor) == sorted(names)
    anchor = np.array([names.index(name) for name in record["anchors"][0]])
    estimator = make_estimator(config).fit(load_gradient_data(run))
    real = independent_gd_truth(run, anchor, config.finetune.lr, config.finetune.steps)
    np.testing.assert_allclose(offsets[anchor], (real - estimator.predict(anchor[None, :])[0])[anchor], atol=2e-5)
    subsets = np.load(run.estimate_dir / "subsets.npy")
    raw = estimator.predict(subsets, members_only=True)
    np.testing.assert_allclose(np.load(run.estimate_dir / "losses.npy"), raw + offsets[None, :], atol=1e-5)
    assert result["flops"]["anchors"] > 0
