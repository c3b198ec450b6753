"""Training under a time budget, on the real clock: does ``train(time_budget=...)`` end within it?

Trains AnytimeFormer on a small synthetic cube (two years, 4 bands + SAR) with a time budget and prints
the budget against the wall time of the whole ``train`` call (data preparation, validation set, step-0
validation, the probe, training, validations, checkpoints), the steps the probe planned, and whether
the cosine schedule reached its floor. The tests check the plan with a fake clock; this script is the
check on a real one (the project measures time in benchmarks only).

    .venv/bin/python benchmarks/train_budget.py                       # 60 s, the "small" preset, 1 thread
    .venv/bin/python benchmarks/train_budget.py --budget 5min --preset official --threads 2
    .venv/bin/python benchmarks/train_budget.py --device cuda --budget 2min
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.models
from xrecon.testing import synthetic_cube
from xrecon.training import train, training_files
from xrecon.training.trainer import parse_time_budget


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="60s", help="time budget: seconds or e.g. 90s, 5min")
    p.add_argument("--preset", default="small")
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    p.add_argument("--size", type=int, default=64, help="cube width and height in pixels")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="checkpoint (default: a temporary folder)")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    budget = parse_time_budget(args.budget)

    ds = synthetic_cube(ny=args.size, nx=args.size, start="2019-01-01", end="2020-12-31", bands=4, sar=True,
                        seed=0, revisit_days=5, cloud_cover=0.5, field_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "budget.xrecon")
        t0 = time.perf_counter()
        best = train(ds, out, preset=args.preset, time_budget=budget, batch_size=args.batch_size, mask="clear",
                     device=args.device, overwrite=True, progress=False)
        wall = time.perf_counter() - t0
        meta = xrecon.models.load(best, device="cpu").metadata["training"]
        with open(training_files(best)[2], newline="") as f:
            last_lr = float(list(csv.DictReader(f))[-1]["lr"])
    plan, cfg = meta["time_budget"], meta["config"]
    floor = cfg["lr"] * cfg["min_lr_ratio"]
    print(f"preset {args.preset}, device {meta['device']}, {meta['torch_threads']} thread(s), "
          f"batch {cfg['batch_size']}, "
          f"cube {args.size}x{args.size}")
    print(f"budget {budget:.0f} s, elapsed {wall:.1f} s ({wall / budget:.0%} of the budget)")
    print(f"planned {plan['planned']} steps after a probe of {plan['probe_steps']}: {plan['step_seconds']:.3g} s a "
          f"step ({cfg['batch_size'] / plan['step_seconds']:.0f} pixel-years/s), "
          f"{plan['validation_seconds']:.3g} s a validation, {plan['checkpoint_seconds']:.3g} s a checkpoint; "
          f"corrections [step, steps]: {plan['replans'] or 'none'}")
    print(f"schedule {'completed' if abs(last_lr - floor) <= 1e-6 * floor else 'NOT completed'}: last lr "
          f"{last_lr:.3g} (floor {floor:.3g}); best validation loss {meta['best_val_loss']:.4f} at step "
          f"{meta['best_step']}, final {meta['val_loss']:.4f}")


if __name__ == "__main__":
    main()
