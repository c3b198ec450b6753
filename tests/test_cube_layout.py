"""from_bands lays a cube out the way fill reads it, so that check() on it says nothing about its chunks."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xrecon  # noqa: F401
from xrecon.cube import from_bands, whole_series_chunks
from xrecon.masks import scl_clear
from xrecon.testing import raise_if_dask_computes

BANDS = ["B02", "B03", "B04", "B08"]


def _source(chunks=None, nt=20, ny=32, nx=32, seed=0):
    """One uint16 variable per band and an SCL, as netCDF / STAC loaders give them (time named ``t``)."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2021-01-01", periods=nt, freq="6D")
    data = {b: (("t", "y", "x"), rng.integers(300, 4000, (nt, ny, nx)).astype("uint16")) for b in BANDS}
    data["SCL"] = (("t", "y", "x"), rng.choice([4, 4, 4, 9], (nt, ny, nx)).astype("uint8"))
    ds = xr.Dataset(data, coords={"t": t, "y": 1000.0 - 10 * np.arange(ny), "x": 10.0 * np.arange(nx)})
    return ds.chunk(chunks) if chunks else ds


def _chunk_findings(cube, level):
    return [f for f in cube.recon.check(coverage=False).findings if f.topic == "chunks" and f.level == level]


def test_a_from_bands_cube_is_clean_for_check():
    src = _source({"t": 1, "y": 16, "x": 16})  # one chunk per date and band, as a loader reads them
    with raise_if_dask_computes():
        cube = from_bands(src, BANDS, mask=scl_clear(src.SCL), scale=1e-4, nodata=0)
    assert cube.optical.chunks == ((20,), (4,), (16, 16), (16, 16))
    assert cube.clear.chunks == ((20,), (16, 16), (16, 16))
    assert not _chunk_findings(cube, "warning") and _chunk_findings(cube, "ok")
    # the same values as the band-by-band stacking
    np.testing.assert_allclose(cube.optical.sel(band="B04").values, src.B04.values * 1e-4, rtol=1e-6)


def test_check_still_warns_about_cubes_stored_badly(tmp_path):
    cube = from_bands(_source({"t": 1}), BANDS, mask=scl_clear(_source().SCL), scale=1e-4)
    assert _chunk_findings(cube.chunk({"time": 5}), "warning")
    assert _chunk_findings(cube.chunk({"band": 1}), "warning")
    # stored by someone else with a chunk per date, and opened again
    cube.chunk({"time": 1}).drop_encoding().to_zarr(tmp_path / "bad.zarr", zarr_format=2)
    assert _chunk_findings(xrecon.io.open_cube(tmp_path / "bad.zarr"), "warning")


def test_whole_time_where_memory_allows():
    src = _source({"t": 1, "y": 64, "x": 64}, ny=64, nx=64)
    # 20 dates x 4 bands x 4 bytes = 320 bytes a pixel: 64 x 64 px = 1.25 MiB, 32 x 64 = 640 KiB, 32 x 32 fits
    with dask.config.set({"array.chunk-size": "512KiB"}):
        cube = from_bands(src, BANDS, scale=1e-4)
    assert cube.optical.chunks[:2] == ((20,), (4,))
    assert cube.optical.chunks[2:] == ((32, 32), (32, 32))
    assert cube.optical.nbytes / 4 <= 512 * 1024
    assert not _chunk_findings(cube, "warning")
    assert whole_series_chunks(cube, budget="1KiB", smallest=4) == {"time": -1, "band": -1, "y": 4, "x": 4}


def test_sar_and_optical_share_the_spatial_chunks_and_numpy_stays_numpy():
    src = _source({"t": 2, "y": 8, "x": 8}).assign(
        VV=lambda d: (d.B02.dims, -12.0 + 0 * d.B02.data.astype("float32")),
        VH=lambda d: (d.B02.dims, -18.0 + 0 * d.B02.data.astype("float32")))
    cube = from_bands(src, BANDS, scale=1e-4, sar_bands=["VV", "VH"])
    assert cube.sar.chunks[:2] == ((20,), (2,)) and cube.sar.chunks[2:] == cube.optical.chunks[2:]
    in_memory = from_bands(_source(), BANDS, scale=1e-4)
    assert in_memory.optical.chunks is None


@pytest.mark.parametrize("nt", [1, 3])
def test_short_series(nt):
    cube = from_bands(_source({"t": 1}, nt=nt), BANDS, scale=1e-4)
    assert cube.optical.chunks[0] == (nt,)
