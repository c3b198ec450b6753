"""Memory given back between blocks (xrecon.memory): it changes no result, runs once per block and region
write, does nothing where the platform has no malloc_trim, and can be switched off."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import xarray as xr

import xrecon  # noqa: F401  (registers the accessor)
from xrecon import memory
from xrecon.testing import synthetic_cube


@pytest.fixture
def counting(monkeypatch):
    """Replace the C function by a counter (the lookup is cached in ``memory._state``)."""
    calls = []
    monkeypatch.setitem(memory._state, "fn", lambda pad: calls.append(pad) or 1)
    monkeypatch.delenv("XRECON_TRIM", raising=False)
    return calls


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=20, nx=18, bands=3, seed=4).isel(time=slice(0, 30)).chunk({"y": 7, "x": 9})


@pytest.mark.parametrize("method", ["linear", "whittaker", "neighbors"])
def test_trimming_changes_no_result(cube, method, monkeypatch):
    monkeypatch.setenv("XRECON_TRIM", "0")
    off = cube.recon.fill("10D", method=method).compute()
    monkeypatch.delenv("XRECON_TRIM")
    on = cube.recon.fill("10D", method=method).compute()
    xr.testing.assert_identical(on, off)


def test_trim_runs_after_every_block(cube, counting):
    out = cube.recon.fill("10D", method="linear")
    assert not counting  # lazy: nothing computed, nothing trimmed
    out.compute(scheduler="synchronous")
    n_blocks = len(cube.chunks["y"]) * len(cube.chunks["x"])
    assert len(counting) == n_blocks and set(counting) == {0}


def test_trim_after_each_region_write(cube, counting, tmp_path):
    from xrecon.io import write_zarr

    write_zarr(cube.recon.fill("10D", method="linear"), tmp_path / "out.zarr")
    n_blocks = len(cube.chunks["y"]) * len(cube.chunks["x"])
    assert len(counting) >= 2 * n_blocks  # each block, then each region it is written in


@pytest.mark.parametrize("value", ["0", "false", "off", " No "])
def test_switched_off(counting, monkeypatch, value):
    monkeypatch.setenv("XRECON_TRIM", value)
    assert memory.trim() is False and not counting
    monkeypatch.setenv("XRECON_TRIM", "1")
    assert memory.trim() is True and counting == [0]


def test_no_op_where_unavailable(monkeypatch, cube):
    """Without malloc_trim (macOS, Windows, musl) trim does nothing, says so, and fill works as ever."""
    monkeypatch.setitem(memory._state, "fn", None)
    assert memory.trim_available() is False and memory.trim() is False
    with memory.trimming():
        pass
    assert cube.isel(y=slice(0, 7), x=slice(0, 9)).recon.fill("10D", method="linear").optical.notnull().all()


def test_lookup_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory._lookup() is None


def test_a_failing_call_is_swallowed(monkeypatch):
    def boom(pad):
        raise OSError("no")

    monkeypatch.setitem(memory._state, "fn", boom)
    monkeypatch.delenv("XRECON_TRIM", raising=False)
    assert memory.trim() is False


def test_trimming_context_trims_on_error(counting):
    with pytest.raises(ValueError), memory.trimming():
        raise ValueError("x")
    assert counting == [0]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not memory.trim_available(), reason="no glibc malloc_trim here")
def test_glibc_gives_memory_back():
    """The real call: memory freed in the middle of the heap (pinned by small live arrays after each
    freed one, so glibc cannot shrink the heap's top) goes back to the system only through trim."""
    big = np.ones(30 * 2**20 // 8)
    del big  # glibc raises its mmap threshold: the 1 MiB arrays below come from the heap
    pins, bufs = [], []
    for _ in range(200):
        bufs.append(np.ones(2**20 // 8))
        pins.append(np.ones(16))
    del bufs
    before = _rss_mib()
    assert memory.trim() is True
    after = _rss_mib()
    assert after < before - 5, (before, after)
    assert len(pins) == 200
