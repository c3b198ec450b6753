"""Space-time patches streamed from cubes, for training patch networks such as RESTORE-DiT.

:class:`PatchStream` is a :class:`~xrecon.training.stream.BlockStream`: the block grid, the seeded
epoch order, sharding over ranks and DataLoader workers, the resume state and the reading are the
base's. What it adds is the making of samples: from each block it cuts random **windows** of
``size x size`` pixels and ``frames`` consecutive optical dates, skips those with too few clear
observations, and gives each a **simulated cloud mask** transplanted from the cube's own masks (the
clear mask of another window of the same block: other dates, another place, flipped), as upstream
RESTORE-DiT trains on sequences with real cloud masks transplanted. SAR is aligned to each frame
(per pixel the nearest SAR date within ``sar_window`` days with a finite value, as ``fill`` aligns it).

Memory is one block plus ``buffer_size`` samples (a sample is ``frames * size**2 * (C + S)`` floats).

>>> from xrecon.testing import synthetic_cube
>>> stream = PatchStream(synthetic_cube(ny=32, nx=32, seed=0), size=16, frames=4, seed=0, batch_size=2)
>>> batch = next(iter(stream))
>>> tuple(batch["optical"].shape), tuple(batch["sar"].shape), tuple(batch["dates"].shape)
((2, 4, 4, 16, 16), (2, 4, 2, 16, 16), (2, 4))
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr

from xrecon.cube import DEFAULT_SAR
from xrecon.errors import XreconError
from xrecon.holdout import check_gaps
from xrecon.times import DATE_ORIGIN, days_since
from xrecon.training.blockstream import DEFAULT_BLOCK, Block, BlockStream

__all__ = ["PatchStream", "collate_patches", "sar_in_reach", "window_shares"]

#: RESTORE-DiT's date convention (``RestoreDiTConfig.date_origin``): :data:`xrecon.times.DATE_ORIGIN`.
DEFAULT_DATE_ORIGIN = DATE_ORIGIN
_DONOR_TRIES = 4  # donor windows drawn per sample; the first whose clouds hide a usable share wins


def sar_in_reach(days: np.ndarray, sar_days: np.ndarray, max_days: float) -> list[np.ndarray]:
    """For each optical date, the indices of the SAR dates within ``max_days`` days, nearest first
    (the earlier on a tie): a pixel takes the first of them with a finite value.

    Examples
    --------
    >>> [r.tolist() for r in sar_in_reach(np.array([0.0, 5.0, 40.0]), np.array([1.0, 4.0, 12.0]), 6.0)]
    [[0, 1], [1, 0], []]
    """
    out = []
    for d in np.asarray(days, np.float64):
        dist = np.abs(np.asarray(sar_days, np.float64) - d)
        near = np.flatnonzero(dist <= max_days)
        out.append(near[np.lexsort((near, dist[near]))].astype(np.int64))
    return out


def window_shares(tile_shares: np.ndarray, frames: int) -> np.ndarray:
    """The clear share of every window of ``frames`` consecutive dates, from ``(T, ny, nx)`` per-date
    clear shares of tiles (:meth:`PatchStream.clear_shares`): a flat array, one value per start date
    and tile (empty when ``frames > T``).

    Examples
    --------
    >>> window_shares(np.array([1.0, 0.0, 0.5, 0.5])[:, None, None], 2).tolist()
    [0.5, 0.25, 0.5]
    """
    a = np.asarray(tile_shares, np.float64)
    if a.shape[0] < frames or a.size == 0:
        return np.zeros(0)
    c = np.concatenate([np.zeros((1,) + a.shape[1:]), np.cumsum(a, axis=0)])
    return ((c[frames:] - c[:-frames]) / frames).ravel()


def collate_patches(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack patch samples (all of one shape) into a batch of tensors (keys as the samples', plus B first).

    Examples
    --------
    >>> s = {"optical": np.zeros((2, 3, 4, 4), np.float32), "y": 0}
    >>> tuple(collate_patches([s, s])["optical"].shape), collate_patches([s, s])["y"].dtype
    ((2, 2, 3, 4, 4), torch.int64)
    """
    out: dict[str, torch.Tensor] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], np.ndarray):
            out[key] = torch.from_numpy(np.stack(values))
        else:
            out[key] = torch.as_tensor(values, dtype=torch.int64)
    return out


