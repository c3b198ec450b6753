"""The "neighbors" method: chunk invariance, a spatial pattern it recovers, the temporal fallback, options."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xrecon  # noqa: F401
import xrecon.methods
from xrecon.errors import MethodError
from xrecon.methods.neighbors import fill_neighbors, window_radii
from xrecon.testing import raise_if_dask_computes, synthetic_cube


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=24, nx=26, seed=5, sar=False)


def _pattern_cube(ny=32, nx=32, nt=24, seed=0):
    """Fixed spatial pattern x a seasonal cycle + a date-wide jump per date (which no temporal method sees)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx]
    pattern = 0.2 + 0.1 * np.sin(yy / 3.0) * np.cos(xx / 4.0)  # (Y, X)
    days = 5.0 * np.arange(nt)
    season = 0.1 * np.sin(2 * np.pi * days / 120.0)
    jump = rng.normal(0, 0.03, nt)  # atmosphere-like, shared by the whole scene on a date
    truth = (pattern[None] * (1 + season[:, None, None]) + jump[:, None, None])[:, None]  # (T, 1, Y, X)
    truth = np.repeat(truth, 2, axis=1).astype(np.float32)
    times = pd.Timestamp("2020-01-01") + pd.to_timedelta(days, "D")
    coords = {"time": times, "band": ["B04", "B08"], "y": np.arange(ny), "x": np.arange(nx)}
    return xr.Dataset({"optical": (("time", "band", "y", "x"), truth)}, coords=coords)


@pytest.mark.parametrize("chunks", [{"y": 7, "x": 11}, {"y": 5, "x": 26}, {"y": 13, "x": 3}])
def test_chunk_invariant(cube, chunks):
    opts = dict(mask="clear", max_radius=8, min_neighbors=12)
    whole = cube.recon.fill("9D", method="neighbors", **opts).compute()
    parts = cube.chunk(chunks).recon.fill("9D", method="neighbors", **opts)
    xr.testing.assert_identical(whole, parts.compute())


def test_lazy(cube):
    lazy = cube.chunk({"y": 12, "x": 13})
    with raise_if_dask_computes():
        out = lazy.recon.fill(method="neighbors", mask="clear")
    assert out.optical.chunks is not None


def test_recovers_a_hidden_block_far_better_than_linear():
    truth = _pattern_cube()
    held = truth.copy(deep=True)
    hidden = np.zeros((truth.sizes["time"], truth.sizes["y"], truth.sizes["x"]), bool)
    for k in (3, 8, 13, 18):
        hidden[k, 10:16, 12:18] = True  # a 6 x 6 cloud
    held["optical"] = held.optical.where(~xr.DataArray(hidden, dims=("time", "y", "x")))
    err = {}
    for method, opts in (("neighbors", {"max_radius": 8}), ("linear", {})):
        out = held.recon.fill(method=method, **opts).optical.values
        err[method] = np.sqrt(np.mean((out.transpose(0, 2, 3, 1)[hidden] - truth.optical.values.transpose(
            0, 2, 3, 1)[hidden]) ** 2))
    assert err["neighbors"] < 0.2 * err["linear"], err


def test_whole_date_cloudy_falls_back_to_linear():
    truth = _pattern_cube(ny=16, nx=16, nt=10)
    held = truth.copy(deep=True)
    held["optical"][4] = np.nan  # no neighbour in reach on that date
    out = held.recon.fill(method="neighbors").optical
    lin = held.recon.fill(method="linear").optical
    np.testing.assert_array_equal(out[4].values, lin[4].values)
    assert np.isfinite(out.values).all()
    smooth = held.recon.fill(method="neighbors", fallback="whittaker").optical
    assert np.isfinite(smooth[4].values).all()
    np.testing.assert_array_equal(smooth[3].values, truth.optical[3].values)  # observations pass through


def test_query_times_between_dates_interpolate_the_adjusted_series():
    truth = _pattern_cube(ny=12, nx=12, nt=6)
    values = truth.optical.values.copy()
    valid = np.ones((6, 12, 12), bool)
    valid[2, 4:8, 4:8] = False
    t = 5.0 * np.arange(6)
    at_dates = fill_neighbors(values, valid, t, t)
    mid = fill_neighbors(values, valid, t, np.array([7.5]))
    np.testing.assert_allclose(mid[0], (at_dates[1] + at_dates[2]) / 2, rtol=0, atol=1e-6)


def test_never_clear_pixel_is_nan():
    truth = _pattern_cube(ny=12, nx=12, nt=6)
    truth["optical"][:, :, 5, 5] = np.nan
    out = truth.recon.fill(method="neighbors").optical
    assert out[:, :, 5, 5].isnull().all() and out[:, :, 5, 6].notnull().all()


def test_window_radii():
    assert window_radii(2, 8) == (2, 4, 8)
    assert window_radii(2, 2) == (2,)
    assert window_radii(3, 7) == (3, 6, 7)


@pytest.mark.parametrize("options, match", [
    ({"max_radius": 9}, "halo"),
    ({"radius": 0}, "radius"),
    ({"radius": 4, "max_radius": 2}, "max_radius"),
    ({"min_neighbors": 0}, "min_neighbors"),
    ({"min_common": 1.5}, "min_common"),
    ({"fallback": "cubic"}, "fallback"),
    ({"adjust": "ratio"}, "adjust"),
    ({"radus": 2}, "radus"),
])
def test_option_errors(cube, options, match):
    with pytest.raises(MethodError, match=match):
        cube.recon.fill(method="neighbors", **options)


def test_registered_as_patch_method():
    method = xrecon.methods.get("neighbors")
    assert method.footprint == "patch" and method.halo == 8
    assert "neighbors" in xrecon.methods.list_methods()
    with pytest.raises(MethodError, match="fallback"):
        fill_neighbors(np.zeros((2, 1, 3, 3), np.float32), np.ones((2, 3, 3), bool), np.array([0.0, 1]),
                       np.array([0.5]), fallback="nearest")


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (3, 4), (17, 13), (9, 9)])
def test_box_sums_equal_brute_force(shape):
    """The clipped box sums from the summed-area table, at every radius (also wider than the window)."""
    from xrecon.methods.neighbors import _box

    rng = np.random.default_rng(sum(shape))
    ny, nx = shape
    a = rng.integers(-(2**40), 2**40, (3, ny, nx))
    sat = np.zeros((3, ny + 1, nx + 1), np.int64)
    sat[:, 1:, 1:] = a.cumsum(-1).cumsum(-2)
    for r in (1, 2, 3, 8, 40):
        want = np.empty_like(a)
        for y in range(ny):
            for x in range(nx):
                want[:, y, x] = a[:, max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1].sum((1, 2))
        np.testing.assert_array_equal(_box(sat, r), want)
        rows, out = np.empty((3, ny, nx + 1), np.int64), np.empty((3, ny, nx), np.int64)
        assert _box(sat, r, out, rows) is out
        np.testing.assert_array_equal(out, want)
