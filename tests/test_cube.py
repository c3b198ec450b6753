"""Cube conventions: validation errors, from_bands decoding, SCL masks, query times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xrecon
from xrecon.cube import decode, from_bands, validate
from xrecon.errors import CubeError, QueryTimesError
from xrecon.masks import scl_clear
from xrecon.times import day_of_year, parse_query_times, to_days


def small_cube(T=6, C=2, Y=3, X=4, seed=0, sar=False):
    rng = np.random.default_rng(seed)
    t = pd.date_range("2021-03-01", periods=T, freq="5D")
    ds = xr.Dataset(
        {"optical": (("time", "band", "y", "x"), rng.random((T, C, Y, X), dtype="float32"))},
        coords={"time": t, "band": [f"B{i}" for i in range(C)], "y": -10.0 * np.arange(Y), "x": 10.0 * np.arange(X)},
    )
    if sar:
        ts = pd.date_range("2021-03-02", periods=T + 1, freq="4D")
        ds["sar"] = (("sar_time", "sar_band", "y", "x"), rng.normal(-12, 2, (T + 1, 2, Y, X)).astype("float32"))
        ds = ds.assign_coords(sar_time=ts, sar_band=["VV", "VH"])
    return ds


def test_xrecon_error_is_value_error():
    assert issubclass(xrecon.XreconError, ValueError)
    assert issubclass(CubeError, xrecon.XreconError)


def test_validate_returns_canonical_order():
    ds = small_cube(sar=True)
    cube = validate(ds.transpose("x", "y", "band", "time", "sar_band", "sar_time"))
    assert cube.optical.dims == ("time", "band", "y", "x")
    assert cube.sar.dims == ("sar_time", "sar_band", "y", "x")
    assert cube.bands == ["B0", "B1"] and cube.sar_bands == ["VV", "VH"]


def test_missing_variable_names_it_and_lists_others():
    with pytest.raises(CubeError, match=r"'reflectance'.*optical"):
        validate(small_cube(), optical="reflectance")


def test_missing_dimension():
    ds = small_cube().isel(band=0, drop=True)
    with pytest.raises(CubeError, match=r"missing \['band'\]"):
        validate(ds)


def test_duplicate_times():
    ds = small_cube()
    t = ds.time.values.copy()
    t[3] = t[2]
    with pytest.raises(CubeError, match="duplicate times"):
        validate(ds.assign_coords(time=t))


def test_unsorted_times_are_sorted_lazily():
    ds = small_cube().chunk({"y": 1})
    shuffled = ds.isel(time=[3, 0, 5, 1, 2, 4])
    cube = validate(shuffled)
    assert cube.times.is_monotonic_increasing
    xr.testing.assert_equal(cube.optical, ds.optical)


def test_integer_optical_is_refused():
    ds = small_cube()
    ds["optical"] = (ds.optical * 10000).astype("uint16")
    with pytest.raises(CubeError, match="integer"):
        validate(ds)


def test_float_dn_from_integer_file_is_refused():
    ds = small_cube()
    ds.optical.encoding["dtype"] = np.dtype("uint16")
    with pytest.raises(CubeError, match="digital numbers"):
        validate(ds)


def test_mask_errors():
    ds = small_cube()
    with pytest.raises(CubeError, match="'cloudless'"):
        validate(ds, mask="cloudless")
    ds["m"] = (("time", "y", "x"), np.ones((6, 3, 4), dtype="uint8"))
    with pytest.raises(CubeError, match="expected bool"):
        validate(ds, mask="m")


def test_sar_on_another_grid():
    ds = small_cube(sar=True)
    # SAR left on its own (coarser) grid: other spatial dimensions than optical's.
    coarse = ds.sar.coarsen(y=3, x=2).mean().rename(y="y_sar", x="x_sar")
    bad = ds.drop_vars("sar").assign(sar=coarse)
    with pytest.raises(CubeError, match="another grid"):
        validate(bad)
    # Same dimensions but another CRS.
    bad = ds.assign_coords(
        crs_opt=xr.Variable((), 0, {"crs_wkt": "EPSG:32631"}), crs_sar=xr.Variable((), 0, {"crs_wkt": "EPSG:4326"})
    )
    bad.optical.attrs["grid_mapping"] = "crs_opt"
    bad.sar.attrs["grid_mapping"] = "crs_sar"
    with pytest.raises(CubeError, match="CRS differs"):
        validate(bad)


def test_missing_default_sar_is_optional_but_named_sar_must_exist():
    ds = small_cube()
    assert validate(ds).sar is None
    with pytest.raises(CubeError, match="'s1'"):
        validate(ds, sar="s1")


def test_decode_and_from_bands_any_time_name():
    t = pd.date_range("2020-01-01", periods=3, freq="10D")
    dn = np.array([0, 1000, 2000, 65535], dtype="uint16").reshape(1, 2, 2).repeat(3, 0)
    src = xr.Dataset(
        {
            "S2-L2A-B04": (("t", "y", "x"), dn),
            "S2-L2A-B08": (("t", "y", "x"), dn),
            "S1-VV": (("t", "y", "x"), np.full((3, 2, 2), 1000, dtype="uint16")),
            "S1-VH": (("t", "y", "x"), np.full((3, 2, 2), 100, dtype="uint16")),
            "scl": (("t", "y", "x"), np.array([4, 9, 5, 0]).reshape(1, 2, 2).repeat(3, 0)),
        },
        coords={"t": t, "y": [1.0, 0.0], "x": [0.0, 1.0]},
    )
    cube = from_bands(
        src,
        ["S2-L2A-B04", "S2-L2A-B08"],
        mask=scl_clear(src.scl),
        scale=1e-4,
        nodata=[0, 65535],
        sar_bands=["S1-VV", "S1-VH"],
        sar_decode=lambda v: 20 * np.log10(v) - 83,
    )
    assert list(cube.band.values) == ["B04", "B08"]
    assert list(cube.sar_band.values) == ["VV", "VH"]
    np.testing.assert_allclose(cube.optical.isel(time=0, band=0).values, [[np.nan, 0.1], [0.2, np.nan]], rtol=1e-6)
    np.testing.assert_allclose(cube.sar.isel(sar_time=0, sar_band=0).values, 20 * np.log10(1000) - 83, rtol=1e-6)
    assert cube.clear.dtype == bool and cube.clear.isel(time=0).values.tolist() == [[True, False], [True, False]]
    validated = validate(cube, mask="clear")
    assert validated.sar is not None


def test_from_bands_refuses_undecoded_integers():
    src = xr.Dataset(
        {"B04": (("time", "y", "x"), np.ones((2, 1, 1), "uint16"))},
        coords={"time": pd.date_range("2020", periods=2)},
    )
    with pytest.raises(CubeError, match="scale="):
        from_bands(src, ["B04"])


def test_decode_is_lazy_and_needs_one_decoder():
    da = xr.DataArray(np.arange(4, dtype="uint16")).chunk(2)
    assert decode(da, scale=0.5).chunks is not None
    with pytest.raises(CubeError):
        decode(da)


def test_scl_clear_classes():
    scl = xr.DataArray(np.array([0, 3, 4, 5, 6, 7, 8, 9, 10, 11, np.nan]))
    assert scl_clear(scl).values.tolist() == [False, False, True, True, True, False] + [False] * 5
    assert scl_clear(scl, classes=[4, 11]).values.tolist()[9] is True
    with pytest.raises(CubeError, match="unknown SCL classes"):
        scl_clear(scl, classes=[42])


def test_parse_query_times_forms():
    obs = pd.DatetimeIndex(["2019-01-03", "2019-02-01"])
    assert parse_query_times(None, obs).equals(obs)
    five = parse_query_times("5D", obs)
    assert five[0] == pd.Timestamp("2019-01-03") and (np.diff(five.asi8) == 5 * 86400e9).all()
    span = parse_query_times("2019-01-01/2019-12-31/5D", obs)
    assert span[0] == pd.Timestamp("2019-01-01") and span[-1] <= pd.Timestamp("2019-12-31")
    explicit = parse_query_times(["2019-01-10", np.datetime64("2019-01-11")], obs)
    assert len(explicit) == 2
    aware = parse_query_times(pd.DatetimeIndex(["2019-01-10T01:00"], tz="Europe/Paris"), obs)
    assert aware[0] == pd.Timestamp("2019-01-10T00:00")


@pytest.mark.parametrize("bad", ["every five days", "2019-01-01/2019-12-31/5X", "2019-01-01/xx/5D", []])
def test_bad_query_times(bad):
    with pytest.raises(QueryTimesError):
        parse_query_times(bad, pd.DatetimeIndex(["2019-01-03"]))


def test_duplicate_query_times():
    with pytest.raises(QueryTimesError, match="duplicates"):
        parse_query_times(["2019-01-01", "2019-01-01"], pd.DatetimeIndex(["2019-01-03"]))


def test_day_conversions():
    t = pd.DatetimeIndex(["1970-01-02", "2020-12-31", "2021-01-01T12:00"])
    np.testing.assert_allclose(to_days(t)[0], 1.0)
    assert day_of_year(t).tolist() == [2.0, 366.0, 1.0]


def test_separate_s2_and_s1_files_recipe():
    """docs/stac.md: from_bands on each file, then merge; integer SAR needs sar_decode; sentinels -> NaN."""
    import pandas as pd

    from xrecon.cube import dn_to_db

    t2, t1 = pd.date_range("2021-01-01", periods=4, freq="10D"), pd.date_range("2021-01-03", periods=5, freq="6D")
    s2 = xr.Dataset({b: (("t", "y", "x"), np.full((4, 3, 3), 1200, "uint16")) for b in ["B04", "B08"]},
                    coords={"t": t2, "y": [0.0, 1.0, 2.0], "x": [0.0, 1.0, 2.0]})
    dn = np.full((5, 3, 3), 1000, "uint16")
    dn[0, 0, 0], dn[1, 1, 1] = 65535, 65534
    s1 = xr.Dataset({"VV": (("t", "y", "x"), dn), "VH": (("t", "y", "x"), dn // 2)},
                    coords={"t": t1, "y": [0.0, 1.0, 2.0], "x": [0.0, 1.0, 2.0]})
    optical = from_bands(s2, ["B04", "B08"], scale=1e-4, time_dim="t")
    with pytest.raises(CubeError, match="sar_decode"):
        from_bands(s1, [], sar_bands=["VV", "VH"], time_dim="t")
    radar = from_bands(s1, [], sar_bands=["VV", "VH"], sar_decode=dn_to_db("amplitude"), time_dim="t")
    assert list(radar.data_vars) == ["sar"]
    cube = xr.merge([optical, radar])
    assert cube.sizes["time"] == 4 and cube.sizes["sar_time"] == 5
    validate(cube)
    vv = cube.sar.sel(sar_band="VV").values
    assert np.isnan(vv[0, 0, 0]) and np.isnan(vv[1, 1, 1]) and np.isclose(vv[2, 2, 2], 20 * 3 - 83)
    with pytest.raises(CubeError, match="kind"):
        dn_to_db("linear")
