"""The ensemble's numbers: blend weights per gap class, and split-conformal interval half-widths (numpy only).

Weights
-------
For one band and one gap class, with the members' predictions ``P`` (n, M) of ``n`` hidden observations
``y``, the weights minimise

    ||y - P w||^2 + lam ||w - w0||^2   subject to   sum(w) = 1, w >= 0

where ``w0`` is the blend of the class's group (with ``groups``, e.g. the classes of one gap-size bin: the
same fit over the group's classes) or of the band (over all its classes), the group's own ``w0`` being the
band's and the band's putting all the weight on its best single member (lowest RMSE); ``lam = shrinkage *
d2``, ``d2`` being the mean squared spread of the members around their mean: a class with ``n`` samples
moves from its group's blend towards its own least-squares blend about as ``n / (n + shrinkage)``, and a
band with few samples stays near its best member. Weights summing to one keep the blend in reflectance
units (a member's constant bias is not "explained" by scaling it); non-negative ones keep it between its
members, so that two members which agree almost everywhere (``neighbors`` falls back to ``linear`` far from
clear pixels) are never extrapolated along their small difference.

Missing members
---------------
Where a member gives NaN (no clear observation in its reach...), its value is replaced by the first finite
member in the class's ranking before blending, the same way when fitting and when filling; the blend is NaN
only where every member is.

Intervals
---------
Split-conformal: the score of a hidden observation is its absolute residual divided by a scale
(:func:`interval_scale`: 1, a member's spread, the members' disagreement or both, plus a floor); the
half-width at level ``a`` for a class is the ``ceil((n + 1) a)``-th smallest of the class's ``n`` scores
(``inf`` when there are too few; the band's pooled scores where the class has fewer than
``min_calibration`` values or lies on fewer than ``min_dates`` hidden dates), times the value's scale. With
scores from observations the blend was not fitted on, ``prediction +- half-width`` covers a new observation of
the same kind with probability at least ``a`` (exchangeability; docs/ensemble.md says when that does not hold).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LEVELS",
    "SCALES",
    "best_available",
    "blend",
    "conformal_quantile",
    "dates_per_class",
    "disagreement",
    "filled",
    "fit_band",
    "fit_weights",
    "interval_quantiles",
    "interval_scale",
    "rank_members",
]

#: Levels whose half-widths an ensemble file stores (others are interpolated between them).
LEVELS = (*[round(0.05 * i, 2) for i in range(1, 20)], 0.975, 0.99)
#: What the intervals' residuals can be divided by, simplest first: nothing; RESTORE-DiT's spread
#: (``optical_std``); the members' disagreement (their standard deviation at the value); both (in quadrature).
SCALES = ("none", "spread", "disagreement", "spread+disagreement")


def best_available(P: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(M, n) member values and (n, M) member ranking per value -> (n,) the first finite member in the ranking
    (NaN where none is).

    Examples
    --------
    >>> P = np.array([[1.0, np.nan], [2.0, 3.0]])
    >>> best_available(P, np.array([[0, 1], [0, 1]])).tolist()
    [1.0, 3.0]
    """
    out = np.full(P.shape[1], np.nan, dtype=P.dtype)
    cols = np.arange(P.shape[1])
    for r in range(order.shape[1]):
        missing = np.isnan(out)
        if not missing.any():
            break
        out[missing] = P[order[missing, r], cols[missing]]
    return out


def filled(P: np.ndarray, ranking: np.ndarray) -> np.ndarray:
    """(M, n) member values and (n, M) member ranking per value -> the values with each member's NaN replaced
    by the first finite member in the ranking (NaN only where every member is)."""
    return np.where(np.isnan(P), best_available(P, ranking)[None, :], P)


