"""Text runs on Ray: LoRA training on Ray Train (same numbers as in-process, DDP averaging, resume),
projection on Ray Data, `validate` against real LoRA fine-tunes and `select --verify`."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from run_helpers import copy_run
from torch.nn import functional as F

from raytag.grads import GradientStore, projector_from_spec
from raytag.lm.grads import LoRAGradientProjector
from raytag.lm.scoring import causal_lm, margins
from raytag.lm.stages import lm_checkpoint_dir, lm_model_spec, load_text_data, load_theta_star, project_examples
from raytag.lm.tasks import TRAIN, VAL
from raytag.lm.train import autocast_dtype, pretrain_base, train_lora
from raytag.models.lm import build_lm
from raytag.rundir import RunDir


def _adapter(run: RunDir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(lm_checkpoint_dir(run) / "adapter.safetensors")


def _pretrained(run: RunDir, config):
    """θ*'s starting point rebuilt in-process: the seeded tiny base pretrained as the trainer does."""
    lm = config.lm
    model, _ = build_lm(lm_model_spec(run, lm))
    data = load_text_data(run, lm.max_length)
    train = np.flatnonzero(data.table.split == TRAIN)
    pretrain_base(model, data.encoded, train, steps=lm.pretrain_steps, lr=lm.pretrain_lr, batch_size=lm.batch_size,
                  seed=lm.seed)
    return model, data, train


def _fresh_training_copy(run: RunDir, destination) -> RunDir:
    """A copy of a run with everything from training on removed (prepare kept)."""
    copied = copy_run(run, destination)
    for relative in ("model", "ray_results", "grads", "estimate", "stages"):
        shutil.rmtree(copied.root / relative, ignore_errors=True)
    return copied


def _task_mean_bce(z, rows, table):
    """Mean over the tasks present of each task's weighted-mean BCE, written out here."""
    label = torch.from_numpy(table.label[rows])
    weight = torch.from_numpy(table.weight[rows])
    task = table.task[rows]
    losses = F.binary_cross_entropy_with_logits(z, label, reduction="none") * weight
    return torch.stack([losses[task == t].sum() / weight[task == t].sum() for t in np.unique(task)]).mean()


def test_ray_training_matches_in_process_training(text_run):
    run, config = text_run
    model, data, _ = _pretrained(run, config)
    result = train_lora(model, data.encoded, data.table, epochs=config.lm.epochs, lr=config.lm.lr,
                        batch_size=config.lm.batch_size, seed=config.lm.seed)
    saved = _adapter(run)
    assert set(saved) == set(result["best_state"])
    for name, value in result["best_state"].items():
        torch.testing.assert_close(saved[name], value, atol=1e-4, rtol=1e-3)
    train = json.loads(run.train_metrics.read_text())
    assert train["best_epoch"] == result["best_epoch"] and train["format"] == "text"
    assert [e["epoch"] for e in train["epochs"]] == list(range(1, config.lm.epochs + 1))


def test_two_ddp_workers_average_their_half_batch_gradients(text_run, tmp_path):
    """Each global batch is split between two workers; the step must use the mean of the halves'
    gradients — recomputed here with plain autograd and Adam."""
    from raytag.distributed.lm_train import train_lm_on_ray

    run, config = text_run
    config = config.model_copy(update={"training": config.training.model_copy(update={"num_workers": 2}),
                                       "lm": config.lm.model_copy(update={"epochs": 1})})
    copied = _fresh_training_copy(run, tmp_path / "run")
    train_lm_on_ray(copied, config)

    model, data, train = _pretrained(run, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lm.lr)
    order = train[np.random.default_rng((config.lm.seed, 1)).permutation(len(train))]
    for start in range(0, len(order), config.lm.batch_size):
        rows = order[start:start + config.lm.batch_size]
        halves = [torch.autograd.grad(_task_mean_bce(margins(model, data.encoded.batch(part)), part, data.table),
                                      params) for part in (rows[0::2], rows[1::2])]
        for param, first, second in zip(params, *halves):
            param.grad = (first + second) / 2
        optimizer.step()
    saved = _adapter(copied)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(saved[name], param.detach(), atol=1e-4, rtol=1e-3)


def test_lm_training_resumes_after_a_failure(text_run, tmp_path, monkeypatch):
    from raytag.distributed.lm_train import train_lm_on_ray

    run, config = text_run
    copied = _fresh_training_copy(run, tmp_path / "run")
    monkeypatch.setenv("RAYTAG_FAIL_AFTER_EPOCH", "1")
    with pytest.raises(Exception, match="injected failure after epoch 1"):
        train_lm_on_ray(copied, config)
    state = torch.load(copied.root / "model" / "train_state.pt", weights_only=True)
    assert [h["epoch"] for h in state["history"]] == [1]
    monkeypatch.delenv("RAYTAG_FAIL_AFTER_EPOCH")
    summary = train_lm_on_ray(copied, config)
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]
    expected = _adapter(run)
    for name, value in _adapter(copied).items():
        torch.testing.assert_close(value, expected[name], atol=1e-4, rtol=1e-3)


