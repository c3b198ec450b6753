"""How many torch threads should training use on a small, shared CPU? Steps per second by threads and load.

Trains each network (AnytimeFormer "small" on pixel batches, RESTORE-DiT "tiny" on patch windows) for a
few steps on a small synthetic cube with 1, 2, ... torch threads (``train(threads=...)``), alone and
while ``--loads`` other processes keep cores busy (a busy loop each, as other jobs on a shared machine
would), and prints the training seconds per step (``train_seconds`` of the provenance: validation and
set-up excluded) as the median of ``--repeat`` interleaved runs, and each thread count's rate as a ratio
to one thread under the same load. ``xrecon.runtime.default_threads()`` (what ``train`` uses when not
told) is printed beside it.

    .venv/bin/python benchmarks/train_threads.py                       # loads 0, 1, 2 on this machine
    .venv/bin/python benchmarks/train_threads.py --loads 0 3 --threads 1 2 4 --repeat 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.models
from xrecon.runtime import default_threads
from xrecon.testing import synthetic_cube
from xrecon.training import train

NETWORKS = {
    "anytimeformer": dict(preset="small", batch_size=256),
    "restore-dit": dict(preset="tiny", batch_size=8),
}


def _spin(stop: mp.Event) -> None:
    while not stop.is_set():
        sum(range(10_000))


class Load:
    """``n`` processes, each keeping one core busy, for the duration of a ``with`` block."""

    def __init__(self, n: int) -> None:
        self.n, self.stop, self.procs = n, mp.Event(), []

    def __enter__(self) -> Load:
        self.procs = [mp.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(0.5 if self.n else 0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join()


def seconds_per_step(ds, network: str, threads: int, steps: int, tmp: Path) -> float:
    out = tmp / f"{network}-{threads}.xrecon"
    settings = dict(NETWORKS[network])
    best = train(ds, out, method=network, steps=steps, threads=threads, seed=0, device="cpu", overwrite=True,
                 progress=False, validation_interval=steps, checkpoint_interval=steps, warmup=1, **settings)
    meta = xrecon.models.load(best, device="cpu").metadata["training"]
    return meta["train_seconds"] / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--loads", nargs="+", type=int, default=[0, 1, 2], help="busy processes beside the run")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    ds = synthetic_cube(ny=64, nx=64, start="2019-01-01", end="2020-12-31", bands=4, sar=True, seed=0,
                        revisit_days=5, cloud_cover=0.5, field_size=8).load()
    print(f"cpus {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}), torch's default "
          f"{torch.get_num_threads()} threads, xrecon.runtime.default_threads() = {default_threads()}, "
          f"load average now {os.getloadavg()[0]:.2f}")
    print(f"{'network':<14} {'load':>4} {'threads':>7} {'s/step':>8} {'rate vs 1 thread':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for network in args.networks:
            seconds_per_step(ds, network, 1, 2, Path(tmp))  # warm-up: imports, allocator, kernels
            for load in args.loads:
                runs: dict[int, list[float]] = {t: [] for t in args.threads}
                with Load(load):
                    for _ in range(args.repeat):
                        for t in args.threads:
                            runs[t].append(seconds_per_step(ds, network, t, args.steps, Path(tmp)))
                one = statistics.median(runs[1]) if 1 in runs else None
                for t in args.threads:
                    med = statistics.median(runs[t])
                    ratio = f"{one / med:17.2f}" if one else f"{'':>17}"
                    print(f"{network:<14} {load:>4} {t:>7} {med:8.3f} {ratio}", flush=True)


if __name__ == "__main__":
    main()
