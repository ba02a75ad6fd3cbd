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
from raytag.lm.tokenize import CandidateBatch, EncodedExamples
from raytag.models.lm import reset_lora


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


class MarginModel(nn.Module):
    """The LoRA model's example margins as a module forward: DistributedDataParallel arms its
    gradient all-reduce in its own forward, so the margins must be computed through it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, score_mask: torch.Tensor, slots: torch.Tensor,
                reference: torch.Tensor) -> torch.Tensor:
        return margins(self.model, CandidateBatch(ids, score_mask, slots, reference))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the LoRA weights (the only ones that train)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def epoch_order(examples: np.ndarray, epoch: int, seed: int) -> np.ndarray:
    """The examples shuffled for one epoch, seeded by (seed, epoch): a resumed run takes the same
    batches as an uninterrupted one without replaying earlier epochs."""
    return examples[np.random.default_rng((seed, epoch)).permutation(len(examples))]


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype of training for ``lm.autocast`` on ``device`` (None: float32;
    CPUs always, since CPU autocast is slower than float32 there and changes the numbers)."""
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, setting)


def lora_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, encoded: EncodedExamples, table: ExampleTable,
               order: np.ndarray, *, batch_size: int, device: torch.device | str = "cpu", rank: int = 0,
               world: int = 1, autocast_dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None) -> float:
    """One pass of minibatch Adam over ``order`` with the ``task_mean_bce`` loss; ``net`` is a
    ``MarginModel`` (possibly DDP-wrapped). Data parallel: worker ``rank`` of ``world`` takes every
    world-th example of each global batch of ``batch_size``, so all workers step together (a global
    batch smaller than ``world`` is skipped by all). ``autocast_dtype``: mixed precision (GPU);
    ``scaler`` for float16. Returns the mean loss of this worker's batches."""
    device = torch.device(device)
    label, weight = torch.from_numpy(table.label), torch.from_numpy(table.weight)
    task = torch.from_numpy(table.task.astype(np.int64))
    net.train()
    losses = []
    for start in range(0, len(order), batch_size):
        global_rows = order[start:start + batch_size]
        if len(global_rows) < world:
            continue
        rows = global_rows[rank::world]
        batch = encoded.batch(rows).to(device)
        autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            z = net(batch.ids, batch.score_mask, batch.slots, batch.reference)
        loss = task_mean_bce(z.float(), label[rows].to(device), weight[rows].to(device), task[rows].to(device),
                             table.num_tasks)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


def split_scores(model: nn.Module, encoded: EncodedExamples, table: ExampleTable, tasks=None,
                 device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Per-task ``val_loss``, ``val_accuracy``, ``test_loss``, ``test_accuracy`` [n] at the current
    weights, over the examples of ``tasks`` (default all; other tasks are NaN)."""
    chosen = np.ones(len(table.task), bool) if tasks is None else np.isin(table.task, np.asarray(tasks))
    scores = {}
    for name, code in (("val", VAL), ("test", TEST)):
        rows = np.flatnonzero((table.split == code) & chosen)
        metrics = split_metrics(predict_margins(model, encoded, rows, device=device), table, rows)
        scores[f"{name}_loss"], scores[f"{name}_accuracy"] = metrics["loss"], metrics["accuracy"]
    return scores


def epoch_record(epoch: int, loss: float, scores: dict[str, np.ndarray]) -> dict:
    """One line of the training history: means over tasks plus per-task test accuracy."""
    return {"epoch": epoch, "loss": loss, **{key: _mean(values) for key, values in scores.items()},
            "per_task_test_accuracy": scores["test_accuracy"].tolist()}


def selection_score(record: dict) -> float:
    """Lower is better: the mean validation loss (the training loss when there is no validation split)."""
    return record["val_loss"] if record["val_loss"] is not None else record["loss"]


def train_lora(model: nn.Module, encoded: EncodedExamples, table: ExampleTable, *, epochs: int, lr: float,
               batch_size: int, seed: int, device: torch.device | str = "cpu",
               on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Adam on the LoRA weights over shuffled minibatches of training examples; keeps the epoch
    with the lowest mean validation loss. Returns ``{"history", "best_epoch", "best_state"}``.
    (In-process; ``raytag.distributed.lm_train`` runs the same epochs data-parallel on Ray Train.)"""
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    train = np.flatnonzero(table.split == TRAIN)
    history, best = [], None
    for epoch in range(1, epochs + 1):
        loss = lora_epoch(MarginModel(model), optimizer, encoded, table, epoch_order(train, epoch, seed),
                          batch_size=batch_size, device=device)
        record = epoch_record(epoch, loss, split_scores(model, encoded, table, device=device))
        history.append(record)
        if best is None or selection_score(record) < best[0]:
            best = (selection_score(record), epoch, trainable_state(model))
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
                    steps: int, optimizer: str = "gd", seed: int = 0, adam_epochs: int = 10,
                    batch_size: int = 64, device: torch.device | str = "cpu") -> nn.Module:
    """Fine-tune a copy of the model (the model is untouched) on the subset's training examples
    and return the copy.

    ``optimizer="gd"``: the truth the linearized estimator mimics — ``steps`` steps of full-batch
    gradient descent (the gradient is accumulated over all of the subset's training examples,
    ``batch_size`` at a time, before each step; loss normalized as in ``task_mean_bce``;
    deterministic, eval mode). ``"adam"``: seeded minibatch Adam for ``adam_epochs`` epochs of
    ``batch_size`` examples, the stochastic comparison.
    """
    if optimizer not in ("gd", "adam"):
        raise ValueError(f"optimizer={optimizer!r}; use 'gd' or 'adam'")
    tuned = copy.deepcopy(model).to(device)
    subset = np.asarray(sorted(set(np.asarray(subset).tolist())), dtype=np.int64)
    train = np.flatnonzero((table.split == TRAIN) & np.isin(table.task, subset))
    if optimizer == "adam":
        torch.manual_seed(seed)
        adam = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=lr)
        for epoch in range(1, adam_epochs + 1):
            lora_epoch(MarginModel(tuned), adam, encoded, table, epoch_order(train, epoch, seed),
                       batch_size=batch_size, device=device)
    else:
        _full_batch_descent(tuned, encoded, table, train, len(subset), lr=lr, steps=steps, batch_size=batch_size,
                            device=device)
    return tuned


