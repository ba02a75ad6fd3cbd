"""Projectors: maps from a model's D-dim per-sample gradient to d dims.

Every projector records what it needs to be rebuilt (``spec()``: JSON-able, with seeds and
dims; learned bases travel as ``.npy`` files beside the spec, named and hashed in it), so a
stored gradient can always be recomputed. Two families:

- ``DenseProjector`` / ``SVDProjector`` act on flattened gradients ``[B, D]`` (parameters in
  ``model.named_parameters()`` order) and work for any model (the exact path).
- ``KroneckerProjector`` acts on the factors of linear layers' outer-product gradients
  ``δ ãᵀ`` (``ã`` = layer input with a 1 appended for the bias) without ever forming them
  (the fast path); it can also project a flattened gradient, for tests and fidelity checks.
"""

from __future__ import annotations

import hashlib
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from raytag.io import atomic_save_npy

SPEC_VERSION = 1


class Projector(ABC):
    """A linear map ``R^D -> R^d`` applied to per-sample gradients."""

    D: int
    d: int

    @abstractmethod
    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """``grads [B, D]`` (flattened, model parameter order) -> ``[B, d]`` float32."""

    @abstractmethod
    def back_project(self, coords: torch.Tensor) -> torch.Tensor:
        """Transpose map ``[..., d] -> [..., D]``: a step ``w`` in projected space as ``Δθ = Pᵀw``."""

    @abstractmethod
    def spec(self) -> dict:
        """JSON-able description (type, dims, seeds; names + hash of any array files)."""

    def arrays(self) -> dict[str, np.ndarray]:
        """Learned arrays that do not fit in the JSON spec (empty for seeded projectors)."""
        return {}

    def _arrays_spec(self) -> dict:
        """File names + content hash of ``arrays()`` (computed once; arrays never change)."""
        if getattr(self, "_arrays_spec_cache", None) is None:
            self._arrays_spec_cache = _arrays_entry(self.arrays())
        return self._arrays_spec_cache


# --------------------------------------------------------------------------- dense (seeded)


