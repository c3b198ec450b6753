"""Peak memory of ``ds.recon.fill`` as the cube's area grows: does it stay flat?

For area factors 1, 4 and 16 (``--size`` squared pixels, then twice and four times the side) a cube of
T = 60 dates x C = 4 bands, 40 % of the observations cloudy, in ``--chunk`` x ``--chunk`` spatial chunks
is written to a Zarr store in a temporary folder, lazily, one chunk at a time (``dask.array.map_blocks``
calling a generator seeded per chunk: ``xrecon.testing.synthetic_cube`` builds its whole scene in
memory, its peak growing with the area, which is what must not happen here). Then, for each size and
each method (linear, whittaker), a fresh subprocess opens the store with ``xr.open_zarr``, runs
``ds.recon.fill("5D", method=...)`` and writes the result with ``xrecon.io.write_zarr``, on dask's
threaded scheduler with ``--workers`` threads (BLAS pools at one thread each). It reports its peak
resident memory (``getrusage(RUSAGE_SELF).ru_maxrss``, checked against the kernel's VmHWM), its RSS
right after the imports, so that the fill's own increase shows, and the wall time of open + fill + write.
Each line is run ``--repeat`` times (interleaved): median peak, fastest wall time.

The table gives, per size and method: the peak RSS, its increase over the import baseline, the peak's
ratio to the 1x run of the same method, and pixel series per second. The goal is that the 16x peak is
within 1.3x of the 1x peak. Absolute figures depend on the machine, its libraries (the C allocator
above all: ``--mmap-threshold`` tells growth that glibc keeps from growth that xrecon or dask hold) and
what else runs on it; compare the ratios between lines of one run.

Run: ``.venv/bin/python benchmarks/fill_memory.py [--quick] [--size 256] [--chunk 128] [--workers 2]
[--repeat 3] [--mmap-threshold BYTES] [--no-trim]``

By default ``fill`` gives freed memory back to the system after each block and region write
(:mod:`xrecon.memory`, glibc's ``malloc_trim``); ``--no-trim`` runs the fills with ``XRECON_TRIM=0`` to
show what that changes.
"""

from __future__ import annotations

import os

# One thread for every BLAS/OpenMP pool, set before numpy is imported: the parallelism is dask's alone.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

# numpy, dask, xarray and xrecon are imported only in the subprocesses: Linux carries a process's
# ru_maxrss over fork and exec, so a parent that grew would set a floor under every child's peak.

T, C, CLOUDY = 60, 4, 0.4
SIZE, CHUNK, WORKERS, REPEAT = 256, 128, 2, 3
FACTORS = (1, 4, 16)  # area factors: sides size, 2 size, 4 size
METHODS = ("linear", "whittaker")
QUERY = "5D"  # a 5-day grid at midnight; the observations are at 10:30, so nothing passes through
GOAL = 1.3  # the 16x peak may be at most this many times the 1x peak
BANDS = ["B02", "B03", "B04", "B08"]
_MARK = "FILL_MEMORY_RESULT "


