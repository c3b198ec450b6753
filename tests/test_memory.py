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


class FakeLibc:
    """Stands for glibc: records the calls."""

    def __init__(self):
        self.trims, self.opts = [], []

    def malloc_trim(self, pad):
        self.trims.append(pad)
        return 1

    def mallopt(self, param, value):
        self.opts.append((param, value))
        return 1


@pytest.fixture
def fake(monkeypatch):
    """A fake C library in place of the real one (the lookup is cached in ``memory._state``); every growth
    of the resident size counts (``TRIM_GROWTH = -1``), so that every block trims."""
    libc = FakeLibc()
    monkeypatch.setitem(memory._state, "libc", libc)
    monkeypatch.setitem(memory._state, "last", 0)
    monkeypatch.setattr(memory, "TRIM_GROWTH", -1)
    growing = iter(range(1 << 20, 1 << 40, 4096))
    monkeypatch.setattr(memory, "resident_bytes", lambda: next(growing))
    monkeypatch.delenv("XRECON_TRIM", raising=False)
    return libc


@pytest.fixture
def counting(fake):
    return fake.trims


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
    """Without glibc (macOS, Windows, musl) trim does nothing, says so, and fill works as ever."""
    monkeypatch.setitem(memory._state, "libc", None)
    monkeypatch.delitem(memory._state, "arenas", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert memory.trim_available() is False and memory.trim() is False
    assert memory.maybe_trim(growth=-1) is False and memory.prepare() is False
    with memory.trimming():
        pass
    assert cube.isel(y=slice(0, 7), x=slice(0, 9)).recon.fill("10D", method="linear").optical.notnull().all()


def test_the_real_library_here():
    """On glibc the lookup finds both functions; elsewhere it finds nothing (and nothing is called)."""
    import platform

    libc = memory._lookup()
    assert (libc is not None) == (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")


def test_lookup_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory._lookup() is None


def test_a_failing_call_is_swallowed(fake, monkeypatch):
    def boom(*args):
        raise OSError("no")

    monkeypatch.setattr(fake, "malloc_trim", boom)
    monkeypatch.setattr(fake, "mallopt", boom)
    monkeypatch.delitem(memory._state, "arenas", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert memory.trim() is False and memory.prepare() is False


def test_trims_only_when_memory_grew(fake, monkeypatch):
    rss = iter([1000, 1000 + 50, 1000 + 200, 900])
    monkeypatch.setattr(memory, "resident_bytes", lambda: next(rss))
    memory._state["last"] = None
    assert memory.maybe_trim(growth=100) is False  # the first call sets the reference
    assert memory.maybe_trim(growth=100) is False and not fake.trims  # +50: below the growth
    assert memory.maybe_trim(growth=100) is True and fake.trims == [0]  # +200: trimmed
    assert memory._state["last"] == 900  # the size right after the trim is the new reference


def test_prepare_limits_the_arenas_once(fake, monkeypatch):
    monkeypatch.delitem(memory._state, "arenas", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert memory.prepare() is True and memory.prepare() is True
    assert fake.opts == [(-8, 1)]  # M_ARENA_MAX = 1, set once


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "4"}, {"XRECON_TRIM": "0"}])
def test_prepare_leaves_the_users_settings(fake, monkeypatch, env):
    monkeypatch.delitem(memory._state, "arenas", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert memory.prepare() is False and not fake.opts


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
