"""Networks behind ``fill``: checking a checkpoint against a cube, and the per-block call.

Only :func:`run_block` runs inside dask tasks. It gets the model from the per-process cache
(:func:`xrecon.runtime.cached_model`) using the path and sha256 in the :class:`~xrecon.fill.FillSpec`, so
the graph never carries a model or a tensor.

Multi-year cubes
----------------
AnytimeFormer encodes dates as day of year, so one forward pass must see one year. ``fill`` therefore
processes **calendar-year windows**: the query times of year Y are predicted from the optical and SAR
observations of the window around year Y, with days counted from the window's start. The window is
year Y itself when the model's time encoding covers one year (``max_day`` <= 367, as for the official
weights: days 1..366 of Y; a day beyond ``max_day`` is encoded as ``max_day``); a model whose encoding
covers more days gets ``(max_day - 366) // 2`` days of the neighbouring years on each side, with days
counted from 1 at the window's start.

A pixel without a clear observation in a query's window gets nothing from the network; there the
``fallback`` classical method (option ``fallback=``, default ``"harmonic"``; ``None`` leaves NaN) fills
from the pixel's whole series, with the ``edges`` rule. A pixel without any clear observation is NaN.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from xrecon import methods
from xrecon.errors import CheckpointError, MethodError

__all__ = ["check_model", "run_block", "year_windows", "model_to_checkpoint"]

#: Options ``fill`` passes to the networks; anything else is refused.
NEURAL_OPTIONS = ("precision", "fallback")
#: The classical method that fills what the network cannot see (see :func:`run_block`).
DEFAULT_FALLBACK = "harmonic"

# One network call at a time per process and model: torch already spreads a batch over all cores (or
# the GPU), and concurrent calls from dask's threads would only oversubscribe them.
_locks: dict[int, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(model: Any) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(id(model), threading.Lock())


def model_to_checkpoint(model: Any) -> str:
    """Save an in-memory model to a content-addressed file, so that the graph can carry its path.

    The file lives in the system temporary folder; on a distributed cluster the workers must see
    the same file system, otherwise save the model yourself and pass ``checkpoint=``.
    """
    from xrecon.runtime import file_sha256

    folder = os.path.join(tempfile.gettempdir(), "xrecon-models")
    os.makedirs(folder, exist_ok=True)
    tmp = model.save(os.path.join(folder, f"model-{os.getpid()}-{threading.get_ident()}.xrecon"))
    final = os.path.join(folder, f"{file_sha256(tmp)}.xrecon")
    os.replace(tmp, final)
    return final


def _band_index(cube_bands: Sequence[str], model_bands: Sequence[str] | None, n_model: int, what: str) -> tuple:
    """Index into the cube's bands giving the model's band order; errors name what does not fit."""
    cube_bands = [str(b) for b in cube_bands]
    if model_bands is None:
        if len(cube_bands) != n_model:
            raise CheckpointError(
                f"the checkpoint takes {n_model} {what} bands (unnamed), the cube has {len(cube_bands)}: {cube_bands}"
            )
        return tuple(range(n_model))
    missing = [b for b in model_bands if b not in cube_bands]
    extra = [b for b in cube_bands if b not in model_bands]
    if missing or extra:
        raise CheckpointError(
            f"the checkpoint's {what} bands {list(model_bands)} do not match the cube's {cube_bands}"
            + (f": missing {missing}" if missing else "")
            + (f"; not in the model {extra} (select the model's bands with ds.sel(...))" if extra else "")
        )
    return tuple(cube_bands.index(b) for b in model_bands)


def check_model(
    method: str, checkpoint: str, sha256: str, bands: Sequence[str], sar_bands: Sequence[str] | None, options: dict
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Load (through the cache) and check the model against the cube when the graph is built.

    Returns the band index of the optical bands in model order, and that of the SAR bands, or None
    when SAR is not used (the model takes none, or the cube has none).
    """
    from xrecon.models import list_models
    from xrecon.runtime import cached_model

    if method not in list_models():
        raise MethodError(f"method {method!r} has no network in this xrecon version; available: {list_models()}")
    unknown = sorted(set(options) - set(NEURAL_OPTIONS))
    if unknown:
        raise MethodError(f"the networks take the options {list(NEURAL_OPTIONS)}; got {unknown}")
    fallback = options.get("fallback", DEFAULT_FALLBACK)
    if fallback is not None and fallback not in methods.list_methods():
        raise MethodError(
            f"fallback={fallback!r}: expected None or a classical method, one of {methods.list_methods()}"
        )
    model = cached_model(checkpoint, sha256, "cpu")
    if model.name != method:
        raise CheckpointError(f"{os.path.basename(checkpoint)!r} holds a {model.name!r} model, not {method!r}")
    config = model.config
    optical_index = _band_index(bands, model.optical_bands, config.n_optical_bands, "optical")
    sar_index = None
    if sar_bands is not None and getattr(config, "n_sar_bands", 0):
        sar_index = _band_index(sar_bands, model.sar_bands, config.n_sar_bands, "SAR")
    return optical_index, sar_index


