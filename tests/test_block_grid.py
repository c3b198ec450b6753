"""BlockStream, the generic part of the training streams: block grid, order, sharding, resuming."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import numpy as np
import pytest
import xarray as xr
from torch.utils.data import DataLoader

from xrecon.training.stream import BlockStream, PixelStream


def toy_cube(seed: int = 0, *, ny: int = 8, nx: int = 10, chunks: tuple[int, int] = (3, 4)) -> xr.Dataset:
    """A small dask-backed cube (optical and SAR), its chunks uneven at the edges."""
    rng = np.random.default_rng(seed)
    time = (np.datetime64("2020-01-05T10:30") + np.arange(6) * np.timedelta64(20, "D")).astype("datetime64[ns]")
    sar_time = (np.datetime64("2020-01-07T17:40") + np.arange(4) * np.timedelta64(30, "D")).astype("datetime64[ns]")
    optical = rng.uniform(0, 0.5, (len(time), 2, ny, nx)).astype(np.float32)
    optical[rng.random(optical.shape) < 0.2] = np.nan
    sar = rng.normal(-15, 3, (len(sar_time), 2, ny, nx)).astype(np.float32)
    ds = xr.Dataset(
        {"optical": (("time", "band", "y", "x"), optical), "sar": (("sar_time", "sar_band", "y", "x"), sar)},
        coords={"time": time, "band": ["B04", "B08"], "y": np.arange(ny) * -10.0, "x": np.arange(nx) * 10.0,
                "sar_time": sar_time, "sar_band": ["VV", "VH"]},
    )
    return ds.chunk({"y": chunks[0], "x": chunks[1]})


class BlockSlices(BlockStream):
    """One sample per block: where the block is, what was read, and a draw from the block's generator."""

    def _make_samples(self, block, rng):
        return [{
            "cube": block.cube, "ys": (block.ys.start, block.ys.stop), "xs": (block.xs.start, block.xs.stop),
            "optical": block.optical.copy(), "sar": None if block.sar is None else block.sar.copy(),
            "draw": float(rng.random()),
        }]


class BlockRows(BlockSlices):
    """One sample per pixel row of the block, so that the shuffle buffer mixes blocks."""

    def _make_samples(self, block, rng):
        return [{"cube": block.cube, "y": y, "xs": (block.xs.start, block.xs.stop), "draw": float(rng.random())}
                for y in range(block.ys.start, block.ys.stop)]


CUBES = [toy_cube(0), toy_cube(1, ny=5, nx=7, chunks=(5, 3))]
N_BLOCKS = 3 * 3 + 1 * 3  # y edges (0, 3, 6, 8) x (0, 4, 8, 10); (0, 5) x (0, 3, 6, 7)


def as_is(sample):
    return sample


def where(sample):
    return sample["cube"], sample["ys"], sample["xs"]


def test_every_block_is_read_once_per_epoch_across_two_shards():
    streams = [BlockSlices(CUBES, seed=3, buffer_size=4, rank=r, world_size=2) for r in range(2)]
    grid = {(c, (ys.start, ys.stop), (xs.start, xs.stop))
            for c, ys, xs in ((t[0], *streams[0].block_slices(t)) for t in streams[0].blocks)}
    assert streams[0].n_blocks == len(grid) == N_BLOCKS
    orders = []
    for epoch in (0, 1):
        read: Counter = Counter()
        for rank, stream in enumerate(streams):
            stream.set_epoch(epoch)
            samples = list(stream)
            assert {s["shard"] for s in samples} == {rank}
            for s in samples:
                read[where(s)] += 1
                # the block is read whole, time and band, from its own cube and place
                ds = CUBES[s["cube"]].isel(y=slice(*s["ys"]), x=slice(*s["xs"]))
                np.testing.assert_array_equal(s["optical"], ds.optical.values)
                np.testing.assert_array_equal(s["sar"], ds.sar.values)
        assert set(read) == grid and set(read.values()) == {1}
        orders.append([tuple(t) for t in streams[0].block_order()])
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])


def test_dataloader_workers_share_the_blocks():
    stream = BlockSlices(CUBES, seed=0, buffer_size=3)
    samples = list(DataLoader(stream, batch_size=None, num_workers=2, collate_fn=as_is))
    assert Counter(s["shard"] for s in samples) == {0: N_BLOCKS // 2, 1: N_BLOCKS // 2}
    assert Counter(where(s) for s in samples) == Counter(where(s) for s in BlockSlices(CUBES, seed=5))
    assert len(samples) == N_BLOCKS


def test_same_seed_same_stream_and_blocks_subset():
    one, two = (list(BlockSlices(CUBES, seed=7, buffer_size=5)) for _ in range(2))
    assert [(where(s), s["draw"]) for s in one] == [(where(s), s["draw"]) for s in two]
    assert [where(s) for s in one] != [where(s) for s in BlockSlices(CUBES, seed=8, buffer_size=5)]
    subset = [(1, 0, 2), (0, 2, 0)]
    stream = BlockSlices(CUBES, seed=7, blocks=subset)
    assert {where(s) for s in stream} == {(1, (0, 5), (6, 7)), (0, (6, 8), (0, 4))}


def test_resumed_stream_continues_where_it_stopped():
    def streams():
        return [BlockRows(CUBES, seed=11, epoch=2, buffer_size=6, rank=r, world_size=2) for r in range(2)]

    full = [list(s) for s in streams()]
    assert sum(map(len, full)) == 8 * 3 + 5 * 3  # one sample per row of every block
    first = streams()
    for stream, n in zip(first, (5, 9), strict=True):
        for sample in islice(stream, n):
            stream.mark_consumed(sample)
    state = BlockStream.merge_states([s.state_dict() for s in first])
    assert state == {"seed": 11, "epoch": 2, "world_size": 2, "consumed": {0: 5, 1: 9}}
    resumed = streams()
    for stream in resumed:
        stream.set_epoch(2)  # the current epoch again: keeps the loaded state
        stream.load_state_dict(state)
    rest = [list(s) for s in resumed]
    assert rest[0] == full[0][5:] and rest[1] == full[1][9:]
    resumed[0].set_epoch(3)  # another epoch starts from its beginning
    fresh = streams()[0]
    fresh.set_epoch(3)
    assert list(resumed[0]) == list(fresh)


def test_pixel_stream_is_a_block_stream_and_the_base_needs_samples():
    assert issubclass(PixelStream, BlockStream)
    with pytest.raises(NotImplementedError, match="_make_samples"):
        next(iter(BlockStream(CUBES)))