def val_losses(model: nn.Module, encoded: EncodedExamples, table: ExampleTable,
               device: torch.device | str = "cpu") -> np.ndarray:
    """Every task's validation loss [n] at the model's weights."""
    val = np.flatnonzero(table.split == VAL)
    return split_metrics(predict_margins(model, encoded, val, device=device), table, val)["loss"]


def _full_batch_descent(model: nn.Module, encoded: EncodedExamples, table: ExampleTable, train: np.ndarray,
                        num_tasks: int, *, lr: float, steps: int, batch_size: int, device) -> None:
    mass = np.bincount(table.task[train], weights=table.weight[train], minlength=table.num_tasks)
    # each example's share of the subset loss: weight / (task mass × number of tasks)
    share = torch.from_numpy((table.weight[train] / (mass[table.task[train]] * num_tasks)).astype(np.float32))
    label = torch.from_numpy(table.label[train])
    params = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model):
        for _ in range(steps):
            grads = [torch.zeros_like(p) for p in params]
            for start in range(0, len(train), batch_size):
                rows = slice(start, start + batch_size)
                z = margins(model, encoded.batch(train[rows]).to(device))
                loss = (nn.functional.binary_cross_entropy_with_logits(
                    z, label[rows].to(device), reduction="none") * share[rows].to(device)).sum()
                for g, step in zip(grads, torch.autograd.grad(loss, params)):
                    g += step
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g


def finetune_group(model: nn.Module, encoded: EncodedExamples, table: ExampleTable, group, *, epochs: int,
                   lr: float, seed: int, batch_size: int, eval_tasks=None, from_scratch: bool = False,
                   device: torch.device | str = "cpu") -> dict[int, dict]:
    """Seeded minibatch Adam from a copy of θ* (``from_scratch``: fresh LoRA weights drawn from
    ``seed`` on the same base) on ``group``'s training examples, each of
    ``eval_tasks`` (default: the group) scored at its own best epoch by validation loss — the text
    counterpart of the graph ``finetune_group`` (accuracy instead of AP: a multi-way example's
    label is always 1, so AP says nothing there). Returns ``{task: {"best_epoch", "val_loss",
    "val_accuracy", "test_loss", "test_accuracy"}}``."""
    group = np.unique(np.asarray(group, dtype=np.int64))
    eval_tasks = group if eval_tasks is None else np.unique(np.asarray(eval_tasks, dtype=np.int64))
    torch.manual_seed(seed)
    tuned = copy.deepcopy(model)
    if from_scratch:
        reset_lora(tuned)
    tuned = tuned.to(device)
    adam = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=lr)
    train = np.flatnonzero((table.split == TRAIN) & np.isin(table.task, group))
    best: dict[int, dict] = {}
    for epoch in range(1, epochs + 1):
        lora_epoch(MarginModel(tuned), adam, encoded, table, epoch_order(train, epoch, seed), batch_size=batch_size,
                   device=device)
        scores = split_scores(tuned, encoded, table, eval_tasks, device=device)
        for task in eval_tasks.tolist():
            entry = {"best_epoch": epoch, **{key: _finite_or_none(values[task]) for key, values in scores.items()}}
            val = entry["val_loss"] if entry["val_loss"] is not None else np.inf
            if task not in best or val < (best[task]["val_loss"] if best[task]["val_loss"] is not None else np.inf):
                best[task] = entry
    return best


def _finite_or_none(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def lora_pass_flops(parameters: int, tokens: int) -> float:
    """Forward (2·N per token) plus the backward to the activations (2·N per token) of a LoRA
    model: the frozen base needs no weight gradients and the LoRA ones are negligible."""
    return 4.0 * parameters * tokens
