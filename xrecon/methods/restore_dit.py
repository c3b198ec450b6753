"""RESTORE-DiT behind ``fill``: the graph-build step and the patch kernel (the method's adapter).

The network and its sampling loop are :mod:`xrecon.models.restore_dit`; this module turns a block of a
cube into the network's tiles and sequences and back. Nothing here imports torch at import time.

Tiles on a global grid
----------------------
Tiles of ``tile`` x ``tile`` pixels (default: the ``"tile"`` the checkpoint's metadata records, directly
or under ``"training"``, else 128, the authors'; ``overlap`` default ``tile // 4``) are laid on one grid
over the whole cube: tile ``(ky, kx)`` starts at row ``ky * s`` and column ``kx * s`` of the cube's grid,
``s = tile - overlap``, whatever the chunks (``ky``, ``kx`` may be
negative: tiles hang over the top and left edges, as over the others, and are padded there with
pixels that count as not observed). Where two tiles overlap their results are blended with weights
that rise as a cosine ramp over the ``overlap`` pixels at each side of a tile (1 in between), so that
the weights of overlapping tiles sum to 1 (``sin^2 + cos^2``) and no seam is left. A block computes
every tile that touches its core, reading it from the block's window (the core plus the method's halo),
hence the halo: a tile's output at one pixel depends on the whole tile, up to ``tile - 1`` pixels away,
so the registered halo (:data:`HALO` = 127) bounds the tile to 128 pixels (the authors' training tile).
For larger tiles register the method again with a larger halo (``xrecon.methods.register("restore-dit",
..., halo=255, replace=True)`` with the other arguments of this module's own ``register`` call).

The initial noise of each tile is keyed to the user's ``seed``, the tile's grid position, the temporal
window and the position in the tile (:func:`tile_noise`, through :mod:`xrecon.rng`; computed on the
model's device by :func:`noise_on`), never to a generator's state, so a fixed seed gives the same result
for any chunking and any order of the tasks (up to float32 rounding: the network runs the tiles of each
block in batches whose composition follows the chunking, and BLAS may round differently).

Frames, dates and temporal windows
----------------------------------
The network sees one sequence of frames: the optical dates, plus one wholly masked frame for every query
time that is not an optical date, inserted in date order ("anytime" reconstruction). Frame dates are
days since the checkpoint's ``config.date_origin`` (fractional days, so any year and multi-year cubes
work). A sequence longer than ``frames`` (default: the ``"frames"`` the checkpoint's metadata records,
directly or under ``"training"``, else 16) runs in overlapping windows of ``frames`` consecutive frames,
starting every ``frames // 2`` frames (the last one ends at the last frame); each query is taken from
the window whose centre is
nearest to it (the earlier one on a tie). Only the windows some query is taken from are run.

SAR aligned to the frames
-------------------------
SAR has its own time axis. Each frame gets, pixel by pixel, the SAR observation nearest in time within
``sar_window`` days (default 6, Sentinel-1's revisit; the earlier one on a tie), among the SAR dates
with a finite value at that pixel. Where none is in reach the network gets 0 in model units, i.e. the
normalization offset (the training mean): the network has no validity input for SAR, so this is its
"no information" value, but it cannot tell it from a real average backscatter. Without SAR in the cube
(or with an optical-only network) the network runs without its SAR branch.

Samples
-------
``n_samples`` samples are drawn per tile (batched). ``optical`` is their mean and ``optical_std`` their
standard deviation (ddof=1; 0 for ``n_samples=1``), converted to reflectance, both blended across tiles
with the tile weights. The spread measures how much the *network* hesitates given what it sees (the
observations, SAR and dates of the tile and window): it is large where the gap leaves several
reconstructions plausible to the model. It is not a calibrated error bar: it knows nothing of the
network's own bias, of errors in the cloud mask or of changes the inputs do not show, and with few
``steps`` (DPM-Solver++ with 1 step, the authors' choice) the samples differ only through their
initial noise. Clear observations at query times that are optical dates are returned as they are
(``optical_std`` = 0 there), as ``fill`` does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from xrecon import neural
from xrecon.errors import CheckpointError, MethodError
from xrecon.methods.registry import BuildRequest, Method, Plan, register
from xrecon.rng import hash_uniform
from xrecon.times import to_ns

__all__ = [
    "DEFAULTS",
    "HALO",
    "NotThisModelError",
    "OPTIONS",
    "align_sar",
    "blend_weights",
    "build",
    "fill_restore_dit",
    "sequence_frames",
    "temporal_windows",
    "tile_noise",
    "noise_on",
    "tile_noise_torch",
    "tile_origins",
]

#: The registered halo: tiles of up to HALO + 1 pixels (see the module docstring).
HALO = 127

#: Options of ``fill(method="restore-dit", ...)`` and their defaults (``frames``: see the module docstring).
DEFAULTS: dict[str, Any] = {
    "n_samples": 1, "steps": 1, "seed": 0, "sampler": "dpm++", "tile": None, "overlap": None,
    "frames": None, "sar_window": 6.0, "precision": "fp32",
}
OPTIONS = tuple(DEFAULTS)
DEFAULT_FRAMES = 16
DEFAULT_TILE = 128  # the authors' training tile
_NS_PER_DAY = 86_400 * 10**9


class NotThisModelError(CheckpointError, MethodError):
    """A checkpoint of another network: a bad checkpoint for this method, or the wrong method for it."""


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise MethodError(f"restore-dit: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _trained(model: Any, key: str, default: int) -> int:
    """What the checkpoint records of its training windows (``metadata[key]`` or ``metadata["training"][key]``)."""
    meta = model.metadata or {}
    training = meta.get("training")
    value = meta.get(key, training.get(key) if isinstance(training, dict) else None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def build(method: Method, request: BuildRequest) -> Plan:
    """Load (through the cache) and check the model against the cube and the options; freeze the plan."""
    from xrecon.diffusion import list_samplers
    from xrecon.models.cache import cached_model
    from xrecon.models.restore_dit import TileSizeError
    from xrecon.runtime import resolve_device, resolve_precision

    method.check_option_names(request.options)
    opts = {**DEFAULTS, **request.options}
    cube = request.cube
    model = cached_model(request.checkpoint, request.checkpoint_sha256, "cpu")
    if model.name != "restore-dit":
        raise NotThisModelError(f"method {method.name!r} runs a 'restore-dit' network; "
                                f"{os.path.basename(request.checkpoint)!r} holds a {model.name!r} model")
    # the network is RESTORE-DiT whatever name the method is registered under (e.g. with another halo)
    bands, sar_bands = neural.check_network("restore-dit", request.checkpoint, request.checkpoint_sha256,
                                            cube.bands, cube.sar_bands)
    patch = model.config.patch_size
    tile = _positive_int("tile", opts["tile"] if opts["tile"] is not None else _trained(model, "tile", DEFAULT_TILE))
    if tile % patch:
        raise TileSizeError(f"restore-dit: tile={tile} is not a multiple of the network's patch size {patch}; "
                            f"use e.g. tile={max(patch, tile // patch * patch)}")
    if tile - 1 > method.halo:
        raise MethodError(f"restore-dit: tile={tile} needs a halo of {tile - 1} pixels, the method {method.name!r} "
                          f"is registered with halo={method.halo} (tiles up to {method.halo + 1}); register it "
                          "again with a larger halo (see xrecon.methods.restore_dit)")
    overlap = _positive_int("overlap", opts["overlap"] if opts["overlap"] is not None else tile // 4, 0)
    if 2 * overlap > tile:
        raise MethodError(f"restore-dit: overlap={overlap} must be at most half the tile ({tile // 2})")
    frames = opts["frames"]
    if frames is None:
        frames = _trained(model, "frames", DEFAULT_FRAMES)
    frames = _positive_int("frames", frames)
    sar_window = opts["sar_window"]
    if isinstance(sar_window, bool) or not isinstance(sar_window, int | float | np.number) or not sar_window >= 0:
        raise MethodError(f"restore-dit: sar_window must be a number of days >= 0, got {sar_window!r}")
    if opts["sampler"] not in list_samplers():
        raise MethodError(f"restore-dit: unknown sampler {opts['sampler']!r}; known: {list_samplers()}")
    resolve_precision(opts["precision"], resolve_device(request.device))
    if request.batch_size is not None:
        _positive_int("batch_size", request.batch_size)
    use_sar = sar_bands is not None
    return Plan.of(
        {
            "checkpoint": request.checkpoint, "sha256": request.checkpoint_sha256,
            "bands": bands, "sar_bands": sar_bands, "halo": method.halo,
            "times": to_ns(cube.times), "query_times": to_ns(request.query_times),
            "sar_times": to_ns(cube.sar_times) if use_sar else None,
            "n_samples": _positive_int("n_samples", opts["n_samples"]), "steps": _positive_int("steps", opts["steps"]),
            "seed": _positive_int("seed", opts["seed"], -(2**62)), "sampler": opts["sampler"],
            "tile": tile, "overlap": overlap, "frames": frames, "sar_window": float(sar_window),
            "batch_size": request.batch_size, "device": request.device, "precision": opts["precision"],
        },
        use_sar=use_sar,
    )


# --------------------------------------------------------------------------------------------------
# pure numpy helpers (tested on their own)

def sequence_frames(times: Sequence[int], query_times: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network's frame sequence: the optical times plus the query times that are not optical times.

    Returns (frame times in ns, sorted; optical index of each frame or -1 for an inserted masked frame;
    frame index of each query).

    Examples
    --------
    >>> f, src, q = sequence_frames([10, 20, 30], [20, 25])
    >>> f.tolist(), src.tolist(), q.tolist()
    ([10, 20, 25, 30], [0, 1, -1, 2], [1, 2])
    """
    t = np.asarray(times, dtype=np.int64)
    q = np.asarray(query_times, dtype=np.int64)
    extra = np.setdiff1d(q, t)
    frame_t = np.concatenate([t, extra])
    src = np.concatenate([np.arange(len(t)), np.full(len(extra), -1)])
    order = np.argsort(frame_t, kind="stable")
    frame_t, src = frame_t[order], src[order]
    return frame_t, src, np.searchsorted(frame_t, q)