class PatchStream(BlockStream):
    """Random space-time windows of cubes, with transplanted cloud masks, for training patch networks.

    Parameters
    ----------
    cubes : xarray.Dataset or sequence of xarray.Dataset
        Cubes following xrecon's conventions (lazy is best), with the same bands.
    optical, sar, mask : str
        Variable names, as for :class:`~xrecon.training.stream.PixelStream`.
    size : int
        Side of a window in pixels (a multiple of the network's patch size).
    frames : int
        Consecutive optical dates per window.
    per_block : int, optional
        Windows drawn per block and epoch (some are skipped, see ``min_clear``); default: as many as
        would tile the block once in space and time, ``(by // size) * (bx // size) * ceil(T / frames)``.
    min_clear : float
        Windows whose share of clear pixel-frames is below this are skipped.
    sar_window : float
        Each frame takes, pixel by pixel, the SAR observation nearest in time within this many days
        among the SAR dates finite at that pixel (the earlier on a tie; :func:`sar_in_reach`), as
        ``fill`` does; pixels with none in reach have ``sar_valid`` False and zeros.
    date_origin : str
        ``dates`` are days since this day (RESTORE-DiT's convention; default upstream's,
        :data:`xrecon.times.DATE_ORIGIN`).
    gaps : "window", "clouds", "pixels" or int
        The simulated clouds. ``"window"``: the not-clear pixels of a donor window drawn from elsewhere
        in the block (another place and time, flipped), hiding 5-90 % of the window's clear pixels.
        The others are ``evaluate``'s hold-out shapes (:func:`xrecon.holdout.hidden_mask`, the same
        implementation), drawn once per block and epoch over the whole block with ``gap_fraction``:
        ``"clouds"`` (other dates' clouds at the same place), a block side, or single pixels.
    gap_fraction : float
        The share of a block's clear observations hidden with evaluate's shapes (not with "window").
    augment : bool
        Turn each window by a random element of the square's symmetries (flips and transposition,
        the same for all its arrays): without it a network soon learns the training area's
        fields by heart rather than how to fill gaps. ``y`` and ``x`` stay the window's corner.
    block : int or (int, int), optional
        Block side; rounded up to a multiple of ``size`` (default: the dask chunks, else 128).
        Blocks at the cube's edge smaller than ``size`` give no windows.
    batch_size : int, optional
        Yield ready batches (:func:`collate_patches`) of this many samples (the last of an epoch may
        be smaller); None: single samples.
    buffer_size, seed, epoch, rank, world_size, scheduler, blocks
        As for :class:`~xrecon.training.stream.BlockStream`.

    Notes
    -----
    A sample (numpy until collation; ``T = frames``, ``H = W = size``):

    ============== ============== ======= =====================================================
    key            shape          dtype   content
    ============== ============== ======= =====================================================
    ``optical``    (T, C, H, W)   float32 reflectance where ``valid``, 0 elsewhere (never NaN)
    ``valid``      (T, H, W)      bool    a clear observation (finite in every band, clear in ``mask``)
    ``cloud``      (T, H, W)      bool    the simulated clouds (``gaps``): e.g. a donor window's not-clear pixels
    ``dates``      (T,)           float32 days since ``date_origin``
    ``sar``        (T, S, H, W)   float32 dB, per pixel of the nearest finite SAR date in reach, else 0
    ``sar_valid``  (T, H, W)      bool    a finite SAR observation within ``sar_window`` days
    ``sar_frame``  (T,)           bool    a SAR date within ``sar_window`` days of the frame
    ``cube``, ``t``, ``y``, ``x`` int     the cube, the first frame's index, the first row and column
    ``shard``      int                    the stream shard (for resuming)
    ============== ============== ======= =====================================================

    The imputation targets are ``valid & cloud``. Without SAR, ``sar`` is (T, 0, H, W).

    Every random choice (window, donor, flips) is drawn from the base's per-block generator, so the
    stream is the same for the same seed, epoch and shard layout, and resumes exactly.
    """

    def __init__(
        self,
        cubes: xr.Dataset | Sequence[xr.Dataset],
        *,
        optical: Hashable = "optical",
        sar: Hashable | None = DEFAULT_SAR,
        mask: Hashable | None = None,
        size: int = 32,
        frames: int = 8,
        per_block: int | None = None,
        min_clear: float = 0.3,
        sar_window: float = 6.0,
        date_origin: str = DEFAULT_DATE_ORIGIN,
        gaps: str | int = "window",
        gap_fraction: float = 0.3,
        augment: bool = True,
        buffer_size: int = 256,
        block: int | tuple[int, int] | None = None,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
        scheduler: str | None = None,
        blocks: Sequence[Sequence[int]] | np.ndarray | None = None,
    ) -> None:
        for name, value in (("size", size), ("frames", frames)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise XreconError(f"{name} must be a positive integer, got {value!r}")
        if per_block is not None and per_block < 1:
            raise XreconError(f"per_block must be >= 1 or None, got {per_block}")
        if not 0 <= min_clear <= 1:
            raise XreconError(f"min_clear must be in [0, 1], got {min_clear}")
        if not (isinstance(gaps, str) and gaps == "window"):
            gaps = check_gaps(gaps)
        if not 0 < gap_fraction <= 1:
            raise XreconError(f"gap_fraction must be in (0, 1], got {gap_fraction!r}")
        if not sar_window >= 0:
            raise XreconError(f"sar_window must be >= 0 days, got {sar_window}")
        if batch_size is not None and batch_size < 1:
            raise XreconError(f"batch_size must be >= 1 or None, got {batch_size}")
        if isinstance(cubes, xr.Dataset):
            cubes = [cubes]
        super().__init__(
            cubes, optical=optical, sar=sar, mask=mask, buffer_size=buffer_size,
            block=_round_block(cubes, optical, block, int(size)), seed=seed, epoch=epoch, rank=rank,
            world_size=world_size, scheduler=scheduler, blocks=blocks,
        )
        self.size, self.frames = int(size), int(frames)
        self.per_block = None if per_block is None else int(per_block)
        self.min_clear, self.sar_window, self.date_origin = float(min_clear), float(sar_window), str(date_origin)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.augment = bool(augment)
        self.gaps, self.gap_fraction = gaps, float(gap_fraction)
        if all(info.cube.optical.sizes["time"] < self.frames for info in self._infos):
            raise XreconError(f"frames={self.frames}: no cube has that many optical dates")
        # Per cube: optical dates (days since the origin) and each date's SAR date; coordinates only.
        self._dates, self._sar_reach = [], []
        for info in self._infos:
            cube = info.cube
            days = days_since(cube.optical["time"].values, self.date_origin)
            sar_days = days_since(cube.sar["sar_time"].values, self.date_origin) if cube.sar is not None else []
            self._dates.append(days.astype(np.float32))
            self._sar_reach.append(sar_in_reach(days, np.asarray(sar_days, np.float64), sar_window))

    def clear_shares(self, blocks: Sequence[Sequence[int]] | np.ndarray) -> list[np.ndarray]:
        """Per block of ``blocks``: ``(T, ny, nx)``, the share of clear pixels on each date in each of the
        block's ``size x size`` tiles (in one dask computation over the blocks' validity; the windows
        :meth:`_make_samples` draws are not aligned to these tiles, but their shares are alike).

        Examples
        --------
        >>> from xrecon.testing import synthetic_cube
        >>> stream = PatchStream(synthetic_cube(ny=32, nx=32, seed=0), size=16, frames=4, block=32)
        >>> [a.shape for a in stream.clear_shares(stream.blocks)]
        [(65, 2, 2)]
        """
        lazy = []
        for task in np.asarray(blocks, np.int64).reshape(-1, 3):
            cube = self._infos[int(task[0])].cube
            ys, xs = self.block_slices(task)
            valid = cube.optical.isel(y=ys, x=xs).notnull().all("band")
            if cube.clear is not None:
                valid = valid & cube.clear.isel(y=ys, x=xs).astype(bool)
            if valid.chunks is not None:  # one chunk per block: dask (>= 2026.8) reshapes only along even chunks
                valid = valid.chunk({"y": -1, "x": -1})
            lazy.append(valid.coarsen(y=self.size, x=self.size, boundary="trim").mean().data)
        return [np.asarray(a, np.float64) for a in dask.compute(*lazy, scheduler=self.scheduler)]

    def windows_per_block(self, by: int, bx: int, n_time: int) -> int:
        """Windows drawn from a ``by x bx`` block of ``n_time`` dates per epoch (0 when none fits)."""
        if by < self.size or bx < self.size or n_time < self.frames:
            return 0
        if self.per_block is not None:
            return self.per_block
        return (by // self.size) * (bx // self.size) * math.ceil(n_time / self.frames)

    # -- block -> samples --------------------------------------------------------------------------
    def _make_samples(self, block: Block, rng: np.random.Generator) -> list[dict[str, Any]]:
        n_time, _, by, bx = block.optical.shape
        s, f = self.size, self.frames
        n = self.windows_per_block(by, bx, n_time)
        if n == 0:
            return []
        valid = block.valid()  # (T, by, bx)
        dates = self._dates[block.cube]
        reach = self._sar_reach[block.cube]
        sar_ok = np.array([len(r) > 0 for r in reach], bool)
        # evaluate's shapes over the whole block, or None: donor windows (_donor)
        shapes = None if self.gaps == "window" else block.holdout(valid, self.gap_fraction, self.gaps, rng)
        samples = []
        for _ in range(n):
            t0, y0, x0 = (int(rng.integers(0, m + 1)) for m in (n_time - f, by - s, bx - s))
            v = valid[t0:t0 + f, y0:y0 + s, x0:x0 + s]  # (F, s, s) view
            if v.mean() < self.min_clear:
                continue
            if shapes is None:
                cloud = self._donor(valid, v, (t0, y0, x0), rng)
            else:
                cloud = shapes[t0:t0 + f, y0:y0 + s, x0:x0 + s].copy()
            opt = block.optical[t0:t0 + f, :, y0:y0 + s, x0:x0 + s]
            opt = np.where(v[:, None], opt, 0).astype(np.float32)  # (F, C, s, s), a new array
            frame_ok = sar_ok[t0:t0 + f].copy()  # (F,)
            if block.sar is not None:
                sar_v, sar_valid = self._sar(block.sar, reach[t0:t0 + f], y0, x0)
            else:
                sar_v = np.zeros((f, 0, s, s), np.float32)
                sar_valid = np.zeros((f, s, s), bool)
            spatial = {"optical": opt, "valid": v.copy(), "cloud": cloud, "sar": sar_v, "sar_valid": sar_valid}
            if self.augment:
                flip_y, flip_x, swap = (bool(b) for b in rng.integers(0, 2, size=3))
                spatial = {k: _turn(a, flip_y, flip_x, swap) for k, a in spatial.items()}
            samples.append({
                "optical": spatial["optical"],
                "valid": spatial["valid"],
                "cloud": spatial["cloud"],
                "dates": dates[t0:t0 + f].copy(),
                "sar": spatial["sar"],
                "sar_valid": spatial["sar_valid"],
                "sar_frame": frame_ok,
                "cube": block.cube,
                "t": t0,
                "y": block.ys.start + y0,
                "x": block.xs.start + x0,
            })
        return samples

    def _donor(self, valid: np.ndarray, v: np.ndarray, at: tuple[int, int, int],
               rng: np.random.Generator) -> np.ndarray:
        """A cloud mask ``(F, s, s)`` from another window of the block: the first of a few draws whose
        clouds hide between 5 % and 90 % of the window's clear pixels, else the draw closest to that."""
        n_time, by, bx = valid.shape
        s, f = self.size, self.frames
        n_clear = max(int(v.sum()), 1)
        best, best_gap = None, math.inf
        for _ in range(_DONOR_TRIES):
            t1, y1, x1 = (int(rng.integers(0, m + 1)) for m in (n_time - f, by - s, bx - s))
            flip_y, flip_x = (bool(b) for b in rng.integers(0, 2, size=2))
            if (t1, y1, x1) == at and not (flip_y or flip_x):
                continue  # its own clouds would hide nothing clear
            cloud = ~valid[t1:t1 + f, y1:y1 + s, x1:x1 + s]
            if flip_y:
                cloud = cloud[:, ::-1]
            if flip_x:
                cloud = cloud[:, :, ::-1]
            share = (cloud & v).sum() / n_clear
            gap = max(0.05 - share, share - 0.9, 0.0)
            if gap < best_gap:
                best, best_gap = cloud, gap
            if gap == 0:
                break
        if best is None:  # every draw was the window itself (a one-window block): its clouds, flipped
            best = ~v[:, ::-1, ::-1]
        return np.ascontiguousarray(best)

    def _sar(self, sar: np.ndarray, reach: Sequence[np.ndarray], y0: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
        """SAR of the window's frames: per pixel the nearest SAR date in reach with a finite value (as ``fill``)."""
        s = self.size
        out = np.zeros((len(reach), sar.shape[1], s, s), np.float32)
        done = np.zeros((len(reach), s, s), bool)
        for f, candidates in enumerate(reach):
            for j in candidates:  # nearest first
                raw = sar[j, :, y0:y0 + s, x0:x0 + s]
                take = np.isfinite(raw).all(axis=0) & ~done[f]
                out[f][:, take] = raw[:, take]
                done[f] |= take
                if done[f].all():
                    break
        return out, done

    # -- batching ----------------------------------------------------------------------------------
    def _shard_items(self, tasks: np.ndarray, shard: int, rng: np.random.Generator, skip: int) -> Iterator[Any]:
        """Single samples (``batch_size=None``), or batches of ``batch_size`` consecutive samples.

        The batches are cut from the shard's sample order after the skipped ones, so a resumed shard
        (whose consumed samples are whole batches) makes the same batches as without the interruption.
        """
        items = super()._shard_items(tasks, shard, rng, skip)
        if self.batch_size is None:
            yield from items
            return
        batch: list[dict[str, Any]] = []
        for sample in items:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate_patches(batch)
                batch = []
        if batch:
            yield collate_patches(batch)


def _turn(a: np.ndarray, flip_y: bool, flip_x: bool, swap: bool) -> np.ndarray:
    """``a`` (..., s, s) flipped and/or transposed in its last two axes, as a new contiguous array."""
    if flip_y:
        a = a[..., ::-1, :]
    if flip_x:
        a = a[..., ::-1]
    if swap:
        a = np.swapaxes(a, -1, -2)
    return np.ascontiguousarray(a)


def _round_block(cubes: Sequence[xr.Dataset], optical: Hashable, block: int | tuple[int, int] | None,
                 size: int) -> tuple[int, int]:
    """The block side(s) rounded up to a multiple of the window size (blocks are read alone)."""
    if block is None:
        chunks = cubes[0][optical].chunksizes if optical in cubes[0] else {}
        by, bx = (chunks["y"][0], chunks["x"][0]) if chunks else (DEFAULT_BLOCK, DEFAULT_BLOCK)
    elif isinstance(block, int | np.integer):
        by = bx = int(block)
    else:
        by, bx = (int(b) for b in block)
    return max(1, math.ceil(by / size)) * size, max(1, math.ceil(bx / size)) * size
