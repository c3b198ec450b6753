"""What the classical kernels share: input checks, option checks and the edges rule.

The edges rule lives here, and only here, so that every method treats the time before a pixel's first
clear observation and after its last one in the same way:

- ``edges="hold"``: a query time is clamped, per pixel, into ``[first clear date, last clear date]``;
  the method's value there is returned, so the reconstruction is held flat beyond the data;
- ``edges="nan"``: queries outside that interval are NaN.

A pixel without any clear observation is NaN at every query whatever ``edges`` says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xrecon.errors import MethodError, QueryTimesError, XreconError

EDGES = ("hold", "nan")


@dataclass(frozen=True)
class Support:
    """Where each pixel has clear observations, seen from the query times.

    Attributes
    ----------
    first, last : ndarray of intp, shape (N,)
        Index in ``t`` of each pixel's first and last clear observation (0 and T - 1 for an empty pixel).
    empty : ndarray of bool, shape (N,)
        True for a pixel without any clear observation.
    outside : ndarray of bool, shape (N, Tq)
        True where a query lies before the pixel's first or after its last clear observation.
    """

    first: np.ndarray
    last: np.ndarray
    empty: np.ndarray
    outside: np.ndarray

    def clamp_positions(self, t_pos: np.ndarray, tq_pos: np.ndarray) -> np.ndarray:
        """Positions of the clamped queries on a sorted axis that holds ``t``.

        ``t_pos`` (T,) and ``tq_pos`` (Tq,) are positions, on one axis sorted in time, of the observation
        dates and of the query dates; a clamped query is at the position of the pixel's first (last) clear
        date when it is before (after) it. Returns (N, Tq) intp.
        """
        lo = t_pos[self.first][:, None]
        hi = t_pos[self.last][:, None]
        return np.clip(tq_pos[None, :], lo, hi)


def support(valid: np.ndarray, t: np.ndarray, tq: np.ndarray) -> Support:
    """Each pixel's clear-observation interval and which queries fall outside it."""
    n, nt = valid.shape
    empty = ~valid.any(axis=1)
    if nt == 0:
        first = last = np.zeros(n, dtype=np.intp)
        return Support(first, last, empty, np.ones((n, tq.size), dtype=bool))
    first = np.argmax(valid, axis=1)
    last = nt - 1 - np.argmax(valid[:, ::-1], axis=1)
    outside = (tq[None, :] < t[first][:, None]) | (tq[None, :] > t[last][:, None])
    return Support(first, last, empty, outside)


def finish(out: np.ndarray, sup: Support, edges: str) -> np.ndarray:
    """Apply the edges rule and the empty-pixel rule to a (N, Tq, C) result; return float32."""
    out = np.asarray(out, dtype=np.float32)
    if edges == "nan":
        out[sup.outside] = np.nan
    out[sup.empty] = np.nan
    return out


def finish_native(out: np.ndarray, sup: Support, edges: str) -> np.ndarray:
    """:func:`finish` for a (Tq, C, N) result, in place; returns float32."""
    out = np.asarray(out, dtype=np.float32)
    if edges == "nan":
        np.copyto(out, np.float32(np.nan), where=sup.outside.T[:, None, :])
    out[:, :, sup.empty] = np.nan
    return out


def via_native(native: Any, values: np.ndarray, valid: np.ndarray, t: np.ndarray, tq: np.ndarray,
               slab: int = 4096, **kwargs: Any) -> np.ndarray:
    """Run a kernel written for the cube's (T, C, N) layout on (N, T, C) series; returns (N, Tq, C) float32.

    Slabs of ``slab`` pixels are transposed in and out while they are in cache: as fast as a kernel
    written for (N, T, C), with one implementation for both layouts.
    """
    n, nt, nc = values.shape
    out = np.empty((n, tq.size, nc), dtype=np.float32)
    for start in range(0, max(n, 1), slab):
        rows = slice(start, start + slab)
        part = native(np.ascontiguousarray(values[rows].transpose(1, 2, 0)), np.ascontiguousarray(valid[rows].T),
                      t, tq, **kwargs)
        out[rows] = part.transpose(2, 0, 1)
    return out


def check_edges(edges: Any) -> str:
    """Return ``edges`` if it names a rule, else raise MethodError."""
    if not isinstance(edges, str) or edges not in EDGES:
        raise MethodError(f"edges must be one of {list(EDGES)}, got {edges!r}")
    return edges


def reject_unexpected(method: str, unexpected: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """Raise MethodError naming options a method does not take (instead of Python's TypeError)."""
    if unexpected:
        names = ", ".join(sorted(unexpected))
        raise MethodError(
            f"method {method!r} got unexpected option(s) {names}; it takes {sorted(accepted)}"
        )


def check_int(method: str, name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """An integer option in [lo, hi], or MethodError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo or (
        hi is not None and value > hi
    ):
        expected = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise MethodError(f"method {method!r}: option {name} must be {expected}, got {value!r}")
    return int(value)


def check_positive(method: str, name: str, value: Any) -> float:
    """A finite, strictly positive number option, or MethodError."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise MethodError(f"method {method!r}: option {name} must be a positive number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise MethodError(f"method {method!r}: option {name} must be a positive number, got {value!r}")
    return value


def _as_days(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.datetime64):
        # tolerated for convenience: days since 1970-01-01, the unit the kernels work in
        x = (x - np.datetime64("1970-01-01", "ns")) / np.timedelta64(1, "D")
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise XreconError(f"{name} must be numbers of days (float64), got dtype {x.dtype}") from err


def check_inputs(
    values: Any, valid: Any, t: Any, tq: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check and normalize the arrays every kernel takes.

    Returns ``values`` (N, T, C) floating, ``valid`` (N, T) bool, ``t`` (T,) and ``tq`` (Tq,) float64.
    """
    values = np.asarray(values)
    if values.ndim != 3:
        raise XreconError(f"values must have shape (N, T, C) (pixels, times, bands), got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    valid = np.asarray(valid)
    if valid.shape != values.shape[:2]:
        raise XreconError(f"valid must have shape (N, T) = {values.shape[:2]} like values, got {valid.shape}")
    if valid.dtype != bool:
        valid = valid.astype(bool)
    t = _as_days(t, "t")
    if t.shape != (values.shape[1],):
        raise XreconError(f"t must have shape (T,) = ({values.shape[1]},) like values, got {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise XreconError("t must be finite and strictly increasing (days)")
    tq = _as_days(tq, "tq")
    if tq.ndim != 1:
        raise QueryTimesError(f"tq must be one-dimensional (Tq,), got shape {tq.shape}")
    if not np.all(np.isfinite(tq)):
        raise QueryTimesError("tq must be finite (days)")
    return values, valid, t, tq