class DenseProjector(Projector):
    """Seeded dense random matrix ``M [D, d]`` with ``E[M Mᵀ] = I`` (inner products kept in
    expectation), entries ±1/√d (``rademacher``, the seed's formula) or N(0, 1/d).

    The matrix is generated in fixed blocks of ``BLOCK_ROWS`` rows, each from its own
    ``SeedSequence([seed, block])`` on the CPU in float32, so it is identical on every device,
    for every ``chunk_rows``, and never exists as one float64 D×d array. Blocks are cached on
    the device of the input when the whole matrix fits in ``cache_bytes``; otherwise they are
    regenerated on every call (``chunk_rows`` at a time).
    """

    BLOCK_ROWS = 1024
    KINDS = ("rademacher", "gaussian")

    def __init__(self, D: int, d: int, kind: str = "rademacher", seed: int = 0,
                 chunk_rows: int = 16384, cache_bytes: int = 512 << 20):
        if kind not in self.KINDS:
            raise ValueError(f"projector kind={kind!r} is not supported; use one of {self.KINDS}")
        _check_positive(D=D, d=d, chunk_rows=chunk_rows)
        self.D, self.d, self.kind, self.seed = int(D), int(d), kind, int(seed)
        self.chunk_rows = max(self.BLOCK_ROWS, chunk_rows // self.BLOCK_ROWS * self.BLOCK_ROWS)
        self.cache = self.D * self.d * 4 <= cache_bytes
        self._cached: dict[torch.device, list[torch.Tensor]] = {}

    def block(self, index: int) -> np.ndarray:
        """Rows ``[index*BLOCK_ROWS, ...)`` of M, float32, already scaled."""
        start = index * self.BLOCK_ROWS
        rows = min(self.BLOCK_ROWS, self.D - start)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, index])))
        if self.kind == "rademacher":
            signs = rng.integers(0, 2, size=(rows, self.d), dtype=np.int8).astype(np.float32)
            return (2.0 * signs - 1.0) / np.float32(math.sqrt(self.d))
        return rng.standard_normal((rows, self.d), dtype=np.float32) / np.float32(math.sqrt(self.d))

    def _chunks(self, device: torch.device):
        """Yield ``(start, stop, M[start:stop])`` on ``device``."""
        if self.cache and device in self._cached:
            yield from self._cached[device]
            return
        produced = []
        blocks_per_chunk = self.chunk_rows // self.BLOCK_ROWS
        n_blocks = -(-self.D // self.BLOCK_ROWS)
        for first in range(0, n_blocks, blocks_per_chunk):
            indices = range(first, min(first + blocks_per_chunk, n_blocks))
            matrix = torch.from_numpy(np.concatenate([self.block(i) for i in indices])).to(device)
            start = first * self.BLOCK_ROWS
            item = (start, start + matrix.shape[0], matrix)
            if self.cache:
                produced.append(item)
            yield item
        if self.cache:
            self._cached[device] = produced

    def matrix(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The full ``[D, d]`` float32 matrix (tests and small models only)."""
        return torch.cat([m for _, _, m in self._chunks(torch.device(device))])

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        _check_width(grads, self.D)
        out = torch.zeros(grads.shape[0], self.d, device=grads.device, dtype=torch.float32)
        for start, stop, m in self._chunks(grads.device):
            out.addmm_(grads[:, start:stop].float(), m)
        return out

    def back_project(self, coords: torch.Tensor) -> torch.Tensor:
        pieces = [coords.float() @ m.T for _, _, m in self._chunks(coords.device)]
        return torch.cat(pieces, dim=-1)

    def spec(self) -> dict:
        return {"type": "dense", "version": SPEC_VERSION, "D": self.D, "d": self.d,
                "kind": self.kind, "seed": self.seed, "block_rows": self.BLOCK_ROWS}

    @classmethod
    def from_spec(cls, spec: dict, directory=None) -> "DenseProjector":
        if spec.get("block_rows", cls.BLOCK_ROWS) != cls.BLOCK_ROWS:
            raise ValueError(f"projector spec block_rows={spec['block_rows']} differs from this "
                             f"version's {cls.BLOCK_ROWS}; the matrix cannot be regenerated")
        return cls(spec["D"], spec["d"], spec["kind"], spec["seed"])


# --------------------------------------------------------------------------- basis (informed)


class BasisProjector(Projector):
    """Projection on the columns of a given orthonormal basis ``V [D, d]``: ``g -> Vᵀg``.

    Used for gradient-informed subspaces (``raytag.grads.informed.fit_svd_projector``); the
    basis is stored as an ``.npy`` beside the spec.
    """

    def __init__(self, basis: torch.Tensor | np.ndarray, info: dict | None = None,
                 chunk_rows: int = 16384):
        basis = torch.as_tensor(np.array(basis, dtype=np.float32))
        if basis.ndim != 2 or basis.shape[1] > basis.shape[0]:
            raise ValueError(f"basis must be [D, d] with d <= D, got shape {tuple(basis.shape)}")
        self.basis = basis
        self.D, self.d = basis.shape
        self.info = dict(info or {})
        self.chunk_rows = chunk_rows
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def _basis_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._on_device:
            self._on_device[device] = self.basis.to(device)
        return self._on_device[device]

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        _check_width(grads, self.D)
        basis = self._basis_on(grads.device)
        out = torch.zeros(grads.shape[0], self.d, device=grads.device, dtype=torch.float32)
        for start in range(0, self.D, self.chunk_rows):
            stop = min(start + self.chunk_rows, self.D)
            out.addmm_(grads[:, start:stop].float(), basis[start:stop])
        return out

    def back_project(self, coords: torch.Tensor) -> torch.Tensor:
        return coords.float() @ self._basis_on(coords.device).T

    def arrays(self) -> dict[str, np.ndarray]:
        return {"basis": self.basis.numpy()}

    def spec(self) -> dict:
        return {"type": "basis", "version": SPEC_VERSION, "D": self.D, "d": self.d,
                **self.info, **self._arrays_spec()}

    @classmethod
    def from_spec(cls, spec: dict, directory=None) -> "BasisProjector":
        arrays = _load_arrays(spec, directory)
        info = {k: v for k, v in spec.items()
                if k not in {"type", "version", "D", "d", "arrays", "arrays_hash"}}
        return cls(arrays["basis"], info)


# --------------------------------------------------------------------------- Kronecker


class KroneckerProjector(Projector):
    """Per-layer factored projection of linear layers' outer-product gradients.

    Layer ``l`` (weight ``[out, in]``, optional bias) has the per-sample gradient ``δ ãᵀ`` with
    ``ã = [a; 1]`` (bias as an extra input column). With ``R_out [k_out, out]``,
    ``R_in [k_in, in+1]`` and kept index pairs ``(I, J)``, its projected coordinates are
    ``(R_out δ)[I] * (R_in ã)[J]`` — entries of ``R_out (δ ãᵀ) R_inᵀ`` — concatenated over
    layers. Build with ``random(...)`` (seeded) or directly from given (informed) matrices.
    An optional ``mix [Σ kept pairs, d]`` maps those raw coordinates linearly to the output
    ones (e.g. to orthonormalize directions that are sums of several outer products).

    ``project`` on flattened gradients assumes parameters ordered per layer as
    ``weight [out, in]`` row-major, then ``bias [out]`` (``nn.Linear`` order).
    """

    def __init__(self, layer_shapes: Sequence[Sequence], r_out: Sequence, r_in: Sequence,
                 pairs: Sequence | None = None, info: dict | None = None, mix: np.ndarray | None = None):
        self.layer_shapes = [(int(o), int(i), bool(b)) for o, i, b in layer_shapes]
        if not (len(r_out) == len(r_in) == len(self.layer_shapes)):
            raise ValueError(f"need one R_out and one R_in per layer ({len(self.layer_shapes)}), "
                             f"got {len(r_out)} and {len(r_in)}")
        self.r_out = [torch.as_tensor(np.array(r, dtype=np.float32)) for r in r_out]
        self.r_in = [torch.as_tensor(np.array(r, dtype=np.float32)) for r in r_in]
        if pairs is None:
            pairs = [_grid_pairs(ro.shape[0], ri.shape[0]) for ro, ri in zip(self.r_out, self.r_in)]
        self.pairs = [(torch.as_tensor(np.array(i, dtype=np.int64)),
                       torch.as_tensor(np.array(j, dtype=np.int64))) for i, j in pairs]
        for l, ((out, inp, bias), ro, ri, (pi, pj)) in enumerate(
                zip(self.layer_shapes, self.r_out, self.r_in, self.pairs)):
            if ro.ndim != 2 or ro.shape[1] != out or ri.ndim != 2 or ri.shape[1] != inp + bias:
                raise ValueError(f"layer {l}: R_out must be [k, {out}] and R_in [k, {inp + bias}], "
                                 f"got {tuple(ro.shape)} and {tuple(ri.shape)}")
            if pi.shape != pj.shape or (len(pi) and (pi.max() >= ro.shape[0] or pj.max() >= ri.shape[0])):
                raise ValueError(f"layer {l}: kept pairs must index rows of R_out / R_in")
        self.layer_dims = [len(i) for i, _ in self.pairs]
        self._plain_pairs = [(len(i) == ro.shape[0] and bool(torch.equal(i, torch.arange(len(i)))),
                              len(j) == ri.shape[0] and bool(torch.equal(j, torch.arange(len(j)))))
                             for (i, j), ro, ri in zip(self.pairs, self.r_out, self.r_in)]   # skip gathers
        self.D = sum(o * (i + b) for o, i, b in self.layer_shapes)
        raw_d = sum(self.layer_dims)
        self.mix = None if mix is None else torch.as_tensor(np.array(mix, dtype=np.float32))
        if self.mix is not None and (self.mix.ndim != 2 or self.mix.shape[0] != raw_d):
            raise ValueError(f"mix must be [{raw_d}, d] (kept pairs x output coordinates), got {tuple(self.mix.shape)}")
        self.d = raw_d if self.mix is None else self.mix.shape[1]
        self._passthrough = _leading_unit_columns(self.mix)
        self.info = dict(info or {"source": "given"})
        self._on_device: dict[torch.device, tuple] = {}

    # ---- construction
    @classmethod
    def random(cls, layer_shapes: Sequence[Sequence], d: int, kind: str = "gaussian",
               seed: int = 0, layer_weights: Sequence[float] | None = None,
               out_rows: int | None = None, layer_dims: Sequence[int] | None = None,
               input_means: Sequence | None = None) -> "KroneckerProjector":
        """Seeded random Kronecker projection with ``d`` coordinates in total.

        Allocation rule: layer ``l`` gets ``d_l ∝ layer_weights[l]`` coordinates (largest
        remainder rounding, at least 1 each when ``d`` allows; default weights = parameter
        counts, i.e. what a dense projection spends per layer). Pass measured per-layer
        gradient energies (``fast.layer_gradient_energy``) to spend dims where gradients are
        large; that minimizes the summed inner-product variance. ``layer_dims`` overrides.

        Per layer, ``R_in`` has ``d_l`` rows used once each and ``R_out`` has
        ``k_out = min(d_l, out_rows or d_l)`` rows cycled over the coordinates
        (``I = arange(d_l) % k_out``, ``J = arange(d_l)``). ``out_rows=None`` makes every
        coordinate an independent rank-1 sketch (lowest variance); a small ``out_rows`` makes
        all-task projection cheaper (cost ∝ k_out) at higher variance. Entries are N(0,1) or
        ±1, and coordinates are scaled by ``1/√d_l`` so inner products are kept in expectation.

        ``input_means`` (per layer ``(E[ã], share)`` on a calibration sample, share =
        ``E[(μ̂·ã)²] / E‖ã‖²``; see ``fast.layer_input_means``) splits each layer exactly along the mean direction ``μ``:
        ``ã = (μ·ã)μ + P⊥ã``. ReLU activations share a large common direction (cosine ≈ 0.97
        at the head of a trained SignMLP), and a rank-1 sketch's variance grows with that
        cosine; after the split the ``μ`` part is a plain JL sketch of ``δ`` and the rest has
        small cosines. Still unbiased; ``k_μ`` of the ``d_l`` coordinates go to the ``μ`` part
        in proportion to its share of ``E‖ã‖²``. The matrices are then stored as arrays.
        """
        if kind not in DenseProjector.KINDS:
            raise ValueError(f"projector kind={kind!r} is not supported; use one of {DenseProjector.KINDS}")
        shapes = [(int(o), int(i), bool(b)) for o, i, b in layer_shapes]
        if layer_dims is None:
            weights = layer_weights if layer_weights is not None else [o * (i + b) for o, i, b in shapes]
            layer_dims = allocate_dims(d, weights)
        layer_dims = [int(x) for x in layer_dims]
        if sum(layer_dims) != d or len(layer_dims) != len(shapes) or min(layer_dims) < 0:
            raise ValueError(f"layer_dims={layer_dims} must be {len(shapes)} non-negative ints summing to d={d}")
        r_out, r_in, pairs = [], [], []
        for l, ((out, inp, bias), d_l) in enumerate(zip(shapes, layer_dims)):
            k_out = min(d_l, out_rows) if out_rows else d_l
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, l])))
            ro = _random_matrix(rng, kind, (k_out, out))
            ri = _random_matrix(rng, kind, (d_l, inp + bias)) / np.float32(math.sqrt(max(d_l, 1)))
            if input_means is not None and d_l >= 2:
                mean, share = input_means[l]
                ri = _split_mean_direction(ri, np.asarray(mean, dtype=np.float64), float(share), d_l)
            r_out.append(ro)
            r_in.append(ri)
            pairs.append((np.arange(d_l) % max(k_out, 1), np.arange(d_l)))
        info = {"source": "random" if input_means is None else "random_centered",
                "kind": kind, "seed": int(seed), "out_rows": out_rows}
        return cls(shapes, r_out, r_in, pairs, info)

    @classmethod
    def identity(cls, layer_shapes: Sequence[Sequence]) -> "KroneckerProjector":
        """``R = I`` with the full grid: the exact per-layer gradient (d = D), for tests."""
        shapes = [(int(o), int(i), bool(b)) for o, i, b in layer_shapes]
        return cls(shapes, [np.eye(o) for o, _, _ in shapes], [np.eye(i + b) for _, i, b in shapes],
                   info={"source": "identity"})

    # ---- device copies
    def on(self, device: torch.device) -> tuple:
        """``(r_out, r_in, pairs)`` lists on ``device`` (cached)."""
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = (
                [r.to(device) for r in self.r_out], [r.to(device) for r in self.r_in],
                [(i.to(device), j.to(device)) for i, j in self.pairs],
                None if self.mix is None else (self._passthrough.to(device),
                                               self.mix[:, len(self._passthrough):].to(device)))
        return self._on_device[device][:3]

    def _mixed(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw kept-pair coordinates ``[..., Σ d_l]`` -> output coordinates ``[..., d]`` (leading
        columns of ``mix`` that copy one raw coordinate are a gather, the rest a matmul)."""
        if self.mix is None:
            return raw
        self.on(raw.device)
        copied, dense = self._on_device[raw.device][3]
        return torch.cat([raw[..., copied], raw @ dense], dim=-1)

    def combine(self, out_coords: Sequence[torch.Tensor], in_coords: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per layer ``(R_out δ) [..., k_out]`` and ``(R_in ã) [..., k_in]`` -> ``[..., d]``."""
        _, _, pairs = self.on(out_coords[0].device)
        return self._mixed(torch.cat([(u if plain_i else u[..., i]) * (v if plain_j else v[..., j])
                                      for u, v, (i, j), (plain_i, plain_j)
                                      in zip(out_coords, in_coords, pairs, self._plain_pairs)], dim=-1))

    def projection_flops(self) -> float:
        """FLOPs to project one sum of per-layer outer products ``δ ãᵀ``: ``R_out δ``, ``R_in ã``,
        the kept coordinate products and the mix (the gradient itself is never formed)."""
        mixing = 0.0 if self.mix is None else 2.0 * self.mix.shape[0] * (self.d - len(self._passthrough))
        return float(sum(2.0 * (ro.numel() + ri.numel()) + d_l
                         for ro, ri, d_l in zip(self.r_out, self.r_in, self.layer_dims))) + mixing

    # ---- flattened gradients
    def _layer_slices(self):
        start = 0
        for out, inp, bias in self.layer_shapes:
            yield start, out, inp, bias
            start += out * (inp + bias)

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        _check_width(grads, self.D)
        r_out, r_in, pairs = self.on(grads.device)
        pieces = []
        for (start, out, inp, bias), ro, ri, (i, j) in zip(self._layer_slices(), r_out, r_in, pairs):
            weight = grads[:, start:start + out * inp].reshape(-1, out, inp)
            g = torch.cat([weight, grads[:, start + out * inp:start + out * (inp + 1)].reshape(-1, out, 1)],
                          dim=2) if bias else weight
            full = ro @ g.float() @ ri.T                     # [B, k_out, k_in]
            pieces.append(full[:, i, j])
        return self._mixed(torch.cat(pieces, dim=1))

    def back_project(self, coords: torch.Tensor) -> torch.Tensor:
        r_out, r_in, pairs = self.on(coords.device)
        lead = coords.shape[:-1]
        flat = coords.reshape(-1, self.d).float()
        if self.mix is not None:
            flat = flat @ self.mix.to(flat.device).T
        pieces, offset = [], 0
        for (_, out, inp, bias), ro, ri, (i, j), d_l in zip(self._layer_slices(), r_out, r_in,
                                                              pairs, self.layer_dims):
            c = torch.zeros(flat.shape[0], ro.shape[0], ri.shape[0], device=flat.device)
            c.index_put_((torch.arange(flat.shape[0], device=flat.device)[:, None], i, j),
                         flat[:, offset:offset + d_l], accumulate=True)
            g = ro.T @ c @ ri                                # [B, out, in+bias]
            pieces += [g[:, :, :inp].reshape(len(g), -1)] + ([g[:, :, inp]] if bias else [])
            offset += d_l
        return torch.cat(pieces, dim=1).reshape(*lead, self.D)

    # ---- spec
    def arrays(self) -> dict[str, np.ndarray]:
        if self.info.get("source") in ("random", "identity"):
            return {}
        arrays = {}
        for l, (ro, ri, (i, j)) in enumerate(zip(self.r_out, self.r_in, self.pairs)):
            arrays.update({f"r_out_{l}": ro.numpy(), f"r_in_{l}": ri.numpy(),
                           f"pairs_out_{l}": i.numpy(), f"pairs_in_{l}": j.numpy()})
        if self.mix is not None:
            arrays["mix"] = self.mix.numpy()
        return arrays

    def spec(self) -> dict:
        return {"type": "kronecker", "version": SPEC_VERSION, "D": self.D, "d": self.d,
                "layers": [list(s) for s in self.layer_shapes], "layer_dims": self.layer_dims,
                **self.info, **self._arrays_spec()}

    @classmethod
    def from_spec(cls, spec: dict, directory=None) -> "KroneckerProjector":
        source = spec.get("source")
        if source == "random":
            return cls.random(spec["layers"], spec["d"], spec["kind"], spec["seed"],
                              out_rows=spec.get("out_rows"), layer_dims=spec["layer_dims"])
        if source == "identity":
            return cls.identity(spec["layers"])
        arrays = _load_arrays(spec, directory)
        n = len(spec["layers"])
        info = {k: v for k, v in spec.items() if k not in
                {"type", "version", "D", "d", "layers", "layer_dims", "arrays", "arrays_hash"}}
        return cls(spec["layers"], [arrays[f"r_out_{l}"] for l in range(n)],
                   [arrays[f"r_in_{l}"] for l in range(n)],
                   [(arrays[f"pairs_out_{l}"], arrays[f"pairs_in_{l}"]) for l in range(n)], info,
                   mix=arrays.get("mix"))


def linear_layer_shapes(linears: Sequence[torch.nn.Linear]) -> list[tuple[int, int, bool]]:
    """``(out, in, has_bias)`` per layer, the shape list ``KroneckerProjector`` takes."""
    return [(m.out_features, m.in_features, m.bias is not None) for m in linears]


def allocate_dims(d: int, weights: Sequence[float]) -> list[int]:
    """Split ``d`` into integers proportional to ``weights`` (largest remainder), each >= 1
    when ``d >= len(weights)``."""
    w = np.asarray(weights, dtype=np.float64)
    if d < 1 or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"cannot split d={d} over layer weights {list(weights)}: need d >= 1 "
                         "and non-negative weights with a positive sum")
    floor_min = 1 if d >= len(w) else 0
    ideal = d * w / w.sum()
    dims = np.maximum(np.floor(ideal).astype(int), floor_min)
    while dims.sum() > d:                      # the minimum of 1 overshot: take where it most exceeds
        excess = np.where(dims > floor_min, dims - ideal, -np.inf)
        dims[np.argmax(excess)] -= 1
    order = np.argsort(-(ideal - dims), kind="stable")
    for k in range(d - dims.sum()):
        dims[order[k % len(w)]] += 1
    return dims.tolist()


# --------------------------------------------------------------------------- specs and files


PROJECTOR_TYPES: dict[str, type[Projector]] = {
    "dense": DenseProjector, "basis": BasisProjector, "kronecker": KroneckerProjector}


def save_projector(projector: Projector, directory: str | os.PathLike) -> dict:
    """Write the projector's arrays (if any) as ``.npy`` files in ``directory``; return its spec."""
    spec = projector.spec()
    arrays = projector.arrays()
    for name, filename in spec.get("arrays", {}).items():
        atomic_save_npy(Path(directory) / filename, arrays[name])
    return spec


def projector_from_spec(spec: dict, directory: str | os.PathLike | None = None) -> Projector:
    """Rebuild a projector from ``spec`` (array files, if any, are read from ``directory``)."""
    kind = spec.get("type")
    if kind not in PROJECTOR_TYPES:
        raise ValueError(f"projector spec type={kind!r} is unknown; known: {sorted(PROJECTOR_TYPES)}")
    projector = PROJECTOR_TYPES[kind].from_spec(spec, directory)
    if projector.d != spec["d"] or projector.D != spec["D"]:
        raise ValueError(f"projector rebuilt from spec has D={projector.D}, d={projector.d}; "
                         f"the spec says D={spec['D']}, d={spec['d']}")
    return projector


def _arrays_entry(arrays: dict[str, np.ndarray]) -> dict:
    """Spec entry naming the array files after a hash of their content (so a different basis
    gives a different spec, which the gradient store's mismatch check sees)."""
    if not arrays:
        return {}
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    content = digest.hexdigest()[:16]
    return {"arrays": {name: f"projector-{content}-{name}.npy" for name in sorted(arrays)},
            "arrays_hash": content}


def _load_arrays(spec: dict, directory) -> dict[str, np.ndarray]:
    if directory is None:
        raise ValueError(f"projector spec type={spec['type']!r} needs its array files; "
                         "pass the directory they were saved in")
    out = {}
    for name, filename in spec["arrays"].items():
        path = Path(directory) / filename
        if not path.exists():
            raise ValueError(f"projector array file {path} is missing (spec arrays_hash="
                             f"{spec.get('arrays_hash')}); recompute the projector")
        out[name] = np.load(path, mmap_mode="r")
    if _arrays_entry(out)["arrays_hash"] != spec["arrays_hash"]:
        raise ValueError(f"projector array files in {directory} do not match the spec's "
                         f"arrays_hash={spec['arrays_hash']}; recompute the projector")
    return out


def _random_matrix(rng: np.random.Generator, kind: str, shape) -> np.ndarray:
    if kind == "rademacher":
        return 2.0 * rng.integers(0, 2, size=shape, dtype=np.int8).astype(np.float32) - 1.0
    return rng.standard_normal(shape, dtype=np.float32)


def _split_mean_direction(r_in: np.ndarray, mean: np.ndarray, share: float, d_l: int) -> np.ndarray:
    """``R_in`` whose first ``k_μ`` rows read ``μ̂·ã/√k_μ`` and the rest ``s·P⊥ã/√(d_l−k_μ)``."""
    unit = mean / max(np.linalg.norm(mean), 1e-300)
    k_mean = int(min(d_l - 1, max(1, round(share * d_l))))
    rest = r_in[k_mean:] * np.float32(math.sqrt(d_l / (d_l - k_mean)))   # rescale to 1/√(d_l−k_μ)
    rest = rest - np.outer(rest @ unit, unit)                             # s P⊥
    along = np.repeat(unit[None, :] / math.sqrt(k_mean), k_mean, axis=0)
    return np.concatenate([along, rest]).astype(np.float32)


def _leading_unit_columns(mix: torch.Tensor | None) -> torch.Tensor:
    """Raw indices copied by the leading columns of ``mix`` that hold a single 1 (empty if none)."""
    if mix is None:
        return torch.zeros(0, dtype=torch.int64)
    nonzero = mix != 0
    unit = (nonzero.sum(0) == 1) & (mix.sum(0) == 1)
    leading = int(torch.cumprod(unit.long(), 0).sum())
    return torch.argmax(nonzero[:, :leading].long(), dim=0)


def _grid_pairs(k_out: int, k_in: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.meshgrid(np.arange(k_out), np.arange(k_in), indexing="ij")
    return i.ravel(), j.ravel()


def _check_width(grads: torch.Tensor, D: int) -> None:
    if grads.ndim != 2 or grads.shape[1] != D:
        raise ValueError(f"gradients must be [B, {D}] (flattened, model parameter order), "
                         f"got shape {tuple(grads.shape)}")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name}={value} must be a positive integer")
