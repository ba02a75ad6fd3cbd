"""Model checkpoints as plain tensors + a JSON-able spec, loaded with ``weights_only=True``."""

from __future__ import annotations

import io
import os

import torch

from raytag.io import atomic_write_bytes
from raytag.models.sign_mlp import SignMLP


def save_model(model: SignMLP, path: str | os.PathLike, extra: dict | None = None) -> None:
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_spec": model.spec(), "state_dict": state, "extra": extra or {}}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SignMLP:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    model = SignMLP.from_spec(payload["model_spec"])
    model.load_state_dict(payload["state_dict"])
    return model
