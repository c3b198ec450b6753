"""The training stream (xrecon.training.stream) and normalization statistics (xrecon.training.stats)."""

from __future__ import annotations

import tracemalloc
import weakref
from collections import Counter

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from xrecon.errors import CubeError, XreconError
from xrecon.testing import raise_if_dask_computes
from xrecon.training import (
    GapConfig,
    NormStats,
    PixelStream,
    compute_stats,
    pixel_loader,
    standardize_batch,
)

BATCH_KEYS = {
    "optical": (3, torch.float32), "target": (3, torch.float32), "valid": (2, torch.bool),
    "kept": (2, torch.bool), "hidden": (2, torch.bool), "pad": (2, torch.bool), "doy": (2, torch.float32),
    "sar": (3, torch.float32), "sar_valid": (2, torch.bool), "sar_pad": (2, torch.bool),
    "sar_doy": (2, torch.float32), "year": (1, torch.int64), "cube": (1, torch.int64), "y": (1, torch.int64),
    "x": (1, torch.int64), "shard": (1, torch.int64),
}


def make_cube(
    seed: int = 0,
    *,
    ny: int = 12,
    nx: int = 10,
    years: tuple[int, ...] = (2020,),
    dates_per_year: int = 14,
    bands: int = 3,
    chunks: tuple[int, int] | None = (4, 5),
    sar: bool = True,
    mask: bool = False,
) -> xr.Dataset:
    """A small seeded cube: pixels range from nearly always clear to nearly always cloudy."""
    rng = np.random.default_rng(seed)
    times = []
    for i, year in enumerate(years):
        # a different number of dates per year, so windows have different lengths
        n = dates_per_year + i
        days = np.sort(rng.choice(365, size=n, replace=False))
        times.append(np.datetime64(f"{year}-01-01T10:30") + days.astype("timedelta64[D]"))
    time = np.concatenate(times).astype("datetime64[ns]")
    n_time = len(time)
    optical = rng.uniform(0.0, 0.5, (n_time, bands, ny, nx)).astype(np.float32)
    p_clear = rng.uniform(0.05, 0.95, (1, ny, nx))  # per pixel
    clear = rng.random((n_time, ny, nx)) < p_clear
    data = {}
    if mask:
        # clouds as bright values flagged by the mask, plus a few NaN dates the mask calls clear
        optical = np.where(clear[:, None], optical, np.float32(0.9))
        optical[rng.random((n_time, 1, ny, nx)).repeat(bands, 1) < 0.05] = np.nan
        data["clear"] = (("time", "y", "x"), clear)
    else:
        optical[~clear[:, None].repeat(bands, 1)] = np.nan
    data["optical"] = (("time", "band", "y", "x"), optical)
    coords = {"time": time, "band": [f"B{i}" for i in range(bands)], "y": np.arange(ny) * -10.0,
              "x": np.arange(nx) * 10.0}
    if sar:
        sar_time = np.concatenate(
            [np.arange(np.datetime64(f"{y}-01-03T17:40"), np.datetime64(f"{y}-12-31"), np.timedelta64(12, "D"))
             for y in years]
        ).astype("datetime64[ns]")
        values = rng.normal(-15, 3, (len(sar_time), 2, ny, nx)).astype(np.float32)
        values[rng.random(values.shape) < 0.03] = np.nan
        data["sar"] = (("sar_time", "sar_band", "y", "x"), values)
        coords.update(sar_time=sar_time, sar_band=["VV", "VH"])
    ds = xr.Dataset(data, coords=coords)
    return ds.chunk({"y": chunks[0], "x": chunks[1]}) if chunks else ds


def clear_of(ds: xr.Dataset, mask: str | None = None) -> np.ndarray:
    valid = np.isfinite(ds.optical.values).all(1)
    return valid & ds[mask].values if mask else valid


def eligible(ds: xr.Dataset, min_obs: int, cube: int = 0, mask: str | None = None) -> set[tuple[int, ...]]:
    """(cube, y, x, year) of every pixel-year with at least min_obs clear observations, by numpy."""
    valid = clear_of(ds, mask)
    years = pd.DatetimeIndex(ds.time.values).year.to_numpy()
    out = set()
    for year in np.unique(years):
        counts = valid[years == year].sum(0)
        out |= {(cube, int(y), int(x), int(year)) for y, x in zip(*np.nonzero(counts >= min_obs), strict=True)}
    return out


