"""The patch stream's simulated clouds and evaluate's hold-outs are one implementation (xrecon.holdout)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xrecon.errors import XreconError
from xrecon.holdout import hidden_mask, hide_observations
from xrecon.testing import synthetic_cube
from xrecon.training import PatchStream, RestoreDiTTask, TrainConfig

SIZE, FRAMES, BLOCK = 16, 6, 16


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=32, nx=32, bands=3, seed=5, sar=False).compute()


def samples(cube, **kw):
    kw = dict(dict(size=SIZE, frames=FRAMES, seed=3, mask="clear", block=BLOCK, augment=False), **kw)
    return list(PatchStream(cube, **kw))


def test_hidden_mask_of_a_block_is_the_whole_cubes_there(cube):
    valid = cube.optical.notnull().all("band") & cube.clear
    for gaps in ("pixels", 4):
        whole = hidden_mask(valid, 0.3, seed=2, gaps=gaps)
        part = hidden_mask(valid[:, 16:, 8:24], 0.3, seed=2, gaps=gaps, offset=(0, 16, 8))
        xr.testing.assert_equal(whole[:, 16:, 8:24].drop_vars(["y", "x", "time"], errors="ignore"),
                                part.drop_vars(["y", "x", "time"], errors="ignore"))
    held, hidden = hide_observations(cube, 0.3, seed=2, gaps="clouds", mask="clear")
    xr.testing.assert_equal(hidden.drop_vars("hidden", errors="ignore").rename(None),
                            hidden_mask(valid, 0.3, seed=2, gaps="clouds").rename(None))


@pytest.mark.parametrize("gaps", ["clouds", 4, "pixels"])
def test_stream_uses_evaluates_shapes(cube, gaps):
    """Each window's clouds are hidden_mask's choice on its block, cut to the window, all clear pixels."""
    found = samples(cube, gaps=gaps, gap_fraction=0.25)
    assert found
    valid = (cube.optical.notnull().all("band") & cube.clear).values
    shares = []
    for s in found:
        t, y, x = s["t"], s["y"], s["x"]
        window = valid[t:t + FRAMES, y:y + SIZE, x:x + SIZE]
        np.testing.assert_array_equal(s["valid"], window)
        assert not (s["cloud"] & ~s["valid"]).any()  # only clear observations are hidden
        shares.append(s["cloud"].sum() / max(s["valid"].sum(), 1))
    assert 0.1 < np.mean(shares) < 0.45  # about gap_fraction of the clear observations
    if gaps == 4:  # squares on the shifted grid: a hidden pixel's 4x4 cell is hidden where clear
        s = max(found, key=lambda s: s["cloud"].sum())
        assert s["cloud"].sum() >= 8


def test_cloud_shapes_are_contiguous_and_from_other_dates(cube):
    """gaps="clouds": a hidden pixel on a date is under another date's cloud at the same place."""
    valid = (cube.optical.notnull().all("band") & cube.clear).values
    for s in samples(cube, gaps="clouds", gap_fraction=0.25):
        y, x = s["y"], s["x"]
        cloudy_somewhere = (~valid[:, y:y + SIZE, x:x + SIZE]).any(0)  # (H, W)
        assert not (s["cloud"].any(0) & ~cloudy_somewhere).any()


def test_window_default_is_unchanged_and_seeded(cube):
    a, b = samples(cube), samples(cube, gaps="window")
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["cloud"], y["cloud"])
    c, d = samples(cube, gaps="clouds"), samples(cube, gaps="clouds")
    for x, y in zip(c, d, strict=True):
        np.testing.assert_array_equal(x["cloud"], y["cloud"])


@pytest.mark.parametrize(("kw", "match"), [
    (dict(gaps="blobs"), "gaps='blobs'"),
    (dict(gaps=0), "gaps=0"),
    (dict(gaps="clouds", gap_fraction=0), "gap_fraction"),
    (dict(gaps="clouds", gap_fraction=1.5), "gap_fraction"),
])
def test_bad_gaps(cube, kw, match):
    with pytest.raises(XreconError, match=match):
        samples(cube, **kw)


