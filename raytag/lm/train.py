"""Multitask LoRA training (θ*) and the deterministic LoRA fine-tune of a task subset.

Both minimize the shared normalization on margins: the mean over tasks of each task's
weighted-mean BCE (``task_mean_bce``). The fine-tune is the truth the linearized estimator
mimics: full-batch gradient descent from θ*, ``lr``, ``steps`` steps, on the subset's
training examples, returning every task's validation loss afterwards.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from raytag.grads.exact import eval_mode
from raytag.lm.scoring import causal_lm, margins, task_mean_bce
from raytag.lm.tasks import TEST, TRAIN, VAL
from raytag.lm.tokenize import EncodedExamples


@dataclass(frozen=True)
class ExampleTable:
    """Per-example arrays of a text run (row i = global example i)."""

    task: np.ndarray    # int32 [E]
    split: np.ndarray   # int8 [E] 1 train / 2 val / 3 test
    label: np.ndarray   # float32 [E] 0/1
    weight: np.ndarray  # float32 [E]
    num_tasks: int


def predict_margins(model: nn.Module, encoded: EncodedExamples, examples: np.ndarray, batch_size: int = 32,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Margins ``z`` of the chosen examples at the current weights (eval mode, no grad)."""
    out = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(examples), batch_size):
            out.append(margins(model, encoded.batch(examples[start:start + batch_size]).to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def split_metrics(z: np.ndarray, table: ExampleTable, examples: np.ndarray) -> dict:
    """Per-task weighted-mean BCE and accuracy (sign of z vs label) on the given examples."""
    label, weight, task = table.label[examples], table.weight[examples], table.task[examples]
    loss = np.logaddexp(0, z) - label * z
    correct = ((z > 0) == (label > 0.5)).astype(np.float64)
    mass = np.bincount(task, weights=weight, minlength=table.num_tasks)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_loss = np.bincount(task, weights=weight * loss, minlength=table.num_tasks) / mass
        per_acc = np.bincount(task, weights=correct, minlength=table.num_tasks) / np.bincount(
            task, minlength=table.num_tasks)
    return {"loss": per_loss, "accuracy": per_acc}


def _mean(values: np.ndarray) -> float | None:
    """Mean over tasks that have examples in the split (None when none has)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def train_lora(model: nn.Module, encoded: EncodedExamples, table: ExampleTable, *, epochs: int, lr: float,
               batch_size: int, seed: int, device: torch.device | str = "cpu",
               on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Adam on the LoRA weights over shuffled minibatches of training examples; keeps the epoch
    with the lowest mean validation loss. Returns ``{"history", "best_epoch", "best_state"}``."""
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    train = np.flatnonzero(table.split == TRAIN)
    val, test = np.flatnonzero(table.split == VAL), np.flatnonzero(table.split == TEST)
    generator = torch.Generator().manual_seed(seed)
    as_tensor = {k: torch.from_numpy(getattr(table, k)) for k in ("task", "label", "weight")}
    history, best = [], None
    for epoch in range(1, epochs + 1):
        model.train()
        order = train[torch.randperm(len(train), generator=generator).numpy()]
        losses = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            z = margins(model, encoded.batch(rows).to(device))
            loss = task_mean_bce(z, as_tensor["label"][rows].to(device), as_tensor["weight"][rows].to(device),
                                 as_tensor["task"][rows].long().to(device), table.num_tasks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        val_metrics = split_metrics(predict_margins(model, encoded, val, device=device), table, val)
        test_metrics = split_metrics(predict_margins(model, encoded, test, device=device), table, test)
        record = {"epoch": epoch, "loss": float(np.mean(losses)),
                  "val_loss": _mean(val_metrics["loss"]),
                  "val_accuracy": _mean(val_metrics["accuracy"]),
                  "test_loss": _mean(test_metrics["loss"]),
                  "test_accuracy": _mean(test_metrics["accuracy"]),
                  "per_task_test_accuracy": test_metrics["accuracy"].tolist()}
        history.append(record)
        score = record["val_loss"] if record["val_loss"] is not None else record["loss"]
        if best is None or score < best[0]:
            best = (score, epoch, {n: p.detach().cpu().clone() for n, p in model.named_parameters()
                                                 if p.requires_grad})
        if on_epoch is not None:
            on_epoch(record)
    return {"history": history, "best_epoch": best[1], "best_state": best[2]}


def pretrain_base(model: nn.Module, encoded: EncodedExamples, examples: np.ndarray, *, steps: int, lr: float,
                  batch_size: int, seed: int, device: torch.device | str = "cpu") -> list[float]:
    """Next-token training of every base weight (adapters off) on the examples' prompt + candidate
    rows — every candidate, so no label is seen. A random tiny base otherwise charges each
    candidate character ~log V nats, a length bias LoRA cannot undo; this gives it the format.
    Returns the loss per step."""
    lm = causal_lm(model).to(device)
    base_params = [p for p in lm.parameters() if not p.requires_grad]
    for p in base_params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(base_params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    try:
        with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
            lm.train()
            for _ in range(steps):
                rows = examples[torch.randint(len(examples), (batch_size,), generator=generator).numpy()]
                batch = encoded.batch(rows).to(device)
                position = torch.arange(batch.ids.shape[1], device=batch.ids.device)
                last = (batch.score_mask * position).amax(1)          # last scored position per row
                valid = (position[None, :-1] <= last[:, None]).float()
                logits = lm(input_ids=batch.ids).logits[:, :-1].float()
                token_loss = nn.functional.cross_entropy(logits.transpose(1, 2), batch.ids[:, 1:], reduction="none")
                loss = (token_loss * valid).sum() / valid.sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    finally:
        for p in base_params:
            p.requires_grad_(False)
            p.grad = None
    return losses


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name])


def finetune_subset(model: nn.Module, encoded: EncodedExamples, table: ExampleTable, subset, *, lr: float,
                    steps: int, batch_size: int = 64, device: torch.device | str = "cpu") -> np.ndarray:
    """Full-batch gradient descent from the model's weights (a copy; the model is untouched) on
    the subset's training examples; returns every task's validation loss [n] afterwards.

    Full batch = the gradient is accumulated over all training examples of the subset before
    each step, with the subset loss normalized as in ``task_mean_bce`` (deterministic, eval mode).
    """
    tuned = copy.deepcopy(model).to(device)
    subset = np.asarray(sorted(set(np.asarray(subset).tolist())), dtype=np.int64)
    train = np.flatnonzero((table.split == TRAIN) & np.isin(table.task, subset))
    mass = np.bincount(table.task[train], weights=table.weight[train], minlength=table.num_tasks)
    # each example's share of the subset loss: weight / (task mass × number of tasks)
    share = torch.from_numpy((table.weight[train] / (mass[table.task[train]] * len(subset))).astype(np.float32))
    label = torch.from_numpy(table.label[train])
    params = [p for p in tuned.parameters() if p.requires_grad]
    with eval_mode(tuned):
        for _ in range(steps):
            grads = [torch.zeros_like(p) for p in params]
            for start in range(0, len(train), batch_size):
                rows = slice(start, start + batch_size)
                z = margins(tuned, encoded.batch(train[rows]).to(device))
                loss = (nn.functional.binary_cross_entropy_with_logits(
                    z, label[rows].to(device), reduction="none") * share[rows].to(device)).sum()
                for g, step in zip(grads, torch.autograd.grad(loss, params)):
                    g += step
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
    val = np.flatnonzero(table.split == VAL)
    return split_metrics(predict_margins(tuned, encoded, val, device=device), table, val)["loss"]
