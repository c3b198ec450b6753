"""Per-pixel weighted least squares on annual harmonics (plus an optional linear trend)."""

from __future__ import annotations

from typing import Any

import numpy as np

from xrecon.errors import MethodError
from xrecon.methods import _common

__all__ = ["fill_harmonic"]

# A ridge this small changes well-posed fits by far less than float32 resolution; it is there so that
# observations whose phases coincide (the same day of year in different years) never make the normal
# equations exactly singular. It is relative to the number of clear observations, the normal matrix's scale.
_RIDGE = 1e-9

#: The highest harmonic order accepted: the normal equations hold (1 + 2 * order)^2 numbers per pixel, so an
#: order of thousands would allocate terabytes, and annual curves need a handful of harmonics at most.
MAX_ORDER = 32


def _design(t: np.ndarray, n_harmonics: int, period: float, trend: bool, t_ref: float) -> np.ndarray:
    """Columns [1, (trend in years), cos 1, sin 1, ..., cos k, sin k] at the dates ``t`` (any shape)."""
    cols = [np.ones_like(t)]
    if trend:
        cols.append((t - t_ref) / period)
    phase = (2.0 * np.pi / period) * t
    for k in range(1, n_harmonics + 1):
        cols += [np.cos(k * phase), np.sin(k * phase)]
    return np.stack(cols, axis=-1)


def fill_harmonic(
    values: np.ndarray,
    valid: np.ndarray,
    t: np.ndarray,
    tq: np.ndarray,
    *,
    edges: str = "hold",
    order: int = 2,
    period: float = 365.25,
    trend: bool = False,
    **options: Any,
) -> np.ndarray:
    """Fit a mean, ``order`` annual harmonics and optionally a linear trend to each pixel's clear data.

    Each pixel and band is fitted by least squares on its clear observations only (weights = validity),
    all pixels at once through batched normal equations; the fit is evaluated at the query dates.

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
        Before a pixel's first (after its last) clear observation: "hold" returns the fit at that
        observation's date, "nan" returns NaN.
    order : int, default 2
        Number of harmonics of the annual period (0 fits the mean only), at most :data:`MAX_ORDER` (32).
    period : float, default 365.25
        Period of the fundamental harmonic, in days.
    trend : bool, default False
        Add a linear term in time, for cubes spanning several years.

    Returns
    -------
    ndarray of float32, shape (N, Tq, C)

    Notes
    -----
    A pixel with fewer clear observations than parameters (``1 + 2 * order + trend``) is fitted with
    fewer harmonics, dropped one at a time from the highest, and then without the trend, until the
    parameters fit; a single clear observation gives a constant. A pixel without any is NaN.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(0.0, 365.0, 5.0)
    >>> y = 0.3 + 0.1 * np.sin(2 * np.pi * t / 365.25)
    >>> out = fill_harmonic(y[None, :, None], np.ones((1, t.size), bool), t, np.array([91.3125]))
    >>> round(float(out[0, 0, 0]), 4)
    0.4
    """
    _common.reject_unexpected("harmonic", options, ["edges", "order", "period", "trend"])
    edges = _common.check_edges(edges)
    order = _common.check_int("harmonic", "order", order, 0, MAX_ORDER)
    period = _common.check_positive("harmonic", "period", period)
    if not isinstance(trend, bool | np.bool_):
        raise MethodError(f"method 'harmonic': option trend must be True or False, got {trend!r}")
    trend = bool(trend)
    values, valid, t, tq = _common.check_inputs(values, valid, t, tq)
    n, nt, nc = values.shape
    sup = _common.support(valid, t, tq)
    if n == 0 or tq.size == 0 or nt == 0:
        return _common.finish(np.zeros((n, tq.size, nc), np.float32), sup, edges)

    t_ref = 0.5 * (t[0] + t[-1])  # keeps the trend column O(1) so the normal equations stay well scaled
    x = _design(t, order, period, trend, t_ref)  # (T, P)
    n_par = x.shape[1]

    # Which parameters each pixel can afford: harmonics first, then the trend, are dropped when there are
    # fewer clear observations than parameters. Inactive ones get an identity row and a zero coefficient.
    n_valid = valid.sum(axis=1)
    n_harm = np.clip((n_valid - 1 - trend) // 2, 0, order)
    has_trend = np.zeros(n, bool) if not trend else n_valid >= 2
    if trend:
        n_harm = np.where(has_trend, n_harm, 0)
    k_of_col = np.array([0] * (1 + trend) + [k for k in range(1, order + 1) for _ in range(2)])
    active = k_of_col[None, :] <= n_harm[:, None]  # (N, P)
    if trend:
        active[:, 1] = has_trend

    # (N, C, T) float64 with zeros where not clear: where(), not a product with the weights, so that
    # NaN or garbage there never reaches the sums
    y = np.where(valid[:, None, :], values.transpose(0, 2, 1), np.float64(0.0))
    w = valid.astype(np.float64)
    # Normal equations sum_t w x_p x_q and sum_t w x_p y as stacked matrix products, one small product per
    # pixel: a single (N, T) @ (T, K) product lets BLAS pick other kernels (other summation orders) for
    # other numbers of pixels, which made a chunked fill differ from an unchunked one in the last bit.
    xx = (x[:, :, None] * x[:, None, :]).reshape(nt, n_par * n_par)
    a = np.matmul(w[:, None, :], xx).reshape(n, n_par, n_par)
    b = np.matmul(y, x).transpose(0, 2, 1)  # (N, C, T) @ (T, P) -> (N, P, C)

    inactive = ~active
    pair_off = inactive[:, :, None] | inactive[:, None, :]
    a[pair_off] = 0.0
    diag = np.einsum("npp->np", a)  # a writable view of the diagonals
    diag += _RIDGE * np.maximum(n_valid, 1)[:, None] + inactive
    b = np.where(inactive[:, :, None], 0.0, b)
    coef = np.linalg.solve(a, b)  # (N, P, C)

    # The fit at the queries, again one product per pixel ...
    xq = _design(tq, order, period, trend, t_ref)  # (Tq, P)
    out = np.matmul(xq, coef)  # (Tq, P) @ (N, P, C) -> (N, Tq, C)
    # ... then the edges rule: outside a pixel's clear interval, the fit at its first / last clear date
    if edges == "hold" and sup.outside.any():
        at_first = np.matmul(x[sup.first][:, None, :], coef)[:, 0]  # (N, C)
        at_last = np.matmul(x[sup.last][:, None, :], coef)[:, 0]
        before = tq[None, :] < t[sup.first][:, None]
        out = np.where(before[:, :, None], at_first[:, None, :], out)
        out = np.where((sup.outside & ~before)[:, :, None], at_last[:, None, :], out)
    return _common.finish(out, sup, edges)
