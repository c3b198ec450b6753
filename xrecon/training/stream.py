"""Streaming training samples out of cubes: chunk by chunk, shuffled, sharded, resumable.

:class:`PixelStream` is a :class:`torch.utils.data.IterableDataset`. One epoch is a random order of
the cubes' spatial blocks (by default the dask chunks); each DataLoader worker of each distributed
rank reads its own share of the blocks, one at a time (time and band whole), turns every pixel with
enough clear observations into a sample, and mixes samples through a bounded shuffle buffer. Memory
is one block plus ``buffer_size`` samples, whatever the size of the cubes.

Everything but the making of pixel samples (the block grid and order, sharding, resuming, reading,
the shuffle buffer) lives in :class:`~xrecon.training.blockstream.BlockStream` (re-exported here),
which other kinds of samples can subclass.

Samples are dicts of numpy arrays; :func:`collate_pixels` pads them into a batch of torch tensors
(the format is documented there and in ``docs/training-data.md``).

>>> from torch.utils.data import DataLoader
>>> from xrecon.testing import synthetic_cube
>>> stream = PixelStream(synthetic_cube(ny=16, nx=16, seed=0), seed=0, buffer_size=64, block=8)
>>> batch = next(iter(DataLoader(stream, batch_size=32, collate_fn=collate_pixels)))
>>> batch["optical"].shape[0], batch["optical"].dtype
(32, torch.float32)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask
import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader

from xrecon.cube import DEFAULT_SAR, Cube
from xrecon.errors import XreconError
from xrecon.training.blockstream import Block, BlockStream, shard_layout
from xrecon.training.gaps import GapConfig, simulate_gaps

__all__ = ["BlockStream", "PixelStream", "collate_pixels", "pixel_loader", "shard_layout"]


@dataclass(frozen=True)
class _Window:
    """The dates of one sample window of a cube: a calendar year, or the whole series."""

    year: int  # days are counted from January 1 of this year, that day being day 1
    ti: np.ndarray  # (Tw,) indices into the optical time axis
    si: np.ndarray  # (Tsw,) indices into the SAR time axis
    doy: np.ndarray  # (Tw,) float32, read-only, shared by the window's samples
    sar_doy: np.ndarray  # (Tsw,) float32, read-only


def _days(times: np.ndarray) -> np.ndarray:
    return np.asarray(times, dtype="datetime64[ns]").astype("datetime64[D]")


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.flags.writeable = False
    return a


def _windows(cube: Cube, window: str | None, origin: Any) -> tuple[_Window, ...]:
    days = _days(cube.optical["time"].values)
    sar_days = _days(cube.sar["sar_time"].values) if cube.sar is not None else np.array([], "datetime64[D]")
    if window == "year":
        years = days.astype("datetime64[Y]")
        sar_years = sar_days.astype("datetime64[Y]")
        out = []
        for y in np.unique(years):
            ti = np.flatnonzero(years == y)
            si = np.flatnonzero(sar_years == y)
            out.append(
                _Window(
                    year=int(y.astype(int)) + 1970,
                    ti=ti,
                    si=si,
                    doy=_readonly((days[ti] - y).astype(np.int64) + 1),
                    sar_doy=_readonly((sar_days[si] - y).astype(np.int64) + 1),
                )
            )
        return tuple(out)
    if window is None:
        start = np.datetime64(origin, "D") if origin is not None else days.min().astype("datetime64[Y]")
        jan1 = start.astype("datetime64[Y]")
        if start != jan1:
            raise XreconError(f"origin must be a January 1 (days count from it as day 1), got {origin!r}")
        return (
            _Window(
                year=int(jan1.astype(int)) + 1970,
                ti=np.arange(len(days)),
                si=np.arange(len(sar_days)),
                doy=_readonly((days - jan1).astype(np.int64) + 1),
                sar_doy=_readonly((sar_days - jan1).astype(np.int64) + 1),
            ),
        )
    raise XreconError(f"window must be 'year' or None, got {window!r}")


class PixelStream(BlockStream):
    """Pixel time series streamed from one or several cubes, for training.

    Parameters
    ----------
    cubes : xarray.Dataset or sequence of xarray.Dataset
        Cubes following xrecon's conventions (lazy is best: nothing is read before iteration), all
        with the same optical bands and the same SAR bands (or all without SAR).
    optical, sar, mask : str
        Variable names. ``sar=None`` ignores SAR; the default ``"sar"`` may be absent.
    window : {"year", None}
        ``"year"``: a sample is one pixel's series within one calendar year, with days of year
        (1..366) for optical and SAR dates, as AnytimeFormer's time encoding expects.
        ``None``: the whole series, with days counted from January 1 of ``origin`` (day 1).
    origin : str or numpy.datetime64, optional
        For ``window=None``, a January 1; default: January 1 of each cube's first optical year.
    min_obs : int
        Pixels (per window) with fewer clear optical observations are skipped.
    buffer_size : int
        Samples held by the shuffle buffer: bigger mixes more blocks, and costs memory.
    block : int or (int, int), optional
        Spatial size ``(y, x)`` of the blocks read at once; default: the optical variable's dask
        chunks (or 128 x 128 for a numpy-backed cube). Time and band are always read whole.
    gaps : GapConfig, optional
        Hide some observations of each sample for self-supervised training (its ``kept`` then
        differs from ``valid``); transplanted clouds come from the other pixels of the same block
        and window. None: hide nothing.
    seed : int
        Seeds the block order, the shuffling and the gaps: same seed, epoch and shard layout, same
        stream, bit for bit.
    epoch : int
        The epoch to stream; see :meth:`set_epoch`.
    rank, world_size : int, optional
        This process's place among distributed ranks; default from ``torch.distributed`` when it
        is initialized (create the stream after ``init_process_group``), else 0 and 1.
    batch_size : int, optional
        Yield ready batches (:func:`collate_pixels` dicts) of up to this many samples that share
        their dates, i.e. come from the same cube and window, so that every row of ``doy`` and
        ``sar_doy`` is the same and nothing is padded: what AnytimeFormer's forward, whose dates are
        shared by the batch, needs. Use it with ``DataLoader(stream, batch_size=None)`` or
        :func:`pixel_loader`. None: yield single samples, for ``DataLoader(stream, batch_size=...,
        collate_fn=collate_pixels)``.
    scheduler : str, optional
        Dask scheduler for reading a block; default ``"synchronous"`` inside DataLoader workers
        (they are the parallelism) and dask's configured default in the main process.
    blocks : array-like of (cube, block row, block column), optional
        Read only these blocks (rows as :meth:`block_order` gives them), e.g. to hold out spatial
        blocks for validation; default all. The block grid is the same either way.

    Notes
    -----
    Sharding: the epoch's block order is split round-robin over ``world_size * num_workers``
    shards, so every block is read by exactly one worker of one rank per epoch.

    Resuming: call :meth:`mark_consumed` with every batch the training loop uses and store
    :meth:`state_dict` in the checkpoint. After :meth:`load_state_dict` each shard replays its
    deterministic stream, dropping the samples already consumed, so the rest of the epoch is the
    same as without the interruption (same ``world_size`` and ``num_workers`` needed).

    Both are :class:`BlockStream`'s; :class:`PixelStream` turns blocks into pixel samples and
    batches them by dates.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> stream = PixelStream(synthetic_cube(ny=8, nx=8, seed=0), seed=1, block=4, buffer_size=16)
    >>> sample = next(iter(stream))
    >>> sorted(sample)[:6]
    ['cube', 'doy', 'kept', 'optical', 'sar', 'sar_doy']
    """

    def __init__(
        self,
        cubes: xr.Dataset | Sequence[xr.Dataset],
        *,
        optical: Hashable = "optical",
        sar: Hashable | None = DEFAULT_SAR,
        mask: Hashable | None = None,
        window: Literal["year"] | None = "year",
        origin: str | np.datetime64 | None = None,
        min_obs: int = 5,
        buffer_size: int = 4096,
        block: int | tuple[int, int] | None = None,
        gaps: GapConfig | None = None,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
        scheduler: str | None = None,
        blocks: Sequence[Sequence[int]] | np.ndarray | None = None,
    ) -> None:
        if min_obs < 1:
            raise XreconError(f"min_obs must be >= 1, got {min_obs}")
        if batch_size is not None and batch_size < 1:
            raise XreconError(f"batch_size must be >= 1 or None, got {batch_size}")
        if gaps is not None and not isinstance(gaps, GapConfig):
            raise XreconError(f"gaps must be a GapConfig or None, got {type(gaps).__name__}")
        super().__init__(
            cubes, optical=optical, sar=sar, mask=mask, buffer_size=buffer_size, block=block, seed=seed,
            epoch=epoch, rank=rank, world_size=world_size, scheduler=scheduler, blocks=blocks,
        )
        # The sample windows of each cube, in the order of self._infos.
        self._windows = tuple(_windows(info.cube, window, origin) for info in self._infos)
        self.min_obs = int(min_obs)
        self.gaps = gaps
        self.batch_size = None if batch_size is None else int(batch_size)

    def count_samples(self) -> int:
        """Samples in one epoch, all shards together (one lazy pass over the cubes' clear masks).

        The stream itself cannot know it before reading: pixels with fewer than ``min_obs`` clear
        observations are skipped. Useful for learning-rate schedules; it reads every optical value
        once, so it costs about as much as an epoch's reading.
        """
        counts = []
        for info, windows in zip(self._infos, self._windows, strict=True):
            cube = info.cube
            valid = cube.optical.notnull().all("band")  # (time, y, x), lazy
            if cube.clear is not None:
                valid = valid & cube.clear
            for w in windows:
                counts.append((valid.isel(time=w.ti).sum("time") >= self.min_obs).sum().data)
        return int(sum(dask.compute(*counts)))

    # -- block -> samples --------------------------------------------------------------------------
    def _make_samples(self, block: Block, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Every eligible (pixel, window) sample of a block, window by window, pixels row-major."""
        n_time, n_band, by, bx = block.optical.shape
        n_pix = by * bx
        valid_all = block.valid()  # (T, by, bx)
        n_sar_band = 0 if block.sar is None else block.sar.shape[1]
        shapes_all = None
        if self.gaps is not None and "clouds" in self.gaps.weights():  # evaluate's cloud shapes
            shapes_all = block.holdout(valid_all, self.gaps.fraction, "clouds", rng)
        samples: list[dict[str, Any]] = []
        for w in self._windows[block.cube]:
            valid_w = valid_all[w.ti].reshape(len(w.ti), n_pix).T  # (P, Tw)
            sel = np.flatnonzero(valid_w.sum(1) >= self.min_obs)  # (n,) pixels kept, row-major in block
            if len(sel) == 0:
                continue
            valid = np.ascontiguousarray(valid_w[sel])  # (n, Tw)
            # Fancy indexing copies, so nothing below is a view of the block.
            opt = block.optical[w.ti].reshape(len(w.ti), n_band, n_pix)[:, :, sel].transpose(2, 0, 1)
            opt = np.where(valid[..., None], opt, 0).astype(np.float32)  # (n, Tw, C), never NaN
            if self.gaps is not None:
                shapes = None if shapes_all is None else shapes_all[w.ti].reshape(len(w.ti), n_pix).T[sel]
                kept, _ = simulate_gaps(valid, self.gaps, rng=rng, donors=valid_w, exclude=sel, shapes=shapes)
            else:
                kept = valid
            if block.sar is not None:
                sar = block.sar[w.si].reshape(len(w.si), n_sar_band, n_pix)[:, :, sel].transpose(2, 0, 1)
                sar_valid = np.isfinite(sar).all(axis=2)  # (n, Tsw)
                sar = np.where(sar_valid[..., None], sar, 0).astype(np.float32)  # (n, Tsw, S)
            else:
                sar = np.zeros((len(sel), 0, 0), np.float32)
                sar_valid = np.zeros((len(sel), 0), bool)
            yy, xx = np.divmod(sel, bx)
            for i in range(len(sel)):
                # .copy(): a sample must not keep its block's arrays alive while it waits in the buffer.
                # BlockStream adds "shard", last, to each.
                samples.append(
                    {
                        "optical": opt[i].copy(),
                        "valid": valid[i].copy(),
                        "kept": kept[i].copy(),
                        "doy": w.doy,
                        "sar": sar[i].copy(),
                        "sar_valid": sar_valid[i].copy(),
                        "sar_doy": w.sar_doy,
                        "cube": block.cube,
                        "y": block.ys.start + int(yy[i]),
                        "x": block.xs.start + int(xx[i]),
                        "year": w.year,
                    }
                )
        return samples

    # -- batching by dates -------------------------------------------------------------------------
    def _shard_items(self, tasks: np.ndarray, shard: int, rng: np.random.Generator, skip: int) -> Iterator[Any]:
        """Single samples (``batch_size=None``), or collated batches of samples sharing their dates."""
        if self.batch_size is None:
            yield from super()._shard_items(tasks, shard, rng, skip)
            return
        n_out = 0
        for batch in self._shuffled_batches(tasks, shard, rng):
            n_out += len(batch)
            # As for single samples: the first `skip` were consumed before a restart, yield the rest.
            if n_out > skip:
                yield collate_pixels(batch[max(0, len(batch) - (n_out - skip)):])

    def _shuffled_batches(
        self, tasks: np.ndarray, shard: int, rng: np.random.Generator
    ) -> Iterator[list[dict[str, Any]]]:
        """Batches of samples sharing their dates, drawn at random from a buffer grouped by (cube, window)."""
        groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
        total = 0

        def take() -> list[dict[str, Any]]:
            # A group with probability proportional to its size, then random members of it.
            r = int(rng.integers(0, total))
            for members in groups.values():
                if r < len(members):
                    break
                r -= len(members)
            k = min(self.batch_size, len(members))
            picked = []
            for i in np.sort(rng.choice(len(members), size=k, replace=False))[::-1]:
                picked.append(members[i])
                members[i] = members[-1]  # swap-remove, from the highest index down
                members.pop()
            return picked

        for task in tasks:
            for s in self._block_samples(task, shard):
                groups.setdefault((s["cube"], s["year"]), []).append(s)
                total += 1
                if total >= self.buffer_size:
                    batch = take()
                    total -= len(batch)
                    yield batch
        while total:
            batch = take()
            total -= len(batch)
            yield batch


def collate_pixels(samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad samples from :class:`PixelStream` into one batch of torch tensors.

    Windows and cubes have different numbers of dates, so every time axis is padded to the longest
    in the batch; padded positions are not ``valid`` and are flagged in ``pad`` / ``sar_pad``.

    Returns
    -------
    dict of torch.Tensor
        With ``B`` samples, ``T``/``Ts`` the longest optical/SAR series, ``C``/``S`` the bands:

        ==============  ===========  =======  =================================================
        key             shape        dtype    content
        ==============  ===========  =======  =================================================
        ``optical``     (B, T, C)    float32  model input: reflectance where ``kept``, else 0
        ``target``      (B, T, C)    float32  reflectance where ``valid``, else 0 (never NaN)
        ``valid``       (B, T)       bool     clear observation in the cube
        ``kept``        (B, T)       bool     shown to the model (``valid`` minus ``hidden``)
        ``hidden``      (B, T)       bool     hidden by gap simulation: ``valid & ~kept``
        ``pad``         (B, T)       bool     padding position (never valid)
        ``doy``         (B, T)       float32  day of ``year`` (1 = January 1), 0 at padding
        ``sar``         (B, Ts, S)   float32  backscatter dB where ``sar_valid``, else 0
        ``sar_valid``   (B, Ts)      bool     SAR finite in every band
        ``sar_pad``     (B, Ts)      bool     padding position
        ``sar_doy``     (B, Ts)      float32  day of ``year`` of the SAR dates, 0 at padding
        ``year``        (B,)         int64    the year days are counted from
        ``cube``        (B,)         int64    index of the cube the pixel comes from
        ``y``, ``x``    (B,)         int64    pixel position in that cube
        ``shard``       (B,)         int64    the stream shard that produced it (for resuming)
        ==============  ===========  =======  =================================================

    Examples
    --------
    >>> a = {"optical": np.ones((3, 2), np.float32), "valid": np.ones(3, bool), "kept": np.ones(3, bool),
    ...      "doy": np.arange(1, 4, dtype=np.float32), "sar": np.zeros((0, 0), np.float32),
    ...      "sar_valid": np.zeros(0, bool), "sar_doy": np.zeros(0, np.float32),
    ...      "cube": 0, "y": 0, "x": 0, "year": 2020, "shard": 0}
    >>> b = dict(a, optical=np.ones((2, 2), np.float32), valid=np.ones(2, bool), kept=np.ones(2, bool),
    ...          doy=np.arange(1, 3, dtype=np.float32))
    >>> batch = collate_pixels([a, b])
    >>> batch["optical"].shape, batch["pad"][1].tolist()
    (torch.Size([2, 3, 2]), [False, False, True])
    """
    if len(samples) == 0:
        raise XreconError("collate_pixels needs at least one sample")
    optical, valid, kept, doy, pad = _pad([s["optical"] for s in samples], [s["valid"] for s in samples],
                                          [s["kept"] for s in samples], [s["doy"] for s in samples])
    sar, sar_valid, _, sar_doy, sar_pad = _pad([s["sar"] for s in samples], [s["sar_valid"] for s in samples],
                                               None, [s["sar_doy"] for s in samples])
    target = optical
    inputs = np.where(kept[..., None], optical, np.float32(0))  # hidden values never reach the model
    batch = {
        "optical": inputs,
        "target": target,
        "valid": valid,
        "kept": kept,
        "hidden": valid & ~kept,
        "pad": pad,
        "doy": doy,
        "sar": sar,
        "sar_valid": sar_valid,
        "sar_pad": sar_pad,
        "sar_doy": sar_doy,
    }
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    for key in ("year", "cube", "y", "x", "shard"):
        out[key] = torch.tensor([int(s[key]) for s in samples], dtype=torch.int64)
    return out


def _pad(
    values: list[np.ndarray], valid: list[np.ndarray], kept: list[np.ndarray] | None, days: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Stack (T_i, C) series into (B, T, C), padding to the longest; returns values, valid, kept, days, pad."""
    lengths = np.array([len(v) for v in valid])
    n_time = int(lengths.max())
    pad = np.arange(n_time)[None, :] >= lengths[:, None]  # (B, T)
    if (lengths == n_time).all():  # one window length: plain stacking, the common case
        return (
            np.stack(values).astype(np.float32, copy=False),
            np.stack(valid),
            None if kept is None else np.stack(kept),
            np.stack(days).astype(np.float32, copy=False),
            pad,
        )
    n_band = max(v.shape[1] for v in values)
    out_v = np.zeros((len(values), n_time, n_band), np.float32)
    out_ok = np.zeros((len(values), n_time), bool)
    out_k = None if kept is None else np.zeros((len(values), n_time), bool)
    out_d = np.zeros((len(values), n_time), np.float32)
    for i, n in enumerate(lengths):
        out_v[i, :n] = values[i]
        out_ok[i, :n] = valid[i]
        if out_k is not None:
            out_k[i, :n] = kept[i]  # type: ignore[index]
        out_d[i, :n] = days[i]
    return out_v, out_ok, out_k, out_d, pad


def pixel_loader(
    stream: PixelStream, batch_size: int | None = None, *, num_workers: int = 0, **kwargs: Any
) -> DataLoader:
    """A DataLoader of :func:`collate_pixels` batches from ``stream``, without persistent workers.

    If the stream batches itself (``PixelStream(batch_size=...)``) its batches pass through as they
    are; otherwise samples are collated ``batch_size`` (default 256) at a time. Persistent workers
    would keep the epoch and resume state they started with, so they are refused. Other keyword
    arguments go to :class:`torch.utils.data.DataLoader`.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> loader = pixel_loader(PixelStream(synthetic_cube(ny=8, nx=8, seed=0), block=4), batch_size=16)
    >>> next(iter(loader))["valid"].dtype
    torch.bool
    """
    if kwargs.get("persistent_workers"):
        raise XreconError(
            "persistent_workers=True would freeze the stream's epoch and resume state in the workers; "
            "leave it off (workers restart each epoch, which costs a few hundred milliseconds)"
        )
    if stream.batch_size is not None:
        if batch_size is not None and batch_size != stream.batch_size:
            raise XreconError(
                f"the stream already makes batches of {stream.batch_size}; got batch_size={batch_size}"
            )
        return DataLoader(stream, batch_size=None, num_workers=num_workers, **kwargs)
    return DataLoader(
        stream, batch_size=batch_size or 256, num_workers=num_workers, collate_fn=collate_pixels, **kwargs
    )
