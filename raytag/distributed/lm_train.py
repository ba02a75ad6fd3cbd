"""Multitask LoRA training of a text run's θ* on Ray Train (the text counterpart of ``train``).

Every worker builds the same model (same seed; the tiny base is pretrained the same way and DDP
broadcasts rank 0's weights anyway), takes its share of each global batch
(:func:`raytag.lm.train.lora_epoch`) and DDP averages the LoRA gradients; GPUs train under
bfloat16/float16 autocast (``lm.autocast``), CPUs in float32. Rank 0 scores every epoch and saves
the state with the graph trainer's helpers (``model/train_state.pt`` plus a Ray Train checkpoint),
so rerunning the same command after an interruption resumes from the last finished epoch.
"""

from __future__ import annotations

import os
import time

import numpy as np
import ray.train
import torch
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raytag.config import RaytagConfig
from raytag.distributed.session import cpus_per_worker, use_gpu
from raytag.distributed.train import STATE_FILE, resume_state, save_state_and_report
from raytag.io import atomic_write_json
from raytag.lm.config import LMConfig
from raytag.lm.stages import lm_checkpoint_dir, lm_model_spec, load_text_data, train_summary
from raytag.lm.tasks import TRAIN
from raytag.lm.train import (MarginModel, autocast_dtype, epoch_order, epoch_record, load_trainable, lora_epoch,
                             pretrain_base, selection_score, split_scores, trainable_state)
from raytag.models.lm import build_lm, save_lm_checkpoint
from raytag.rundir import RunDir


def _frozen_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base weights: saved for the random tiny base only (it is pretrained here; SmolLM2's come
    from its GGUF file)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if not p.requires_grad}


def _lm_train_loop(loop_config: dict) -> None:
    torch.set_num_threads(loop_config["threads"])
    run = RunDir(loop_config["run_dir"])
    run.pull(*run.worker_inputs())
    lm = LMConfig(**loop_config["lm"])
    spec = loop_config["spec"]
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    model, hf_tokenizer = build_lm(spec)
    data = load_text_data(run, lm.max_length, hf_tokenizer)
    train = np.flatnonzero(data.table.split == TRAIN)
    state = resume_state(run)
    if state is None:
        pretrain = []
        if spec["base"] == "tiny" and lm.pretrain_steps:
            pretrain = pretrain_base(model, data.encoded, train, steps=lm.pretrain_steps, lr=lm.pretrain_lr,
                                     batch_size=lm.batch_size, seed=lm.seed, device=device)
        history, best = [], None
    else:
        load_trainable(model, {**state.get("base", {}), **state["adapter"]})
        history, best, pretrain = state["history"], state["best"], state["pretrain_loss"]
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lm.lr)
    precision = autocast_dtype(lm.autocast, device)
    scaler = torch.amp.GradScaler(device.type) if precision == torch.float16 else None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    net = ray.train.torch.prepare_model(MarginModel(model))
    base = _frozen_state(model) if spec["base"] == "tiny" else {}

    for epoch in range(len(history) + 1, lm.epochs + 1):
        loss = lora_epoch(net, optimizer, data.encoded, data.table, epoch_order(train, epoch, lm.seed),
                          batch_size=lm.batch_size, device=device, rank=rank, world=world,
                          autocast_dtype=precision, scaler=scaler)
        if rank == 0:
            record = epoch_record(epoch, loss, split_scores(model, data.encoded, data.table, device=device))
            history.append(record)
            if best is None or selection_score(record) < best["score"]:
                best = {"epoch": epoch, "score": selection_score(record), "adapter": trainable_state(model)}
            print(f"raytag train: epoch {epoch}/{lm.epochs} loss {loss:.4f} val loss {record['val_loss']:.4f} "
                  f"val accuracy {record['val_accuracy']:.3f}", flush=True)
            save_state_and_report(run, {"adapter": trainable_state(model), "base": base,
                                        "optimizer": optimizer.state_dict(),
                                        "scaler": scaler.state_dict() if scaler is not None else None,
                                        "history": history, "best": best, "pretrain_loss": pretrain},
                                  {"epoch": epoch, "loss": loss, "val_loss": record["val_loss"]})
        else:
            ray.train.report({"epoch": epoch, "loss": loss})
        if epoch == loop_config.get("fail_after_epoch"):
            raise RuntimeError(f"injected failure after epoch {epoch} (RAYTAG_FAIL_AFTER_EPOCH)")


def train_lm_on_ray(run: RunDir, config: RaytagConfig) -> dict:
    """Train θ* with ``TorchTrainer``; writes ``model/lm/`` (best epoch) and ``metrics/train.json``."""
    lm, training = config.lm, config.training
    spec = lm_model_spec(run, lm)
    threads = cpus_per_worker(training.num_workers)
    trainer = TorchTrainer(
        _lm_train_loop,
        train_loop_config={"run_dir": run.location, "lm": lm.model_dump(mode="json"), "spec": spec,
                           "threads": threads,
                           # fault injection for the resume test: fail once this epoch is saved
                           "fail_after_epoch": int(os.environ.get("RAYTAG_FAIL_AFTER_EPOCH", 0)) or None},
        scaling_config=ScalingConfig(num_workers=training.num_workers, use_gpu=use_gpu(training.use_gpu),
                                     resources_per_worker={"CPU": threads}),
        run_config=RunConfig(name="train", storage_path=run.ray_results,
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    started = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - started
    run.pull(run.root / "model" / STATE_FILE)  # rank 0 may have run on another node
    state = torch.load(run.root / "model" / STATE_FILE, map_location="cpu", weights_only=True)
    model, hf_tokenizer = build_lm(spec)
    load_trainable(model, {**state["base"], **state["best"]["adapter"]})
    save_lm_checkpoint(lm_checkpoint_dir(run), model, spec)
    summary = train_summary(load_text_data(run, lm.max_length, hf_tokenizer), state["history"],
                            state["best"]["epoch"], seconds, state["pretrain_loss"])
    atomic_write_json(run.train_metrics, summary)
    return summary
