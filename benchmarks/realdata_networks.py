"""The networks against the classical methods on real cubes, with cloud-shaped gaps in a held-out area.

For each real cube of ``../shared/data`` (Romania: Sentinel-2, 5 years, SCL clouds, no SAR; Belgium:
monthly Sentinel-2 composites, 9 bands, with Sentinel-1), the networks are trained on the left
``--train-columns`` columns (AnytimeFormer "small" and RESTORE-DiT "small", each for ``--budget`` of
training on this machine; RESTORE-DiT with and without SAR where the cube has SAR) and every method is
scored on the same hidden clear observations of the remaining columns, which training never read:
``--holdout`` of them hidden as real cloud shapes (``gaps="clouds"``: other dates' clouds at the same
place) and as ``--block`` x ``--block`` squares. The table gives, per cube, gap shape and method, the
RMSE and MAE (reflectance, all bands pooled), the spectral angle (SAM, degrees, mean over hidden
spectra) and the change in RMSE against the best temporal method (linear, harmonic, whittaker);
for RESTORE-DiT with ``--samples`` > 1 also the Spearman correlation between ``optical_std`` (mean over
bands) and the absolute error (mean over bands) of the hidden spectra: does the spread rank the errors?
And, by gap length (``gap_days``: days to the nearest clear observation kept), the mean spread and mean
absolute error: does the spread grow where the gap is longer?

Checkpoints are kept in ``--out`` and reused by a later run (``--retrain`` trains again), so the table
can be reprinted cheaply.

    XRECON_TEST_DATA=../shared .venv/bin/python benchmarks/realdata_networks.py                  # ~1 h on 2 cores
    .venv/bin/python benchmarks/realdata_networks.py --budget 30s --cubes romania              # a quick look
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
import xarray as xr

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.models
from xrecon.holdout import hide_observations
from xrecon.training import GapConfig, train, training_files

sys.path.insert(0, str(Path(__file__).parent))
from realdata_gaps import TEMPORAL, cubes  # noqa: E402  (the same cubes, loaded the same way)

CLASSICAL = [*TEMPORAL, "neighbors"]


def networks(cube: xr.Dataset) -> dict[str, dict]:
    """Name -> training settings of each network trained on ``cube`` (``sar=None``: optical only)."""
    has_sar = "sar" in cube
    out = {"anytimeformer": {"method": "anytimeformer", "sar": "sar" if has_sar else None}}
    if has_sar:
        out["restore-dit"] = {"method": "restore-dit", "sar": "sar"}
        out["restore-dit (no SAR)"] = {"method": "restore-dit", "sar": None}
    else:
        out["restore-dit"] = {"method": "restore-dit", "sar": None}
    return out


def train_all(name: str, area: xr.Dataset, mask: str | None, args: argparse.Namespace) -> dict[str, Path]:
    """Train (or reuse) every network on the training area; returns name -> best checkpoint."""
    # Monthly composites have no clouds to transplant pixel by pixel (as benchmarks/train_belgium.py)
    pixel_gaps = GapConfig(mode={"random": 1, "runs": 1}, fraction=0.3) if mask is None else None
    out = {}
    for net, settings in networks(area).items():
        path = Path(args.out) / f"{name}-{net.replace(' ', '').replace('(', '-').replace(')', '')}.xrecon"
        if path.exists() and not args.retrain:
            print(f"{name} {net}: reusing {path}")
        else:
            extra = {"gaps": pixel_gaps} if settings["method"] == "anytimeformer" and pixel_gaps else {}
            t0 = time.perf_counter()
            train(area, path, method=settings["method"], preset="small", sar=settings["sar"],
                  time_budget=args.budget, seed=args.seed, threads=args.threads, device=args.device,
                  overwrite=True, progress=sys.stderr.isatty(), **extra)
            print(f"{name} {net}: trained in {time.perf_counter() - t0:.0f} s wall")
        meta = xrecon.models.load(training_files(path)[1], device="cpu").metadata["training"]
        print(f"  {meta['steps']} steps, {meta['train_seconds']:.0f} s of training, {meta['torch_threads']} "
              f"thread(s), {meta['device']}; best validation loss {meta['best_val_loss']:.4f} at step "
              f"{meta['best_step']}")
        out[net] = path
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = (pd.Series(v).rank().to_numpy() for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def score(block: xr.Dataset, hidden_cube: xr.Dataset, hidden: np.ndarray, checkpoints: dict[str, Path],
          samples: int, seed: int) -> pd.DataFrame:
    """One row per method: the scores on the hidden observations ``hidden`` (time, y, x) of ``block``."""
    truth = block.optical.transpose("time", "y", "x", "band").values[hidden]  # (n, band)
    rows, spreads = [], {}
    for method in [*CLASSICAL, *checkpoints]:
        ckpt = checkpoints.get(method)
        kind = "restore-dit" if method.startswith("restore-dit") else method
        options = {"n_samples": samples, "seed": seed} if kind == "restore-dit" else {}
        sar = networks(block)[method]["sar"] if ckpt else None
        cube = hidden_cube if sar or "sar" not in hidden_cube else hidden_cube.drop_vars("sar")
        t0 = time.perf_counter()
        out = cube.recon.fill(method=kind, checkpoint=ckpt, gap_days=True, **options).compute()
        seconds = time.perf_counter() - t0
        pred = out.optical.transpose("time", "y", "x", "band").values[hidden]
        err = pred - truth
        ok = np.isfinite(err).all(1)
        e, p, t = err[ok], pred[ok], truth[ok]
        cos = (p * t).sum(1) / np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1), 1e-12)
        row = {"method": method, "n": int(ok.sum()), "rmse": float(np.sqrt(np.mean(e ** 2))),
               "mae": float(np.mean(np.abs(e))), "sam_deg": float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean()),
               "fill_s": seconds}
        if "optical_std" in out and samples > 1:
            std = out.optical_std.transpose("time", "y", "x", "band").values[hidden][ok].mean(1)
            row["std_vs_abs_err"] = _spearman(std, np.abs(e).mean(1))
            days = out.gap_days.transpose("time", "y", "x").values[hidden][ok]
            bins = pd.cut(days, [0, 5, 10, 20, 40, np.inf])
            spreads[method] = (pd.DataFrame({"std": std, "abs_err": np.abs(e).mean(1), "gap days": bins})
                               .groupby("gap days", observed=True).agg(n=("std", "size"), std=("std", "mean"),
                                                                       abs_err=("abs_err", "mean")))
        rows.append(row)
    table = pd.DataFrame(rows).set_index("method")
    best = table.loc[TEMPORAL, "rmse"].min()
    table["vs best temporal"] = (table["rmse"] / best - 1).map(lambda v: f"{100 * v:+.1f}%")
    return table, spreads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cubes", nargs="+", default=["romania", "belgium"])
    p.add_argument("--budget", default="8min", help="training time of each network (train(time_budget=))")
    p.add_argument("--train-columns", type=int, default=70)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--block", type=int, default=8, help="side of the square gaps")
    p.add_argument("--samples", type=int, default=8, help="RESTORE-DiT samples per tile (n_samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training and filling")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "xrecon-runs", "networks"))
    p.add_argument("--retrain", action="store_true", help="train again even if a checkpoint is in --out")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    found = {k: v for k, v in cubes().items() if k in args.cubes}
    if not found:
        raise SystemExit("no cube found (set XRECON_TEST_DATA)")
    for name, (cube, mask) in found.items():
        cube = cube.load()
        area = cube.isel(x=slice(0, args.train_columns))
        block = cube.isel(x=slice(args.train_columns, None))
        print(f"\n== {name}: cube {dict(cube.sizes)}, training x < {args.train_columns}, held {dict(block.sizes)}",
              flush=True)
        checkpoints = train_all(name, area, mask, args)
        for gaps in ("clouds", args.block):
            hidden_cube, hidden = hide_observations(block, args.holdout, seed=args.seed, gaps=gaps, mask=mask)
            hidden = hidden.transpose("time", "y", "x").values
            print(f"\n{name}, gaps={gaps!r}: {int(hidden.sum())} hidden clear observations "
                  f"({hidden.sum() / max(int(block.optical.notnull().all('band').sum()), 1):.1%} of the observed)")
            with pd.option_context("display.width", 200, "display.precision", 4):
                table, spreads = score(block, hidden_cube, hidden, checkpoints, args.samples, args.seed)
                print(table.to_string(), flush=True)
                for method, by_gap in spreads.items():
                    print(f"{method}: mean optical_std and |error| by gap length\n{by_gap.to_string()}", flush=True)


if __name__ == "__main__":
    main()
