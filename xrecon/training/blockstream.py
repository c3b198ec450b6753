"""The block grid that every training stream reads: chunk by chunk, shuffled, sharded, resumable.

:class:`BlockStream` is a :class:`torch.utils.data.IterableDataset`. One epoch is a random order of
the cubes' spatial blocks (by default the dask chunks); each DataLoader worker of each distributed
rank reads its own share of the blocks, one at a time (time and band whole), turns each into samples
(what a subclass does: :class:`~xrecon.training.stream.PixelStream` pixel-years,
:class:`~xrecon.training.patches.PatchStream` space-time windows), and mixes samples through a
bounded shuffle buffer. Memory is one block plus ``buffer_size`` samples, whatever the size of the cubes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr
from torch.utils.data import IterableDataset, get_worker_info

from xrecon.cube import DEFAULT_SAR, Cube, validate
from xrecon.errors import CubeError, XreconError
from xrecon.holdout import hidden_mask

__all__ = ["DEFAULT_BLOCK", "Block", "BlockStream", "shard_layout"]

# Distinct streams of randomness, so e.g. the block order never correlates with the gaps.
_ORDER, _BLOCK, _BUFFER = 0, 1, 2
#: The block side when the cubes are not chunked and none is given.
DEFAULT_BLOCK = 128


@dataclass(frozen=True)
class _CubeInfo:
    cube: Cube
    y_edges: np.ndarray  # block boundaries, (ny_blocks + 1,)
    x_edges: np.ndarray


@dataclass
class Block:
    """One block's data as read, time and band whole. Dropped before any sample is yielded."""

    cube: int  # index of its cube in the stream
    ys: slice  # its place in that cube
    xs: slice
    optical: np.ndarray  # (T, C, by, bx), as stored (NaN where missing)
    clear: np.ndarray | None  # (T, by, bx), the cube's mask variable; None without one
    sar: np.ndarray | None  # (Ts, S, by, bx); None without SAR

    def valid(self) -> np.ndarray:
        """(T, by, bx) bool: the clear observations (finite in every band, and clear in the mask)."""
        valid = np.isfinite(self.optical).all(axis=1)
        if self.clear is not None:
            valid &= self.clear.astype(bool)
        return valid

    def holdout(self, valid: np.ndarray, fraction: float, gaps: str | int, rng: np.random.Generator) -> np.ndarray:
        """(T, by, bx) bool: evaluate's hold-out shapes over the block (:func:`xrecon.holdout.hidden_mask`),
        keyed on its place in the cube and a seed drawn from ``rng``."""
        da = xr.DataArray(valid, dims=("time", "y", "x"))
        return hidden_mask(da, fraction, seed=int(rng.integers(2**31)), gaps=gaps,
                           offset=(0, self.ys.start, self.xs.start)).values


def _edges(size: int, chunks: tuple[int, ...] | None, block: int | None) -> np.ndarray:
    if block is None and chunks is not None:
        return np.concatenate([[0], np.cumsum(chunks)])
    step = block or DEFAULT_BLOCK
    return np.unique(np.concatenate([np.arange(0, size, step), [size]]))


