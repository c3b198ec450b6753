"""Fault tests: real kills (SIGKILL of a CLI fill, of a dask worker) and a store failing mid-write.

Cases covered elsewhere, not repeated here:

- a folder made at OUT during a run survives, and the write fails clearly ("appeared"):
  ``tests/test_write_safety.py::test_a_folder_made_at_out_during_the_run_survives``;
- two writers, the second fails with ``OutputLockedError`` naming the holder (pid, host):
  ``tests/test_write_safety.py::test_a_second_writer_is_refused_naming_the_holder``, and through the CLI
  (one-line message, exit code 2) ``tests/test_cli_io.py::test_cli_fill_resume_and_second_writer``;
- an exception, Ctrl-C or ENOSPC raised after a chunk was written, with other dask threads still
  writing, leaves no temporary folder: ``tests/test_write_safety.py::test_every_failure_leaves_no_temporary_folder``
  (the test below makes the chunk write itself fail, inside the store, through the CLI).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xrecon  # noqa: F401
from tests.conftest import store_files
from xrecon.cli import main
from xrecon.io import write_zarr
from xrecon.testing import synthetic_cube

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "in.zarr"
    write_zarr(synthetic_cube(ny=16, nx=16, bands=3, seed=3, chunks={"y": 4, "x": 4}), path)
    return path



# A CLI fill, slowed down after each chunk (the test seam ``xrecon.io._REGION_HOOK``) so that it can be
# killed surely mid-write: otherwise the command line itself, ``xrecon.cli.main``.
_SLOW_CLI = (
    "import sys, time; from xrecon import io; from xrecon.cli import main; "
    "io._REGION_HOOK = lambda i, j: time.sleep(0.25); sys.exit(main(sys.argv[1:]))"
)


def test_cli_fill_killed_mid_write_leaves_nothing_complete_and_resumes_to_the_same_bytes(cube_path, tmp_path):
    out, clean = tmp_path / "out.zarr", tmp_path / "clean.zarr"
    args = ["fill", str(cube_path), str(out), "--method", "harmonic", "--scheduler", "synchronous", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = tmp_path / ".out.zarr.xrecon-partial" / "done"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if done.is_dir() and len(list(done.iterdir())) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the fill ended before it could be killed: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    written = {p.name for p in done.iterdir()}
    assert 3 <= len(written) < 16
    # nothing at OUT, so nothing that opens as complete; the dead writer's lock and partial store stay
    assert not os.path.lexists(out)
    with pytest.raises(Exception):  # noqa: B017,PT011  (whatever zarr raises for a missing store)
        xr.open_zarr(out)
    assert (tmp_path / ".out.zarr.xrecon-lock").exists()

    # the installed command line (or ``python -m xrecon.cli``), resuming: the stale lock is taken over
    entry = Path(sys.executable).with_name("xrecon")
    command = [str(entry)] if entry.exists() else [sys.executable, "-m", "xrecon.cli"]
    resumed = subprocess.run([*command, *args[:-3], "--resume", "--quiet"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert main(["fill", str(cube_path), str(clean), "--method", "harmonic", "--quiet"]) == 0
    assert store_files(out) == store_files(clean)
    xr.testing.assert_identical(xr.open_zarr(out), xr.open_zarr(clean))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.zarr", "out.zarr"]


def test_a_store_failing_mid_write_leaves_no_temporary_folder(cube_path, tmp_path, monkeypatch, capsys):
    """The chunk write itself fails (a full disk) after k chunks: nothing left beside OUT, a one-line error."""
    to_zarr = xr.Dataset.to_zarr
    writes = []

    def full_disk_after(self, *args, **kwargs):
        if kwargs.get("region"):
            writes.append(1)
            if len(writes) > 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return to_zarr(self, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_zarr", full_disk_after)
    out = tmp_path / "out.zarr"
    for scheduler in ("synchronous", "threads"):
        writes.clear()
        code = main(["fill", str(cube_path), str(out), "--scheduler", scheduler, "--workers", "4", "--quiet"])
        assert code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("xrecon: error:") and "No space left on device" in err and "\n" not in err
        time.sleep(0.2)  # a late chunk write would recreate the folder
        assert list(tmp_path.iterdir()) == [], scheduler
    # with --resume the partial store is kept, and continued once there is room again
    writes.clear()
    assert main(["fill", str(cube_path), str(out), "--scheduler", "synchronous", "--resume", "--quiet"]) == 1
    capsys.readouterr()
    assert len(list((tmp_path / ".out.zarr.xrecon-partial" / "done").iterdir())) == 3
    monkeypatch.setattr(xr.Dataset, "to_zarr", to_zarr)
    assert main(["fill", str(cube_path), str(out), "--resume", "--quiet"]) == 0
    assert main(["fill", str(cube_path), str(tmp_path / "clean.zarr"), "--quiet"]) == 0
    assert store_files(out) == store_files(tmp_path / "clean.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.zarr", "out.zarr"]


def kill_once_linear(values, valid, t, tq, *, edges="hold", marker=""):
    """Linear interpolation, but the first call in a dask worker process kills that process (SIGKILL)."""
    try:
        import distributed

        distributed.get_worker()
        in_worker = True
    except (ImportError, ValueError):
        in_worker = False
    if in_worker and marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return xrecon.methods.fill_linear(values, valid, t, tq, edges=edges)


@pytest.fixture
def kill_once():
    xrecon.methods.register("test-kill-once", kill_once_linear)
    yield
    xrecon.methods.unregister("test-kill-once")


def test_a_dask_worker_killed_mid_fill_gives_the_same_result(cube_path, tmp_path, kill_once):
    distributed = pytest.importorskip("distributed")
    marker = tmp_path / "killed"

    def fill():
        return xr.open_zarr(cube_path).recon.fill("10D", method="test-kill-once", marker=str(marker))

    threads = tmp_path / "threads.zarr"
    write_zarr(fill(), threads)
    assert not marker.exists()  # not in a worker: nothing killed
    got = tmp_path / "distributed.zarr"
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster),
    ):
        write_zarr(fill(), got)
    killed = int(marker.read_text())  # one worker process did kill itself mid-fill
    assert killed != os.getpid()
    assert store_files(got) == store_files(threads)
    xr.testing.assert_identical(xr.open_zarr(got), xr.open_zarr(threads))
    assert np.isfinite(xr.open_zarr(got).optical.values).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distributed.zarr", "killed", "threads.zarr"]


def test_cli_train_threads_is_used_recorded_and_restored(tmp_path, capsys):
    """``xrecon train --threads N``: torch's threads for the run on the CPU, in the provenance, then restored.

    (Not a fault, but of the same issue: long training jobs on shared machines; ``threads=None`` is
    the next tests.)
    """
    import torch

    ds = synthetic_cube(ny=16, nx=16, bands=3, sar=True, seed=3, revisit_days=10, field_size=4, cloud_cover=0.5)
    path = tmp_path / "cube.zarr"
    ds.drop_vars(["truth", "landcover", "field"]).to_zarr(path)
    out = tmp_path / "m.xrecon"
    args = ["train", str(path), str(out), "--preset", "small", "--batch-size", "16", "--steps", "2", "--seed", "0",
            "--validation-fraction", "0.25", "--device", "cpu", "--quiet"]
    for option in ("d_model=16", "d_inner=16", "d_k=4", "d_v=4", "block=8", "warmup=1", "validation_interval=2",
                   "checkpoint_interval=2", "log_interval=1"):
        args += ["--option", option]
    assert main([*args, "--threads", "0"]) == 2
    assert "--threads 0" in capsys.readouterr().err and not out.exists()
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    assert main([*args, "--threads", str(want)]) == 0
    assert torch.get_num_threads() == before
    meta = xrecon.models.load(out, device="cpu").metadata["training"]
    assert meta["threads"] == want and meta["torch_threads"] == want
    with pytest.raises(xrecon.errors.XreconError, match="threads"):
        xrecon.training.train(ds, tmp_path / "n.xrecon", threads=True, steps=2, progress=False)


def test_default_threads_is_half_the_cpus_unless_the_environment_says(monkeypatch):
    import torch

    from xrecon import runtime

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    for cpus, want in ((1, 1), (2, 1), (3, 1), (8, 4), (64, 16)):
        monkeypatch.setattr(runtime, "usable_cpus", lambda cpus=cpus: cpus)
        assert runtime.default_threads() == want
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.default_threads() == 16  # the user's setting: torch's, untouched


def test_train_without_threads_uses_the_default_and_restores(monkeypatch, tmp_path):
    import torch

    from xrecon.training import trainer

    ds = synthetic_cube(ny=16, nx=16, bands=3, sar=False, seed=3, revisit_days=10, field_size=4)
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    monkeypatch.setattr(trainer, "default_threads", lambda: want)
    out = xrecon.training.train(ds, tmp_path / "m.xrecon", preset="small", steps=2, batch_size=16, device="cpu",
                                validation_fraction=0.25, block=8, warmup=1, d_model=16, d_inner=16, d_k=4, d_v=4,
                                progress=False)
    assert torch.get_num_threads() == before
    meta = xrecon.models.load(out, device="cpu").metadata["training"]
    assert meta["threads"] is None and meta["torch_threads"] == want
