"""Hold-out evaluation: hide clear observations, reconstruct them with each method, score.

Everything is computed with dask reductions over the same chunks ``fill`` uses, so evaluation of a large
cube stays within memory; all methods are scored in one pass over the data.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from xrecon import leakage, protocol
from xrecon.cube import AUTO_MASK, DEFAULT_SAR, resolve_mask, validate
from xrecon.ensemble.features import gap_sizes
from xrecon.errors import CheckpointError, XreconError
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


def _sums(pred: xr.DataArray, truth: xr.DataArray, where: xr.DataArray,
          bounds: Sequence[tuple[xr.DataArray, xr.DataArray]] = ()) -> dict[str, xr.DataArray]:
    """Lazy per-band sums from which MAE, RMSE, R2 and SAM follow (and, for each (lower, upper) pair of
    ``bounds``, the coverage and width of the intervals)."""
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
    intervals = {}
    for i, (lower, upper) in enumerate(bounds):
        inside = (lower <= truth) & (truth <= upper)
        intervals[f"cov{i}"] = inside.where(where).sum(dims)
        intervals[f"wid{i}"] = (upper.astype(np.float64) - lower).where(where).sum(dims)
    return {
        **intervals,
        "n": where.sum(dims),
        "abs": np.abs(d).sum(dims),
        "sq": (d**2).sum(dims),
        "t": tw.sum(dims),
        "t2": (tw**2).sum(dims),
        "sam": angle.sum(dims),
    }


def _level_tag(level: float) -> str:
    """0.9 -> "90", 0.975 -> "97_5": the suffix of the coverage and width columns (as of the bounds' names)."""
    return f"{round(100 * level, 3):g}".replace(".", "_")


def _interval_columns(sums: dict[str, Any], levels: Sequence[float], n: float, b: int | None) -> dict[str, float]:
    """coverage_<tag> and width_<tag> of one band (``b``) or of all pooled (None); NaN without intervals."""
    out = {}
    for i, level in enumerate(levels):
        tag = _level_tag(level)
        if f"cov{i}" not in sums or not n:
            out[f"coverage_{tag}"] = out[f"width_{tag}"] = np.nan
            continue
        cov, wid = sums[f"cov{i}"], sums[f"wid{i}"]
        k = len(cov) if b is None else 1
        out[f"coverage_{tag}"] = float(np.sum(cov) if b is None else cov[b]) / (n * k)
        out[f"width_{tag}"] = float(np.sum(wid) if b is None else wid[b]) / (n * k)
    return out


def _rows(method: str, sums: dict[str, Any], bands: Sequence[str], extra: dict[str, Any],
          levels: Sequence[float] = ()) -> list[dict]:
    n = float(sums["n"])
    rows = []
    for b, band in enumerate(bands):
        mae = sums["abs"][b] / n if n else np.nan
        mse = sums["sq"][b] / n if n else np.nan
        sst = sums["t2"][b] - sums["t"][b] ** 2 / n if n else np.nan
        rows.append({
            "method": method, "band": band, **extra, "n": int(n), "mae": mae, "rmse": np.sqrt(mse),
            "r2": 1 - sums["sq"][b] / sst if n and sst > 0 else np.nan, **_interval_columns(sums, levels, n, b),
        })
    if len(bands) >= 3:
        pooled_sst = sum(sums["t2"][b] - sums["t"][b] ** 2 / n for b in range(len(bands))) if n else np.nan
        rows.append({
            "method": method, "band": "all", **extra, "n": int(n),
            "mae": float(np.sum(sums["abs"])) / (n * len(bands)) if n else np.nan,
            "rmse": np.sqrt(float(np.sum(sums["sq"])) / (n * len(bands))) if n else np.nan,
            "r2": 1 - float(np.sum(sums["sq"])) / pooled_sst if n and pooled_sst > 0 else np.nan,
            "sam": float(sums["sam"]) / n if n else np.nan, **_interval_columns(sums, levels, n, None),
        })
    return rows


def evaluate(
    ds: xr.Dataset,
    methods: Sequence[str] = ("linear", "harmonic", "whittaker"),
    *,
    holdout: float = 0.2,
    seed: int = 0,
    checkpoint: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    train: Mapping[str, Any] | None = None,
    train_dir: str | os.PathLike | None = None,
    strict: bool = False,
    interval: float | Sequence[float] | None = None,
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
    checkpoint : path or dict, optional
        For the methods that run from a checkpoint: one path for every network (as in earlier versions),
        or ``{method: path}`` (``{"anytimeformer": ..., "ensemble": ...}``). A checkpoint that was trained
        on observations this evaluation hides gets a :class:`~xrecon.protocol.LeakWarning` naming it and
        the share it saw (its scores would not be honest); ``strict=True`` makes that a
        :class:`~xrecon.leakage.LeakError`.
    train : dict, optional
        The honest protocol: hide first, then train every network named without a checkpoint on the cube
        with the hidden observations removed (the keywords of ``train``, e.g. ``{"time_budget": "5min"}``,
        or one dict per method name), then fill and score. ``"ensemble"`` without a checkpoint is fitted
        the same way on the held cube (:func:`xrecon.ensemble.fit_ensemble`, with the other methods named
        as its members, hiding again inside it); the networks' own rows then use the networks it trained
        (they never saw this evaluation's hidden observations either), so every network trains once.
    train_dir : path, optional
        Where the networks (and the ensemble) trained here are kept; None: a temporary folder removed at
        the end. The table's ``attrs["trained"]`` says what was trained, for how many steps and seconds.
    strict : bool
        A leak is an error, not a warning.
    interval : float or list of float, optional
        Also score the intervals of the methods that give them (an ensemble): columns ``coverage_90`` (the
        share of hidden observations between ``optical_lower`` and ``optical_upper`` at level 0.9) and
        ``width_90`` (their mean distance), per level asked (``coverage_97_5`` for 0.975).
        :func:`xrecon.plot.plot_reliability` draws nominal against observed coverage.
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
    levels = _interval_levels(interval)
    mask = resolve_mask(ds, mask, optical=optical)
    cube = validate(ds, optical=optical, sar=sar, mask=False if mask is None else mask)
    given = protocol.resolve_checkpoints(methods, checkpoint)
    missing = [m for m in protocol.needs_checkpoint(methods) if m not in given]
    if missing and train is None and missing != ["ensemble"]:
        raise CheckpointError(f"{missing} need a checkpoint: give checkpoint={{name: path}}, or train={{...}} "
                              "(e.g. {'time_budget': '5min'}) to train them on the cube without the hidden "
                              "observations")
    held, hidden = hide_observations(ds, holdout, seed=seed, optical=str(optical), mask=mask, gaps=gaps,
                                     precompute=bool(missing))
    shares = protocol.check_leaks(given, hidden, crs=leakage.crs_key(ds, optical), strict=strict) if given else {}
    with _training_folder(train_dir if missing else None) as folder:
        trained = _train_missing(held, methods, missing, given, folder, train=train, gaps=gaps, holdout=holdout,
                                 seed=seed, options=options, optical=optical, sar=sar, mask=mask, strict=strict,
                                 progress=progress, fill_kwargs=fill_kwargs)
        table = _score(held, hidden, cube, methods, {**given, **trained}, options=options, levels=levels,
                       optical=optical, sar=sar, mask=mask, by_gap=by_gap, by_gap_size=by_gap_size,
                       progress=progress, fill_kwargs=fill_kwargs)
        table.attrs["trained"] = {m: _trained_summary(m, p) for m, p in trained.items()}
    table.attrs["mask"] = "" if mask is None else str(mask)
    table.attrs["leaks"] = shares
    return table


def _interval_levels(interval: Any) -> tuple[float, ...]:
    if interval is None:
        return ()
    levels = tuple(interval) if isinstance(interval, list | tuple | np.ndarray) else (interval,)
    for a in levels:
        if isinstance(a, bool) or not isinstance(a, int | float | np.floating) or not 0 < a < 1:
            raise XreconError(f"interval={interval!r}: expected a probability strictly between 0 and 1 (e.g. 0.9), "
                              "or a list of them")
    return tuple(float(a) for a in levels)


@contextlib.contextmanager
def _training_folder(train_dir: str | os.PathLike | None) -> Iterator[Path]:
    """``train_dir`` (made if missing), or a temporary folder removed afterwards."""
    if train_dir is not None:
        Path(train_dir).mkdir(parents=True, exist_ok=True)
        yield Path(train_dir)
        return
    with tempfile.TemporaryDirectory(prefix="xrecon-evaluate-") as tmp:
        yield Path(tmp)


def _train_missing(held: xr.Dataset, methods: Sequence[str], missing: Sequence[str], given: Mapping[str, str],
                   folder: Path, *, train: Any, gaps: Any, holdout: float, seed: int, options: Mapping[str, Any],
                   optical: Hashable, sar: Hashable | None, mask: Hashable | None, strict: bool, progress: bool,
                   fill_kwargs: Mapping[str, Any]) -> dict[str, str]:
    """Checkpoints of the methods in ``missing``, trained on ``held`` (an ensemble fitted on it)."""
    if not missing:
        return {}
    sar = sar if sar in held else None
    out: dict[str, str] = {}
    if "ensemble" in missing:
        from xrecon.ensemble import fit_ensemble, load_ensemble

        members = [m for m in methods if m != "ensemble"]
        if not members:
            raise XreconError("evaluate: 'ensemble' without a checkpoint is fitted on the held cube from the other "
                              "methods listed; list its members too, e.g. ['linear', 'neighbors', 'ensemble']")
        nets = {m: p for m, p in given.items() if m in members}
        path = fit_ensemble(held, members, out=folder / "ensemble.xrecon", gaps=gaps, holdout=holdout,
                            seed=seed + 1, train=train, checkpoints=nets, overwrite=True,
                            options={m: options[m] for m in members if m in options}, optical=optical, sar=sar,
                            mask=False if mask is None else mask, strict=strict, progress=progress,
                            batch_size=fill_kwargs.get("batch_size"), device=fill_kwargs.get("device"))
        out["ensemble"] = os.fspath(path)
        out.update({m.method: m.checkpoint for m in load_ensemble(path).members
                    if m.method in missing and m.checkpoint is not None})
    rest = [m for m in missing if m not in out]
    if rest:
        out.update(protocol.train_networks(held, rest, train, folder, optical=optical, sar=sar, mask=mask, seed=seed,
                                           progress=progress, overwrite=True))
    return out


def _trained_summary(method: str, path: str) -> dict[str, Any]:
    if method == "ensemble":
        from xrecon.ensemble import load_ensemble

        ens = load_ensemble(path, verify=False)
        return {"members": ens.methods, "hidden": ens.provenance.get("hidden")}
    import xrecon.models

    meta = xrecon.models.load(path, device="cpu").metadata.get("training", {})
    return {k: meta.get(k) for k in ("steps", "train_seconds", "best_val_loss", "device")}


def _score(held: xr.Dataset, hidden: xr.DataArray, cube: Any, methods: Sequence[str], checkpoints: Mapping[str, str],
           *, options: Mapping[str, Any], levels: tuple[float, ...], optical: Hashable, sar: Hashable | None,
           mask: Hashable | None, by_gap: Any, by_gap_size: Any, progress: bool,
           fill_kwargs: Mapping[str, Any]) -> pd.DataFrame:
    """Fill ``held`` with every method and score the ``hidden`` observations, in one pass over the data."""
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

    from xrecon.methods.ensemble import interval_outputs

    bound_names = interval_outputs(levels, False)
    lazy = {}
    for method in methods:
        kwargs = dict(fill_kwargs, **options.get(method, {}))
        found = registry.get(method)
        if found.needs_checkpoint:
            kwargs["checkpoint"] = checkpoints[method]
        with_bounds = bool(levels) and "interval" in (found.accepted_options() or ())
        if with_bounds:
            kwargs["interval"] = list(levels)
        out = fill(held, None, method=method, optical=optical, sar=sar, mask=False if mask is None else mask,
                   **kwargs)
        bounds = [(out[bound_names[2 * i]], out[bound_names[2 * i + 1]]) for i in range(len(levels))] \
            if with_bounds else []
        for g, (_, where) in enumerate(groups):
            lazy[(method, g)] = _sums(out["optical"], truth, where, bounds)
    if progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="xrecon evaluate", unit="task"):
            (computed,) = dask.compute(lazy)
    else:
        (computed,) = dask.compute(lazy)
    rows = []
    for (method, g), sums in computed.items():
        sums = {k: np.asarray(v) for k, v in sums.items()}
        rows += _rows(method, sums, cube.bands, groups[g][0], levels)
    return pd.DataFrame(rows)


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
