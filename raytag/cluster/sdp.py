"""The seed's SDP relaxation of average-density clustering, its solvers, and its roundings.

``min tr((max T − T) X)  s.t.  X ⪰ 0, X ≥ 0, X·1 = 1, tr X = k``. Since ``tr(J X) = 1ᵀX1 = n``
on the feasible set, this is ``max tr(T X)``: the normalized cluster matrix of the best
partition is feasible, so the SDP value bounds every partition's objective from above.

Solvers: MOSEK when it imports *and* its license works (probed once with a tiny problem),
else Clarabel (interior point, accurate, but its KKT system grows ~n⁴ so it is used only up
to ``CLARABEL_MAX_N`` tasks), else SCS (first-order, stated tolerances).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from raytag.cluster.grouping import Grouping, check_affinity, check_k, labels_to_groups
from raytag.cluster.local_search import local_search
from raytag.cluster.objective import grouping_objective
from raytag.cluster.spectral import kmeans

CLARABEL_MAX_N = 30
"""Above this many tasks the default solver switches from Clarabel to SCS (measured: see
benchmarks/bench_cluster.py; Clarabel's dense PSD block makes it far slower past here)."""
SCS_EPS = 1e-5
SCS_MAX_ITERS = 20_000


@dataclass(frozen=True)
class SDPSolution:
    X: np.ndarray
    solver: str
    status: str
    relaxed_objective: float  # max tr(T X) over the relaxation: an upper bound on any partition
    seconds: float


@functools.lru_cache(maxsize=1)
def mosek_usable() -> bool:
    """True when MOSEK imports, cvxpy sees it, and a tiny SDP solves (i.e. a license works)."""
    try:
        import cvxpy as cp
        import mosek  # noqa: F401
    except ImportError:
        return False
    if "MOSEK" not in cp.installed_solvers():
        return False
    try:
        X = cp.Variable((2, 2), PSD=True)
        problem = cp.Problem(cp.Minimize(cp.trace(X)), [X[0, 0] >= 1])
        problem.solve(solver="MOSEK")
        return problem.status in ("optimal", "optimal_inaccurate")
    except Exception:  # missing/expired license surfaces as assorted mosek/cvxpy errors
        return False


def choose_solver(n: int, solver: str = "auto") -> str:
    """Resolve ``solver="auto"`` for an n-task SDP; an explicit name must be installed."""
    import cvxpy as cp

    installed = set(cp.installed_solvers())
    if solver != "auto":
        name = solver.upper()
        if name == "MOSEK" and not mosek_usable():
            raise ValueError("solver: 'MOSEK' is not usable here (not installed or no working license); use 'auto'")
        if name not in installed:
            raise ValueError(f"solver: {solver!r} is not installed; installed: {sorted(installed)} or 'auto'")
        return name
    if mosek_usable():
        return "MOSEK"
    if "CLARABEL" in installed and n <= CLARABEL_MAX_N:
        return "CLARABEL"
    if "SCS" in installed:
        return "SCS"
    if "CLARABEL" in installed:
        return "CLARABEL"
    raise ValueError(f"solver: no SDP solver found (need MOSEK, CLARABEL or SCS); installed: {sorted(installed)}")


def solve_sdp(T: np.ndarray, k: int, solver: str = "auto") -> SDPSolution:
    """Solve the seed's relaxation; T is rescaled to [0, 1] first (same argmax, better conditioned)."""
    import cvxpy as cp

    start = time.perf_counter()
    T = check_affinity(T)
    n = T.shape[0]
    k = check_k(k, n)
    name = choose_solver(n, solver)
    span = float(T.max() - T.min()) or 1.0
    cost = (T.max() - T) / span  # the seed's "max T − T", scaled
    X = cp.Variable((n, n), PSD=True)
    constraints = [X >= 0, cp.sum(X, axis=1) == 1, cp.trace(X) == k]
    problem = cp.Problem(cp.Minimize(cp.sum(cp.multiply(cost, X))), constraints)
    options = {"eps_abs": SCS_EPS, "eps_rel": SCS_EPS, "max_iters": SCS_MAX_ITERS} if name == "SCS" else {}
    problem.solve(solver=name, **options)
    if X.value is None:
        raise RuntimeError(f"SDP solver {name} returned no solution (status {problem.status!r}) for n={n}, k={k}")
    value = np.asarray(X.value)
    value = (value + value.T) / 2
    return SDPSolution(
        X=value,
        solver=name,
        status=str(problem.status),
        relaxed_objective=float((T * value).sum()),
        seconds=time.perf_counter() - start,
    )


def threshold_rounding(X: np.ndarray, threshold: float | None = None, overlap: bool = False) -> list[list[int]]:
    """The seed's rounding: row i proposes the group ``{j : X_ij > threshold}`` (default 1/n).

    Proposals are taken smallest first (the seed took rows in index order): a task sitting
    between two groups has a row spanning both, and taking it first would merge them.
    Disjoint (default): each proposal keeps only tasks not yet assigned. ``overlap=True`` (the
    seed allows overlap): a proposal is kept whole if it adds any task not yet covered, so a
    task can sit in several groups. The number of groups is whatever the threshold yields,
    not necessarily k.
    """
    n = X.shape[0]
    threshold = 1.0 / n if threshold is None else threshold
    above = X > threshold
    above[np.arange(n), np.arange(n)] = True  # a task always belongs to its own row's group
    order = np.argsort(above.sum(1), kind="stable")
    groups: list[list[int]] = []
    covered = np.zeros(n, dtype=bool)
    for i in order:
        members = above[i] & ~covered
        if members.any():
            groups.append(np.flatnonzero(above[i] if overlap else members).tolist())
            covered |= members
    return groups


def refined_rounding(T: np.ndarray, X: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """k-means on the rows of X (rows of one group are identical in an exact solution), then
    local search on the objective. Also refines the threshold rounding when it yields k groups
    and keeps whichever ends higher."""
    candidates = [("kmeans-rows", kmeans(X, k, seed=seed, n_init=5))]
    threshold_groups = threshold_rounding(X)
    if len(threshold_groups) == k:
        labels = np.empty(len(X), dtype=np.int64)
        for g, members in enumerate(threshold_groups):
            labels[members] = g
        candidates.append(("threshold", labels))
    best = None
    for name, init in candidates:
        labels, info = local_search(T, init, k)
        if best is None or info["objective_after"] > best[1]["objective_after"]:
            best = (labels, {**info, "init": name})
    return best


def sdp_grouping(
    T: np.ndarray,
    k: int,
    rounding: str = "refined",
    overlap: bool = False,
    solver: str = "auto",
    seed: int = 0,
) -> Grouping:
    """Solve the SDP and round: ``rounding="refined"`` (k groups, local-search polished) or
    ``"threshold"`` (the seed's; ``overlap=True`` only with it)."""
    start = time.perf_counter()
    T = check_affinity(T)
    if rounding not in ("refined", "threshold"):
        raise ValueError(f"rounding: must be 'refined' or 'threshold', got {rounding!r}")
    if overlap and rounding != "threshold":
        raise ValueError("overlap: overlapping groups come from the seed's rounding; pass rounding='threshold'")
    solution = solve_sdp(T, k, solver=solver)
    extra = {
        "solver_status": solution.status,
        "sdp_seconds": solution.seconds,
        "relaxed_objective": solution.relaxed_objective,
        "rounding": rounding,
        "overlap": overlap,
    }
    if rounding == "threshold":
        groups = threshold_rounding(solution.X, overlap=overlap)
    else:
        labels, info = refined_rounding(T, solution.X, k, seed=seed)
        groups = labels_to_groups(labels)
        extra["local_search"] = info
    return Grouping(
        groups=groups,
        method="sdp",
        k=len(groups),
        objective=grouping_objective(T, groups),
        solver=solution.solver,
        seconds=time.perf_counter() - start,
        extra=extra,
    )
