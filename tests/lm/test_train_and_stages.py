"""The tiny LM trains; the text stages write the shared gradient-store format; estimators fit on it
and the linearized estimate matches a real LoRA fine-tune at small steps."""

import json

import numpy as np
import pytest

from raytag.config import RaytagConfig
from raytag.estimate.affinity import affinity_matrix
from raytag.estimate.estimators import LinearizedFineTune, OneStepNewton
from raytag.estimate.stats import GradientData
from raytag.grads import GradientStore, KroneckerProjector
from raytag.lm.grads import LoRAGradientProjector, lora_layer_shapes
from raytag.lm.config import LMConfig
from raytag.lm.stages import lm_checkpoint_dir, load_text_data, prepare_text, project_lm, train_lm
from raytag.lm.train import ExampleTable, finetune_subset, predict_margins, pretrain_base, split_metrics, train_lora
from raytag.models.lm import load_lm_checkpoint
from raytag.pipeline import load_gradient_data
from raytag.rundir import RunDir
from lm_helpers import tiny_lora_model


def test_tiny_lm_training_lowers_the_loss(tiny_text):
    encoded, tasks, tokenizer = tiny_text
    model = tiny_lora_model(tokenizer.vocab_size, rank=4)
    n = len(encoded)
    task = np.repeat(np.arange(len(tasks), dtype=np.int32), [len(t) for t in tasks])
    label = (encoded.reference == np.concatenate([t.target_index for t in tasks])).astype(np.float32)
    split = np.ones(n, np.int8)
    split[::4] = 2
    table = ExampleTable(task, split, label, np.ones(n, np.float32), len(tasks))
    train = np.flatnonzero(split == 1)
    pretrain = pretrain_base(model, encoded, train, steps=40, lr=1e-2, batch_size=8, seed=0)
    assert pretrain[-1] < 0.8 * pretrain[0]
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora" not in n)
    before = np.nanmean(split_metrics(predict_margins(model, encoded, train), table, train)["loss"])
    result = train_lora(model, encoded, table, epochs=6, lr=2e-2, batch_size=12, seed=0)
    after = np.nanmean(split_metrics(predict_margins(model, encoded, train), table, train)["loss"])
    assert after < 0.8 * before
    assert [h["epoch"] for h in result["history"]] == list(range(1, 7))
    assert set(result["best_state"]) == {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_run")
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()
    rng = np.random.default_rng(0)
    for name, (a, b) in {"vowel": ("yes", "no"), "digit": ("A", "B"), "length": ("long", "short")}.items():
        lines = []
        for _ in range(30):
            text = "".join(rng.choice(list("abcdefgxyz0123"), size=rng.integers(3, 12)))
            hit = {"vowel": any(c in "aeiou" for c in text), "digit": any(c.isdigit() for c in text),
                   "length": len(text) > 7}[name]
            lines.append(json.dumps({"input": text, "target": a if hit else b, "choices": [a, b]}))
        (tasks_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    base = RaytagConfig()
    config = base.model_copy(update={"project": base.project.model_copy(update={
        "projector": "kronecker", "d": 48, "batch_size": 20, "fit_samples": 24})})
    lm = LMConfig(tasks_dir=tasks_dir, hidden_size=16, num_heads=2, max_length=32, lora_rank=2, epochs=2,
                  batch_size=8, pretrain_steps=20)
    run = RunDir(root / "run")
    prepare_text(run, config, lm)
    train_lm(run, config, lm)
    project_lm(run, config, "hash-1", lm)
    return run, config, lm


def test_stages_write_the_shared_store_format(text_run):
    run, config, lm = text_run
    arrays = GradientStore(run.grad_store).read()
    assert {"grads", "base_logits", "pair_index", "node", "task", "split", "label", "weight"} <= set(arrays)
    assert arrays["grads"].shape == (72, 48)  # 3 tasks x (18 train + 6 val) examples
    assert set(np.unique(arrays["split"])) == {1, 2} and set(np.unique(arrays["label"])) == {0.0, 1.0}
    order = np.lexsort((arrays["node"], arrays["split"], arrays["task"]))
    assert np.array_equal(order, np.arange(len(order)))  # sorted by (task, split, node)
    model, _, _ = load_lm_checkpoint(lm_checkpoint_dir(run))
    data = load_text_data(run, lm)
    z = predict_margins(model, data.encoded, arrays["node"])
    assert np.allclose(arrays["base_logits"], z, atol=1e-4)
    summary = json.loads(run.tasks_json.read_text())
    assert summary["format"] == "text" and [t["name"] for t in summary["tasks"]] == ["digit", "length", "vowel"]
    train = json.loads(run.train_metrics.read_text())
    assert train["best_epoch"] in (1, 2) and 0 <= train["test"]["mean_test_accuracy"] <= 1
    before = sorted(p.stat().st_mtime_ns for p in run.grad_store.glob("shards/*/grads.npy"))
    project_lm(run, config, "hash-1", lm)  # resume: every shard complete, nothing rewritten
    assert sorted(p.stat().st_mtime_ns for p in run.grad_store.glob("shards/*/grads.npy")) == before


def test_estimators_affinity_fit_on_the_lm_store(text_run):
    run, _, _ = text_run
    data = load_gradient_data(run)
    subsets = np.array([[0, 1], [1, 2], [0, 2]])
    onestep = OneStepNewton(l2=1e-3).fit(data).predict(subsets)
    linear = LinearizedFineTune(lr=0.05, steps=10).fit(data).predict(subsets)
    assert onestep.shape == linear.shape == (3, 3) and np.isfinite(linear).all()
    matrix = affinity_matrix(subsets, linear, 3)
    assert matrix.shape == (3, 3) and np.allclose(matrix, matrix.T)


def test_linearized_estimate_matches_a_real_lora_finetune(text_run):
    """With the exact gradients (identity projector), a short small-step LoRA fine-tune's change of
    validation loss is predicted to first order."""
    run, _, lm = text_run
    model, _, _ = load_lm_checkpoint(lm_checkpoint_dir(run))
    text = load_text_data(run, lm)
    arrays = GradientStore(run.grad_store).read()
    exact = LoRAGradientProjector(model, KroneckerProjector.identity(lora_layer_shapes(model)))
    out = exact(text.encoded.batch(arrays["node"]))
    data = GradientData(out.grads.numpy(), out.logits.numpy(), arrays["task"], arrays["split"], arrays["label"],
                        arrays["weight"], 3)
    lr, steps, subset = 0.05, 3, [0, 2]
    estimator = LinearizedFineTune(lr=lr, steps=steps).fit(data)
    predicted = estimator.predict(np.array([subset]))[0]
    true = finetune_subset(model, text.encoded, text.table, subset, lr=lr, steps=steps)
    base = estimator.base_val_loss_
    assert np.allclose(base, split_metrics(predict_margins(model, text.encoded, np.flatnonzero(text.table.split == 2)),
                                           text.table, np.flatnonzero(text.table.split == 2))["loss"], atol=1e-4)
    true_delta, predicted_delta = true - base, predicted - base
    assert np.abs(true_delta).mean() > 1e-4  # the fine-tune moved the losses
    assert np.abs(predicted_delta - true_delta).mean() < 0.2 * np.abs(true_delta).mean()
