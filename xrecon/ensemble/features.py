"""Gap classes: how far a reconstructed value is from what was seen.

Three measures of each (query time, pixel), computed the same way when an ensemble is fitted (on the hidden
observations of a cube) and when it fills (on every query):

``gap size``
    The distance in pixels to the nearest clear pixel of the same date (:func:`distance_to_clear`): 1 next to
    a clear pixel, large inside a big cloud, ``inf`` beyond ``reach`` pixels or on a date without any
    observation (a query time that is not an optical date has no same-date pixels at all).
``gap days``
    Days to the pixel's nearest clear observation (:func:`xrecon.fill_blocks.gap_days`).
``SAR in reach``
    Whether the pixel has a SAR observation within ``sar_window`` days (:func:`sar_in_reach`).

:class:`GapClasses` bins them into classes, the unit the ensemble weights its members and calibrates its
intervals by. The measures are numpy functions of a block; :func:`gap_sizes`, :func:`days_to_clear` and
:func:`sar_near` run them lazily over a whole cube (for ``evaluate`` and for fitting an ensemble).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from xrecon.errors import XreconError
from xrecon.fill_blocks import gap_days
from xrecon.times import to_days

__all__ = [
    "DEFAULT_DAYS_EDGES", "DEFAULT_SIZE_EDGES", "GapClasses", "days_to_clear", "distance_to_clear", "gap_days",
    "gap_sizes", "sar_in_reach", "sar_near",
]

#: Gap-size classes, pixels: next to a clear pixel (1 and 1.41), 2, 3-5, 6-11, 12-23, and 24 or more (or no clear
#: pixel of the date at all: a whole cloudy date, or a query time that is no optical date).
DEFAULT_SIZE_EDGES = (1.5, 3.0, 6.0, 12.0, 24.0)
#: Gap-days classes: days to the pixel's nearest clear observation: within about a revisit or two, within a
#: month, longer. Three, not more: the hidden observations lie on few dates, and a finer split gives classes
#: seen on one or two of them whose weights do not carry over to other dates (the gate still moves the weights
#: with the exact days inside a class).
DEFAULT_DAYS_EDGES = (8.0, 32.0)


def distance_to_clear(kept: np.ndarray, where: np.ndarray, *, reach: int) -> np.ndarray:
    """(T, Y, X) kept clear pixels and where to measure -> Euclidean distance in pixels from each such pixel to
    the nearest kept one of its date; ``inf`` beyond ``reach`` (or on a date with none), NaN where not asked.

    Exact up to ``reach`` when the arrays hold ``reach`` pixels of context around the pixels asked for, as a
    block with a halo of at least ``reach`` does: a nearer clear pixel lies within that square.

    Examples
    --------
    >>> kept = np.zeros((1, 1, 5), bool); kept[0, 0, 0] = True
    >>> distance_to_clear(kept, np.ones_like(kept), reach=3)[0, 0].tolist()
    [0.0, 1.0, 2.0, 3.0, inf]
    """
    from scipy import ndimage

    out = np.full(kept.shape, np.nan)
    for k in range(kept.shape[0]):  # one distance transform per date (a loop over dates, not pixels)
        if not where[k].any():
            continue
        if kept[k].any():
            dist = ndimage.distance_transform_edt(~kept[k])
        else:
            dist = np.full(kept[k].shape, np.inf)
        dist[dist > reach] = np.inf  # beyond the reach the nearest clear pixel may lie outside the window
        out[k] = np.where(where[k], dist, np.nan)
    return out


def sar_in_reach(sar_ok: np.ndarray, sar_t: np.ndarray, tq: np.ndarray, window: float) -> np.ndarray:
    """(Ts, ...) bool SAR observations (finite in every SAR band) at days ``sar_t`` -> (Tq, ...) bool: a SAR
    observation within ``window`` days of each query day ``tq``.

    Examples
    --------
    >>> ok = np.array([[True], [False]]); sar_in_reach(ok, np.array([0.0, 10.0]), np.array([3.0, 9.0]), 6.0)[:, 0]
    array([ True, False])
    """
    sar_t = np.asarray(sar_t, np.float64)
    order = np.argsort(sar_t, kind="stable")
    sar_t, sar_ok = sar_t[order], np.asarray(sar_ok, bool)[order]
    lo = np.searchsorted(sar_t, np.asarray(tq, np.float64) - window, side="left")
    hi = np.searchsorted(sar_t, np.asarray(tq, np.float64) + window, side="right")
    # a cumulative count over the SAR dates: "any in [lo, hi)" without a loop over dates per query
    counts = np.concatenate([np.zeros((1, *sar_ok.shape[1:]), np.int32), np.cumsum(sar_ok, axis=0, dtype=np.int32)])
    return counts[hi] > counts[lo]


@dataclass(frozen=True)
class GapClasses:
    """The gap classes of an ensemble: bins of gap size, gap days and (with SAR) SAR in reach.

    Attributes
    ----------
    size_edges : tuple of float
        Inner edges of the gap-size bins in pixels; the last bin is open (``inf`` included).
    days_edges : tuple of float
        Inner edges of the gap-days bins; the last bin is open.
    sar : bool
        Split each class by SAR in reach (False: the cube has no SAR, or the split was not asked for).
    sar_window : float
        Days within which a SAR observation is "in reach".
    reach : int
        Gap sizes are measured up to this many pixels (the largest edge): a block needs that much context.

    Examples
    --------
    >>> classes = GapClasses()
    >>> classes.n, classes.label(0), classes.label(classes.n - 1)
    (18, '<1.5 px, <8 d', '>=24 px, >=32 d')
    """

    size_edges: tuple[float, ...] = DEFAULT_SIZE_EDGES
    days_edges: tuple[float, ...] = DEFAULT_DAYS_EDGES
    sar: bool = False
    sar_window: float = 6.0

    def __post_init__(self) -> None:
        for name in ("size_edges", "days_edges"):
            edges = tuple(float(e) for e in getattr(self, name))
            if list(edges) != sorted(set(edges)) or any(not np.isfinite(e) or e <= 0 for e in edges):
                raise XreconError(f"{name}={getattr(self, name)!r}: expected increasing, finite, positive bin edges")
            object.__setattr__(self, name, edges)
        if not (isinstance(self.sar_window, int | float) and self.sar_window > 0):
            raise XreconError(f"sar_window={self.sar_window!r}: expected a positive number of days")

    @property
    def reach(self) -> int:
        return int(np.ceil(self.size_edges[-1])) if self.size_edges else 1

    @property
    def n(self) -> int:
        """How many classes."""
        return (len(self.size_edges) + 1) * (len(self.days_edges) + 1) * (2 if self.sar else 1)

    @property
    def size_bins(self) -> np.ndarray:
        """(n,) the gap-size bin of every class (the classes of one bin share a distance to clear pixels).

        Examples
        --------
        >>> GapClasses(size_edges=(3.0,), days_edges=(8.0,), sar=False).size_bins.tolist()
        [0, 0, 1, 1]
        """
        return np.arange(self.n) // ((len(self.days_edges) + 1) * (2 if self.sar else 1))

    def index(self, size: np.ndarray, days: np.ndarray, sar: np.ndarray | None = None) -> np.ndarray:
        """The class of every value (int64, any shape): size bin, then days bin, then SAR in reach.

        NaN days (a pixel without any clear observation) fall in the last days bin; NaN sizes in the last
        size bin.
        """
        size = np.where(np.isnan(size), np.inf, size)
        days = np.where(np.isnan(days), np.inf, days)
        i = np.searchsorted(self.size_edges, size, side="right")
        j = np.searchsorted(self.days_edges, days, side="right")
        out = i * (len(self.days_edges) + 1) + j
        if self.sar:
            out = out * 2 + (np.zeros(out.shape, np.int64) if sar is None else np.asarray(sar, bool).astype(np.int64))
        return out.astype(np.int64)

    def label(self, c: int) -> str:
        """A class as text, e.g. "1.5-3 px, 8-32 d, SAR"."""
        sar = None
        if self.sar:
            c, sar = divmod(int(c), 2)
        i, j = divmod(int(c), len(self.days_edges) + 1)

        def span(edges: Sequence[float], k: int, unit: str) -> str:
            if k == 0:
                return f"<{edges[0]:g} {unit}" if edges else f"any {unit}"
            if k == len(edges):
                return f">={edges[-1]:g} {unit}"
            return f"{edges[k - 1]:g}-{edges[k]:g} {unit}"

        text = f"{span(self.size_edges, i, 'px')}, {span(self.days_edges, j, 'd')}"
        return text if sar is None else text + (", SAR" if sar else ", no SAR")

    def to_plain(self) -> dict:
        return {"size_edges": list(self.size_edges), "days_edges": list(self.days_edges), "sar": self.sar,
                "sar_window": float(self.sar_window)}


# --------------------------------------------------------------------------------------------------
# the same measures over a whole cube, lazily


def gap_sizes(kept_valid: xr.DataArray, hidden: xr.DataArray, *, reach: int = 12) -> xr.DataArray:
    """Distance in pixels from each hidden observation to the nearest kept clear pixel of the same date.

    Exact up to ``reach`` pixels and ``inf`` beyond (or when the date has no kept clear pixel), NaN where
    nothing is hidden; the same for every chunking (each chunk sees ``reach`` pixels of its neighbours).
    Lazy for dask input.
    """
    kept_valid = kept_valid.transpose("time", "y", "x")
    hidden = hidden.transpose("time", "y", "x")
    reach = max(int(reach), 1)
    if kept_valid.chunks is None:
        pad = [(0, 0), (reach, reach), (reach, reach)]
        k, h = np.pad(kept_valid.values, pad), np.pad(hidden.values, pad)
        data = distance_to_clear(k, h, reach=reach)[:, reach:-reach, reach:-reach]
    else:
        import dask.array as dsa

        from xrecon.fill import chunks_at_least

        work = {d: chunks_at_least(kept_valid.chunksizes[d], reach) for d in ("y", "x")}
        arrays = [a.chunk({"time": -1, **work}).data for a in (kept_valid, hidden)]
        depth = {1: reach, 2: reach}
        data = dsa.map_overlap(
            distance_to_clear, *arrays, depth=depth, boundary=False, trim=True, reach=reach, dtype=np.float64,
            meta=np.empty((0, 0, 0), np.float64),
        )
        data = data.rechunk({1: kept_valid.chunksizes["y"], 2: kept_valid.chunksizes["x"]})
    return xr.DataArray(data, dims=("time", "y", "x"), coords=hidden.coords, name="gap_size")


def _over_time(func, da: xr.DataArray, n_out: int) -> xr.DataArray:
    """``func``: (T, ...) -> (n_out, ...) float32, applied over the first axis of ``da`` lazily; (time, ...) out."""
    if da.chunks is not None:
        da = da.chunk({da.dims[0]: -1})
    out = xr.apply_ufunc(
        lambda a: np.moveaxis(func(np.moveaxis(a, -1, 0)), 0, -1).astype(np.float32), da,
        input_core_dims=[[da.dims[0]]], output_core_dims=[["time"]], exclude_dims={da.dims[0]}, dask="parallelized",
        output_dtypes=[np.float32], dask_gufunc_kwargs={"output_sizes": {"time": n_out}},
    )
    return out.transpose("time", ...)


def days_to_clear(kept_valid: xr.DataArray) -> xr.DataArray:
    """(time, y, x) float32: days from each optical date to the pixel's nearest kept clear observation
    (:func:`xrecon.fill_blocks.gap_days` at the optical dates), lazily."""
    t = to_days(kept_valid["time"].values)
    out = _over_time(lambda v: gap_days(v, t, t), kept_valid.transpose("time", "y", "x"), len(t))
    return out.assign_coords(time=kept_valid["time"])


def sar_near(sar: xr.DataArray, times: np.ndarray, window: float) -> xr.DataArray:
    """(time, y, x) bool: a SAR observation (finite in every SAR band) within ``window`` days of each of
    ``times`` at each pixel, lazily."""
    ok = sar.notnull().all("sar_band").transpose("sar_time", "y", "x")
    sar_t, tq = to_days(sar["sar_time"].values), to_days(np.asarray(times))
    out = _over_time(lambda a: sar_in_reach(a, sar_t, tq, window), ok, len(tq))
    return (out > 0.5).assign_coords(time=np.asarray(times))
