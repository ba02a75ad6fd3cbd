import copy
import json

import numpy as np
import pytest
import torch
from run_helpers import copy_run, independent_gd_truth

from raytag.data.tasks import TaskSet
from raytag.distributed.groups import LEARNED, evaluate_groupings, finetune_group, load_finetune_inputs
from raytag.evaluation import per_task_metrics
from raytag.models import SignMLP
from raytag.models.finetune import PairMatrix
from raytag.models.training import predict, train_epoch


def reference_finetune(theta, features, taskset, pairs, group, epochs, lr, seed, batch_size):
    """Score every epoch on every node with the full split, then pick each task's best epoch."""
    torch.manual_seed(seed)
    model = copy.deepcopy(theta)
    train = PairMatrix.build(pairs, 1, np.asarray(group), model.num_tasks)
    x = torch.from_numpy(np.asarray(features[train.rows], dtype=np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        train_epoch(model, optimizer, x, train.labels, train.weights, batch_size, generator)
        history.append(per_task_metrics(predict(model, torch.from_numpy(np.asarray(features, np.float32))),
                                        taskset.labels, taskset.split))
    val = np.array([h["val_ap"] for h in history])[:, group]
    best = val.argmax(axis=0)
    return {t: {"best_epoch": int(best[i]) + 1, "test_ap": history[best[i]]["test_ap"][t],
                "test_f1": history[best[i]]["test_f1"][t]} for i, t in enumerate(group)}


def test_finetune_group_equals_full_evaluation_reference(tiny_run):
    run, _ = tiny_run
    theta, features, taskset, pairs = load_finetune_inputs(str(run.root))
    group = [1, 4, 6]
    got = finetune_group(theta, features, taskset, pairs, group, epochs=4, lr=3e-3, seed=5, batch_size=64)
    want = reference_finetune(theta, features, taskset, pairs, group, epochs=4, lr=3e-3, seed=5, batch_size=64)
    assert sorted(got) == group
    for task in group:
        assert got[task]["best_epoch"] == want[task]["best_epoch"]
        assert got[task]["test_ap"] == pytest.approx(want[task]["test_ap"], abs=1e-9)
        assert got[task]["test_f1"] == pytest.approx(want[task]["test_f1"], abs=1e-9)
    # θ* itself is untouched (every strategy starts from the same weights)
    assert torch.equal(theta.linears[0].weight, load_finetune_inputs.__wrapped__(str(run.root))[0].linears[0].weight)


def test_finetune_group_from_scratch_trains_a_fresh_model_of_the_same_shape(tiny_run):
    run, _ = tiny_run
    theta, features, taskset, pairs = load_finetune_inputs(str(run.root))
    group = [0, 3]
    got = finetune_group(theta, features, taskset, pairs, group, epochs=3, lr=3e-3, seed=7, batch_size=64,
                         from_scratch=True)
    torch.manual_seed(7)  # a SignMLP built under the same seed draws the same fresh weights
    fresh = SignMLP(theta.in_dim, theta.hidden_dims, theta.num_tasks, theta.dropout)
    want = reference_finetune(fresh, features, taskset, pairs, group, epochs=3, lr=3e-3, seed=7, batch_size=64)
    from_theta = finetune_group(theta, features, taskset, pairs, group, epochs=3, lr=3e-3, seed=7, batch_size=64)
    for task in group:
        assert got[task]["test_ap"] == pytest.approx(want[task]["test_ap"], abs=1e-9)
        assert got[task]["best_epoch"] == want[task]["best_epoch"]
    assert any(got[t]["test_ap"] != from_theta[t]["test_ap"] for t in group)  # θ*'s weights were not used


def test_groups_eval_strategies_margins_and_resume(tiny_run, tmp_path):
    shared, config = tiny_run
    run = copy_run(shared, tmp_path / "r")
    names = TaskSet.load(run.taskset).names
    result = evaluate_groupings(run, config)

    assert json.loads(run.groups_eval.read_text())["margins"] == result["margins"]
    strategies = result["strategies"]
    assert set(strategies) == {*LEARNED, "all_in_one_best_epoch", "ppr"}
    for name, entry in strategies.items():
        assert np.isfinite(entry["mean_test_ap"]) and np.isfinite(entry["mean_test_f1"]), name
    for name in LEARNED:
        assert set(strategies[name]["per_task"]) == set(names), name
        per_task_ap = [v["test_ap"] for v in strategies[name]["per_task"].values() if v["test_ap"] is not None]
        assert strategies[name]["mean_test_ap"] == pytest.approx(np.mean(per_task_ap))  # one seed
    ours = strategies["raytag_groups"]
    for other in ("all_in_one", "random_groups", "single_task"):
        margin = result["margins"][f"vs_{other}"]
        assert margin["test_ap"] == pytest.approx(ours["mean_test_ap"] - strategies[other]["mean_test_ap"])
        assert margin["test_f1"] == pytest.approx(ours["mean_test_f1"] - strategies[other]["mean_test_f1"])
    groups_json = json.loads(run.groups_json.read_text())["groups"]
    assert sorted(map(sorted, result["groups"])) == sorted(map(sorted, groups_json))
    assert result["noise"]["test_ap"] is None  # the tiny config runs one seed

    # the estimator's regime: the all-task GD fine-tune's validation losses, computed another way
    regime = result["estimator_regime"]
    assert set(regime["strategies"]) == {"raytag_groups", "all_in_one", "random_groups"}
    truth = independent_gd_truth(run, np.arange(len(names)), config.finetune.lr, config.finetune.steps)
    assert regime["strategies"]["all_in_one"]["mean_val_loss"] == pytest.approx(np.nanmean(truth), rel=1e-4)
    assert 0 <= regime["tasks_better_than_random"]["val_loss"] <= regime["tasks_better_than_random"]["of"] == len(names)

    # a rerun reads the cached trials: doctor the all-in-one trial and see it come back
    trials = sorted((run.root / "groups_trials").glob("*.json"))
    # 2 raytag groups + all-in-one + 1 single-task batch + 2 random groups; GD regime: raytag, all, random
    assert len(trials) == 9
    all_in_one = next(path for path in trials if path.name.startswith("all-"))
    doctored = json.loads(all_in_one.read_text())
    for entry in doctored["groups"][0].values():
        entry["test_ap"] = 0.5
    all_in_one.write_text(json.dumps(doctored))
    again = evaluate_groupings(run, config)
    assert sorted((run.root / "groups_trials").glob("*.json")) == trials
    assert again["strategies"]["all_in_one"]["mean_test_ap"] == pytest.approx(0.5)
    assert again["strategies"]["raytag_groups"] == {**strategies["raytag_groups"],
                                                    "seconds": again["strategies"]["raytag_groups"]["seconds"]}


def test_single_task_margin_on_common_tasks_skips_missing_and_nan():
    from raytag.distributed.groups import _common_task_margin

    ours = {"per_task": {"a": {"test_ap": 0.5}, "b": {"test_ap": 0.2}, "c": {"test_ap": 0.9}}}
    theirs = {"per_task": {"a": {"test_ap": 0.25}, "b": {"test_ap": None}}}  # c not trained, b without positives
    assert _common_task_margin(ours, theirs, "test_ap") == pytest.approx(0.25)
