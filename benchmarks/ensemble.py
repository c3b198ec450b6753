"""The ensemble on the real cubes: its RMSE against every member's, by gap class, its intervals' coverage, its cost.

For each real cube of ``../shared/data`` (Romania: Sentinel-2, 5 years, SCL clouds, no SAR; Belgium: monthly
Sentinel-2 composites with Sentinel-1), :func:`xrecon.ensemble.fit_ensemble` hides ``--holdout`` of the clear
observations as real cloud shapes, trains AnytimeFormer and RESTORE-DiT (``small`` presets, ``--budget`` each,
one thread) on the cube without them, fills with every member and fits the blend with two-fold cross-fitting
over spatial checkerboard halves (``split_block`` pixels). Every figure printed is measured on the hidden
observations of one half with the blend (and the intervals) fitted on the other half, and the networks never
saw any hidden observation:

- RMSE of every member and of the ensemble (reflectance, bands pooled), and the ensemble's change against the
  best single member;
- per gap class, the ensemble against that class's best single member (the worst class and every class more
  than 2 % worse, with its number of hidden observations and of the hidden dates they lie on: the values of
  one date share its weather, so a class seen on one or two dates is one or two situations);
- coverage and mean width of the 50 %, 90 % and 95 % intervals;
- the dates check: the same with halves of the hidden dates instead of space (both spatial halves share every
  date, so a blend can learn one date's weather there), where the hidden observations fall on several dates;
- with ``--cost``: the time of ``fill(method="ensemble")`` over the whole cube against the sum of its members'
  own fills (interleaved, ``--repeat`` times, medians; one torch thread).

Ensemble files and the networks are kept in ``--out``; a later run reuses the networks (``--retrain`` trains
them again) and fits the blend again. ``--seeds 0 1 2`` makes one such run per seed (each its own hold-out,
networks and blend, in ``--out/seed<S>``) and then pools them: on a cube with few dates one seed hides one
date, and a figure of one date is one weather situation.

    XRECON_TEST_DATA=../shared .venv/bin/python benchmarks/ensemble.py               # ~1 h on 2 cores
    .venv/bin/python benchmarks/ensemble.py --budget 30s --cubes romania --cost --retrain   # a quick look
    XRECON_TEST_DATA=../shared .venv/bin/python benchmarks/ensemble.py --cubes belgium --seeds 0 1 2 4 5
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

import xrecon  # noqa: F401  (registers the accessor)
from xrecon.ensemble import fit_ensemble, load_ensemble, members_folder
from xrecon.training import GapConfig

sys.path.insert(0, str(Path(__file__).parent))
from realdata_gaps import cubes  # noqa: E402  (the same cubes, loaded the same way)

CLASSICAL = ["linear", "harmonic", "whittaker", "neighbors"]
NETWORKS = ["anytimeformer", "restore-dit"]


def fit(name: str, cube, mask, args) -> Path:
    path = Path(args.out) / f"{name}.xrecon"
    # networks of an earlier run (trained on this cube with the same hold-out hidden) are reused unless
    # --retrain: fit_ensemble's leak check confirms they never saw the hidden observations
    folder = members_folder(path)
    kept = {m: folder / f"{m}.xrecon" for m in NETWORKS if (folder / f"{m}.xrecon").exists() and not args.retrain}
    if kept:
        print(f"{name}: reusing the networks {sorted(kept)} in {folder}")
    common = {"preset": "small", "time_budget": args.budget, "threads": args.threads, "device": args.device}
    train = {"anytimeformer": dict(common), "restore-dit": dict(common)}
    if mask is None:  # monthly composites: no clouds to transplant pixel by pixel (as benchmarks/train_belgium.py)
        train["anytimeformer"]["gaps"] = GapConfig(mode={"random": 1, "runs": 1}, fraction=0.3)
    t0 = time.perf_counter()
    fit_ensemble(cube, CLASSICAL + NETWORKS, out=path, gaps="clouds", holdout=args.holdout, seed=args.seed,
                 train={m: v for m, v in train.items() if m not in kept}, checkpoints=kept, strict=True,
                 options={"restore-dit": {"n_samples": args.samples, "seed": args.seed}}, mask=mask,
                 overwrite=True, progress=sys.stderr.isatty())
    print(f"{name}: fitted in {time.perf_counter() - t0:.0f} s wall")
    return path


def _dates(lo: int, hi: int | None = None) -> str:
    """'1 date', '3 dates', '1-5 dates'."""
    span = f"{lo}" if hi is None or hi == lo else f"{lo}-{hi}"
    return f"{span} date" + ("" if span == "1" else "s")


def report(name: str, path: Path) -> dict:
    """Print the ensemble's figures; return the pooled ones (n, RMSE per method, coverage and width per level)."""
    ens = load_ensemble(path)
    for m, t in ens.provenance.get("trained", {}).items():
        print(f"  {m}: best checkpoint at step {t['steps']}, {t['train_seconds']:.0f} s into training on {t['device']}")
    scores = ens.scores()
    pooled = "all" if (scores["band"] == "all").any() else scores["band"].iloc[0]
    overall = scores[(scores["band"] == pooled) & (scores["gap_class"] == "all")].set_index("method")
    print(f"  {ens.provenance['hidden']:,} hidden observations, {ens.provenance['used']:,} used, on "
          f"{_dates(overall['dates'].iloc[0])}")
    members = [m for m in overall.index if m != "ensemble"]
    best = overall.loc[members, "rmse"].idxmin()
    change = overall.loc["ensemble", "rmse"] / overall.loc[best, "rmse"] - 1
    with pd.option_context("display.width", 200, "display.precision", 4):
        print(overall[["n", "rmse", "mae"]].to_string())
    print(f"  ensemble vs best single member ({best}): {100 * change:+.1f} % RMSE")
    rows, per_class = [], {}
    for group, g in scores[(scores["band"] == pooled) & (scores["gap_class"] != "all")].groupby("gap_class"):
        g = g.set_index("method")
        per_class[group] = {"n": int(g.loc["ensemble", "n"]), "dates": int(g.loc["ensemble", "dates"]),
                            "rmse": g["rmse"].to_dict()}
        m = g.loc[members, "rmse"].idxmin()
        rows.append({"gap_class": group, "n": int(g.loc["ensemble", "n"]), "dates": int(g.loc["ensemble", "dates"]),
                     "best member": m,
                     "best rmse": g.loc[m, "rmse"], "ensemble rmse": g.loc["ensemble", "rmse"],
                     "change": g.loc["ensemble", "rmse"] / g.loc[m, "rmse"] - 1})
    by_class = pd.DataFrame(rows).sort_values("change", ascending=False)
    worse = by_class[by_class["change"] > 0.02]
    print(f"  worst class: {by_class.iloc[0]['gap_class']} {100 * by_class.iloc[0]['change']:+.1f} % "
          f"(n = {by_class.iloc[0]['n']}); classes more than 2 % worse than their best member: {len(worse)}, "
          f"holding {int(worse['n'].sum())} of {int(by_class['n'].sum())} values"
          + (f", on {_dates(worse['dates'].min(), worse['dates'].max())} each (every class: "
             f"{_dates(by_class['dates'].min(), by_class['dates'].max())})" if len(worse) else ""))
    with pd.option_context("display.width", 200, "display.precision", 4, "display.max_rows", 100):
        print(by_class.to_string(index=False))
    cov = ens.coverage()
    cov = cov[(cov["band"] == pooled) & cov["level"].isin([0.5, 0.9, 0.95])]
    print("  intervals (calibrated on one half, checked on the other):")
    print(cov[["level", "coverage", "width", "scale"]].to_string(index=False))
    print(f"  per band 90 % scale: {dict(zip(ens.bands, ens.scale, strict=True))}")
    summary = {"n": int(overall.loc["ensemble", "n"]), "rmse": overall["rmse"].to_dict(), "classes": per_class,
               "coverage": {r.level: (r.coverage, r.width) for r in cov.itertuples()}}
    dates = ens.scores(split="dates")
    if dates.empty:
        print("  dates check: none (the hidden observations lie on one date)")
        return summary
    dates = dates.set_index("method")
    d_best = dates.loc[members, "rmse"].idxmin()
    print(f"  dates check (blend fitted on every other hidden date, scored on the rest and back): ensemble "
          f"{dates.loc['ensemble', 'rmse']:.4f} vs {d_best} {dates.loc[d_best, 'rmse']:.4f}: "
          f"{100 * (dates.loc['ensemble', 'rmse'] / dates.loc[d_best, 'rmse'] - 1):+.1f} % RMSE")
    dcov = ens.coverage(split="dates")
    dcov = dcov[dcov["level"].isin([0.5, 0.9, 0.95])]
    print("  " + ", ".join(f"{r.level:.0%} intervals cover {r.coverage:.3f} (width {r.width:.3f})"
                           for r in dcov.itertuples()) + " on the other dates")
    return summary


