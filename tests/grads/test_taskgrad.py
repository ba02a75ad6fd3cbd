import numpy as np
import pytest
import torch

from raytag.estimate.estimators import LinearizedFineTune
from raytag.estimate.stats import GradientData
from raytag.grads import (KroneckerProjector, fit_kfac_projector, linear_layer_shapes, make_pair_projector,
                          per_sample_logit_gradients, projector_from_spec, save_projector)
from raytag.grads.taskgrad import fit_task_gradient_projector, task_gradients


def training_pairs(n_rows=120, n_tasks=4, seed=3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, 7, generator=generator)
    task = torch.randint(0, n_tasks, (n_rows,), generator=generator)
    label = (torch.rand(n_rows, generator=generator) < 0.4).float()
    weight = torch.rand(n_rows, generator=generator) + 0.5
    return x, task, label, weight


def autograd_task_gradients(model, x, task, label, weight):
    """Reference: each task's weighted-mean BCE backpropagated by autograd, flattened."""
    rows = []
    for t in range(model.linears[-1].out_features):
        model.zero_grad()
        mine = task == t
        logit = model(x[mine]).gather(1, task[mine][:, None]).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, label[mine], reduction="none")
        ((loss * weight[mine]).sum() / weight[mine].sum()).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows).double()


def flatten_layers(per_layer, shapes):
    """``[n, out, in+1]`` per layer -> ``[n, D]`` in nn.Linear parameter order (weight, then bias)."""
    n = per_layer[0].shape[0]
    return torch.cat([torch.cat([g[:, :, :inp].reshape(n, -1), g[:, :, inp:].reshape(n, -1)], dim=1)
                      for g, (_, inp, _) in zip(per_layer, shapes)], dim=1)


def test_task_gradients_match_autograd_in_any_batching(tiny_model):
    x, task, label, weight = training_pairs()
    shapes = linear_layer_shapes(tiny_model.linears)
    batches = [(x[s:s + 50], task[s:s + 50], label[s:s + 50], weight[s:s + 50]) for s in range(0, 120, 50)]
    got = flatten_layers(task_gradients(tiny_model, batches), shapes)
    torch.testing.assert_close(got, autograd_task_gradients(tiny_model, x, task, label, weight), atol=1e-6, rtol=1e-5)


def test_projector_is_orthonormal_and_holds_every_task_gradient(tiny_model):
    x, task, label, weight = training_pairs()
    shapes = linear_layer_shapes(tiny_model.linears)
    grads = task_gradients(tiny_model, [(x, task, label, weight)])
    projector = fit_task_gradient_projector(grads, shapes, d=12, rank=10)       # full rank per layer
    assert projector.d == 12 and projector.info["task_directions"] == 4 and projector.info["shared_dims"] == 8
    basis = projector.back_project(torch.eye(projector.d)).double()             # [d, D]
    torch.testing.assert_close(basis @ basis.T, torch.eye(12, dtype=torch.float64), atol=1e-5, rtol=0)
    reference = autograd_task_gradients(tiny_model, x, task, label, weight)
    inside = (reference @ basis.T) @ basis
    assert float((inside - reference).norm() / reference.norm()) < 1e-5
    # a KFAC basis of the same size holds much less of them
    kfac = fit_kfac_projector(tiny_model, x, task, d=12, weight=weight)
    kfac_basis = torch.linalg.qr(kfac.back_project(torch.eye(12)).double().T).Q.T
    kfac_inside = (reference @ kfac_basis.T) @ kfac_basis
    assert float((kfac_inside - reference).norm() / reference.norm()) > 0.05


def test_fast_path_equals_the_flattened_projection_and_survives_a_spec_round_trip(tiny_model, tmp_path):
    x, task, label, weight = training_pairs()
    shapes = linear_layer_shapes(tiny_model.linears)
    projector = fit_task_gradient_projector(task_gradients(tiny_model, [(x, task, label, weight)]), shapes, d=10)
    flat, _ = per_sample_logit_gradients(tiny_model, x[:16], task[:16])
    fast = make_pair_projector(tiny_model, projector)(x[:16], task[:16]).grads
    torch.testing.assert_close(fast, projector.project(flat), atol=1e-5, rtol=1e-4)
    rebuilt = projector_from_spec(save_projector(projector, tmp_path), tmp_path)
    assert isinstance(rebuilt, KroneckerProjector) and rebuilt.d == projector.d
    torch.testing.assert_close(rebuilt.project(flat), projector.project(flat))
    assert projector.projection_flops() > KroneckerProjector(
        shapes, projector.r_out, projector.r_in, projector.pairs).projection_flops()   # the mix is counted


def test_first_linearized_step_is_exact_for_every_subset(tiny_model):
    """One GD step on subset S moves θ along −lr·mean_{t∈S} ḡ_t; in the task-gradient subspace the
    linearized estimator's predicted first-order loss change equals the full-space one."""
    x, task, label, weight = training_pairs(n_rows=160)
    shapes = linear_layer_shapes(tiny_model.linears)
    split = np.where(np.arange(160) < 100, 1, 2)                # first 100 rows train, rest validation
    train = torch.from_numpy(split == 1)
    grads = task_gradients(tiny_model, [(x[train], task[train], label[train], weight[train])])
    projector = fit_task_gradient_projector(grads, shapes, d=10, rank=10)
    full, logits = per_sample_logit_gradients(tiny_model, x, task)

    def one_step(g):
        data = GradientData(grads=g.numpy().astype(np.float64), base_logits=logits.numpy().astype(np.float64),
                            task=task.numpy(), split=split, label=label.numpy(), weight=weight.numpy(), n_tasks=4)
        return LinearizedFineTune(lr=1e-3, steps=1).fit(data).predict(np.array([[0, 1], [2, 3], [1, 3]]))

    torch.testing.assert_close(torch.from_numpy(one_step(make_pair_projector(tiny_model, projector)(x, task).grads)),
                               torch.from_numpy(one_step(full)), atol=1e-6, rtol=1e-5)


def test_d_must_leave_room_beyond_one_direction_per_task(tiny_model):
    x, task, label, weight = training_pairs()
    grads = task_gradients(tiny_model, [(x, task, label, weight)])
    with pytest.raises(ValueError, match=r"project\.d=4 must exceed the number of tasks"):
        fit_task_gradient_projector(grads, linear_layer_shapes(tiny_model.linears), d=4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_task_gradient_projector_on_cuda_matches_cpu(tiny_model):
    x, task, label, weight = training_pairs()
    shapes = linear_layer_shapes(tiny_model.linears)
    cpu = fit_task_gradient_projector(task_gradients(tiny_model, [(x, task, label, weight)]), shapes, d=10)
    gpu_model = tiny_model.to("cuda")
    grads = task_gradients(gpu_model, [(x.cuda(), task.cuda(), label.cuda(), weight.cuda())])
    gpu = fit_task_gradient_projector(grads, shapes, d=10)
    on_gpu = make_pair_projector(gpu_model, gpu)(x.cuda(), task.cuda()).grads.cpu()
    on_cpu = make_pair_projector(tiny_model.cpu(), cpu)(x, task).grads
    # the same subspace in possibly other orthonormal coordinates (eigenvector signs): compare inner products
    torch.testing.assert_close(on_gpu @ on_gpu.T, on_cpu @ on_cpu.T, atol=1e-4, rtol=1e-3)
