"""write_cog and ``xrecon fill ... --format cog``: one COG per variable and date, read back exactly by rioxarray."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

rasterio = pytest.importorskip("rasterio")
rioxarray = pytest.importorskip("rioxarray")

import xrecon  # noqa: E402, F401
from xrecon import io  # noqa: E402
from xrecon.cli import main  # noqa: E402
from xrecon.errors import OutputExistsError, XreconError  # noqa: E402
from xrecon.io import write_cog, write_zarr  # noqa: E402
from xrecon.testing import synthetic_cube  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

QUERY = ["2020-03-01", "2020-03-21", "2020-04-10"]


@pytest.fixture(scope="module")
def cube():
    # 40 x 24 px in chunks of 16: uneven edge chunks, so windows are not all one size
    return synthetic_cube(ny=40, nx=24, bands=4, seed=5, start="2020-01-01", end="2020-06-30",
                          chunks={"y": 16, "x": 16})


@pytest.fixture(scope="module")
def out(cube):
    return cube.recon.fill(QUERY, method="linear", gap_days=True)


@pytest.fixture
def hook(monkeypatch):
    def set_hook(fn):
        monkeypatch.setattr(io, "_REGION_HOOK", fn)
    return set_hook


def _read(path):
    return rioxarray.open_rasterio(path, masked=False)


def test_every_variable_and_date_read_back_exactly(out, tmp_path, hook):
    regions = []
    hook(lambda i, j: regions.append((i, j)))
    folder = write_cog(out, tmp_path / "cogs")
    assert len(regions) == 3 * 2  # each spatial chunk computed once, for every variable and date
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{v}_{d}.tif" for v in ("optical", "observed", "gap_days") for d in QUERY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cogs"]  # no lock, no partial folder left
    expected = out.compute()
    for k, day in enumerate(QUERY):
        back = _read(folder / f"optical_{day}.tif")
        np.testing.assert_array_equal(back.values, expected.optical.isel(time=k).values)  # NaN where NaN
        assert back.attrs["long_name"] == ("B02", "B03", "B04", "B08")  # band names, in the cube's order
        np.testing.assert_array_equal(back.x.values, out.x.values)
        np.testing.assert_array_equal(back.y.values, out.y.values)
        assert back.rio.crs == out.rio.crs and back.rio.crs.to_epsg() == 32631
        assert back.rio.transform() == out.rio.transform()
        assert np.isnan(back.rio.nodata) and back.dtype == np.float32
        assert back.attrs["time"] == f"{day}T00:00:00" and back.attrs["method"] == "linear"
        observed = _read(folder / f"observed_{day}.tif")
        assert observed.dtype == np.uint8 and observed.attrs["long_name"] == "observed"
        np.testing.assert_array_equal(observed.values[0].astype(bool), expected.observed.isel(time=k).values)
        gap = _read(folder / f"gap_days_{day}.tif")
        np.testing.assert_array_equal(gap.values[0], expected.gap_days.isel(time=k).values)


def test_they_are_cloud_optimized(out, tmp_path):
    big = synthetic_cube(ny=300, nx=160, bands=2, seed=1, start="2020-03-01", end="2020-03-20",
                         chunks={"y": 128, "x": 128}).recon.fill("2020-03-10")
    folder = write_cog(big, tmp_path / "big", blocksize=128, variables=["optical"], compress="zstd")
    with rasterio.open(folder / "optical_2020-03-10.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.compression.name == "zstd" and src.block_shapes[0] == (128, 128)
        assert src.overviews(1) == [2, 4]  # 300 px, 150, then 75: within one 128 px tile
        assert src.descriptions == ("B02", "B03")
        np.testing.assert_array_equal(src.read(), big.optical.isel(time=0).values)
    plain = write_cog(out, tmp_path / "plain", variables=["optical"], overviews=False)
    with rasterio.open(plain / f"optical_{QUERY[0]}.tif") as src:
        assert src.overviews(1) == [] and src.compression.name == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_two_query_times_on_one_day(cube, tmp_path):
    out = cube.recon.fill(["2020-03-01T00:00", "2020-03-01T12:00"], method="linear")
    folder = write_cog(out, tmp_path / "cogs", variables=["optical"])
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["optical_2020-03-01T000000.tif", "optical_2020-03-01T120000.tif"]
    noon = _read(folder / names[1])
    np.testing.assert_array_equal(noon.values, out.optical.isel(time=1).values)
    assert noon.attrs["time"] == "2020-03-01T12:00:00"


def test_never_over_existing_files_unless_asked(out, tmp_path):
    folder = tmp_path / "cogs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / f"optical_{QUERY[1]}.tif").write_text("not a tiff, but mine")
    with pytest.raises(OutputExistsError, match=f"optical_{QUERY[1]}.tif"):
        write_cog(out, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", f"optical_{QUERY[1]}.tif"]
    write_cog(out, folder, overwrite=True, variables=["optical"])
    assert (folder / "notes.txt").read_text() == "mine"  # files that are not the result's are left alone
    np.testing.assert_array_equal(_read(folder / f"optical_{QUERY[1]}.tif").values,
                                  out.optical.isel(time=1).values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cogs"]


def test_a_failure_leaves_nothing_and_resume_continues(out, tmp_path, hook):
    target = tmp_path / "cogs"
    calls = []

    def die_after_two(i, j):
        calls.append((i, j))
        if len(calls) == 2:
            raise RuntimeError("killed")

    hook(die_after_two)
    with pytest.raises(RuntimeError, match="killed"):
        write_cog(out, target)
    assert list(tmp_path.iterdir()) == []  # no folder, no partial store, no lock

    calls.clear()
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError):  # exactly 2 chunks written
        write_cog(out, target, resume=True)
    assert not target.exists() and (tmp_path / ".cogs.xrecon-partial").is_dir()
    calls.clear()
    hook(lambda i, j: calls.append((i, j)))
    write_cog(out, target, resume=True)
    assert len(calls) == 6 - 2  # only the chunks not written before
    assert len(list(target.iterdir())) == 9 and sorted(p.name for p in tmp_path.iterdir()) == ["cogs"]
    calls.clear()
    assert write_cog(out, target, resume=True) == target and calls == []  # complete: nothing to do


def test_bad_input(out, tmp_path):
    with pytest.raises(XreconError, match="local folder"):
        write_cog(out, "s3://bucket/cogs")
    with pytest.raises(XreconError, match="not in the dataset"):
        write_cog(out, tmp_path / "a", variables=["sar"])
    with pytest.raises(XreconError, match="multiple of 16"):
        write_cog(out, tmp_path / "b", blocksize=100)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="not a folder"):
        write_cog(out, tmp_path / "file")
    extra = out.optical.expand_dims(member=2).to_dataset(name="ens")
    with pytest.raises(XreconError, match="select the others away"):
        write_cog(extra, tmp_path / "c")


def test_a_map_without_time_and_a_cube_without_crs(out, tmp_path):
    summary = out.optical.mean("time").to_dataset(name="mean")
    folder = write_cog(summary, tmp_path / "summary")
    assert [p.name for p in folder.iterdir()] == ["mean.tif"]
    np.testing.assert_allclose(_read(folder / "mean.tif").values, summary["mean"].values, rtol=1e-6)
    bare = xr.Dataset({"a": (("y", "x"), np.ones((4, 4), "float32"))},
                      coords={"y": [35.0, 25.0, 15.0, 5.0], "x": [5.0, 15.0, 25.0, 35.0]})
    with pytest.warns(UserWarning, match="no CRS"):
        write_cog(bare, tmp_path / "bare")
    assert _read(tmp_path / "bare" / "a.tif").rio.transform().c == 0.0


def test_cli_fill_format_cog(cube, tmp_path, capsys):
    src = tmp_path / "in.zarr"
    write_zarr(cube, src)
    target = tmp_path / "out"
    args = ["fill", str(src), str(target), "--format", "cog", "--query-times", "2020-03-01/2020-03-31/15D",
            "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    assert "GeoTIFFs" in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == [f"{v}_2020-03-{d}.tif" for v in ("observed", "optical")
                                                        for d in ("01", "16", "31")]
    assert main(args) == 2 and "exist" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_a_file_made_during_the_write_survives_and_nothing_else_is_left(out, tmp_path, hook):
    target = tmp_path / "cogs"
    mine = target / f"observed_{QUERY[2]}.tif"

    def user(i, j):
        if not target.exists():
            target.mkdir()
            mine.write_text("mine")

    hook(user)
    with pytest.raises(OutputExistsError, match="appeared"):
        write_cog(out, target)
    assert [p.name for p in target.iterdir()] == [mine.name] and mine.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cogs"]
