"""The command line and Zarr writing: end to end, refusing to overwrite, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

import xrecon  # noqa: F401
from xrecon.cli import main
from xrecon.errors import OutputExistsError
from xrecon.io import write_zarr
from xrecon.testing import synthetic_cube


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "in.zarr"
    ds = synthetic_cube(ny=12, nx=12, bands=4, seed=1, chunks={"y": 6, "x": 6})
    write_zarr(ds, path)
    return path


def test_cli_fill_end_to_end(cube_path, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    code = main([
        "fill", str(cube_path), str(out), "--method", "harmonic", "--option", "order=3",
        "--query-times", "2020-03-01/2020-06-30/10D", "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    result = xr.open_zarr(out)
    assert result.sizes["time"] == 13 and result.attrs["method"] == "harmonic"
    assert '"order": 3' in result.attrs["options"]
    expected = xr.open_zarr(cube_path).recon.fill("2020-03-01/2020-06-30/10D", method="harmonic", order=3)
    np.testing.assert_array_equal(result.optical.values, expected.optical.values)
    assert result.rio.crs.to_epsg() == 32631


def test_cli_refuses_to_overwrite_and_reports_bad_input(cube_path, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    assert main(["fill", str(cube_path), str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "mine"
    assert main(["fill", str(cube_path), str(tmp_path / "o2.zarr"), "--method", "magic", "--quiet"]) == 2
    assert "'magic'" in capsys.readouterr().err
    assert main(["fill", str(cube_path), str(tmp_path / "o3.zarr"), "--query-times", "2020/nope", "--quiet"]) == 2
    assert "query times" in capsys.readouterr().err
    assert main(["fill", str(tmp_path / "missing.zarr"), str(tmp_path / "o4.zarr"), "--quiet"]) == 2
    assert not (tmp_path / "o2.zarr").exists() and not (tmp_path / "o3.zarr").exists()


def test_failed_write_leaves_nothing_and_keeps_the_old_store(tmp_path):
    target = tmp_path / "out.zarr"
    write_zarr(xr.Dataset({"a": ("x", np.arange(4))}), target)

    def boom(block):
        raise RuntimeError("worker died")

    bad = xr.Dataset({"a": ("x", np.arange(4))}).chunk(2)
    bad["a"] = bad.a.copy(data=bad.a.data.map_blocks(boom, dtype=int))
    with pytest.raises(RuntimeError, match="worker died"):
        write_zarr(bad, target, overwrite=True)
    assert xr.open_zarr(target).a.values.tolist() == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    with pytest.raises(OutputExistsError):
        write_zarr(xr.Dataset({"a": ("x", np.arange(2))}), target)
    write_zarr(xr.Dataset({"a": ("x", np.arange(2))}), target, overwrite=True)
    assert xr.open_zarr(target).a.values.tolist() == [0, 1]


def test_cli_evaluate(cube_path, tmp_path, capsys):
    csv = tmp_path / "table.csv"
    png = tmp_path / "table.png"
    assert main(["evaluate", str(cube_path), "--methods", "linear,whittaker", "--csv", str(csv), "--by-gap",
                 "--plot", str(png)]) == 0
    assert png.stat().st_size > 5000
    printed = capsys.readouterr().out
    assert "rmse" in printed and "whittaker" in printed
    import pandas as pd

    table = pd.read_csv(csv)
    assert set(table.method) == {"linear", "whittaker"} and {"mae", "rmse", "r2"} <= set(table.columns)


def test_cli_demo(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--size", "32", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "RMSE" in printed and str(tmp_path / "demo") in printed
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    filled = xr.open_zarr(tmp_path / "demo" / "filled.zarr")
    assert np.isfinite(filled.optical.values).all()
