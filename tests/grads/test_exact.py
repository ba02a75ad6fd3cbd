import pytest
import torch

from raytag.grads import (DenseProjector, KroneckerProjector, exact_projected_gradients,
                          linear_layer_shapes, per_sample_logit_gradients)


def test_vmap_gradients_equal_autograd_loop(tiny_model, tiny_batch, loop_gradients):
    x, t = tiny_batch
    grads, logits = per_sample_logit_gradients(tiny_model, x, t)
    reference = loop_gradients(tiny_model, x, t)
    torch.testing.assert_close(grads, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, tiny_model(x).gather(1, t[:, None]).squeeze(1).detach())


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_exact_projection_equals_loop_times_matrix(tiny_model, tiny_batch, kind, loop_gradients):
    x, t = tiny_batch
    projector = DenseProjector(107, 9, kind, seed=4)
    out = exact_projected_gradients(tiny_model, x, t, projector, chunk=5)   # chunks of rows
    reference = loop_gradients(tiny_model, x, t).double() @ projector.matrix().double()
    rel = (out.grads.double() - reference).norm() / reference.norm()
    assert rel < 1e-5
    assert out.grads.shape == (12, 9) and out.logits.shape == (12,)


def test_exact_path_restores_training_mode(tiny_model, tiny_batch):
    tiny_model.train()
    exact_projected_gradients(tiny_model, *tiny_batch, DenseProjector(107, 3))
    assert tiny_model.training


def test_exact_path_rejects_wrong_projector_size(tiny_model, tiny_batch):
    with pytest.raises(ValueError, match="D=50"):
        exact_projected_gradients(tiny_model, *tiny_batch, DenseProjector(50, 3))


def test_kronecker_projection_of_flat_gradients_is_layerwise_r_out_g_r_in(tiny_model, tiny_batch, loop_gradients):
    grads = loop_gradients(tiny_model, *tiny_batch)
    projector = KroneckerProjector.random(linear_layer_shapes(tiny_model.linears), 11, seed=2)
    out = projector.project(grads)
    # direct: layer 0's coordinates are (R_out G R_inᵀ)[I, J] with G = [W_grad | b_grad]
    g0 = torch.cat([grads[:, :42].reshape(-1, 6, 7), grads[:, 42:48].reshape(-1, 6, 1)], dim=2)
    i, j = projector.pairs[0]
    expected = (projector.r_out[0] @ g0 @ projector.r_in[0].T)[:, i, j]
    torch.testing.assert_close(out[:, :projector.layer_dims[0]], expected)
