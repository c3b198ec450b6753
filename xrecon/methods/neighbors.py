"""Same-date neighbours, related to each pixel by its offset from them: a spatio-temporal classical method.

For a pixel-date to fill, the clear observations of the **same date** in a square window around the pixel
(its neighbours, the pixel itself excluded; each neighbour as its anomaly from its own temporal mean) are
averaged, and the pixel's **offset** from that neighbourhood is added. The offset is measured on the dates
when the pixel and enough of its neighbours were both clear: by default (``adjust="local"``) it is
interpolated linearly in time between the co-observed dates around the date to fill, so a pixel that drifts
away from its neighbourhood over the season is followed; ``"offset"`` uses its mean over all co-observed
dates, ``"regression"`` a least-squares line (intercept, slope shrunk towards 1). The window grows (radius
``radius``, ``2 * radius``, ``4 * radius``... up to ``max_radius`` pixels) until it holds at least
``min_neighbors`` clear neighbours. Dates with none in reach stay gaps of the *adjusted* series
(observations plus spatial estimates), which the temporal ``fallback`` method then fills; any query time is
answered by that same temporal interpolation of the adjusted series (exact at the dates with an estimate).

Everything is array code: box sums come from one summed-area table per window, in fixed-point integers
(reflectance x 2**20), so they are exact and the result does not depend on where a chunk starts: with
``halo >= max_radius`` the reconstruction is the same for every chunking, bit for bit.

The registered method ``"neighbors"`` has ``halo = MAX_RADIUS`` (8 px) and a build step that refuses a
``max_radius`` larger than the registration's halo; register a variant for a longer reach::

    xrecon.methods.register("neighbors-32", fill_neighbors, footprint="patch", halo=32, build=build,
                            options=OPTIONS)

See ``docs/neighbors.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from xrecon.errors import MethodError
from xrecon.methods import _common
from xrecon.methods.registry import register

if TYPE_CHECKING:
    from xrecon.methods.registry import BuildRequest, Method, Plan

__all__ = ["ADJUSTS", "FALLBACKS", "MAX_RADIUS", "OPTIONS", "build", "fill_neighbors", "window_radii"]

#: The halo of the registered ``"neighbors"`` method, and its largest window radius (pixels).
MAX_RADIUS = 8
#: Temporal methods that may fill the dates without neighbours in reach (with their default options).
FALLBACKS = ("linear", "whittaker", "harmonic")
#: The options the method takes (besides ``edges``).
OPTIONS = ("radius", "max_radius", "min_neighbors", "min_common", "adjust", "fallback")
#: How a pixel is related to its neighbourhood: its offset interpolated in time ("local", the default), its
#: mean offset ("offset") or a line (intercept and slope, "regression").
ADJUSTS = ("local", "regression", "offset")
# Ridge on the regression slope, pulling it towards 1 (an offset) when the neighbourhood mean hardly varies
# over the co-observed dates: in reflectance^2 summed over those dates (~ 10 dates x 0.01^2).
_RIDGE = 1e-3

# Fixed point for exact (order-independent) box sums: 2**-20 ~ 1e-6 reflectance, far below sensor noise.
_SCALE = 2.0**20


def window_radii(radius: int, max_radius: int) -> tuple[int, ...]:
    """The window radii tried in turn: ``radius``, doubled until ``max_radius``, which comes last.

    Examples
    --------
    >>> window_radii(2, 8), window_radii(3, 8), window_radii(8, 8)
    ((2, 4, 8), (3, 6, 8), (8,))
    """
    radii, r = [], radius
    while r < max_radius:
        radii.append(r)
        r *= 2
    return (*radii, max_radius)


def check_options(*, radius: Any = 2, max_radius: Any = MAX_RADIUS, min_neighbors: Any = 4, min_common: Any = 1,
                  adjust: Any = "local", fallback: Any = "linear", halo: int | None = None) -> dict[str, Any]:
    """The options, checked (MethodError naming the bad one); ``halo``: the registration's, when known."""
    name = "neighbors"
    radius = _common.check_int(name, "radius", radius, 1)
    max_radius = _common.check_int(name, "max_radius", max_radius, radius)
    if halo is not None and max_radius > halo:
        raise MethodError(
            f"method {name!r}: option max_radius={max_radius} exceeds the method's halo ({halo} px), so the result "
            f"would depend on the chunking; use max_radius <= {halo}, or register a variant with a larger halo "
            "(see docs/neighbors.md)"
        )
    min_neighbors = _common.check_int(name, "min_neighbors", min_neighbors, 1)
    min_common = _common.check_int(name, "min_common", min_common, 1)
    if not isinstance(adjust, str) or adjust not in ADJUSTS:
        raise MethodError(f"method {name!r}: option adjust must be one of {list(ADJUSTS)}, got {adjust!r}")
    if not isinstance(fallback, str) or fallback not in FALLBACKS:
        raise MethodError(f"method {name!r}: option fallback must be one of {list(FALLBACKS)}, got {fallback!r}")
    return {"radius": radius, "max_radius": max_radius, "min_neighbors": min_neighbors, "min_common": min_common,
            "adjust": adjust, "fallback": fallback}


