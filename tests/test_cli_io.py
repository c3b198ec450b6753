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


def test_cli_fill_resume_and_second_writer(cube_path, tmp_path, capsys, monkeypatch):
    import socket

    from xrecon import io

    out, clean = tmp_path / "out.zarr", tmp_path / "clean.zarr"
    args = ["fill", str(cube_path), str(out), "--method", "harmonic", "--scheduler", "synchronous", "--quiet"]
    assert main(["fill", str(cube_path), str(clean), "--method", "harmonic", "--quiet"]) == 0
    calls = []

    def killed(i, j):
        calls.append((i, j))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(io, "_REGION_HOOK", killed)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--resume"])
    assert not out.exists()
    monkeypatch.setattr(io, "_REGION_HOOK", None)
    # a live writer holds OUT: refused with a one-line message naming it
    lock = tmp_path / ".out.zarr.xrecon-lock"
    lock.write_text(f'{{"pid": 1, "host": "{socket.gethostname()}x", "time": "now"}}')
    assert main([*args, "--resume"]) == 2
    assert "being written by pid 1" in capsys.readouterr().err
    lock.unlink()
    assert main([*args, "--method", "linear", "--resume"]) == 2
    assert "another computation" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    np.testing.assert_array_equal(xr.open_zarr(out).optical.values, xr.open_zarr(clean).optical.values)
    assert xr.open_zarr(out).attrs == xr.open_zarr(clean).attrs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.zarr", "out.zarr"]


def test_cli_help_shows_defaults_and_evaluate_takes_device_batch_quiet(cube_path, capsys):
    from xrecon.cli import build_parser

    fill_help = build_parser()._subparsers._group_actions[0].choices["fill"].format_help()
    assert "(default: linear)" in fill_help and "(default: hold)" in fill_help
    assert "(default: None)" not in fill_help
    assert main(["evaluate", str(cube_path), "--methods", "linear", "--quiet", "--device", "cpu",
                 "--batch-size", "64"]) == 0
    out = capsys.readouterr()
    assert "linear" in out.out and "xrecon evaluate" not in out.err  # --quiet: no progress bar
