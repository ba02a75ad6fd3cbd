"""Structural node features: spectral or FastRP embeddings, log-degree, SIGN propagation.

The graphs have no node attributes, so every feature is computed from the adjacency.
Measured on DBLP (``seeds`` regime): a 128-dim FastRP projection leaves the model at
chance, the top-128 eigenvectors of the normalized adjacency reach AP ≈0.08–0.10, so
``spectral`` is the default and FastRP the fast option. Both are followed by SIGN
``[X, ÂX, Â²X, …]`` so an MLP sees multi-hop structure without message passing.

Everything here is sparse-matrix × dense-block products (scipy, or torch for the
eigen-solver so it can use every core or a GPU), so it reaches the 21M-edge graphs
(see ``compute_node_features`` for the memory budget).
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

Progress = Callable[[str], None]

_ROW_CHUNK = 1 << 16  # rows per chunk for the in-place block rotations


class Eigenpairs(NamedTuple):
    """Leading eigenpairs of the normalized adjacency, largest eigenvalue first."""

    vectors: np.ndarray  # float32 [N, dim], orthonormal columns
    values: np.ndarray  # float64 [dim]
    residuals: np.ndarray  # float64 [dim], ||Â v − λ v|| per pair (0 on the exact dense path)


def _as_csr(adj, name: str = "adj") -> sp.csr_matrix:
    if not sp.issparse(adj):
        raise ValueError(f"{name} must be a scipy.sparse matrix, got {type(adj).__name__}")
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"{name} must be a square [N, N] adjacency matrix, got shape {adj.shape}")
    return sp.csr_matrix(adj)


def _check_symmetric(adj: sp.csr_matrix, name: str = "adj") -> None:
    if (adj != adj.T).nnz:
        raise ValueError(
            f"{name} must be symmetric (an undirected graph) for a spectral embedding; "
            "symmetrize it first, e.g. adj.maximum(adj.T)"
        )


def _off_diagonal_degree(adj: sp.csr_matrix) -> np.ndarray:
    """Weighted degree not counting self-loops, float64 [N]."""
    return np.asarray(adj.sum(axis=1), dtype=np.float64).ravel() - adj.diagonal().astype(np.float64)


def normalized_adjacency(adj, self_loops: bool = True) -> sp.csr_matrix:
    """``D^-1/2 (A + I) D^-1/2`` as float32 CSR (``A`` alone when ``self_loops=False``).

    Rows of zero degree stay zero instead of dividing by zero, so isolated nodes never
    produce NaNs. The self-loop keeps a node's own signal in every propagation step and
    bounds the spectrum away from −1.
    """
    matrix = _as_csr(adj).astype(np.float32)
    if self_loops:
        matrix = (matrix + sp.identity(matrix.shape[0], dtype=np.float32, format="csr")).tocsr()
    degree = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.power(degree, -0.5, out=inv_sqrt, where=degree > 0)
    scale = sp.diags(inv_sqrt.astype(np.float32))
    result = (scale @ matrix @ scale).tocsr()
    result.sort_indices()
    return result


def log_degree(adj) -> np.ndarray:
    """``log(1 + degree)`` as a float32 column [N, 1] (self-loops not counted)."""
    return np.log1p(_off_diagonal_degree(_as_csr(adj))).astype(np.float32)[:, None]


def _orient_columns(vectors: np.ndarray) -> None:
    """Flip each column so its largest-magnitude entry is positive (eigenvector signs are arbitrary)."""
    if vectors.shape[0] == 0:
        return
    peak = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[peak, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    vectors *= signs.astype(vectors.dtype)


def _torch_csr(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            size=matrix.shape,
            device=device,
            check_invariants=False,
        )


def _sparse_product(matrix: torch.Tensor, block: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[:] = matrix @ block``. ``addmm`` with ``beta=0`` writes straight into ``out``;
    ``matrix @ block`` would hold a second [N, b] temporary."""
    return torch.addmm(out, matrix, block, beta=0, out=out)


