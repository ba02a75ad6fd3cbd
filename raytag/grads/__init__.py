"""Per-sample gradients and projectors (pure torch, no ray).

Entry point for the pipeline: ``make_pair_projector(model, projector)`` returns a callable
``(x [B, F], task_idx [B]) -> ProjectedGradients(grads [B, d], logits [B])`` — the factored
fast path when the projector is a ``KroneckerProjector`` and the model a ReLU linear stack
(SignMLP), otherwise the exact ``torch.func`` path.
"""

from torch import nn

from raytag.grads.exact import (ExactGradientProjector, ProjectedGradients,
                                exact_projected_gradients, per_sample_logit_gradients)
from raytag.grads.fast import (FactoredGradientProjector, layer_factors, layer_gradient_energy,
                               layer_input_means)
from raytag.grads.informed import (exact_gradient_chunks, fit_kfac_projector, fit_svd_projector,
                                   subspace_energy)
from raytag.grads.projectors import (BasisProjector, DenseProjector, KroneckerProjector, Projector,
                                     linear_layer_shapes, projector_from_spec, save_projector)
from raytag.grads.store import GradientStore, StoreMismatchError


def make_pair_projector(model: nn.Module, projector: Projector, chunk: int | None = None):
    """``(x, task_idx) -> ProjectedGradients`` using the fastest path the pair supports."""
    if isinstance(projector, KroneckerProjector):
        return FactoredGradientProjector(model, projector, **({"chunk": chunk} if chunk else {}))
    return ExactGradientProjector(model, projector, **({"chunk": chunk} if chunk else {}))


def project_pair_gradients(model: nn.Module, x, task_idx, projector: Projector) -> ProjectedGradients:
    """One-shot form of ``make_pair_projector(model, projector)(x, task_idx)``."""
    return make_pair_projector(model, projector)(x, task_idx)


__all__ = [
    "BasisProjector", "DenseProjector", "ExactGradientProjector", "FactoredGradientProjector",
    "GradientStore", "KroneckerProjector", "ProjectedGradients", "Projector", "StoreMismatchError",
    "exact_gradient_chunks", "exact_projected_gradients", "fit_kfac_projector", "fit_svd_projector",
    "layer_factors", "layer_gradient_energy", "layer_input_means", "linear_layer_shapes", "make_pair_projector",
    "per_sample_logit_gradients", "project_pair_gradients", "projector_from_spec", "save_projector",
    "subspace_energy",
]
