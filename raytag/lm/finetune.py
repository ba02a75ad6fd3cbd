"""A text run's θ* and examples behind the fine-tune interface of ``validate`` and ``select --verify``.

The graph path fine-tunes a SIGN-MLP on node features (``raytag.models.finetune``,
``raytag.distributed.groups``); a text run fine-tunes the LoRA weights on tokenized examples.
:class:`TextFinetune` offers what those stages need from a run — the deterministic truth for a
subset and its FLOPs, θ*'s validation losses, the estimation route's FLOPs, seeded Adam group
fine-tunes scored per task, and task embeddings for the similarity baseline — so the stages keep
one code path and only choose which object to ask.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np
import torch

from raytag.grads import KroneckerProjector, Projector
from raytag.grads.exact import eval_mode
from raytag.lm.scoring import causal_lm
from raytag.lm.stages import lm_adapter_file, load_theta_star, text_dir
from raytag.lm.tasks import TRAIN, VAL
from raytag.lm.train import finetune_group, finetune_subset, lora_pass_flops, split_scores, val_losses
from raytag.rundir import RunDir


def is_text_run(run_root: str | os.PathLike) -> bool:
    """Whether ``prepare`` wrote a text run into this directory."""
    return text_dir(RunDir(run_root)).is_dir()


class TextFinetune:
    """θ* (LoRA model, CPU unless ``device``) and the run's examples, loaded once per process."""

    def __init__(self, run_root: str | os.PathLike, device: str = "cpu"):
        self.run = RunDir(run_root)
        self.device = device
        self.model, self.data = load_theta_star(self.run, device)
        self.checkpoint = lm_adapter_file(self.run)
        self.num_tasks = self.data.table.num_tasks
        self.parameters = sum(p.numel() for p in self.model.parameters())

    @classmethod
    @functools.lru_cache(maxsize=2)
    def cached(cls, run_root: str, device: str = "cpu") -> "TextFinetune":
        """One instance per run and process: a Tune worker running several trials loads θ* once."""
        return cls(run_root, device)

    def _train_examples(self, tasks) -> np.ndarray:
        table = self.data.table
        return np.flatnonzero((table.split == TRAIN) & np.isin(table.task, np.asarray(tasks)))

    def base_val_losses(self) -> np.ndarray:
        """Every task's validation loss at θ* [n]."""
        return val_losses(self.model, self.data.encoded, self.data.table, self.device).astype(np.float64)

    def finetune(self, subset, *, lr: float, steps: int, optimizer: str, seed: int,
                 adam_epochs: int = 10) -> tuple[np.ndarray, float]:
        """``(every task's validation loss after fine-tuning θ* on subset, seconds of the fine-tune
        alone)``: ``gd`` is the deterministic truth, ``adam`` the seeded stochastic comparison."""
        started = time.perf_counter()
        tuned = finetune_subset(self.model, self.data.encoded, self.data.table, subset, lr=lr, steps=steps,
                                optimizer=optimizer, seed=seed, adam_epochs=adam_epochs, device=self.device)
        seconds = time.perf_counter() - started
        return val_losses(tuned, self.data.encoded, self.data.table, self.device), seconds

    def finetune_flops(self, subset, steps: int) -> float:
        """Full-batch steps over the subset's training tokens."""
        return steps * lora_pass_flops(self.parameters, self.data.encoded.num_tokens(self._train_examples(subset)))

    def finetune_group(self, group, **settings) -> dict[int, dict]:
        """Seeded Adam on ``group`` from θ*, each evaluated task at its own best epoch (see
        ``raytag.lm.train.finetune_group`` for the settings)."""
        return finetune_group(self.model, self.data.encoded, self.data.table, group, **settings)

    def finetune_group_gd(self, group, *, lr: float, steps: int, eval_tasks=None, device=None) -> dict[int, dict]:
        """The estimator's regime: deterministic full-batch LoRA GD from θ* on ``group``, then each
        of ``eval_tasks`` (default: the group) scored once (``val_loss``, ``val_accuracy``,
        ``test_loss``, ``test_accuracy``); ``device`` is this instance's."""
        eval_tasks = np.unique(np.asarray(group if eval_tasks is None else eval_tasks, dtype=np.int64))
        tuned = finetune_subset(self.model, self.data.encoded, self.data.table, group, lr=lr, steps=steps,
                                optimizer="gd", device=self.device)
        scores = split_scores(tuned, self.data.encoded, self.data.table, eval_tasks, device=self.device)
        return {int(task): {key: float(values[task]) for key, values in scores.items()} for task in eval_tasks}

    def route_flops(self, config, projector: Projector, num_pairs: int) -> dict:
        """FLOPs of θ*, the projected gradients and the projector fit (the subset fits are the
        estimator's, counted by the caller). Pretraining the tiny base trains every weight
        (6·N per token); LoRA passes cost 4·N per token (:func:`lora_pass_flops`)."""
        lm, encoded, table = config.lm, self.data.encoded, self.data.table
        train = np.flatnonzero(table.split == TRAIN)
        tokens_per_example = encoded.num_tokens(train) / max(len(train), 1)
        pretrain = (6.0 * self.parameters * tokens_per_example * lm.batch_size * lm.pretrain_steps
                    if lm.base == "tiny" else 0.0)
        store_tokens = encoded.num_tokens(np.flatnonzero(np.isin(table.split, (TRAIN, VAL))))
        if isinstance(projector, KroneckerProjector):   # per token: R_out δ, R_in a and their product
            projection = projector.projection_flops() * store_tokens
        else:  # the flattened per-example gradient (Σ_tokens δ aᵀ), then a dense D x d product
            per_token = 2.0 * projector.D
            projection = per_token * store_tokens + 2.0 * projector.D * projector.d * num_pairs
        fit = config.project.fit_samples * tokens_per_example * (lora_pass_flops(self.parameters, 1) + 2.0 * projector.D)
        return {"theta_star": pretrain + lm.epochs * lora_pass_flops(self.parameters, encoded.num_tokens(train)),
                "gradients": lora_pass_flops(self.parameters, store_tokens) + projection,
                "projector_fit": fit if config.project.projector in ("kronecker", "svd") else 0.0}

    @torch.no_grad()
    def task_embeddings(self) -> np.ndarray:
        """[n, hidden]: each task's mean θ* hidden state at the last prompt token of its training
        examples (the text counterpart of the graph's mean trunk embedding of positives)."""
        lm, encoded, table = causal_lm(self.model), self.data.encoded, self.data.table
        train = np.flatnonzero(table.split == TRAIN)
        sums = np.zeros((self.num_tasks, lm.config.hidden_size))
        with eval_mode(self.model):
            for start in range(0, len(train), 32):
                examples = train[start:start + 32]
                batch = encoded.batch(examples).to(self.device)
                first_rows = batch.slots[:, 0]  # every candidate row shares the prompt
                hidden = lm.model(input_ids=batch.ids[first_rows]).last_hidden_state
                last_prompt = batch.score_mask[first_rows].argmax(1)  # logits there score the first candidate token
                states = hidden[torch.arange(len(examples)), last_prompt].double().cpu().numpy()
                np.add.at(sums, table.task[examples], states)
        counts = np.bincount(table.task[train], minlength=self.num_tasks)
        return sums / np.maximum(counts, 1)[:, None]