def _rotate_rows_inplace(block: torch.Tensor, rotation: torch.Tensor) -> None:
    """``block[:] = block @ rotation`` chunk by chunk, so no second [N, b] block is allocated."""
    for start in range(0, block.shape[0], _ROW_CHUNK):
        block[start : start + _ROW_CHUNK] = block[start : start + _ROW_CHUNK] @ rotation


def _rayleigh_ritz(adj_norm: torch.Tensor, basis: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the orthonormal ``basis`` in place onto its Ritz vectors (largest first).

    Returns the Ritz values and each Ritz pair's residual norm ``||Â v − θ v||``.
    """
    image = _sparse_product(adj_norm, basis, torch.empty_like(basis))
    projected = torch.zeros((basis.shape[1], basis.shape[1]), dtype=torch.float64, device=basis.device)
    for start in range(0, basis.shape[0], _ROW_CHUNK):
        rows = slice(start, start + _ROW_CHUNK)
        projected += basis[rows].T.double() @ image[rows].double()
    projected = projected.cpu().numpy()
    values, rotation = np.linalg.eigh((projected + projected.T) / 2)
    values, rotation = values[::-1].copy(), rotation[:, ::-1]
    rotation = torch.from_numpy(rotation.astype(np.float32)).to(basis.device)
    _rotate_rows_inplace(basis, rotation)
    _rotate_rows_inplace(image, rotation)
    scale = torch.from_numpy(values).to(basis.device)
    squared = torch.zeros(basis.shape[1], dtype=torch.float64, device=basis.device)
    for start in range(0, basis.shape[0], _ROW_CHUNK):
        rows = slice(start, start + _ROW_CHUNK)
        diff = image[rows].double() - basis[rows].double() * scale
        squared += (diff * diff).sum(dim=0)
    return values, squared.sqrt().cpu().numpy()


def _chebyshev_filter(adj_norm: torch.Tensor, block: torch.Tensor, degree: int, cut: float) -> torch.Tensor:
    """``T_degree`` of Â mapped so that ``[-1, cut]`` goes to ``[-1, 1]``, applied to ``block``.

    Eigen-directions above ``cut`` grow like ``exp(degree · arccosh(σ))`` while the rest stay
    bounded — far faster than plain powers when the top of the spectrum is crowded near 1
    (a sparse graph's normalized adjacency always is). Overwrites ``block``: the
    three-term recurrence cycles through it and two more [N, b] buffers, no others.
    """
    half_width = (cut + 1.0) / 2.0
    center = (cut - 1.0) / 2.0
    previous = block
    current = _sparse_product(adj_norm, block, torch.empty_like(block))
    current.sub_(block, alpha=center).div_(half_width)
    if degree == 1:
        return current
    product = torch.empty_like(current)
    for _ in range(degree - 1):
        _sparse_product(adj_norm, current, product)
        product.sub_(current, alpha=center)
        # T_{k+1} = 2·x·T_k − T_{k−1}, written over T_{k−1}'s buffer.
        previous.neg_().add_(product, alpha=2.0 / half_width)
        previous, current = current, previous
    return current


def _dense_eigenpairs(adj_norm: sp.csr_matrix, dim: int) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh(adj_norm.toarray().astype(np.float64))
    order = np.argsort(-values, kind="stable")[:dim]
    return vectors[:, order].astype(np.float32), values[order]


def spectral_embedding(
    adj,
    dim: int = 128,
    *,
    seed: int = 0,
    iters: int = 30,
    tol: float = 1e-3,
    oversample: int = 32,
    filter_degree: int = 16,
    method: str = "subspace",
    adj_norm: sp.csr_matrix | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> Eigenpairs:
    """Top-``dim`` eigenvectors (largest eigenvalues) of ``D^-1/2 (A+I) D^-1/2``.

    ``method="subspace"`` (default): randomized block subspace iteration from a seeded
    Gaussian block of ``dim + oversample`` columns. Each round applies a Chebyshev filter
    (``filter_degree`` sparse matmuls that amplify the spectrum above the block's smallest
    Ritz value and damp the rest), re-orthonormalizes with QR and does Rayleigh–Ritz. It
    stops once the ``dim`` wanted pairs have residual ``||Âv − θv|| ≤ tol``, or after
    ``iters`` rounds. Only sparse × dense products and tall-skinny QR, in float32 torch on
    ``device`` (float64 for the small projected problem): peak ≈3 blocks of
    ``N × (dim + oversample) × 4`` bytes — 9.6 GB for N=5M, dim=128 — plus the matrix.
    DBLP (N=317k, dim=128): 6 rounds to tol=1e-3, ≈90 s on one CPU thread.
    ``method="arpack"``: scipy ``eigsh`` (Lanczos, float64), the accuracy reference.
    ``method="dense"``: exact ``numpy.linalg.eigh``, for small graphs; also used
    automatically when the block would not be smaller than the graph.

    A sparse graph's top spectrum is crowded near 1 (DBLP: the top 128 eigenvalues lie in
    [0.991, 1]), so the individual eigenvectors are ill-determined; what the features
    need — the span of the smoothest directions — is what ``tol`` controls.

    Isolated nodes (no edges besides a self-loop) are left out and get zero rows: with
    self-loops each would be its own eigenvalue-1 eigenvector and crowd out structure.
    Columns beyond the number of non-isolated nodes are zero. Column signs are fixed
    (largest-magnitude entry positive), so a seed gives the same array every run.
    """
    csr = _as_csr(adj)
    if method not in ("subspace", "arpack", "dense"):
        raise ValueError(f"spectral method must be 'subspace', 'arpack' or 'dense', got {method!r}")
    num_nodes = csr.shape[0]
    if not 1 <= dim <= num_nodes:
        raise ValueError(f"spectral dim must be between 1 and the number of nodes ({num_nodes}), got {dim}")
    if iters < 1 or filter_degree < 1 or oversample < 0:
        raise ValueError(
            f"spectral iters and filter_degree must be >= 1 and oversample >= 0, got "
            f"iters={iters}, filter_degree={filter_degree}, oversample={oversample}"
        )
    _check_symmetric(csr)
    if adj_norm is None:
        adj_norm = normalized_adjacency(csr)
    active = np.flatnonzero(_off_diagonal_degree(csr) != 0)
    if active.size < num_nodes:
        # Normalize before dropping rows: an isolated node's self-loop only touches itself.
        adj_norm = adj_norm[active][:, active].tocsr()
    vectors = np.zeros((num_nodes, dim), dtype=np.float32)
    values = np.zeros(dim)
    residuals = np.zeros(dim)
    active_dim = min(dim, active.size)
    if active_dim == 0:
        return Eigenpairs(vectors, values, residuals)
    if method == "dense" or active.size <= active_dim + oversample:
        found, found_values = _dense_eigenpairs(adj_norm, active_dim)
        found_residuals = np.zeros(active_dim)
    elif method == "arpack":
        found, found_values, found_residuals = _arpack_eigenpairs(adj_norm, active_dim, seed, tol)
    else:
        found, found_values, found_residuals = _subspace_eigenpairs(
            adj_norm, active_dim, seed=seed, iters=iters, tol=tol, oversample=oversample,
            filter_degree=filter_degree, device=device, progress=progress,
        )
    _orient_columns(found)
    vectors[active, :active_dim] = found
    values[:active_dim] = found_values
    residuals[:active_dim] = found_residuals
    return Eigenpairs(vectors, values, residuals)


def _orthonormalize(block: torch.Tensor) -> torch.Tensor:
    """Householder QR's Q, row-major: sparse products on a column-major block copy it first."""
    q = torch.linalg.qr(block)[0]
    return q if q.is_contiguous() else q.contiguous()


def _subspace_eigenpairs(adj_norm, dim, *, seed, iters, tol, oversample, filter_degree, device, progress):
    device = torch.device(device)
    matrix = _torch_csr(adj_norm, device)
    block_size = min(dim + oversample, adj_norm.shape[0])
    start = np.random.default_rng(seed).standard_normal((adj_norm.shape[0], block_size), dtype=np.float32)
    basis = _orthonormalize(torch.from_numpy(start).to(device))
    del start
    values, residuals = _rayleigh_ritz(matrix, basis)
    for iteration in range(1, iters + 1):
        # Ritz values interlace from below, so the block's smallest one never exceeds a
        # wanted eigenvalue: damping everything under it is safe.
        cut = float(np.clip(values[-1], -1.0, 1.0 - 1e-6))
        filtered = _chebyshev_filter(matrix, basis, filter_degree, cut)
        del basis
        basis = _orthonormalize(filtered)
        del filtered
        values, residuals = _rayleigh_ritz(matrix, basis)
        worst = float(residuals[:dim].max())
        if progress is not None:
            progress(f"spectral: iteration {iteration}/{iters}, max residual {worst:.2e} (tol {tol:.0e}), filter cut {cut:.4f}")
        if worst <= tol:
            break
    return basis[:, :dim].cpu().numpy().copy(), values[:dim], residuals[:dim]


def _arpack_eigenpairs(adj_norm, dim, seed, tol):
    from scipy.sparse.linalg import eigsh

    start = np.random.default_rng(seed).standard_normal(adj_norm.shape[0])
    # ARPACK stops at ||Âv − θv|| <= tol·|θ|: the same criterion as the subspace method.
    found_values, found = eigsh(adj_norm.astype(np.float64), k=dim, which="LA", v0=start, tol=tol)
    order = np.argsort(-found_values, kind="stable")
    found, found_values = found[:, order], found_values[order]
    found_residuals = np.linalg.norm(adj_norm.astype(np.float64) @ found - found * found_values, axis=0)
    return found.astype(np.float32), found_values, found_residuals


def fastrp_embedding(
    adj,
    dim: int = 128,
    *,
    weights: tuple[float, ...] = (0.0, 0.0, 1.0, 1.0),
    seed: int = 0,
    adj_norm: sp.csr_matrix | None = None,
) -> np.ndarray:
    """FastRP (Chen et al., 2019): ``Σ_k weights[k-1] · rownorm(Â^k R)``, float32 [N, dim].

    ``R`` is a very sparse random projection (Achlioptas: ``±√3`` with probability 1/6
    each, else 0) and ``Â`` the normalized adjacency with self-loops. Cost: ``len(weights)``
    sparse matmuls; memory: four [N, dim] float32 blocks at most. Zero rows stay zero.
    """
    csr = _as_csr(adj)
    weights = tuple(float(w) for w in weights)
    if not weights or not np.all(np.isfinite(weights)):
        raise ValueError(f"fastrp weights must be a non-empty sequence of finite numbers, got {weights}")
    if dim < 1:
        raise ValueError(f"fastrp dim must be >= 1, got {dim}")
    if adj_norm is None:
        adj_norm = normalized_adjacency(csr)
    codes = np.random.default_rng(seed).integers(0, 6, size=(csr.shape[0], dim), dtype=np.int8)
    current = np.zeros((csr.shape[0], dim), dtype=np.float32)
    current[codes == 0] = np.sqrt(3.0)
    current[codes == 1] = -np.sqrt(3.0)
    del codes
    embedding = np.zeros((csr.shape[0], dim), dtype=np.float32)
    for weight in weights:
        current = adj_norm @ current
        if weight:
            norms = np.linalg.norm(current, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            norms /= weight
            embedding += current / norms
    return embedding


def sign_features(x: np.ndarray, adj_norm, hops: int = 2, out: np.ndarray | None = None) -> np.ndarray:
    """SIGN features ``[X, ÂX, Â²X, …, Â^hops X]`` concatenated column-wise, float32 [N, F·(hops+1)].

    Pass ``out`` (float32 [N, F·(hops+1)], first F columns may already hold X when
    ``x is out[:, :F]``) to fill a preallocated array instead of allocating one.
    """
    adj_norm = _as_csr(adj_norm, "adj_norm").astype(np.float32)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != adj_norm.shape[0]:
        raise ValueError(f"x must be [N, F] with N = {adj_norm.shape[0]} rows (the adjacency size), got {x.shape}")
    if hops < 0:
        raise ValueError(f"hops must be >= 0, got {hops}")
    width = x.shape[1]
    shape = (x.shape[0], width * (hops + 1))
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {shape}, got {out.dtype} {out.shape}")
    current = np.ascontiguousarray(x, dtype=np.float32)
    out[:, :width] = current
    for hop in range(1, hops + 1):
        current = adj_norm @ current
        out[:, hop * width : (hop + 1) * width] = current
    return out


def standardize_columns(x: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Zero-mean, unit-variance columns in place (float64 statistics, constant columns → 0)."""
    for start in range(0, x.shape[1], chunk):
        cols = slice(start, start + chunk)
        block = x[:, cols].astype(np.float64)
        mean = block.mean(axis=0)
        block -= mean
        std = np.sqrt((block * block).mean(axis=0))
        block /= np.where(std > 0, std, 1.0)
        x[:, cols] = block
    return x


def compute_node_features(
    adj,
    *,
    method: str = "spectral",
    dim: int = 128,
    hops: int = 2,
    seed: int = 0,
    standardize: bool = True,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> np.ndarray:
    """Node features for the SIGN-MLP: float32 [N, (dim + 1) · (hops + 1)].

    Base block = ``dim``-column embedding (``spectral`` or ``fastrp``) plus log-degree;
    then SIGN hops with the normalized adjacency; then (``standardize``) every column
    z-scored, so eigenvectors (entries ~1/√N) and their propagations share one scale.
    ``device`` runs the spectral solver there (``"cuda"`` when a GPU is free);
    ``progress`` receives one short message per step.

    Memory, for the 21M-edge graph (N=5M, dim=128, hops=2): the spectral solve peaks at
    ≈3 blocks of ``N × (dim + 32) × 4`` bytes (9.6 GB) plus ≈1 GB for the matrix; the
    output ``N × 387 × 4`` bytes (7.7 GB) is allocated after it and filled in place, one
    SIGN hop adding two ``N × 129 × 4`` blocks (5.2 GB). Plan ≈16 GB of RAM.
    Measured on DBLP (N=317k, 1.05M edges): 94 s on one CPU thread, 1.1 GB peak.
    """
    if method not in ("spectral", "fastrp"):
        raise ValueError(f"features method must be 'spectral' or 'fastrp', got {method!r}")
    csr = _as_csr(adj)
    report = progress or (lambda message: None)
    report("features: normalizing adjacency")
    adj_norm = normalized_adjacency(csr)
    report(f"features: {method} embedding, dim={dim}")
    if method == "spectral":
        embedding = spectral_embedding(csr, dim, seed=seed, adj_norm=adj_norm, device=device, progress=progress).vectors
    else:
        embedding = fastrp_embedding(csr, dim, seed=seed, adj_norm=adj_norm)
    width = dim + 1
    out = np.empty((csr.shape[0], width * (hops + 1)), dtype=np.float32)
    out[:, :dim] = embedding
    del embedding
    out[:, dim:width] = log_degree(csr)
    report(f"features: SIGN propagation, hops={hops}")
    sign_features(out[:, :width], adj_norm, hops, out=out)
    if standardize:
        report("features: standardizing columns")
        standardize_columns(out)
    return out
