"""Peers side by side: PyPOTS SAITS and BRITS against AnytimeFormer and the classical methods, on the
same held-out cube, the same hidden observations and the same CPU time budget.

Data: the Romania cube (Sentinel-2, 140 dates 2015-08 .. 2021-01, B2 B3 B4 B8, real SCL clouds;
``$XRECON_TEST_DATA/data/romania_s2_10m.nc``, default ``../shared``), loaded as in
benchmarks/realdata_gaps.py (``from_bands`` with ``scl_clear``, scale 1e-4). The networks train on the
left ``--train-columns`` (70) columns; everything is scored on the right 30 columns, which no training
read.

Hidden observations: for each gap shape (``gaps="pixels"`` and ``gaps="clouds"``)
:func:`xrecon.holdout.hide_observations` hides ``--holdout`` of the held block's clear observations
*once* (seeded); every method fills that one hidden cube and is scored on those hidden observations,
all bands pooled, reflectance units. A method sees only the kept (not hidden) clear observations of
the held block; the hidden truth is read only to score.

Budget: every network gets ``--budget`` seconds of training on the same CPU with the same torch
threads (``--threads``, default 1). AnytimeFormer: ``xrecon.training.train(..., time_budget=budget)``
(it measures its step rate and plans steps, validations and checkpoints to fit). PyPOTS has no time
budget, so it is trained in *rounds*: each round is one ``fit(epochs=1)`` on the next slice of a
seeded shuffle of the training samples (a new shuffle when the set is used up; the model, its Adam
state and the weights carry over between rounds) followed by PyPOTS's validation. A first short round
(4 batches) measures the time of a round; later rounds are sized to about a tenth of the budget, and
training stops before a round that would end past the budget. The weights with the best validation
loss over all rounds are kept (PyPOTS's own ``model_saving_strategy="best"`` rule, across rounds).
The printed "train s" is the wall time of each network's training (validation included); prediction
time is printed apart.

PyPOTS samples (it works on fixed-length sequences ``(n_samples, n_steps, n_features)``):

- one sample per pixel and calendar year, like AnytimeFormer's calendar-year windows;
- a fixed time grid of ``--grid-days`` (5) days from each 1 January: step ``(day_of_year - 1) // 5``,
  74 steps (a leap year's day 366 is step 73). The cube's dates are all a multiple of 5 days apart,
  so no two dates of a year share a step (the script checks; it would average them otherwise) and
  every hidden observation maps to exactly one imputed step. Steps without an acquisition and
  acquisitions that are not clear (or hidden) are NaN, which PyPOTS treats as missing; SAITS and BRITS
  have no timestamp input, so the grid is how they know when each observation was;
- the 4 bands are the features, standardised per band with the mean and standard deviation of the
  training area's clear observations (imputations are mapped back with the same numbers);
- training: the training area's pixel-years with at least ``--min-obs`` (5, AnytimeFormer's
  ``min_obs``) clear observations. Validation: the pixel-years of a 25 x 25 block of the training area
  (rows 0-24, columns 0-24; not trained on), with ``--val-fraction`` (0.2) of their clear observations
  hidden (whole observations, all bands), at most ``--val-samples`` of them. SAITS trains with its own
  default masked-imputation task (MCAR on observed values, PyPOTS's default); BRITS on its own
  reconstruction loss;
- held block: every pixel-year is imputed from its kept observations and the imputation read back at
  the cube's dates. A pixel-year without any kept clear observation gets nothing from a network; there
  SAITS and BRITS take the harmonic fill of the pixel's whole series, which is AnytimeFormer's own
  rule (``fallback="harmonic"``), so all three networks fall back the same way (the count is printed).

Sizes: AnytimeFormer ``--preset small`` (d_model 64, 2 blocks); SAITS 2 layers, d_model 64, 4 heads,
d_k = d_v = 16, d_ffn 128, dropout 0.1; BRITS hidden size 64; batch ``--batch-size`` (256) and Adam
lr 1e-3 for all three. Needs the optional ``peers`` extra (``pip install -e '.[peers]'``, i.e. pypots).

    XRECON_TEST_DATA=../shared OMP_NUM_THREADS=1 python benchmarks/peers.py --budget 180
    python benchmarks/peers.py --budget 20 --methods linear,saits   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from xrecon.holdout import hide_observations
from xrecon.masks import scl_clear

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("XRECON_TEST_DATA", ROOT.parent / "shared")) / "data" / "romania_s2_10m.nc"
CLASSICAL = ["linear", "harmonic", "whittaker"]
SPATIAL = ["neighbors"]
NETWORKS = ["anytimeformer", "saits", "brits"]
PYPOTS = ["saits", "brits"]
GAPS = ["pixels", "clouds"]
VAL_BLOCK = (slice(0, 25), slice(0, 25))  # (y, x) of the training area: PyPOTS's validation pixels

SAW = {
    "linear": "each held pixel's own kept clear series (all years); no training",
    "harmonic": "each held pixel's own kept clear series (all years); no training",
    "whittaker": "each held pixel's own kept clear series (all years); no training",
    "neighbors": "the held block's kept clear observations (space and time); no training",
    "anytimeformer": "trained on the left columns; fills from one calendar year of a pixel's kept "
                     "observations (harmonic where that year has none)",
    "saits": "trained on the left columns' pixel-years (5-day grid); fills one pixel-year at a time "
             "(harmonic where that year has none)",
    "brits": "trained on the left columns' pixel-years (5-day grid); fills one pixel-year at a time "
             "(harmonic where that year has none)",
}


def load_cube() -> xr.Dataset:
    raw = xr.open_dataset(DATA, chunks={})
    cube = from_bands(raw, ["B2", "B3", "B4", "B8"], mask=scl_clear(raw.SCL), scale=1e-4)
    return cube.load()  # 22 MB: in memory


# --- PyPOTS samples: one pixel-year on a fixed grid of days ------------------------------------------


class YearGrid:
    """The cube's dates on a grid of ``days`` from each 1 January: (year, step) of each date."""

    def __init__(self, times: np.ndarray, days: int):
        t = pd.DatetimeIndex(times)
        self.years = np.unique(t.year)
        self.year_of = np.searchsorted(self.years, t.year)  # (T,) index into years
        self.step_of = ((t.day_of_year - 1) // days).to_numpy()  # (T,)
        self.n_steps = (366 - 1) // days + 1
        key = self.year_of * self.n_steps + self.step_of
        self.collisions = len(key) - len(np.unique(key))

    def samples(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(T, C, Y, X) values and (T, Y, X) validity -> (Y*X, n_years, n_steps, C), NaN where not valid
        (dates sharing a step are averaged)."""
        T, C, Y, X = values.shape
        v = np.where(valid[:, None], values, np.nan).astype(np.float64).transpose(2, 3, 0, 1).reshape(Y * X, T, C)
        total = np.zeros((Y * X, len(self.years), self.n_steps, C))
        count = np.zeros((Y * X, len(self.years), self.n_steps, 1))
        ok = np.isfinite(v).all(-1, keepdims=True)
        np.add.at(total, (slice(None), self.year_of, self.step_of), np.where(ok, v, 0.0))
        np.add.at(count, (slice(None), self.year_of, self.step_of), ok.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, np.nan).astype(np.float32)

    def at_dates(self, samples: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """(Y*X, n_years, n_steps, C) -> (T, C, Y, X): each date read at its (year, step)."""
        Y, X = shape
        out = samples[:, self.year_of, self.step_of]  # (Y*X, T, C)
        return out.reshape(Y, X, *out.shape[1:]).transpose(2, 3, 0, 1)


def train_pypots(name: str, train_x: np.ndarray, val: dict, *, budget: float, batch_size: int, seed: int,
                 n_steps: int, n_features: int) -> tuple[object, dict]:
    """Train SAITS or BRITS for about ``budget`` seconds, in rounds of one PyPOTS epoch on a slice of
    the shuffled training set; returns the model (best validation weights) and what happened."""
    with contextlib.redirect_stdout(sys.stderr):  # pypots prints a banner on import
        from pypots.imputation import BRITS, SAITS
        from pypots.optim import Adam
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (PyPOTS's training masks (pygrinder.mcar) draw from the global RNG)
    common = dict(batch_size=batch_size, epochs=1, patience=None, optimizer=Adam(lr=1e-3), device="cpu",
                  saving_path=None, model_saving_strategy=None, verbose=False)
    t0 = time.perf_counter()
    if name == "saits":
        model = SAITS(n_steps=n_steps, n_features=n_features, n_layers=2, d_model=64, n_heads=4, d_k=16,
                      d_v=16, d_ffn=128, dropout=0.1, attn_dropout=0.1, **common)
    else:
        model = BRITS(n_steps=n_steps, n_features=n_features, rnn_hidden_size=64, **common)
    n = len(train_x)
    rng = np.random.default_rng(seed)
    order, pos, passes = rng.permutation(n), 0, 0
    chunk = min(n, 4 * batch_size)  # the probe round
    best, best_state, rounds, seen, last = np.inf, None, 0, 0, None
    while True:
        if pos + chunk > n:
            order, pos, passes = rng.permutation(n), 0, passes + 1
        idx = np.sort(order[pos:pos + chunk])
        pos += chunk
        ts = time.perf_counter()
        model.fit({"X": train_x[idx]}, val)
        last = time.perf_counter() - ts
        rounds, seen = rounds + 1, seen + len(idx)
        if model.best_loss < best:
            best, best_state = float(model.best_loss), copy.deepcopy(model.model.state_dict())
        elapsed = time.perf_counter() - t0
        if rounds == 1:  # size the rounds to about a tenth of the budget, whole batches
            per_sample = last / len(idx)
            chunk = int(np.clip((budget / 10) / per_sample // batch_size * batch_size, batch_size, n))
            last = last * chunk / len(idx)  # the predicted length of the next round
        if elapsed + last > budget:
            break
    model.model.load_state_dict(best_state)
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.model.parameters())
    return model, {"seconds": seconds, "rounds": rounds, "samples": seen, "epochs": seen / n, "best_val": best,
                   "params": params}


def pypots_fill(model: object, grid: YearGrid, values: np.ndarray, kept: np.ndarray, stats: tuple,
                fallback: np.ndarray) -> tuple[np.ndarray, int]:
    """Impute every pixel-year of a (T, C, Y, X) cube from its kept observations -> (T, C, Y, X) at the
    cube's dates, ``fallback`` where a pixel-year has no kept observation; and the number of such
    pixel-years."""
    mean, std = stats
    Y, X = values.shape[2:]
    x = grid.samples(values, kept)  # (P, years, steps, C)
    P, n_years, n_steps, C = x.shape
    flat = ((x - mean) / std).reshape(P * n_years, n_steps, C)
    has = np.isfinite(flat).all(-1).any(-1)  # pixel-years with at least one kept observation
    imp = np.full(flat.shape, np.nan, np.float32)
    imp[has] = model.predict({"X": flat[has]})["imputation"]
    imp = imp.reshape(P, n_years, n_steps, C) * std + mean
    out = grid.at_dates(imp, (Y, X))
    out = np.where(np.isnan(out), fallback, out)
    return out.astype(np.float32), int((~has).sum())


# --- the benchmark -------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=180.0, help="training seconds per network")
    p.add_argument("--methods", default=",".join([*CLASSICAL, *SPATIAL, *NETWORKS]))
    p.add_argument("--threads", type=int, default=1, help="torch threads, for every network")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--preset", default="small", help="AnytimeFormer architecture preset")
    p.add_argument("--train-columns", type=int, default=70)
    p.add_argument("--holdout", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid-days", type=int, default=5, help="PyPOTS time grid, days")
    p.add_argument("--min-obs", type=int, default=5, help="PyPOTS training pixel-years: at least this many clear")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--val-samples", type=int, default=512)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "xrecon-runs", "peers-anytimeformer.xrecon"))
    p.add_argument("--csv", default=None, help="also write the table here")
    args = p.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(SAW))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; expected some of {list(SAW)}")
    if not DATA.exists():
        raise SystemExit(f"no cube at {DATA} (set XRECON_TEST_DATA)")
    torch.set_num_threads(args.threads)

    cube = load_cube()
    area, held = cube.isel(x=slice(0, args.train_columns)), cube.isel(x=slice(args.train_columns, None))
    print(f"cube {dict(cube.sizes)}: training area x[0:{args.train_columns}] {dict(area.sizes)}, "
          f"scored block x[{args.train_columns}:] {dict(held.sizes)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, budget {args.budget:g} s per network, "
          f"batch {args.batch_size}, seed {args.seed}")

    train_info: dict[str, str] = {}
    train_seconds: dict[str, float] = {}
    ckpt = None
    if "anytimeformer" in methods:
        from xrecon.training import train, training_files

        t0 = time.perf_counter()
        ckpt = train(area, args.out, preset=args.preset, time_budget=args.budget, batch_size=args.batch_size,
                     lr=1e-3, seed=args.seed, device="cpu", threads=args.threads, mask="clear", overwrite=True,
                     progress=False)
        train_seconds["anytimeformer"] = time.perf_counter() - t0
        meta = xrecon.models.load(training_files(ckpt)[1], device="cpu").metadata["training"]
        train_info["anytimeformer"] = (f"{meta['steps']} steps x {args.batch_size} pixel-years "
                                       f"({meta['pixels']} pixel-years seen), best validation loss "
                                       f"{meta['best_val_loss']:.4f} at step {meta['best_step']}")

    grid = YearGrid(cube.time.values, args.grid_days)
    models = {}
    stats = None
    if any(m in methods for m in PYPOTS):
        values, clear = area.optical.values, area.clear.values
        obs = values.transpose(0, 2, 3, 1)[clear]  # (n, C) clear observations of the training area
        stats = (obs.mean(0).astype(np.float32), obs.std(0).astype(np.float32))
        samples = (grid.samples(values, clear) - stats[0]) / stats[1]  # (P, years, steps, C)
        in_val = np.zeros(area.optical.shape[2:], bool)
        in_val[VAL_BLOCK] = True
        in_val = in_val.ravel()
        n_obs = np.isfinite(samples).all(-1).sum(-1)  # (P, years)
        keep = n_obs >= args.min_obs
        train_x = samples[~in_val][keep[~in_val]]
        val_ori = samples[in_val][keep[in_val]]
        rng = np.random.default_rng(args.seed)
        val_ori = val_ori[np.sort(rng.permutation(len(val_ori))[: args.val_samples])]
        hide = np.isfinite(val_ori).all(-1) & (rng.random(val_ori.shape[:2]) < args.val_fraction)
        val = {"X": np.where(hide[..., None], np.nan, val_ori), "X_ori": val_ori}
        print(f"PyPOTS samples: pixel-years on a {args.grid_days}-day grid, {grid.n_steps} steps x "
              f"{samples.shape[-1]} bands, {len(grid.years)} years; {grid.collisions} dates sharing a step; "
              f"training {len(train_x)} pixel-years with >= {args.min_obs} clear, validation {len(val_ori)} "
              f"(block y0-24 x0-24, {args.val_fraction:.0%} of clear hidden)")
        for name in (m for m in PYPOTS if m in methods):
            model, info = train_pypots(name, train_x, val, budget=args.budget, batch_size=args.batch_size,
                                       seed=args.seed, n_steps=grid.n_steps, n_features=samples.shape[-1])
            models[name] = model
            train_seconds[name] = info["seconds"]
            train_info[name] = (f"{info['params']} parameters, {info['rounds']} rounds, {info['samples']} "
                                f"pixel-years seen ({info['epochs']:.2f} epochs), best validation loss "
                                f"{info['best_val']:.4f} (PyPOTS's MSE, standardised)")
    for name, text in train_info.items():
        print(f"{name}: trained {train_seconds[name]:.0f} s: {text}")

    truth = held.optical.values
    rows = []
    for gaps in GAPS:
        hidden_cube, hidden = hide_observations(held, args.holdout, seed=args.seed, mask="clear", gaps=gaps)
        hidden = hidden.values
        kept = hidden_cube.clear.values
        preds, seconds = {}, {}
        harmonic = None
        for method in methods:
            t0 = time.perf_counter()
            if method in PYPOTS:
                if harmonic is None:
                    harmonic = hidden_cube.recon.fill(method="harmonic", mask="clear").optical.values
                preds[method], n_fallback = pypots_fill(models[method], grid, hidden_cube.optical.values, kept,
                                                        stats, harmonic)
            else:
                out = hidden_cube.recon.fill(method=method, mask="clear",
                                             checkpoint=ckpt if method == "anytimeformer" else None)
                preds[method] = out.optical.values
            seconds[method] = time.perf_counter() - t0
        errors = {m: (pr - truth).transpose(0, 2, 3, 1)[hidden].astype(np.float64) for m, pr in preds.items()}
        ok = np.all([np.isfinite(e).all(1) for e in errors.values()], axis=0)
        print(f"gaps={gaps}: {int(hidden.sum())} hidden observations ({hidden.sum() / (hidden | kept).sum():.1%} "
              f"of the block's clear ones), {int(ok.sum())} reconstructed by every method"
              + (f"; {n_fallback} held pixel-years without a kept observation (harmonic fallback)"
                 if harmonic is not None else ""))
        best = min((np.sqrt(np.mean(errors[m][ok] ** 2)) for m in CLASSICAL if m in errors), default=np.nan)
        for method in methods:
            e = errors[method][ok]
            rmse = float(np.sqrt(np.mean(e**2)))
            rows.append({"gaps": gaps, "method": method, "n": int(ok.sum()), "rmse": rmse,
                         "mae": float(np.mean(np.abs(e))),
                         "vs best classical": f"{rmse / best - 1:+.1%}" if np.isfinite(best) else "",
                         "train s": f"{train_seconds[method]:.0f}" if method in train_seconds else "-",
                         "fill s": f"{seconds[method]:.1f}"})

    table = pd.DataFrame(rows)
    print("\nwhat each method saw (hidden observations are NaN / not clear in its input):")
    for method in methods:
        print(f"  {method:<13} {SAW[method]}")
    print(f"\nRMSE / MAE on the same hidden observations of x[{args.train_columns}:] (holdout {args.holdout:g}, "
          f"seed {args.seed}, all bands pooled, reflectance); train s: wall seconds of training, budget "
          f"{args.budget:g} s each")
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.to_string(index=False, formatters={"rmse": "{:.4f}".format, "mae": "{:.4f}".format}))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
