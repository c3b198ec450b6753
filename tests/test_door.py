"""The method door: one registry, pixel and patch footprints, halos, declared outputs, gap_days, keyed noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xrecon  # noqa: F401
import xrecon.methods
from xrecon.cli import main
from xrecon.errors import MethodError, XreconError
from xrecon.fill_blocks import gap_days
from xrecon.rng import PositionalRandom
from xrecon.testing import raise_if_dask_computes, synthetic_cube

CHUNKINGS = [{"y": 5, "x": 3}, {"y": 7, "x": 11}, {"y": 1, "x": 4}, {"y": 13, "x": 2}]


def neighbour_mean(values, valid, t, tq, *, edges="hold", offset, weight=1.0):
    """A patch method with a 3x3 reach that also reads its absolute position.

    Per date, the mean of the clear 3x3 neighbours (the pixel itself included), then linear interpolation
    in time; plus ``weight * 1e-3 * (row + 2 * col)`` of the global grid, so a wrong offset shows.
    """
    n_t, n_c, ny, nx = values.shape
    v = np.where(valid[:, None], values, 0.0)
    w = valid[:, None].astype(np.float32)
    pv, pw = (np.pad(a, [(0, 0), (0, 0), (1, 1), (1, 1)]) for a in (v, w))
    s = sum(pv[:, :, i:i + ny, j:j + nx] for i in range(3) for j in range(3))
    n = sum(pw[:, :, i:i + ny, j:j + nx] for i in range(3) for j in range(3))
    spatial = np.where(n > 0, s / np.maximum(n, 1), np.nan)  # (T, C, Y, X)
    series = spatial.transpose(2, 3, 0, 1).reshape(-1, n_t, n_c)
    ok = np.isfinite(series).all(-1)
    out = xrecon.methods.fill_linear(series, ok, t, tq, edges=edges).reshape(ny, nx, len(tq), n_c)
    rows = offset[0] + np.arange(ny)[:, None]
    cols = offset[1] + np.arange(nx)[None, :]
    return out.transpose(2, 3, 0, 1) + weight * 1e-3 * (rows + 2 * cols)


def noisy_linear(values, valid, t, tq, *, edges="hold", offset, seed=0, n_samples=4):
    """A stochastic patch method: linear interpolation plus keyed noise; returns mean and std."""
    n_t, n_c, ny, nx = values.shape
    series = values.transpose(2, 3, 0, 1).reshape(-1, n_t, n_c)
    base = xrecon.methods.fill_linear(series, valid.transpose(1, 2, 0).reshape(-1, n_t), t, tq, edges=edges)
    base = base.reshape(ny, nx, len(tq), n_c).transpose(2, 3, 0, 1)
    noise = 0.01 * PositionalRandom(seed, offset).normal((n_samples, len(tq), n_c, ny, nx))
    samples = base[None] + noise
    return {"optical": samples.mean(0), "optical_std": samples.std(0)}


@pytest.fixture
def registered():
    xrecon.methods.register("test-neighbours", neighbour_mean, footprint="patch", halo=1)
    xrecon.methods.register("test-noisy", noisy_linear, footprint="patch", halo=0, outputs=("optical", "optical_std"))
    yield
    xrecon.methods.unregister("test-neighbours")
    xrecon.methods.unregister("test-noisy")


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=13, nx=11, bands=3, seed=4).compute()


def test_registry_lists_registered_methods(registered):
    names = xrecon.methods.list_methods()
    assert {"linear", "harmonic", "whittaker", "anytimeformer", "test-neighbours", "test-noisy"} <= set(names)
    method = xrecon.methods.get("test-neighbours")
    assert (method.footprint, method.halo, method.outputs) == ("patch", 1, ("optical",))
    assert xrecon.methods.get("test-noisy").accepted_options() == ("seed", "n_samples")


def test_patch_method_is_chunk_invariant_and_lazy(cube, registered):
    one = cube.recon.fill("9D", method="test-neighbours", mask="clear").compute()
    assert np.isfinite(one.optical.values).all()
    for chunks in CHUNKINGS:
        lazy_cube = cube.chunk(chunks)
        with raise_if_dask_computes():
            out = lazy_cube.recon.fill("9D", method="test-neighbours", mask="clear")
        assert out.optical.chunks[2:] == lazy_cube.optical.chunks[2:]  # the input's spatial chunks
        got = out.compute()
        xr.testing.assert_identical(got, one)


def test_patch_method_sees_its_neighbours_and_position(cube, registered):
    """Compare with the kernel run on the whole padded cube by hand: the halo and offset are right."""
    out = cube.chunk({"y": 4, "x": 4}).recon.fill(method="test-neighbours", keep_observed=False).compute()
    values = cube.optical.transpose("time", "band", "y", "x").values
    pad = np.pad(values, [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=np.nan)
    t = xrecon.times.to_days(cube.time.values)
    ref = neighbour_mean(pad, np.isfinite(pad).all(1), t, t, offset=(-1, -1))[:, :, 1:-1, 1:-1]
    np.testing.assert_array_equal(out.optical.values, ref.astype(np.float32))
    # the position term is really there: a different weight changes the result by exactly that term
    shifted = cube.recon.fill(method="test-neighbours", keep_observed=False, weight=2.0).compute()
    rows, cols = np.meshgrid(np.arange(13), np.arange(11), indexing="ij")
    diff = shifted.optical.values - out.optical.values
    np.testing.assert_allclose(diff, np.broadcast_to(1e-3 * (rows + 2 * cols), diff.shape), atol=1e-6)


def test_patch_pass_through_and_observed(cube, registered):
    out = cube.chunk({"y": 6, "x": 5}).recon.fill(method="test-neighbours", mask="clear").compute()
    clear = cube.clear.values & cube.optical.notnull().all("band").values
    np.testing.assert_array_equal(out.observed.values, clear)
    obs = np.broadcast_to(clear[:, None], out.optical.shape)
    np.testing.assert_array_equal(out.optical.values[obs], cube.optical.transpose("time", "band", "y", "x").values[obs])
    assert out.attrs["method"] == "test-neighbours"


def test_stochastic_method_same_numbers_for_any_chunking(cube, registered):
    ref = cube.recon.fill("6D", method="test-noisy", seed=3, gap_days=True).compute()
    assert set(ref.data_vars) == {"optical", "optical_std", "observed", "gap_days"}
    assert ref.optical_std.dims == ("time", "band", "y", "x") and float(ref.optical_std.max()) > 0
    for chunks in CHUNKINGS[:3]:
        got = cube.chunk(chunks).recon.fill("6D", method="test-noisy", seed=3, gap_days=True).compute()
        xr.testing.assert_identical(got, ref)
    other = cube.recon.fill("6D", method="test-noisy", seed=4).compute()
    assert not np.array_equal(other.optical_std.values, ref.optical_std.values)


def test_positional_random_is_keyed_on_global_positions():
    whole = PositionalRandom(5).uniform((3, 8, 9))
    for oy, ox, ny, nx in [(0, 0, 3, 4), (2, 5, 6, 4), (-1, -2, 4, 5)]:
        part = PositionalRandom(5, (oy, ox)).uniform((3, ny, nx))
        ys, xs = slice(max(oy, 0), oy + ny), slice(max(ox, 0), ox + nx)
        np.testing.assert_array_equal(part[:, ys.start - oy:, xs.start - ox:], whole[:, ys, xs])
    z = PositionalRandom(1).normal((4, 64, 64))
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert not np.array_equal(PositionalRandom(1, stream=1).normal((4, 64, 64)), z)


def test_user_pixel_method_end_to_end(cube, tmp_path):
    def last_clear(values, valid, t, tq, *, edges="hold", scale=1.0):
        idx = np.maximum.accumulate(np.where(valid, np.arange(len(t)), -1), axis=1)
        idx = np.where(idx < 0, valid.argmax(1)[:, None], idx)  # before the first clear date: hold it
        pos = np.clip(np.searchsorted(t, tq, side="right") - 1, 0, len(t) - 1)
        take = idx[:, pos]  # (N, Tq): the last clear date at or before each query
        out = np.take_along_axis(values, take[..., None], axis=1) * scale
        out[~valid.any(1)] = np.nan
        return out

    xrecon.methods.register("test-last", last_clear)
    try:
        lazy = cube.chunk({"y": 5, "x": 4})
        with raise_if_dask_computes():
            out = lazy.recon.fill("8D", method="test-last", mask="clear", scale=1.0)
        res = out.compute()
        assert res.optical.dtype == np.float32 and np.isfinite(res.optical.values).all()
        xr.testing.assert_identical(res, cube.recon.fill("8D", method="test-last", mask="clear", scale=1.0).compute())
        with pytest.raises(MethodError, match="scale"):
            cube.recon.fill(method="test-last", sacle=2.0)
        table = cube.recon.evaluate(["linear", "test-last"], mask="clear", holdout=0.2)
        assert set(table["method"]) == {"linear", "test-last"} and (table["rmse"] > 0).all()
        src = tmp_path / "in.zarr"
        cube.drop_encoding().to_zarr(src)
        assert main(["fill", str(src), str(tmp_path / "out.zarr"), "--method", "test-last", "--mask", "clear",
                     "--gap-days", "--quiet"]) == 0
        written = xr.open_zarr(tmp_path / "out.zarr")
        assert written.attrs["method"] == "test-last" and "gap_days" in written
    finally:
        xrecon.methods.unregister("test-last")


def test_registry_errors():
    with pytest.raises(MethodError, match="already registered"):
        xrecon.methods.register("linear", lambda *a, **k: None)
    with pytest.raises(MethodError, match="footprint"):
        xrecon.methods.register("test-bad", lambda *a, **k: None, footprint="tile")
    with pytest.raises(MethodError, match="halo"):
        xrecon.methods.register("test-bad", lambda *a, **k: None, halo=2)
    with pytest.raises(MethodError, match="halo"):
        xrecon.methods.register("test-bad", lambda *a, **k: None, footprint="patch", halo=-1)
    with pytest.raises(MethodError, match="outputs"):
        xrecon.methods.register("test-bad", lambda *a, **k: None, outputs=("observed",))
    assert "test-bad" not in xrecon.methods.list_methods()
    with pytest.raises(MethodError, match="cannot be trained"):
        xrecon.methods.get("linear").training_task()


def test_kernel_returning_undeclared_outputs_is_refused(cube):
    xrecon.methods.register("test-wrong", lambda v, m, t, tq, *, edges="hold", offset: {"other": v},
                            footprint="patch")
    try:
        with pytest.raises(XreconError, match="declares outputs"):
            cube.recon.fill(method="test-wrong").compute()
    finally:
        xrecon.methods.unregister("test-wrong")


def test_gap_days_on_a_hand_made_cube():
    times = pd.to_datetime(["2020-01-01", "2020-01-11", "2020-01-21", "2020-02-10"])
    data = np.full((4, 1, 1, 3), np.nan, np.float32)
    data[[0, 2], 0, 0, 0] = 0.1  # pixel 0: clear on Jan 1 and Jan 21
    data[3, 0, 0, 1] = 0.2  # pixel 1: clear on Feb 10 only; pixel 2: never clear
    ds = xr.Dataset({"optical": (("time", "band", "y", "x"), data)},
                    coords={"time": times, "band": ["B04"], "y": [0.0], "x": [0.0, 1.0, 2.0]})
    query = pd.to_datetime(["2019-12-30", "2020-01-01", "2020-01-15", "2020-02-01"])
    out = ds.recon.fill(query, gap_days=True).compute()
    assert out.gap_days.dims == ("time", "y", "x") and out.gap_days.dtype == np.float32
    np.testing.assert_array_equal(out.gap_days.values[:, 0, 0], [2, 0, 6, 11])
    np.testing.assert_array_equal(out.gap_days.values[:, 0, 1], [42, 40, 26, 9])
    assert np.isnan(out.gap_days.values[:, 0, 2]).all()
    assert out.gap_days.attrs["units"] == "days"
    assert "gap_days" not in ds.recon.fill(query)


def test_gap_days_kernel_matches_brute_force():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 300, 25))
    valid = rng.random((25, 40)) < 0.3
    tq = rng.uniform(-20, 320, 30)
    got = gap_days(valid, t, tq)
    for j in range(40):
        seen = t[valid[:, j]]
        expected = np.abs(tq[:, None] - seen[None]).min(1) if seen.size else np.full(30, np.nan)
        np.testing.assert_allclose(got[:, j], expected, rtol=1e-6)


def test_halo_wider_than_the_chunks(cube):
    xrecon.methods.register("test-wide", neighbour_mean, footprint="patch", halo=3)
    try:
        one = cube.recon.fill("9D", method="test-wide").compute()
        lazy = cube.chunk({"y": 2, "x": 5})
        out = lazy.recon.fill("9D", method="test-wide")
        assert out.optical.chunks[2:] == lazy.optical.chunks[2:]
        xr.testing.assert_identical(out.compute(), one)
    finally:
        xrecon.methods.unregister("test-wide")


@pytest.mark.parametrize("chunks", [{"y": 4, "x": 4}, {"y": -1, "x": 3}, {"y": 5, "x": -1}])
def test_halo_wider_than_the_cube(cube, chunks):
    """A halo larger than the whole cube (13 x 11): an axis in one chunk is padded, not overlapped."""
    xrecon.methods.register("test-huge", neighbour_mean, footprint="patch", halo=20)
    try:
        one = cube.recon.fill("9D", method="test-huge").compute()
        out = cube.chunk(chunks).recon.fill("9D", method="test-huge")
        xr.testing.assert_identical(out.compute(), one)
    finally:
        xrecon.methods.unregister("test-huge")


def test_import_xrecon_is_light_and_the_api_is_reachable():
    """`import xrecon` registers every method without importing torch; xrecon.models.load works after it."""
    import subprocess
    import sys

    code = ("import sys, xrecon; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'anytimeformer' in xrecon.methods.list_methods(); "
            "assert callable(xrecon.models.load) and 'torch' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
