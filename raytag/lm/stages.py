"""Stage functions of a text run: ``prepare_text``, ``train_lm``, ``project_lm``.

They write the same run-directory artifacts the graph path writes — ``prepared/taskset.npz``
(a ``TaskSet`` whose rows are examples), ``prepared/pairs.npz``, ``tasks.json``,
``metrics/train.json`` and the gradient store ``grads/`` with ``grads, base_logits,
pair_index, node (= example index), task, split, label, weight`` — so the ``estimate``,
``affinity`` and ``cluster`` stages run on them unchanged. Text-specific files live under
``prepared/text/`` (examples, per-example arrays, tokenizer) and ``model/lm/`` (checkpoint).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from raytag.data.pairs import Pairs
from raytag.data.tasks import TaskSet
from raytag.grads import (DenseProjector, GradientStore, KroneckerProjector, projector_from_spec,
                          save_projector)
from raytag.grads.informed import fit_svd_projector
from raytag.io import atomic_save_npz, atomic_write_json, file_hash, read_json
from raytag.lm.config import LMConfig
from raytag.lm.grads import LoRAGradientProjector, layer_energy, lora_layer_shapes
from raytag.lm.tasks import TRAIN, VAL, load_text_tasks, split_examples
from raytag.lm.tokenize import CharTokenizer, EncodedExamples, HFTokenizer, encode_examples
from raytag.lm.train import ExampleTable, load_trainable, pretrain_base, train_lora
from raytag.models.lm import build_lm, load_lm_checkpoint, save_lm_checkpoint
from raytag.rundir import RunDir

log = logging.getLogger("raytag")
LM_PROJECTORS = ("kronecker", "svd", "gaussian", "rademacher")
PROJECTOR_DIR = "projector"


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


def load_text_data(run: RunDir, lm: LMConfig, hf_tokenizer=None) -> TextData:
    """Examples and arrays written by ``prepare_text``, tokenized for the configured model."""
    directory = text_dir(run)
    examples = read_json(directory / "examples.json")
    with np.load(directory / "arrays.npz") as arrays:
        arrays = dict(arrays)
    tokenizer = HFTokenizer(hf_tokenizer) if hf_tokenizer is not None else CharTokenizer.load(
        directory / "tokenizer.json")
    encoded = encode_examples(tokenizer, examples["inputs"], examples["choices"], arrays["reference"],
                              lm.max_length)
    table = ExampleTable(arrays["task"], arrays["split"], arrays["label"], arrays["weight"], len(examples["names"]))
    return TextData(examples["names"], table, encoded)


def _device(config) -> torch.device:
    wanted = getattr(getattr(config, "training", None), "use_gpu", "auto")
    return torch.device("cuda" if wanted != "false" and torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- train


def train_lm(run: RunDir, config, lm: LMConfig | None = None) -> dict:
    """Multitask LoRA training of θ* (plain torch); writes ``model/lm/`` and ``metrics/train.json``."""
    lm = _lm(config, lm)
    vocab = None
    if lm.base == "tiny":
        vocab = CharTokenizer.load(text_dir(run) / "tokenizer.json").vocab_size
    spec = lm.model_spec(vocab)
    model, hf_tokenizer = build_lm(spec)
    data = load_text_data(run, lm, hf_tokenizer)
    device = _device(config)
    started = time.perf_counter()
    train = np.flatnonzero(data.table.split == TRAIN)
    pretrain = []
    if lm.base == "tiny" and lm.pretrain_steps:
        pretrain = pretrain_base(model, data.encoded, train, steps=lm.pretrain_steps, lr=lm.pretrain_lr,
                                 batch_size=lm.batch_size, seed=lm.seed, device=device)
        log.info("pretrain: next-token loss %.3f -> %.3f in %d steps", pretrain[0], pretrain[-1], len(pretrain))
    result = train_lora(model, data.encoded, data.table, epochs=lm.epochs, lr=lm.lr, batch_size=lm.batch_size,
                        seed=lm.seed, device=device,
                        on_epoch=lambda r: log.info("epoch %d: loss %.4f, val loss %.4f, val acc %.3f", r["epoch"],
                                                    r["loss"], r["val_loss"], r["val_accuracy"]))
    load_trainable(model, result["best_state"])
    save_lm_checkpoint(lm_checkpoint_dir(run), model, spec)
    history, best = result["history"], result["history"][result["best_epoch"] - 1]
    summary = {"format": "text", "epochs": [{k: v for k, v in h.items() if not k.startswith("per_task")}
                                            for h in history],
               "best_epoch": result["best_epoch"], "seconds": round(time.perf_counter() - started, 3),
               "pretrain_loss": [pretrain[0], pretrain[-1]] if pretrain else None,
               "train_tokens": data.encoded.num_tokens(train) * len(history),
               "test": {"mean_test_loss": best["test_loss"], "mean_test_accuracy": best["test_accuracy"],
                        "per_task_test_accuracy": dict(zip(data.names, best["per_task_test_accuracy"]))}}
    atomic_write_json(run.train_metrics, summary)
    return summary


# --------------------------------------------------------------------------- project


def build_lm_projector(kind: str, model, data: TextData, fit_examples: np.ndarray, d: int, seed: int,
                       device: torch.device):
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


def project_lm(run: RunDir, config, config_hash: str, lm: LMConfig | None = None, *, force: bool = False,
               shard_size: int | None = None) -> GradientStore:
    """Projected margin gradients of every train/val example into the run's gradient store
    (resumable shards of ``project.batch_size`` pairs; complete shards are skipped)."""
    lm = _lm(config, lm)
    project = config.project
    device = _device(config)
    model, spec, hf_tokenizer = load_lm_checkpoint(lm_checkpoint_dir(run), device)
    data = load_text_data(run, lm, hf_tokenizer)
    pairs = Pairs.load(run.pairs)
    projector_spec = _projector_spec(run, project, model, data, pairs, force, device)
    projector = projector_from_spec(projector_spec, run.grad_store / PROJECTOR_DIR)
    store = GradientStore.open_or_create(run.grad_store, {
        "config_hash": config_hash, "checkpoint_hash": file_hash(lm_checkpoint_dir(run) / "adapter.safetensors"),
        "projector": projector_spec, "dtype": project.dtype, "d": project.d}, force=force)
    fast = LoRAGradientProjector(model, projector)
    size = shard_size or project.batch_size
    done = set(store.complete_shards())
    started, tokens = time.perf_counter(), 0
    for shard, start in enumerate(range(0, len(pairs), size)):
        if shard in done:
            continue
        rows = np.arange(start, min(start + size, len(pairs)))
        grads, logits = [], []
        for chunk in range(0, len(rows), lm.batch_size):
            examples = pairs.node[rows[chunk:chunk + lm.batch_size]]
            out = fast(data.encoded.batch(examples).to(device))
            grads.append(out.grads.cpu())
            logits.append(out.logits.cpu())
        tokens += data.encoded.num_tokens(pairs.node[rows])
        store.write_shard(shard, {"grads": torch.cat(grads).numpy(), "base_logits": torch.cat(logits).numpy(),
                                  "pair_index": rows, "node": pairs.node[rows], "task": pairs.task[rows],
                                  "split": pairs.split[rows], "label": pairs.label[rows],
                                  "weight": pairs.weight[rows]})
    seconds = time.perf_counter() - started
    store.sync_manifest(lm_projection={"seconds": round(seconds, 3), "tokens": int(tokens)})
    store.consolidate()
    log.info("project: %d pairs, %d tokens in %.1f s (%s, d=%d)", len(pairs), tokens, seconds,
             project.projector, project.d)
    return store


def _projector_spec(run: RunDir, project, model, data: TextData, pairs: Pairs, force: bool,
                    device: torch.device) -> dict:
    """Reuse the projector of an existing store (a resume), else fit and save one."""
    wanted = project.model_dump(include={"projector", "d", "seed", "fit_samples"})
    manifest = run.grad_store / "manifest.json"
    if manifest.is_file() and not force:
        saved = read_json(manifest).get("projector", {})
        if saved.get("config") == wanted:
            return saved
    train_pairs = np.flatnonzero(pairs.split == TRAIN)
    rng = np.random.default_rng(project.seed)
    fit = np.sort(pairs.node[rng.choice(train_pairs, size=min(project.fit_samples, len(train_pairs)),
                                        replace=False)])
    projector = build_lm_projector(project.projector, model, data, fit, project.d, project.seed, device)
    spec = save_projector(projector, run.grad_store / PROJECTOR_DIR)
    spec["config"] = wanted
    return spec
