"""Hold-out evaluation: hide clear observations, reconstruct them with each method, score.

Everything is computed with dask reductions over the same chunks ``fill`` uses, so evaluation of a large
cube stays within memory; all methods are scored in one pass over the data.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from xrecon.cube import AUTO_MASK, DEFAULT_SAR, resolve_mask, validate
from xrecon.errors import XreconError
from xrecon.fill import fill
from xrecon.holdout import hide_observations
from xrecon.methods import registry
from xrecon.times import to_days

__all__ = ["evaluate", "gap_lengths", "gap_sizes", "plot_evaluation", "DEFAULT_GAP_BINS", "DEFAULT_SIZE_BINS"]

#: Gap-length classes in days (the length of the gap a hidden observation sits in).
DEFAULT_GAP_BINS = (0, 15, 30, 60, 120, np.inf)
#: Gap-size classes in pixels (distance from a hidden observation to the nearest clear pixel of its date):
#: 1 and 1.41 (a pixel next to a clear one) fall in the first class.
DEFAULT_SIZE_BINS = (0, 1.5, 3, 6, 12, np.inf)


def _size_block(kept: np.ndarray, hidden: np.ndarray, *, reach: int) -> np.ndarray:
    """(T, Y, X) kept validity and hidden mask of a window -> Euclidean distance in pixels from each hidden
    pixel to the nearest kept one of its date; inf beyond ``reach`` (the window's halo), NaN where not hidden."""
    from scipy import ndimage

    out = np.full(kept.shape, np.nan)
    for k in range(kept.shape[0]):  # one distance transform per date (a loop over dates, not pixels)
        if not hidden[k].any():
            continue
        if kept[k].any():
            dist = ndimage.distance_transform_edt(~kept[k])
        else:
            dist = np.full(kept[k].shape, np.inf)
        dist[dist > reach] = np.inf  # beyond the halo the nearest clear pixel may lie in another chunk
        out[k] = np.where(hidden[k], dist, np.nan)
    return out


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
        data = _size_block(k, h, reach=reach)[:, reach:-reach, reach:-reach]
    else:
        import dask.array as dsa

        from xrecon.fill import _at_least

        work = {d: _at_least(kept_valid.chunksizes[d], reach) for d in ("y", "x")}
        arrays = [a.chunk({"time": -1, **work}).data for a in (kept_valid, hidden)]
        depth = {1: reach, 2: reach}
        data = dsa.map_overlap(
            _size_block, *arrays, depth=depth, boundary=False, trim=True, reach=reach, dtype=np.float64,
            meta=np.empty((0, 0, 0), np.float64),
        )
        data = data.rechunk({1: kept_valid.chunksizes["y"], 2: kept_valid.chunksizes["x"]})
    return xr.DataArray(data, dims=("time", "y", "x"), coords=hidden.coords, name="gap_size")


def _gap_block(valid: np.ndarray, hidden: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(..., T) kept validity and hidden mask -> (..., T) days between the kept clear observations
    around each hidden one (inf at the series' ends), NaN where not hidden."""
    lead = valid.shape[:-1]
    v = valid.reshape(-1, valid.shape[-1])
    n, T = v.shape
    idx = np.broadcast_to(np.arange(T), (n, T))
    prev = np.maximum.accumulate(np.where(v, idx, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(v, idx, T)[:, ::-1], axis=1)[:, ::-1]
    t_ext = np.concatenate([[-np.inf], t, [np.inf]])
    gap = t_ext[nxt + 1] - t_ext[prev + 1]
    return np.where(hidden.reshape(n, T), gap, np.nan).reshape(*lead, T)


def gap_lengths(kept_valid: xr.DataArray, hidden: xr.DataArray) -> xr.DataArray:
    """Length in days of the gap each hidden observation sits in (between the kept clear observations
    before and after it; inf when there is none on one side), NaN elsewhere. Lazy for dask input."""
    t = to_days(kept_valid["time"].values)
    if kept_valid.chunks is not None:
        kept_valid = kept_valid.chunk({"time": -1})
        hidden = hidden.chunk({"time": -1})
    return xr.apply_ufunc(
        _gap_block, kept_valid, hidden, input_core_dims=[["time"], ["time"]], output_core_dims=[["time"]],
        dask="parallelized", output_dtypes=[np.float64], kwargs={"t": t},
    ).transpose(*hidden.dims)


def _sums(pred: xr.DataArray, truth: xr.DataArray, where: xr.DataArray) -> dict[str, xr.DataArray]:
    """Lazy per-band sums from which MAE, RMSE, R2 and SAM follow."""
    where = where & pred.notnull().all("band")
    # float64: spectral angles of a few tenths of a degree are below float32's resolution of arccos near 1
    pred, truth = pred.astype(np.float64), truth.astype(np.float64)
    d = (pred - truth).where(where)
    tw = truth.where(where)
    dims = ("time", "y", "x")
    dot = (pred * truth).sum("band")
    norm = np.sqrt((pred**2).sum("band") * (truth**2).sum("band"))
    norm = norm.where(norm > 0)  # a zero spectrum has no angle
    # DataArray.clip, not np.clip: numpy's clip converts a DataArray to numpy, computing it early
    angle = np.degrees(np.arccos((dot / norm).clip(-1.0, 1.0))).where(where)
    return {
        "n": where.sum(dims),
        "abs": np.abs(d).sum(dims),
        "sq": (d**2).sum(dims),
        "t": tw.sum(dims),
        "t2": (tw**2).sum(dims),
        "sam": angle.sum(dims),
    }


def _rows(method: str, sums: dict[str, Any], bands: Sequence[str], extra: dict[str, Any]) -> list[dict]:
    n = float(sums["n"])
    rows = []
    for b, band in enumerate(bands):
        mae = sums["abs"][b] / n if n else np.nan
        mse = sums["sq"][b] / n if n else np.nan
        sst = sums["t2"][b] - sums["t"][b] ** 2 / n if n else np.nan
        rows.append({
            "method": method, "band": band, **extra, "n": int(n), "mae": mae, "rmse": np.sqrt(mse),
            "r2": 1 - sums["sq"][b] / sst if n and sst > 0 else np.nan,
        })
    if len(bands) >= 3:
        pooled_sst = sum(sums["t2"][b] - sums["t"][b] ** 2 / n for b in range(len(bands))) if n else np.nan
        rows.append({
            "method": method, "band": "all", **extra, "n": int(n),
            "mae": float(np.sum(sums["abs"])) / (n * len(bands)) if n else np.nan,
            "rmse": np.sqrt(float(np.sum(sums["sq"])) / (n * len(bands))) if n else np.nan,
            "r2": 1 - float(np.sum(sums["sq"])) / pooled_sst if n and pooled_sst > 0 else np.nan,
            "sam": float(sums["sam"]) / n if n else np.nan,
        })
    return rows


def evaluate(
    ds: xr.Dataset,
    methods: Sequence[str] = ("linear", "harmonic", "whittaker"),
    *,
    holdout: float = 0.2,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    optical: Hashable = "optical",
    sar: Hashable | None = DEFAULT_SAR,
    mask: Hashable | bool | None = AUTO_MASK,
    by_gap: bool | Sequence[float] = False,
    gaps: str | int = "pixels",
    by_gap_size: bool | Sequence[float] = False,
    options: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
    **fill_kwargs: Any,
) -> pd.DataFrame:
    """Hide a fraction of the clear observations, reconstruct them with each method and score them.

    Parameters
    ----------
    ds : xarray.Dataset
        A cube following the conventions (lazy is fine: scoring runs as dask reductions).
    methods : list of str
        Method names, as for ``fill``.
    holdout : float
        Share of clear observations hidden (chosen per (time, y, x) from ``seed``, whatever the chunking).
    seed : int
    checkpoint : path, optional
        For the neural methods.
    optical, sar, mask
        Variable names, as for ``fill``; ``mask="auto"`` (the default) uses the cube's own clear mask
        (recorded by ``from_bands`` or named ``clear``), ``mask=False`` none. The mask used is in the
        table's ``attrs["mask"]``.
    by_gap : bool or sequence of float
        Also score by the length of the gap (days between the kept clear observations around a hidden
        one); True uses :data:`DEFAULT_GAP_BINS`, or give bin edges.
    gaps : {"pixels", "clouds"} or int
        The shape of what is hidden (see :func:`xrecon.holdout.hide_observations`): single pixel-dates
        (the default, as in earlier versions), real cloud shapes transplanted from the cube's own masks
        onto clear pixel-dates, or square blocks of that side in pixels. ``"clouds"`` is the honest choice
        for methods that look sideways (docs/evaluation.md).
    by_gap_size : bool or sequence of float
        Also score by gap size: the distance in pixels from a hidden observation to the nearest clear pixel
        of the same date (after hiding); True uses :data:`DEFAULT_SIZE_BINS`, or give bin edges (distances
        beyond the largest finite edge fall in the last, open class).
    options : dict, optional
        Per-method options, e.g. ``{"whittaker": {"lam": "vcurve"}}``.
    progress : bool
        Show a progress bar while the one pass over the data runs.
    **fill_kwargs
        Passed to every ``fill`` (``batch_size``, ``device``, ``edges``...).

    Returns
    -------
    pandas.DataFrame
        One row per method and band (and gap class), columns ``mae``, ``rmse``, ``r2`` and ``n`` (hidden
        observations scored); with ``by_gap`` a column ``gap`` and with ``by_gap_size`` a column ``gap_size``
        ("all" in the rows that do not split by it); with 3 or more bands also a row ``band="all"`` pooling
        the bands, with the mean spectral angle ``sam`` in degrees.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> table = evaluate(synthetic_cube(ny=16, nx=16), ["linear", "whittaker"], holdout=0.2)
    >>> list(table.columns[:6])
    ['method', 'band', 'n', 'mae', 'rmse', 'r2']
    """
    _check_arguments(methods, holdout, seed, options, by_gap, by_gap_size)
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    options = options or {}
    mask = resolve_mask(ds, mask, optical=optical)
    cube = validate(ds, optical=optical, sar=sar, mask=False if mask is None else mask)
    held, hidden = hide_observations(ds, holdout, seed=seed, optical=str(optical), mask=mask, gaps=gaps)
    truth = cube.optical
    split = {}
    if by_gap is not False:
        split["gap"] = "all"
    if by_gap_size is not False:
        split["gap_size"] = "all"
    groups: list[tuple[dict[str, Any], xr.DataArray]] = [(dict(split), hidden)]
    if split:
        kept = held[optical].notnull().all("band")
        if mask is not None:
            kept = kept & held[mask]
    if by_gap is not False:
        edges = DEFAULT_GAP_BINS if by_gap is True else tuple(by_gap)
        lengths = gap_lengths(kept, hidden)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            label = f"{lo:g}-{hi:g} d" if np.isfinite(hi) else f">{lo:g} d"
            upper = lengths < hi if np.isfinite(hi) else lengths <= hi  # the last class takes open-ended gaps (inf)
            groups.append(({**split, "gap": label}, hidden & (lengths >= lo) & upper))
    if by_gap_size is not False:
        edges = DEFAULT_SIZE_BINS if by_gap_size is True else tuple(float(e) for e in by_gap_size)
        finite = [e for e in edges if np.isfinite(e)]
        if len(edges) < 2 or list(edges) != sorted(edges) or not finite:
            raise XreconError(f"by_gap_size={by_gap_size!r}: expected increasing bin edges in pixels, e.g. (0, 2, 8)")
        sizes = gap_sizes(kept, hidden, reach=int(np.ceil(max(finite))))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            if np.isfinite(hi):
                label, upper = f"{lo:g}-{hi:g} px", sizes < hi
            else:
                label, upper = f">{lo:g} px", sizes <= hi
            groups.append(({**split, "gap_size": label}, hidden & (sizes >= lo) & upper))

    lazy = {}
    for method in methods:
        kwargs = dict(fill_kwargs, **options.get(method, {}))
        if registry.get(method).needs_checkpoint:
            kwargs["checkpoint"] = checkpoint
        out = fill(held, None, method=method, optical=optical, sar=sar, mask=False if mask is None else mask,
                   **kwargs)
        pred = out["optical"]
        for g, (_, where) in enumerate(groups):
            lazy[(method, g)] = _sums(pred, truth, where)
    if progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="xrecon evaluate", unit="task"):
            (computed,) = dask.compute(lazy)
    else:
        (computed,) = dask.compute(lazy)
    rows = []
    for (method, g), sums in computed.items():
        sums = {k: np.asarray(v) for k, v in sums.items()}
        rows += _rows(method, sums, cube.bands, groups[g][0])
    table = pd.DataFrame(rows)
    table.attrs["mask"] = "" if mask is None else str(mask)
    return table


def _check_arguments(methods: Any, holdout: Any, seed: Any, options: Any, by_gap: Any, by_gap_size: Any) -> None:
    """XreconError for arguments of the wrong type or range, before anything is built."""
    if isinstance(holdout, bool) or not isinstance(holdout, int | float | np.integer | np.floating):
        raise XreconError(f"holdout={holdout!r} ({type(holdout).__name__}): expected a number, the fraction of "
                          "clear observations hidden, strictly between 0 and 1 (e.g. 0.2)")
    if not 0 < holdout < 1:
        raise XreconError(f"holdout={holdout!r}: expected a fraction strictly between 0 and 1")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise XreconError(f"seed={seed!r}: expected an integer >= 0")
    if not isinstance(methods, str):
        try:
            methods = list(methods)
        except TypeError:
            raise XreconError(f"methods={methods!r}: expected a list of method names") from None
        if not methods:
            raise XreconError("methods is empty: expected at least one method name, e.g. ['linear', 'whittaker']")
        bad = [m for m in methods if not isinstance(m, str)]
        if bad:
            raise XreconError(f"methods must be method names (str), got {bad!r}")
        dups = sorted({m for m in methods if methods.count(m) > 1})
        if dups:
            raise XreconError(f"methods lists {dups} more than once; expected each method once")
    if options is not None and not (isinstance(options, dict) and all(isinstance(v, dict) for v in options.values())):
        raise XreconError(f"options={options!r}: expected a dict of per-method option dicts, e.g. "
                          "{'whittaker': {'lam': 'vcurve'}}")
    for name, value in (("by_gap", by_gap), ("by_gap_size", by_gap_size)):
        if isinstance(value, bool):
            continue
        if isinstance(value, str) or not hasattr(value, "__len__"):
            raise XreconError(f"{name}={value!r}: expected True, False or a sequence of bin edges")
        try:
            edges = [float(e) for e in value]
        except (TypeError, ValueError):
            raise XreconError(f"{name}={value!r}: expected numeric bin edges, e.g. (0, 15, 30, inf)") from None
        if len(edges) < 2 or edges != sorted(edges) or len(set(edges)) != len(edges) or any(np.isnan(edges)):
            raise XreconError(f"{name}={value!r}: expected at least two strictly increasing bin edges, "
                              "e.g. (0, 15, 30, inf)")


def plot_evaluation(table: pd.DataFrame, metric: str = "rmse", *, path: str | os.PathLike | None = None) -> Any:
    """Plot an :func:`evaluate` table: ``metric`` per band and method, and by gap length when scored so.

    Parameters
    ----------
    table : pandas.DataFrame
        What :func:`evaluate` (or ``ds.recon.evaluate``) returned.
    metric : {"rmse", "mae", "r2", "sam"}
    path : path, optional
        Also save the figure there (PNG, PDF... by extension).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> table = evaluate(synthetic_cube(ny=8, nx=8), ["linear", "whittaker"], by_gap=True)
    >>> fig = plot_evaluation(table)
    >>> len(fig.axes)
    2
    """
    import matplotlib.pyplot as plt

    if metric not in table.columns:
        raise XreconError(f"metric {metric!r} is not a column of the table; expected one of {list(table.columns)}")
    if "gap_size" in table.columns:  # the plot splits by gap length only
        table = table[table["gap_size"] == "all"]
    overall = table[table["gap"] == "all"] if "gap" in table.columns else table
    by_gap = table[table["gap"] != "all"] if "gap" in table.columns else None
    methods_ = list(dict.fromkeys(overall["method"]))
    bands = [b for b in dict.fromkeys(overall["band"]) if metric == "sam" or b != "all"] or ["all"]
    fig, axes = plt.subplots(1, 2 if by_gap is not None else 1, figsize=(11 if by_gap is not None else 6, 4),
                             layout="constrained", squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / max(len(methods_), 1)
    for k, method in enumerate(methods_):
        rows = overall[overall["method"] == method].set_index("band")
        ax.bar(np.arange(len(bands)) + k * width, [rows[metric].get(b, np.nan) for b in bands], width, label=method)
    ax.set_xticks(np.arange(len(bands)) + width * (len(methods_) - 1) / 2, bands)
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{metric.upper()} on hidden observations")
    ax.legend()
    if by_gap is not None:
        ax = axes[0, 1]
        band = "all" if (by_gap["band"] == "all").any() else bands[0]
        for method in methods_:
            rows = by_gap[(by_gap["method"] == method) & (by_gap["band"] == band)]
            ax.plot(rows["gap"], rows[metric], "o-", label=method)
        ax.set_xlabel("gap length")
        ax.set_ylabel(metric.upper())
        ax.set_title(f"{metric.upper()} by gap length ({'all bands' if band == 'all' else band})")
        ax.legend()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
