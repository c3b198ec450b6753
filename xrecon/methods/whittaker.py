"""Whittaker smoothing on irregular dates, for many pixels at once.

For each pixel and band the smoother minimises, over values ``z`` on the grid ``g`` = union of the
observation and query dates,

    sum_i w_i (y_i - z_i)^2  +  lam * sum_r (s_r / h) (D z)_r^2

- ``w_i`` is 1 at a clear observation and 0 elsewhere (cloudy dates and query-only dates); dates closer
  than one hour are one node of the grid, where the weights of their observations add up;
- ``D`` takes differences of order ``d`` divided by the spacing, scaled by ``d!`` so that ``D z``
  approximates the d-th derivative of ``z`` in reflectance per day^d, on any spacing;
- ``s_r = (g[r + d] - g[r]) / d`` is the span of difference ``r``, so that the penalty approximates the
  integral of the squared d-th derivative and does not grow when query dates are added between
  observations; ``h = (t[-1] - t[0]) / (T - 1)`` is the mean spacing of the observation dates.

``lam`` is therefore in days^(2d). On a regular grid of spacing h where every date is clear, the penalty is
the classical Whittaker one with ``lambda = lam / h^(2d)``, and the smoother is a low-pass filter whose
response falls to one half at a period of about ``2 pi lam^(1 / (2d))`` days.

The system ``(W + lam P) z = W y`` is banded (half bandwidth d) and differs between pixels only through W:
it is factorised as L D L' with a loop over the grid dates whose every step is a numpy operation over all
pixels of a block, and one factorisation serves every band.

A pixel with fewer than d clear dates has no unique smooth (every polynomial of degree < d through them
costs nothing): it is interpolated linearly, the lowest-degree choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xrecon.errors import MethodError
from xrecon.methods import _common
from xrecon.methods.linear import linear_native

__all__ = ["fill_whittaker", "whittaker_native", "select_lambda", "default_lambda", "CRITERIA"]

CRITERIA = ("gcv", "vcurve")

# Pixels per block: big enough that each numpy call amortises its overhead, small enough that the few
# arrays touched by one step of the recursions stay in cache.
_BLOCK = 1024

# Dates closer than this (in days: one hour) share one node of the smoother's grid.
_MERGE_DAYS = 1.0 / 24.0


def default_lambda(order: int = 2) -> float:
    """The default smoothing, ``(10 days)^(2 * order)``: the response is one half at a period of 2 pi 10 = 63 days.

    On 5-day Sentinel-2 dates and ``order=2`` this is the classical ``lambda = 1e4 / 5**4 = 16``.

    Examples
    --------
    >>> default_lambda(2)
    10000.0
    """
    return 10.0 ** (2 * order)


def _default_grid(order: int) -> np.ndarray:
    # from 1000x less to 1000x more smoothing than the default, half a decade apart
    return default_lambda(order) * np.logspace(-3.0, 3.0, 13)


# ----------------------------------------------------------------------------------------------------------
# Penalty on the grid


def _difference_bands(g: np.ndarray, d: int) -> np.ndarray:
    """Rows of ``D`` (d! times the divided differences of order d on ``g``), as (len(g) - d, d + 1) bands.

    Row r has its d + 1 non-zeros in columns r .. r + d.
    """
    n = g.size
    band = np.ones((n, 1))
    for k in range(1, d + 1):
        m = n - k
        nxt = np.zeros((m, k + 1))
        nxt[:, 1:] += band[1 : m + 1, :]
        nxt[:, :-1] -= band[:m, :]
        nxt *= (k / (g[k:] - g[:-k]))[:, None]
        band = nxt
    return band


def _penalty_bands(g: np.ndarray, d: int, h: float) -> np.ndarray:
    """``P = D' diag(s / h) D`` in band storage (d + 1, n): ``out[k, j] = P[j, j - k]``."""
    n = g.size
    out = np.zeros((d + 1, n))
    if n <= d:
        return out
    dband = _difference_bands(g, d)  # (n - d, d + 1)
    s = (g[d:] - g[:-d]) / (d * h)
    for a in range(d + 1):
        for b in range(a, d + 1):
            # D[r, r + a] * D[r, r + b] contributes to P[r + b, r + a], i.e. band b - a at row r + b
            out[b - a, b : b + n - d] += s * dband[:, a] * dband[:, b]
    return out


