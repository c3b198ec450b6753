"""ds.recon.fill with the classical methods: laziness, chunk invariance, pass-through, errors."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xrecon  # noqa: F401
from xrecon.errors import CheckpointError, CubeError, MethodError, QueryTimesError
from xrecon.testing import raise_if_dask_computes

CLASSICAL = ["linear", "harmonic", "whittaker"]


def random_cube(T=12, C=3, Y=5, X=7, seed=0, cloud=0.4, sar=False):
    rng = np.random.default_rng(seed)
    days = np.sort(rng.choice(np.arange(0, 400), size=T, replace=False))
    t = pd.Timestamp("2020-01-01") + pd.to_timedelta(days, "D")
    doy = days[:, None, None, None] / 365.25
    base = 0.2 + 0.1 * np.sin(2 * np.pi * doy + rng.random((1, C, Y, X)))
    data = (base + 0.01 * rng.normal(size=(T, C, Y, X))).astype("float32")
    data[np.broadcast_to(rng.random((T, 1, Y, X)) < cloud, data.shape)] = np.nan
    ds = xr.Dataset(
        {"optical": (("time", "band", "y", "x"), data)},
        coords={
            "time": t,
            "band": [f"B{i}" for i in range(C)],
            "y": 100 - 10.0 * np.arange(Y),
            "x": 10.0 * np.arange(X),
        },
    )
    if sar:
        ts = pd.date_range("2020-01-02", periods=T + 3, freq="6D")
        ds["sar"] = (("sar_time", "sar_band", "y", "x"), rng.normal(-12, 2, (T + 3, 2, Y, X)).astype("float32"))
        ds = ds.assign_coords(sar_time=ts, sar_band=["VV", "VH"])
    return ds


@pytest.mark.parametrize("method", CLASSICAL)
def test_fill_output_contract(method):
    ds = random_cube().rio.write_crs("EPSG:32631")
    out = ds.chunk({"y": 2, "x": 3}).recon.fill("4D", method=method)
    assert out.optical.dims == ("time", "band", "y", "x") and out.optical.dtype == np.float32
    assert out.observed.dims == ("time", "y", "x") and out.observed.dtype == bool
    assert out.optical.chunks[2:] == ((2, 2, 1), (3, 3, 1))
    assert len(out.optical.chunks[0]) == 1 and len(out.optical.chunks[1]) == 1
    assert (np.diff(out.time.values) == np.timedelta64(4, "D")).all()
    assert list(out.band.values) == list(ds.band.values)
    np.testing.assert_array_equal(out.y, ds.y)
    assert out.attrs["method"] == method and out.attrs["xrecon_version"] == xrecon.__version__
    values = out.optical.values
    assert np.isfinite(values).all()


def test_crs_is_carried():
    ds = random_cube().rio.write_crs("EPSG:32631")
    out = ds.recon.fill()
    assert out.rio.crs.to_epsg() == 32631
    assert out.optical.attrs["grid_mapping"] == "spatial_ref"


def test_crs_is_carried_from_zarr_data_variable(tmp_path):
    random_cube().rio.write_crs("EPSG:32631").to_zarr(tmp_path / "c.zarr", zarr_format=2)
    reopened = xr.open_zarr(tmp_path / "c.zarr")  # spatial_ref comes back as a data variable
    out = reopened.recon.fill()
    assert out.rio.crs.to_epsg() == 32631 and "spatial_ref" in out.coords


def test_nothing_computes_before_asked():
    ds = random_cube(sar=True).chunk({"y": 2, "x": 2, "time": 3})
    with raise_if_dask_computes():
        for method in CLASSICAL:
            out = ds.recon.fill("7D", method=method)
            out = ds.recon.fill(None, method=method, edges="nan", keep_observed=False)
    assert out.optical.chunks is not None


def test_chunked_input_is_rechunked_whole_in_time():
    ds = random_cube().chunk({"time": 2, "band": 1, "y": 3})
    out = ds.recon.fill(method="linear")
    assert out.optical.chunks[0] == (ds.sizes["time"],) and out.optical.chunks[2] == (3, 2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(CLASSICAL),
    cy=st.integers(1, 5),
    cx=st.integers(1, 7),
    seed=st.integers(0, 10_000),
    freq=st.sampled_from([None, "3D", "11D"]),
    edges=st.sampled_from(["hold", "nan"]),
)
def test_chunked_equals_one_chunk(method, cy, cx, seed, freq, edges):
    ds = random_cube(seed=seed)
    whole = ds.recon.fill(freq, method=method, edges=edges)
    chunked = ds.chunk({"y": cy, "x": cx}).recon.fill(freq, method=method, edges=edges).compute()
    xr.testing.assert_identical(whole, chunked)


@pytest.mark.parametrize("method", CLASSICAL)
def test_pass_through(method):
    ds = random_cube(seed=3)
    valid = np.isfinite(ds.optical.values).all(axis=1)
    out = ds.recon.fill(method=method)
    np.testing.assert_array_equal(out.observed.values, valid)
    obs = np.broadcast_to(valid[:, None], ds.optical.shape)
    np.testing.assert_array_equal(out.optical.values[obs], ds.optical.values[obs])
    raw = ds.recon.fill(method=method, keep_observed=False)
    assert not raw.observed.values.any()
    if method == "linear":  # linear interpolation goes through the observations anyway
        np.testing.assert_allclose(raw.optical.values[obs], ds.optical.values[obs], atol=1e-6)


def test_pass_through_only_at_matching_times():
    ds = random_cube(seed=4)
    q = pd.DatetimeIndex([ds.time.values[2], ds.time.values[2] + np.timedelta64(1, "h"), ds.time.values[5]])
    out = ds.recon.fill(q)
    valid = np.isfinite(ds.optical.values).all(axis=1)
    np.testing.assert_array_equal(out.observed.values[0], valid[2])
    assert not out.observed.values[1].any()
    np.testing.assert_array_equal(out.observed.values[2], valid[5])


def test_mask_is_combined_with_nan():
    ds = random_cube(seed=5, cloud=0.0)
    clear = np.ones((ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]), bool)
    clear[3] = False
    ds["clear"] = (("time", "y", "x"), clear)
    out = ds.recon.fill(method="linear", mask="clear")
    assert not out.observed.values[3].any() and out.observed.values[4].all()
    # the masked date is interpolated from its neighbours, not taken from the (cloudy) values
    t = ds.time.values
    w = (t[3] - t[2]) / (t[4] - t[2])
    expected = (1 - w) * ds.optical.values[2] + w * ds.optical.values[4]
    np.testing.assert_allclose(out.optical.values[3], expected, rtol=1e-5)


@pytest.mark.parametrize("method", CLASSICAL)
def test_all_cloud_pixel_is_nan_and_rest_filled(method):
    ds = random_cube(seed=6)
    data = ds.optical.values.copy()
    data[:, :, 1, 2] = np.nan
    ds["optical"] = ds.optical.copy(data=data)
    out = ds.chunk({"y": 2, "x": 2}).recon.fill("5D", method=method).compute()
    assert np.isnan(out.optical.values[:, :, 1, 2]).all()
    assert not out.observed.values[:, 1, 2].any()
    rest = np.delete(out.optical.values.reshape(*out.optical.shape[:2], -1), 1 * ds.sizes["x"] + 2, axis=-1)
    assert np.isfinite(rest).all()


def test_edges_rule_is_the_same_for_every_method():
    ds = random_cube(seed=7, cloud=0.0)
    data = ds.optical.values.copy()
    data[:3, :, 0, 0] = np.nan  # pixel (0, 0) starts late
    ds["optical"] = ds.optical.copy(data=data)
    early = pd.DatetimeIndex([ds.time.values[0], ds.time.values[1]])
    for method in CLASSICAL:
        held = ds.recon.fill(early, method=method, keep_observed=False).optical.values[:, :, 0, 0]
        at_first = ds.recon.fill(ds.time.values[3:4], method=method, keep_observed=False).optical.values[0, :, 0, 0]
        np.testing.assert_allclose(held, np.stack([at_first, at_first]), rtol=1e-5, err_msg=method)
        nan = ds.recon.fill(early, method=method, edges="nan").optical.values[:, :, 0, 0]
        assert np.isnan(nan).all()


def test_errors():
    ds = random_cube()
    with pytest.raises(MethodError, match="'kriging'"):
        ds.recon.fill(method="kriging")
    with pytest.raises(QueryTimesError):
        ds.recon.fill("every other tuesday")
    with pytest.raises(CubeError, match="'cloudfree'"):
        ds.recon.fill(mask="cloudfree")
    with pytest.raises(CubeError, match="'refl'"):
        ds.recon.fill(optical="refl")
    with pytest.raises(CheckpointError, match="does not exist"):
        ds.recon.fill(method="anytimeformer", checkpoint="/nonexistent/model.xrecon")
    with pytest.raises(CheckpointError, match="needs checkpoint"):
        ds.recon.fill(method="anytimeformer")
    with pytest.raises(MethodError):
        ds.recon.fill(method="whittaker", no_such_option=3)
    with pytest.raises(MethodError):
        ds.recon.fill(edges="wrap")
    assert isinstance(MethodError("x"), ValueError)


def test_spec_is_small_and_graph_holds_no_arrays():
    ds = random_cube().chunk({"y": 1})
    out = ds.recon.fill("2D", method="whittaker")
    graph = dict(out.optical.data.__dask_graph__())
    import pickle

    size = len(pickle.dumps(graph))
    # the graph is tasks on chunks plus one spec: a few KB per chunk, not pixels
    assert size < 20_000 * ds.sizes["y"], size


def test_distributed_equals_threaded(tmp_path):
    distributed = pytest.importorskip("distributed")
    ds = random_cube(T=20, Y=8, X=8, seed=11, sar=True)
    ds.chunk({"y": 4, "x": 4}).to_zarr(tmp_path / "in.zarr")
    lazy = xr.open_zarr(tmp_path / "in.zarr")
    expected = {m: lazy.recon.fill("6D", method=m).compute(scheduler="threads") for m in CLASSICAL}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            for method in CLASSICAL:
                got = lazy.recon.fill("6D", method=method).compute()
                xr.testing.assert_identical(got, expected[method])


def test_numpy_input_gives_numpy_output():
    out = random_cube().recon.fill("9D", method="harmonic")
    assert out.optical.chunks is None


def test_sar_is_ignored_by_classical_methods():
    with_sar = random_cube(seed=8, sar=True)
    without = with_sar.drop_vars(["sar", "sar_time", "sar_band"])
    expected = without.recon.fill("8D", method="whittaker")
    xr.testing.assert_identical(with_sar.recon.fill("8D", method="whittaker"), expected)


def test_dask_scheduler_counts():
    """Computing the lazy result runs one graph, once."""
    ds = random_cube().chunk({"y": 2})
    out = ds.recon.fill("5D")
    with raise_if_dask_computes(max_computes=1):
        out.compute()
    with dask.config.set(scheduler="synchronous"):
        out.optical.values  # noqa: B018
