"""The classical methods (temporal and spatio-temporal) on the real cubes, by the shape of what is hidden.

Hides 10 % of the clear observations of the Romania (S2, 5 years, SCL clouds) and Belgium (S2 monthly,
10 bands) cubes as single pixel-dates, as real cloud shapes transplanted from other dates, and as 8 x 8
blocks, reconstructs them with each method at the optical dates and prints the pooled RMSE per method
and gap shape, and each method's change against the best temporal method. Data through
``XRECON_TEST_DATA`` (default ``../shared``); the networks are compared in benchmarks/train_*.py.

Run: ``python benchmarks/realdata_gaps.py [--holdout 0.1] [--seed 0] [--radius r] [--max-radius R] [--min-neighbors K]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import xarray as xr

import xrecon  # noqa: F401  (registers the accessor)
from xrecon.cube import from_bands
from xrecon.masks import scl_clear

DATA = Path(os.environ.get("XRECON_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared")) / "data"
TEMPORAL = ["linear", "harmonic", "whittaker"]
METHODS = [*TEMPORAL, "neighbors"]
GAPS = ["pixels", "clouds", 8]


def cubes() -> dict[str, tuple[xr.Dataset, str | None]]:
    out = {}
    path = DATA / "romania_s2_10m.nc"
    if path.exists():
        raw = xr.open_dataset(path, chunks={})
        cube = from_bands(raw, ["B2", "B3", "B4", "B8"], mask=scl_clear(raw.SCL), scale=1e-4)
        out["romania"] = (cube.chunk({"y": 50, "x": 50}), "clear")
    path = DATA / "belgium_s1_s2_monthly.nc"
    if path.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from train_belgium import load_cube

        out["belgium"] = (load_cube().chunk({"y": 50, "x": 50}), None)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--radius", type=int, default=None, help="neighbors' radius (default: its own)")
    p.add_argument("--max-radius", type=int, default=None, help="neighbors' max_radius (default: its own)")
    p.add_argument("--min-neighbors", type=int, default=None, help="neighbors' min_neighbors (default: its own)")
    args = p.parse_args()
    nb = {k: v for k, v in (("radius", args.radius), ("max_radius", args.max_radius),
                            ("min_neighbors", args.min_neighbors)) if v is not None}
    found = cubes()
    if not found:
        raise SystemExit(f"no cube found in {DATA} (set XRECON_TEST_DATA)")
    rows = []
    for name, (cube, mask) in found.items():
        for gaps in GAPS:
            t0 = time.perf_counter()
            table = cube.recon.evaluate(METHODS, holdout=args.holdout, seed=args.seed, mask=mask, gaps=gaps,
                                        options={"neighbors": nb})
            pooled = table[table["band"] == "all"].set_index("method")
            best = pooled.loc[TEMPORAL, "rmse"].min()
            for method in METHODS:
                rmse = pooled.loc[method, "rmse"]
                rows.append({"cube": name, "gaps": gaps, "method": method, "n": int(pooled.loc[method, "n"]),
                             "rmse": rmse, "vs best temporal": f"{rmse / best - 1:+.1%}"})
            print(f"{name}, gaps={gaps}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(pd.DataFrame(rows).round(5).to_string(index=False))


if __name__ == "__main__":
    main()