def rss_peak_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mib() -> float | None:
    """The same peak as the kernel keeps it for this address space (VmHWM), to check ru_maxrss; Linux only."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _block(seed: int, block_info: dict | None = None):
    """One (T, C, ny, nx) chunk of seasonal reflectance, NaN where cloudy, seeded by its position."""
    import numpy as np

    info = block_info[None]
    (y0, _), (x0, _) = info["array-location"][2:]
    _, _, ny, nx = info["chunk-shape"]
    rng = np.random.default_rng([seed, y0, x0])
    days = 5.0 * np.arange(T, dtype=np.float32)[:, None, None, None]
    phase = rng.uniform(0, 2 * np.pi, (1, 1, ny, nx)).astype(np.float32)
    base = rng.uniform(0.05, 0.3, (1, C, ny, nx)).astype(np.float32)
    values = base + np.float32(0.1) * np.sin(np.float32(2 * np.pi / 365.25) * days + phase)
    values += rng.normal(0, 0.01, values.shape).astype(np.float32)
    cloudy = rng.random((T, 1, ny, nx)) < CLOUDY
    np.copyto(values, np.float32(np.nan), where=cloudy)
    return values


def lazy_cube(side: int, chunk: int, seed: int = 0):
    """An optical-only cube following the conventions, as a dask graph: nothing is computed here."""
    import dask.array as da
    import numpy as np
    import pandas as pd
    import xarray as xr

    yx = tuple(min(chunk, side - s) for s in range(0, side, chunk))
    optical = da.map_blocks(_block, seed, chunks=((T,), (C,), yx, yx), dtype=np.float32,
                            meta=np.array((), np.float32))
    times = pd.date_range("2020-01-01 10:30", periods=T, freq="5D")
    coords = {"time": times, "band": BANDS, "y": 5_000_000.0 - 10.0 * (np.arange(side) + 0.5),
              "x": 600_000.0 + 10.0 * (np.arange(side) + 0.5)}
    attrs = {"long_name": "surface reflectance", "units": "1"}
    return xr.Dataset({"optical": (("time", "band", "y", "x"), optical, attrs)}, coords=coords)


def child_write(folder: str, sides: list[int], chunk: int, workers: int) -> dict:
    """Write the cubes chunk by chunk (in a subprocess, so the parent stays small)."""
    import dask

    with dask.config.set(scheduler="threads", num_workers=workers):
        for side in sides:
            lazy_cube(side, chunk).to_zarr(Path(folder) / f"cube_{side}.zarr", mode="w", zarr_format=2)
    return {"peak": rss_peak_mib(), "hwm": hwm_mib()}


def child_fill(path: str, method: str, out: str, workers: int) -> dict:
    """One measurement, in a process of its own: open, fill, write."""
    import dask
    import xarray as xr

    import xrecon  # noqa: F401  (registers the accessor)
    from xrecon.io import write_zarr

    baseline = rss_peak_mib()
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=workers):
        ds = xr.open_zarr(path)
        write_zarr(ds.recon.fill(QUERY, method=method), out)
    wall = time.perf_counter() - start
    pixels = ds.sizes["y"] * ds.sizes["x"]
    return {"baseline": baseline, "peak": rss_peak_mib(), "hwm": hwm_mib(), "wall": wall, "pixels": pixels}


def in_subprocess(*args: str, env: dict[str, str] | None = None) -> dict:
    """Run this script with the hidden ``--child`` arguments and return the figures it prints."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False,
                          env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if proc.returncode or not lines:
        raise RuntimeError(f"subprocess {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len(_MARK):])


def summary(runs: list[dict]) -> dict:
    """Median peak and baseline (memory: the typical run), fastest wall time (speed: the least disturbed)."""
    return {
        "baseline": statistics.median(r["baseline"] for r in runs),
        "peak": statistics.median(r["peak"] for r in runs),
        "peaks": [r["peak"] for r in runs],
        "hwm": None if any(r["hwm"] is None for r in runs) else statistics.median(r["hwm"] for r in runs),
        "wall": min(r["wall"] for r in runs),
        "pixels": runs[0]["pixels"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=SIZE, help="side of the 1x cube in pixels")
    parser.add_argument("--chunk", type=int, default=CHUNK, help="spatial chunk side in pixels")
    parser.add_argument("--workers", type=int, default=WORKERS, help="threads of dask's threaded scheduler")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="runs per line: median peak, fastest wall")
    parser.add_argument("--quick", action="store_true", help="a smaller run: --size 128 --chunk 64 --repeat 1")
    parser.add_argument("--mmap-threshold", type=int, metavar="BYTES",
                        help="diagnosis: run the fills with MALLOC_MMAP_THRESHOLD_=BYTES (glibc), which "
                        "fixes the threshold above which freed arrays go back to the system at once")
    parser.add_argument("--no-trim", action="store_true",
                        help="diagnosis: run the fills with XRECON_TRIM=0 (no malloc_trim after each block and "
                        "region write, as before xrecon.memory)")
    parser.add_argument("--child", choices=("write", "fill"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.chunk, args.repeat = 128, 64, 1
    sides = [args.size * math.isqrt(f) for f in FACTORS]
    if args.child:
        # zarr's notes about v3 string dtypes and consolidated metadata are not what this script measures
        warnings.filterwarnings("ignore", module="zarr")
        if args.child == "write":
            result = child_write(args.path, sides, args.chunk, args.workers)
        else:
            result = child_fill(args.path, args.method, args.out, args.workers)
        print(_MARK + json.dumps(result))
        return
    if args.size < 2 * args.chunk:
        print(f"note: a {args.size} px cube in {args.chunk} px chunks has fewer chunks than the 4 that keep "
              f"{args.workers} workers busy at 1x; the 1x peak is then not comparable")

    t0 = time.perf_counter()
    common = ["--size", str(args.size), "--chunk", str(args.chunk), "--workers", str(args.workers)]
    cube_mib = {s: T * C * s * s * 4 / 2**20 for s in sides}
    print(f"ds.recon.fill({QUERY!r}) from Zarr to Zarr: T = {T} dates x C = {C} bands, {CLOUDY:.0%} cloudy, "
          f"{args.chunk} x {args.chunk} px chunks, threaded scheduler with {args.workers} workers, "
          f"one fresh process per run, {args.repeat} run(s) per line"
          + ("" if args.mmap_threshold is None else f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}")
          + (", XRECON_TRIM=0" if args.no_trim else ""))
    env = dict(os.environ)
    env.pop("XRECON_TRIM", None)  # the default (trim) unless --no-trim
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    if args.no_trim:
        env["XRECON_TRIM"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        written = in_subprocess("--child", "write", "--path", tmp, *common)
        print(f"  cubes written lazily in {time.perf_counter() - t0:.0f} s by a process whose peak RSS was "
              f"{written['peak']:,.0f} MiB (the largest cube holds {cube_mib[sides[-1]]:,.0f} MiB of float32)")
        runs: dict[tuple[int, str], list[dict]] = {(side, m): [] for side in sides for m in METHODS}
        for _ in range(args.repeat):  # repeats interleaved, so that a busy moment spreads over all lines
            for (side, method), done in runs.items():
                out = folder / f"filled_{side}_{method}.zarr"
                done.append(in_subprocess("--child", "fill", "--path", str(folder / f"cube_{side}.zarr"),
                                          "--method", method, "--out", str(out), *common, env=env))
                shutil.rmtree(out, ignore_errors=True)  # free the disk for the next one
    results = {key: summary(done) for key, done in runs.items()}

    print(f"  {'size':>11s} {'method':<10s} {'pixels':>10s} {'cube MiB':>9s} {'peak RSS MiB':>13s} "
          f"{'increase':>9s} {'ratio to 1x':>12s} {'series/s':>10s} {'wall s':>7s}")
    for side in sides:
        for method in METHODS:
            r = results[side, method]
            ratio = r["peak"] / results[sides[0], method]["peak"]
            print(f"  {f'{side} x {side}':>11s} {method:<10s} {r['pixels']:>10,d} {cube_mib[side]:>9,.0f} "
                  f"{r['peak']:>13,.0f} {r['peak'] - r['baseline']:>+9,.0f} {ratio:>11.2f}x "
                  f"{r['pixels'] / r['wall']:>10,.0f} {r['wall']:>7.1f}")
    baselines = sorted(r["baseline"] for r in results.values())
    print(f"  import baseline RSS {baselines[0]:,.0f}-{baselines[-1]:,.0f} MiB; 'increase' is the peak over the "
          "same process's baseline; series/s counts open + fill + write")
    if args.repeat > 1:
        spread = max(max(r["peaks"]) - min(r["peaks"]) for r in results.values())
        print(f"  peaks are medians of {args.repeat} runs (largest spread within a line: {spread:,.0f} MiB), "
              "wall times the fastest")
    off = [k for k, r in results.items() if r["hwm"] is not None and abs(r["hwm"] - r["peak"]) > 0.05 * r["peak"]]
    if off:
        print(f"  warning: ru_maxrss and VmHWM disagree by more than 5 % for {off}: the peaks are not the runs' own")
    verdicts = []
    for method in METHODS:
        ratio = results[sides[-1], method]["peak"] / results[sides[0], method]["peak"]
        verdicts.append(f"{method} {ratio:.2f}x " + ("(within)" if ratio <= GOAL else "(NOT within)"))
    met = all(results[sides[-1], m]["peak"] <= GOAL * results[sides[0], m]["peak"] for m in METHODS)
    print(f"Goal: the {FACTORS[-1]}x peak within {GOAL}x of the 1x peak: {'met' if met else 'NOT met'} "
          f"({', '.join(verdicts)}); whole run {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