def test_ray_data_projection_equals_in_process_projection(text_run):
    run, config = text_run
    arrays = GradientStore(run.grad_store).read()
    spec = json.loads((run.grad_store / "manifest.json").read_text())["projector"]
    model, data = load_theta_star(run)
    fast = LoRAGradientProjector(model, projector_from_spec(spec, run.grad_store / "projector"))
    expected = project_examples(fast, data.encoded, arrays["node"], chunk=5)
    np.testing.assert_allclose(arrays["grads"], expected.grads.numpy(), rtol=1e-4,
                               atol=1e-5 * np.abs(arrays["grads"]).max())
    assert spec["config"]["projector"] == "kronecker" and arrays["grads"].shape[1] == config.project.d


@pytest.fixture(scope="module")
def validated_text(text_run, tmp_path_factory):
    from raytag.distributed.validate import run_validation

    run, config = text_run
    run = copy_run(run, tmp_path_factory.mktemp("lm_validate") / "run")
    return run, config, run_validation(run, config)


def test_text_validation_writes_every_metric_beside_its_baselines(validated_text):
    run, _, result = validated_text
    written = json.loads(run.validation.read_text())
    for key in ("within_task_spearman", "delta_relative_error", "affinity_spearman", "mean_relative_error",
                "rerun_max_abs_diff", "flops_ratio"):
        assert written[key] is not None and math.isfinite(written[key]), key
    assert set(written["baselines"]) >= {"no_change", "task_mean"}
    assert written["baselines"]["no_change"]["delta_relative_error"] == pytest.approx(1.0)
    assert written["rerun_max_abs_diff"] < 1e-6 and written["base_loss_check"] < 1e-4
    assert 0 < written["flops_ratio"] and written["steps"] == 3 and written["n_subsets"] == 6
    assert result["trials_run"] > 0


def test_text_validation_truth_is_an_independent_lora_gradient_descent(validated_text):
    """The truth of one subset, recomputed with torch.optim.SGD on the full-batch loss written out here."""
    run, config, result = validated_text
    pairs = json.loads((run.root / "validation_pairs.json").read_text())
    subset = np.array(result["design"]["subsets"][0])
    model, data = load_theta_star(run)
    table = data.table
    train = np.flatnonzero((table.split == TRAIN) & np.isin(table.task, subset))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.finetune.lr)
    model.eval()
    for _ in range(config.finetune.steps):
        optimizer.zero_grad()
        _task_mean_bce(margins(model, data.encoded.batch(train)), train, table).backward()
        optimizer.step()
    val = np.flatnonzero(table.split == VAL)
    with torch.no_grad():
        z = margins(model, data.encoded.batch(val))
    expected = {t: F.binary_cross_entropy_with_logits(z[table.task[val] == t],
                                                      torch.from_numpy(table.label[val][table.task[val] == t])).item()
                for t in range(table.num_tasks)}
    rows = np.array(pairs["subset"]) == 0
    assert rows.any()
    for task, true in zip(np.array(pairs["task"])[rows], np.array(pairs["true"])[rows]):
        assert true == pytest.approx(expected[int(task)], abs=2e-5)


def test_text_select_verify_fine_tunes_every_alternative(text_run, tmp_path):
    from raytag.distributed.select import select_sources

    run, config = text_run
    run = copy_run(run, tmp_path / "run")
    result = select_sources(run, config, "vowel", budget=1, verify=True)
    assert len(result["chosen"]) == 1 and "vowel" not in result["chosen"]
    assert sorted(result["baselines"]["representation_cosine"]) == ["digit", "length", "xfirst"]
    verify = result["verify"]
    assert {"chosen", "target_alone", "random_sources", "gradient_cosine", "representation_cosine"} <= set(verify)
    test_examples = 6  # 30 examples, 20% test
    for strategy, entry in verify.items():
        assert 0 <= entry["test_accuracy"] <= 1 and math.isfinite(entry["test_loss"]), strategy
        per_run = entry["test_accuracy"] * test_examples
        if entry["runs"] == 1:
            assert per_run == pytest.approx(round(per_run)), strategy  # a fraction of the 6 test examples
    assert verify["random_sources"]["runs"] == 3 and verify["target_alone"]["sources"] == [[]]
    assert json.loads(run.select_json("vowel").read_text())["verify"] == verify
    # the estimator's regime: the target's validation loss after full-batch GD, as validate's truth computes it
    from raytag.lm.finetune import TextFinetune

    regime = result["verify_estimator_regime"]
    assert set(regime) == set(verify)
    text = TextFinetune(str(run.root))
    target = text.data.names.index("vowel")
    truth, _ = text.finetune([target], lr=config.finetune.lr, steps=config.finetune.steps, optimizer="gd", seed=0)
    assert regime["target_alone"]["val_loss"] == pytest.approx(truth[target], rel=1e-5)


def test_task_embeddings_are_the_last_prompt_token_hidden_states(text_run):
    from raytag.lm.finetune import TextFinetune

    run, _ = text_run
    embeddings = TextFinetune(run.root).task_embeddings()
    model, data = load_theta_star(run)
    train = np.flatnonzero(data.table.split == TRAIN)
    expected = np.zeros_like(embeddings)
    with torch.no_grad():
        for example in train:
            prompt = data.encoded.prompts[example][-data.encoded._prompt_keep(example):]
            hidden = causal_lm(model).model(input_ids=torch.tensor([prompt])).last_hidden_state  # the prompt alone
            expected[data.table.task[example]] += hidden[0, -1].double().numpy()
    expected /= np.bincount(data.table.task[train])[:, None]
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-5)


def test_training_precision_is_float32_on_cpus():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bfloat16", torch.device("cpu")) is None