def temporal_windows(n_frames: int, frames: int, query_frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping windows of ``frames`` frames (every ``frames // 2``, the last ending at the last frame)
    and, for each query frame, the window whose centre is nearest (the earlier on a tie).

    Returns (window starts, window index of each query).

    Examples
    --------
    >>> starts, pick = temporal_windows(10, 4, np.array([0, 3, 5, 9]))
    >>> starts.tolist(), pick.tolist()
    ([0, 2, 4, 6], [0, 1, 2, 3])
    """
    width = min(frames, n_frames)
    stride = max(1, width // 2)
    starts = list(range(0, n_frames - width + 1, stride))
    if starts[-1] != n_frames - width:
        starts.append(n_frames - width)
    starts_a = np.asarray(starts)
    centre = starts_a + (width - 1) / 2.0
    pick = np.abs(np.asarray(query_frame)[:, None] - centre[None, :]).argmin(axis=1)
    return starts_a, pick


def align_sar(sar: np.ndarray, sar_ns: Sequence[int], frame_ns: Sequence[int], window_days: float) -> np.ndarray:
    """SAR (Ts, S, Y, X) on its own dates -> (F, S, Y, X) aligned to the frames: per pixel, the finite SAR
    value nearest in time within ``window_days`` (the earlier on a tie), NaN where none is in reach.

    Examples
    --------
    >>> day = 86_400 * 10**9
    >>> s = np.array([1.0, np.nan, 3.0]).reshape(3, 1, 1, 1)
    >>> align_sar(s, [0, 5 * day, 9 * day], [5 * day, 20 * day], 6.0).ravel().tolist()  # day 5 is NaN
    [3.0, nan]
    """
    s_ns = np.asarray(sar_ns, dtype=np.int64)
    out = np.full((len(frame_ns), *sar.shape[1:]), np.nan, dtype=np.float32)
    limit = window_days * _NS_PER_DAY
    for f, t in enumerate(np.asarray(frame_ns, dtype=np.int64)):
        dist = np.abs(s_ns - t).astype(np.float64)
        order = np.lexsort((s_ns, dist))  # nearest first, the earlier on a tie
        for i in order:
            if dist[i] > limit:
                break
            gap = ~np.isfinite(out[f])
            if not gap.any():
                break
            np.copyto(out[f], sar[i], where=gap & np.isfinite(sar[i]))
    return out


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """(tile,) weights: 1 in the middle, a ``sin^2`` ramp over ``overlap`` pixels at each end, so that
    tiles every ``tile - overlap`` pixels sum to 1 everywhere.

    Examples
    --------
    >>> w = blend_weights(8, 2)
    >>> bool(np.allclose(w[6:] + w[:2], 1.0)), w[2:6].tolist()
    (True, [1.0, 1.0, 1.0, 1.0])
    """
    w = np.ones(tile, dtype=np.float64)
    if overlap:
        ramp = np.sin(np.pi * (np.arange(overlap) + 0.5) / (2 * overlap)) ** 2
        w[:overlap] = ramp
        w[tile - overlap:] = ramp[::-1]
    return w


def tile_origins(start: int, stop: int, tile: int, overlap: int) -> np.ndarray:
    """Grid indices k of the tiles (origin ``k * (tile - overlap)``) that touch rows ``start .. stop - 1``.

    Examples
    --------
    >>> tile_origins(0, 10, 8, 2).tolist()
    [-1, 0, 1]
    """
    s = tile - overlap
    first = -((tile - 1 - start) // s)  # ceil((start - tile + 1) / s)
    last = (stop - 1) // s
    return np.arange(first, last + 1)


def _tile_key(seed: int, ky: int, kx: int, window: int) -> int:
    """The key of one tile and window's noise: a hash of (seed, tile position on the global grid, window start)."""
    return int(hash_uniform(seed, np.array(0x5D1), np.array(ky), np.array(kx), np.array(window)) * 2.0**53)


def tile_noise(seed: int, ky: int, kx: int, window: int, shape: Sequence[int]) -> np.ndarray:
    """Standard normal noise of ``shape`` (n_samples, frames, C, tile, tile) for one tile and window, keyed
    to (seed, tile position on the global grid, window start) and each number's position in the tile.

    :func:`tile_noise_torch` computes the same numbers in torch on any device."""
    key = _tile_key(seed, ky, kx, window)
    n = int(np.prod(shape))
    lin = np.arange(0, 2 * n, 2, dtype=np.int64)
    u1 = hash_uniform(key, lin)
    lin += 1
    u2 = hash_uniform(key, lin)
    # Box-Muller, sqrt(-2 log1p(-u1)) cos(2 pi u2), in place
    np.negative(u1, out=u1)
    np.log1p(u1, out=u1)
    u1 *= -2.0
    np.sqrt(u1, out=u1)
    u2 *= 2.0 * np.pi
    np.cos(u2, out=u2)
    u1 *= u2
    return u1.astype(np.float32).reshape(shape)


def tile_noise_torch(seed: int, ky: int, kx: int, window: int, shape: Sequence[int],
                     device: Any = None) -> Any:
    """:func:`tile_noise` as a float32 torch tensor computed on ``device`` (default the CPU): the same numbers
    (see :mod:`xrecon.rng_torch`), hashed where the network runs instead of copied there from the CPU.

    Examples
    --------
    >>> z = tile_noise_torch(0, 1, -2, 0, (1, 2, 3, 4, 4))
    >>> bool((z.numpy() == tile_noise(0, 1, -2, 0, (1, 2, 3, 4, 4))).all())
    True
    """
    from xrecon.rng_torch import normal_from_key

    return normal_from_key(_tile_key(seed, ky, kx, window), int(np.prod(shape)), device).reshape(tuple(shape))


def noise_on(device: Any, seed: int, ky: int, kx: int, window: int, shape: Sequence[int]) -> Any:
    """:func:`tile_noise` as a float32 tensor on ``device``, computed there: in torch on a GPU (or any device
    but the CPU), with numpy on the CPU, whose single-threaded hash is as fast as torch's at one thread and
    does not slow down when torch's threads share busy cores (2.5 million numbers: 0.13-0.23 s with numpy,
    0.13-0.28 s with torch at one thread, 0.4 s at two on a loaded 2-core machine). The same numbers."""
    import torch

    if torch.device(device).type == "cpu":
        return torch.from_numpy(tile_noise(seed, ky, kx, window, shape))
    return tile_noise_torch(seed, ky, kx, window, shape, device)


# --------------------------------------------------------------------------------------------------
# the kernel

def fill_restore_dit(
    values: np.ndarray,
    valid: np.ndarray,
    t: np.ndarray,
    tq: np.ndarray,
    *,
    edges: str = "hold",
    offset: tuple[int, int],
    checkpoint: str,
    sha256: str | None,
    bands: tuple[int, ...],
    sar_bands: tuple[int, ...] | None,
    halo: int,
    times: tuple[int, ...],
    query_times: tuple[int, ...],
    sar_times: tuple[int, ...] | None = None,
    n_samples: int = 1,
    steps: int = 1,
    seed: int = 0,
    sampler: str = "dpm++",
    tile: int = 128,
    overlap: int = 32,
    frames: int = DEFAULT_FRAMES,
    sar_window: float = 6.0,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str = "fp32",
    sar: np.ndarray | None = None,
    sar_t: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """(T, C, Y, X) window (core + ``halo``) -> {"optical", "optical_std"} (Tq, C, Y, X), the core filled
    (the halo ring is NaN: ``fill`` trims it). See the module docstring for the tiles and windows."""
    import torch

    from xrecon.models.cache import cached_model, model_lock
    from xrecon.models.restore_dit import days_since_origin, sample
    from xrecon.runtime import autocast, resolve_device, resolve_precision

    model = cached_model(checkpoint, sha256, device)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    n_time, n_band, ny, nx = values.shape
    opt_idx = np.asarray(bands)
    out_mean = np.full((len(query_times), n_band, ny, nx), np.nan, dtype=np.float32)
    out_std = np.full_like(out_mean, np.nan)
    h = int(halo)
    core = (slice(h, ny - h), slice(h, nx - h))
    if ny <= 2 * h or nx <= 2 * h or not len(query_times):
        return {"optical": out_mean, "optical_std": out_std}

    frame_ns, src, q_frame = sequence_frames(times, query_times)
    starts, pick = temporal_windows(len(frame_ns), frames, q_frame)
    width = min(frames, len(frame_ns))
    frame_days = days_since_origin(frame_ns.astype("datetime64[ns]"), model.config.date_origin)
    use_sar = sar is not None and sar_bands is not None and model.config.n_sar_bands > 0

    # the tiles touching the core, on the global grid; their windows lie inside this window (halo >= tile - 1)
    s = tile - overlap
    kys = tile_origins(offset[0] + h, offset[0] + ny - h, tile, overlap)
    kxs = tile_origins(offset[1] + h, offset[1] + nx - h, tile, overlap)
    w1 = blend_weights(tile, overlap)
    weight = (w1[:, None] * w1[None, :]).astype(np.float32)  # (tile, tile)
    # Inputs are prepared over the tiles' bounding box (box), results accumulated over the core only (the
    # rest is trimmed); both give each pixel exactly what the whole window would.
    r0, c0 = int(kys[0]) * s - offset[0], int(kxs[0]) * s - offset[1]  # the box's origin in the window
    box = (slice(r0, int(kys[-1]) * s - offset[0] + tile), slice(c0, int(kxs[-1]) * s - offset[1] + tile))
    n_opt, cy, cx = len(opt_idx), ny - 2 * h, nx - 2 * h

    def in_core(start: int, size: int) -> tuple[slice, slice]:
        """A tile's rows (or columns) ``start .. start + tile - 1`` of the window that lie in the core:
        as a slice of the tile and as a slice of the core."""
        lo, hi = max(start, h), min(start + tile, size - h)
        return slice(lo - start, hi - start), slice(lo - h, hi - h)

    spans = {(int(ky), int(kx)): (in_core(int(ky) * s - offset[0], ny), in_core(int(kx) * s - offset[1], nx))
             for ky in kys for kx in kxs}
    acc_m = np.zeros((len(query_times), n_opt, cy, cx), dtype=np.float64)
    acc_s = np.zeros_like(acc_m) if n_samples > 1 else None  # the spread of one sample is 0
    acc_w = np.zeros((cy, cx), dtype=np.float64)
    for (ty, ry), (tx, rx) in spans.values():
        acc_w[ry, rx] += weight[ty, tx]

    # model inputs for the box, frame by frame: model units (the model's affine maps, clamped to
    # [-1, 1], as model.to_model_units), 0 where not observed (the mask then says "reconstruct")
    o_off, o_scale = (getattr(model, n).detach().cpu().numpy()[:, None, None]
                      for n in ("optical_offset", "optical_scale"))
    by, bx = box[0].stop - box[0].start, box[1].stop - box[1].start
    x_np = np.zeros((len(frame_ns), n_opt, by, bx), dtype=np.float32)
    m_np = np.ones((len(frame_ns), 1, by, bx), dtype=np.float32)
    have = np.flatnonzero(src >= 0)
    for f in have:
        ok = valid[src[f]][box]
        units = np.clip((values[src[f]][(slice(None), *box)][opt_idx] - o_off) / o_scale, -1, 1)
        x_np[f] = np.where(ok[None], units, 0.0)
        m_np[f, 0] = ~ok
    sar_np = None
    if use_sar:
        s_off, s_scale = (getattr(model, n).detach().cpu().numpy()[:, None, None] for n in ("sar_offset", "sar_scale"))
        sar_box = np.asarray(sar, np.float32)[(slice(None), slice(None), *box)][:, np.asarray(sar_bands)]
        aligned = align_sar(sar_box, sar_times, frame_ns, sar_window)
        sar_np = np.where(np.isfinite(aligned), np.clip((aligned - s_off) / s_scale, -1, 1), 0.0).astype(np.float32)
    x_all, m_all = torch.from_numpy(x_np), torch.from_numpy(m_np)
    sar_all = None if sar_np is None else torch.from_numpy(sar_np)

    with torch.inference_mode():
        jobs = [(int(w), int(ky), int(kx)) for w in np.unique(pick) for ky in kys for kx in kxs]
        per_call = batch_size or max(1, 16 // n_samples)
        for b0 in range(0, len(jobs), per_call):
            batch = jobs[b0:b0 + per_call]
            xs, ms, ss, ds, noise = [], [], [], [], []
            for w, ky, kx in batch:
                f = slice(int(starts[w]), int(starts[w]) + width)
                r, c = ky * s - offset[0] - r0, kx * s - offset[1] - c0  # in the box
                xs.append(x_all[f, :, r:r + tile, c:c + tile])
                ms.append(m_all[f, :, r:r + tile, c:c + tile])
                if sar_all is not None:
                    ss.append(sar_all[f, :, r:r + tile, c:c + tile])
                ds.append(torch.from_numpy(frame_days[f].astype(np.float32)))
                noise.append(noise_on(dev, seed, ky, kx, int(starts[w]), (n_samples, width, n_opt, tile, tile)))
            image = torch.stack(xs).to(dev)  # (B, W, C, tile, tile)
            mask = torch.stack(ms).to(dev)  # (B, W, 1, tile, tile)
            sar_b = torch.stack(ss).to(dev) if ss else None
            dates = torch.stack(ds).to(dev)  # (B, W)
            z = torch.stack(noise, dim=1)  # (n, B, W, C, tile, tile)
            with model_lock(model), autocast(dev, dtype):
                y = sample(model, image, mask, dates, sar_b, noise=z if n_samples > 1 else z[0], steps=steps,
                           sampler=sampler, n_samples=n_samples)
            y = y.float().reshape(n_samples, *image.shape)
            refl = model.from_model_units(y).cpu().numpy()  # (n, B, W, C, tile, tile) reflectance
            mean = refl.mean(axis=0) if n_samples > 1 else refl[0]
            std = refl.std(axis=0, ddof=1) if n_samples > 1 else None
            for j, (w, ky, kx) in enumerate(batch):
                (ty, ry), (tx, rx) = spans[(ky, kx)]
                wt = weight[ty, tx]
                for qi in np.flatnonzero(pick == w):
                    fi = int(q_frame[qi] - starts[w])
                    acc_m[qi][:, ry, rx] += wt * mean[j, fi][:, ty, tx]
                    if acc_s is not None:
                        acc_s[qi][:, ry, rx] += wt * std[j, fi][:, ty, tx]

    # the core: weighted means (0 for bands the network does not take, as 0 / weight)
    cores = (slice(None), slice(None), *core)
    out_mean[cores] = 0.0
    out_mean[:, opt_idx, core[0], core[1]] = acc_m / acc_w
    out_std[cores] = 0.0
    if acc_s is not None:
        out_std[:, opt_idx, core[0], core[1]] = acc_s / acc_w
    # clear observations at query times that are optical dates: the observation itself, no spread
    for qi, fi in enumerate(q_frame):
        ti = src[fi]
        if ti >= 0:
            np.copyto(out_mean[qi], values[ti], where=valid[ti][None])
            np.copyto(out_std[qi], 0.0, where=valid[ti][None])
    return {"optical": out_mean, "optical_std": out_std}


# Registered here, from this module's own constants: the halo covers the largest tile the build step allows.
register(
    "restore-dit",
    f"{__name__}:fill_restore_dit",
    footprint="patch",
    halo=HALO,
    build=f"{__name__}:build",
    options=OPTIONS,
    outputs=("optical", "optical_std"),
    needs_checkpoint=True,
    sar=True,
    training="xrecon.training.restore_dit:RestoreDiTTask",
    summary="RESTORE-DiT diffusion transformer (Shu et al. 2025), optical + SAR, seam-free tiles, "
            "n_samples -> optical_std; needs checkpoint=",
)

