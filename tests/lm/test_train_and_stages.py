"""The tiny LM trains; the text stages (on Ray) write the shared gradient-store format; estimators fit on it
and the linearized estimate matches a real LoRA fine-tune at small steps."""

import json

import numpy as np

from raytag.estimate.affinity import affinity_matrix
from raytag.estimate.estimators import LinearizedFineTune, OneStepNewton
from raytag.estimate.stats import GradientData
from raytag.grads import GradientStore, KroneckerProjector
from raytag.lm.grads import LoRAGradientProjector, lora_layer_shapes
from raytag.lm.stages import load_theta_star
from raytag.lm.train import (ExampleTable, finetune_subset, predict_margins, pretrain_base, split_metrics, train_lora,
                             val_losses)
from raytag.pipeline import load_gradient_data
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


def test_stages_write_the_shared_store_format(text_run):
    run, _ = text_run
    arrays = GradientStore(run.grad_store).read()
    assert {"grads", "base_logits", "pair_index", "node", "task", "split", "label", "weight"} <= set(arrays)
    assert arrays["grads"].shape == (96, 48)  # 4 tasks x (18 train + 6 val) examples
    assert set(np.unique(arrays["split"])) == {1, 2} and set(np.unique(arrays["label"])) == {0.0, 1.0}
    order = np.lexsort((arrays["node"], arrays["split"], arrays["task"]))
    assert np.array_equal(order, np.arange(len(order)))  # sorted by (task, split, node)
    model, data = load_theta_star(run)
    z = predict_margins(model, data.encoded, arrays["node"])
    assert np.allclose(arrays["base_logits"], z, atol=1e-4)
    summary = json.loads(run.tasks_json.read_text())
    assert summary["format"] == "text"
    assert [t["name"] for t in summary["tasks"]] == ["digit", "length", "vowel", "xfirst"]
    train = json.loads(run.train_metrics.read_text())
    assert train["best_epoch"] in (1, 2) and 0 <= train["test"]["mean_test_accuracy"] <= 1


def test_estimators_affinity_fit_on_the_lm_store(text_run):
    run, _ = text_run
    data = load_gradient_data(run)
    subsets = np.array([[0, 1], [1, 2], [0, 2], [2, 3]])
    onestep = OneStepNewton(l2=1e-3).fit(data).predict(subsets)
    linear = LinearizedFineTune(lr=0.05, steps=10).fit(data).predict(subsets)
    assert onestep.shape == linear.shape == (4, 4) and np.isfinite(linear).all()
    matrix = affinity_matrix(subsets, linear, 4)
    assert matrix.shape == (4, 4) and np.allclose(matrix, matrix.T)
    assert np.load(run.affinity).shape == (4, 4) and json.loads(run.groups_json.read_text())["groups"]


def test_linearized_estimate_matches_a_real_lora_finetune(text_run):
    """With the exact gradients (identity projector), a short small-step LoRA fine-tune's change of
    validation loss is predicted to first order."""
    run, _ = text_run
    model, text = load_theta_star(run)
    arrays = GradientStore(run.grad_store).read()
    exact = LoRAGradientProjector(model, KroneckerProjector.identity(lora_layer_shapes(model)))
    out = exact(text.encoded.batch(arrays["node"]))
    data = GradientData(out.grads.numpy(), out.logits.numpy(), arrays["task"], arrays["split"], arrays["label"],
                        arrays["weight"], 4)
    lr, steps, subset = 0.05, 3, [0, 2]
    estimator = LinearizedFineTune(lr=lr, steps=steps).fit(data)
    predicted = estimator.predict(np.array([subset]))[0]
    true = val_losses(finetune_subset(model, text.encoded, text.table, subset, lr=lr, steps=steps), text.encoded,
                      text.table)
    base = estimator.base_val_loss_
    assert np.allclose(base, split_metrics(predict_margins(model, text.encoded, np.flatnonzero(text.table.split == 2)),
                                           text.table, np.flatnonzero(text.table.split == 2))["loss"], atol=1e-4)
    true_delta, predicted_delta = true - base, predicted - base
    assert np.abs(true_delta).mean() > 1e-4  # the fine-tune moved the losses
    assert np.abs(predicted_delta - true_delta).mean() < 0.2 * np.abs(true_delta).mean()


def test_reset_lora_gives_the_base_model_and_a_fresh_seeded_adapter(tiny_text):
    import math

    import torch

    from raytag.models.lm import lora_linears, reset_lora

    encoded, _, tokenizer = tiny_text
    model = tiny_lora_model(tokenizer.vocab_size, rank=2)  # random B: the adapter changes the margins
    examples = np.arange(8)
    with model.disable_adapter():
        base = predict_margins(model, encoded, examples)
    assert not np.allclose(predict_margins(model, encoded, examples), base)
    torch.manual_seed(3)
    reset_lora(model)
    np.testing.assert_allclose(predict_margins(model, encoded, examples), base, atol=1e-6)
    a_weights = {name: module.weight.clone() for name, module in lora_linears(model) if ".lora_A." in f".{name}."}
    assert len(a_weights) == len(lora_linears(model)) // 2
    for name, module in lora_linears(model):
        if name in a_weights:  # peft's init: Kaiming-uniform with a=√5, i.e. U(±1/√fan_in)
            bound = 1 / math.sqrt(module.weight.shape[1])
            assert 0.5 * bound < module.weight.abs().max().item() <= bound
        else:
            assert torch.count_nonzero(module.weight) == 0
    torch.manual_seed(3)
    reset_lora(model)
    assert all(torch.equal(module.weight, a_weights[name]) for name, module in lora_linears(model) if name in a_weights)
