"""ds.recon.check(): the pre-flight report, and xrecon check."""

from __future__ import annotations

import pytest

import xrecon  # noqa: F401
from xrecon.check import CheckError
from xrecon.cli import main
from xrecon.testing import synthetic_cube


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=24, nx=24, seed=0, chunks={"y": 12, "x": 12})


def _topics(report, level="warning"):
    return {f.topic for f in report.findings if f.level == level}


def test_a_good_cube_passes(cube):
    report = cube.recon.check("5D")
    assert report.ok, report
    assert "reflectance" in _topics(report, "ok") and "SAR" in _topics(report, "ok")
    assert "xrecon check" in repr(report) and list(report.to_frame().columns) == ["level", "topic", "message"]


def test_what_it_finds(cube):
    dn = cube.assign(optical=cube.optical * 10_000)
    assert "reflectance" in _topics(dn.recon.check())
    assert "mask" in _topics(cube.recon.check(mask=False))  # the cube's own mask would go unused
    assert "chunks" in _topics(cube.chunk({"time": 10}).recon.check())
    sparse = cube.isel(sar_time=slice(0, 3))
    assert "SAR" in _topics(sparse.recon.check("5D"))
    cloudy = cube.assign(clear=cube.clear & (cube.clear.time.dt.month == 6))
    report = cloudy.recon.check(methods=("harmonic",))
    assert "coverage" in _topics(report)
    assert not [f for f in cube.recon.check(coverage=False).findings if f.topic == "coverage"]
    late = synthetic_cube(ny=8, nx=8, start="2021-06-01", end="2022-06-01", seed=1)
    assert "baseline" in _topics(late.recon.check(), "info")


def test_strict_raises_and_the_cli_exit_code(cube, tmp_path, capsys):
    dn = cube.assign(optical=cube.optical * 10_000)
    with pytest.raises(CheckError, match="digital numbers"):
        dn.recon.check(strict=True)
    good, bad = tmp_path / "good.zarr", tmp_path / "bad.zarr"
    cube.drop_encoding().to_zarr(good)
    dn.drop_encoding().to_zarr(bad)
    assert main(["check", str(good), "--query-times", "5D"]) == 0
    assert "0 warning(s)" in capsys.readouterr().out
    assert main(["check", str(bad)]) == 1
    assert main(["check", str(bad), "--strict"]) == 2
    assert "digital numbers" in capsys.readouterr().err
