"""Hold-out shapes of evaluate (gaps="pixels" | "clouds" | int): fraction, contiguity, seed, chunk invariance."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xrecon  # noqa: F401
from xrecon.errors import XreconError
from xrecon.evaluate import gap_sizes
from xrecon.holdout import cloud_donors, hide_observations
from xrecon.rng import hash_uniform
from xrecon.testing import raise_if_dask_computes, synthetic_cube


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=32, nx=30, seed=4, sar=False)


def _clear(ds):
    return (ds.optical.notnull().all("band") & ds.clear).values


def _neighbour_share(hidden):
    """Share of hidden pixels with a hidden 4-neighbour on the same date.

    About 1 - (1 - fraction)^4 for single pixels, close to 1 for shapes."""
    h = np.pad(hidden, ((0, 0), (1, 1), (1, 1)))
    core = h[:, 1:-1, 1:-1]
    near = h[:, :-2, 1:-1] | h[:, 2:, 1:-1] | h[:, 1:-1, :-2] | h[:, 1:-1, 2:]
    return (core & near).sum() / core.sum()


def test_pixels_is_the_historical_hold_out(cube):
    held, hidden = hide_observations(cube, 0.2, seed=3, mask="clear")
    t = np.arange(cube.sizes["time"])[:, None, None]
    y = np.arange(cube.sizes["y"])[None, :, None]
    x = np.arange(cube.sizes["x"])[None, None, :]
    np.testing.assert_array_equal(hidden.values, _clear(cube) & (hash_uniform(3, t, y, x) < 0.2))
    same, _ = hide_observations(cube, 0.2, seed=3, mask="clear", gaps="pixels")
    xr.testing.assert_identical(held, same)


@pytest.mark.parametrize("gaps", ["clouds", 4, 7, "pixels"])
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_fraction_is_honoured(cube, gaps, fraction):
    _, hidden = hide_observations(cube, fraction, seed=1, mask="clear", gaps=gaps)
    share = hidden.values.sum() / _clear(cube).sum()
    tolerance = {"clouds": 0.02, "pixels": 0.01}.get(gaps, 0.05)  # blocks: a Bernoulli draw per block
    assert abs(share - fraction) <= tolerance, share
    assert not (hidden.values & ~_clear(cube)).any()  # only clear observations are hidden


@pytest.mark.parametrize("gaps", ["clouds", 5])
def test_shapes_are_contiguous(cube, gaps):
    _, pixels = hide_observations(cube, 0.2, seed=0, mask="clear")
    _, shaped = hide_observations(cube, 0.2, seed=0, mask="clear", gaps=gaps)
    assert _neighbour_share(pixels.values) < 0.65 < 0.85 < _neighbour_share(shaped.values)


def test_clouds_come_from_donor_dates(cube):
    _, hidden = hide_observations(cube, 0.3, seed=2, mask="clear", gaps="clouds")
    clear = _clear(cube)
    donors = cloud_donors(cube.sizes["time"], 2)
    under = np.zeros_like(clear)
    for r in range(len(donors)):
        under |= ~clear[donors[r]]
    assert not (hidden.values & ~under).any()
    assert len(donors) == 3 and (donors != np.arange(cube.sizes["time"])).all()


def test_blocks_are_squares():
    ds = synthetic_cube(ny=24, nx=24, seed=1, sar=False, cloud_cover=0.0)
    _, hidden = hide_observations(ds, 0.3, seed=0, gaps=6)
    for k in range(ds.sizes["time"]):
        h = hidden.values[k]
        rows, cols = np.flatnonzero(h.any(1)), np.flatnonzero(h.any(0))
        # each hidden row (column) run is a multiple of 6 long, except where a block meets the edge
        for line in list(h[rows]) + list(h.T[cols]):
            runs = np.diff(np.flatnonzero(np.diff(np.r_[0, line.astype(int), 0])))[::2]
            inner = runs[1:-1] if len(runs) > 2 else []
            assert all(r % 6 == 0 for r in inner)


@pytest.mark.parametrize("gaps", ["clouds", 4, "pixels"])
def test_seeded_and_chunk_invariant_and_lazy(cube, gaps):
    held, hidden = hide_observations(cube, 0.2, seed=7, mask="clear", gaps=gaps)
    with raise_if_dask_computes():
        held_c, hidden_c = hide_observations(cube.chunk({"y": 7, "x": 11}), 0.2, seed=7, mask="clear", gaps=gaps)
    xr.testing.assert_identical(hidden, hidden_c.compute())
    xr.testing.assert_identical(held, held_c.compute())
    _, other = hide_observations(cube, 0.2, seed=8, mask="clear", gaps=gaps)
    assert (other.values != hidden.values).any()


@pytest.mark.parametrize("gaps", ["squares", 0, -3, True, 2.5])
def test_bad_gaps(cube, gaps):
    with pytest.raises(XreconError, match="gaps"):
        hide_observations(cube, 0.2, gaps=gaps)


def test_gap_sizes():
    kept = np.ones((1, 20, 20), bool)
    hidden = np.zeros_like(kept)
    hidden[0, 2, 2] = True
    hidden[0, 8:15, 8:15] = True
    kept &= ~hidden
    k = xr.DataArray(kept, dims=("time", "y", "x"))
    h = xr.DataArray(hidden, dims=("time", "y", "x"))
    sizes = gap_sizes(k, h, reach=3).values
    assert sizes[0, 2, 2] == 1 and sizes[0, 8, 8] == 1 and sizes[0, 10, 10] == 3 and sizes[0, 11, 11] == np.inf
    assert np.isnan(sizes[0, 0, 0])
    chunked = gap_sizes(k.chunk({"y": 4, "x": 7}), h.chunk({"y": 4, "x": 7}), reach=3)
    np.testing.assert_array_equal(chunked.values, sizes)


def test_evaluate_by_gap_size_partitions_and_clouds(cube):
    table = cube.recon.evaluate(["linear", "neighbors"], mask="clear", gaps="clouds", by_gap_size=True,
                                by_gap=True)
    rows = table[(table.band == "B04") & (table.method == "linear")]
    total = rows[(rows.gap == "all") & (rows.gap_size == "all")].n.iloc[0]
    assert rows[rows.gap_size != "all"].n.sum() == total == rows[rows.gap != "all"].n.sum()
    chunked = cube.chunk({"y": 9, "x": 10}).recon.evaluate(["neighbors"], mask="clear", gaps="clouds",
                                                           by_gap_size=True)
    mine = table[(table.method == "neighbors") & (table.gap == "all")].drop(columns="gap").reset_index(drop=True)
    np.testing.assert_allclose(chunked.rmse.values, mine.rmse.values, rtol=1e-9)
    assert list(chunked.n) == list(mine.n)
    with pytest.raises(XreconError, match="by_gap_size"):
        cube.recon.evaluate(["linear"], by_gap_size=(3, 1))


def test_evaluate_computes_once():
    ds = synthetic_cube(ny=16, nx=16, seed=0, sar=False, chunks={"y": 8, "x": 8})
    with raise_if_dask_computes(max_computes=1) as scheduler:
        ds.recon.evaluate(["linear", "neighbors"], mask="clear", gaps="clouds", by_gap=True, by_gap_size=True)
    assert scheduler.total_computes == 1