def _pooled_rmse(parts: list[dict]) -> dict[str, float]:
    """[{"n", "rmse": {method: rmse}}] -> {method: the RMSE over all their values}."""
    n = np.array([p["n"] for p in parts], np.float64)
    return {m: float(np.sqrt(np.sum(n * np.array([p["rmse"][m] for p in parts]) ** 2) / n.sum()))
            for m in parts[0]["rmse"]}


def pooled(name: str, seeds: list[int], rows: list[dict]) -> None:
    """The runs of several seeds (each its own hold-out, networks and blend) as one: every hidden value once."""
    n = np.array([r["n"] for r in rows], np.float64)
    rmse = _pooled_rmse(rows)
    members = [m for m in rmse if m != "ensemble"]
    best = min(members, key=rmse.get)
    print(f"\n== {name}, seeds {seeds} pooled ({int(n.sum()):,} values): "
          + ", ".join(f"{m} {v:.4f}" for m, v in rmse.items()))
    print(f"  ensemble vs best single member ({best}): {100 * (rmse['ensemble'] / rmse[best] - 1):+.1f} % RMSE; "
          "per seed: " + ", ".join(f"{100 * (r['rmse']['ensemble'] / min(r['rmse'][m] for m in members) - 1):+.1f} %"
                                   for r in rows) + " against that seed's best member")
    for level in (0.5, 0.9, 0.95):
        c = np.sum(n * [r["coverage"][level][0] for r in rows]) / n.sum()
        w = np.sum(n * [r["coverage"][level][1] for r in rows]) / n.sum()
        print(f"  {level:.0%} intervals cover {c:.3f} (width {w:.3f})")
    worse, total = [], 0
    for group in sorted({g for r in rows for g in r["classes"]}):
        parts = [r["classes"][group] for r in rows if group in r["classes"]]
        got = _pooled_rmse(parts)
        size, dates = sum(p["n"] for p in parts), sum(p["dates"] for p in parts)
        total += size
        change = got["ensemble"] / min(got[m] for m in members) - 1
        if change > 0.02:
            worse.append((group, change, size, dates))
    print(f"  classes more than 2 % worse than their best member, pooled: {len(worse)}, holding "
          f"{sum(w[2] for w in worse)} of {total} values" + (": " if worse else "")
          + "; ".join(f"{g} {100 * c:+.1f} % (n = {k}, {_dates(d)} over the seeds)" for g, c, k, d in worse))


