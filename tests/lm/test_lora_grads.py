"""Per-example LoRA gradients of the margin: factored fast path vs exact torch.func path."""

import numpy as np
import pytest
import torch
from lm_helpers import tiny_lora_model
from torch.nn import functional as F

from raytag.grads import DenseProjector, KroneckerProjector
from raytag.lm.grads import LoRAGradientProjector, exact_lora_gradients, exact_projected_lora_gradients, lora_layer_shapes
from raytag.lm.scoring import margins, row_logprobs


@pytest.fixture(scope="module")
def setup(tiny_text):
    encoded, tasks, tokenizer = tiny_text
    model = tiny_lora_model(tokenizer.vocab_size)
    batch = encoded.batch(np.arange(0, len(encoded), 2))  # 24 examples, 2- and 3-way
    return model, batch


def test_margin_is_the_candidate_softmax_cross_entropy(setup, tiny_text):
    """BCE(z, label) equals -log softmax(candidate log-probs)[target], computed independently."""
    model, batch = setup
    encoded, tasks, _ = tiny_text
    target = np.concatenate([t.target_index for t in tasks])[::2]
    label = torch.from_numpy((encoded.reference[::2] == target).astype(np.float32))
    with torch.no_grad():
        z = margins(model, batch)
        logp = row_logprobs(model, batch)
    bce = F.binary_cross_entropy_with_logits(z, label, reduction="none")
    table = torch.where(batch.slots >= 0, logp[batch.slots.clamp_min(0)], torch.tensor(-torch.inf))
    cross_entropy = -torch.log_softmax(table, dim=1).gather(1, torch.from_numpy(target)[:, None]).squeeze(1)
    assert torch.allclose(bce, cross_entropy, atol=1e-4)
    assert {0.0, 1.0} <= set(label.tolist())


def test_identity_sized_factored_projection_equals_exact_gradients(setup):
    model, batch = setup
    exact, z_exact = exact_lora_gradients(model, batch)
    assert exact.shape[1] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (exact.abs().sum(1) > 0).all()
    out = LoRAGradientProjector(model, KroneckerProjector.identity(lora_layer_shapes(model)))(batch)
    scale = exact.abs().max()
    assert torch.allclose(out.grads, exact, atol=1e-5 * scale)
    assert torch.allclose(out.logits, z_exact, atol=1e-4)
    flat, _ = LoRAGradientProjector(model, DenseProjector(exact.shape[1], 8)).flat_gradients(batch)
    assert torch.allclose(flat, exact, atol=1e-5 * scale)


def test_random_factored_projection_is_the_projector_applied_to_exact_gradients(setup):
    model, batch = setup
    shapes = lora_layer_shapes(model)
    projector = KroneckerProjector.random(shapes, 96, seed=1)
    fast = LoRAGradientProjector(model, projector)(batch)
    reference = exact_projected_lora_gradients(model, batch, projector, chunk=7)
    assert torch.allclose(fast.grads, reference.grads, rtol=1e-4, atol=1e-5 * reference.grads.abs().max())
    dense = DenseProjector(projector.D, 96, kind="gaussian", seed=2)
    assert torch.allclose(LoRAGradientProjector(model, dense)(batch).grads,
                          exact_projected_lora_gradients(model, batch, dense).grads, atol=1e-4)


def test_projected_inner_products_agree_within_jl_bounds(setup):
    """Inner products of projected gradients track the exact ones (relative to the norms)."""
    model, batch = setup
    exact, _ = exact_lora_gradients(model, batch)
    d = 256
    projected = LoRAGradientProjector(model, KroneckerProjector.random(lora_layer_shapes(model), d, seed=3))(batch).grads
    norms = exact.norm(dim=1)
    true = exact @ exact.T
    error = (projected @ projected.T - true) / (norms[:, None] * norms[None, :])
    # a d-dim sketch errs by about sqrt(2/d) of |g_i||g_j| per pair; allow 4x for the factored variance
    assert error.abs().mean() < 4 * np.sqrt(2 / d)
    iu = np.triu_indices(len(norms), 1)
    assert np.corrcoef((projected @ projected.T).numpy()[iu], true.numpy()[iu])[0, 1] > 0.8
