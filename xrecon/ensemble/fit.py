"""Fitting an ensemble on a cube's own hidden observations: :func:`fit_ensemble`.

Hide first (cloud-shaped, by default), train the networks that have no checkpoint on the cube without the
hidden observations, fill the held cube with every member (one pass over the data: each member runs once
per block), collect the hidden observations with their gap classes, and fit the blend and the interval
half-widths per band and class (:mod:`xrecon.ensemble.blend`) with two-fold cross-fitting over a
checkerboard of spatial blocks: each half is predicted by weights fitted on the other, and the intervals'
coverage is measured on one half with half-widths calibrated on the other.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xrecon import leakage, protocol
from xrecon._version import __version__
from xrecon.cube import AUTO_MASK, DEFAULT_SAR, resolve_mask, validate
from xrecon.ensemble import blend
from xrecon.ensemble import gate as gating
from xrecon.ensemble.features import (
    DEFAULT_DAYS_EDGES,
    DEFAULT_SIZE_EDGES,
    GapClasses,
    days_to_clear,
    gap_sizes,
    sar_near,
)
from xrecon.ensemble.file import Ensemble, Member
from xrecon.errors import MethodError, OutputExistsError, XreconError
from xrecon.holdout import check_gaps, hide_observations
from xrecon.methods import registry
from xrecon.rng import hash_uniform

__all__ = ["DatesWarning", "fit_ensemble", "members_folder"]


class DatesWarning(UserWarning):
    """An ensemble whose figures may not carry over to dates without hidden observations (most real gaps)."""


_SAMPLE_STREAM = 0xE5  # the subsample of hidden observations, apart from every other use of the seed


def members_folder(out: str | os.PathLike) -> Path:
    """Where ``fit_ensemble(out=...)`` trains the networks it needs: ``<out stem>.members/`` beside it.

    Examples
    --------
    >>> members_folder("runs/ens.xrecon").as_posix()
    'runs/ens.members'
    """
    out = Path(out)
    return out.with_name(f"{out.stem}.members")


def _check(methods: Any, holdout: Any, shrinkage: Any, split_block: Any, max_samples: Any,
           min_dates: Any) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    try:
        methods = list(methods)
    except TypeError:
        raise XreconError(f"methods={methods!r}: expected a list of method names") from None
    if not methods or not all(isinstance(m, str) for m in methods) or len(set(methods)) != len(methods):
        raise XreconError(f"methods={methods!r}: expected distinct method names, e.g. ['linear', 'neighbors']")
    for m in methods:
        registry.get(m)  # MethodError naming those available
    if "ensemble" in methods:
        raise MethodError("an ensemble cannot be a member of an ensemble; list its members instead")
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 < holdout < 1:
        raise XreconError(f"holdout={holdout!r}: expected a fraction strictly between 0 and 1, e.g. 0.1")
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, int | float) or not shrinkage >= 0:
        raise XreconError(f"shrinkage={shrinkage!r}: expected a number of pseudo-observations >= 0, e.g. 100")
    for name, value in (("split_block", split_block), ("max_samples", max_samples),
                        ("min_dates", min_dates)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise XreconError(f"{name}={value!r}: expected a positive integer")
    return methods


def _gather(arrays: Mapping[str, xr.DataArray], where: xr.DataArray, rate: float, seed: int,
            ) -> dict[str, np.ndarray]:
    """The values of ``arrays`` (time[, band], y, x) where ``where`` (time, y, x) is True (a seeded share
    ``rate`` of them), with their global (time, y, x) indices; band-shaped ones as (n, band).

    Block by block in one dask array computation, whose tasks are shared: the members behind the arrays
    run once per block. (Each block wrapped in its own ``dask.delayed`` would be optimised apart, and
    run every member once per block it feeds.)
    """
    import dask.array as dsa

    where = where.transpose("time", "y", "x")
    ref = next(iter(arrays.values()))
    chunks = ref.chunksizes if ref.chunks is not None else {}
    cy = chunks.get("y", (where.sizes["y"],))
    cx = chunks.get("x", (where.sizes["x"],))
    names = list(arrays)
    args: list[Any] = []
    for da in [where, *arrays.values()]:
        lead = [d for d in da.dims if d not in ("y", "x")]
        da = da.transpose(*lead, "y", "x")
        data = dsa.asarray(da.data).rechunk({**{i: -1 for i in range(len(lead))}, len(lead): cy, len(lead) + 1: cx})
        args += [data, "".join("tc"[: len(lead)]) + "yx"]
    for dim, c in (("y", cy), ("x", cx)):  # each block's global indices
        args += [dsa.arange(sum(c), chunks=(c,)), dim]

    def block(mask: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        *values, gy, gx = rest
        mask = np.asarray(mask, bool)
        t, y, x = np.nonzero(mask)
        y, x = gy[y], gx[x]
        keep = hash_uniform(seed, np.int64(_SAMPLE_STREAM), t, y, x) < rate if rate < 1 else slice(None)
        out = {"t": t[keep], "y": y[keep], "x": x[keep]}
        for name, v in zip(names, values, strict=True):
            v = np.asarray(v)
            picked = np.moveaxis(v, 1, -1)[mask] if v.ndim == 4 else v[mask]
            out[name] = picked[keep]
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = out
        return cell

    cells = dsa.blockwise(block, "yx", *args, concatenate=True, dtype=object, meta=np.empty((0, 0), object),
                          adjust_chunks={"y": 1, "x": 1}).compute()
    parts = list(cells.ravel())
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _member_fills(held: xr.Dataset, members: Sequence[Member], *, optical: Hashable, sar: Hashable | None,
                  mask: Hashable | None, fill_kwargs: Mapping[str, Any]) -> list[xr.Dataset]:
    from xrecon.fill import fill

    return [fill(held, None, method=m.method, checkpoint=m.checkpoint, optical=optical, sar=sar,
                 mask=False if mask is None else mask, **fill_kwargs, **m.options) for m in members]


def _rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(err ** 2))) if err.size else float("nan")


def _score_rows(band: str, group: str, truth: np.ndarray, preds: np.ndarray, ens: np.ndarray, t: np.ndarray,
                names: Sequence[str]) -> list[dict[str, Any]]:
    """RMSE and MAE of each member and the ensemble on the values where all of them are finite, and the number
    of distinct hidden dates (``t``, one per value) they lie on."""
    ok = np.isfinite(ens) & np.isfinite(preds).all(axis=0) & np.isfinite(truth)
    dates = int(np.unique(t[ok]).size)
    rows = []
    for name, p in [*zip(names, preds, strict=True), ("ensemble", ens)]:
        e = (p - truth)[ok]
        rows.append({"band": band, "gap_class": group, "method": name, "n": int(ok.sum()), "dates": dates,
                     "rmse": _rmse(e), "mae": float(np.mean(np.abs(e))) if e.size else float("nan")})
    return rows


def _fit_band(P: np.ndarray, y: np.ndarray, cls: np.ndarray, raw: np.ndarray | None, n_class: int, *,
              folds: np.ndarray | None = None, candidates: Sequence[np.ndarray] | None = None, shrinkage: float,
              min_class: int, groups: np.ndarray | None = None, dates: np.ndarray | None = None,
              min_dates: int = 1,
              ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
    """One band's class blend, member ranking and (with features ``raw``) gate.

    With ``folds`` ((n,) 0 or 1, spatially separate), the gate is kept only in the classes where it beats the
    class blend on cross-fitting over them (each fold's gate and blend fitted on the other fold): a gate fitted
    mostly on short gaps can extrapolate its features badly into a class of long ones. ``candidates``: those
    two cross-fitted predictions (gate everywhere, class blend; :func:`_cross_fit`) where they are already
    made, instead of ``folds``. With ``dates`` ((n,) the date of every value), a class on fewer than
    ``min_dates`` dates keeps its class blend whatever the cross-fitting says: that verdict is one or two
    dates' weather."""
    kw = {"shrinkage": shrinkage, "min_class": min_class, "groups": groups}
    weights, order, band = blend.fit_band(P, y, cls, n_class, **kw)
    if raw is None or P.shape[0] < 2:
        return weights, order, None
    params = _fit_gate(P, y, cls, raw, n_class, weights, order, band, shrinkage)
    if candidates is None and folds is not None and np.bincount(folds, minlength=2).min() > 0:
        candidates = _cross_fit(P, y, cls, raw, folds, n_class, dates=dates, min_dates=min_dates, **kw)[1:]
    if candidates is not None:
        sse = []  # per class, each fold's squared errors with the fit on the other fold
        for pred in candidates:
            err = (pred - y) ** 2
            ok = np.isfinite(err)
            sse.append(np.bincount(cls[ok], weights=err[ok], minlength=n_class)[:n_class])
        params["active"] = sse[0] <= sse[1]  # a class without values keeps it (but for min_dates)
        if dates is not None and min_dates > 1:  # slopes fitted on one or two dates' weather stay out of a class
            params["active"] &= blend.dates_per_class(cls, dates, n_class) >= min_dates
    return weights, order, params


def _fit_gate(P: np.ndarray, y: np.ndarray, cls: np.ndarray, raw: np.ndarray, n_class: int, weights: np.ndarray,
              order: np.ndarray, band: np.ndarray, shrinkage: float) -> dict[str, np.ndarray]:
    values = blend.filled(P, order[cls])
    ok = np.isfinite(values).all(axis=0) & np.isfinite(y)
    return gating.fit_gate(values[:, ok], y[ok], cls[ok], n_class, raw[ok], band, weights, shrinkage=shrinkage)


def _predict(P: np.ndarray, cls: np.ndarray, raw: np.ndarray | None, weights: np.ndarray, order: np.ndarray,
             params: dict[str, np.ndarray] | None) -> np.ndarray:
    if params is None:
        return blend.blend(P, cls, weights, order)
    return gating.gated_blend(params, blend.filled(P, order[cls]), cls, raw, weights)


def _cross_fit(P: np.ndarray, y: np.ndarray, cls: np.ndarray, raw: np.ndarray | None, half: np.ndarray,
               n_class: int, folds: np.ndarray | None = None, dates: np.ndarray | None = None,
               **kw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each half's blend with the weights (and gate) fitted on the other half (``folds``: the gate's inner
    folds, as :func:`_fit_band`'s, for every value): (the ensemble as fitted, with the gate in every class,
    with the class blend alone). The last two are what the gate's switch compares: the switch changes
    neither the weights nor the gate, so a fit on all values over the same halves can reuse them."""
    out = np.full((3, *y.shape), np.nan)
    for h in (0, 1):
        fit, other = half != h, half == h
        if not fit.any() or not other.any():
            continue
        w, order, params = _fit_band(P[:, fit], y[fit], cls[fit], None if raw is None else raw[fit], n_class,
                                     folds=None if folds is None else folds[fit],
                                     dates=None if dates is None else dates[fit], **kw)
        Po, co, ro = P[:, other], cls[other], None if raw is None else raw[other]
        out[2, other] = blend.blend(Po, co, w, order)
        out[1, other] = out[2, other] if params is None else _predict(
            Po, co, ro, w, order, {k: v for k, v in params.items() if k != "active"})
        out[0, other] = out[1, other] if params is None or "active" not in params else _predict(
            Po, co, ro, w, order, params)
    return out[0], out[1], out[2]


def _half_widths_checked(scores: np.ndarray, scale: np.ndarray, cls: np.ndarray, half: np.ndarray, n_class: int,
                         dates: np.ndarray, *, min_calibration: int, min_dates: int,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(coverage (L,), mean width (L,), per-value covered (n, L) and width (n, L)) with half-widths
    calibrated on one half and applied to the other, both ways."""
    levels = blend.LEVELS
    covered = np.zeros((len(scores), len(levels)), bool)
    width = np.full((len(scores), len(levels)), np.nan)
    for h in (0, 1):
        cal, test = half != h, half == h
        if not cal.any() or not test.any():
            continue
        q, _ = blend.interval_quantiles(scores[cal], cls[cal], n_class, levels, min_calibration=min_calibration,
                                        dates=dates[cal], min_dates=min_dates)
        qt = q[cls[test]]  # (n_test, L)
        covered[test] = scores[test][:, None] <= qt
        width[test] = 2 * qt * scale[test][:, None]
    ok = np.isfinite(scores)
    finite = np.where(np.isfinite(width[ok]), width[ok], np.nan)
    counts = np.isfinite(finite).sum(axis=0)
    mean_width = np.where(counts > 0, np.nansum(finite, axis=0) / np.maximum(counts, 1), np.inf)
    return covered[ok].mean(axis=0), mean_width, covered, width


def _scale_variants(residual: np.ndarray, P: np.ndarray, spread: np.ndarray | None,
                    n_member: int) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """The interval scales this band can use: {kind: (scores, scale, floor)}, the floor being the median of the
    scale's quantity over the scored values (a kind whose quantity is 0 there is left out)."""
    out = {"none": (residual, np.ones_like(residual), 0.0)}
    kinds = [k for k in blend.SCALES[1:] if ("spread" not in k or spread is not None)
             and ("disagreement" not in k or n_member > 1)]
    scored = np.isfinite(residual)
    for kind in kinds:
        raw = blend.interval_scale(kind, P, spread, 0.0)
        floor = float(np.median(raw[scored])) if scored.any() else 0.0
        if floor > 0:
            out[kind] = (residual / (raw + floor), raw + floor, floor)
    return out


def fit_ensemble(
    ds: xr.Dataset,
    methods: Sequence[str],
    *,
    out: str | os.PathLike,
    gaps: str | int = "clouds",
    holdout: float = 0.1,
    seed: int = 0,
    train: Mapping[str, Any] | None = None,
    checkpoints: Mapping[str, str | os.PathLike] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    optical: Hashable = "optical",
    sar: Hashable | None = DEFAULT_SAR,
    mask: Hashable | bool | None = AUTO_MASK,
    size_edges: Sequence[float] = DEFAULT_SIZE_EDGES,
    days_edges: Sequence[float] = DEFAULT_DAYS_EDGES,
    sar_classes: bool = True,
    sar_window: float = 6.0,
    shrinkage: float = 100.0,
    gate: bool = True,
    min_class: int = 50,
    min_calibration: int = 50,
    min_dates: int = 5,
    split_block: int | None = None,
    max_samples: int = 400_000,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    batch_size: int | None = None,
    device: str | None = None,
) -> Path:
    """Fit a blend of ``methods`` with weights per gap class, and calibrated intervals, on this cube.

    Parameters
    ----------
    ds : xarray.Dataset
        A cube following the conventions (lazy is fine).
    methods : list of str
        The members, e.g. ``["linear", "neighbors", "anytimeformer"]``; one method alone calibrates its
        intervals (its weights are 1).
    out : path
        The ensemble file to write (JSON, small); networks it trains go to :func:`members_folder`.
    gaps, holdout, seed
        What is hidden, as for ``evaluate``: by default 10 % of the clear observations as real cloud shapes.
    train : dict, optional
        ``train`` keywords for the networks without a checkpoint (one dict for all, or one per method name),
        e.g. ``{"time_budget": "5min"}``; they are trained on the cube with the hidden observations removed.
    checkpoints : dict, optional
        ``{method: path}`` of networks already trained; a checkpoint that saw the hidden observations gets a
        warning (an error with ``strict``), as in ``evaluate``.
    options : dict, optional
        Fill options per member, e.g. ``{"restore-dit": {"n_samples": 8}}`` (kept in the file).
    optical, sar, mask
        Variable names, as for ``fill``.
    size_edges, days_edges, sar_classes, sar_window
        The gap classes (:class:`~xrecon.ensemble.features.GapClasses`): gap size in pixels, days to the
        pixel's nearest clear observation, and (with SAR in the cube, unless ``sar_classes=False``) whether
        a SAR observation lies within ``sar_window`` days.
    shrinkage : float
        Pseudo-observations pulling each class's weights toward its gap-size bin's blend, that toward the
        band's, and that toward the band's best member: a class with few hidden observations keeps the weights
        of the classes at the same distance to clear pixels.
    gate : bool
        Let the weights move with each value inside its class (:mod:`xrecon.ensemble.gate`: gap size, gap days,
        the members' disagreement and RESTORE-DiT's spread, through a softmax started at the class blend), in
        the classes where cross-fitting over two sets of spatial blocks finds that better than the class blend
        and whose hidden observations lie on ``min_dates`` dates or more; False: every value of a class gets
        the class's weights.
    min_class, min_calibration : int
        Classes with fewer hidden observations rank their members and calibrate their intervals with the
        band's pooled observations.
    min_dates : int
        Classes whose hidden observations lie on fewer dates calibrate their intervals with the band's pooled
        observations and keep their class blend without the gate: the values of one date share its weather,
        so a class seen on two dates has seen two situations, whatever its number of values. (On Romania's
        dates checks, half-widths of such classes covered 0.78 instead of 0.87 at 90 %, and a gate fitted
        on them made one class of long gaps 36 % worse than its best member instead of 11 %.)
    split_block : int, optional
        Side in pixels of the checkerboard blocks that make the two spatial halves; None: 32, or a quarter of
        the cube's smaller side when that is less (so each half has several blocks).
    max_samples : int
        At most about this many hidden observations are used (a seeded subsample of them).
    strict, overwrite, progress
        Leaks are errors; replace ``out`` (and networks in its members folder); show training progress.
    batch_size, device
        For the networks' fills.

    Returns
    -------
    pathlib.Path
        ``out``. :func:`xrecon.ensemble.load_ensemble` reads it; its ``scores()`` and ``coverage()`` are what
        was measured when fitting.

    Warns
    -----
    DatesWarning
        When the figures may not hold on the cube's dates without hidden observations (where most real gaps
        are): on halves of the hidden dates the ensemble is worse than its best member or its 90 % intervals
        cover less than 0.85, or no such check was possible (every hidden observation on one date).

    Examples
    --------
    >>> import tempfile, os
    >>> from xrecon.testing import synthetic_cube
    >>> ds = synthetic_cube(ny=32, nx=32, seed=1)
    >>> path = fit_ensemble(ds, ["linear", "neighbors"], out=os.path.join(tempfile.mkdtemp(), "ens.xrecon"))
    >>> out = ds.recon.fill(method="ensemble", checkpoint=path, interval=0.9)
    >>> sorted(out.data_vars)
    ['observed', 'optical', 'optical_lower', 'optical_upper']
    """
    if split_block is None:
        split_block = max(1, min(32, min(ds[optical].sizes["y"], ds[optical].sizes["x"]) // 4))
    methods = _check(methods, holdout, shrinkage, split_block, max_samples, min_dates)
    if not isinstance(gate, bool):
        raise XreconError(f"gate={gate!r}: expected True (weights per value) or False (weights per gap class)")
    gaps = check_gaps(gaps)
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{os.fspath(out)!r} exists; pass overwrite=True to replace it")
    options = {m: dict(v) for m, v in (options or {}).items()}
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise XreconError(f"options= names {unknown}, which are not members ({methods})")
    mask = resolve_mask(ds, mask, optical=optical)
    cube = validate(ds, optical=optical, sar=sar, mask=False if mask is None else mask)
    sar_name = sar if cube.sar is not None else None
    held, hidden = hide_observations(ds, holdout, seed=seed, optical=str(optical), mask=mask, gaps=gaps,
                                     precompute=True)
    crs = leakage.crs_key(ds, optical)

    given = protocol.resolve_checkpoints(methods, checkpoints)
    missing = [m for m in protocol.needs_checkpoint(methods) if m not in given]
    if missing and train is None:
        raise MethodError(f"{missing} need a checkpoint: give checkpoints={{name: path}}, or train={{...}} (e.g. "
                          "{'time_budget': '5min'}) to train them on the cube without the hidden observations")
    if given:
        protocol.check_leaks(given, hidden, crs=crs, strict=strict)
    trained = protocol.train_networks(held, missing, train, members_folder(out), optical=optical, sar=sar_name,
                                      mask=mask, seed=seed, progress=progress, overwrite=overwrite) if missing else {}
    from xrecon.runtime import file_sha256

    ckpts = {**given, **trained}
    members = tuple(Member(m, options.get(m, {}), os.path.abspath(ckpts[m]) if m in ckpts else None,
                           file_sha256(ckpts[m]) if m in ckpts else None) for m in methods)

    # every member on the held cube, and the gap classes of the hidden observations
    fills = _member_fills(held, members, optical=optical, sar=sar_name, mask=mask,
                          fill_kwargs={"batch_size": batch_size, "device": device})
    classes = GapClasses(tuple(size_edges), tuple(days_edges), sar=bool(sar_classes and cube.sar is not None),
                         sar_window=float(sar_window))
    kept = held[optical].notnull().all("band")
    if mask is not None:
        kept = kept & held[mask].astype(bool)
    arrays: dict[str, xr.DataArray] = {"truth": cube.optical.transpose("time", "band", "y", "x")}
    spread_member = None
    for i, f in enumerate(fills):
        arrays[f"m{i}"] = f["optical"]
        if "optical_std" in f and spread_member is None:
            spread_member = i
            arrays["spread"] = f["optical_std"]
    arrays["size"] = gap_sizes(kept, hidden, reach=classes.reach)
    arrays["days"] = days_to_clear(kept)
    if classes.sar:
        arrays["sar"] = sar_near(cube.sar, cube.times.values, classes.sar_window)
    n_hidden = int(hidden.sum())
    if n_hidden == 0:
        raise XreconError("no clear observation was hidden: the cube has too few clear observations for this "
                          f"hold-out (holdout={holdout}, gaps={gaps!r})")
    rate = min(1.0, max_samples / n_hidden)
    got = _gather(arrays, hidden, rate, seed)
    halves = np.bincount(((got["y"] // split_block) + (got["x"] // split_block)) % 2, minlength=2)
    if halves.min() < 2:
        raise XreconError(f"the hidden observations fall in one spatial half only (split_block={split_block} px, "
                          f"halves of {halves.tolist()}): give a smaller split_block, or a larger holdout")

    ens = _fit(got, members, cube.bands, classes, spread_member,
               shrinkage=float(shrinkage), min_class=min_class, gated=bool(gate),
               min_calibration=min_calibration, min_dates=min_dates, split_block=split_block)
    provenance = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "xrecon_version": __version__,
        "holdout": holdout, "gaps": gaps, "seed": seed, "mask": "" if mask is None else str(mask),
        "hidden": n_hidden, "used": int(len(got["t"])), "split_block": split_block, "shrinkage": float(shrinkage),
        "gate": bool(gate),
        "min_class": min_class, "min_calibration": min_calibration,
        "min_dates": min_dates, "cube": {k: int(v) for k, v in ds.sizes.items()},
        "times": [str(cube.times[0]), str(cube.times[-1])], "crs": crs,
        "trained": {m: _training_summary(p) for m, p in trained.items()},
    }
    fitted = leakage.sketch(hidden, k=4096, crs=crs)
    ens = Ensemble(**{**ens.__dict__, "provenance": provenance, "observations": fitted.to_plain()})
    path = ens.save(out, overwrite=overwrite)
    caveat = _dates_caveat(ens)
    if caveat:
        warnings.warn(f"{path.name}: {caveat}", DatesWarning, stacklevel=2)
    return path


def _dates_caveat(ens: Ensemble) -> str | None:
    """Why the ensemble's figures may not hold on dates without hidden observations, or None.

    The hidden observations lie on a few dates (on Romania's 140, a cloud-shaped 10 % on 17-35), the cube's
    real gaps on every date (there 74-89 % of them on dates without a hidden observation). The dates check
    (the blend fitted on half of the hidden dates, scored on the other half) says how the blend carries
    over: a caveat when there the ensemble is worse than its best member or its 90 % intervals cover less
    than 0.85, or when no dates check was possible.
    """
    scores = ens.scores()
    n_dates = int(scores["dates"].max()) if "dates" in scores else None
    on = "" if n_dates is None else f" on {n_dates} date{'s' if n_dates != 1 else ''}"
    dates, coverage = ens.scores(split="dates"), ens.coverage(split="dates")
    if dates.empty:
        return (f"no dates check was possible (the hidden observations lie{on}, and it needs two): "
                "the blend and its intervals were fitted and measured on the weather of those dates alone, and they "
                "may not hold on the cube's other dates. A larger holdout hides more dates")
    dates = dates.set_index("method")["rmse"]
    best = dates.drop("ensemble").idxmin()
    change = dates["ensemble"] / dates[best] - 1
    cover = float(coverage.set_index("level").loc[0.9, "coverage"])
    if change <= 0 and cover >= 0.85:
        return None
    return (f"on the hidden dates it was not fitted on (scores(split='dates')) the ensemble is "
            f"{100 * change:+.1f} % RMSE against its best member ({best}) and its 90 % intervals cover {cover:.2f}. "
            f"The hidden observations lie{on}: on the cube's other dates expect these figures rather than those of "
            "scores(). A larger holdout hides more dates")


def _training_summary(path: str) -> dict[str, Any]:
    """What a network trained here did: its steps, training seconds and best validation loss."""
    import xrecon.models

    meta = xrecon.models.load(path, device="cpu").metadata.get("training", {})
    return {k: meta.get(k) for k in ("steps", "train_seconds", "best_val_loss", "device")}


def _fit(got: Mapping[str, np.ndarray], members: Sequence[Member], bands: Sequence[str], classes: GapClasses,
         spread_member: int | None, *, shrinkage: float, min_class: int, min_calibration: int,
         split_block: int, gated: bool = True, min_dates: int = 5) -> Ensemble:
    """The blend, half-widths and report from the gathered hidden observations (numpy only)."""
    n_member, n_band, n_class = len(members), len(bands), classes.n
    names = [m.method for m in members]
    cls = classes.index(got["size"], got["days"], got.get("sar"))
    t = np.asarray(got["t"])
    half = ((got["y"] // split_block) + (got["x"] // split_block)) % 2  # the checkerboard's two halves
    rows = (got["y"] // split_block) % 2  # inside one half, its blocks of even and of odd rows
    two_halves = bool(np.bincount(half, minlength=2).min() > 0)
    truth = got["truth"].astype(np.float64)  # (n, C)
    preds = np.stack([got[f"m{i}"] for i in range(n_member)]).astype(np.float64)  # (M, n, C)
    # the classes of one gap-size bin shrink toward their bin's blend: the distance to clear pixels decides
    # most of what the members are worth (neighbors next to them, the networks far inside a cloud)
    fit_kw = {"shrinkage": shrinkage, "min_class": min_class, "groups": classes.size_bins,
              "dates": t, "min_dates": min_dates}
    calibration = {"min_calibration": min_calibration, "min_dates": min_dates}
    gated = gated and n_member > 1
    features = gating.FEATURES[:4 if spread_member is not None else 3]
    gates = []

    weights = np.zeros((n_band, n_class, n_member))
    order = np.zeros((n_band, n_class, n_member), np.int64)
    widths = np.zeros((n_band, n_class, len(blend.LEVELS)))
    counts = np.zeros((n_band, n_class), np.int64)
    scale, floors = [], np.zeros(n_band)
    scores_rows: list[dict[str, Any]] = []
    coverage_rows: list[dict[str, Any]] = []
    pooled_oos = np.full(truth.shape, np.nan)
    pooled_cov = []
    # the same cross-fitting with halves of dates instead of space: both spatial halves share every date, so
    # what the blend learns of one date's weather carries over to the other half; the dates check says how
    # much of the gain is left on dates the blend was not fitted on. Every other hidden date (in time order)
    # makes the two halves, so that any two hidden dates give a check (None: the hidden values lie on one date)
    by_date = np.unique(t, return_inverse=True)[1].ravel() % 2
    dated = bool(np.bincount(by_date, minlength=2).min() >= 2)
    dates_oos = np.full(truth.shape, np.nan)
    dates_cov = []
    for b, band in enumerate(bands):
        y, P = truth[:, b], preds[:, :, b]
        spread = None if spread_member is None else got["spread"][:, b]
        raw = gating.features(got["size"], got["days"], P, spread, reach=classes.reach) if gated else None
        # the spatial check first: its halves' fits are the ones the gate's switch compares on all values
        oos, *candidates = _cross_fit(P, y, cls, raw, half, n_class, rows, **fit_kw)
        weights[b], order[b], params = _fit_band(P, y, cls, raw, n_class, candidates=candidates if two_halves
                                                 else None, **fit_kw)
        if params is not None:
            gates.append(params)
        pooled_oos[:, b] = oos
        residual = np.abs(y - oos)
        variants = _scale_variants(residual, P, spread, n_member)
        checked = {k: _half_widths_checked(s, sc, cls, half, n_class, t, **calibration)
                   for k, (s, sc, _) in variants.items()}
        i90 = blend.LEVELS.index(0.9)
        # the sharpest 90 % intervals on the spatial check; a tie goes to the simpler scale
        choice = min(checked, key=lambda k: (checked[k][1][i90], blend.SCALES.index(k)))
        score, _, floor = variants[choice]
        scale.append(choice)
        floors[b] = floor
        widths[b], counts[b] = blend.interval_quantiles(score, cls, n_class, dates=t, **calibration)
        coverage, width, covered, _ = checked[choice]
        pooled_cov.append(covered[np.isfinite(score)])
        if dated:
            dates_oos[:, b] = _cross_fit(P, y, cls, raw, by_date, n_class, half, **fit_kw)[0]
            s_dates = np.abs(y - dates_oos[:, b]) / variants[choice][1]
            dates_cov.append(_half_widths_checked(s_dates, variants[choice][1], cls, by_date, n_class, t,
                                                  **calibration)[:2])
        for level, c, w in zip(blend.LEVELS, coverage, width, strict=True):
            coverage_rows.append({"band": band, "level": level, "coverage": float(c), "width": float(w),
                                  "scale": choice})
        scores_rows += _score_rows(band, "all", y, P, oos, t, names)
        for c in range(n_class):
            sel = cls == c
            if sel.any():
                scores_rows += _score_rows(band, classes.label(c), y[sel], P[:, sel], oos[sel], t[sel], names)
    if n_band > 1:  # the bands pooled: every (observation, band) one value
        for c in [None, *range(n_class)]:
            sel = np.ones(len(cls), bool) if c is None else cls == c
            if sel.any():
                scores_rows += _score_rows("all", "all" if c is None else classes.label(c), truth[sel].ravel(),
                                           preds[:, sel].reshape(n_member, -1), pooled_oos[sel].ravel(),
                                           np.repeat(t[sel], n_band), names)
        allcov = np.concatenate(pooled_cov)
        for i, level in enumerate(blend.LEVELS):
            per_band = [r["width"] for r in coverage_rows if r["level"] == level]
            coverage_rows.append({"band": "all", "level": level, "coverage": float(allcov[:, i].mean()),
                                  "width": float(np.mean(per_band)), "scale": "per band"})
    dates = None
    if dated:
        dates = {
            "scores": _score_rows("all", "all", truth.ravel(), preds.reshape(n_member, -1), dates_oos.ravel(),
                                  np.repeat(t, n_band), names),
            "coverage": [{"band": "all", "level": level, "coverage": float(np.mean([c[0][i] for c in dates_cov])),
                          "width": float(np.mean([c[1][i] for c in dates_cov]))}
                         for i, level in enumerate(blend.LEVELS)],
        }
    return Ensemble(
        members=tuple(members), bands=tuple(map(str, bands)), classes=classes, weights=weights, order=order,
        levels=blend.LEVELS, half_widths=widths, calibration_count=counts, scale=tuple(scale), scale_floor=floors,
        spread_member=spread_member if any("spread" in k for k in scale) or (gates and "spread" in features) else None,
        gate=gating.Gate.stack(features, gates) if gates else None,
        report={"scores": scores_rows, "coverage": coverage_rows, "dates": dates},
    )