def ids(samples) -> list[tuple[int, ...]]:
    return [(s["cube"], s["y"], s["x"], s["year"]) for s in samples]


def batch_ids(batches) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in row) for b in batches
            for row in torch.stack([b["cube"], b["y"], b["x"], b["year"]], 1)]


def same_samples(a, b) -> bool:
    if len(a) != len(b):
        return False
    for sa, sb in zip(a, b, strict=True):
        if sa.keys() != sb.keys():
            return False
        for k in sa:
            va, vb = sa[k], sb[k]
            if isinstance(va, np.ndarray):
                if va.dtype != vb.dtype or va.shape != vb.shape or va.tobytes() != vb.tobytes():
                    return False
            elif va != vb:
                return False
    return True


# -- determinism ------------------------------------------------------------------------------------------
def test_same_seed_same_stream_bit_for_bit_and_other_seeds_differ():
    ds = make_cube(0, years=(2020, 2021))
    gaps = GapConfig(mode={"random": 1, "runs": 1, "transplant": 1})
    a = list(PixelStream(ds, seed=3, buffer_size=50, gaps=gaps))
    b = list(PixelStream(ds, seed=3, buffer_size=50, gaps=gaps))
    c = list(PixelStream(ds, seed=4, buffer_size=50, gaps=gaps))
    assert len(a) > 100 and same_samples(a, b)
    assert ids(a) != ids(c) and sorted(ids(a)) == sorted(ids(c))
    kept_a = {i: s["kept"] for i, s in zip(ids(a), a, strict=True)}
    assert any(not np.array_equal(kept_a[i], s["kept"]) for i, s in zip(ids(c), c, strict=True))


def test_epochs_reorder_the_same_pixels():
    ds = make_cube(1)
    stream = PixelStream(ds, seed=0, buffer_size=30)
    e0 = ids(stream)
    stream.mark_consumed({"shard": torch.zeros(5, dtype=torch.int64)})
    stream.set_epoch(1)  # another epoch: starts from its beginning
    e1 = ids(stream)
    assert e0 != e1 and sorted(e0) == sorted(e1)
    assert not np.array_equal(stream.block_order(0), stream.block_order(1))


