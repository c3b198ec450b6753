"""Train AnytimeFormer on real Sentinel-2 (Romania, 5 years, real SCL clouds) and compare it with the
classical methods on hidden clear observations of a spatially held-out block.

The cube is 100 x 100 pixels. AnytimeFormer trains on the left ``--train-columns`` columns (its own
validation blocks are held out inside them); every method is scored on the same hidden clear
observations (``--holdout`` of them, seeded) of the remaining columns, which training never read.

    XRECON_TEST_DATA=../shared .venv/bin/python benchmarks/train_romania.py            # the docs' run
    .venv/bin/python benchmarks/train_romania.py --steps 50 --out /tmp/ro.xrecon         # a quick look

Prints the training time and a table of RMSE / MAE / R2 per method (all bands pooled, reflectance
units) with the change of AnytimeFormer's RMSE against the best classical method.
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
from xrecon.cube import from_bands
from xrecon.masks import scl_clear
from xrecon.testing import hide_observations
from xrecon.training import train, training_files

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("XRECON_TEST_DATA", ROOT.parent / "shared")) / "data" / "romania_s2_10m.nc"
CLASSICAL = ["linear", "harmonic", "whittaker"]


def load_cube() -> xr.Dataset:
    raw = xr.open_dataset(DATA, chunks={})
    cube = from_bands(raw, ["B2", "B3", "B4", "B8"], mask=scl_clear(raw.SCL), scale=1e-4)
    return cube.load()  # 22 MB: in memory, so training reads no file


def pooled(table: pd.DataFrame) -> pd.DataFrame:
    rows = table[table.band == "all"].set_index("method")[["n", "rmse", "mae", "r2"]]
    best = rows.loc[[m for m in CLASSICAL if m in rows.index], "rmse"].min()
    rows["vs best classical"] = (rows["rmse"] / best - 1).map(lambda v: f"{100 * v:+.1f}%")
    return rows


def common_set(held: xr.Dataset, holdout: float, seed: int, ckpt: Path) -> pd.DataFrame:
    """RMSE on the hidden observations that every method reconstructs (``evaluate``'s hidden set).

    AnytimeFormer sees one calendar year at a time and gives NaN for a pixel-year without any other
    clear observation; the classical methods fill those from neighbouring years. Scoring all methods
    on the same observations removes that difference from the comparison.
    """
    hidden_cube, hidden = hide_observations(held, holdout, seed=seed, mask="clear")
    hidden = hidden.values
    errors = {}
    for method in [*CLASSICAL, "anytimeformer"]:
        out = hidden_cube.recon.fill(method=method, mask="clear",
                                     checkpoint=ckpt if method == "anytimeformer" else None)
        errors[method] = (out.optical.values - held.optical.values).transpose(0, 2, 3, 1)[hidden]  # (n, band)
    ok = np.all([np.isfinite(e).all(1) for e in errors.values()], axis=0)
    rows = {m: {"n": int(ok.sum()), "rmse": float(np.sqrt(np.mean(e[ok] ** 2))),
                "mae": float(np.mean(np.abs(e[ok])))} for m, e in errors.items()}
    table = pd.DataFrame(rows).T.astype({"n": int})
    best = table.loc[CLASSICAL, "rmse"].min()
    table["vs best classical"] = (table["rmse"] / best - 1).map(lambda v: f"{100 * v:+.1f}%")
    return table


def report(ckpt: Path, wall: float, batch_size: int) -> None:
    """Training time and validation scores, from the last checkpoint's provenance."""
    meta = xrecon.models.load(training_files(ckpt)[1], device="cpu").metadata["training"]
    print(f"trained {meta['steps']} steps x {batch_size} pixels on {meta['device']} with "
          f"{meta['torch_threads']} thread(s): {wall:.0f} s wall, {meta['train_seconds']:.0f} s training "
          f"(validation excluded), {meta['pixels'] / meta['train_seconds']:.0f} pixel-years/s; "
          f"validation loss {meta['best_val_loss']:.4f} best at step {meta['best_step']}; "
          f"log {training_files(ckpt)[2]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--preset", default="small", help="AnytimeFormer architecture preset")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--train-columns", type=int, default=70)
    p.add_argument("--holdout", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "xrecon-runs", "romania.xrecon"))
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--csv", default=None, help="also write the table here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cube = load_cube()
    area, held = cube.isel(x=slice(0, args.train_columns)), cube.isel(x=slice(args.train_columns, None))
    print(f"cube {dict(cube.sizes)}; training area {dict(area.sizes)}, held-out block {dict(held.sizes)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device or 'default'}")

    t0 = time.perf_counter()
    ckpt = train(area, args.out, preset=args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                 seed=args.seed, device=args.device, mask="clear", resume=args.resume, overwrite=not args.resume,
                 validation_interval=max(1, args.steps // 20), checkpoint_interval=max(1, args.steps // 10),
                 progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    report(ckpt, wall, args.batch_size)

    t0 = time.perf_counter()
    table = held.recon.evaluate([*CLASSICAL, "anytimeformer"], holdout=args.holdout, seed=args.seed,
                                checkpoint=ckpt, mask="clear")
    print(f"evaluated in {time.perf_counter() - t0:.0f} s\n")
    with pd.option_context("display.width", 160, "display.precision", 4):
        print(pooled(table).to_string())
        print()
        print(table[table.band != "all"].pivot(index="method", columns="band", values="rmse").to_string())
        print("\nthe same, on the hidden observations that every method reconstructs:")
        print(common_set(held, args.holdout, args.seed, ckpt).to_string())
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
