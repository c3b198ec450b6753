"""Fingerprints of short seeded training runs: a refactor of the trainer must leave them bit-identical.

Trains AnytimeFormer (with EMA, and a run stopped at step 6 and resumed to 12) and RESTORE-DiT, tiny,
on the CPU with one thread and ``torch.use_deterministic_algorithms(True)``, and prints the sha256 of
each checkpoint's weights (every tensor of the state dict, bytes and shapes) and of its CSV log
without the ``seconds`` column (wall time). Record before a change, compare after:

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/train_fingerprint.py --out before.json
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/train_fingerprint.py --check before.json

Takes about half a minute on one core.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.models
from xrecon.testing import synthetic_cube
from xrecon.training import train, training_files

AFT = dict(preset="small", d_model=32, d_inner=32, d_k=8, d_v=8, fusion_rank=2, dropout=0.1, batch_size=32,
           block=8, validation_fraction=0.25, validation_interval=4, log_interval=2, checkpoint_interval=4,
           lr=3e-3, warmup=2, progress=False, mask="clear", seed=0)
DIT = dict(method="restore-dit", preset="tiny", batch_size=4, mask="clear", lr=3e-3, warmup=2,
           validation_fraction=0.25, validation_interval=3, log_interval=1, checkpoint_interval=3,
           progress=False, seed=0, steps=6)


def weights_hash(path: Path) -> str:
    model = xrecon.models.load(path, device="cpu")
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def log_hash(path: Path) -> str:
    with open(path, newline="") as f:
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def fingerprint(out: Path) -> dict[str, str]:
    best, last, log = training_files(out)
    return {"best": weights_hash(best), "last": weights_hash(last), "log": log_hash(log)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the fingerprints to this JSON file")
    parser.add_argument("--check", help="compare with the fingerprints in this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ds = synthetic_cube(ny=16, nx=16, bands=3, seed=3, start="2020-01-01", end="2020-12-31")
    dit_cube = synthetic_cube(ny=32, nx=32, bands=4, seed=0)
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train(ds, tmp / "aft.xrecon", steps=8, **AFT)
        got["anytimeformer"] = fingerprint(tmp / "aft.xrecon")
        train(ds, tmp / "ema.xrecon", steps=8, ema=0.9, **AFT)
        got["anytimeformer-ema"] = fingerprint(tmp / "ema.xrecon")
        train(ds, tmp / "part.xrecon", steps=12, callback=lambda row: row["step"] >= 6, **AFT)
        train(ds, tmp / "part.xrecon", steps=12, resume=True, **AFT)
        got["anytimeformer-resumed"] = fingerprint(tmp / "part.xrecon")
        train(dit_cube, tmp / "dit.xrecon", **DIT)
        got["restore-dit"] = fingerprint(tmp / "dit.xrecon")
    print(json.dumps(got, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(got, indent=1) + "\n")
    if args.check:
        want = json.loads(Path(args.check).read_text())
        differ = sorted(f"{run}.{k}" for run in want for k in want[run] if got.get(run, {}).get(k) != want[run][k])
        print("bit-identical" if not differ else f"DIFFERENT: {differ}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