def build(method: Method, request: BuildRequest) -> Plan:
    """The graph-build step: check option names and values against the registration's halo; freeze them."""
    from xrecon.methods.registry import Plan

    method.check_option_names(request.options)
    _common.check_edges(request.edges)
    return Plan.of(check_options(**request.options, halo=method.halo))


def _window_sums(src: np.ndarray, r: int, out: np.ndarray, axis: int) -> None:
    """``out[y] = src[min(y + r + 1, n)] - src[max(y - r, 0)]`` along ``axis`` (-2 or -1) of a cumulative
    table ``src`` of n + 1 entries there, its first one 0: sums over the clipped windows of radius ``r``.

    Written region by region with one operation each (a copy where the window is clipped at the start,
    whose ``src[0]`` is 0; a subtraction elsewhere), no padding, no temporaries."""
    n = src.shape[axis] - 1

    def at(a: np.ndarray, start: int, stop: int) -> np.ndarray:
        return a[..., start:stop, :] if axis == -2 else a[..., start:stop]

    m = max(n - r, 0)  # windows that end inside: y + r + 1 <= n
    top = min(r + 1, n)  # windows that start at the edge: y - r <= 0
    np.copyto(at(out, 0, min(top, m)), at(src, r + 1, r + 1 + min(top, m)))  # y < r + 1, y < m
    if m > top:  # r + 1 <= y < m
        np.subtract(at(src, 2 * r + 2, r + 1 + m), at(src, 1, m - r), out=at(out, top, m))
    if top > m:  # m <= y < r + 1: the whole axis
        np.copyto(at(out, m, top), at(src, n, n + 1))
    lo = max(m, top)
    if n > lo:  # y >= m, y >= r + 1: clipped at the end
        np.subtract(at(src, n, n + 1), at(src, lo - r, n - r), out=at(out, lo, n))