def test_the_task_passes_its_shapes_to_the_stream(cube):
    class CloudTask(RestoreDiTTask):
        tile, frames, gaps, gap_fraction = SIZE, FRAMES, "clouds", 0.25

    task = CloudTask()
    got = task.stream([cube], TrainConfig(), mask="clear", seed=3, block=BLOCK, augment=False)
    assert (got.gaps, got.gap_fraction) == ("clouds", 0.25)
    assert task.provenance([cube], TrainConfig(), mask="clear")["gaps"] == "clouds"
    for a, b in zip(got, samples(cube, gaps="clouds", gap_fraction=0.25), strict=True):
        np.testing.assert_array_equal(a["cloud"], b["cloud"])


# -- the pixel stream (AnytimeFormer): GapConfig(mode="clouds") -----------------------------------------

def test_pixel_stream_clouds_are_hidden_mask_of_the_block(cube, monkeypatch):
    """mode="clouds": each pixel-year hides what hidden_mask chose for its block (min_keep on top)."""
    from xrecon.training import GapConfig, PixelStream
    from xrecon.training import blockstream as stream_module  # where blocks are read and hidden

    calls = []

    def recording(valid, fraction, **kw):
        out = hidden_mask(valid, fraction, **kw)
        calls.append((kw["offset"], out.values, valid.values))
        return out

    monkeypatch.setattr(stream_module, "hidden_mask", recording)
    gaps = GapConfig(mode="clouds", fraction=0.25, min_keep=1)
    found = list(PixelStream(cube, mask="clear", seed=2, block=16, gaps=gaps))
    assert found and len(calls) == 4  # one per 16 x 16 block
    by_block = {offset[1:]: (shapes, valid) for offset, shapes, valid in calls}
    n_hidden = n_valid = restored = 0
    for s in found:
        y0, x0 = s["y"] // 16 * 16, s["x"] // 16 * 16
        shapes, valid = by_block[(y0, x0)]
        ti = np.flatnonzero(cube.time.dt.year.values == s["year"])
        assert len(ti) == len(s["valid"])  # a window is the calendar year's dates
        want = shapes[ti, s["y"] - y0, s["x"] - x0]
        np.testing.assert_array_equal(s["valid"], valid[ti, s["y"] - y0, s["x"] - x0])
        hidden = s["valid"] & ~s["kept"]
        assert not (hidden & ~want).any()  # only what the shapes hide
        if (hidden != want).any():  # a pixel-year left without observations gets one back
            assert s["kept"].sum() == 1 and not (s["valid"] & ~want).any()
            restored += 1
        n_hidden += hidden.sum()
        n_valid += s["valid"].sum()
    assert 0.15 < n_hidden / n_valid < 0.3 and restored < len(found) / 10


def test_clouds_mode_needs_its_shapes():
    from xrecon.training.gaps import GapConfig, simulate_gaps

    with pytest.raises(XreconError, match="shapes="):
        simulate_gaps(np.ones((2, 5), bool), GapConfig(mode="clouds"), rng=0)
    kept, hidden = simulate_gaps(np.ones((2, 5), bool), GapConfig(mode="clouds", min_keep=2), rng=0,
                                 shapes=np.array([[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]], bool))
    assert hidden[0].tolist() == [True, True, False, False, True] and kept[1].sum() == 2


@pytest.mark.parametrize(("size", "block"), [(16, 48), (32, 96)])
def test_clear_shares_of_blocks_across_storage_chunks(size, block):
    # a block that straddles the cube's chunks unevenly: dask (>= 2026.8) refuses to coarsen such an array
    ds = synthetic_cube(ny=100, nx=100, seed=0).chunk({"y": 50, "x": 50})
    stream = PatchStream(ds, size=size, frames=4, block=block)
    shares = stream.clear_shares(stream.blocks)
    valid = ds.optical.notnull().all("band").values
    for task, got in zip(np.asarray(stream.blocks).reshape(-1, 3), shares, strict=True):
        ys, xs = stream.block_slices(task)
        v = valid[:, ys, xs]
        ny, nx = v.shape[1] // size, v.shape[2] // size
        want = v[:, : ny * size, : nx * size].reshape(len(v), ny, size, nx, size).mean(axis=(2, 4))
        np.testing.assert_allclose(got, want)
