"""The text run's stage pieces without Ray: ``prepare_text``, the example data, the model spec,
the training summary, the projector fit and the projection of example chunks.

They write the same run-directory artifacts the graph path writes — ``prepared/taskset.npz``
(a ``TaskSet`` whose rows are examples), ``prepared/pairs.npz``, ``tasks.json``,
``metrics/train.json`` and the gradient store ``grads/`` with ``grads, base_logits,
pair_index, node (= example index), task, split, label, weight`` — so the ``estimate``,
``affinity`` and ``cluster`` stages run on them unchanged. Text-specific files live under
``prepared/text/`` (examples, per-example arrays, tokenizer) and ``model/lm/`` (checkpoint).
Ray Train and Ray Data run them in ``raytag.distributed.lm_train`` and ``raytag.distributed.project``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raytag.data.pairs import Pairs
from raytag.data.tasks import TaskSet
from raytag.grads import DenseProjector, KroneckerProjector, ProjectedGradients
from raytag.grads.factory import fit_sample
from raytag.grads.informed import fit_svd_projector
from raytag.io import atomic_save_npz, atomic_write_json, read_json
from raytag.lm.config import LMConfig
from raytag.lm.grads import LoRAGradientProjector, layer_energy, lora_layer_shapes
from raytag.lm.tasks import TRAIN, VAL, load_text_tasks, split_examples
from raytag.lm.tokenize import CharTokenizer, EncodedExamples, HFTokenizer, encode_examples
from raytag.lm.train import ExampleTable
from raytag.models.lm import load_lm_checkpoint
from raytag.rundir import RunDir

log = logging.getLogger("raytag")
LM_PROJECTORS = ("kronecker", "svd", "gaussian", "rademacher")


def text_dir(run: RunDir):
    return run.root / "prepared" / "text"


def lm_checkpoint_dir(run: RunDir):
    return run.root / "model" / "lm"


def _lm(config, lm: LMConfig | None) -> LMConfig:
    return lm if lm is not None else config.lm


def reference_slots(choices: list[list[str]], target_index: np.ndarray) -> np.ndarray:
    """The candidate whose margin is the logit: the first choice of a two-way example (label =
    target is that choice), else the target itself (label 1)."""
    two_way = np.array([len(c) == 2 for c in choices])
    return np.where(two_way, 0, target_index).astype(np.int64)


# --------------------------------------------------------------------------- prepare


def prepare_text(run: RunDir, config, lm: LMConfig | None = None) -> dict:
    """Load the text tasks, split them, write the TaskSet/Pairs/tasks.json and the example files."""
    lm = _lm(config, lm)
    tasks = load_text_tasks(lm.resolved_tasks_dir, lm.tasks or None)
    if lm.max_examples_per_task:
        tasks = [type(t)(t.name, t.inputs[:lm.max_examples_per_task], t.targets[:lm.max_examples_per_task],
                         t.choices[:lm.max_examples_per_task]) for t in tasks]
    if len(tasks) < 2:
        raise ValueError(f"lm.tasks selects {len(tasks)} task(s) from {lm.resolved_tasks_dir}; need at least 2")
    sizes = [len(t) for t in tasks]
    split = np.concatenate(split_examples(sizes, lm.split_fractions, lm.split_seed))
    task = np.repeat(np.arange(len(tasks), dtype=np.int32), sizes)
    choices = [c for t in tasks for c in t.choices]
    target_index = np.concatenate([t.target_index for t in tasks])
    reference = reference_slots(choices, target_index)
    label = (reference == target_index).astype(np.float32)
    weight = np.ones(len(task), np.float32)
    n, total = len(tasks), len(task)

    directory = text_dir(run)
    atomic_write_json(directory / "examples.json", {"names": [t.name for t in tasks],
                                                    "inputs": [x for t in tasks for x in t.inputs],
                                                    "choices": choices,
                                                    "targets": [y for t in tasks for y in t.targets]})
    atomic_save_npz(directory / "arrays.npz", task=task, split=split, label=label, weight=weight,
                    reference=reference)
    if lm.base == "tiny":
        texts = [x for t in tasks for x in t.inputs] + [c for cs in choices for c in cs]
        CharTokenizer.fit(texts).save(directory / "tokenizer.json")

    rows = np.arange(total)
    labels = np.zeros((total, n), np.uint8)
    splits = np.zeros((total, n), np.int8)
    labels[rows, task] = label.astype(np.uint8)
    splits[rows, task] = split
    taskset = TaskSet(rows.astype(np.int64), labels, splits, [t.name for t in tasks], "text")
    taskset.save(run.taskset)
    in_pairs = np.flatnonzero(np.isin(split, (TRAIN, VAL)))
    order = in_pairs[np.lexsort((in_pairs, split[in_pairs], task[in_pairs]))]
    Pairs(order.astype(np.int64), task[order], split[order], label[order], weight[order]).save(run.pairs)
    summary = {**taskset.summary(), "format": "text", "source": str(lm.resolved_tasks_dir)}
    for entry, t in zip(summary["tasks"], tasks):
        entry["examples"] = len(t)
        entry["choices"] = sorted({len(c) for c in t.choices})
    atomic_write_json(run.tasks_json, summary)
    log.info("prepare: %d text tasks, %d examples (%d train/val pairs)", n, total, len(order))
    return {"num_tasks": n, "num_examples": int(total), "num_pairs": int(len(order))}


# --------------------------------------------------------------------------- shared loading


@dataclass(frozen=True)
class TextData:
    names: list[str]
    table: ExampleTable
    encoded: EncodedExamples


def load_text_data(run: RunDir, max_length: int, hf_tokenizer=None) -> TextData:
    """Examples and arrays written by ``prepare_text``, tokenized for the model (``hf_tokenizer``:
    SmolLM2's; None: the run's character tokenizer) with rows of at most ``max_length`` tokens."""
    directory = text_dir(run)
    examples = read_json(directory / "examples.json")
    with np.load(directory / "arrays.npz") as arrays:
        arrays = dict(arrays)
    tokenizer = HFTokenizer(hf_tokenizer) if hf_tokenizer is not None else CharTokenizer.load(
        directory / "tokenizer.json")
    encoded = encode_examples(tokenizer, examples["inputs"], examples["choices"], arrays["reference"], max_length)
    table = ExampleTable(arrays["task"], arrays["split"], arrays["label"], arrays["weight"], len(examples["names"]))
    return TextData(examples["names"], table, encoded)


def load_theta_star(run: RunDir, device: torch.device | str = "cpu"):
    """``(θ* LoRA model, its TextData)`` from the run's checkpoint."""
    model, spec, hf_tokenizer = load_lm_checkpoint(lm_checkpoint_dir(run), device)
    return model, load_text_data(run, spec["max_length"], hf_tokenizer)


