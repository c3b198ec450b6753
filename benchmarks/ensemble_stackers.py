"""Why the ensemble's blend is convex: a free linear stacker looks better on spatial halves and is worse on new dates.

The same hidden observations and members as ``benchmarks/ensemble.py`` (run it first: its networks in ``--out``
are reused, and ``fit_ensemble``'s leak check confirms they never saw the hidden observations). On the values
``fit_ensemble`` gathers, three combiners are cross-fitted two ways each and scored against the best single
member (RMSE, bands pooled):

- ``convex``: the class blend with its band and class levels (weights per gap class, positive, summing to one;
  without the gap-size level and the gate that ``fit_ensemble`` adds);
- ``affine``: per band, free weights on the members and an intercept (least squares);
- ``affine, all bands``: per band, free weights on every member's every band and an intercept.

Splits: ``space`` (the spatial checkerboard halves ``fit_ensemble`` reports), ``odd / even dates`` and
``date quarters`` (the cube's dates in four contiguous quarters, the first and third against the others).
Both spatial halves share every date, so what a stacker learns of one date's bias (an intercept, a band's
scale) carries over there and not to other dates.

    XRECON_TEST_DATA=../shared .venv/bin/python benchmarks/ensemble_stackers.py --out DIR   # DIR of ensemble.py
    XRECON_TEST_DATA=../shared .venv/bin/python benchmarks/ensemble_stackers.py --cubes romania --seed 1 \
        --out DIR/seed1                                      # a run of ensemble.py --seeds ... --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import xrecon.ensemble.fit as ensemble_fit
from xrecon.ensemble import blend

sys.path.insert(0, str(Path(__file__).parent))
import ensemble as bench  # noqa: E402  (the same fit, the same hold-out)
from realdata_gaps import cubes  # noqa: E402


def gathered(name: str, cube, mask, args) -> dict:
    """fit_ensemble's gathered hidden values (members, truth, classes), as benchmarks/ensemble.py fits them."""
    kept: dict = {}
    real = ensemble_fit._fit

    def keep(got, members, bands, classes, spread_member, **kw):
        kept.update(got=dict(got), classes=classes, split_block=kw["split_block"], names=[m.method for m in members])
        return real(got, members, bands, classes, spread_member, **kw)

    ensemble_fit._fit = keep
    try:
        bench.fit(name, cube, mask, args)
    finally:
        ensemble_fit._fit = real
    return kept


def convex(P, y, cls, n_class, fit, test):
    """(M, n, C) members, (n, C) truth: the class blend fitted on ``fit``, applied to ``test``, per band."""
    out = np.full((int(test.sum()), y.shape[1]), np.nan)
    for b in range(y.shape[1]):
        w, order, _ = blend.fit_band(P[:, fit, b], y[fit, b], cls[fit], n_class, shrinkage=100.0, min_class=50)
        out[:, b] = blend.blend(P[:, test, b], cls[test], w, order)
    return out


def affine(P, y, cls, n_class, fit, test, *, all_bands=False):
    """Free least-squares weights and an intercept per band (members' NaN filled as the blend fills them)."""
    n_band = y.shape[1]
    filled = np.empty_like(P)
    for b in range(n_band):
        _, order, _ = blend.fit_band(P[:, fit, b], y[fit, b], cls[fit], n_class, shrinkage=100.0, min_class=50)
        filled[:, :, b] = blend.filled(P[:, :, b], order[cls])
    out = np.full((int(test.sum()), n_band), np.nan)
    for b in range(n_band):
        X = filled.transpose(1, 0, 2).reshape(len(y), -1) if all_bands else filled[:, :, b].T
        X = np.column_stack([X, np.ones(len(y))])
        ok = fit & np.isfinite(X).all(axis=1) & np.isfinite(y[:, b])
        coef = np.linalg.lstsq(X[ok], y[ok, b], rcond=None)[0]
        out[:, b] = X[test] @ coef
    return out


def rmse(e: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean(e ** 2)))


def compare(kept: dict, n_time: int) -> None:
    got, classes = kept["got"], kept["classes"]
    P = np.stack([got[f"m{i}"] for i in range(len(kept["names"]))]).astype(np.float64)
    y = got["truth"].astype(np.float64)
    cls = classes.index(got["size"], got["days"], got.get("sar"))
    sb, t = kept["split_block"], np.asarray(got["t"])
    splits = {"space": ((got["y"] // sb) + (got["x"] // sb)) % 2, "odd / even dates": t % 2,
              "date quarters": (t * 4 // n_time) % 2}
    ok = np.isfinite(P).all(axis=0).all(axis=1) & np.isfinite(y).all(axis=1)  # scored where every member is
    best = min(rmse(P[m][ok] - y[ok]) for m in range(len(P)))
    combiners = {"convex": convex, "affine": affine,
                 "affine, all bands": lambda *a: affine(*a, all_bands=True)}
    print(f"  best single member {best:.4f}; change of each combiner against it (cross-fitted):")
    print(f"  {'':20s}" + "".join(f"{s:>18s}" for s in splits))
    for label, comb in combiners.items():
        cells = []
        for half in splits.values():
            if np.bincount(half, minlength=2).min() == 0:
                cells.append("-")
                continue
            pred = np.full(y.shape, np.nan)
            for h in (0, 1):
                pred[half == h] = comb(P, y, cls, classes.n, half != h, half == h)
            cells.append(f"{100 * (rmse(pred[ok] - y[ok]) / best - 1):+.1f} %")
        print(f"  {label:20s}" + "".join(f"{c:>18s}" for c in cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cubes", nargs="+", default=["romania", "belgium"])
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "xrecon-runs", "ensemble"),
                   help="benchmarks/ensemble.py's --out (its networks are reused)")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--budget", default="8min", help="only if the networks are not in --out yet")
    args = p.parse_args()
    args.threads, args.device, args.retrain = 1, None, False
    import torch

    torch.set_num_threads(1)
    for name, (cube, mask) in cubes().items():
        if name not in args.cubes:
            continue
        cube = cube.load().chunk({"y": 50, "x": 50})
        print(f"\n== {name}: cube {dict(cube.sizes)}", flush=True)
        compare(gathered(name, cube, mask, args), cube.sizes["time"])  # refits --out's ensemble file, as ensemble.py


if __name__ == "__main__":
    main()
