"""Hold-out RMSE of the classical methods on real Sentinel-2 (Romania, 5 years, real SCL clouds).

Hides a share of the clear observations (seeded, ``xrecon.testing.hide_observations``), reconstructs them
with each method at the optical dates and prints MAE / RMSE / R2 per band (and pooled, with the spectral
angle), optionally by gap length. The data is found through ``XRECON_TEST_DATA`` (default ``../shared``).

Run: ``python benchmarks/realdata_classical.py [--holdout 0.1] [--seed 0] [--by-gap]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import xarray as xr

import xrecon  # noqa: F401  (registers the accessor)
from xrecon.cube import from_bands
from xrecon.masks import scl_clear

DATA = Path(os.environ.get("XRECON_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--by-gap", action="store_true")
    args = p.parse_args()
    path = DATA / "data" / "romania_s2_10m.nc"
    if not path.exists():
        raise SystemExit(f"{path} not found (set XRECON_TEST_DATA)")
    raw = xr.open_dataset(path, chunks={})
    cube = from_bands(raw, ["B2", "B3", "B4", "B8"], mask=scl_clear(raw.SCL), scale=1e-4).chunk({"y": 50, "x": 50})
    t0 = time.perf_counter()
    table = cube.recon.evaluate(["linear", "harmonic", "whittaker"], holdout=args.holdout, seed=args.seed,
                                mask="clear", by_gap=args.by_gap)
    print(f"Romania {dict(cube.sizes)}: {args.holdout:.0%} of clear observations hidden (seed {args.seed}), "
          f"{time.perf_counter() - t0:.1f} s")
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
