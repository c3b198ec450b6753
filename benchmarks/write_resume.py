"""How long ``xrecon fill --resume`` takes after a run killed (SIGKILL) halfway, against a clean run.

Writes a synthetic cube, then runs the CLI in subprocesses:

1. a clean ``xrecon fill IN CLEAN``, timed;
2. ``xrecon fill IN OUT --resume``, killed with SIGKILL once half of the spatial chunks are recorded done;
3. ``xrecon fill IN OUT --resume`` again, timed: it computes only the chunks not yet written;
4. once more, timed: nothing is left to write, which measures the fixed cost of a run.

Prints both times, their ratio and whether OUT equals CLEAN byte for byte (every file of the store).

    .venv/bin/python benchmarks/write_resume.py --side 512 --chunk 64 --method whittaker --repeat 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _files(path: Path) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = Path(root) / name
            out[str(full.relative_to(path))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=192, help="cube width and height in pixels")
    parser.add_argument("--chunk", type=int, default=32, help="spatial chunk size")
    parser.add_argument("--method", default="whittaker")
    parser.add_argument("--workers", type=int, default=2, help="dask threads")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (the median is printed)")
    args = parser.parse_args()

    from xrecon.io import write_zarr
    from xrecon.testing import synthetic_cube

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cube = tmp / "in.zarr"
        write_zarr(synthetic_cube(ny=args.side, nx=args.side, bands=4, seed=0,
                                  chunks={"y": args.chunk, "x": args.chunk}), cube)
        n_regions = (-(-args.side // args.chunk)) ** 2

        def command(out: Path) -> list[str]:
            return [sys.executable, "-m", "xrecon.cli", "fill", str(cube), str(out), "--method", args.method,
                    "--workers", str(args.workers), "--quiet", "--resume"]

        def timed(out: Path) -> float:
            start = time.perf_counter()
            subprocess.run(command(out), check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - start

        rows = []
        for rep in range(args.repeat):
            clean_out, out = tmp / f"clean{rep}.zarr", tmp / f"out{rep}.zarr"
            clean = timed(clean_out)
            done = tmp / f".{out.name}.xrecon-partial" / "done"
            proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL)
            while proc.poll() is None:
                if done.is_dir() and len(os.listdir(done)) >= n_regions // 2:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.01)
            proc.wait()
            written = len(os.listdir(done))
            resumed = timed(out)
            same = _files(out) == _files(clean_out)
            fixed = timed(out)  # nothing left to write: the fixed cost (start, imports, graph)
            rows.append((clean, written, resumed, fixed, same))

    print(f"{args.side}x{args.side} px, {n_regions} chunks of {args.chunk}, method={args.method}, "
          f"{args.workers} threads; median of {args.repeat}")
    clean, written, resumed, fixed = (statistics.median(r[k] for r in rows) for k in range(4))
    print(f"clean run            {clean:7.2f} s")
    print(f"killed after {written:3.0f}/{n_regions} chunks; resumed run {resumed:7.2f} s "
          f"({resumed / clean:.2f} of the clean run; runs: {', '.join(f'{r[2] / r[0]:.2f}' for r in rows)})")
    print(f"fixed cost (a rerun with nothing left to write) {fixed:.2f} s; without it the resumed run took "
          f"{(resumed - fixed) / max(clean - fixed, 1e-9):.2f} of the clean run")
    print(f"resumed store equals the clean one byte for byte: {all(r[4] for r in rows)}")


if __name__ == "__main__":
    main()
