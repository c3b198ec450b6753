"""AnytimeFormer behind ``fill``: the graph-build step and the pixel kernel (the method's adapter).

The network itself is :mod:`xrecon.models.anytimeformer`; what all networks share (band matching, the
classical fallback, the model cache) is :mod:`xrecon.neural`. Nothing here imports torch at import time.

Multi-year cubes
----------------
AnytimeFormer encodes dates as day of year, so one forward pass must see one year. The kernel therefore
processes **calendar-year windows**: the query times of year Y are predicted from the optical and SAR
observations of the window around year Y, with days counted from the window's start. The window is
year Y itself when the model's time encoding covers one year (``max_day`` <= 367, as for the official
weights: days 1..366 of Y; a day beyond ``max_day`` is encoded as ``max_day``); a model whose encoding
covers more days gets ``(max_day - 366) // 2`` days of the neighbouring years on each side, with days
counted from 1 at the window's start.

A pixel without a clear observation in a query's window gets nothing from the network; there the
``fallback`` method (option ``fallback=``, default ``"harmonic"``; ``None`` leaves NaN) fills from the
pixel's whole series, with the ``edges`` rule. A pixel without any clear observation is NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xrecon import neural
from xrecon.methods.registry import BuildRequest, Method, Plan, register
from xrecon.times import to_ns

__all__ = ["OPTIONS", "build", "fill_anytimeformer", "year_windows"]

#: The fill options of the method (besides those every method takes).
OPTIONS = ("precision", "fallback")


def build(method: Method, request: BuildRequest) -> Plan:
    """Load (through the cache) and check the model against the cube; freeze what every task needs."""
    method.check_option_names(request.options)
    fallback = neural.check_fallback(request.options.get("fallback", neural.DEFAULT_FALLBACK))
    precision = request.options.get("precision", "fp32")
    cube = request.cube
    bands, sar_bands = neural.check_network(method.name, request.checkpoint, request.checkpoint_sha256,
                                            cube.bands, cube.sar_bands)
    use_sar = sar_bands is not None
    return Plan.of(
        {
            "checkpoint": request.checkpoint, "sha256": request.checkpoint_sha256,
            "bands": bands, "sar_bands": sar_bands,
            "times": to_ns(cube.times), "query_times": to_ns(request.query_times),
            "sar_times": to_ns(cube.sar_times) if use_sar else None,
            "batch_size": request.batch_size, "device": request.device,
            "precision": precision, "fallback": fallback,
        },
        use_sar=use_sar,
    )


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


def fill_anytimeformer(
    values: np.ndarray,
    valid: np.ndarray,
    t: np.ndarray,
    tq: np.ndarray,
    *,
    edges: str = "hold",
    checkpoint: str,
    sha256: str | None,
    bands: tuple[int, ...],
    sar_bands: tuple[int, ...] | None,
    times: tuple[int, ...],
    query_times: tuple[int, ...],
    sar_times: tuple[int, ...] | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str = "fp32",
    fallback: str | None = neural.DEFAULT_FALLBACK,
    sar: np.ndarray | None = None,
    sar_t: np.ndarray | None = None,
) -> np.ndarray:
    """(N, T, C) optical, (N, T) validity, (N, Ts, S) SAR -> (N, Tq, C) float32, in the cube's band order.

    ``times``, ``query_times`` and ``sar_times`` are the exact int64 nanoseconds behind ``t``, ``tq`` and
    ``sar_t``, for the calendar-year windows; ``bands`` and ``sar_bands`` index the cube's bands in the
    model's order (what :func:`build` found).
    """
    from xrecon.models.cache import cached_model, model_lock  # torch only where a network runs

    model = cached_model(checkpoint, sha256, device)
    opt_idx = np.asarray(bands)
    out = np.full((values.shape[0], len(query_times), values.shape[2]), np.nan, dtype=np.float32)
    use_sar = sar is not None and sar_bands is not None
    windows = year_windows(np.asarray(times), np.asarray(query_times),
                           np.asarray(sar_times) if use_sar else None, float(model.config.max_day))
    for oi, o_days, si, s_days, qi, q_days in windows:
        if oi.size == 0:
            continue  # no optical date in this year: NaN, as for an all-cloud pixel
        x = values[:, oi][:, :, opt_idx]
        s = sar[:, si][:, :, np.asarray(sar_bands)] if use_sar and si.size else None
        with model_lock(model):
            pred = model.predict_pixels(
                x, valid[:, oi], o_days, s, s_days if s is not None else None, q_days,
                batch_size=batch_size, device=device, precision=precision,
            )
        out[:, qi[:, None], opt_idx[None, :]] = pred
    if fallback is not None:
        neural.fill_from_classical(out, values, valid, t, tq, fallback, edges)
    return out


# Registered here; its training task is AnytimeFormer's (named, not imported: importing xrecon imports no torch).
register(
    "anytimeformer",
    f"{__name__}:fill_anytimeformer",
    build=f"{__name__}:build",
    options=OPTIONS,
    needs_checkpoint=True,
    sar=True,
    training="xrecon.training.tasks:AnytimeFormerTask",
    summary="AnytimeFormer network (Tang et al. 2025), optical + SAR, any query day; needs checkpoint=",
)

