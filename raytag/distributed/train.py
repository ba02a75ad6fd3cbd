"""Multitask training of the meta-initialization θ* on Ray Train.

Each epoch reports loss and per-task validation/test metrics to Ray and saves a Ray Train
checkpoint plus ``model/train_state.pt`` in the run directory, so re-running the same
command after an interruption resumes from the last finished epoch.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import ray.train
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raytag.config import RaytagConfig
from raytag.data.tasks import TaskSet
from raytag.distributed.session import cpus_per_worker, use_gpu
from raytag.evaluation import per_task_metrics
from raytag.io import atomic_write_bytes, atomic_write_json
from raytag.models import SignMLP, save_model
from raytag.models.training import predict, train_epoch
from raytag.rundir import RunDir

STATE_FILE = "train_state.pt"


def _load_inputs(run_dir: str):
    run = RunDir(run_dir)
    run.pull(*run.worker_inputs())
    x = np.load(run.features, mmap_mode="r")
    taskset = TaskSet.load(run.taskset)
    return run, np.asarray(x, dtype=np.float32), taskset


def _train_loop(loop_config: dict) -> None:
    torch.set_num_threads(loop_config["threads"])
    run, x_all, taskset = _load_inputs(loop_config["run_dir"])
    training = loop_config["training"]
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    torch.manual_seed(training["seed"])
    model = SignMLP(x_all.shape[1], loop_config["hidden_dims"], taskset.num_tasks, loop_config["dropout"])
    optimizer = torch.optim.Adam(model.parameters(), lr=training["lr"], weight_decay=training["weight_decay"])
    state = resume_state(run)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    history = state["history"] if state else []
    best = state["best"] if state else None
    start_epoch = len(history)

    model = ray.train.torch.prepare_model(model)
    plain_model = model.module if hasattr(model, "module") else model

    train_rows = np.flatnonzero((taskset.split == 1).any(axis=1))
    shard = train_rows[rank::world]
    x_train = torch.from_numpy(x_all[shard]).to(device)
    y_train = torch.from_numpy(taskset.labels[shard].astype(np.float32)).to(device)
    w_train = torch.from_numpy(taskset.training_weights(loop_config["balance_classes"])[shard]).to(device)
    x_eval = torch.from_numpy(x_all).to(device)
    generator = torch.Generator().manual_seed(training["seed"] + 1000 * rank)
    for _ in range(start_epoch):  # keep the batch order of an uninterrupted run
        torch.randperm(x_train.shape[0], generator=generator)

    for epoch in range(start_epoch, training["epochs"]):
        loss = train_epoch(model, optimizer, x_train, y_train, w_train, training["batch_size"], generator)
        scores = predict(plain_model, x_eval)
        metrics = per_task_metrics(scores, taskset.labels, taskset.split)
        record = {
            "epoch": epoch + 1,
            "loss": loss,
            "val_ap": float(np.mean(metrics["val_ap"])),
            "val_f1": float(np.mean(metrics["val_f1"])),
            "test_ap": float(np.mean(metrics["test_ap"])),
            "test_f1": float(np.mean(metrics["test_f1"])),
            "per_task_val_ap": np.asarray(metrics["val_ap"]).tolist(),
            "per_task_test_ap": np.asarray(metrics["test_ap"]).tolist(),
            "per_task_test_f1": np.asarray(metrics["test_f1"]).tolist(),
        }
        history.append(record)
        if best is None or record["val_ap"] > best["val_ap"]:
            best = {"epoch": epoch + 1, "val_ap": record["val_ap"],
                    "model": {k: v.detach().cpu().clone() for k, v in plain_model.state_dict().items()}}
        summary = {k: record[k] for k in ("epoch", "loss", "val_ap", "val_f1", "test_ap", "test_f1")}
        if rank == 0:
            print(f"raytag train: epoch {epoch + 1}/{training['epochs']} loss {loss:.4f} "
                  f"val AP {record['val_ap']:.4f} test AP {record['test_ap']:.4f}", flush=True)
            save_state_and_report(run, {"model": plain_model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "history": history, "best": best}, summary)
        else:
            ray.train.report(summary)
        if epoch + 1 == loop_config.get("fail_after_epoch"):
            raise RuntimeError(f"injected failure after epoch {epoch + 1} (RAYTAG_FAIL_AFTER_EPOCH)")


def save_state_and_report(run: RunDir, payload: dict, summary: dict) -> None:
    """Rank 0's end of an epoch: the training state to the run directory and, as a Ray Train
    checkpoint, with the epoch's metrics (what ``resume_state`` reads back)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(run.root / "model" / STATE_FILE, buffer.getvalue())
    run.push(run.root / "model" / STATE_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, STATE_FILE).write_bytes(buffer.getvalue())
        ray.train.report(summary, checkpoint=Checkpoint.from_directory(tmp))


