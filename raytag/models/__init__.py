"""Models: the SIGN-MLP multitask model, its loss and checkpoints."""

from raytag.models.checkpoint import load_model, save_model
from raytag.models.sign_mlp import SignMLP, masked_bce

__all__ = ["SignMLP", "masked_bce", "load_model", "save_model"]
