"""Gradient-informed subspaces: spend the d dimensions where the gradients actually lie.

A random d-dim subspace of a D-dim model holds only about √(d/D) of a fine-tuning update;
the top singular directions of the per-sample gradient matrix hold most of it. Two ways:

- ``fit_svd_projector``: top-d right singular vectors of a sample of per-sample gradients by
  randomized SVD (block power iteration on ``GᵀG``, gradients streamed in chunks, so only
  ``D × (d + oversample)`` floats are held). Any model; projection uses the exact path.
- ``fit_kfac_projector``: for ReLU linear stacks, per-layer eigenbases of the input
  covariance ``E[ã ãᵀ]`` and output-gradient covariance ``E[δ δᵀ]`` (the KFAC eigenbasis) in
  place of random ``R_in``/``R_out``; the d kept ``(i, j)`` components across all layers are
  those with the largest eigenvalue products ``λ_out_i·λ_in_j`` (or, EK-FAC style, the
  measured second moment of each component). Keeps the factored fast path.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from raytag.grads.exact import iter_per_sample_gradients
from raytag.grads.fast import LinearStack, layer_factors
from raytag.grads.projectors import BasisProjector, KroneckerProjector

GradientChunks = Callable[[], Iterable[torch.Tensor]]


def exact_gradient_chunks(model: nn.Module, x: torch.Tensor, task_idx: torch.Tensor,
                          chunk: int = 128, cache_bytes: int = 1 << 30) -> GradientChunks:
    """A re-iterable source of exact per-sample gradients ``[c, D]`` for ``fit_svd_projector``.

    Keeps them in memory when ``B × D`` floats fit in ``cache_bytes`` (computed once);
    otherwise recomputes them on every pass.
    """
    D = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if x.shape[0] * D * 4 <= cache_bytes:
        cached = [g for g, _ in iter_per_sample_gradients(model, x, task_idx, chunk)]
        return lambda: cached
    return lambda: (g for g, _ in iter_per_sample_gradients(model, x, task_idx, chunk))


def fit_svd_projector(gradient_chunks: GradientChunks, d: int, oversample: int = 10,
                      power_iters: int = 2, seed: int = 0, info: dict | None = None) -> BasisProjector:
    """Top-d right singular vectors of the stacked gradients (randomized SVD, streamed).

    ``gradient_chunks()`` must yield the same rows on every call (``power_iters + 1`` passes).
    The result's spec records ``source="svd"``, the seed, the pass count, the sample size and
    the fraction of the sample's gradient energy the basis captures.
    """
    if power_iters < 1:
        raise ValueError(f"power_iters={power_iters} must be >= 1 (one pass forms GᵀGΩ)")
    first = next(iter(gradient_chunks()), None)
    if first is None or first.ndim != 2:
        raise ValueError("gradient_chunks() yielded no [c, D] gradient chunk")
    D, device = first.shape[1], first.device
    k = min(d + oversample, D)
    if d > D:
        raise ValueError(f"d={d} exceeds the gradient dimension D={D}")
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, k, generator=generator).to(device)).Q
    for _ in range(power_iters):
        gram_times_basis = torch.zeros(D, k, device=device)
        for g in gradient_chunks():
            gram_times_basis.addmm_(g.float().T, g.float() @ basis)
        basis = torch.linalg.qr(gram_times_basis).Q
    small = torch.zeros(k, k, dtype=torch.float64, device=device)    # Rayleigh–Ritz: Qᵀ GᵀG Q
    rows, energy = 0, 0.0
    for g in gradient_chunks():
        coords = (g.float() @ basis).double()
        small += coords.T @ coords
        rows += g.shape[0]
        energy += float((g.double() ** 2).sum())
    if rows < d:
        raise ValueError(f"the gradient sample has {rows} rows, fewer than d={d}; sample more pairs")
    eigenvalues, vectors = torch.linalg.eigh(small)
    top = torch.argsort(eigenvalues, descending=True)[:d]
    top_basis = (basis.double() @ vectors[:, top]).float()
    captured = float(eigenvalues[top].clamp_min(0).sum()) / max(energy, 1e-300)
    meta = {"source": "svd", "seed": int(seed), "oversample": int(oversample),
            "power_iters": int(power_iters), "n_fit_rows": int(rows),
            "fit_energy_captured": round(captured, 6), **(info or {})}
    projector = BasisProjector(top_basis.cpu(), meta)
    projector.singular_values_ = eigenvalues[top].clamp_min(0).sqrt().float().cpu()
    return projector


def fit_kfac_projector(model: nn.Module, x: torch.Tensor, task_idx: torch.Tensor, d: int,
                       weight: torch.Tensor | None = None, eigenvalue_correction: bool = True,
                       chunk: int = 4096) -> KroneckerProjector:
    """KFAC-eigenbasis Kronecker projector fitted on a sample of (node, task) pairs.

    Pass 1 accumulates per layer ``A = E[w ã ãᵀ]`` and ``S = E[w δ δᵀ]`` and takes their
    eigenvectors ``Q_A``, ``Q_S``. Each component ``(i, j)`` of layer l is the gradient
    coordinate ``(q_S,i·δ)(q_A,j·ã)`` in an orthonormal basis of that layer's parameters.
    Its importance is ``λ_S,i·λ_A,j`` (KFAC) or, with ``eigenvalue_correction`` (EK-FAC, one
    more pass), the measured ``E[w (q_S,i·δ)² (q_A,j·ã)²]``. The d most important components
    over all layers are kept. The projection is orthonormal (no scaling): inner products of
    projected gradients are the exact inner products of the gradients' parts in that subspace.
    """
    stack = LinearStack(model)
    x = x.to(stack.device)
    task_idx = torch.as_tensor(task_idx, device=stack.device).long()
    weight = (torch.ones(x.shape[0], device=stack.device) if weight is None
              else torch.as_tensor(weight, device=stack.device, dtype=torch.float32))
    if d > sum(o * (i + b) for o, i, b in stack.shapes):
        raise ValueError(f"d={d} exceeds the model's parameter count")

    def factor_chunks():
        for start in range(0, x.shape[0], chunk):
            rows = slice(start, start + chunk)
            acts, deltas, _ = layer_factors(model, x[rows], task_idx[rows])
            yield acts, deltas, weight[rows]

    cov_in = [torch.zeros(i + b, i + b, dtype=torch.float64, device=stack.device) for _, i, b in stack.shapes]
    cov_out = [torch.zeros(o, o, dtype=torch.float64, device=stack.device) for o, _, _ in stack.shapes]
    total = float(weight.sum())
    if total <= 0:
        raise ValueError("the KFAC fit sample has no positive weight")
    for acts, deltas, w in factor_chunks():
        for l, (a, dl) in enumerate(zip(acts, deltas)):
            cov_in[l] += (a * w[:, None]).double().T @ a.double()
            cov_out[l] += (dl * w[:, None]).double().T @ dl.double()
    eig_in = [torch.linalg.eigh(c / total) for c in cov_in]
    eig_out = [torch.linalg.eigh(c / total) for c in cov_out]
    if eigenvalue_correction:
        importance = [torch.zeros(o, i + b, dtype=torch.float64, device=stack.device)
                      for o, i, b in stack.shapes]
        for acts, deltas, w in factor_chunks():
            for l, (a, dl) in enumerate(zip(acts, deltas)):
                u2 = (dl.double() @ eig_out[l].eigenvectors) ** 2
                v2 = (a.double() @ eig_in[l].eigenvectors) ** 2
                importance[l] += (u2 * w[:, None].double()).T @ v2
        importance = [m / total for m in importance]
    else:
        importance = [eo.eigenvalues.clamp_min(0)[:, None] * ei.eigenvalues.clamp_min(0)[None, :]
                      for eo, ei in zip(eig_out, eig_in)]

    layers, captured = top_components(importance, [e.eigenvectors for e in eig_out],
                                      [e.eigenvectors for e in eig_in], d)
    info = {"source": "kfac", "eigenvalue_correction": bool(eigenvalue_correction),
            "n_fit_pairs": int(x.shape[0]), "fit_energy_captured": round(captured, 6)}
    return KroneckerProjector(stack.shapes, [ro.float().cpu().numpy() for ro, _, _ in layers],
                              [ri.float().cpu().numpy() for _, ri, _ in layers],
                              [(i.cpu().numpy(), j.cpu().numpy()) for _, _, (i, j) in layers], info)


def top_components(importance: Sequence[torch.Tensor], out_bases: Sequence[torch.Tensor],
                   in_bases: Sequence[torch.Tensor], k: int) -> tuple[list, float]:
    """The ``k`` components ``(i, j)`` — ``out_bases[l][:, i] ⊗ in_bases[l][:, j]`` — with the
    largest ``importance[l][i, j]`` over all layers. Per layer ``(R_out rows, R_in rows,
    (I, J))`` as ``KroneckerProjector`` takes them, most important first; and the share of the
    total importance the kept components hold."""
    flat = torch.cat([m.reshape(-1) for m in importance])
    keep = torch.topk(flat, k).indices
    offsets = np.cumsum([0] + [m.numel() for m in importance])
    layers = []
    for l, m in enumerate(importance):
        local = keep[(keep >= offsets[l]) & (keep < offsets[l + 1])] - int(offsets[l])
        local = local[torch.argsort(m.reshape(-1)[local], descending=True)]
        i, j = local // m.shape[1], local % m.shape[1]
        rows_out, i_pos = torch.unique(i, return_inverse=True)
        rows_in, j_pos = torch.unique(j, return_inverse=True)
        layers.append((out_bases[l][:, rows_out].T, in_bases[l][:, rows_in].T, (i_pos, j_pos)))
    return layers, float(flat[keep].sum() / flat.sum().clamp_min(1e-300))


def subspace_energy(grads: torch.Tensor, projector) -> float:
    """Fraction of ``Σ‖g‖²`` inside the subspace a projector reads (its row space).

    ``Σ‖Qᵀg‖² / Σ‖g‖²`` with ``Q`` an orthonormal basis of ``span(Pᵀ)``; comparable across
    random and informed projectors of the same d. Forms a ``D × d`` matrix: small models only.
    """
    rows = projector.back_project(torch.eye(projector.d, device=grads.device))
    basis = torch.linalg.qr(rows.double().T).Q
    return float(((grads.double() @ basis) ** 2).sum() / (grads.double() ** 2).sum())
