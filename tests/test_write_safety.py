"""``write_zarr`` never deletes what it did not write, cleans up after every failure, and resumes."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
import warnings

import dask
import numpy as np
import pytest
import xarray as xr
from zarr.errors import UnstableSpecificationWarning, ZarrUserWarning

import xrecon  # noqa: F401
from tests.conftest import store_files
from xrecon import io
from xrecon.errors import OutputExistsError, XreconError
from xrecon.io import OutputLockedError, ResumeMismatchError, open_cube, write_zarr
from xrecon.testing import synthetic_cube


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("safety") / "in.zarr"
    write_zarr(synthetic_cube(ny=12, nx=12, bands=3, seed=2, chunks={"y": 4, "x": 4}), path)
    return path


@pytest.fixture
def hook(monkeypatch):
    """Set ``io._REGION_HOOK`` for one test."""
    def set_hook(fn):
        monkeypatch.setattr(io, "_REGION_HOOK", fn)
    return set_hook



def _fill(cube_path, method="linear"):
    return xr.open_zarr(cube_path).recon.fill(method=method)


def _raise_after(k, exc):
    calls = []

    def fn(i, j):
        calls.append((i, j))
        if len(calls) == k:
            raise exc
    return fn, calls


def test_a_second_writer_is_refused_naming_the_holder(cube_path, tmp_path, hook):
    target = tmp_path / "out.zarr"
    seen = []

    def second(i, j):
        if not seen:
            with pytest.raises(OutputLockedError, match=rf"out\.zarr.*pid {os.getpid()}") as err:
                write_zarr(_fill(cube_path), target)
            seen.append(str(err.value))
            assert isinstance(err.value, XreconError)

    hook(second)
    with dask.config.set(scheduler="synchronous"):
        write_zarr(_fill(cube_path), target)
    assert seen and socket.gethostname() in seen[0]
    assert xr.open_zarr(target).optical.notnull().all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_a_folder_made_at_out_during_the_run_survives(cube_path, tmp_path, hook):
    target = tmp_path / "out.zarr"

    def user(i, j):
        if not target.exists():
            target.mkdir()
            (target / "precious.txt").write_text("mine")

    hook(user)
    with pytest.raises(OutputExistsError, match="appeared"):
        write_zarr(_fill(cube_path), target)
    assert (target / "precious.txt").read_text() == "mine" and len(list(target.iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    # an empty folder is not replaced either (a plain rename would)
    (target / "precious.txt").unlink()
    with pytest.raises(OutputExistsError):
        write_zarr(_fill(cube_path), target, resume=True)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left")])
def test_every_failure_leaves_no_temporary_folder(cube_path, tmp_path, hook, monkeypatch, exc):
    target = tmp_path / "out.zarr"
    to_zarr = xr.Dataset.to_zarr

    def slow_write(self, *args, **kwargs):  # other threads are still writing when the failure is raised
        if kwargs.get("region"):
            time.sleep(0.1)
        return to_zarr(self, *args, **kwargs)

    def fail(i, j):
        if (i, j) == (0, 0):
            raise exc

    monkeypatch.setattr(xr.Dataset, "to_zarr", slow_write)
    hook(fail)
    with dask.config.set(scheduler="threads", num_workers=4), pytest.raises(type(exc)):
        write_zarr(_fill(cube_path), target)
    time.sleep(0.3)  # a late chunk write would recreate the folder
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_lock_and_partial_store_are_cleaned(cube_path, tmp_path):
    target = tmp_path / "out.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".out.zarr.xrecon-lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": "earlier"}))
    partial = tmp_path / ".out.zarr.xrecon-partial"
    (partial / "data.zarr").mkdir(parents=True)
    (partial / "xrecon-partial.json").write_text(json.dumps({"fingerprint": "other"}))
    write_zarr(_fill(cube_path), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    # a live holder on another host cannot be checked: refused
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": "now"}))
    with pytest.raises(OutputLockedError, match="elsewhere"):
        write_zarr(_fill(cube_path), target, overwrite=True)
    assert lock.exists()
    lock.unlink()
    # what xrecon did not write is never removed, even where its partial store would go
    partial.mkdir()
    (partial / "notes.txt").write_text("mine")
    with pytest.raises(XreconError, match="not made by xrecon"):
        write_zarr(_fill(cube_path), target, overwrite=True)
    assert (partial / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_only_once_complete_and_a_killed_swap_is_undone(cube_path, tmp_path):
    target = tmp_path / "out.zarr"
    write_zarr(xr.Dataset({"a": ("x", np.arange(3))}), target)
    with pytest.raises(OutputExistsError):
        write_zarr(_fill(cube_path), target, resume=True)  # not the same computation
    # killed between the two renames of a replacement: the old store is put back
    os.rename(target, tmp_path / ".out.zarr.xrecon-old")
    write_zarr(_fill(cube_path), tmp_path / "other.zarr")
    with pytest.raises(OutputExistsError):
        write_zarr(_fill(cube_path), target)
    assert xr.open_zarr(target).a.values.tolist() == [0, 1, 2]
    write_zarr(_fill(cube_path), target, overwrite=True)
    assert "optical" in xr.open_zarr(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.zarr", "out.zarr"]


def test_resume_writes_only_the_missing_chunks_and_equals_a_clean_run(cube_path, tmp_path, hook):
    clean = tmp_path / "clean.zarr"
    write_zarr(_fill(cube_path, "harmonic"), clean, source=cube_path)
    target = tmp_path / "out.zarr"
    fn, calls = _raise_after(4, RuntimeError("killed"))
    hook(fn)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="killed"):
        write_zarr(_fill(cube_path, "harmonic"), target, resume=True, source=cube_path)
    assert not target.exists()
    partial = tmp_path / ".out.zarr.xrecon-partial"
    assert len(list((partial / "done").iterdir())) == 4
    # another computation (method, input) is refused and leaves the partial store alone
    with pytest.raises(ResumeMismatchError, match="attrs.method"):
        write_zarr(_fill(cube_path, "linear"), target, resume=True, source=cube_path)
    with pytest.raises(ResumeMismatchError, match="source"):
        write_zarr(_fill(cube_path, "harmonic"), target, resume=True, source=tmp_path / "clean.zarr")
    assert len(list((partial / "done").iterdir())) == 4
    again = []
    hook(lambda i, j: again.append((i, j)))
    write_zarr(_fill(cube_path, "harmonic"), target, resume=True, source=cube_path)
    assert len(again) == 9 - 4 and not set(again) & set(calls)
    assert store_files(target) == store_files(clean)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.zarr", "out.zarr"]
    # a complete store of the same computation is left as it is
    again.clear()
    write_zarr(_fill(cube_path, "harmonic"), target, resume=True, source=cube_path)
    assert again == []


def test_without_resume_a_failed_write_is_not_kept_and_a_stale_one_not_reused(cube_path, tmp_path, hook):
    target = tmp_path / "out.zarr"
    fn, _ = _raise_after(2, RuntimeError("killed"))
    hook(fn)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError):
        write_zarr(_fill(cube_path), target, resume=True)
    count = []
    hook(lambda i, j: count.append(1))
    write_zarr(_fill(cube_path), target)  # no resume: starts again, cleaning the partial store
    assert len(count) == 9 and sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_fill_of_an_xrecon_written_cube_writes_with_plain_to_zarr(cube_path, tmp_path, zarr_format):
    out = _fill(cube_path)
    assert all(not v.encoding for v in out.variables.values())
    assert out.band.dtype == object
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnstableSpecificationWarning)
        warnings.simplefilter("error", ZarrUserWarning)
        warnings.simplefilter("error", RuntimeWarning)
        out.to_zarr(tmp_path / "plain.zarr", zarr_format=zarr_format, consolidated=zarr_format == 2)
        write_zarr(out, tmp_path / "ours.zarr", zarr_format=zarr_format)
        back = open_cube(tmp_path / "ours.zarr")
        # and once more: fill what was just written, write it again
        again = back.recon.fill(method="linear")
        write_zarr(again, tmp_path / "again.zarr", zarr_format=zarr_format)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnstableSpecificationWarning)
        out.to_zarr(tmp_path / "default.zarr", zarr_format=zarr_format)  # xarray's own defaults
    np.testing.assert_array_equal(open_cube(tmp_path / "plain.zarr").optical.values, back.optical.values)
    assert list(back.band.values) == list(out.band.values)
