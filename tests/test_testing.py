"""Tests of xrecon.testing: the synthetic cube, its ground truth, and the test helpers."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xrecon.errors import CubeError, QueryTimesError, XreconError
from xrecon.testing import (
    LANDCOVER_CLASSES,
    S2_BANDS,
    hide_observations,
    raise_if_dask_computes,
    synthetic_cube,
    synthetic_truth,
)

CROP = next(k for k, v in LANDCOVER_CLASSES.items() if v == "cropland")
VEGETATED = [k for k, v in LANDCOVER_CLASSES.items() if v in ("cropland", "grassland", "deciduous_forest",
                                                                "evergreen_forest")]


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    return synthetic_cube(ny=48, nx=40, seed=3)


@pytest.fixture(scope="module")
def cube10() -> xr.Dataset:
    # Two years, all ten bands: the cube the neural models train on, in small.
    return synthetic_cube(ny=48, nx=48, bands=10, start="2019-01-01", end="2020-12-31", seed=5)


def ndvi(refl: xr.DataArray) -> xr.DataArray:
    nir, red = refl.sel(band="B08"), refl.sel(band="B04")
    return (nir - red) / (nir + red)


# --- structure ----------------------------------------------------------------------------------


def test_dims_dtypes_coords(cube):
    ds = cube
    assert ds.optical.dims == ("time", "band", "y", "x")
    assert ds.truth.dims == ("time", "band", "y", "x")
    assert ds.clear.dims == ("time", "y", "x")
    assert ds.sar.dims == ("sar_time", "sar_band", "y", "x")
    assert ds.landcover.dims == ("y", "x")
    assert ds.optical.dtype == np.float32 and ds.truth.dtype == np.float32 and ds.sar.dtype == np.float32
    assert ds.clear.dtype == bool and ds.landcover.dtype == np.int8
    assert ds.sizes["y"] == 48 and ds.sizes["x"] == 40
    assert list(ds.band.values) == ["B02", "B03", "B04", "B08"]
    assert list(ds.sar_band.values) == ["VV", "VH"]
    for name in ("time", "sar_time"):
        t = ds[name].values
        assert t.dtype == np.dtype("datetime64[ns]")
        assert (np.diff(t) > np.timedelta64(0)).all(), f"{name} must be sorted and unique"
        assert t[0] >= np.datetime64("2020-01-01") and t[-1] < np.datetime64("2021-01-01")
    assert (np.diff(ds.y.values) == -10).all() and (np.diff(ds.x.values) == 10).all()
    assert ds.rio.crs.to_epsg() == 32631
    assert ds.rio.resolution() == (10.0, -10.0)
    # ~5-day revisit with some acquisitions missing
    gaps = np.diff(ds.time.values) / np.timedelta64(1, "D")
    assert set(np.unique(gaps)) <= {5.0, 10.0, 15.0, 20.0} and np.median(gaps) == 5
    assert 55 <= ds.sizes["time"] <= 73
    flags = dict(zip(ds.landcover.attrs["flag_values"], ds.landcover.attrs["flag_meanings"].split(),
                     strict=True))
    assert flags == LANDCOVER_CLASSES
    assert set(np.unique(ds.landcover.values)) == set(LANDCOVER_CLASSES)


@pytest.mark.parametrize(
    ("bands", "expected"),
    [
        (4, ["B02", "B03", "B04", "B08"]),
        (1, ["B02"]),
        (6, ["B02", "B03", "B04", "B08", "B11", "B12"]),
        (10, list(S2_BANDS)),
        (["B11", "B04"], ["B11", "B04"]),
    ],
)
def test_band_selection(bands, expected):
    ds = synthetic_cube(ny=8, nx=8, end="2020-02-28", bands=bands, sar=False)
    assert list(ds.band.values) == expected
    assert "sar" not in ds and "sar_time" not in ds.dims


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bands": 0},
        {"bands": 11},
        {"bands": ["B02", "B99"]},
        {"bands": ["B02", "B02"]},
        {"cloud_cover": 1.5},
        {"revisit_days": 0},
        {"ny": 1},
        {"cloudy": "white"},
        {"chunks": {"time": 2}},
        {"end": "2019-01-01"},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(XreconError):
        synthetic_cube(**kwargs)


@pytest.mark.parametrize("kwargs", [{"start": "not a date"}, {"end": "2020-01-06"}])
def test_bad_dates_are_query_time_errors(kwargs):
    with pytest.raises(QueryTimesError):
        synthetic_cube(**kwargs)


def test_shortest_range_has_dates():
    for seed in range(10):
        ds = synthetic_cube(ny=4, nx=4, end="2020-01-10", seed=seed)
        assert ds.sizes["time"] >= 2 and ds.sizes["sar_time"] >= 1


# --- determinism ----------------------------------------------------------------------------------


def _bytes(ds: xr.Dataset) -> dict[str, bytes]:
    out = {name: ds[name].values.tobytes() for name in ds.data_vars}
    out.update(time=ds.time.values.tobytes(), sar_time=ds.sar_time.values.tobytes())
    return out


def test_same_seed_same_bytes(cube):
    assert _bytes(synthetic_cube(ny=48, nx=40, seed=3)) == _bytes(cube)


def test_different_seed_differs(cube):
    other = _bytes(synthetic_cube(ny=48, nx=40, seed=4))
    mine = _bytes(cube)
    for name in ("optical", "truth", "clear", "sar", "landcover", "time", "sar_time"):
        assert other[name] != mine[name], name


def test_landscape_does_not_depend_on_date_range(cube):
    longer = synthetic_cube(ny=48, nx=40, seed=3, end="2021-06-30")
    np.testing.assert_array_equal(longer.landcover, cube.landcover)
    common = np.intersect1d(longer.time.values, cube.time.values)
    assert len(common) > 50
    np.testing.assert_allclose(longer.truth.sel(time=common), cube.truth.sel(time=common), atol=1e-6)


# --- clouds -------------------------------------------------------------------------------------------


def test_nan_exactly_where_not_clear(cube):
    finite = np.isfinite(cube.optical.values)
    clear = cube.clear.values
    assert (finite == clear[:, None]).all()
    # Clear observations are the truth itself (no noise by default).
    np.testing.assert_array_equal(cube.optical.values[finite], cube.truth.values[finite])
    assert np.isfinite(cube.truth.values).all()
    assert (cube.truth.values >= 0).all() and (cube.truth.values <= 1).all()
    shaded = synthetic_cube(ny=24, nx=24, end="2020-04-30", shadows=True, sar=False, seed=8)
    assert (np.isfinite(shaded.optical.values) == shaded.clear.values[:, None]).all()


@pytest.mark.parametrize("cover", [0.2, 0.4, 0.7])
def test_cloud_fraction_near_requested(cover):
    ds = synthetic_cube(ny=24, nx=24, start="2019-01-01", end="2021-12-31", cloud_cover=cover, sar=False,
                        seed=11)
    per_date = 1 - ds.clear.mean(["y", "x"]).values
    assert abs(per_date.mean() - cover) < 0.1
    # Per-date cover varies: some dates clear, some overcast, some partly cloudy.
    assert (per_date == 0).any() and (per_date == 1).any()
    assert ((per_date > 0.05) & (per_date < 0.95)).sum() >= 10


@pytest.mark.parametrize(("cover", "clear"), [(0.0, True), (1.0, False)])
def test_cloud_cover_extremes(cover, clear):
    ds = synthetic_cube(ny=8, nx=8, end="2020-03-31", cloud_cover=cover, sar=False)
    assert (ds.clear.values == clear).all()


def test_clouds_are_spatially_correlated(cube):
    clear = cube.clear.values
    frac = clear.mean(axis=(1, 2))
    partly = (frac > 0.2) & (frac < 0.8)
    assert partly.sum() >= 5
    c = clear[partly]
    agree = np.concatenate([(c[:, 1:, :] == c[:, :-1, :]).ravel(), (c[:, :, 1:] == c[:, :, :-1]).ravel()])
    chance = np.mean(frac[partly] ** 2 + (1 - frac[partly]) ** 2)
    # Chance agreement of independent pixels is ~0.5-0.7 here; clouds come in blobs, not salt and pepper.
    assert agree.mean() > 0.85
    assert agree.mean() > chance + 0.25


def test_shadows_add_to_the_mask():
    kw = dict(ny=32, nx=32, end="2020-06-30", sar=False, seed=2)
    plain, shaded = synthetic_cube(**kw), synthetic_cube(shadows=True, **kw)
    assert (shaded.clear.values <= plain.clear.values).all()
    assert shaded.clear.values.sum() < plain.clear.values.sum()


def test_cloudy_values_contaminate_instead_of_nan():
    ds = synthetic_cube(ny=24, nx=24, end="2020-06-30", sar=False, cloudy="values", seed=1)
    assert np.isfinite(ds.optical.values).all()
    cloudy = ~ds.clear.values
    blue_obs = ds.optical.sel(band="B02").values
    blue_truth = ds.truth.sel(band="B02").values
    assert (blue_obs[cloudy] > blue_truth[cloudy] + 0.05).mean() > 0.9
    np.testing.assert_array_equal(blue_obs[~cloudy], blue_truth[~cloudy])


def test_noise_only_on_optical():
    ds = synthetic_cube(ny=16, nx=16, end="2020-04-30", sar=False, noise=0.01, cloud_cover=0.0)
    diff = (ds.optical - ds.truth).values
    assert 0.005 < diff.std() < 0.015


# --- SAR ---------------------------------------------------------------------------------------------


def test_sar_dates_are_asynchronous(cube):
    opt, sar = cube.time.values, cube.sar_time.values
    assert not np.isin(sar, opt).any()
    same_day = np.isin(sar.astype("datetime64[D]"), opt.astype("datetime64[D]"))
    assert same_day.mean() < 0.4
    gaps = np.diff(sar) / np.timedelta64(1, "D")
    assert np.median(gaps) == 6
    twelve = synthetic_cube(ny=8, nx=8, sar_revisit_days=12)
    assert np.median(np.diff(twelve.sar_time.values) / np.timedelta64(1, "D")) == 12


def test_sar_values_plausible(cube):
    vv, vh = cube.sar.sel(sar_band="VV"), cube.sar.sel(sar_band="VH")
    assert np.isfinite(cube.sar.values).all()
    assert -35 < float(vh.median()) < float(vv.median()) < 0
    water = cube.landcover == 0
    urban = cube.landcover == 1
    assert float(vv.where(water).mean()) < -17 and float(vv.where(urban).mean()) > -9


def test_vh_follows_vegetation(cube10):
    ds = cube10
    truth_at_sar = synthetic_truth(ds, ds.sar_time.values, bands=["B04", "B08"])
    nd = ndvi(truth_at_sar).values
    vh = ds.sar.sel(sar_band="VH").values
    veg = np.broadcast_to(ds.landcover.isin(VEGETATED).values, vh.shape)
    r = np.corrcoef(nd[veg], vh[veg])[0, 1]
    assert r > 0.5
    # And over time within cropland: VH is higher in the growing season than in winter.
    crop = ds.landcover == CROP
    monthly = ds.sar.sel(sar_band="VH").where(crop).mean(["y", "x"]).groupby("sar_time.month")
    m = monthly.mean().values
    assert m[4:7].mean() > m[[0, 1, 10, 11]].mean() + 3


def test_speckle_is_multiplicative_noise():
    kw = dict(ny=32, nx=32, end="2020-03-31", cloud_cover=0.0, seed=4)
    noisy, clean = synthetic_cube(**kw), synthetic_cube(sar_looks=np.inf, **kw)
    d = (noisy.sar - clean.sar).values
    # Gamma(4.4) speckle in dB: biased low by ~0.5 dB, spread ~2 dB.
    assert 1.5 < d.std() < 2.8
    assert -1.0 < d.mean() < 0.0


# --- optical realism ------------------------------------------------------------------------------


def test_spectra_respond_to_vegetation(cube10):
    ds = cube10
    veg = ds.landcover.isin(VEGETATED)
    t = ds.truth.where(veg)
    g = ndvi(ds.truth).where(veg)
    flat = {b: t.sel(band=b).values.ravel() for b in ("B04", "B08", "B11", "B12", "B05", "B07")}
    gv = g.values.ravel()
    ok = np.isfinite(gv)

    def r(b):
        return np.corrcoef(gv[ok], flat[b][ok])[0, 1]

    assert r("B08") > 0.3 and r("B07") > 0.3  # NIR and outer red edge rise with vegetation
    assert r("B04") < -0.3 and r("B11") < -0.3 and r("B12") < -0.3  # red and SWIR fall
    peak = t.sel(time=t.time.dt.month == 7).mean(["time", "y", "x"])
    assert float(peak.sel(band="B08")) > 2 * float(peak.sel(band="B04"))
    assert float(peak.sel(band="B07")) > float(peak.sel(band="B05"))


def test_phenology_by_class(cube10):
    ds = cube10
    g = ndvi(ds.truth)
    monthly = {}
    for code, name in LANDCOVER_CLASSES.items():
        monthly[name] = g.where(ds.landcover == code).mean(["y", "x"]).groupby("time.month").mean().values
    decid, everg, water = monthly["deciduous_forest"], monthly["evergreen_forest"], monthly["water"]
    assert decid[6] > decid[0] + 0.2  # leaves in July, not in January
    assert np.ptp(everg) < np.ptp(decid)  # evergreen stays green
    assert (water < 0).all()
    assert monthly["cropland"].max() > monthly["cropland"].min() + 0.2
    # Fields of one class do not move in lockstep: sowing dates vary per field.
    crop = ds.landcover == CROP
    per_field = g.where(crop).groupby(ds.field.where(crop)).mean()
    green_up = (per_field > 0.5).argmax("time")
    assert len(np.unique(green_up.values)) > 1


def test_multi_year(cube10):
    ds = cube10
    years = ds.time.dt.year.values
    assert set(years) == {2019, 2020} and set(ds.sar_time.dt.year.values) == {2019, 2020}
    g = ndvi(ds.truth).where(ds.landcover == CROP)
    # The season repeats...
    for year in (2019, 2020):
        m = g.sel(time=str(year)).mean(["y", "x"]).groupby("time.month").mean().values
        assert m[3:8].max() > m[[0, 1, 11]].mean() + 0.15
    # ...but not identically: crops rotate and dates shift between years.
    jul = [g.sel(time=(g.time.dt.year == y) & (g.time.dt.month == 7)).mean("time") for y in (2019, 2020)]
    assert float(np.abs(jul[0] - jul[1]).mean()) > 0.05


# --- truth at any time --------------------------------------------------------------------------------


def test_synthetic_truth_matches_truth_at_optical_dates(cube):
    t = synthetic_truth(cube, cube.time.values)
    assert t.dims == ("time", "band", "y", "x") and t.dtype == np.float32
    np.testing.assert_allclose(t.values, cube.truth.values, atol=1e-6)
    assert t.rio.crs == cube.rio.crs


def test_truth_times_argument_is_smooth():
    ds = synthetic_cube(ny=16, nx=16, truth_times="1D", sar=False, seed=7)
    assert ds.truth_at.dims == ("truth_time", "band", "y", "x")
    assert ds.sizes["truth_time"] == 366
    daily = np.abs(ds.truth_at.diff("truth_time")).values
    # Smooth from day to day, except the few real jumps: mowing, harvest, rain on bare soil.
    assert np.percentile(daily, 99) < 0.03
    assert np.percentile(daily, 50) < 0.002
    off = synthetic_truth(ds, ["2020-03-03T00:00", "2020-08-17T12:00"])
    np.testing.assert_allclose(off.sel(time="2020-03-03").values[0],
                               ds.truth_at.sel(truth_time="2020-03-03").values, atol=1e-6)
    explicit = synthetic_cube(ny=16, nx=16, truth_times=["2020-05-05"], sar=False, seed=7)
    assert explicit.sizes["truth_time"] == 1


def test_synthetic_truth_of_a_subset(cube):
    sub = cube.isel(y=slice(10, 30), x=slice(5, 25, 2))
    t = synthetic_truth(sub, sub.time.values[:4], bands=["B08"])
    np.testing.assert_allclose(t.values, sub.truth.sel(band=["B08"]).values[:4], atol=1e-6)


def test_synthetic_truth_needs_a_synthetic_cube():
    with pytest.raises(CubeError):
        synthetic_truth(xr.Dataset(), ["2020-01-01"])


# --- dask and Zarr ------------------------------------------------------------------------------------


def test_chunks_in_space_only(cube):
    ds = synthetic_cube(ny=48, nx=40, seed=3, chunks=16)
    assert ds.optical.chunks == ((ds.sizes["time"],), (4,), (16, 16, 16), (16, 16, 8))
    assert ds.sar.chunks[:2] == ((ds.sizes["sar_time"],), (2,))
    assert ds.clear.chunks[1:] == ((16, 16, 16), (16, 16, 8))
    xr.testing.assert_identical(ds.compute(), cube)
    pair = synthetic_cube(ny=48, nx=40, chunks=(24, 20))
    assert pair.optical.chunks[2:] == ((24, 24), (20, 20))
    t = synthetic_truth(pair, pair.time.values[:3])
    assert t.chunks[2:] == ((24, 24), (20, 20))


def test_zarr_round_trip(tmp_path, cube):
    path = tmp_path / "cube.zarr"
    cube.to_zarr(path)
    # rioxarray convention: the grid-mapping variable comes back as a coordinate with decode_coords="all".
    back = xr.open_zarr(path, decode_coords="all")
    assert back.rio.crs.to_epsg() == 32631
    assert back.rio.transform() == cube.rio.transform()
    xr.testing.assert_equal(back.load(), cube)
    assert back.landcover.attrs["flag_meanings"] == cube.landcover.attrs["flag_meanings"]
    # The scene survives the trip, so its truth can be evaluated from the stored cube.
    np.testing.assert_allclose(synthetic_truth(back, cube.time.values[:2]).values,
                               cube.truth.values[:2], atol=1e-6)


def test_raise_if_dask_computes():
    x = da.arange(10, chunks=5)
    with raise_if_dask_computes():
        y = x * 2  # graph building only
    with pytest.raises(RuntimeError, match="too many dask computations"):
        with raise_if_dask_computes():
            y.sum().compute()
    with pytest.raises(RuntimeError):
        with raise_if_dask_computes():
            xr.DataArray(y).values  # noqa: B018  (implicit compute)
    with raise_if_dask_computes(max_computes=1) as sched:
        assert int(y.sum().compute()) == 90
    assert sched.total_computes == 1
    # The scheduler is restored afterwards.
    assert dask.config.get("scheduler", None) is None or not callable(dask.config.get("scheduler"))


# --- hide_observations -----------------------------------------------------------------------------------


def test_hide_observations(cube):
    held, hidden = hide_observations(cube, 0.3, seed=1, mask="clear")
    assert hidden.dims == ("time", "y", "x") and hidden.dtype == bool
    clear = cube.clear.values
    h = hidden.values
    assert not (h & ~clear).any()
    assert abs(h.sum() / clear.sum() - 0.3) < 0.03
    assert np.isnan(held.optical.values[np.broadcast_to(h[:, None], held.optical.shape)]).all()
    kept = clear & ~h
    np.testing.assert_array_equal(held.optical.values.transpose(1, 0, 2, 3)[:, kept],
                                  cube.optical.values.transpose(1, 0, 2, 3)[:, kept])
    assert (held.clear.values == kept).all()
    assert not hide_observations(cube, 0.3, seed=2)[1].equals(hidden)
    assert hide_observations(cube, 0.0)[1].values.sum() == 0
    with pytest.raises(XreconError):
        hide_observations(cube, 1.5)
    with pytest.raises(CubeError):
        hide_observations(cube, 0.2, optical="nope")


def test_hide_observations_is_lazy_and_chunk_independent(cube):
    lazy = cube.chunk({"y": 16, "x": 10})
    with raise_if_dask_computes():
        held, hidden = hide_observations(lazy, 0.25, seed=9)
    assert hidden.chunks is not None
    eager_held, eager_hidden = hide_observations(cube, 0.25, seed=9)
    np.testing.assert_array_equal(hidden.values, eager_hidden.values)
    xr.testing.assert_identical(held.compute(), eager_held)


def test_dates_accept_timestamps():
    ds = synthetic_cube(ny=8, nx=8, start=pd.Timestamp("2021-03-01"), end=pd.Timestamp("2021-03-31"))
    assert ds.time.values[0] >= np.datetime64("2021-03-01")
    assert ds.time.values[-1] <= np.datetime64("2021-04-01")
