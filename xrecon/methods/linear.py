"""Piecewise-linear interpolation between each pixel's clear observations, for many pixels at once."""

from __future__ import annotations

from typing import Any

import numpy as np

from xrecon.methods import _common

__all__ = ["fill_linear", "linear_native"]


def fill_linear(
    values: np.ndarray,
    valid: np.ndarray,
    t: np.ndarray,
    tq: np.ndarray,
    *,
    edges: str = "hold",
    **options: Any,
) -> np.ndarray:
    """Interpolate each pixel linearly between its neighbouring clear observations.

    Parameters
    ----------
    values : ndarray, shape (N, T, C)
        Reflectance of N pixels at T dates in C bands; anything (NaN, garbage) where not ``valid``.
    valid : ndarray of bool, shape (N, T)
        True where the observation is clear.
    t : ndarray of float64, shape (T,)
        Observation dates in days, strictly increasing.
    tq : ndarray of float64, shape (Tq,)
        Query dates in days, in any order, inside or outside ``[t[0], t[-1]]``.
    edges : {"hold", "nan"}
        Before a pixel's first (after its last) clear observation: "hold" returns that observation,
        "nan" returns NaN.

    Returns
    -------
    ndarray of float32, shape (N, Tq, C)
        NaN at every query for a pixel without any clear observation.

    Examples
    --------
    >>> import numpy as np
    >>> values = np.array([[[0.25], [9.9], [0.75]]], dtype=np.float32)  # 9.9: cloudy, ignored
    >>> valid = np.array([[True, False, True]])
    >>> fill_linear(values, valid, np.array([0.0, 5.0, 10.0]), np.array([-5.0, 5.0, 20.0]))[0, :, 0]
    array([0.25, 0.5 , 0.75], dtype=float32)
    """
    _common.reject_unexpected("linear", options, ["edges"])
    edges = _common.check_edges(edges)
    values, valid, t, tq = _common.check_inputs(values, valid, t, tq)
    # One implementation, in the cube's (time, band, pixel) layout: see linear_native.
    return _common.via_native(linear_native, values, valid, t, tq, edges=edges)


def linear_native(values: np.ndarray, valid: np.ndarray, t: np.ndarray, tq: np.ndarray, *,
                  edges: str = "hold") -> np.ndarray:
    """:func:`fill_linear` in the cube's layout: (T, C, N) values and (T, N) validity -> (Tq, C, N) float32.

    What ``fill`` calls, so that a chunk's series need no transposing copies; inputs are not checked
    (``fill`` and :func:`fill_linear` do that).
    """
    nt, nc, n = values.shape
    sup = _common.support(valid.T, t, tq)
    if n == 0 or tq.size == 0 or nt == 0:
        return _common.finish_native(np.zeros((tq.size, nc, n), np.float32), sup, edges)

    # Index of the last clear observation at or before each date and of the first one after it: a running
    # max / min of the clear indices, so there is no loop over pixels. Before a pixel's first clear date
    # "last clear" is 0 and after its last one "next clear" is its last: neither is read for a clear pixel
    # (queries are clamped into its clear interval below), and both are safe indices.
    idx = np.arange(nt, dtype=np.int32)[:, None]
    prev_valid = np.where(valid, idx, np.int32(0))
    np.maximum.accumulate(prev_valid, axis=0, out=prev_valid)
    next_valid = np.empty((nt + 1, n), dtype=np.int32)
    next_valid[nt] = sup.last
    np.copyto(next_valid[:nt], np.where(valid, idx, np.int32(nt)))
    next_valid = np.minimum.accumulate(next_valid[::-1], axis=0)[::-1]

    # The observation date at or before each query (-1 before t[0]), shared by all pixels, then clamped
    # into each pixel's clear interval: that is the edges rule, in positions rather than times.
    pos_q = np.searchsorted(t, tq, side="right") - 1
    pos = sup.clamp_positions(np.arange(nt), pos_q).T  # (Tq, N)
    col = np.arange(n, dtype=np.intp)[None, :]
    i0 = np.take(prev_valid.ravel(), pos * n + col)  # last clear date at or before the clamped query
    i1 = np.take(next_valid.ravel(), (pos + 1) * n + col)  # next one after it, or i0 itself

    t0 = np.take(t, i0)
    dt = np.take(t, i1)
    dt -= t0
    dt[dt == 0] = np.inf  # i0 == i1: the held value, weight 0 on the (identical) other end
    frac = tq[:, None] - t0
    frac /= dt
    # Outside the clear interval frac falls outside [0, 1]: clipping gives the held value.
    np.clip(frac, 0.0, 1.0, out=frac)
    frac = frac.astype(np.float32)

    flat0, flat1 = i0 * n + col, i1 * n + col  # (Tq, N) positions in a band's (T, N) plane
    out = np.empty((tq.size, nc, n), dtype=np.float32)
    for c in range(nc):
        plane = np.ascontiguousarray(values[:, c], dtype=np.float32).ravel()  # (T * N,)
        v0 = np.take(plane, flat0)
        band = out[:, c]
        np.take(plane, flat1, out=band)
        band -= v0
        band *= frac
        band += v0
    return _common.finish_native(out, sup, edges)