def _box(sat: np.ndarray, r: int, out: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """Sums over the (2r+1)^2 boxes (clipped to the window) from a summed-area table (..., Y+1, X+1).

    The table's first row and column are 0, so a box clipped at the top (left) edge needs no subtraction
    and one clipped at the bottom (right) edge reads the table's last row (column). Into ``rows``
    (..., Y, X+1) and ``out`` (..., Y, X) when given (buffers reused from date to date)."""
    ny, nx = sat.shape[-2] - 1, sat.shape[-1] - 1
    lead = sat.shape[:-2]
    rows = np.empty((*lead, ny, nx + 1), sat.dtype) if rows is None else rows
    out = np.empty((*lead, ny, nx), sat.dtype) if out is None else out
    _window_sums(sat, r, rows, -2)
    _window_sums(rows, r, out, -1)
    return out


def spatial_estimates(values: np.ndarray, valid: np.ndarray, *, radii: tuple[int, ...], min_neighbors: int,
                      min_common: int, adjust: str = "local", t: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Offset-corrected neighbourhood means at every cloudy pixel-date that has enough clear neighbours.

    Parameters
    ----------
    values : ndarray (T, C, Y, X)
        Reflectance; anything where not ``valid``.
    valid : ndarray of bool (T, Y, X)
    radii : tuple of int
        Window radii tried in turn (pixels).
    min_neighbors, min_common : int
        See :func:`fill_neighbors`.

    Returns
    -------
    estimate : ndarray of float32 (T, C, Y, X)
        NaN where there is no estimate (and at clear pixel-dates).
    done : ndarray of bool (T, Y, X)
        Where there is one.
    """
    nt, nc, ny, nx = values.shape
    obs = np.where(valid[:, None], values, np.float32(0)).astype(np.float32)  # (T, C, Y, X)
    # Each neighbour enters as its anomaly from its own temporal mean, so that which neighbours are clear
    # on a date (cloud edges) does not bias the neighbourhood mean; the pixel's adjustment absorbs the rest.
    level = obs.sum(0, dtype=np.float64) / np.maximum(valid.sum(0), 1)  # (C, Y, X)
    level_fixed = level * _SCALE
    # Neighbourhood means and counts per radius, one date at a time so the integer tables stay in cache.
    means = [np.empty((nt, nc, ny, nx), np.float32) for _ in radii]
    counts = [np.empty((nt, ny, nx), np.int32) for _ in radii]
    # Buffers reused from date to date (a few hundred KiB each for a chunk: they stay in cache).
    own = np.empty((nc + 1, ny, nx), dtype=np.int64)
    sat = np.zeros((nc + 1, ny + 1, nx + 1), dtype=np.int64)  # summed-area table, zero first row/col
    rows, box = np.empty((nc + 1, ny, nx + 1), np.int64), np.empty((nc + 1, ny, nx), np.int64)
    fixed, inv = np.empty((nc, ny, nx), np.float64), np.empty((ny, nx), np.float64)
    for k in range(nt):  # a loop over dates (vectorised over pixels), not over pixels
        # fixed point, so that box sums are exact and do not depend on where the window starts
        np.multiply(obs[k], _SCALE, out=fixed)
        fixed -= level_fixed
        np.copyto(fixed, 0.0, where=~valid[k])
        np.rint(fixed, out=own[:nc], casting="unsafe")
        own[nc] = valid[k]
        np.cumsum(own, axis=-1, out=sat[:, 1:, 1:])
        np.cumsum(sat[:, 1:, 1:], axis=-2, out=sat[:, 1:, 1:])
        for i, r in enumerate(radii):
            _box(sat, r, box, rows)
            box -= own  # neighbours only: the pixel itself is excluded
            counts[i][k] = box[nc]
            np.maximum(box[nc], 1, out=inv, casting="unsafe")
            inv *= _SCALE
            np.divide(1.0, inv, out=inv)
            np.multiply(box[:nc], inv, out=means[i][k], casting="unsafe")
    estimate = np.full((nt, nc, ny, nx), np.nan, dtype=np.float32)
    done = np.zeros((nt, ny, nx), dtype=bool)
    t = np.arange(nt, dtype=np.float64) if t is None else np.asarray(t, np.float64)
    todo = ~valid
    for mean, count in zip(means, counts, strict=True):
        if not todo.any():
            break
        enough = count >= min_neighbors  # (T, Y, X)
        common = valid & enough  # dates when the pixel and its neighbourhood are both seen
        n_common = common.sum(0)  # (Y, X)
        use = enough & todo & (n_common >= min_common)[None]  # (T, Y, X)
        if adjust == "local":
            _local_estimates(estimate, use, common, mean, obs, t)
        else:
            n = np.maximum(n_common, 1)
            if adjust == "offset":
                diff = np.where(common[:, None], obs - mean, 0.0).sum(0, dtype=np.float64)  # (C, Y, X)
                pred = mean + (diff / n)[None]
            else:
                m = np.where(common[:, None], mean, 0.0).astype(np.float64)
                sm, sv = m.sum(0), np.where(common[:, None], obs, 0.0).sum(0, dtype=np.float64)
                smm, svm = (m * m).sum(0) - sm * sm / n, (m * obs).sum(0) - sm * sv / n
                slope = (svm + _RIDGE) / (smm + _RIDGE)
                pred = (sv / n)[None] + slope[None] * (mean - (sm / n)[None])
            np.copyto(estimate, pred.astype(np.float32), where=use[:, None])
        done |= use
        todo &= ~use
    return estimate, done


def _local_estimates(estimate: np.ndarray, use: np.ndarray, common: np.ndarray, mean: np.ndarray, obs: np.ndarray,
                     t: np.ndarray) -> None:
    """Write, where ``use``, neighbourhood mean + the pixel's offset interpolated in time between the
    co-observed dates before and after (held beyond them). Only the pixel-dates to fill are computed."""
    nt, nc, ny, nx = obs.shape
    n_pix = ny * nx
    flat = np.flatnonzero(use)  # (M,) positions in (T, Y, X)
    ti, pix = np.divmod(flat, n_pix)
    # Only the pixels with something to fill (after the first radius, often few): their co-observed
    # dates before and after each date, running over the dates (an accumulate along the first axis would
    # stride through memory).
    cols = np.flatnonzero(use.reshape(nt, n_pix).any(0))
    col_of = np.zeros(n_pix, np.intp)
    col_of[cols] = np.arange(cols.size)
    seen = common.reshape(nt, n_pix)[:, cols]  # (T, P)
    before, after = np.empty((nt, cols.size), np.int32), np.empty((nt, cols.size), np.int32)
    last = np.full(cols.size, -1, np.int32)
    for k in range(nt):
        np.copyto(last, k, where=seen[k])
        before[k] = last
    last.fill(nt)
    for k in range(nt - 1, -1, -1):
        np.copyto(last, k, where=seen[k])
        after[k] = last
    where = ti * cols.size + col_of[pix]
    a, b = before.ravel()[where], after.ravel()[where]
    a = np.where(a >= 0, a, b)  # before the first co-observed date: hold it
    b = np.where(b < nt, b, a)  # after the last: hold that
    span = t[b] - t[a]
    w = np.divide(t[ti] - t[a], span, out=np.zeros_like(span), where=span > 0).astype(np.float32)  # (M,)
    wa = np.float32(1) - w
    mean_flat, obs_flat, out_flat = mean.reshape(-1), obs.reshape(-1), estimate.reshape(-1)
    at_a, at_b, at_t = a * (nc * n_pix) + pix, b * (nc * n_pix) + pix, ti * (nc * n_pix) + pix
    for c in range(nc):  # (T, C, Y, X) positions of band c at dates a, b and t
        if c:
            at_a += n_pix
            at_b += n_pix
            at_t += n_pix
        off_a = np.take(obs_flat, at_a) - np.take(mean_flat, at_a)
        off_b = np.take(obs_flat, at_b) - np.take(mean_flat, at_b)
        out_flat[at_t] = np.take(mean_flat, at_t) + wa * off_a + w * off_b


def _temporal(fallback: str, values: np.ndarray, valid: np.ndarray, t: np.ndarray, tq: np.ndarray,
              edges: str) -> np.ndarray:
    """The fallback method on (T, C, N) series -> (Tq, C, N) float32."""
    from xrecon.methods import registry

    method = registry.get(fallback)
    native = method.native_function()
    if native is not None:
        return native(values, valid, t, tq, edges=edges)
    series = np.ascontiguousarray(values.transpose(2, 0, 1))  # (N, T, C)
    out = method.kernel_function()(series, np.ascontiguousarray(valid.T), t, tq, edges=edges)
    return np.ascontiguousarray(np.asarray(out, np.float32).transpose(1, 2, 0))


def fill_neighbors(
    values: np.ndarray,
    valid: np.ndarray,
    t: np.ndarray,
    tq: np.ndarray,
    *,
    edges: str = "hold",
    offset: tuple[int, int] = (0, 0),
    radius: int = 2,
    max_radius: int = MAX_RADIUS,
    min_neighbors: int = 4,
    min_common: int = 1,
    adjust: str = "local",
    fallback: str = "linear",
) -> np.ndarray:
    """Reconstruct a window from same-date neighbours corrected by each pixel's offset, then in time.

    A patch kernel (see :mod:`xrecon.methods.registry`): ``fill`` hands it a chunk plus its halo.

    Parameters
    ----------
    values : ndarray (T, C, Y, X)
        Reflectance; NaN (or anything) where not ``valid``.
    valid : ndarray of bool (T, Y, X)
    t, tq : ndarray of float64
        Observation dates (T,), strictly increasing, and query dates (Tq,), in days.
    edges : {"hold", "nan"}
        The edges rule, applied to the adjusted series (a date with a spatial estimate counts as data).
    offset : (int, int)
        The window's position in the cube (unused: the method draws no random numbers).
    radius : int
        Radius in pixels of the first window tried ((2 radius + 1)^2 pixels; 2: 5 x 5).
    max_radius : int
        Radius in pixels of the largest window (doubling from ``radius``); at most the method's halo.
        Default 8 (windows of radius 2, 4, 8): on the real cubes of ``benchmarks/realdata_gaps.py``
        the larger reach is what fills cloud-shaped and block gaps; ``max_radius=2`` is about 1.4x
        faster and as good for single-pixel gaps.
    min_neighbors : int
        Clear neighbours (same date, pixel excluded) a window needs to give an estimate.
    min_common : int
        Dates on which the pixel and such a neighbourhood are both clear, needed to know its adjustment.
    adjust : {"local", "regression", "offset"}
        How the pixel relates to its neighbourhood on those dates: their difference interpolated in time
        between the co-observed dates around each date ("local"), its mean over all of them ("offset"), or
        a least-squares line (intercept, slope shrunk towards 1: "regression").
    fallback : {"linear", "whittaker", "harmonic"}
        Temporal method (default options) through the adjusted series, for dates without neighbours in
        reach and for query times between dates.

    Returns
    -------
    ndarray of float32 (Tq, C, Y, X)
        NaN for a pixel without any clear observation.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> field = rng.random((1, 1, 9, 9))                      # a fixed spatial pattern
    >>> values = (field + np.linspace(0, 0.5, 4)[:, None, None, None]).astype(np.float32)  # (4, 1, 9, 9)
    >>> valid = np.ones((4, 9, 9), bool)
    >>> valid[2, 3:6, 3:6] = False                             # a 3 x 3 cloud on date 2
    >>> t = np.array([0.0, 10, 20, 30])
    >>> values[2] += 0.2                                       # a date-wide change: linear cannot know it
    >>> out = fill_neighbors(values, valid, t, t)
    >>> lin = (values[1] + values[3]) / 2                      # what linear interpolation gives
    >>> err = np.abs(out[2, 0, 3:6, 3:6] - values[2, 0, 3:6, 3:6]).max()
    >>> err_linear = np.abs(lin[0, 3:6, 3:6] - values[2, 0, 3:6, 3:6]).max()
    >>> bool(err < 0.2 * err_linear)
    True
    """
    options = check_options(radius=radius, max_radius=max_radius, min_neighbors=min_neighbors,
                            min_common=min_common, adjust=adjust, fallback=fallback)
    edges = _common.check_edges(edges)
    values = np.asarray(values, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    if values.ndim != 4 or valid.shape != (values.shape[0], *values.shape[2:]):
        raise MethodError(f"method 'neighbors': values must be (T, C, Y, X) and valid (T, Y, X), got "
                          f"{values.shape} and {valid.shape}")
    t, tq = np.asarray(t, np.float64), np.asarray(tq, np.float64)
    nt, nc, ny, nx = values.shape
    estimate, done = spatial_estimates(
        values, valid, radii=window_radii(options["radius"], options["max_radius"]),
        min_neighbors=options["min_neighbors"], min_common=options["min_common"], adjust=options["adjust"], t=t,
    )
    adjusted = np.where(valid[:, None], values, estimate)  # (T, C, Y, X): observations + spatial estimates
    ok = valid | done
    series, ok = adjusted.reshape(nt, nc, ny * nx), ok.reshape(nt, ny * nx)
    if options["fallback"] == "linear" and tq.shape == t.shape and np.array_equal(tq, t):
        # Queries at the dates (fill's default): linear interpolation returns the adjusted series itself
        # (exactly) wherever it has data, so only pixels with gaps left need the temporal pass.
        out = series.copy()
        left = np.flatnonzero(~ok.all(0))
        if left.size:
            out[:, :, left] = _temporal("linear", np.ascontiguousarray(series[:, :, left]),
                                        np.ascontiguousarray(ok[:, left]), t, tq, edges)
    else:
        out = _temporal(options["fallback"], series, ok, t, tq, edges)
    out = out.reshape(len(tq), nc, ny, nx)
    if options["fallback"] != "linear":
        # a smoothing fallback must not move the spatial estimate at its own date (linear is exact there)
        pos = np.searchsorted(t, tq)
        for q in np.flatnonzero((pos < nt) & (t[np.minimum(pos, nt - 1)] == tq)):
            k = pos[q]
            np.copyto(out[q], estimate[k], where=done[k][None])
    return out


# Registered here, from this module's own constants: the halo is the reach the build step allows.
register(
    "neighbors",
    f"{__name__}:fill_neighbors",
    footprint="patch",
    halo=MAX_RADIUS,
    build=f"{__name__}:build",
    options=OPTIONS,
    summary=f"same-date neighbours (5 x 5, growing to max_radius <= {MAX_RADIUS} px) plus each pixel's offset, "
            "then linear",
)

