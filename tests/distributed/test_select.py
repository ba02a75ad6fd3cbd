import json

import numpy as np
import pytest
import torch
from run_helpers import copy_run, independent_gd_truth

from raytag import pipeline
from raytag.data.pairs import Pairs
from raytag.data.tasks import TaskSet
from raytag.distributed.groups import FINETUNE_BATCH_SIZE, finetune_group, finetune_jobs, load_finetune_inputs
from raytag.distributed.select import select_sources, verify_summary
from raytag.models import load_model


def cosine_ranking(vectors, target, names):
    cosine = vectors @ vectors[target] / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(vectors[target]))
    others = [j for j in range(len(names)) if j != target]
    return [names[j] for j in sorted(others, key=lambda j: (-cosine[j], j))]


@pytest.fixture(scope="module")
def selected(tiny_run, tmp_path_factory):
    shared, config = tiny_run
    run = copy_run(shared, tmp_path_factory.mktemp("select") / "r")
    names = TaskSet.load(run.taskset).names
    return run, config, names, select_sources(run, config, names[2], budget=3)


def test_select_chooses_budget_sources_with_the_estimators_losses(selected):
    run, config, names, result = selected
    target = names[2]
    assert json.loads(run.select_json(target).read_text())["chosen"] == result["chosen"]
    assert len(result["chosen"]) == 3 and len(set(result["chosen"])) == 3
    assert target not in result["chosen"] and set(result["chosen"]) <= set(names)
    others = sorted(set(names) - {target})
    for ranking in (result["ranking_marginal"], result["baselines"]["gradient_cosine"],
                    result["baselines"]["representation_cosine"]):
        assert sorted(ranking) == others
    assert result["ranking_greedy"] == result["chosen"]

    estimator = pipeline.make_estimator(config).fit(pipeline.load_gradient_data(run))
    chosen = [names.index(name) for name in result["chosen"]]
    alone = estimator.predict(np.array([[2]]))[0, 2]
    together = estimator.predict(np.array([[2, *chosen]]))[0, 2]
    assert result["estimated_loss"]["target_alone"] == pytest.approx(alone, rel=1e-5)
    assert result["estimated_loss"]["with_chosen"] == pytest.approx(together, rel=1e-5)
    assert sum(result["estimated_gains"].values()) == pytest.approx(alone - together, rel=1e-4, abs=1e-7)


def test_similarity_baselines_match_per_task_loops(selected):
    run, _, names, result = selected
    data = pipeline.load_gradient_data(run)
    gradients = []
    for task in range(len(names)):
        rows = (data.task == task) & (data.split == 1)
        residual = 1 / (1 + np.exp(-data.base_logits[rows].astype(np.float64))) - data.label[rows]
        weight = data.weight[rows].astype(np.float64)
        gradients.append((weight * residual) @ data.grads[rows].astype(np.float64) / weight.sum())
    assert result["baselines"]["gradient_cosine"] == cosine_ranking(np.array(gradients), 2, names)

    pairs, model = Pairs.load(run.pairs), load_model(run.checkpoint)
    features = np.load(run.features)
    embeddings = []
    for task in range(len(names)):
        nodes = pairs.node[(pairs.task == task) & (pairs.split == 1) & (pairs.label == 1)]
        with torch.no_grad():
            embeddings.append(model.embed(torch.from_numpy(features[nodes])).double().mean(0).numpy())
    assert result["baselines"]["representation_cosine"] == cosine_ranking(np.array(embeddings), 2, names)


def test_unknown_target_is_named(selected):
    run, config, names, _ = selected
    with pytest.raises(ValueError, match=r"no_such_task.*" + names[0]):
        select_sources(run, config, "no_such_task", budget=2)
    with pytest.raises(ValueError, match="budget"):
        select_sources(run, config, names[0], budget=len(names))


def test_verify_fine_tunes_every_alternative(tiny_run, tmp_path):
    shared, config = tiny_run
    run = copy_run(shared, tmp_path / "r")
    names = TaskSet.load(run.taskset).names
    result = select_sources(run, config, names[0], budget=2, verify=True)
    verify = result["verify"]
    assert set(verify) == {"chosen", "target_alone", "random_sources", "marginal_top_k",
                           "gradient_cosine", "representation_cosine"}
    for strategy, entry in verify.items():
        assert np.isfinite(entry["test_ap"]) and np.isfinite(entry["test_f1"]), strategy
    assert verify["random_sources"]["runs"] == 3 * config.groups.seeds
    assert verify["chosen"]["sources"] == [result["chosen"]]
    assert verify["gradient_cosine"]["sources"] == [result["baselines"]["gradient_cosine"][:2]]

    # the trial's number is the shared fine-tune's, run here in-process with the trial's thread count
    theta, features, taskset, pairs = load_finetune_inputs(str(run.root))
    group = [0, *(names.index(name) for name in result["chosen"])]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        direct = finetune_group(theta, features, taskset, pairs, group, epochs=config.groups.epochs,
                                lr=config.groups.lr, seed=0, batch_size=FINETUNE_BATCH_SIZE, eval_tasks=[0])
    finally:
        torch.set_num_threads(threads)
    assert verify["chosen"]["test_ap"] == pytest.approx(direct[0]["test_ap"], abs=1e-6)
    assert verify["target_alone"]["test_ap"] != verify["chosen"]["test_ap"]
    assert result["verify_settings"]["init"] == "theta_star" and result["verify_settings"]["epochs"] == config.groups.epochs
    line = verify_summary(result)
    assert line.startswith("verified (test AP, Adam from θ*): chosen ")
    assert f"target alone {verify['target_alone']['test_ap']:.3f}" in line

    # the estimator's regime: the target's validation loss after GD on target + sources, computed another way
    regime = result["verify_estimator_regime"]
    assert set(regime) == set(verify) and regime["random_sources"]["runs"] == 3
    for strategy, sources in (("target_alone", []), ("chosen", result["chosen"])):
        subset = [0, *(names.index(name) for name in sources)]
        truth = independent_gd_truth(run, subset, config.finetune.lr, config.finetune.steps)
        assert regime[strategy]["val_loss"] == pytest.approx(truth[0], rel=1e-4), strategy


def test_verify_summary_reads_text_metrics_and_the_start():
    result = {"verify_settings": {"init": "scratch"},
              "verify": {"chosen": {"test_accuracy": 0.7, "test_loss": 0.6},
                         "random_sources": {"test_accuracy": 0.625, "test_loss": 0.7},
                         "target_alone": {"test_accuracy": None, "test_loss": None}}}
    assert verify_summary(result) == "verified (test accuracy, Adam from scratch): chosen 0.700, random sources 0.625"
    assert verify_summary({"chosen": []}) is None


def test_scratch_fine_tunes_are_cached_apart_and_the_gd_regime_ignores_init(tiny_run):
    run, config = tiny_run
    scratch = config.model_copy(update={"groups": config.groups.model_copy(update={"init": "scratch"})})
    adam = [finetune_jobs(run, c, "g", 0, [[0, 1]]) for c in (config, scratch)]
    assert [job["from_scratch"] for job in adam] == [False, True] and adam[0]["id"] != adam[1]["id"]
    gd = [finetune_jobs(run, c, "g", 0, [[0, 1]], estimator_regime=True) for c in (config, scratch)]
    assert gd[0]["id"] == gd[1]["id"] and "from_scratch" not in gd[0]