def cost(cube, mask, path: Path, repeat: int) -> None:
    ens = load_ensemble(path)
    times: dict[str, list[float]] = {"ensemble": []}
    for _ in range(repeat):
        for m in ens.members:
            t0 = time.perf_counter()
            cube.recon.fill(method=m.method, checkpoint=m.checkpoint, mask=mask or False, **m.options).compute()
            times.setdefault(m.method, []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cube.recon.fill(method="ensemble", checkpoint=path, mask=mask or False, interval=0.9).compute()
        times["ensemble"].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    members = sum(v for k, v in med.items() if k != "ensemble")
    print(f"  fill seconds (median of {repeat}): " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    print(f"  ensemble fill / sum of its members' fills: {med['ensemble'] / members:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cubes", nargs="+", default=["romania", "belgium"])
    p.add_argument("--budget", default="8min", help="training time of each network (train(time_budget=))")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--samples", type=int, default=8, help="RESTORE-DiT samples per tile (its spread)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="several runs, each with its own hold-out, networks and blend (in --out/seed<S>), then pooled")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training and filling")
    p.add_argument("--device", default=None)
    p.add_argument("--cost", action="store_true", help="also time the ensemble's fill against its members'")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "xrecon-runs", "ensemble"))
    p.add_argument("--retrain", action="store_true", help="train the networks again even if they are in --out")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    found = {k: v for k, v in cubes().items() if k in args.cubes}
    if not found:
        raise SystemExit("no cube found (set XRECON_TEST_DATA)")
    seeds = args.seeds or [args.seed]
    for name, (cube, mask) in found.items():
        cube = cube.load().chunk({"y": 50, "x": 50})
        rows = []
        for seed in seeds:
            run = argparse.Namespace(**{**vars(args), "seed": seed})
            if args.seeds:
                run.out = os.path.join(args.out, f"seed{seed}")
            print(f"\n== {name}: cube {dict(cube.sizes)}, seed {seed}", flush=True)
            path = fit(name, cube, mask, run)
            rows.append(report(name, path))
            if args.cost and seed == seeds[0]:
                cost(cube, mask, path, args.repeat)
            sys.stdout.flush()
        if len(rows) > 1:
            pooled(name, seeds, rows)


if __name__ == "__main__":
    main()
