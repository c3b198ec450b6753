"""write_zarr to an fsspec URL (fsspec's memory filesystem): region by region, markers in the store, resume."""

from __future__ import annotations

import uuid

import dask
import fsspec
import numpy as np
import pytest
import xarray as xr

import xrecon  # noqa: F401
from xrecon import io
from xrecon.errors import CubeError, OutputExistsError
from xrecon.io import NoLockWarning, ResumeMismatchError, open_cube, write_zarr
from xrecon.testing import synthetic_cube

pytestmark = pytest.mark.filterwarnings("ignore::xrecon.io.NoLockWarning")


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=12, nx=12, bands=3, seed=4, chunks={"y": 4, "x": 4})  # 9 regions


@pytest.fixture
def url():
    """A fresh store URL on fsspec's (process-global) memory filesystem, removed afterwards."""
    name = f"memory://xrecon-tests/{uuid.uuid4().hex}/out.zarr"
    yield name
    fs = fsspec.filesystem("memory")
    root = name.split("://", 1)[1].rsplit("/", 1)[0]
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def hook(monkeypatch):
    def set_hook(fn):
        monkeypatch.setattr(io, "_REGION_HOOK", fn)
    return set_hook


def _fill(cube, method="linear"):
    return cube.recon.fill(method=method)


def _entries(url):
    """What is in the store's folder and beside it."""
    fs, root = fsspec.core.url_to_fs(url)
    parent = root.rsplit("/", 1)[0]
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(parent, detail=False)} if fs.exists(parent) else set()


def _markers(url):
    fs, root = fsspec.core.url_to_fs(url)
    parent, name = root.rsplit("/", 1)
    return f"{parent}/.{name}.xrecon-partial"


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_url_is_written_region_by_region_and_says_it_has_no_lock(cube, url, tmp_path, zarr_format):
    out = _fill(cube)
    with pytest.warns(NoLockWarning, match="without a lock"):
        assert write_zarr(out, url, zarr_format=zarr_format) == url
    assert _entries(url) == {"out.zarr"}  # the markers are gone: the store is complete
    write_zarr(out, tmp_path / "local.zarr", zarr_format=zarr_format)
    remote, local = open_cube(url), open_cube(tmp_path / "local.zarr")
    xr.testing.assert_identical(remote.drop_attrs(), local.drop_attrs())
    assert remote.attrs["method"] == "linear" and "xrecon_write_fingerprint" in remote.attrs


def test_resume_on_a_memory_store(cube, url, hook):
    out = _fill(cube)
    calls = []

    def die_after_four(i, j):
        calls.append((i, j))
        if len(calls) == 4:
            raise KeyboardInterrupt

    hook(die_after_four)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        write_zarr(out, url, resume=True)
    fs, root = fsspec.core.url_to_fs(url)
    assert len(fs.ls(f"{_markers(url)}/done")) == 4  # the markers are on the same filesystem, beside it
    with pytest.raises(CubeError, match="unfinished xrecon write"):
        open_cube(url)
    with pytest.raises(OutputExistsError, match="resume=True to continue"):
        write_zarr(out, url)  # neither resume nor overwrite: it is left as it is

    calls.clear()
    hook(lambda i, j: calls.append((i, j)))
    with dask.config.set(scheduler="synchronous"):
        write_zarr(_fill(cube), url, resume=True)
    assert len(calls) == 9 - 4  # only the regions without a marker
    clean = f"{url}-clean"
    write_zarr(out, clean)
    xr.testing.assert_identical(open_cube(url), open_cube(clean))
    fs.rm(clean.split("://", 1)[1], recursive=True)

    calls.clear()
    write_zarr(_fill(cube), url, resume=True)  # complete already: nothing is written
    assert calls == []


def test_resume_refuses_another_computation(cube, url, hook):
    def die(i, j):
        raise RuntimeError("boom")

    hook(die)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError):
        write_zarr(_fill(cube), url, resume=True)
    hook(None)
    with pytest.raises(ResumeMismatchError, match="attrs.method"):
        write_zarr(_fill(cube, "harmonic"), url, resume=True)
    assert ".out.zarr.xrecon-partial" in _entries(url)  # left as it was
    write_zarr(_fill(cube, "harmonic"), url, overwrite=True)
    assert open_cube(url).attrs["method"] == "harmonic"


def test_existing_stores_and_failures(cube, url, hook):
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe(f"{root}/precious.txt", b"mine")
    with pytest.raises(OutputExistsError, match="exists"):
        write_zarr(_fill(cube), url)
    assert fs.cat(f"{root}/precious.txt") == b"mine"
    write_zarr(_fill(cube), url, overwrite=True)
    assert not fs.exists(f"{root}/precious.txt") and open_cube(url).optical.notnull().all()

    other = url.replace("/out.zarr", "/failed/out.zarr")

    def die(i, j):
        raise RuntimeError("boom")

    hook(die)
    with pytest.raises(RuntimeError):
        write_zarr(_fill(cube), other)
    assert _entries(other) == set()  # without resume, a failed write removes what it wrote


def test_file_urls_are_local_paths(cube, tmp_path):
    target = tmp_path / "out.zarr"
    with np.testing.assert_no_warnings():
        write_zarr(_fill(cube), f"file://{target}")
    assert open_cube(target).optical.notnull().all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
