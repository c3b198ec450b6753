"""Block functions of ``fill`` (block drivers, formerly ``xrecon.kernels``): numpy in, numpy out, one spatial
block at a time (no xarray, no dask).

:func:`fill_pixels` serves pixel methods: a block arrives as ``(time, band, y, x)``, as the cube stores
it, and the kernel sees slabs of ``(N, T, C)`` series. :func:`fill_patch` serves patch
methods: a block arrives as ``(time, band, y, x)`` with ``halo`` pixels of its neighbours on every side,
the kernel sees that whole window and its offset in the cube's grid, and the halo is trimmed off here.
Both then apply what every method shares: the pass-through of clear observations (``observed``) and the
optional ``gap_days``. The :class:`FillSpec` is all they need: small, frozen and hashable, it is what the
dask graph carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xrecon.errors import CubeError, XreconError
from xrecon.methods.registry import Method, Plan
from xrecon.times import to_days

__all__ = ["DN_LIKE", "FillSpec", "check_reflectance_values", "fill_patch", "fill_pixels", "gap_days"]

#: Reflectance in 0-1 units rarely exceeds 1 (bright snow, specular glint); values above this bound look like
#: digital numbers (Sentinel-2 L2A stores reflectance * 10000).
DN_LIKE = 1.5
#: ... when more than this share of the finite values are above it: a few saturated or glinting pixels are
#: not digital numbers, while digital numbers are above it almost everywhere (even dark water is DN ~100).
DN_LIKE_SHARE = 0.01

# Pixels per kernel call inside a chunk: large enough to vectorize well, small enough that the kernels'
# temporaries stay a few tens of MB whatever the chunk size.
_SLAB_PIXELS = 4096


@dataclass(frozen=True)
class FillSpec:
    """Everything a block needs to reconstruct its pixels, small and hashable.

    Times are int64 nanoseconds since the epoch, so that equality between query and observation
    times is exact.
    """

    method: Method
    plan: Plan
    times: tuple[int, ...]
    query_times: tuple[int, ...]
    sar_times: tuple[int, ...] | None = None
    edges: str = "hold"
    keep_observed: bool = True
    has_mask: bool = False
    gap_days: bool = False

    @property
    def days(self) -> np.ndarray:
        """Observation times as float days since 1970, for the kernels."""
        return to_days(np.asarray(self.times, dtype="datetime64[ns]"))

    @property
    def query_days(self) -> np.ndarray:
        """Query times as float days since 1970, for the kernels."""
        return to_days(np.asarray(self.query_times, dtype="datetime64[ns]"))

    @property
    def sar_days(self) -> np.ndarray | None:
        return None if self.sar_times is None else to_days(np.asarray(self.sar_times, dtype="datetime64[ns]"))

    @property
    def halo(self) -> int:
        """Pixels of the neighbouring chunks each block gets: the plan's, else the registered one."""
        return self.method.halo if self.plan.halo is None else self.plan.halo

    @property
    def method_outputs(self) -> tuple[str, ...]:
        """Names of the method's (time, band, y, x) outputs: the plan's, else the registered ones."""
        return self.method.outputs if self.plan.outputs is None else self.plan.outputs

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the arrays a block returns, in order."""
        return (*self.method_outputs, "observed") + (("gap_days",) if self.gap_days else ())


def check_reflectance_values(values: np.ndarray, name: Any = "optical", where: str = "") -> None:
    """CubeError when ``values`` look like digital numbers: over :data:`DN_LIKE_SHARE` of them above :data:`DN_LIKE`.

    The one rule of ``fill``'s check, applied to a strided sample of an in-memory cube before anything
    runs and to every block of a lazy cube when it is computed (so a lazy cube of digital numbers fails
    at its first task, and a write leaves nothing behind, instead of giving garbage).
    """
    if values.ndim == 4:  # a block (T, C, Y, X): a strided view of at most about 2**18 values, no copy
        step = max(1, int(np.sqrt(values.size / (1 << 18))))
        values = values[..., ::step, ::step]
    n_finite = np.count_nonzero(np.isfinite(values))
    if not n_finite or np.count_nonzero(values > DN_LIKE) <= DN_LIKE_SHARE * n_finite:
        return
    finite = values[np.isfinite(values)]
    high = float(np.quantile(finite, 0.99))
    raise CubeError(
        f"optical variable {name!r}{where} holds values up to {float(finite.max()):g} (99th percentile "
        f"{high:g}); expected reflectance in 0-1 units (at most about {DN_LIKE}). These look like digital "
        "numbers: decode them with xrecon.cube.decode(da, scale=1e-4) or "
        "xrecon.cube.from_bands(..., scale=1e-4) (Sentinel-2 L2A: scale=1e-4, offset=-0.1 from "
        "processing baseline 04.00)"
    )


def _kernel_call(spec: FillSpec, values: np.ndarray, valid: np.ndarray, sar: np.ndarray | None,
                 **extra: Any) -> dict[str, np.ndarray]:
    """Run the method's kernel; always a dict of its declared outputs, float32."""
    kwargs = spec.plan.kwargs_dict
    if spec.plan.use_sar:
        kwargs.update(sar=sar, sar_t=spec.sar_days)
    result = spec.method.kernel_function()(values, valid, spec.days, spec.query_days, edges=spec.edges,
                                           **extra, **kwargs)
    if not isinstance(result, Mapping):
        result = {"optical": result}
    names = spec.method_outputs
    if set(result) != set(names):
        raise XreconError(f"method {spec.method.name!r} returned {sorted(result)}; it declares outputs {list(names)}")
    return {name: np.asarray(result[name], dtype=np.float32) for name in names}