def test_stream_is_shuffled_across_blocks():
    ds = make_cube(2, ny=16, nx=16, chunks=(4, 4))
    stream = PixelStream(ds, seed=0, buffer_size=200, min_obs=1)
    out = ids(stream)
    first_blocks = {(y // 4, x // 4) for _, y, x, _ in out[:40]}
    assert len(first_blocks) > 2  # the start of the stream mixes several blocks


# -- coverage: every pixel once, whatever the sharding ------------------------------------------------------
def test_one_epoch_yields_every_eligible_pixel_once():
    ds = make_cube(3, years=(2020, 2021))
    stream = PixelStream(ds, seed=0, min_obs=4, buffer_size=64)
    out = ids(stream)
    assert len(out) == len(set(out))
    assert set(out) == eligible(ds, 4)
    assert stream.count_samples() == len(out)


@pytest.mark.parametrize(("world_size", "num_workers"), [(2, 0), (1, 2), (2, 2)])
def test_ranks_and_workers_split_blocks_without_duplicates_or_losses(world_size, num_workers):
    ds = make_cube(4, ny=16, nx=15, chunks=(4, 5))
    expected = eligible(ds, 3)
    seen: list[tuple[int, ...]] = []
    shard_of_block: dict[tuple[int, int], set[int]] = {}
    for rank in range(world_size):
        stream = PixelStream(ds, seed=5, min_obs=3, buffer_size=40, rank=rank, world_size=world_size)
        batches = list(pixel_loader(stream, batch_size=16, num_workers=num_workers))
        seen += batch_ids(batches)
        for b in batches:
            for y, x, s in zip(b["y"].tolist(), b["x"].tolist(), b["shard"].tolist(), strict=True):
                shard_of_block.setdefault((y // 4, x // 5), set()).add(s)
    assert len(seen) == len(set(seen)), "a pixel came twice"
    assert set(seen) == expected, "a pixel was lost"
    assert all(len(s) == 1 for s in shard_of_block.values()), "a block was read by two shards"
    assert set().union(*shard_of_block.values()) == set(range(world_size * max(num_workers, 1)))


def test_a_subset_of_blocks_streams_only_those_blocks():
    ds = make_cube(26, ny=8, nx=10, chunks=(4, 5))  # 2 x 2 blocks
    full = PixelStream(ds, seed=0, min_obs=2)
    held_out = full.blocks[[0, 3]]
    train = PixelStream(ds, seed=0, min_obs=2, blocks=full.blocks[[2, 1]])
    valid = PixelStream(ds, seed=0, min_obs=2, blocks=held_out[::-1])
    assert train.n_blocks == valid.n_blocks == 2 and np.array_equal(valid.blocks, held_out)
    a, b = set(ids(train)), set(ids(valid))
    assert not a & b and a | b == eligible(ds, 2)
    assert {(y // 4, x // 5) for _, y, x, _ in b} == {(0, 0), (1, 1)}
    with pytest.raises(XreconError, match="block grid"):
        PixelStream(ds, blocks=[(0, 5, 0)])


def test_rank_from_torch_distributed_when_not_given(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    stream = PixelStream(make_cube(0), seed=0)
    assert (stream.rank, stream.world_size) == (1, 3)


# -- resuming -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream_batches", [False, True])
def test_restart_from_saved_state_continues_identically(stream_batches):
    ds = make_cube(6, years=(2020, 2021), ny=12, nx=12, chunks=(4, 4))
    kwargs = dict(seed=7, buffer_size=50, gaps=GapConfig(), batch_size=16 if stream_batches else None)
    full = list(pixel_loader(PixelStream(ds, **kwargs), batch_size=None if stream_batches else 16))

    stream = PixelStream(ds, **kwargs)
    stream.set_epoch(0)
    done = []
    for i, batch in enumerate(pixel_loader(stream, batch_size=None if stream_batches else 16)):
        stream.mark_consumed(batch)
        done.append(batch)
        if i == 6:
            break
    state = stream.state_dict()
    assert sum(state["consumed"].values()) == sum(len(b["y"]) for b in done)

    resumed = PixelStream(ds, **kwargs)  # a new process, say
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])  # as a loop does first thing: must not forget the state
    rest = list(pixel_loader(resumed, batch_size=None if stream_batches else 16))
    assert len(done) + len(rest) == len(full)
    for a, b in zip(done + rest, full, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_restart_with_workers_continues_each_shard():
    ds = make_cube(8, ny=12, nx=12, chunks=(4, 4))

    def per_shard(batches):
        out: dict[int, list] = {}
        for b in batches:
            for row, s in zip(batch_ids([b]), b["shard"].tolist(), strict=True):
                out.setdefault(s, []).append(row)
        return out

    full = per_shard(pixel_loader(PixelStream(ds, seed=1, buffer_size=30), batch_size=8, num_workers=2))
    stream = PixelStream(ds, seed=1, buffer_size=30)
    done = []
    for i, batch in enumerate(pixel_loader(stream, batch_size=8, num_workers=2)):
        stream.mark_consumed(batch)
        done.append(batch)
        if i == 4:
            break
    resumed = PixelStream(ds, seed=1, buffer_size=30)
    resumed.load_state_dict(stream.state_dict())
    rest = per_shard(pixel_loader(resumed, batch_size=8, num_workers=2))
    first = per_shard(done)
    assert set(full) == {0, 1}
    for s in full:
        assert first.get(s, []) + rest.get(s, []) == full[s]


def test_state_checks_and_merging():
    ds = make_cube(0)
    stream = PixelStream(ds, seed=1, world_size=2, rank=0)
    with pytest.raises(XreconError, match="seed"):
        stream.load_state_dict({"seed": 2, "epoch": 0, "world_size": 2, "consumed": {}})
    with pytest.raises(XreconError, match="world_size"):
        stream.load_state_dict({"seed": 1, "epoch": 0, "world_size": 1, "consumed": {}})
    stream.load_state_dict({"seed": 1, "epoch": 3, "world_size": 2, "consumed": {5: 10}})
    assert stream.epoch == 3
    with pytest.raises(XreconError, match="shards"):
        next(iter(stream))  # 2 shards (2 ranks x 1 worker): shard 5 cannot exist
    merged = PixelStream.merge_states([
        {"seed": 1, "epoch": 3, "world_size": 2, "consumed": {0: 4}},
        {"seed": 1, "epoch": 3, "world_size": 2, "consumed": {1: 6}},
    ])
    assert merged["consumed"] == {0: 4, 1: 6}


# -- what is yielded ----------------------------------------------------------------------------------------
def test_min_obs_skips_pixels_with_too_few_clear_observations():
    ds = make_cube(9, chunks=None)
    valid = clear_of(ds)
    counts = valid.sum(0)
    for min_obs in (1, 6, 10):
        out = set(ids(PixelStream(ds, seed=0, min_obs=min_obs, block=5)))
        assert out == {(0, y, x, 2020) for y, x in zip(*np.nonzero(counts >= min_obs), strict=True)}
        assert 0 < len(out) < counts.size or min_obs == 1


def test_samples_hold_the_cube_values_and_never_nan():
    ds = make_cube(10, years=(2020, 2021), mask=True)
    opt, sar = ds.optical.values, ds.sar.values
    valid_all = clear_of(ds, "clear")
    time = pd.DatetimeIndex(ds.time.values)
    sar_time = pd.DatetimeIndex(ds.sar_time.values)
    samples = list(PixelStream(ds, mask="clear", seed=0, min_obs=2, gaps=GapConfig(fraction=0.4)))
    assert samples
    for s in samples[:200]:
        _, y, x, year = s["cube"], s["y"], s["x"], s["year"]
        ti = np.flatnonzero(time.year == year)
        si = np.flatnonzero(sar_time.year == year)
        valid = valid_all[ti, y, x]
        assert np.array_equal(s["valid"], valid)
        assert np.array_equal(s["doy"], time[ti].dayofyear.to_numpy().astype(np.float32))
        assert np.array_equal(s["optical"][valid], opt[ti, :, y, x][valid])
        assert (s["optical"][~valid] == 0).all()  # cloudy values (0.9 here) never leak
        assert not (s["kept"] & ~s["valid"]).any() and s["kept"].sum() >= 1
        sv = np.isfinite(sar[si, :, y, x]).all(1)
        assert np.array_equal(s["sar_valid"], sv)
        assert np.array_equal(s["sar"][sv], sar[si, :, y, x][sv])
        assert np.array_equal(s["sar_doy"], sar_time[si].dayofyear.to_numpy().astype(np.float32))
        for k in ("optical", "sar"):
            assert np.isfinite(s[k]).all()


def test_batch_format_keys_shapes_dtypes_and_padding():
    ds = make_cube(11, years=(2020, 2021))  # 14 and 15 dates: padding needed
    stream = PixelStream(ds, seed=0, min_obs=3, gaps=GapConfig())
    batch = next(iter(pixel_loader(stream, batch_size=64)))
    assert set(batch) == set(BATCH_KEYS)
    for k, (ndim, dtype) in BATCH_KEYS.items():
        assert batch[k].ndim == ndim and batch[k].dtype == dtype, k
    B, T, C = batch["optical"].shape
    assert (B, C) == (64, 3) and T == 15 and batch["sar"].shape[2] == 2
    assert torch.equal(batch["hidden"], batch["valid"] & ~batch["kept"])
    assert batch["hidden"].any() and not batch["pad"].all()
    short = batch["year"] == 2020
    assert short.any() and batch["pad"][short, -1].all() and not batch["pad"][~short].any()
    for k in ("valid", "kept", "hidden"):
        assert not (batch[k] & batch["pad"]).any()
    assert (batch["doy"][batch["pad"]] == 0).all() and (batch["doy"][~batch["pad"]] >= 1).all()
    assert torch.equal(batch["optical"], torch.where(batch["kept"][..., None], batch["target"], 0))
    assert (batch["target"][~batch["valid"]] == 0).all()
    for k in ("optical", "target", "sar", "doy", "sar_doy"):
        assert torch.isfinite(batch[k]).all()


def test_stream_batches_share_their_dates():
    ds = make_cube(12, years=(2020, 2021, 2022), ny=16, nx=16, chunks=(8, 8))
    stream = PixelStream(ds, seed=0, min_obs=3, batch_size=32, buffer_size=300)
    batches = list(pixel_loader(stream))
    for b in batches:
        assert len(b["y"]) <= 32
        assert (b["doy"] == b["doy"][0]).all() and (b["sar_doy"] == b["sar_doy"][0]).all()
        assert len(set(b["year"].tolist())) == 1 and not b["pad"].any()
    out = batch_ids(batches)
    assert len(out) == len(set(out)) and set(out) == eligible(ds, 3)
    assert sum(len(b["y"]) == 32 for b in batches) >= len(batches) - 6  # partial ones only when draining


def test_transplanted_clouds_come_from_the_same_block():
    ds = make_cube(13, ny=8, nx=10, chunks=(4, 5))
    valid_all = clear_of(ds)
    config = GapConfig(mode="transplant", shift=False)
    n_checked = 0
    for s in PixelStream(ds, seed=0, min_obs=3, gaps=config, buffer_size=20):
        y, x = s["y"], s["x"]
        by, bx = y // 4 * 4, x // 5 * 5
        donors = valid_all[:, by:by + 4, bx:bx + 5].reshape(len(valid_all), -1).T  # block pixels, (P, T)
        hidden = s["valid"] & ~s["kept"]
        if s["kept"].sum() > 1:  # min_keep did not have to give anything back
            assert any(np.array_equal(hidden, s["valid"] & ~d) for d in donors)
            n_checked += 1
    assert n_checked > 40


def test_window_none_counts_days_from_january_first_of_the_first_year():
    ds = make_cube(14, years=(2020, 2021))
    samples = list(PixelStream(ds, seed=0, window=None, min_obs=5))
    assert {s["year"] for s in samples} == {2020}
    time = pd.DatetimeIndex(ds.time.values).normalize()
    expected = ((time - pd.Timestamp("2020-01-01")).days + 1).to_numpy(np.float32)
    assert np.array_equal(samples[0]["doy"], expected) and expected.max() > 366
    out = {(y, x) for _, y, x, _ in ids(samples)}
    assert out == set(zip(*np.nonzero(clear_of(ds).sum(0) >= 5), strict=True))
    with pytest.raises(XreconError, match="January 1"):
        PixelStream(ds, window=None, origin="2020-03-01")


def test_several_cubes_stream_together():
    a, b = make_cube(15, dates_per_year=12), make_cube(16, ny=6, nx=7, dates_per_year=20)
    out = ids(PixelStream([a, b], seed=0, min_obs=4))
    assert set(out) == eligible(a, 4, cube=0) | eligible(b, 4, cube=1)
    with pytest.raises(CubeError, match="bands"):
        PixelStream([a, make_cube(17, bands=4)])
    with pytest.raises(CubeError, match="bands"):
        PixelStream([a, make_cube(17, sar=False)])


def test_optical_only_cube():
    batch = next(iter(pixel_loader(PixelStream(make_cube(18, sar=False), seed=0, min_obs=2), batch_size=8)))
    assert batch["sar"].shape == (8, 0, 0) and batch["sar_doy"].shape == (8, 0)


def test_bad_arguments_are_refused():
    ds = make_cube(0)
    for kwargs, match in [({"min_obs": 0}, "min_obs"), ({"buffer_size": 0}, "buffer_size"),
                          ({"window": "month"}, "window"), ({"rank": 2, "world_size": 2}, "rank"),
                          ({"gaps": "random"}, "GapConfig"), ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(XreconError, match=match):
            PixelStream(ds, **kwargs)
    with pytest.raises(CubeError):
        PixelStream(ds, optical="nope")
    with pytest.raises(XreconError, match="persistent"):
        pixel_loader(PixelStream(ds), num_workers=1, persistent_workers=True)


# -- laziness and memory ------------------------------------------------------------------------------------
def lazy_cube(ny: int, nx: int, chunk: int, n_time: int = 20, bands: int = 4) -> xr.Dataset:
    """A cube that exists only as a dask graph: each block is generated when read."""
    rng = da.random.default_rng(0)
    values = rng.random((n_time, bands, ny, nx), chunks=(n_time, bands, chunk, chunk), dtype=np.float32)
    cloudy = rng.random((n_time, 1, ny, nx), chunks=(n_time, 1, chunk, chunk)) < 0.3
    optical = da.where(cloudy, np.float32(np.nan), values)
    time = pd.date_range("2021-01-05", periods=n_time, freq="7D")
    return xr.Dataset({"optical": (("time", "band", "y", "x"), optical)},
                      coords={"time": time, "band": [f"B{i}" for i in range(bands)]})


def test_reads_lazily_one_block_at_a_time():
    ds = make_cube(19, ny=12, nx=10, chunks=(4, 5))
    with raise_if_dask_computes():
        stream = PixelStream(ds, seed=0)  # building the stream computes nothing
    with raise_if_dask_computes(max_computes=stream.n_blocks) as scheduler:
        list(stream)
    assert scheduler.total_computes == stream.n_blocks == 6  # one compute per block read
    with raise_if_dask_computes(max_computes=1):
        compute_stats(ds)  # one pass for all bands and SAR


def test_memory_is_bounded_by_one_block_and_the_buffer():
    # 15 MB of cube (one year) in 36 blocks of 0.43 MB, generated only when read
    ds = lazy_cube(ny=96, nx=96, chunk=16, n_time=52, bands=8)
    buffer_size = 100
    stream = PixelStream(ds, seed=0, min_obs=1, buffer_size=buffer_size, gaps=GapConfig())
    next(iter(stream))  # warm up imports and caches before measuring
    live_blocks: Counter[str] = Counter()
    live_samples: Counter[str] = Counter()
    read_block, block_samples = stream._read_block, stream._block_samples

    def spy_read(task):
        block = read_block(task)
        live_blocks["n"] += 1
        weakref.finalize(block, live_blocks.subtract, ["n"])
        return block

    def spy_samples(task, shard):
        out = block_samples(task, shard)
        for s in out:
            live_samples["n"] += 1
            weakref.finalize(s["optical"], live_samples.subtract, ["n"])
        return out

    stream._read_block, stream._block_samples = spy_read, spy_samples
    worst_samples = worst_blocks = n = 0
    tracemalloc.start()
    try:
        for sample in stream:
            assert sample["optical"].base is None and sample["valid"].base is None  # owns its memory
            del sample
            worst_samples = max(worst_samples, live_samples["n"])
            worst_blocks = max(worst_blocks, live_blocks["n"])
            n += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 96 * 96
    # counted: samples alive at any time are at most the buffer plus one block's worth, and no block
    # outlives the making of its samples (samples are copies, not views that would pin their block)
    assert worst_blocks == 0, "a block's arrays outlived the reading of its samples"
    assert worst_samples <= buffer_size + 16 * 16
    # measured: the peak is a few blocks' worth (the block, its copies, its samples), not the cube
    cube_bytes = ds.optical.nbytes
    block_bytes = cube_bytes // stream.n_blocks
    assert 8 * block_bytes + 1_000_000 < cube_bytes / 3
    assert peak < 8 * block_bytes + 1_000_000, (peak, block_bytes, cube_bytes)


# -- statistics -------------------------------------------------------------------------------------------
def test_stats_match_numpy():
    ds = make_cube(20, years=(2020, 2021), mask=True)
    stats = compute_stats(ds, mask="clear")
    valid = clear_of(ds, "clear")
    opt = np.where(valid[:, None], ds.optical.values, np.nan).astype(np.float64)
    np.testing.assert_allclose(stats.optical_mean, np.nanmean(opt, axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(stats.optical_std, np.nanstd(opt, axis=(0, 2, 3)), rtol=1e-10)
    assert stats.optical_count.tolist() == [int(valid.sum())] * 3
    sar = ds.sar.values.astype(np.float64)
    sar = np.where(np.isfinite(sar).all(1, keepdims=True), sar, np.nan)
    np.testing.assert_allclose(stats.sar_mean, np.nanmean(sar, axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(stats.sar_std, np.nanstd(sar, axis=(0, 2, 3)), rtol=1e-10)
    assert stats.optical_bands == ("B0", "B1", "B2") and stats.sar_bands == ("VV", "VH")
    assert NormStats.from_dict(stats.to_dict()) == stats
    torch.save({"stats": stats.to_dict()}, buf := __import__("io").BytesIO())
    buf.seek(0)
    assert NormStats.from_dict(torch.load(buf, weights_only=True)["stats"]) == stats


def test_stats_pool_several_cubes():
    a, b = make_cube(21, chunks=None), make_cube(22, ny=5, nx=9, dates_per_year=30)
    stats = compute_stats([a, b])
    values = np.concatenate([np.moveaxis(c.optical.values, 1, 0).reshape(3, -1) for c in (a, b)], axis=1)
    values = values.astype(np.float64)
    np.testing.assert_allclose(stats.optical_mean, np.nanmean(values, axis=1), rtol=1e-10)
    np.testing.assert_allclose(stats.optical_std, np.nanstd(values, axis=1), rtol=1e-10)


def test_stats_refuse_empty_bands_and_mismatched_cubes():
    ds = make_cube(23, chunks=None)
    with pytest.raises(CubeError, match="no clear"):
        compute_stats(ds.assign(optical=ds.optical * np.nan))
    with pytest.raises(CubeError, match="bands"):
        compute_stats([ds, make_cube(24, bands=2)])


def test_standardize_batch_uses_stats_and_zeros_the_unobserved():
    ds = make_cube(25)
    stats = compute_stats(ds)
    batch = next(iter(pixel_loader(PixelStream(ds, seed=0, min_obs=3, gaps=GapConfig()), batch_size=32)))
    out = standardize_batch(batch, stats)
    mean = torch.tensor(stats.optical_mean, dtype=torch.float32)
    std = torch.tensor(stats.optical_std, dtype=torch.float32)
    kept, valid = batch["kept"], batch["valid"]
    torch.testing.assert_close(out["optical"][kept], (batch["optical"][kept] - mean) / std)
    assert (out["optical"][~kept] == 0).all() and (out["target"][~valid] == 0).all()
    torch.testing.assert_close(out["target"][valid], (batch["target"][valid] - mean) / std)
    sv = batch["sar_valid"]
    assert (out["sar"][~sv] == 0).all() and out["sar"][sv].abs().mean() < 3
    assert out["doy"] is batch["doy"]


def test_batches_train_anytimeformer():
    """The batch format is what the model and the losses take: one step of the documented loop."""
    from xrecon.models.anytimeformer import AnytimeFormer, AnytimeFormerConfig
    from xrecon.testing import synthetic_cube
    from xrecon.training import reconstruction_loss, take_days

    ds = synthetic_cube(ny=8, nx=8, seed=0, chunks=4)
    stats = compute_stats(ds)
    stream = PixelStream(ds, seed=0, batch_size=16, gaps=GapConfig())
    batch = next(iter(pixel_loader(stream)))
    torch.manual_seed(0)
    model = AnytimeFormer(AnytimeFormerConfig(n_optical_bands=4, d_model=16, d_inner=8, d_k=4, d_v=4))
    model.set_normalization(stats.optical_mean, stats.optical_std, stats.sar_mean, stats.sar_std)
    model.train()
    b = standardize_batch(batch, stats)
    doy, sar_doy = b["doy"][0], b["sar_doy"][0]
    daily = torch.arange(1, 367, dtype=torch.float32)
    dense = model(b["optical"], doy, daily, b["sar"], sar_doy)  # (B, 366, C)
    pred = take_days(dense, 1, b["doy"])
    terms = reconstruction_loss(pred, b["target"], b["hidden"], b["kept"], dense=dense)
    assert torch.isfinite(terms.total) and terms.imputation > 0 and terms.tv > 0
    terms.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
