"""Helpers shared by the LM tests (a module named ``conftest`` is ambiguous across folders)."""

import json

import numpy as np

from raytag.models.lm import add_lora, tiny_llama

TOY_TASKS = {"vowel": ("yes", "no"), "digit": ("A", "B"), "length": ("long", "short"), "xfirst": ("x", "o")}
"""Four two-way tasks on random strings: contains a vowel, a digit, is long, starts with x."""

TINY_TEXT_OVERRIDES = [
    "data.format=text", "lm.hidden_size=16", "lm.num_heads=2", "lm.max_length=32", "lm.lora_rank=2",
    "lm.epochs=2", "lm.batch_size=8", "lm.pretrain_steps=20", "project.projector=kronecker", "project.d=48",
    "project.batch_size=20", "project.fit_samples=24", "estimate.num_subsets=20", "estimate.subset_size=2",
    "estimate.num_actors=1", "estimate.batch_size=10", "finetune.lr=0.05", "finetune.steps=3",
    "validate.n_validated_tasks=4", "validate.n_subsets=6", "validate.stochastic_subsets=1", "groups.epochs=2",
    "groups.seeds=1", "select.num_subsets=10", "select.budget=1", "cluster.k=2",
]


def tiny_lora_model(vocab_size, rank=2, seed=0):
    """Random B (not zero) so every LoRA matrix has a nonzero gradient."""
    return add_lora(tiny_llama(vocab_size, hidden_size=16, num_layers=2, num_heads=2, max_length=64, seed=seed),
                    rank=rank, alpha=4.0, seed=seed, init_scale=0.3)


def write_toy_tasks(folder, examples_per_task=30, seed=0):
    """``TOY_TASKS`` as NAME.jsonl files in ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, (hit_label, miss_label) in TOY_TASKS.items():
        lines = []
        for _ in range(examples_per_task):
            text = "".join(rng.choice(list("abcdefgxyz0123"), size=rng.integers(3, 12)))
            hit = {"vowel": any(c in "aeiou" for c in text), "digit": any(c.isdigit() for c in text),
                   "length": len(text) > 7, "xfirst": text[0] == "x"}[name]
            lines.append(json.dumps({"input": text, "target": hit_label if hit else miss_label,
                                     "choices": [hit_label, miss_label]}))
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def text_config(tasks_dir, *overrides):
    from raytag.config import load_config

    return load_config(None, [*TINY_TEXT_OVERRIDES, f"lm.tasks_dir={tasks_dir}", *overrides])