def year_windows(
    times: np.ndarray, query: np.ndarray, sar_times: np.ndarray | None, max_day: float
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Split a multi-year problem into calendar-year windows (see the module docstring).

    Returns, per year with queries: (optical index, optical days, SAR index, SAR days, query index,
    query days); days counted from 1 at the window's start, clipped to ``max_day``.
    """
    t = pd.DatetimeIndex(np.asarray(times, dtype="datetime64[ns]"))
    q = pd.DatetimeIndex(np.asarray(query, dtype="datetime64[ns]"))
    s = None if sar_times is None else pd.DatetimeIndex(np.asarray(sar_times, dtype="datetime64[ns]"))
    margin = max(0, int((max_day - 366) // 2))
    length = 366 + 2 * margin  # window days 1 .. length, whatever the year's length

    def days(index: pd.DatetimeIndex, origin: pd.Timestamp) -> np.ndarray:
        return ((index - origin) / pd.Timedelta(days=1)).to_numpy(np.float64) + 1.0

    def inside(index: pd.DatetimeIndex, year: int, origin: pd.Timestamp) -> np.ndarray:
        if margin == 0:
            return np.flatnonzero(index.year == year)
        d = days(index, origin)
        return np.flatnonzero((d >= 1) & (d < length + 1))

    windows = []
    for year in np.unique(q.year):
        origin = pd.Timestamp(year=int(year), month=1, day=1) - pd.Timedelta(days=margin)
        qi, oi = np.flatnonzero(q.year == year), inside(t, year, origin)
        si = None if s is None else inside(s, year, origin)
        windows.append((
            oi, np.minimum(np.floor(days(t[oi], origin)), max_day),
            si, None if si is None else np.minimum(np.floor(days(s[si], origin)), max_day),
            qi, np.minimum(np.floor(days(q[qi], origin)), max_day),
        ))
    return windows


def run_block(spec: Any, values: np.ndarray, valid: np.ndarray, sar: np.ndarray | None) -> np.ndarray:
    """(N, T, C) optical, (N, T) validity, (N, Ts, S) SAR -> (N, Tq, C) float32, in the cube's band order."""
    from xrecon.runtime import cached_model

    model = cached_model(spec.checkpoint, spec.checkpoint_sha256, spec.device)
    opt_idx = np.asarray(spec.model_bands)
    out = np.full((values.shape[0], len(spec.query_times), values.shape[2]), np.nan, dtype=np.float32)
    use_sar = sar is not None and spec.model_sar_bands is not None
    windows = year_windows(
        np.asarray(spec.times), np.asarray(spec.query_times), np.asarray(spec.sar_times) if use_sar else None,
        float(model.config.max_day),
    )
    precision = dict(spec.options).get("precision", "fp32")
    for oi, o_days, si, s_days, qi, q_days in windows:
        if oi.size == 0:
            continue  # no optical date in this year: NaN, as for an all-cloud pixel
        x = values[:, oi][:, :, opt_idx]
        s = sar[:, si][:, :, np.asarray(spec.model_sar_bands)] if use_sar and si.size else None
        with _lock_for(model):
            pred = model.predict_pixels(
                x, valid[:, oi], o_days, s, s_days if s is not None else None, q_days,
                batch_size=spec.batch_size, device=spec.device, precision=precision,
            )
        out[:, qi[:, None], opt_idx[None, :]] = pred
    fallback = dict(spec.options).get("fallback", DEFAULT_FALLBACK)
    if fallback is not None:
        _fill_from_classical(out, spec, values, valid, fallback)
    return out


def _fill_from_classical(out: np.ndarray, spec: Any, values: np.ndarray, valid: np.ndarray, method: str) -> None:
    """Where the network gave nothing (no clear observation in a query's year window) but the pixel has
    clear observations in other years, use a classical method over the whole series, in place."""
    gap = np.isnan(out).any(axis=-1)  # (N, Tq)
    rows = np.flatnonzero(gap.any(axis=1) & valid.any(axis=1))
    if rows.size == 0:
        return
    kernel = methods.get_method(method)
    classical = kernel(values[rows], valid[rows], spec.days, spec.query_days, edges=spec.edges)
    part, where = out[rows], gap[rows]
    part[where] = classical[where]
    out[rows] = part
