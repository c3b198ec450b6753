"""Does SAR help? AnytimeFormer trained with and without Sentinel-1 on real monthly composites (Belgium).

The cube: 12 monthly Sentinel-2 composites (10 bands; December and January empty) and Sentinel-1
VV/VH, 100 x 100 pixels. Both networks train on the left ``--train-columns`` columns (same seed,
settings and validation blocks; only ``sar=`` differs). On the held-out columns, whole months of 2021
are hidden and reconstructed by every method:

* ``every 3rd month``: March, June and September hidden (6 of 9 clear months left);
* ``3-month gap``: May, June and July hidden (a cloudy early summer).

    XRECON_TEST_DATA=../shared .venv/bin/python benchmarks/train_belgium.py
    .venv/bin/python benchmarks/train_belgium.py --steps 50      # a quick look

Prints training times and, per scenario, RMSE / MAE (all bands pooled, reflectance) per method.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.models
from xrecon.cube import from_bands
from xrecon.training import GapConfig, train, training_files

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("XRECON_TEST_DATA", ROOT.parent / "shared")) / "data" / "belgium_s1_s2_monthly.nc"
BANDS = [f"S2-L2A-{b}" for b in ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")]
CLASSICAL = ["linear", "harmonic", "whittaker"]
SCENARIOS = {"every 3rd month": ("2021-03", "2021-06", "2021-09"), "3-month gap": ("2021-05", "2021-06", "2021-07")}


def load_cube() -> xr.Dataset:
    raw = xr.open_dataset(DATA, chunks={})
    cube = from_bands(raw, BANDS, scale=1e-4, nodata=65535, time_dim="t",
                      sar_bands=["S1-SIGMA0-VV", "S1-SIGMA0-VH"], sar_nodata=[65535, 0],
                      sar_decode=lambda dn: 20 * np.log10(dn) - 83)
    return cube.load()


def hide_months(cube: xr.Dataset, months: tuple[str, ...]) -> tuple[xr.Dataset, np.ndarray]:
    """The cube with every observation of ``months`` set to NaN, and the (time, y, x) mask of those hidden."""
    month = cube.time.dt.strftime("%Y-%m")
    gone = month.isin(list(months))
    hidden = (cube.optical.notnull().all("band") & gone).values
    held = cube.copy()
    held["optical"] = cube.optical.where(~gone)
    return held, hidden


def score(cube: xr.Dataset, held: xr.Dataset, hidden: np.ndarray, checkpoints: dict[str, Path]) -> pd.DataFrame:
    rows = []
    for method in [*CLASSICAL, *checkpoints]:
        ckpt = checkpoints.get(method)
        out = held.recon.fill(method="anytimeformer" if ckpt else method, checkpoint=ckpt)
        err = (out.optical.values - cube.optical.values).transpose(0, 2, 3, 1)[hidden]  # (n, band)
        ok = np.isfinite(err).all(1)
        rows.append({"method": method, "n": int(ok.sum()), "rmse": float(np.sqrt(np.mean(err[ok] ** 2))),
                     "mae": float(np.mean(np.abs(err[ok])))})
    table = pd.DataFrame(rows).set_index("method")
    best = table.loc[CLASSICAL, "rmse"].min()
    table["vs best classical"] = (table["rmse"] / best - 1).map(lambda v: f"{100 * v:+.1f}%")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--preset", default="small")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--train-columns", type=int, default=70)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "xrecon-runs"), help="folder for the runs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cube = load_cube()
    area, block = cube.isel(x=slice(0, args.train_columns)), cube.isel(x=slice(args.train_columns, None))
    print(f"cube {dict(cube.sizes)}; training area x < {args.train_columns}, held-out block {dict(block.sizes)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device or 'default'}")

    # Monthly composites have no clouds to transplant: hide random months and runs of months.
    gaps = GapConfig(mode={"random": 1, "runs": 1}, fraction=0.3)
    checkpoints = {}
    for name, sar in (("anytimeformer + SAR", "sar"), ("anytimeformer optical-only", None)):
        out = Path(args.out) / f"belgium-{'sar' if sar else 'optical'}.xrecon"
        t0 = time.perf_counter()
        checkpoints[name] = train(area, out, preset=args.preset, sar=sar, steps=args.steps, gaps=gaps,
                                  batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                                  overwrite=True, validation_interval=max(1, args.steps // 20),
                                  checkpoint_interval=max(1, args.steps // 5), progress=sys.stderr.isatty())
        meta = xrecon.models.load(training_files(out)[1], device="cpu").metadata["training"]
        print(f"{name}: {meta['steps']} steps x {args.batch_size} in {time.perf_counter() - t0:.0f} s wall, "
              f"{meta['train_seconds']:.0f} s training ({meta['pixels'] / meta['train_seconds']:.0f} pixel-years/s, "
              f"{meta['torch_threads']} thread(s), {meta['device']}); best validation loss "
              f"{meta['best_val_loss']:.4f} at step {meta['best_step']}")

    for scenario, months in SCENARIOS.items():
        held, hidden = hide_months(block, months)
        print(f"\n{scenario}: {', '.join(months)} hidden in the held-out block ({hidden.sum()} observations)")
        with pd.option_context("display.width", 160, "display.precision", 4):
            print(score(block, held, hidden, checkpoints).to_string())


if __name__ == "__main__":
    main()