def lm_adapter_file(run: RunDir) -> Path:
    """θ*'s LoRA weights: their hash keys the gradient store and cached fine-tunes."""
    return lm_checkpoint_dir(run) / "adapter.safetensors"


# --------------------------------------------------------------------------- train


def lm_model_spec(run: RunDir, lm: LMConfig) -> dict:
    """How to rebuild the run's model (the tiny base's vocabulary is the prepared tokenizer's)."""
    vocab = CharTokenizer.load(text_dir(run) / "tokenizer.json").vocab_size if lm.base == "tiny" else None
    return lm.model_spec(vocab)


def train_summary(data: TextData, history: list[dict], best_epoch: int, seconds: float,
                  pretrain_loss: list[float]) -> dict:
    """``metrics/train.json`` of a text run: the epoch curve and θ*'s test loss and accuracy."""
    best = history[best_epoch - 1]
    train = np.flatnonzero(data.table.split == TRAIN)
    return {"format": "text", "epochs": [{k: v for k, v in h.items() if not k.startswith("per_task")}
                                         for h in history],
            "best_epoch": best_epoch, "seconds": round(seconds, 3),
            "pretrain_loss": [pretrain_loss[0], pretrain_loss[-1]] if pretrain_loss else None,
            "train_tokens": data.encoded.num_tokens(train) * len(history),
            "test": {"mean_test_loss": best["test_loss"], "mean_test_accuracy": best["test_accuracy"],
                     "per_task_test_accuracy": dict(zip(data.names, best["per_task_test_accuracy"]))}}


# --------------------------------------------------------------------------- project


def build_lm_projector(kind: str, model, data: TextData, fit_examples: np.ndarray, d: int, seed: int,
                       device: torch.device | str = "cpu"):
    """``kronecker``: random factored, dims split by each LoRA matrix's gradient energy on the fit
    sample; ``svd``: top-d singular directions of the fit sample's exact gradients; dense kinds: seeded."""
    if kind not in LM_PROJECTORS:
        raise ValueError(f"project.projector={kind!r} is not available for language models; "
                         f"use one of {', '.join(LM_PROJECTORS)}")
    shapes = lora_layer_shapes(model)
    D = sum(o * i for o, i, _ in shapes)
    if d > D:
        raise ValueError(f"project.d={d} exceeds the {D} LoRA parameters; choose a smaller d")
    if kind in ("gaussian", "rademacher"):
        return DenseProjector(D, d, kind=kind, seed=seed)
    identity = LoRAGradientProjector(model, KroneckerProjector.identity(shapes))
    chunks = [identity.flat_gradients(data.encoded.batch(fit_examples[s:s + 32]).to(device))[0]
              for s in range(0, len(fit_examples), 32)]
    if kind == "kronecker":
        return KroneckerProjector.random(shapes, d, seed=seed, layer_weights=layer_energy(chunks, shapes))
    return fit_svd_projector(lambda: chunks, d, seed=seed)


def fit_lm_projector(run: RunDir, config, pairs: Pairs):
    """The configured projector for θ*'s LoRA gradients, fitted on a seeded sample of training pairs."""
    project = config.project
    model, data = load_theta_star(run)
    sample = fit_sample(pairs.task, pairs.split, project.fit_samples, project.seed)
    return build_lm_projector(project.projector, model, data, np.sort(pairs.node[sample]), project.d, project.seed)


def project_examples(fast: LoRAGradientProjector, encoded: EncodedExamples, examples: np.ndarray,
                     chunk: int, device: torch.device | str = "cpu") -> ProjectedGradients:
    """Projected margin gradients and margins of ``examples``, ``chunk`` examples per forward."""
    parts = [fast(encoded.batch(examples[start:start + chunk]).to(device)) for start in range(0, len(examples), chunk)]
    return ProjectedGradients(torch.cat([p.grads.cpu() for p in parts]), torch.cat([p.logits.cpu() for p in parts]))
