"""from_stac on COGs and STAC items written here (offline): decoding, masks, SAR, grid, laziness, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("stackstac")
rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

from xrecon.cube import validate  # noqa: E402
from xrecon.errors import XreconError  # noqa: E402
from xrecon.stac import StacError, from_stac  # noqa: E402
from xrecon.testing import raise_if_dask_computes  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

EPSG = 32633
X0, Y0, RES, N = 500000.0, 4000320.0, 10.0, 32
BANDS = ["B02", "B03", "B04", "B08"]
DATES = ["2021-12-20T10:00:00Z", "2022-02-01T10:00:00Z", "2022-03-01T10:00:00Z"]
# date 0: baseline 03.01 (DN * 1e-4); date 1: baseline 04.00 (offset -1000 DN); date 2: raster:bands with
# scale 2e-4, no offset, *and* baseline 04.00 -> raster:bands wins, the baseline offset is not added on top.
BASELINES = ["03.01", "04.00", "04.00"]
SAR_DATES = ["2021-12-18T05:00:00Z", "2022-01-05T05:00:00Z", "2022-01-10T17:00:00Z", "2022-02-10T05:00:00Z"]
SAR_ORBITS = [117, 117, 44, 117]
SAR_NODATA = -9999.0


def _dn(i: int, j: int) -> int:
    return 2000 + 100 * j + 10 * i


def _transform(res: float):
    return from_origin(X0, Y0, res, res)


def _write(path, data, res=RES, epsg=EPSG, nodata=None, x0=X0):
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=f"EPSG:{epsg}", transform=from_origin(x0, Y0, res, res),
                       nodata=nodata) as dst:
        dst.write(data, 1)
    return str(path)


def _asset(href, res=RES, shape=(N, N), **extra):
    t = _transform(res)
    return {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
            "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f], "proj:shape": list(shape), **extra}


def _item(item_id, date, assets, **props):
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "links": [], "stac_extensions": [],
            "geometry": None, "bbox": [14.9, 36.1, 15.0, 36.2],
            "properties": {"datetime": date, "proj:epsg": EPSG, **props}, "assets": assets}


def _scl(i: int) -> np.ndarray:
    # 20 m SCL, 16 x 16: vegetation (4) except a cloud (9) block moving with the date and a no-data (0) row.
    scl = np.full((N // 2, N // 2), 4, dtype="uint8")
    scl[i: i + 4, 4:8] = 9
    scl[-1, :] = 0
    scl[5, 10] = 6  # water: clear
    return scl


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac")
    items = []
    for i, (date, baseline) in enumerate(zip(DATES, BASELINES, strict=True)):
        assets = {}
        for j, b in enumerate(BANDS):
            data = np.full((N, N), _dn(i, j), dtype="uint16")
            data[0, 0] = 0  # S2 L2A no-data DN
            data[1, 1] = 65535  # no-data only where raster:bands says so (date 2)
            extra = {}
            if i == 2:
                extra["raster:bands"] = [{"data_type": "uint16", "scale": 2e-4, "offset": 0.0, "nodata": 65535}]
            assets[b] = _asset(_write(root / f"{b}_{i}.tif", data), **extra)
        assets["SCL"] = _asset(_write(root / f"SCL_{i}.tif", _scl(i), res=2 * RES), res=2 * RES, shape=(N // 2, N // 2))
        items.append(_item(f"S2_{i}", date, assets, **{"s2:processing_baseline": baseline}))
    sar = []
    for k, (date, orbit) in enumerate(zip(SAR_DATES, SAR_ORBITS, strict=True)):
        assets = {}
        for j, b in enumerate(["vv", "vh"]):
            db = -10.0 - k - 5 * j
            data = np.full((N // 2, N // 2), 10 ** (db / 10), dtype="float32")
            data[0, 0] = SAR_NODATA
            data[0, 1] = 0.0  # zero power -> NaN, not -inf
            assets[b] = _asset(_write(root / f"{b}_{k}.tif", data, res=2 * RES), res=2 * RES, shape=(N // 2, N // 2),
                               **{"raster:bands": [{"data_type": "float32", "nodata": SAR_NODATA}]})
        sar.append(_item(f"S1_{k}", date, assets, **{"sat:relative_orbit": orbit}))
    return {"root": root, "items": items, "sar": sar}


@pytest.fixture(scope="module")
def cube(catalogue):
    with raise_if_dask_computes():
        ds = from_stac(catalogue["items"], bands=BANDS, sar_items=catalogue["sar"], resolution=RES,
                       chunks={"x": 16, "y": 16})
    return ds


def test_lazy_structure_and_conventions(cube):
    assert cube.optical.dims == ("time", "band", "y", "x")
    assert cube.clear.dims == ("time", "y", "x")
    assert cube.sar.dims == ("sar_time", "sar_band", "y", "x")
    assert cube.optical.shape == (3, 4, N, N)
    assert list(cube.band.values) == BANDS
    assert list(cube.sar_band.values) == ["vv", "vh"]
    assert cube.optical.dtype == np.float32 and cube.sar.dtype == np.float32 and cube.clear.dtype == bool
    for name in ("optical", "clear", "sar"):
        assert cube[name].chunks is not None, name
    assert cube.optical.chunks[2] == (16, 16)
    assert cube.optical.attrs["xrecon_mask"] == "clear"
    with raise_if_dask_computes():
        parts = validate(cube)
    assert parts.mask_name == "clear" and parts.sar is not None
    assert np.issubdtype(cube.time.dtype, np.datetime64)


def test_decoding_both_rules_never_both(cube):
    opt = cube.optical.values
    for j in range(len(BANDS)):
        # baseline 03.01: DN * 1e-4
        np.testing.assert_allclose(opt[0, j, 5, 5], _dn(0, j) * 1e-4, rtol=1e-6)
        # baseline 04.00: (DN - 1000) / 1e4
        np.testing.assert_allclose(opt[1, j, 5, 5], (_dn(1, j) - 1000) * 1e-4, rtol=1e-6)
        # raster:bands scale only, although the item says baseline 04.00: no -0.1 on top
        np.testing.assert_allclose(opt[2, j, 5, 5], _dn(2, j) * 2e-4, rtol=1e-6)


def test_nodata_is_nan(cube):
    opt = cube.optical.values
    assert np.isnan(opt[:2, :, 0, 0]).all()  # DN 0: the Sentinel-2 no-data value, for items without raster:bands
    assert np.isnan(opt[2, :, 1, 1]).all()  # raster:bands nodata 65535 ...
    np.testing.assert_array_equal(opt[2, :, 0, 0], 0.0)  # ... replaces the S2 default there
    # 65535 where no nodata is declared is a (saturated) value, decoded, not dropped
    np.testing.assert_allclose(opt[0, :, 1, 1], 65535 * 1e-4, rtol=1e-6)
    assert np.isfinite(opt[:, :, 2:, 2:]).all()


def test_clear_from_scl(cube):
    clear = cube.clear.values
    for i in range(3):
        expected = np.repeat(np.repeat(np.isin(_scl(i), [4, 5, 6]), 2, axis=0), 2, axis=1)
        np.testing.assert_array_equal(clear[i], expected)
    assert clear[0, 0:8, 8:16].sum() == 0  # the cloud block
    assert clear[0, 10, 20]  # water is clear


def test_sar_db_one_orbit(cube):
    assert cube.sar.attrs["relative_orbit"] == 117
    assert cube.sar.sizes["sar_time"] == 3
    kept = [k for k, o in enumerate(SAR_ORBITS) if o == 117]
    sar = cube.sar.values
    for t, k in enumerate(kept):
        np.testing.assert_allclose(sar[t, 0, 10, 10], -10.0 - k, atol=1e-4)
        np.testing.assert_allclose(sar[t, 1, 10, 10], -15.0 - k, atol=1e-4)
    assert np.isnan(sar[:, :, 0:2, 0:2]).all()  # the 20 m nodata pixel
    assert np.isnan(sar[:, :, 0:2, 2:4]).all()  # zero power
    assert not np.isinf(sar).any()
    assert (np.diff(cube.sar_time.values) > np.timedelta64(0)).all()


def test_fill_and_zarr_keep_the_grid(cube, tmp_path):
    import xarray as xr

    import xrecon

    out = cube.recon.fill("2022-01-01/2022-02-20/10D", method="linear")
    xrecon.io.write_zarr(out, tmp_path / "filled.zarr")
    back = xr.open_zarr(tmp_path / "filled.zarr")
    assert back.rio.crs.to_epsg() == EPSG and back.rio.transform() == cube.rio.transform()
    assert list(back.band.values) == BANDS and np.isfinite(back.optical.values[:, :, 16:28]).all()


def test_sar_orbit_choice(catalogue):
    ds = from_stac(catalogue["items"], bands=BANDS, sar_items=catalogue["sar"], resolution=RES, orbit=44)
    assert ds.sar.sizes["sar_time"] == 1 and ds.sar.attrs["relative_orbit"] == 44
    np.testing.assert_allclose(ds.sar.values[0, 0, 10, 10], -12.0, atol=1e-4)
    with pytest.raises(StacError, match="relative_orbit 7"):
        from_stac(catalogue["items"], bands=BANDS, sar_items=catalogue["sar"], resolution=RES, orbit=7)


def test_grid_and_crs(cube):
    assert cube.rio.crs.to_epsg() == EPSG
    t = cube.rio.transform()
    assert (t.a, t.e, t.c, t.f) == (RES, -RES, X0, Y0)
    assert cube.x.values[0] == X0 + RES / 2 and cube.y.values[0] == Y0 - RES / 2
    assert cube.optical.rio.crs.to_epsg() == EPSG and cube.sar.rio.crs.to_epsg() == EPSG
    assert "spatial_ref" in cube.coords


def test_bbox_subsets_on_the_grid(catalogue):
    bbox = (X0 + 80, Y0 - 160, X0 + 240, Y0 - 40)
    ds = from_stac(catalogue["items"], bands=["B04"], bbox=bbox, resolution=RES, mask=None)
    assert ds.optical.shape == (3, 1, 12, 16)
    assert "clear" not in ds and "xrecon_mask" not in ds.optical.attrs
    assert ds.x.values[0] == X0 + 85


def test_pystac_items(catalogue):
    pystac = pytest.importorskip("pystac")
    items = [pystac.Item.from_dict(copy.deepcopy(d)) for d in catalogue["items"]]
    ds = from_stac(pystac.ItemCollection(items), bands=["B02", "B08"], resolution=RES)
    np.testing.assert_allclose(ds.optical.values[1, 1, 5, 5], (_dn(1, 3) - 1000) * 1e-4, rtol=1e-6)
    assert list(ds.band.values) == ["B02", "B08"]


def test_input_items_not_mutated(catalogue):
    before = copy.deepcopy(catalogue["items"])
    from_stac(catalogue["items"], bands=BANDS, resolution=RES)
    assert catalogue["items"] == before


@pytest.mark.parametrize("case", ["no_items", "missing_band", "missing_scl", "mixed_epsg", "no_decoding",
                                  "no_orbit", "bands_str"])
def test_bad_input(catalogue, case):
    items = copy.deepcopy(catalogue["items"])
    sar = None
    match = None
    if case == "no_items":
        items, match = [], "no STAC items"
    elif case == "missing_band":
        del items[1]["assets"]["B03"]
        match = "S2_1.*no asset 'B03'"
    elif case == "missing_scl":
        del items[0]["assets"]["SCL"]
        match = "mask=None"
    elif case == "mixed_epsg":
        items[2]["properties"]["proj:epsg"] = 32632
        match = "epsg="
    elif case == "no_decoding":
        del items[0]["properties"]["s2:processing_baseline"]
        match = "cannot be decoded"
    elif case == "no_orbit":
        sar = copy.deepcopy(catalogue["sar"])
        del sar[1]["properties"]["sat:relative_orbit"]
        match = "sat:relative_orbit"
    with pytest.raises(XreconError, match=match) as info:
        from_stac(items, bands="B02" if case == "bands_str" else BANDS, sar_items=sar, resolution=RES)
    assert isinstance(info.value, StacError)


def test_mixed_epsg_with_epsg_given(catalogue):
    items = copy.deepcopy(catalogue["items"])[:2]
    neighbour = copy.deepcopy(items[1])  # the same pass on a tile of the next UTM zone, reprojected
    neighbour["id"], neighbour["properties"]["datetime"] = "S2_1_T32", "2022-02-06T10:00:00Z"
    neighbour["properties"]["proj:epsg"] = 32632
    ds = from_stac(items + [neighbour], bands=["B02"], epsg=EPSG, resolution=RES, mask=None,
                   bbox=(X0, Y0 - N * RES, X0 + N * RES, Y0))
    # The zone-32 tile's footprint (its proj:transform read in EPSG:32632) lies outside the bbox: stackstac
    # drops it, and the decoding still follows the items that were kept.
    assert ds.rio.crs.to_epsg() == EPSG and ds.optical.shape == (2, 1, N, N)
    assert ds.attrs["stac_items"] == ["S2_0", "S2_1"]
    np.testing.assert_allclose(ds.optical.values[:, 0, 5, 5], [_dn(0, 0) * 1e-4, (_dn(1, 0) - 1000) * 1e-4],
                               rtol=1e-6)


def test_integer_sar_refused(catalogue):
    sar = copy.deepcopy(catalogue["sar"])
    for it in sar:
        for a in it["assets"].values():
            a["raster:bands"] = [{"data_type": "uint16"}]
    with pytest.raises(StacError, match="linear power"):
        from_stac(catalogue["items"], bands=BANDS, sar_items=sar, resolution=RES)