def resume_state(run: RunDir) -> dict | None:
    """The newest saved training state: Ray Train's checkpoint, else the run directory's copy."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    local = run.root / "model" / STATE_FILE
    if local.is_file():
        return torch.load(local, map_location="cpu", weights_only=True)
    return None


def train_meta_model(run: RunDir, config: RaytagConfig) -> dict:
    """Train θ* with ``TorchTrainer``; writes the checkpoint and ``metrics/train.json``."""
    training = config.training
    gpu = use_gpu(training.use_gpu)
    threads = cpus_per_worker(training.num_workers)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "run_dir": run.location,
            "training": training.model_dump(),
            "hidden_dims": list(config.model.hidden_dims),
            "dropout": config.model.dropout,
            "threads": threads,
            "balance_classes": config.tasks.balance_classes,
            # fault injection for the resume test: fail once this epoch is saved
            "fail_after_epoch": int(os.environ.get("RAYTAG_FAIL_AFTER_EPOCH", 0)) or None,
        },
        scaling_config=ScalingConfig(num_workers=training.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": threads}),
        run_config=RunConfig(name="train", storage_path=run.ray_results,
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    trainer.fit()
    run.pull(run.root / "model" / STATE_FILE)  # rank 0 may have run on another node
    state = torch.load(run.root / "model" / STATE_FILE, map_location="cpu", weights_only=True)
    taskset = TaskSet.load(run.taskset)
    model = SignMLP(int(np.load(run.features, mmap_mode="r").shape[1]), list(config.model.hidden_dims),
                    taskset.num_tasks, config.model.dropout)
    model.load_state_dict(state["best"]["model"])
    save_model(model, run.checkpoint, extra={"best_epoch": state["best"]["epoch"]})
    summary = _summarize(state["history"], state["best"]["epoch"], taskset)
    atomic_write_json(run.train_metrics, summary)
    return summary


def _summarize(history: list[dict], best_epoch: int, taskset: TaskSet) -> dict:
    """Per-epoch curve, θ*'s test metrics, and the all-in-one model with each task's own best epoch."""
    best = history[best_epoch - 1]
    val = np.array([h["per_task_val_ap"] for h in history])
    own_best = val.argmax(axis=0)
    tasks = np.arange(taskset.num_tasks)
    per_task_best_ap = np.array([h["per_task_test_ap"] for h in history])[own_best, tasks]
    per_task_best_f1 = np.array([h["per_task_test_f1"] for h in history])[own_best, tasks]
    return {
        "epochs": [{k: h[k] for k in ("epoch", "loss", "val_ap", "val_f1", "test_ap", "test_f1")} for h in history],
        "best_epoch": best_epoch,
        "test": {
            "mean_test_ap": best["test_ap"],
            "mean_test_f1": best["test_f1"],
            "per_task_test_ap": dict(zip(taskset.names, best["per_task_test_ap"])),
            "per_task_test_f1": dict(zip(taskset.names, best["per_task_test_f1"])),
        },
        "test_each_task_best_epoch": {
            "mean_test_ap": float(per_task_best_ap.mean()),
            "mean_test_f1": float(per_task_best_f1.mean()),
        },
    }