def blend(P: np.ndarray, cls: np.ndarray, weights: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(M, n) member values, (n,) classes, (K, M) weights and (K, M) rankings per class -> (n,) the blend.

    A member's NaN is replaced by the best finite member of the value's class first (see the module docstring).

    Examples
    --------
    >>> P = np.array([[0.2, np.nan], [0.4, 0.3]])
    >>> blend(P, np.array([0, 0]), np.array([[0.5, 0.5]]), np.array([[0, 1]])).round(3).tolist()
    [0.3, 0.3]
    """
    return np.einsum("mn,nm->n", filled(np.asarray(P), order[cls]), weights[cls])


def rank_members(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M, n) member values and (n,) truth -> member indices from the lowest RMSE (each over its finite values;
    a member with none comes last; ties keep the members' order)."""
    err = (P - y[None, :]) ** 2
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(err)
        n = finite.sum(axis=1)
        mse = np.where(n > 0, np.where(finite, err, 0).sum(axis=1) / np.maximum(n, 1), np.inf)
    return np.argsort(mse, kind="stable")


def fit_weights(P: np.ndarray, y: np.ndarray, prior: np.ndarray, shrinkage: float) -> np.ndarray:
    """Non-negative weights (M,) summing to one of the columns of ``P`` (n, M, finite) for ``y`` (n,), shrunk
    toward ``prior``.

    Examples
    --------
    >>> rng = np.random.default_rng(0); truth = rng.normal(size=500)
    >>> P = np.stack([truth + rng.normal(0, 0.1, 500), truth + rng.normal(0, 0.1, 500)], axis=1)
    >>> fit_weights(P, truth, np.array([1.0, 0.0]), 0.0).round(1).tolist()   # two equal members: half each
    [0.5, 0.5]
    >>> fit_weights(P[:3], truth[:3], np.array([1.0, 0.0]), 1e6).round(3).tolist()  # few samples: the prior
    [1.0, 0.0]
    """
    from scipy.linalg import cholesky, solve_triangular
    from scipy.optimize import nnls

    n, m = P.shape
    if m == 1:
        return np.ones(1)
    d2 = float(np.mean((P - P.mean(axis=1, keepdims=True)) ** 2)) if n else 0.0
    lam = float(shrinkage) * max(d2, 1e-12)
    G = P.T @ P + lam * np.eye(m)
    G += 1e-12 * max(np.trace(G) / m, 1e-12) * np.eye(m)  # positive definite even for identical members
    r = P.T @ y + lam * prior
    # ||R w - c||^2 is the objective up to a constant (G = R'R); a heavy row makes the weights sum to one,
    # and non-negative least squares keeps them in the simplex: the blend stays between its members
    # (stacked regressions, Breiman 1996), so members that agree almost everywhere cannot be extrapolated
    R = cholesky(G, lower=False)
    c = solve_triangular(R.T, r, lower=True)
    big = np.sqrt(1e6 * np.trace(G) / m)
    w, _ = nnls(np.vstack([R, np.full((1, m), big)]), np.append(c, big))
    return w / w.sum() if w.sum() > 0 else prior.astype(np.float64)


def fit_band(P: np.ndarray, y: np.ndarray, cls: np.ndarray, n_class: int, *, shrinkage: float,
             min_class: int, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, n) member values, (n,) truth and (n,) classes -> ((K, M) weights, (K, M) member rankings, (M,) the
    band's own weights).

    Levels: the band's weights over all its classes, shrunk toward its best member; with ``groups`` ((K,),
    the group of every class, e.g. :attr:`GapClasses.size_bins <xrecon.ensemble.features.GapClasses.size_bins>`)
    each group's weights over its classes, shrunk toward the band's; each class's weights, shrunk toward its
    group's (or the band's). A class with few observations keeps its group's blend, a group with few the
    band's, and a band with few its best member.
    """
    n_member = P.shape[0]
    overall = rank_members(P, y)
    order = np.tile(overall, (n_class, 1))
    for c in range(n_class):
        idx = np.flatnonzero(cls == c)
        if len(idx) >= min_class:
            order[c] = rank_members(P[:, idx], y[idx])

    def filled_rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = P[:, idx]
        values = filled(part, order[cls[idx]])
        ok = np.isfinite(values).all(axis=0) & np.isfinite(y[idx])
        return values[:, ok].T, y[idx][ok]

    band = np.zeros(n_member)
    band[overall[0]] = 1.0
    rows, target = filled_rows(np.arange(len(y)))
    if len(target):
        band = fit_weights(rows, target, band, shrinkage)
    prior = np.tile(band, (n_class, 1))
    if groups is not None:
        groups = np.asarray(groups)
        for g in np.unique(groups):
            idx = np.flatnonzero(np.isin(cls, np.flatnonzero(groups == g)))
            rows, target = filled_rows(idx)
            if len(target):
                prior[groups == g] = fit_weights(rows, target, band, shrinkage)
    weights = prior.copy()
    for c in range(n_class):
        idx = np.flatnonzero(cls == c)
        if len(idx):
            rows, target = filled_rows(idx)
            if len(target):
                weights[c] = fit_weights(rows, target, prior[c], shrinkage)
    return weights, order, band


def disagreement(P: np.ndarray) -> np.ndarray:
    """(M, n) member values -> (n,) their standard deviation over the finite ones (0 where fewer than two are).

    Examples
    --------
    >>> disagreement(np.array([[0.1, 0.2, np.nan], [0.3, np.nan, np.nan]])).round(2).tolist()
    [0.1, 0.0, 0.0]
    """
    P = np.asarray(P, np.float64)
    n = np.isfinite(P).sum(axis=0)
    mean = np.nansum(P, axis=0) / np.maximum(n, 1)
    var = np.nansum((P - mean) ** 2, axis=0) / np.maximum(n, 1)
    return np.where(n > 1, np.sqrt(var), 0.0)


def interval_scale(kind: str, P: np.ndarray, spread: np.ndarray | None, floor: float) -> np.ndarray:
    """(n,) what each value's residual is divided by for intervals of scale ``kind`` (one of :data:`SCALES`):
    1 for ``"none"``; else the spread (NaN as 0), the members' :func:`disagreement` ``P`` (M, n), or both in
    quadrature, plus ``floor`` (fitted as the median of that quantity, so that no value's scale is near 0).

    Examples
    --------
    >>> P = np.array([[0.1, 0.2], [0.3, 0.2]])
    >>> interval_scale("disagreement", P, None, 0.05).round(2).tolist()
    [0.15, 0.05]
    >>> interval_scale("spread+disagreement", P, np.array([0.0, 0.04]), 0.05).round(2).tolist()
    [0.15, 0.09]
    """
    if kind not in SCALES:
        raise ValueError(f"interval scale {kind!r}: expected one of {SCALES}")
    if kind == "none":
        return np.ones(np.shape(P)[1])
    squares = np.zeros(np.shape(P)[1])
    if "spread" in kind:
        squares = squares + np.nan_to_num(np.asarray(spread, np.float64), nan=0.0) ** 2
    if "disagreement" in kind:
        squares = squares + disagreement(P) ** 2
    return np.sqrt(squares) + float(floor)


def dates_per_class(cls: np.ndarray, dates: np.ndarray, n_class: int) -> np.ndarray:
    """(n,) classes and (n,) dates -> (K,) the number of distinct dates each class's values lie on.

    Examples
    --------
    >>> dates_per_class(np.array([0, 0, 0, 2]), np.array([5, 5, 7, 1]), 3).tolist()
    [2, 0, 1]
    """
    pairs = np.unique(np.stack([np.asarray(cls, np.int64), np.asarray(dates, np.int64)]), axis=1)
    return np.bincount(pairs[0], minlength=n_class)[:n_class]


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ``ceil((n + 1) level)``-th smallest score, ``inf`` beyond ``n``.

    Examples
    --------
    >>> conformal_quantile(np.arange(1.0, 10.0), 0.9)   # 9 scores: the 9th smallest
    9.0
    >>> conformal_quantile(np.arange(1.0, 5.0), 0.9)    # 4 scores are too few for 90 %
    inf
    """
    scores = np.sort(np.asarray(scores, np.float64)[np.isfinite(scores)])
    rank = int(np.ceil((len(scores) + 1) * level))
    return float(scores[rank - 1]) if 1 <= rank <= len(scores) else (0.0 if rank < 1 else np.inf)


def interval_quantiles(scores: np.ndarray, cls: np.ndarray, n_class: int, levels: tuple[float, ...] = LEVELS, *,
                       min_calibration: int, dates: np.ndarray | None = None, min_dates: int = 1,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(n,) scores and (n,) classes -> ((K, L) half-widths in score units, (K,) calibration counts): per class,
    or the pooled scores' where a class has fewer than ``min_calibration`` values, or (with ``dates``, (n,) the
    date of every score) where they lie on fewer than ``min_dates`` distinct dates: the values of one date share
    its weather, so a class seen on two dates has seen two situations, however many values it has.

    Examples
    --------
    >>> scores = np.r_[np.full(60, 0.5), np.linspace(0, 10, 60)]
    >>> cls, dates = np.repeat([0, 1], 60), np.r_[np.zeros(60), np.arange(60)]
    >>> interval_quantiles(scores, cls, 2, (0.9,), min_calibration=50)[0].round(2).tolist()
    [[0.5], [9.15]]
    >>> q, _ = interval_quantiles(scores, cls, 2, (0.9,), min_calibration=50, dates=dates, min_dates=5)
    >>> q.round(2).tolist()   # class 0 lies on one date: it takes the pooled quantile
    [[8.14], [9.15]]
    """
    ok = np.isfinite(scores)
    scores, cls = scores[ok], cls[ok]
    pooled = np.array([conformal_quantile(scores, a) for a in levels])
    q = np.tile(pooled, (n_class, 1))
    counts = np.bincount(cls, minlength=n_class)[:n_class]
    enough = counts >= min_calibration
    if dates is not None and min_dates > 1:
        enough &= dates_per_class(cls, np.asarray(dates)[ok], n_class) >= min_dates
    for c in np.flatnonzero(enough):
        part = scores[cls == c]
        q[c] = [conformal_quantile(part, a) for a in levels]
    return q, counts
