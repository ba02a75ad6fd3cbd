"""Factored per-sample gradient projection for stacks of linear layers (the fast path).

For ``x -> Linear -> ReLU -> ... -> Linear(n)`` the gradient of logit ``t`` w.r.t. layer
``l``'s ``[W | b]`` is the outer product ``δ_l ã_lᵀ`` (``ã = [a; 1]``, ``δ`` the logit's
gradient w.r.t. the layer output). One batched forward gives every ``a_l`` and ReLU mask; one
batched backward of one-hot cotangents gives every ``δ_l``; the ``KroneckerProjector`` then
projects ``δ`` and ``ã`` separately, so the D-dim gradient never exists.

All tasks at once: activations are shared by the n tasks of a sample and only ``δ``
differs. Either the n one-hot cotangents are pushed backward as one batched matmul, or —
cheaper when a layer keeps fewer ``R_out`` rows than there are tasks — the ``R_out`` rows are
pushed forward to the logits (``u[t, i] = r_i · δ^{(t)}`` is a Jacobian-vector product).
"""

from __future__ import annotations

import torch
from torch import nn

from raytag.grads.exact import ProjectedGradients, check_pairs
from raytag.grads.projectors import KroneckerProjector, linear_layer_shapes


class LinearStack:
    """Weights, forward activations and backward ``δ`` of a ReLU MLP given as ``model.linears``."""

    def __init__(self, model: nn.Module):
        linears = getattr(model, "linears", None)
        if linears is None or getattr(model, "activation", "relu") != "relu":
            raise ValueError(f"the factored path needs a ReLU stack of nn.Linear in `model.linears` "
                             f"(SignMLP); got {type(model).__name__}. Use the exact path instead")
        self.model = model
        self.linears = list(linears)
        self.shapes = linear_layer_shapes(self.linears)
        self.num_tasks = self.linears[-1].out_features

    @property
    def device(self) -> torch.device:
        return self.linears[0].weight.device

    def weights(self) -> list[torch.Tensor]:
        return [m.weight.detach() for m in self.linears]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """``(inputs a_l [B, in_l] per layer, ReLU masks [B, out_l] per hidden layer, logits [B, n])``.

        Eval semantics (no dropout): gradients are taken at θ*.
        """
        inputs, masks = [], []
        h = x.to(self.device, torch.float32)
        for l, layer in enumerate(self.linears):
            inputs.append(h)
            h = nn.functional.linear(h, layer.weight.detach(),
                                     None if layer.bias is None else layer.bias.detach())
            if l < len(self.linears) - 1:
                masks.append(h > 0)
                h = torch.relu(h)
        return inputs, masks, h

    def pair_deltas(self, masks: list[torch.Tensor], task_idx: torch.Tensor) -> list[torch.Tensor]:
        """``δ_l [B, out_l]`` of each row's own task logit (one-hot cotangents, batched)."""
        weights = self.weights()
        delta = torch.nn.functional.one_hot(task_idx, self.num_tasks).to(weights[0].dtype)
        deltas = [delta]
        delta = weights[-1][task_idx] * masks[-1] if masks else None
        for l in range(len(self.linears) - 2, -1, -1):
            deltas.append(delta)
            if l > 0:
                delta = (delta @ weights[l]) * masks[l - 1]
        return deltas[::-1]


def augmented(a: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """``ã = [a, 1]``: the bias is a weight on a constant input."""
    return torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1) if has_bias else a