def shard_layout(rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """This process's shard and the number of shards: ``(rank * workers + worker id, world_size * workers)``.

    Called inside a DataLoader worker, it counts the worker; in the main process there is one
    worker per rank.

    Examples
    --------
    >>> shard_layout(rank=1, world_size=2)
    (1, 2)
    """
    info = get_worker_info()
    worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * n_workers + worker, world_size * n_workers


class BlockStream(IterableDataset):
    """Samples streamed block by block from cubes: the part of a training stream not about pixels.

    One epoch is a seeded random order of the cubes' spatial blocks, split round-robin over
    ``world_size * num_workers`` shards (:func:`shard_layout`). Each shard reads its blocks one at a
    time, time and band whole, turns each into samples and mixes them through a shuffle buffer of
    ``buffer_size`` samples; the resume state counts the samples consumed per shard.

    Parameters
    ----------
    cubes, optical, sar, mask, buffer_size, block, seed, epoch, rank, world_size, scheduler, blocks
        As for :class:`PixelStream`.

    Notes
    -----
    A subclass implements ``_make_samples(self, block, rng) -> list[dict]``: the samples of one block,
    each owning its memory (no views of the block: they wait in the buffer after it is dropped).
    ``block`` has ``cube`` (its cube's index; ``self._infos[block.cube].cube`` is the validated
    :class:`~xrecon.cube.Cube`, with its dates), ``ys`` and ``xs`` (its slices in that cube), and
    the arrays ``optical`` (T, C, by, bx), ``clear`` (T, by, bx) or None and ``sar`` (Ts, S, by, bx)
    or None, as stored. ``rng`` is seeded by seed, epoch and block: draw every random choice from
    it, so that a shard replays the same stream when it resumes. The stream then shuffles the
    block's samples with that same ``rng`` and adds to each its ``"shard"`` (an int), which
    :meth:`mark_consumed` reads from the batches. A subclass that yields batches rather than
    samples overrides ``_shard_items`` (as :class:`PixelStream` does).

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> class Corners(BlockStream):
    ...     def _make_samples(self, block, rng):
    ...         return [{"cube": block.cube, "y": block.ys.start, "x": block.xs.start}]
    >>> stream = Corners(synthetic_cube(ny=8, nx=8, seed=0), block=4)
    >>> sorted((s["y"], s["x"]) for s in stream)
    [(0, 0), (0, 4), (4, 0), (4, 4)]
    >>> next(iter(stream))
    {'cube': 0, 'y': 4, 'x': 0, 'shard': 0}
    """

    def __init__(
        self,
        cubes: xr.Dataset | Sequence[xr.Dataset],
        *,
        optical: Hashable = "optical",
        sar: Hashable | None = DEFAULT_SAR,
        mask: Hashable | None = None,
        buffer_size: int = 4096,
        block: int | tuple[int, int] | None = None,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        scheduler: str | None = None,
        blocks: Sequence[Sequence[int]] | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if isinstance(cubes, xr.Dataset):
            cubes = [cubes]
        if len(cubes) == 0:
            raise CubeError(f"{type(self).__name__} needs at least one cube")
        if buffer_size < 1:
            raise XreconError(f"buffer_size must be >= 1, got {buffer_size}")
        if seed < 0 or epoch < 0:
            raise XreconError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
        by, bx = (block, block) if block is None or isinstance(block, int) else block
        infos = []
        for i, ds in enumerate(cubes):
            cube = validate(ds, optical=optical, sar=sar, mask=mask)
            if infos and (cube.bands, cube.sar_bands) != (infos[0].cube.bands, infos[0].cube.sar_bands):
                raise CubeError(
                    f"cube {i} has optical bands {cube.bands} and SAR bands {cube.sar_bands}; expected the "
                    f"same as cube 0: {infos[0].cube.bands} and {infos[0].cube.sar_bands}"
                )
            chunks = cube.optical.chunks  # None for numpy-backed
            infos.append(
                _CubeInfo(
                    cube=cube,
                    y_edges=_edges(cube.optical.sizes["y"], chunks[2] if chunks else None, by),
                    x_edges=_edges(cube.optical.sizes["x"], chunks[3] if chunks else None, bx),
                )
            )
        self._infos = tuple(infos)
        # Every block of every cube, as (cube, block row, block column): the unit of reading and sharding.
        self._tasks = np.array(
            [(c, iy, ix) for c, info in enumerate(infos)
             for iy in range(len(info.y_edges) - 1) for ix in range(len(info.x_edges) - 1)],
            dtype=np.int64,
        ).reshape(-1, 3)
        if blocks is not None:
            # Grid order whatever the caller's, so the same subset always streams the same way.
            wanted = {tuple(int(v) for v in b) for b in np.asarray(blocks, dtype=np.int64).reshape(-1, 3)}
            unknown = wanted - {tuple(t) for t in self._tasks.tolist()}
            if unknown:
                raise XreconError(f"blocks {sorted(unknown)[:5]} are not blocks of the cubes' block grid")
            self._tasks = self._tasks[[tuple(t) in wanted for t in self._tasks.tolist()]].reshape(-1, 3)
        self.buffer_size = int(buffer_size)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.scheduler = scheduler
        if rank is None or world_size is None:
            dist_rank, dist_world = 0, 1
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                dist_rank, dist_world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            rank = dist_rank if rank is None else rank
            world_size = dist_world if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise XreconError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self._consumed: Counter[int] = Counter()

    # -- what the stream is made of ------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        """Blocks per epoch, all cubes together."""
        return len(self._tasks)

    @property
    def blocks(self) -> np.ndarray:
        """The blocks this stream reads, ``(n_blocks, 3)`` rows of (cube, block row, block column), in grid order."""
        return self._tasks.copy()

    @property
    def bands(self) -> list[str]:
        """Optical band names, in the order of the last axis of ``optical``."""
        return list(self._infos[0].cube.bands)

    @property
    def sar_bands(self) -> list[str]:
        """SAR band names (empty without SAR)."""
        return list(self._infos[0].cube.sar_bands or [])

    def block_order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's blocks in reading order, ``(n_blocks, 3)`` rows of (cube, block row, block column)."""
        epoch = self.epoch if epoch is None else epoch
        order = np.random.default_rng([self.seed, _ORDER, epoch]).permutation(len(self._tasks))
        return self._tasks[order]

    def block_slices(self, task: Sequence[int]) -> tuple[slice, slice]:
        """The ``(y, x)`` slices of block ``(cube, block row, block column)`` in its cube."""
        info = self._infos[int(task[0])]
        iy, ix = int(task[1]), int(task[2])
        return (
            slice(int(info.y_edges[iy]), int(info.y_edges[iy + 1])),
            slice(int(info.x_edges[ix]), int(info.x_edges[ix + 1])),
        )

    # -- epochs and resuming ---------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Stream ``epoch`` on the next iteration (another block order).

        Call it before creating the DataLoader iterator of each epoch; with ``persistent_workers``
        the workers would keep their old copy of the stream, so leave that option off. Moving to
        another epoch forgets what :meth:`mark_consumed` counted; setting the current epoch again
        keeps it, so a loop that calls ``set_epoch(epoch)`` first thing still resumes mid-epoch
        after :meth:`load_state_dict`.
        """
        if epoch < 0:
            raise XreconError(f"epoch must be >= 0, got {epoch}")
        if int(epoch) != self.epoch:
            self._consumed = Counter()
        self.epoch = int(epoch)

    def mark_consumed(self, batch: Mapping[str, Any]) -> None:
        """Record that the training loop used ``batch`` (counts its samples per shard, for resuming)."""
        shards = np.asarray(torch.as_tensor(batch["shard"]).cpu(), dtype=np.int64).ravel()
        for s, n in zip(*np.unique(shards, return_counts=True), strict=True):
            self._consumed[int(s)] += int(n)

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: seed, epoch and samples consumed per shard (plain ints).

        Under ``torch.distributed`` each rank counts its own shards: gather every rank's state
        (``all_gather_object``) and combine them with :meth:`merge_states` before saving.
        """
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "world_size": self.world_size,
            "consumed": {int(k): int(v) for k, v in sorted(self._consumed.items())},
        }

    @staticmethod
    def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One state from the states of several ranks (their shards are disjoint)."""
        if not states:
            raise XreconError("merge_states needs at least one state")
        first = states[0]
        consumed: Counter[int] = Counter()
        for s in states:
            if (s["seed"], s["epoch"]) != (first["seed"], first["epoch"]):
                raise XreconError("cannot merge stream states of different seeds or epochs")
            consumed.update({int(k): int(v) for k, v in s["consumed"].items()})
        return {**dict(first), "consumed": dict(sorted(consumed.items()))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration continues that epoch where it stopped."""
        try:
            seed, epoch, world = int(state["seed"]), int(state["epoch"]), int(state["world_size"])
            consumed = {int(k): int(v) for k, v in state["consumed"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise XreconError(f"not a {type(self).__name__} state: {err!r}") from None
        if seed != self.seed:
            raise XreconError(f"the state was saved with seed={seed}, this stream has seed={self.seed}")
        if world != self.world_size:
            raise XreconError(
                f"the state was saved with world_size={world}, this stream has world_size={self.world_size}; "
                "resume with the same number of ranks and DataLoader workers"
            )
        self.epoch = epoch
        self._consumed = Counter(consumed)

    # -- reading -------------------------------------------------------------------------------
    def _read_block(self, task: np.ndarray) -> Block:
        c = int(task[0])
        cube = self._infos[c].cube
        ys, xs = self.block_slices(task)
        lazy = [cube.optical.data[:, :, ys, xs]]
        if cube.clear is not None:
            lazy.append(cube.clear.data[:, ys, xs])
        if cube.sar is not None:
            lazy.append(cube.sar.data[:, :, ys, xs])
        # In a DataLoader worker the workers are the parallelism (and a forked process must not talk
        # to a distributed client); in the main process, dask's configured default.
        scheduler = self.scheduler or ("synchronous" if get_worker_info() is not None else None)
        values = [np.asarray(v) for v in dask.compute(*lazy, scheduler=scheduler)]
        optical = values.pop(0)
        clear = values.pop(0) if cube.clear is not None else None
        sar = values.pop(0) if cube.sar is not None else None
        return Block(cube=c, ys=ys, xs=xs, optical=optical, clear=clear, sar=sar)

    def _make_samples(self, block: Block, rng: np.random.Generator) -> list[dict[str, Any]]:
        """The samples of one read block, each owning its memory; what a subclass implements."""
        raise NotImplementedError(f"{type(self).__name__} must implement _make_samples(block, rng)")

    def _block_samples(self, task: np.ndarray, shard: int) -> list[dict[str, Any]]:
        """Every sample of a block, in a random order, tagged with its shard, owning its memory."""
        rng = np.random.default_rng([self.seed, _BLOCK, self.epoch, *map(int, task)])
        block = self._read_block(task)
        samples = self._make_samples(block, rng)
        del block  # before the samples wait in the buffer
        for s in samples:
            s["shard"] = shard
        order = rng.permutation(len(samples))
        return [samples[i] for i in order]

    # -- iterating -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shard, n_shards = self.rank * n_workers + worker, self.world_size * n_workers
        bad = [s for s in self._consumed if not 0 <= s < n_shards]
        if bad:
            raise XreconError(
                f"the stream state counts shards {bad}, but there are {n_shards} shards "
                f"(world_size={self.world_size} x num_workers={n_workers}); resume with the same layout"
            )
        return self._shard_stream(shard, n_shards, skip=self._consumed.get(shard, 0))

    def _shard_stream(self, shard: int, n_shards: int, skip: int) -> Iterator[Any]:
        tasks = self.block_order()[shard::n_shards]
        rng = np.random.default_rng([self.seed, _BUFFER, self.epoch, shard, n_shards])
        yield from self._shard_items(tasks, shard, rng, skip)

    def _shard_items(self, tasks: np.ndarray, shard: int, rng: np.random.Generator, skip: int) -> Iterator[Any]:
        """What the shard yields, its blocks being ``tasks``: its samples through the shuffle buffer."""
        samples = self._shuffled(tasks, shard, rng)
        # The first `skip` samples were consumed before a restart: replay them, yield the rest.
        yield from (s for n, s in enumerate(samples) if n >= skip)

    def _shuffled(self, tasks: np.ndarray, shard: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """Samples through a classic shuffle buffer: each new one takes the place of a random one, which goes out."""
        size = self.buffer_size
        buffer: list[dict[str, Any]] = []
        for task in tasks:
            samples = self._block_samples(task, shard)
            fill = min(size - len(buffer), len(samples))
            buffer.extend(samples[:fill])
            rest = samples[fill:]
            del samples
            for j, new in zip(rng.integers(0, size, size=len(rest)), rest, strict=True):
                out, buffer[j] = buffer[j], new
                yield out
            del rest
        for j in rng.permutation(len(buffer)):
            yield buffer[j]
