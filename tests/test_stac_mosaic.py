"""from_stac with several items per solar day: neighbouring tiles and SAR slices mosaicked, each decoded first.

Two overlapping Sentinel-2 tiles of one pass, written here as COGs: tile A (baseline 03.01, DN = R * 1e4) and
tile B (baseline 04.00, DN = R * 1e4 + 1000) of the same ground reflectance R, each with a no-data edge inside
the overlap. Decoded per item, the mosaic is R everywhere one of them has data; decoding after mixing would
show a 0.1 step at the seam.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("stackstac")
rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

from xrecon.stac import StacError, from_stac, solar_day  # noqa: E402
from xrecon.testing import raise_if_dask_computes  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

EPSG, X0, Y0, RES = 32633, 500000.0, 4000320.0, 10.0
NY, NX, WIDTH, SHIFT = 32, 64, 40, 24  # the union grid; each tile 40 px wide, B starts 24 px east of A
BANDS = ["B02", "B03", "B04", "B08"]
A_GAP = (slice(0, 10), slice(34, 40))  # A's no-data corner (union columns), inside the overlap 24..40
B_GAP = (slice(0, 4), slice(24, 36))  # B's no-data edge; rows 0-4, columns 34-36 are missing in both
CLOUD = (slice(12, 16), slice(30, 38))  # A's SCL says cloud here, B's says vegetation


def truth(b: int) -> np.ndarray:
    """The ground reflectance of band b on the union grid."""
    i, j = np.mgrid[0:NY, 0:NX]
    return 0.05 + 0.01 * b + 0.002 * i + 0.001 * j


def _write(path, data, x0):
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=f"EPSG:{EPSG}", transform=from_origin(x0, Y0, RES, RES)) as dst:
        dst.write(data, 1)
    return str(path)


def _asset(href, x0, shape):
    t = from_origin(x0, Y0, RES, RES)
    return {"href": href, "roles": ["data"], "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "proj:shape": list(shape)}


def _tile(root, name, col0, date, baseline, gap, *, bias=0.0, cloud=None, cover=None, lon=15.05):
    """One S2 item covering union columns col0 .. col0 + WIDTH, no data (DN 0, SCL 0) in ``gap``."""
    cols = slice(col0, col0 + WIDTH)
    offset = 1000 if baseline >= "04.00" else 0
    x0 = X0 + col0 * RES
    missing = np.zeros((NY, NX), bool)
    missing[gap] = True
    assets = {}
    for b, band in enumerate(BANDS):
        dn = np.round((truth(b) + bias) * 1e4 + offset).astype("uint16")
        dn[missing] = 0
        assets[band] = _asset(_write(root / f"{name}_{band}.tif", dn[:, cols], x0), x0, (NY, WIDTH))
    scl = np.full((NY, NX), 4, dtype="uint8")
    if cloud is not None:
        scl[cloud] = 9
    scl[missing] = 0
    assets["SCL"] = _asset(_write(root / f"{name}_SCL.tif", scl[:, cols], x0), x0, (NY, WIDTH))
    props = {"datetime": date, "proj:epsg": EPSG, "s2:processing_baseline": baseline}
    if cover is not None:
        props["eo:cloud_cover"] = cover
    return {"type": "Feature", "stac_version": "1.0.0", "id": name, "links": [], "stac_extensions": [],
            "geometry": None, "bbox": [lon - 0.05, 36.1, lon + 0.05, 36.2], "properties": props, "assets": assets}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosaic")
    a = _tile(root, "A", 0, "2022-03-01T10:00:00Z", "03.01", A_GAP, cloud=CLOUD, cover=30.0)
    b = _tile(root, "B", SHIFT, "2022-03-01T10:00:04Z", "04.00", B_GAP, cover=10.0)
    # B again, reading 0.02 brighter: which item a mosaic took shows in its values
    b2 = _tile(root, "B2", SHIFT, "2022-03-01T10:00:04Z", "04.00", B_GAP, bias=0.02, cover=10.0)
    later = _tile(root, "A_later", 0, "2022-03-06T10:00:00Z", "04.00", (slice(0, 0), slice(0, 0)))
    return {"root": root, "A": a, "B": b, "B2": b2, "later": later}


def _footprint():
    """Where each tile has data, on the union grid."""
    a = np.zeros((NY, NX), bool)
    a[:, :WIDTH] = True
    a[A_GAP] = False
    b = np.zeros((NY, NX), bool)
    b[:, SHIFT:SHIFT + WIDTH] = True
    b[B_GAP] = False
    return a, b


def test_two_tiles_of_one_date_are_one_seamless_correctly_decoded_date(tiles):
    with raise_if_dask_computes():
        cube = from_stac([tiles["later"], tiles["B"], tiles["A"]], bands=BANDS, resolution=RES,
                         chunks={"x": 16, "y": 16})
    assert cube.optical.shape == (2, 4, NY, NX)
    assert cube.time.values[0] == np.datetime64("2022-03-01T10:00:00")  # the first acquisition of the day
    assert cube.attrs["stac_items"] == ["A + B", "A_later"]
    opt = cube.optical.values[0]
    has_a, has_b = _footprint()
    either = has_a | has_b
    for b in range(len(BANDS)):
        np.testing.assert_allclose(opt[b][either], truth(b)[either], atol=2e-5)  # DN rounding: 0.5e-4
        assert np.isnan(opt[b][~either]).all()
    # the seams themselves: A's last column and B's first, A's no-data corner filled from B, B's edge from A
    np.testing.assert_allclose(opt[2][:, SHIFT - 1:SHIFT + 1], truth(2)[:, SHIFT - 1:SHIFT + 1], atol=2e-5)
    np.testing.assert_allclose(opt[2][:, WIDTH - 1:WIDTH + 1], truth(2)[:, WIDTH - 1:WIDTH + 1], atol=2e-5)
    np.testing.assert_allclose(opt[:, 5:10, 34:40], np.stack([truth(b)[5:10, 34:40] for b in range(4)]), atol=2e-5)
    assert np.isnan(opt[:, 0:4, 34:36]).all()  # missing in both tiles
    # clear: A's cloud where A gave the pixel, B's vegetation east of A; no data -> not clear
    clear = cube.clear.values[0]
    assert not clear[CLOUD].any()
    assert clear[:, WIDTH:].all() and clear[20:, :SHIFT].all()
    assert not clear[~either].any()
    # the single-tile date is decoded with its own baseline (04.00: -1000 DN)
    np.testing.assert_allclose(cube.optical.values[1, 0][:, :WIDTH], truth(0)[:, :WIDTH], atol=2e-5)


def test_the_mosaic_order(tiles):
    has_a, has_b = _footprint()
    both = has_a & has_b
    items = [tiles["A"], tiles["B2"]]
    first = from_stac(items, bands=["B04"], resolution=RES).optical.values[0, 0]
    np.testing.assert_allclose(first[both], truth(2)[both], atol=2e-5)  # A came first
    np.testing.assert_allclose(first[has_b & ~has_a], truth(2)[has_b & ~has_a] + 0.02, atol=2e-5)

    cube = from_stac(items, bands=["B04"], resolution=RES, mosaic="least-cloudy")  # B2: 10 %, A: 30 %
    least = cube.optical.values[0, 0]
    np.testing.assert_allclose(least[both], truth(2)[both] + 0.02, atol=2e-5)
    np.testing.assert_allclose(least[has_a & ~has_b], truth(2)[has_a & ~has_b], atol=2e-5)
    assert cube.attrs["stac_items"] == ["B2 + A"]
    assert cube.clear.values[0][CLOUD].all()  # the clear flag comes with the item that gave the pixel

    no_cover = copy.deepcopy(tiles["B2"])
    del no_cover["properties"]["eo:cloud_cover"]  # items without a cloud cover go last
    later = from_stac([tiles["A"], no_cover], bands=["B04"], resolution=RES, mosaic="least-cloudy")
    np.testing.assert_allclose(later.optical.values[0, 0][both], truth(2)[both], atol=2e-5)


def test_groupby_none_keeps_every_item(tiles):
    cube = from_stac([tiles["A"], tiles["B"]], bands=["B04"], resolution=RES, groupby=None)
    assert cube.sizes["time"] == 2 and cube.attrs["stac_items"] == ["A", "B"]
    same_time = copy.deepcopy(tiles["B"])
    same_time["properties"]["datetime"] = tiles["A"]["properties"]["datetime"]
    with pytest.raises(StacError, match="groupby='solar_day'"):
        from_stac([tiles["A"], same_time], bands=["B04"], resolution=RES, groupby=None)
    with pytest.raises(StacError, match="mosaic="):
        from_stac([tiles["A"]], bands=["B04"], resolution=RES, mosaic="median")
    with pytest.raises(StacError, match="groupby="):
        from_stac([tiles["A"]], bands=["B04"], resolution=RES, groupby="day")


def test_the_solar_day_not_the_utc_day(tiles):
    # one pass crossing midnight UTC at 150 degrees east (10 h ahead): one local day
    a, b = copy.deepcopy(tiles["A"]), copy.deepcopy(tiles["B"])
    a["properties"]["datetime"], b["properties"]["datetime"] = "2022-03-01T23:59:58Z", "2022-03-02T00:00:02Z"
    for it in (a, b):
        it["bbox"] = [149.9, 36.1, 150.1, 36.2]
    assert from_stac([a, b], bands=["B04"], resolution=RES).sizes["time"] == 1
    for it in (a, b):  # at Greenwich, those are two days
        it["bbox"] = [-0.1, 51.4, 0.1, 51.6]
    assert from_stac([a, b], bands=["B04"], resolution=RES).sizes["time"] == 2
    assert str(solar_day("2022-03-01T20:00:00Z", -170.0).date()) == "2022-03-01"
    assert str(solar_day("2022-03-01T20:00:00Z", 170.0).date()) == "2022-03-02"
    across = {"bbox": [179.0, 0.0, -179.0, 1.0]}  # a bbox across the antimeridian: its centre is 180
    from xrecon.stac import _longitude

    assert _longitude(across) == 180.0
    assert _longitude({"geometry": {"type": "Polygon", "coordinates": [[[10, 0], [12, 0], [12, 1], [10, 0]]]}}) == 11


def test_sar_slices_of_one_pass(tiles):
    """Two Sentinel-1 slices of one pass, 20 s apart, overlapping by 6 rows, each with a no-data edge."""
    root = tiles["root"]
    nodata = -9999.0
    sar = []
    for k, (rows, date) in enumerate([((0, 20), "2022-03-02T05:00:00Z"), ((14, NY), "2022-03-02T05:00:20Z")]):
        r0, r1 = rows
        assets = {}
        for j, band in enumerate(["vv", "vh"]):
            db = np.full((r1 - r0, NX), -10.0 - 5 * j, dtype="float32") - 0.01 * np.arange(r0, r1)[:, None]
            power = (10 ** (db / 10)).astype("float32")
            if k == 0:
                power[-3:, :8] = nodata  # slice 1's edge, inside the overlap: slice 2 fills it
            else:
                power[:3, 56:] = nodata
            y0 = Y0 - r0 * RES
            with rasterio.open(root / f"S1_{k}_{band}.tif", "w", driver="COG", width=NX, height=r1 - r0, count=1,
                               dtype="float32", crs=f"EPSG:{EPSG}", transform=from_origin(X0, y0, RES, RES)) as dst:
                dst.write(power, 1)
            t = from_origin(X0, y0, RES, RES)
            assets[band] = {"href": str(root / f"S1_{k}_{band}.tif"), "proj:shape": [r1 - r0, NX],
                            "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
                            "raster:bands": [{"data_type": "float32", "nodata": nodata}]}
        sar.append({"type": "Feature", "stac_version": "1.0.0", "id": f"S1_{k}", "links": [], "geometry": None,
                    "bbox": [15.0, 36.1, 15.1, 36.2], "stac_extensions": [], "assets": assets,
                    "properties": {"datetime": date, "proj:epsg": EPSG, "sat:relative_orbit": 117}})
    with raise_if_dask_computes():
        cube = from_stac([tiles["A"], tiles["B"]], bands=["B04"], sar_items=sar, resolution=RES)
    assert cube.sar.sizes["sar_time"] == 1 and cube.sar.attrs["stac_items"] == ["S1_0 + S1_1"]
    values = cube.sar.values[0]
    expected = np.stack([-10.0 - 5 * j - 0.01 * np.arange(NY)[:, None] + np.zeros((1, NX)) for j in range(2)])
    np.testing.assert_allclose(values, expected, atol=1e-4)  # no hole at either slice's edge, no seam