def _pass_through_index(spec: FillSpec) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (query index, observation index) where a query time equals an observation time."""
    times = np.asarray(spec.times, dtype=np.int64)
    query = np.asarray(spec.query_times, dtype=np.int64)
    pos = np.clip(np.searchsorted(times, query), 0, len(times) - 1)
    hit = times[pos] == query
    return np.flatnonzero(hit), pos[hit]


def _all_bands_finite(values: np.ndarray, axis: int) -> np.ndarray:
    """True where every band (along ``axis``) is finite.

    Summing the bands (NaN and inf propagate) is ~10x faster than ``isfinite(values).all(axis)``,
    whose reduction over a short axis dominated the whole block for the fast kernels.
    """
    index = [slice(None)] * values.ndim

    def band(i: int) -> np.ndarray:  # a view, not a copy as np.take would make
        index[axis] = i
        return values[tuple(index)]

    total = band(0).astype(np.float32, copy=True)
    for i in range(1, values.shape[axis]):
        total += band(i)
    return np.isfinite(total)


def _copy_spectra(dst: np.ndarray, src: np.ndarray, where: np.ndarray) -> None:
    """dst[n, t, :] = src[n, t, :] where where[n, t]; (N, T, C) float32 arrays, (N, T) mask.

    Seen as one opaque C x 4-byte item per (n, t), the masked copy needs no broadcast mask and runs
    about 3x faster than ``np.copyto(dst, src, where=where[..., None])``.
    """
    item = dst.dtype.itemsize * dst.shape[-1]
    if src.dtype == dst.dtype and dst.strides[-1] == src.strides[-1] == dst.dtype.itemsize:
        spectrum = np.dtype((np.void, item))
        np.copyto(dst.view(spectrum)[..., 0], src.view(spectrum)[..., 0], where=where)
    else:
        np.copyto(dst, src, where=where[..., None], casting="unsafe")


def _blend(dst: np.ndarray, src: np.ndarray, where: np.ndarray) -> None:
    """dst[k, :, n] = src[k, :, n] where where[k, n]: (K, C, n) float32 arrays and a (K, n) mask.

    As bit operations on the floats' 32-bit patterns (select = dst ^ ((dst ^ src) & mask)), about 3x faster
    than ``np.copyto(dst, src, where=where[:, None])``, whose masked loop is slow with a broadcast mask.
    """
    if src.dtype != np.float32 or dst.dtype != np.float32:
        np.copyto(dst, src, where=where[:, None], casting="unsafe")
        return
    mask = where.astype(np.uint32) * np.uint32(0xFFFFFFFF)
    bits = np.bitwise_xor(src.view(np.uint32), dst.view(np.uint32))
    np.bitwise_and(bits, mask[:, None, :], out=bits)
    np.bitwise_xor(dst.view(np.uint32), bits, out=dst.view(np.uint32))


def _as_slice(index: np.ndarray) -> slice | None:
    """A slice equal to an increasing run of consecutive indices, else None."""
    if index.size and index[-1] - index[0] + 1 == index.size and (np.diff(index) == 1).all():
        return slice(int(index[0]), int(index[-1]) + 1)
    return None


def gap_days(valid: np.ndarray, t: np.ndarray, tq: np.ndarray) -> np.ndarray:
    """Days from each query time to the nearest clear observation, per series.

    Parameters
    ----------
    valid : ndarray (T, ...) of bool
        Clear observations, time first.
    t : ndarray (T,)
        Observation days, increasing.
    tq : ndarray (Tq,)
        Query days, any order.

    Returns
    -------
    ndarray (Tq, ...) float32
        ``|tq - t|`` to the nearest clear observation; NaN for a series without any.

    Examples
    --------
    >>> import numpy as np
    >>> gap_days(np.array([[True], [False], [True]]), np.array([0.0, 10.0, 30.0]), np.array([0.0, 12.0, 40.0]))[:, 0]
    array([ 0., 12., 10.], dtype=float32)
    """
    n_t, rest = valid.shape[0], valid.shape[1:]
    if n_t == 0:
        return np.full((len(tq), *rest), np.nan, dtype=np.float32)
    v = valid.reshape(n_t, -1)
    idx = np.arange(n_t)[:, None]
    prev = np.maximum.accumulate(np.where(v, idx, -1), axis=0)  # last clear index at or before each date
    nxt = np.minimum.accumulate(np.where(v, idx, n_t)[::-1], axis=0)[::-1]  # first at or after
    t_ext = np.append(np.asarray(t, np.float64), np.nan)  # index -1 and n_t both read NaN
    right = np.searchsorted(t, tq, side="right")  # dates <= tq are [0, right)
    left = np.searchsorted(t, tq, side="left")  # dates >= tq are [left, T)
    before = np.where((right > 0)[:, None], prev[np.maximum(right - 1, 0)], -1)
    after = np.where((left < n_t)[:, None], nxt[np.minimum(left, n_t - 1)], n_t)
    # fmin: NaN only where neither side has a clear observation
    out = np.fmin(tq[:, None] - t_ext[before], t_ext[after] - tq[:, None])
    return out.astype(np.float32).reshape(len(tq), *rest)


def _to_series(flat: np.ndarray, rows: slice) -> np.ndarray:
    """Columns ``rows`` of a (A * B, N) block view -> (n, A * B) contiguous: one series per pixel."""
    part = flat[:, rows]
    out = np.empty((part.shape[1], part.shape[0]), dtype=flat.dtype)
    for start in range(0, part.shape[1], 256):  # a few hundred pixels at a time: cache-sized transposes
        out[start:start + 256] = part[:, start:start + 256].T
    return out


def _transpose_into(dst: np.ndarray, src: np.ndarray, rows: int = 256) -> None:
    """``dst[..., n] = src[n, ...]``: the first axis of ``src`` becomes the last of ``dst``, a few hundred
    rows of ``src`` at a time.

    A whole transpose walks one of the two arrays with a stride of a full row, missing the cache on every
    element; slabs whose rows fit in the cache are about 3x faster.
    """
    for start in range(0, src.shape[0], rows):
        dst[..., start:start + rows] = np.moveaxis(src[start:start + rows], 0, -1)


def fill_pixels(optical: np.ndarray, *rest: np.ndarray, spec: FillSpec) -> np.ndarray:
    """Reconstruct one block of a pixel method.

    Parameters
    ----------
    optical : ndarray (T, C, Y, X)
        Reflectance; NaN where not observed.
    *rest : ndarray
        The clear mask (T, Y, X) if ``spec.has_mask``, then SAR (Ts, S, Y, X) if the plan uses SAR.
    spec : FillSpec

    Returns
    -------
    ndarray (Tq, K, Y, X) float32
        The outputs of ``spec.outputs`` stacked along the second axis, as :func:`fill_patch` returns them.
    """
    check_reflectance_values(optical, where=" (a block being computed)")
    n_time, n_band, ny, nx = optical.shape
    n_pix, n_query = ny * nx, len(spec.query_times)
    rest = list(rest)
    mask = rest.pop(0).reshape(n_time, n_pix) if spec.has_mask else None
    sar = rest.pop(0) if spec.plan.use_sar else None
    native = spec.method.native_function()
    if native is not None and sar is None:
        return _fill_native(native, optical.reshape(n_time, n_band, n_pix), mask, spec).reshape(n_query, -1, ny, nx)
    flat = optical.reshape(n_time * n_band, n_pix)
    sar_flat = None if sar is None else sar.reshape(-1, n_pix)
    n_out = len(spec.method_outputs)
    packed = np.empty((n_query, n_band * n_out + 1 + int(spec.gap_days), n_pix), dtype=np.float32)
    q_idx, t_idx = _pass_through_index(spec) if spec.keep_observed else (np.empty(0, int), np.empty(0, int))
    q_run, t_run = _as_slice(q_idx), _as_slice(t_idx)
    # Slab by slab, every step while the slab is in cache: to (N, T, C) series with unit-stride spectra
    # (what the kernels want), the kernel, the pass-through, and back to the cube's (time, band, y, x).
    for start in range(0, n_pix, _SLAB_PIXELS):
        rows = slice(start, min(start + _SLAB_PIXELS, n_pix))
        values = _to_series(flat, rows).reshape(-1, n_time, n_band)
        valid = _all_bands_finite(values, axis=-1)
        if mask is not None:
            valid &= _to_series(mask, rows).astype(bool)
        s = None if sar_flat is None else _to_series(sar_flat, rows).reshape(-1, *sar.shape[:2])
        outputs = _kernel_call(spec, values, valid, s)
        filled = outputs["optical"]
        observed = np.zeros((values.shape[0], n_query), dtype=bool)
        if q_idx.size:
            hit = valid[:, t_idx]  # (n, K): the query time is a clear observation of that pixel
            observed[:, q_idx] = hit
            if q_run is not None and t_run is not None:  # the common case (query = optical times): in place
                _copy_spectra(filled[:, q_run], values[:, t_run], hit)
            else:  # write only the hits
                n_hit, k_hit = np.nonzero(hit)
                filled[n_hit, q_idx[k_hit]] = values[n_hit, t_idx[k_hit]]
        for k, name in enumerate(spec.method_outputs):
            _transpose_into(packed[:, k * n_band:(k + 1) * n_band, rows], outputs[name])
        _transpose_into(packed[:, n_band * n_out, rows], observed)
        if spec.gap_days:
            packed[:, n_band * n_out + 1, rows] = gap_days(valid.T, spec.days, spec.query_days)
    return packed.reshape(n_query, -1, ny, nx)


def _fill_native(native: Any, values: np.ndarray, mask: np.ndarray | None, spec: FillSpec) -> np.ndarray:
    """:func:`fill_pixels` for a kernel written for the cube's layout: (T, C, N) in, (Tq, K, N) out, with
    no transposing copies at all."""
    n_time, n_band, n_pix = values.shape
    n_query = len(spec.query_times)
    valid = _all_bands_finite(values, axis=1)  # (T, N)
    if mask is not None:
        valid &= mask.astype(bool)
    t, tq, kwargs = spec.days, spec.query_days, spec.plan.kwargs_dict
    packed = np.empty((n_query, n_band + 1 + int(spec.gap_days), n_pix), dtype=np.float32)
    packed[:, n_band] = 0.0  # observed
    q_idx, t_idx = _pass_through_index(spec) if spec.keep_observed else (np.empty(0, int), np.empty(0, int))
    for start in range(0, n_pix, _SLAB_PIXELS):
        rows = slice(start, min(start + _SLAB_PIXELS, n_pix))
        v, a = values[:, :, rows], valid[:, rows]
        out = packed[:, :n_band, rows]
        out[...] = native(v, a, t, tq, edges=spec.edges, **kwargs)
        if q_idx.size:  # pass-through of the clear observations
            hit = a[t_idx]  # (K, n)
            packed[q_idx, n_band, rows] = hit
            q_run, t_run = _as_slice(q_idx), _as_slice(t_idx)
            if q_run is not None and t_run is not None:  # the common case (query = optical times): in place
                _blend(out[q_run], v[t_run], hit)
            else:
                for q, i in zip(q_idx, t_idx, strict=True):
                    np.copyto(out[q], v[i], where=a[i][None])
    if spec.gap_days:
        packed[:, n_band + 1] = gap_days(valid, t, tq)
    return packed


def fill_patch(
    optical: np.ndarray,
    *rest: np.ndarray,
    spec: FillSpec,
    offset: tuple[int, int],
) -> np.ndarray:
    """Reconstruct one block of a patch method, from the block and its halo.

    Parameters
    ----------
    optical : ndarray (T, C, Y + 2h, X + 2h)
        The block with ``h = spec.halo`` pixels of its neighbours on every side (NaN beyond
        the cube's edge).
    *rest : ndarray
        The clear mask (T, Y + 2h, X + 2h) if ``spec.has_mask`` (False beyond the edge), then SAR
        (Ts, S, Y + 2h, X + 2h) if the plan uses SAR.
    spec : FillSpec
    offset : (int, int)
        Row and column of the window's first pixel in the cube's grid.

    Returns
    -------
    ndarray (Tq, K, Y, X) float32
        The outputs of ``spec.outputs`` stacked along the second axis, halo trimmed: C bands per
        method output, then ``observed`` (0 or 1), then ``gap_days`` if asked for. (One array, so
        that a dask task returns one chunk; ``fill`` splits it lazily.)
    """
    h = spec.halo
    values = np.asarray(optical, dtype=np.float32)
    check_reflectance_values(values, where=" (a block being computed)")
    valid = _all_bands_finite(values, axis=1)
    rest = list(rest)
    if spec.has_mask:
        valid &= np.asarray(rest.pop(0)).astype(bool)
    sar = rest.pop(0) if spec.plan.use_sar else None
    outputs = _kernel_call(spec, values, valid, sar, offset=tuple(int(o) for o in offset))
    n_query, n_band = len(spec.query_times), values.shape[1]
    core = (slice(None), slice(None), slice(h, values.shape[2] - h), slice(h, values.shape[3] - h))
    window = (n_query, n_band, *values.shape[2:])
    core_shape = (n_query, n_band, values.shape[2] - 2 * h, values.shape[3] - 2 * h)
    for name, array in outputs.items():
        if array.shape == window:  # the whole window: trimmed here
            outputs[name] = array[core]
        elif array.shape != core_shape:  # (or the core alone, for kernels that compute only that)
            raise XreconError(f"method {spec.method.name!r} returned {name} of shape {array.shape}; expected "
                              f"(Tq, C, Y, X) = {window} for its window, or {core_shape} for its core")
    values, valid = values[core], valid[core[:1] + core[2:]]
    filled = outputs["optical"].copy()
    observed = np.zeros((n_query, *valid.shape[1:]), dtype=bool)
    if spec.keep_observed:
        q_idx, t_idx = _pass_through_index(spec)
        for q, t in zip(q_idx, t_idx, strict=True):
            observed[q] = valid[t]
            np.copyto(filled[q], values[t], where=valid[t][None])
    parts = [filled] + [outputs[name] for name in spec.method_outputs[1:]]
    parts.append(observed[:, None].astype(np.float32))
    if spec.gap_days:
        parts.append(gap_days(valid, spec.days, spec.query_days)[:, None])
    return np.concatenate(parts, axis=1)
