"""Does the training stream keep up? Pixels per second delivered vs consumed by a training step, on CPU.

A synthetic Sentinel-2 + Sentinel-1 cube (10 bands, one year, about 54 optical and 116 SAR dates,
``--size`` squared pixels in 64 x 64 chunks) is written to Zarr in a temporary folder and opened
lazily. Then, on one core each:

1. the stream: :class:`xrecon.training.PixelStream` reads it block by block, simulates 25 % gaps,
   shuffles through an 8192-sample buffer and collates batches of 256 pixels sharing their dates
   (read from Zarr, decompressed, filtered, copied, collated: everything a DataLoader worker does);
2. the consumer: a real training step of AnytimeFormer at the official size (d_model 128, 4 heads,
   2 encoder groups, low-rank SAR fusion) on those batches: standardize, forward at the observation
   days, the paper's loss, backward, AdamW step; once as in the paper's base training and once as
   its anytime training (365 daily queries and the total-variation term).

It prints pixels per second for each and the ratio stream / step; the goal is >= 10. Both run in
this process on one thread (``torch.set_num_threads(1)``), so the ratio is per core; absolute
numbers depend on the machine and on what else runs on it.

Run: ``python benchmarks/loader_throughput.py [--size 256] [--steps 12] [--quick]``
"""

from __future__ import annotations

import os

# One thread for every BLAS/OpenMP pool, set before numpy and torch are imported: per-core numbers.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import dask  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

from xrecon.testing import synthetic_cube  # noqa: E402
from xrecon.training import (  # noqa: E402
    GapConfig,
    PixelStream,
    compute_stats,
    pixel_loader,
    reconstruction_loss,
    standardize_batch,
    take_days,
)

GOAL = 10.0
BATCH = 256


def write_cube(folder: Path, size: int) -> xr.Dataset:
    ds = synthetic_cube(ny=size, nx=size, bands=10, revisit_days=6, sar_revisit_days=3, seed=0, chunks=64)
    ds = ds[["optical", "sar"]]
    path = folder / "cube.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr v3 notes about string coordinates
        ds.to_zarr(path, mode="w")
    return xr.open_zarr(path)


def time_stream(cube: xr.Dataset, epochs: int) -> tuple[float, int]:
    stream = PixelStream(cube, seed=0, batch_size=BATCH, buffer_size=8192, gaps=GapConfig(), min_obs=5)
    n = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        for batch in pixel_loader(stream):
            n += len(batch["y"])
    return n / (time.perf_counter() - start), n


def time_training(cube: xr.Dataset, steps: int, anytime: bool) -> tuple[float, str]:
    from xrecon.models.anytimeformer import AnytimeFormer, AnytimeFormerConfig

    stats = compute_stats(cube)
    stream = PixelStream(cube, seed=1, batch_size=BATCH, buffer_size=8192, gaps=GapConfig(), min_obs=5)
    batches = []
    for b in pixel_loader(stream):
        if len(b["y"]) == BATCH:
            batches.append(b)
        if len(batches) == steps + 2:
            break
    model = AnytimeFormer(AnytimeFormerConfig())  # the official architecture
    model.set_normalization(stats.optical_mean, stats.optical_std, stats.sar_mean, stats.sar_std)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    daily = torch.arange(1, 366, dtype=torch.float32)

    def step(batch: dict[str, torch.Tensor]) -> None:
        b = standardize_batch(batch, stats)
        doy, sar_doy = b["doy"][0], b["sar_doy"][0]  # shared by the batch (the stream groups by dates)
        if anytime:
            dense = model(b["optical"], doy, daily, b["sar"], sar_doy)  # (B, 365, C)
            pred = take_days(dense, 1, b["doy"])  # (B, T, C)
            terms = reconstruction_loss(pred, b["target"], b["hidden"], b["kept"], dense=dense)
        else:
            pred = model(b["optical"], doy, doy, b["sar"], sar_doy)  # (B, T, C)
            terms = reconstruction_loss(pred, b["target"], b["hidden"], b["kept"])
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()

    for b in batches[:2]:  # warm-up: allocator, autograd graph caches
        step(b)
    start = time.perf_counter()
    for b in batches[2:]:
        step(b)
    elapsed = time.perf_counter() - start
    shape = f"B={BATCH}, T={batches[0]['doy'].shape[1]}, Ts={batches[0]['sar_doy'].shape[1]}, C=10, S=2"
    return steps * BATCH / elapsed, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="cube side in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps (default 12)")
    parser.add_argument("--epochs", type=int, default=1, help="timed stream epochs (default 1)")
    parser.add_argument("--quick", action="store_true", help="128 x 128 pixels, 4 steps")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps = 128, 4
    torch.set_num_threads(1)
    dask.config.set(scheduler="synchronous")  # one core for the stream too

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cube = write_cube(Path(tmp), args.size)
        print(f"cube: {dict(cube.sizes)}, Zarr in {time.perf_counter() - t0:.1f} s")
        stream_rate, n = time_stream(cube, args.epochs)
        print(f"stream:               {stream_rate:10,.0f} pixels/s  ({n:,} pixels from Zarr, batches of {BATCH})")
        for anytime in (False, True):
            rate, shape = time_training(cube, args.steps, anytime)
            name = "anytime (365 queries + TV)" if anytime else "base (queries = obs. days)"
            print(f"train step, {name}: {rate:8,.0f} pixels/s  ({shape}, AnytimeFormer official size)")
            ratio = stream_rate / rate
            verdict = "meets" if ratio >= GOAL else "BELOW"
            print(f"  ratio stream / step: {ratio:6.1f}x  ({verdict} the >= {GOAL:.0f}x goal)")
    print("one thread each, measured in one run; the machine may be shared, so absolute numbers are noisy")


if __name__ == "__main__":
    main()