def layer_factors(model: nn.Module, x: torch.Tensor, task_idx: torch.Tensor
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per layer ``ã [B, in+1]`` and ``δ [B, out]`` of each row's task logit, and the logits [B].

    Layer ``l``'s per-sample gradient is ``δ_l[b] ⊗ ã_l[b]``; used to fit KFAC bases.
    """
    stack = LinearStack(model)
    with torch.no_grad():
        inputs, masks, logits = stack.forward(x)
        task_idx = check_pairs(inputs[0], task_idx, stack.num_tasks)
        deltas = stack.pair_deltas(masks, task_idx)
        acts = [augmented(a, bias) for a, (_, _, bias) in zip(inputs, stack.shapes)]
    return acts, deltas, logits.gather(1, task_idx[:, None]).squeeze(1)


def layer_gradient_energy(model: nn.Module, x: torch.Tensor, task_idx: torch.Tensor) -> list[float]:
    """Mean squared per-sample gradient norm of each layer, ``E ‖δ_l‖²‖ã_l‖²``.

    Passed as ``layer_weights`` to ``KroneckerProjector.random`` it spends the d dimensions
    where the gradients are large (minimizing the summed inner-product variance).
    """
    acts, deltas, _ = layer_factors(model, x, task_idx)
    return [float(((d * d).sum(1) * (a * a).sum(1)).mean()) for a, d in zip(acts, deltas)]


def layer_input_means(model: nn.Module, x: torch.Tensor) -> list[tuple[list[float], float]]:
    """Per layer ``(E[ã], E[(μ̂·ã)²] / E‖ã‖²)``: the calibration ``KroneckerProjector.random``
    takes as ``input_means`` to sketch the activations' common direction exactly."""
    stack = LinearStack(model)
    with torch.no_grad():
        inputs, _, _ = stack.forward(x)
    out = []
    for a, (_, _, bias) in zip(inputs, stack.shapes):
        a = augmented(a, bias).double()
        mean = a.mean(0)
        along = (a @ (mean / mean.norm().clamp_min(1e-300))) ** 2
        out.append((mean.tolist(), float(along.mean() / (a * a).sum(1).mean())))
    return out


class FactoredGradientProjector:
    """Projected per-sample logit gradients of a ReLU linear stack without materializing them.

    ``project_pairs(x, task_idx)`` (one (node, task) pair per row, the pipeline's case) and
    ``project_all_tasks(x)`` (every task of every row from one forward) return
    ``ProjectedGradients(grads, logits)``. Calling the object is ``project_pairs``.
    """

    def __init__(self, model: nn.Module, projector: KroneckerProjector, chunk: int = 1024):
        self.stack = LinearStack(model)
        if [tuple(s) for s in projector.layer_shapes] != self.stack.shapes:
            raise ValueError(f"projector layer shapes {projector.layer_shapes} do not match the "
                             f"model's linear layers {self.stack.shapes}")
        self.projector = projector
        self.chunk = chunk

    def __call__(self, x: torch.Tensor, task_idx: torch.Tensor) -> ProjectedGradients:
        return self.project_pairs(x, task_idx)

    def _in_coords(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """``R_in ã`` per layer without forming ``ã`` (bias column added separately)."""
        _, r_in, _ = self.projector.on(self.stack.device)
        coords = []
        for a, r, (_, inp, bias) in zip(inputs, r_in, self.stack.shapes):
            coords.append(a @ r[:, :inp].T + r[:, inp] if bias else a @ r.T)
        return coords

    @torch.no_grad()
    def project_pairs(self, x: torch.Tensor, task_idx: torch.Tensor) -> ProjectedGradients:
        """``x [B, F]``, ``task_idx [B]`` -> grads ``[B, d]``, base logits ``f_t(x) [B]``."""
        task_idx = check_pairs(x, task_idx, self.stack.num_tasks).to(self.stack.device)
        grads, logits = [], []
        for start in range(0, x.shape[0], self.chunk):
            rows = slice(start, start + self.chunk)
            g, f = self._project_pairs(x[rows], task_idx[rows])
            grads.append(g)
            logits.append(f)
        if not grads:
            return ProjectedGradients(torch.zeros(0, self.projector.d, device=self.stack.device),
                                      torch.zeros(0, device=self.stack.device))
        return ProjectedGradients(torch.cat(grads), torch.cat(logits))

    def _project_pairs(self, x, task_idx):
        r_out, _, _ = self.projector.on(self.stack.device)
        inputs, masks, logits = self.stack.forward(x)
        deltas = self.stack.pair_deltas(masks, task_idx)
        out_coords = [d @ r.T for d, r in zip(deltas[:-1], r_out[:-1])]
        out_coords.append(r_out[-1].T[task_idx])          # head: δ = e_t, so R_out δ = R_out[:, t]
        grads = self.projector.combine(out_coords, self._in_coords(inputs))
        return grads, logits.gather(1, task_idx[:, None]).squeeze(1)

    @torch.no_grad()
    def project_all_tasks(self, x: torch.Tensor) -> ProjectedGradients:
        """``x [B, F]`` -> grads ``[B, n, d]`` for all n tasks, base logits ``[B, n]``."""
        if x.ndim != 2:
            raise ValueError(f"x must be [B, F], got shape {tuple(x.shape)}")
        chunk = max(1, self.chunk // 4)
        grads, logits = [], []
        for start in range(0, x.shape[0], chunk):
            g, f = self._project_all_tasks(x[start:start + chunk])
            grads.append(g)
            logits.append(f)
        if not grads:
            n = self.stack.num_tasks
            return ProjectedGradients(torch.zeros(0, n, self.projector.d, device=self.stack.device),
                                      torch.zeros(0, n, device=self.stack.device))
        return ProjectedGradients(torch.cat(grads), torch.cat(logits))

    def _uses_forward_push(self) -> bool:
        """Whether pushing R_out rows forward is cheaper than pushing n cotangents backward."""
        shapes, n = self.stack.shapes, self.stack.num_tasks
        k = [r.shape[0] for r in self.projector.r_out]
        layer_cost = [out * inp for out, inp, _ in shapes]
        forward = sum(k[l] * sum(layer_cost[l + 1:]) for l in range(len(shapes) - 1))
        backward = n * (sum(layer_cost[1:-1]) + sum(shapes[l][0] * k[l] for l in range(len(shapes) - 1)))
        return forward < backward

    def _project_all_tasks(self, x):
        r_out, _, _ = self.projector.on(self.stack.device)
        weights = self.stack.weights()
        inputs, masks, logits = self.stack.forward(x)
        batch, n, last = x.shape[0], self.stack.num_tasks, len(weights) - 1
        out_coords = [None] * len(weights)
        out_coords[last] = r_out[last].T.expand(batch, n, -1)        # δ_L = e_t for every task t
        if self._uses_forward_push():
            for l in range(last):
                z = r_out[l] * masks[l][:, None, :]                  # [B, k, out_l]
                for m in range(l + 1, last + 1):
                    z = z @ weights[m].T
                    if m < last:
                        z = z * masks[m][:, None, :]
                out_coords[l] = z.transpose(1, 2)                     # [B, n, k]
        elif last > 0:
            delta = weights[last][None] * masks[last - 1][:, None, :]  # [B, n, out_{L-1}]
            for l in range(last - 1, -1, -1):
                out_coords[l] = delta @ r_out[l].T
                if l > 0:
                    delta = (delta @ weights[l]) * masks[l - 1][:, None, :]
        in_coords = [v[:, None, :] for v in self._in_coords(inputs)]
        return self.projector.combine(out_coords, in_coords), logits