# ----------------------------------------------------------------------------------------------------------
# Banded L D L' over a block of pixels


def _factor(w: np.ndarray, lam: float, pen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factor ``W + lam P`` as L D L' for every pixel of a block.

    ``w`` (n, B) weights, ``pen`` (d + 1, n) bands of P. Returns ``low`` (n, d, B) with
    ``low[j, k - 1] = L[j, j - k]`` and ``dinv`` (n, B) = 1 / D. Off-diagonals of the matrix are the same
    for every pixel (only W differs), which is why they enter as scalars below.
    """
    n, nb = w.shape
    d = pen.shape[0] - 1
    off = lam * pen[1:]  # (d, n): off[k - 1, j] = A[j, j - k], shared by all pixels
    diag = w + (lam * pen[0])[:, None]  # (n, B)
    low = np.zeros((n, d, nb))
    dinv = np.empty((n, nb))
    g = np.empty((d, nb))  # g[k - 1] = L[j, j - k] * D[j - k], the unscaled row of the current step
    tmp = np.empty(nb)
    for j in range(n):
        dj = diag[j]
        for k in range(min(d, j), 0, -1):
            # g_k = A[j, j-k] - sum_{m > k} L[j, j-m] D[j-m] L[j-k, j-m]
            gk = g[k - 1]
            gk.fill(off[k - 1, j])
            for m in range(k + 1, min(d, j) + 1):
                np.multiply(g[m - 1], low[j - k, m - k - 1], out=tmp)
                gk -= tmp
            np.multiply(gk, dinv[j - k], out=low[j, k - 1])
            np.multiply(low[j, k - 1], gk, out=tmp)
            dj -= tmp
        np.divide(1.0, dj, out=dinv[j])
    return low, dinv


def _solve(low: np.ndarray, dinv: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve L D L' z = b in place for all bands: ``b`` (n, C, B) becomes z."""
    n, d, _ = low.shape
    tmp = np.empty(b.shape[1:])
    for j in range(1, n):
        for k in range(1, min(d, j) + 1):
            np.multiply(low[j, k - 1], b[j - k], out=tmp)
            b[j] -= tmp
    b *= dinv[:, None, :]
    for j in range(n - 2, -1, -1):
        for k in range(1, min(d, n - 1 - j) + 1):
            np.multiply(low[j + k, k - 1], b[j + k], out=tmp)
            b[j] -= tmp
    return b


def _inverse_diagonal(low: np.ndarray, dinv: np.ndarray) -> np.ndarray:
    """Diagonal of (L D L')^-1 for every pixel (Takahashi's recursion inside the band), shape (n, B)."""
    n, d, nb = low.shape
    # sig[j, m] = Sigma[j + m, j] for m = 0..d, filled from the last row up
    sig = np.zeros((n, d + 1, nb))

    def sigma(i: int, j: int) -> np.ndarray:
        i, j = max(i, j), min(i, j)
        return sig[j, i - j]

    for j in range(n - 1, -1, -1):
        kmax = min(d, n - 1 - j)
        for m in range(1, kmax + 1):
            acc = sig[j, m]
            for k in range(1, kmax + 1):
                acc -= low[j + k, k - 1] * sigma(j + m, j + k)
        acc = sig[j, 0]
        acc += dinv[j]
        for k in range(1, kmax + 1):
            acc -= low[j + k, k - 1] * sig[j, k]
    return sig[:, 0, :]


# ----------------------------------------------------------------------------------------------------------
# The kernel


def _check_lam(lam: Any, order: int) -> float | str:
    if lam is None:
        return default_lambda(order)
    if isinstance(lam, str):
        if lam not in CRITERIA:
            raise MethodError(
                f"method 'whittaker': option lam must be a positive number or one of {list(CRITERIA)}, "
                f"got {lam!r}"
            )
        return lam
    return _common.check_positive("whittaker", "lam", lam)


#: The most lambda candidates ``lam_grid`` may hold: the smoother is solved once per candidate.
MAX_LAM_GRID = 200


def _check_grid(lam_grid: Any, order: int) -> np.ndarray:
    if lam_grid is None:
        return _default_grid(order)
    try:
        grid = np.asarray(lam_grid, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MethodError(f"method 'whittaker': option lam_grid must be positive numbers, got {lam_grid!r}") from err
    if grid.ndim == 1 and grid.size > MAX_LAM_GRID:
        raise MethodError(
            f"method 'whittaker': option lam_grid has {grid.size} candidates; expected at most {MAX_LAM_GRID} "
            "(the smoother is solved once per candidate; the default has 13)"
        )
    if grid.ndim != 1 or grid.size < 3 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise MethodError(
            "method 'whittaker': option lam_grid must be a 1-D sequence of at least 3 positive numbers, "
            f"got {lam_grid!r}"
        )
    return np.unique(grid)  # sorted: the V-curve walks the candidates in order


@dataclass(frozen=True)
class _Grid:
    """The grid the smoother lives on: the union of observation and query dates, near-duplicates merged.

    ``times`` (n,) node dates; ``t_node`` (T,) and ``q_node`` (Tq,) the node of each observation and query;
    ``groups`` the start, in ``t``, of each run of observations sharing a node, and ``obs_nodes`` those
    nodes (None when every observation has a node of its own, the usual case).
    """

    times: np.ndarray
    t_node: np.ndarray
    q_node: np.ndarray
    groups: np.ndarray | None
    obs_nodes: np.ndarray
    query_only: np.ndarray


def _grid(t: np.ndarray, tq: np.ndarray) -> _Grid:
    raw = np.union1d(t, tq)
    # Dates closer than _MERGE_DAYS (tiles of one overpass seconds apart; a query at midnight next to a
    # 10:30 observation) would put tiny spacings in the divided differences and ruin the conditioning of
    # the system; they are one node, at their mean date.
    if raw.size < 2 or np.diff(raw).min() > _MERGE_DAYS:
        starts = np.arange(raw.size)
    else:
        # a node spans at most _MERGE_DAYS from its first date, so that dense queries (hourly, say) do not
        # chain into one node; a loop over the dates of the grid, once per call
        first, kept = raw[0], [0]
        for i in range(1, raw.size):
            if raw[i] - first > _MERGE_DAYS:
                first = raw[i]
                kept.append(i)
        starts = np.array(kept)
    counts = np.diff(np.append(starts, raw.size))
    times = np.add.reduceat(raw, starts) / counts
    node_of_raw = np.repeat(np.arange(starts.size), counts)
    t_node = node_of_raw[np.searchsorted(raw, t)]
    q_node = node_of_raw[np.searchsorted(raw, tq)]
    groups = np.concatenate([[0], np.flatnonzero(np.diff(t_node)) + 1])
    obs_nodes = t_node[groups]
    query_only = np.setdiff1d(np.arange(times.size), obs_nodes)
    return _Grid(times, t_node, q_node, None if groups.size == t.size else groups, obs_nodes, query_only)


def _run(
    values: np.ndarray,
    valid: np.ndarray,
    t: np.ndarray,
    tq: np.ndarray,
    sup: _common.Support,
    order: int,
    lam: float | str,
    grid_lam: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth every pixel of (T, C, N) values and (T, N) validity (the cube's layout); return the values at
    the (clamped) queries (Tq, C, N) and lam (N, C)."""
    nt, nc, n = values.shape
    grid = _grid(t, tq)
    g = grid.times
    gidx = sup.clamp_positions(grid.t_node, grid.q_node)  # (N, Tq): the edges rule
    h = (t[-1] - t[0]) / (nt - 1) if nt > 1 else 1.0
    pen = _penalty_bands(g, order, h)
    dband = _difference_bands(g, order) if g.size > order else np.zeros((0, order + 1))
    span = (g[order:] - g[:-order]) / (order * h)

    # With fewer than `order` clear nodes every polynomial of degree < order through them costs nothing:
    # the problem has no unique solution, and those pixels are interpolated linearly instead (the lowest
    # degree among those solutions). Meanwhile they get dummy weights so that their block stays solvable.
    if grid.groups is None:
        n_valid = valid.sum(axis=0)
    else:
        n_valid = np.logical_or.reduceat(valid, grid.groups, axis=0).sum(axis=0)
    few = n_valid < order

    def per_node(x: np.ndarray) -> np.ndarray:  # (T, ...) per observation -> per observed node
        return x if grid.groups is None else np.add.reduceat(x, grid.groups, axis=0)

    out = np.empty((tq.size, nc, n), dtype=np.float32)
    lam_out = np.empty((n, nc))
    block = _BLOCK
    for start in range(0, n, block):
        sl = slice(start, min(start + block, n))
        nb = sl.stop - sl.start
        vb = valid[:, sl]  # (T, B)
        w = np.zeros((g.size, nb))
        w[grid.obs_nodes] = per_node(vb.astype(np.float64))
        w[:, few[sl]] = 1.0
        # (T, C, B) float64, C-ordered for the recursions; zeros written over what is not clear (not a
        # product with the weights: NaN * 0 is NaN, and garbage must not leak)
        y = np.empty((nt, nc, nb))
        np.copyto(y, values[:, :, sl])
        np.copyto(y, 0.0, where=~vb[:, None, :])
        if grid.groups is None and not grid.query_only.size:
            rhs = y  # one node per observation date and nothing else (tq within t): no copy
        else:
            rhs = np.empty((g.size, nc, nb))
            rhs[grid.query_only] = 0.0
            rhs[grid.obs_nodes] = per_node(y)
        if isinstance(lam, str):
            sq = np.zeros_like(rhs)
            sq[grid.obs_nodes] = per_node(np.square(y, dtype=np.float64))
            z, lam_b = _auto(w, rhs, sq, pen, dband, span, lam, grid_lam)
        else:
            low, dinv = _factor(w, lam, pen)
            z = _solve(low, dinv, rhs)
            lam_b = np.full((nb, nc), lam)
        # Read off at the (clamped) query nodes, band by band: z[node of (query, pixel), c, pixel]
        at = gidx[sl].T * nb + np.arange(nb)[None, :]  # (Tq, B) positions in a band's (nodes, B) plane
        for c in range(nc):
            np.take(z[:, c].astype(np.float32).ravel(), at, out=out[:, c, sl])
        lam_out[sl] = lam_b

    if few.any():
        out[:, :, few] = linear_native(values[:, :, few], valid[:, few], t, tq, edges="hold")
        lam_out[few] = np.nan
    return out, lam_out


def _auto(
    w: np.ndarray,
    wy: np.ndarray,
    wyy: np.ndarray,
    pen: np.ndarray,
    dband: np.ndarray,
    span: np.ndarray,
    criterion: str,
    grid_lam: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve for every candidate lam, keep per pixel and band the one the criterion prefers.

    ``w`` (n, B) node weights, ``wy`` and ``wyy`` (n, C, B) sums of the observations and of their squares at
    each node. Returns z (n, C, B) and the chosen lam (B, C).
    """
    n, nc, nb = wy.shape
    d = pen.shape[0] - 1
    n_obs = w.sum(axis=0)  # (B,)
    sum_yy = wyy.sum(axis=0)  # (C, B)
    best_z = np.zeros_like(wy)
    best_score = np.full((nc, nb), np.inf)
    best_lam = np.full((nc, nb), np.nan)
    tiny = 1e-300
    prev = None  # V-curve: (z, log fidelity, log roughness, lam, length of the segment before it)
    for lam in grid_lam:
        low, dinv = _factor(w, lam, pen)
        z = _solve(low, dinv, wy.copy())
        # sum over observations of (y - z)^2, from the node sums (merged dates hold several observations)
        rss = sum_yy + np.einsum("jcb,jcb->cb", z, w[:, None, :] * z - 2.0 * wy)
        np.maximum(rss, 0.0, out=rss)  # rounding can leave a tiny negative for an exact fit
        if criterion == "gcv":
            tr = np.einsum("jb,jb->b", w, _inverse_diagonal(low, dinv))  # (B,)
            dof = n_obs - tr
            with np.errstate(divide="ignore", invalid="ignore"):
                score = np.where(dof > 1e-6 * np.maximum(n_obs, 1), n_obs * rss / dof**2, np.inf)
            _take(score, z, lam, best_score, best_lam, best_z)
            continue
        # V-curve: the candidate where (log fidelity, log roughness) moves least per step of log lam
        dz = np.zeros((dband.shape[0], nc, nb))
        for a in range(d + 1):
            dz += dband[:, a, None, None] * z[a : a + dband.shape[0]]
        rough = np.einsum("r,rcb->cb", span, dz * dz)
        point = (np.log(rss + tiny), np.log(rough + tiny))
        if prev is not None:
            seg = np.hypot(point[0] - prev[1], point[1] - prev[2])
            # the previous candidate is scored by the mean length of its two segments (one at an end)
            score = seg if prev[4] is None else 0.5 * (seg + prev[4])
            _take(score, prev[0], prev[3], best_score, best_lam, best_z)
            prev = (z, point[0], point[1], lam, seg)
        else:
            prev = (z, point[0], point[1], lam, None)
    if criterion == "vcurve" and prev is not None and prev[4] is not None:
        _take(prev[4], prev[0], prev[3], best_score, best_lam, best_z)
    # Where no candidate scored (too few observations for the criterion to mean anything: the fit is then
    # the same for every lam at the observations), keep the candidate in the middle of the grid.
    unset = np.isnan(best_lam)
    if unset.any():
        k = grid_lam.size // 2
        low, dinv = _factor(w, grid_lam[k], pen)
        z = _solve(low, dinv, wy.copy())
        np.copyto(best_z, z, where=unset[None])
        best_lam[unset] = grid_lam[k]
    return best_z, best_lam.T


def _take(score, z, lam, best_score, best_lam, best_z) -> None:
    score = np.where(np.isfinite(score), score, np.inf)
    take = score < best_score
    best_score[take] = score[take]
    best_lam[take] = lam
    np.copyto(best_z, z, where=take[None])


def fill_whittaker(
    values: np.ndarray,
    valid: np.ndarray,
    t: np.ndarray,
    tq: np.ndarray,
    *,
    edges: str = "hold",
    lam: float | str | None = None,
    order: int = 2,
    lam_grid: Sequence[float] | None = None,
    **options: Any,
) -> np.ndarray:
    """Whittaker-smooth each pixel's clear observations on irregular dates and read it at the queries.

    Parameters
    ----------
    values : ndarray, shape (N, T, C)
        Reflectance; anything (NaN, garbage) where not ``valid``.
    valid : ndarray of bool, shape (N, T)
        True where the observation is clear.
    t : ndarray of float64, shape (T,)
        Observation dates in days, strictly increasing.
    tq : ndarray of float64, shape (Tq,)
        Query dates in days, in any order.
    edges : {"hold", "nan"}
        Before a pixel's first (after its last) clear observation: "hold" returns the smoothed value at
        that observation's date, "nan" returns NaN.
    lam : float or {"gcv", "vcurve"}, optional
        Smoothing in days^(2 * order) (see the module notes); default :func:`default_lambda`,
        ``(10 days)^(2 * order)``. "gcv" (generalised cross-validation) or "vcurve" (Frasso & Eilers'
        V-curve) choose it per pixel and band among ``lam_grid``.
    order : int, default 2
        Order of the differences, 1 to 3 (2: penalise curvature; large lam tends to a straight line).
    lam_grid : sequence of float, optional
        Candidates for an automatic lam; default 13 values from 1e-3 to 1e3 times the default lam,
        half a decade apart.

    Returns
    -------
    ndarray of float32, shape (N, Tq, C)

    Notes
    -----
    A pixel with fewer than ``order`` clear observations (where the smoother has no unique solution) is
    interpolated linearly, as :func:`xrecon.methods.linear.fill_linear` does. A pixel without any is NaN.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(0.0, 100.0, 5.0)
    >>> y = (0.2 + 0.001 * t)[None, :, None]
    >>> out = fill_whittaker(y, np.ones((1, t.size), bool), t, np.array([2.5, 50.0]), lam=1e3)
    >>> np.round(out[0, :, 0], 4)
    array([0.2025, 0.25  ], dtype=float32)
    """
    _common.reject_unexpected("whittaker", options, ["edges", "lam", "order", "lam_grid"])
    edges = _common.check_edges(edges)
    order = _common.check_int("whittaker", "order", order, 1, 3)
    lam = _check_lam(lam, order)
    grid_lam = _check_grid(lam_grid, order)
    values, valid, t, tq = _common.check_inputs(values, valid, t, tq)
    # One implementation, in the cube's (time, band, pixel) layout: see whittaker_native.
    return _common.via_native(whittaker_native, values, valid, t, tq, edges=edges, lam=lam, order=order,
                              lam_grid=grid_lam)


def whittaker_native(values: np.ndarray, valid: np.ndarray, t: np.ndarray, tq: np.ndarray, *,
                     edges: str = "hold", lam: float | str | None = None, order: int = 2,
                     lam_grid: Sequence[float] | None = None) -> np.ndarray:
    """:func:`fill_whittaker` in the cube's layout: (T, C, N) values and (T, N) validity -> (Tq, C, N) float32.

    What ``fill`` calls, so that a chunk's series need no transposing copies; the arrays are not checked
    (``fill`` and :func:`fill_whittaker` do that), the options are.
    """
    order = _common.check_int("whittaker", "order", order, 1, 3)
    lam = _check_lam(lam, order)
    grid_lam = _check_grid(lam_grid, order)
    nt, nc, n = values.shape
    sup = _common.support(valid.T, t, tq)
    if n == 0 or tq.size == 0 or nt == 0:
        return _common.finish_native(np.zeros((tq.size, nc, n), np.float32), sup, edges)
    out, _ = _run(values, valid, t, tq, sup, order, lam, grid_lam)
    return _common.finish_native(out, sup, edges)


def select_lambda(
    values: np.ndarray,
    valid: np.ndarray,
    t: np.ndarray,
    *,
    criterion: str = "gcv",
    order: int = 2,
    lam_grid: Sequence[float] | None = None,
) -> np.ndarray:
    """The lam that ``fill_whittaker(..., lam=criterion)`` chooses for each pixel and band when tq = t.

    Parameters
    ----------
    values, valid, t
        As for :func:`fill_whittaker`.
    criterion : {"gcv", "vcurve"}
    order : int, default 2
    lam_grid : sequence of float, optional
        Candidates, as for :func:`fill_whittaker`.

    Returns
    -------
    ndarray of float64, shape (N, C)
        NaN for pixels with fewer than ``order`` clear observations (no smoothing is involved there).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = np.arange(0.0, 365.0, 5.0)
    >>> y = 0.3 + 0.1 * np.sin(2 * np.pi * t / 365.25) + rng.normal(0, 0.02, t.size)
    >>> select_lambda(y[None, :, None], np.ones((1, t.size), bool), t).shape
    (1, 1)
    """
    order = _common.check_int("whittaker", "order", order, 1, 3)
    if criterion not in CRITERIA:
        raise MethodError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    grid_lam = _check_grid(lam_grid, order)
    values, valid, t, _ = _common.check_inputs(values, valid, t, t)
    n, nt, nc = values.shape
    if n == 0 or nt == 0:
        return np.full((n, nc), np.nan)
    sup = _common.support(valid, t, t)
    _, lam = _run(values.transpose(1, 2, 0), valid.T, t, t, sup, order, criterion, grid_lam)
    return lam

