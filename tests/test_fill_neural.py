"""ds.recon.fill with a network: equals the bare model, chunk-invariant, lazy, multi-year, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xrecon  # noqa: F401
from tests.conftest import assert_fill_close, shared_path
from xrecon.errors import CheckpointError, MethodError
from xrecon.methods.anytimeformer import year_windows
from xrecon.models import anytimeformer
from xrecon.testing import raise_if_dask_computes, synthetic_cube
from xrecon.times import day_of_year

BANDS = ["B02", "B03", "B04", "B08"]


def small_model(n_sar=2, seed=0):
    torch.manual_seed(seed)
    config = anytimeformer.AnytimeFormerConfig(
        n_optical_bands=4, n_sar_bands=n_sar, d_model=32, d_inner=16, d_k=8, d_v=8, fusion_rank=2
    )
    model = anytimeformer.AnytimeFormer(config)
    model.set_normalization([0.05, 0.07, 0.06, 0.3], [0.03, 0.03, 0.04, 0.1],
                            *(([-12, -18], [3, 3]) if n_sar else (None, None)))
    model.optical_bands = list(BANDS)
    model.sar_bands = ["VV", "VH"] if n_sar else None
    return model


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=12, nx=10, bands=4, seed=5, chunks={"y": 5, "x": 4})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return small_model().save(tmp_path_factory.mktemp("m") / "small.xrecon")


def test_fill_equals_bare_model_and_is_chunk_invariant(cube, ckpt):
    with raise_if_dask_computes():
        out = cube.recon.fill("7D", method="anytimeformer", checkpoint=ckpt, keep_observed=False)
    res = out.compute()
    assert res.optical.dtype == np.float32 and res.optical.chunks is None
    one = cube.compute().recon.fill("7D", method="anytimeformer", checkpoint=ckpt, keep_observed=False)
    assert_fill_close(res, one)  # float32 rounding: batches differ between the chunkings

    model = xrecon.models.load(ckpt, device="cpu")
    px = cube.isel(y=3, x=7).compute()
    expected = model.predict_pixels(
        px.optical.transpose("time", "band").values[None],
        np.isfinite(px.optical.transpose("time", "band").values).all(1)[None],
        day_of_year(px.time.values),
        px.sar.transpose("sar_time", "sar_band").values[None],
        day_of_year(px.sar_time.values),
        day_of_year(res.time.values),
    )[0]
    np.testing.assert_allclose(res.optical.isel(y=3, x=7).transpose("time", "band").values, expected, atol=1e-6)
    assert res.attrs["checkpoint"] == "small.xrecon" and len(res.attrs["checkpoint_sha256"]) == 64


def test_sar_is_used_when_present(cube, ckpt):
    with_sar = cube.recon.fill(method="anytimeformer", checkpoint=ckpt).optical.values
    no_sar = cube.drop_vars(["sar", "sar_time", "sar_band"]).recon.fill(
        method="anytimeformer", checkpoint=ckpt).optical.values
    observed = cube.recon.fill(method="anytimeformer", checkpoint=ckpt).observed.values
    gaps = ~np.broadcast_to(observed[:, None], with_sar.shape)
    assert np.abs(with_sar - no_sar)[gaps].max() > 1e-4  # SAR changes the reconstruction
    assert np.isfinite(no_sar).all()


def test_optical_only_model(cube, tmp_path):
    path = small_model(n_sar=0).save(tmp_path / "opt.xrecon")
    out = cube.recon.fill("10D", method="anytimeformer", checkpoint=path).compute()
    assert np.isfinite(out.optical.values).all()


def test_bands_are_matched_by_name(cube, ckpt):
    ref = cube.recon.fill("9D", method="anytimeformer", checkpoint=ckpt).compute()
    shuffled = cube.isel(band=[2, 0, 3, 1], sar_band=[1, 0])
    got = shuffled.recon.fill("9D", method="anytimeformer", checkpoint=ckpt).compute()
    assert list(got.band.values) == ["B04", "B02", "B08", "B03"]
    xr.testing.assert_allclose(got.optical.sel(band=BANDS), ref.optical, atol=1e-6)


def test_all_cloud_pixel_is_nan(cube, ckpt):
    data = cube.optical.values.copy()
    data[:, :, 2, 2] = np.nan
    ds = cube.assign(optical=cube.optical.copy(data=data))
    out = ds.recon.fill("5D", method="anytimeformer", checkpoint=ckpt).compute()
    assert np.isnan(out.optical.values[:, :, 2, 2]).all()
    assert np.isfinite(np.delete(out.optical.values.reshape(out.optical.shape[0], 4, -1), 2 * 10 + 2, -1)).all()


def test_model_object_as_method(cube, ckpt):
    model = xrecon.models.load(ckpt, device="cpu")
    a = cube.recon.fill("8D", method=model).compute()
    b = cube.recon.fill("8D", method="anytimeformer", checkpoint=ckpt).compute()
    np.testing.assert_allclose(a.optical.values, b.optical.values, rtol=0, atol=1e-6)
    assert a.attrs["checkpoint_sha256"] == b.attrs["checkpoint_sha256"]
    with pytest.raises(MethodError):
        cube.recon.fill(method=model, checkpoint=ckpt)


def test_errors(cube, ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        cube.isel(band=[0, 1, 2]).recon.fill(method="anytimeformer", checkpoint=ckpt)
    five = synthetic_cube(ny=4, nx=4, bands=["B02", "B03", "B04", "B08", "B11"], seed=1)
    with pytest.raises(CheckpointError, match="not in the model"):
        five.recon.fill(method="anytimeformer", checkpoint=ckpt)
    renamed = cube.assign_coords(sar_band=["HH", "HV"])
    with pytest.raises(CheckpointError, match="SAR"):
        renamed.recon.fill(method="anytimeformer", checkpoint=ckpt)
    junk = tmp_path / "junk.xrecon"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable xrecon checkpoint"):
        cube.recon.fill(method="anytimeformer", checkpoint=junk)
    with pytest.raises(MethodError, match="precision|options"):
        cube.recon.fill(method="anytimeformer", checkpoint=ckpt, lam=3)
    with pytest.raises(MethodError, match="restore-dit"):
        cube.recon.fill(method="restore-dit", checkpoint=ckpt)


def test_year_windows_calendar_years():
    t = pd.date_range("2019-12-20", "2021-01-10", freq="5D")
    q = pd.DatetimeIndex(["2019-12-31", "2020-06-01", "2020-12-31", "2021-01-05"])
    s = pd.date_range("2019-12-22", "2021-01-10", freq="6D")
    windows = year_windows(t.values, q.values, s.values, max_day=366)
    assert len(windows) == 3
    oi, od, si, sd, qi, qd = windows[1]  # 2020, a leap year
    assert (t[oi].year == 2020).all() and len(oi) == (t.year == 2020).sum()
    assert (s[si].year == 2020).all()
    np.testing.assert_array_equal(qi, [1, 2])
    np.testing.assert_array_equal(qd, [153, 366])
    np.testing.assert_array_equal(od, day_of_year(t[oi]))
    # a longer encoding takes neighbouring observations, days counted from the window start
    oi, od, *_ = year_windows(t.values, q.values, None, max_day=366 + 60)[1]
    assert t[oi].min() < pd.Timestamp("2020-01-01")
    oi2, *_ = year_windows(t.values, q.values, None, max_day=800)[1]
    assert t[oi2].min() < pd.Timestamp("2020-01-01") and t[oi2].max() > pd.Timestamp("2020-12-31")


def test_multi_year_cube(ckpt):
    ds = synthetic_cube(ny=6, nx=6, bands=4, start="2019-01-01", end="2021-12-31", seed=2, chunks={"y": 3})
    out = ds.recon.fill("2019-06-01/2021-06-01/30D", method="anytimeformer", checkpoint=ckpt).compute()
    assert np.isfinite(out.optical.values).all()
    # a year predicted from that year's data alone: the same as filling a one-year cube
    year = ds.sel(time="2020", sar_time="2020")
    q = out.time.values[pd.DatetimeIndex(out.time.values).year == 2020]
    alone = year.recon.fill(q, method="anytimeformer", checkpoint=ckpt).compute()
    np.testing.assert_allclose(out.optical.sel(time=q).values, alone.optical.values, atol=1e-6)


def test_fallback_fills_years_the_network_cannot_see(ckpt):
    ds = synthetic_cube(ny=4, nx=4, bands=4, start="2019-01-01", end="2021-12-31", seed=3)
    data = ds.optical.values.copy()
    in_2020 = pd.DatetimeIndex(ds.time.values).year == 2020
    data[in_2020, :, 1, 1] = np.nan  # pixel (1, 1): clouded all of 2020, clear in 2019 and 2021
    ds = ds.assign(optical=ds.optical.copy(data=data))
    q = pd.date_range("2019-03-01", "2021-11-01", freq="45D")
    got = ds.recon.fill(q, method="anytimeformer", checkpoint=ckpt).optical.values
    assert np.isfinite(got).all()
    q2020 = q.year == 2020
    harmonic = ds.recon.fill(q, method="harmonic").optical.values
    np.testing.assert_allclose(got[q2020, :, 1, 1], harmonic[q2020, :, 1, 1], rtol=1e-6)
    linear = ds.recon.fill(q, method="anytimeformer", checkpoint=ckpt, fallback="linear").optical.values
    np.testing.assert_allclose(linear[q2020, :, 1, 1], ds.recon.fill(q).optical.values[q2020, :, 1, 1], rtol=1e-6)
    bare = ds.recon.fill(q, method="anytimeformer", checkpoint=ckpt, fallback=None).optical.values
    assert np.isnan(bare[q2020, :, 1, 1]).all() and np.isfinite(bare[~q2020]).all()
    np.testing.assert_allclose(np.delete(bare.reshape(len(q), 4, -1), 5, -1),
                               np.delete(got.reshape(len(q), 4, -1), 5, -1), rtol=0, atol=1e-6)
    with pytest.raises(MethodError, match="fallback"):
        ds.recon.fill(q, method="anytimeformer", checkpoint=ckpt, fallback="kriging")


def test_official_weights_on_a_synthetic_ten_band_cube():
    ref = np.load(shared_path("reference", "anytimeformer", "seq2seq_40pct.npz"))
    model = anytimeformer.from_official(
        shared_path("reference", "anytimeformer", "anytimeformer_germany_40pct.ckpt"),
        ref["X_mean"], ref["X_std"], ref["sar_mean"], ref["sar_std"],
    )
    ds = synthetic_cube(ny=8, nx=8, bands=10, seed=0, chunks={"y": 4, "x": 4})
    out = ds.recon.fill("10D", method=model).compute()
    assert np.isfinite(out.optical.values).all()
    assert list(out.band.values) == list(anytimeformer.OFFICIAL_OPTICAL_BANDS)
    # plausible reflectance, not garbage
    assert 0.0 < float(out.optical.median()) < 0.5


def test_distributed_processes_equal_threads(cube, ckpt):
    """Two worker processes each load the model from the path in the graph and give the same result."""
    distributed = pytest.importorskip("distributed")
    lazy = cube.recon.fill("6D", method="anytimeformer", checkpoint=ckpt)
    expected = lazy.compute(scheduler="threads")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        with distributed.Client(lc):
            got = lazy.compute()
    assert_fill_close(got, expected)  # one torch thread per worker there: BLAS may round otherwise
