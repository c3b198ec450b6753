"""AnytimeFormer inference throughput at the official shape, as a fraction of this machine's matmul rate.

Shape: T = 54 optical dates (about 60 % clear), Ts = 120 SAR dates, Tq = 54 query days, 10 optical and 2
SAR bands, the official architecture. Work is counted as 83.18 MFLOP per pixel, the official network's
arithmetic (xrecon's shares the date-only part between pixels and does less; the count stays fixed so
fractions compare with the official implementation's, about 0.15 on these CPUs, 455 pixels/s).

The fp32 matmul rate (square ``torch.mm``, same threads) is measured in the same run, interleaved with
the model runs, and every figure is the best of ``--repeat`` rounds: on a shared machine the best round
is the one least disturbed by other processes. A CPU-time based fraction is printed too; it is less
sensitive to other processes taking cores. Timings are end to end through ``predict_pixels`` (numpy in,
numpy out, normalization and batching included).

With the shared reference data present (``XRECON_TEST_DATA`` or ``../shared``) the official weights are
used and bf16/fp16 errors are measured against the official outputs; otherwise random weights of the
official shape are used and errors are measured against this run's fp32 output.

On a GPU (``--device cuda``) the rows are fp32, bf16 and fp16 autocast, each with its error against fp32 and
its fraction of the fp32 matmul rate and of its own dtype's (square ``torch.mm`` of 8192, same rounds).

Run: ``python benchmarks/anytimeformer_throughput.py [--device auto|cpu|cuda] [--pixels N] [--repeat R]
[--threads K] [--batch-size B] [--quick] [--no-fill]``
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from xrecon.models import anytimeformer as af

FLOP_PER_PIXEL = 83.18e6
T, TS, C, S = 54, 120, 10, 2
OFFICIAL_FRACTION = 0.15
GOAL = 0.45
REF = Path(os.environ.get("XRECON_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared"))
REF = REF / "reference" / "anytimeformer"


def inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Official-shape inputs: the reference file's when present (tiled to n pixels), else synthetic."""
    if (REF / "seq2seq_40pct.npz").exists():
        ref = np.load(REF / "seq2seq_40pct.npz")
        idx = np.arange(n) % ref["valid"].shape[0]
        optical = np.where(ref["valid"][idx, :, None], ref["refl_true"][idx], np.nan).astype(np.float32)
        return dict(optical=optical, valid=ref["valid"][idx], optical_doy=ref["dates_opt"], sar=ref["sar_db"][idx],
                    sar_doy=ref["dates_sar"], query_doy=ref["dates_query"], reference=ref["reconstructed"][idx])
    rng = np.random.default_rng(seed)
    doy = np.sort(rng.choice(np.arange(1, 366), T, replace=False)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    optical = (0.15 + 0.1 * np.sin(2 * np.pi * doy[None, :, None] / 365 + phase)
               + rng.normal(0, 0.01, (n, T, C))).astype(np.float32)
    valid = rng.random((n, T)) < 0.6
    optical[~valid] = np.nan
    sar_doy = np.sort(rng.choice(np.arange(1, 366), TS, replace=False)).astype(np.float32)
    sar = rng.normal(-15, 3, (n, TS, S)).astype(np.float32)
    return dict(optical=optical, valid=valid, optical_doy=doy, sar=sar, sar_doy=sar_doy, query_doy=doy,
                reference=None)


def model() -> tuple[af.AnytimeFormer, str]:
    ckpt = REF / "anytimeformer_germany_40pct.ckpt"
    if ckpt.exists() and (REF / "seq2seq_40pct.npz").exists():
        ref = np.load(REF / "seq2seq_40pct.npz")
        return af.from_official(ckpt, ref["X_mean"], ref["X_std"], ref["sar_mean"], ref["sar_std"], device="cpu"), \
            "official 40% weights"
    torch.manual_seed(0)
    m = af.AnytimeFormer(af.PRESETS["official"]).eval()
    m.set_normalization([0.1] * C, [0.05] * C, [-12.0, -18.0], [3.0, 3.5])
    return m, "random weights (reference data not found)"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_round(device: str, size: int = 1024, reps: int = 8,
                 dtype: torch.dtype = torch.float32) -> tuple[Callable[[], None], float]:
    """A round of square matrix products of ``dtype``, and its FLOP count."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(reps):
            a @ b

    return run, 2.0 * size**3 * reps


def measure(net: af.AnytimeFormer, data: dict, device: str, bs: int, repeat: int, sweep: bool,
            skip_textbook: bool = False) -> None:
    """Time matmul, the textbook form and predict_pixels (each precision) in interleaved rounds; print."""
    n = data["valid"].shape[0]
    precisions = ["fp32", "bf16"] + (["fp16"] if device == "cuda" else [])
    net.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if device == "cpu" and torch.get_num_threads() > 1:
        # the same, with the batches spread over single-threaded workers (predict_pixels(workers=...))
        precisions += [f"{p}, {torch.get_num_threads()} workers" for p in ("fp32", "bf16")]

    workers = torch.get_num_threads() if device == "cpu" and torch.get_num_threads() > 1 else None

    def predict(precision: str, batch: int = bs) -> np.ndarray:
        w = None
        if precision.endswith(" workers"):
            precision, w = precision.split(",")[0], workers
        return net.predict_pixels(data["optical"], data["valid"], data["optical_doy"], data["sar"],
                                  data["sar_doy"], data["query_doy"], batch_size=batch, device=device,
                                  precision=precision, workers=w)

    norm = net.normalization
    x = np.where(data["valid"][..., None], (data["optical"] - norm["optical_mean"]) / norm["optical_std"],
                 0.0).astype(np.float32)
    s = ((data["sar"] - norm["sar_mean"]) / norm["sar_std"]).astype(np.float32)
    days = [torch.from_numpy(np.asarray(data[k], np.float32)).to(device)
            for k in ("optical_doy", "query_doy", "sar_doy")]

    def textbook() -> None:
        # the same network in its per-pixel textbook form (like the official code: the time-align
        # attention and the decoder queries recomputed for every pixel, nothing folded)
        with torch.inference_mode():
            for i in range(0, n, 128):
                net.forward_reference(torch.from_numpy(x[i:i + 128]).to(device), days[0], days[1],
                                      torch.from_numpy(s[i:i + 128]).to(device), days[2]).cpu()

    outputs = {pr: predict(pr) for pr in precisions}  # also warms up
    if not skip_textbook:
        textbook()
    mm_size = 1024 if device == "cpu" else 8192
    mms = {p: matmul_round(device, mm_size, 8 if device == "cpu" else 20, DTYPES[p])
           for p in ("fp32", "bf16", "fp16") if any(k.split(",")[0] == p for k in precisions)}
    for run, _ in mms.values():
        run()
    keys = [*(["textbook"] if not skip_textbook else []), *precisions]
    rounds: dict[str, list[tuple[float, float]]] = {k: [] for k in [*[f"mm {p}" for p in mms], *keys]}
    for _ in range(repeat):
        for p, (run, _) in mms.items():
            rounds[f"mm {p}"].append(timed(run))
        for pr in precisions:
            rounds[pr].append(timed(lambda pr=pr: predict(pr)))
        if not skip_textbook:
            rounds["textbook"].append(timed(textbook))
    rate = {p: (f / min(w for w, _ in rounds[f"mm {p}"]), f / min(c for _, c in rounds[f"mm {p}"]))
            for p, (_, f) in mms.items()}
    mm_wall, mm_cpu = rate["fp32"]
    threads = f", {torch.get_num_threads()} thread(s)" if device == "cpu" else f" ({torch.cuda.get_device_name()})"
    rates = "; ".join(f"{p} matmul ({mm_size}^2) {w / 1e9:,.1f} GFLOP/s" for p, (w, _) in rate.items())
    print(f"\n[{device}{threads}] {n} pixels, batch size {bs}; {rates} "
          f"(fp32 {mm_cpu / 1e9:.0f} GFLOP per CPU-second), load average {os.getloadavg()[0]:.1f}")
    print(f"{'predict_pixels':24s}{'pixels/s':>10s}{'fraction':>10s}{'(cpu-time)':>12s}{'of own dtype':>13s}"
          f"{'max abs err':>13s}{'mean abs err':>14s}{'max vs fp32':>13s}{'mean vs fp32':>14s}")
    ref = data["reference"]
    for key in keys:
        wall = n / min(w for w, _ in rounds[key])
        cpu = n / min(c for _, c in rounds[key])
        label = "textbook form, fp32" if key == "textbook" else key
        p = key.split(",")[0] if key != "textbook" else "fp32"
        own = f"{wall * FLOP_PER_PIXEL / rate[p][0]:13.3f}"
        err = ""
        if key in outputs:
            e = np.abs(outputs[key] - (ref if ref is not None else outputs["fp32"]))
            f = np.abs(outputs[key] - outputs["fp32"])
            err = f"{e.max():13.2e}{e.mean():14.2e}{f.max():13.2e}{f.mean():14.2e}"
        print(f"{label:24s}{wall:10.0f}{wall * FLOP_PER_PIXEL / mm_wall:10.3f}"
              f"{cpu * FLOP_PER_PIXEL / mm_cpu:12.3f}{own}{err}")
    print("fraction: of the fp32 matmul rate (cpu-time: per CPU-second); of own dtype: of the row's dtype's "
          "matmul rate, measured in the same rounds")
    if device == "cpu":
        for key in [k for k in precisions if k.startswith("fp32")]:
            got = n / min(w for w, _ in rounds[key]) * FLOP_PER_PIXEL / mm_wall
            print(f"fp32 goal: fraction >= {GOAL} (official implementation ~{OFFICIAL_FRACTION}): "
                  f"{'met' if got >= GOAL else 'NOT met'} in this run by '{key}' ({got:.3f})")
    print("errors are reflectance (0-1 units) against "
          + ("the official outputs" if ref is not None else "this run's fp32 output") + ", and against this "
          "run's fp32 output (vs fp32)")
    if device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if sweep:
        print("batch-size sweep, fp32 (best of the rounds; fraction of the matmul rate above):")
        for b in (16, 32, 64, 128, 256, 1024) if device == "cpu" else (1024, 4096, 8192, 16384):
            best = min(timed(lambda b=b: predict("fp32", b))[0] for _ in range(max(2, repeat // 2)))
            print(f"  batch {b:6d}: {n / best:8.0f} pixels/s, fraction {n / best * FLOP_PER_PIXEL / mm_wall:.3f}")


def fill_vs_bare(net: af.AnytimeFormer, device: str, repeat: int, side: int = 64, chunk: int = 32) -> None:
    """End to end: ``ds.recon.fill`` on a Zarr cube against bare ``predict_pixels`` on the same pixels.

    A synthetic 10-band cube with SAR at about the official shape, one year, written to Zarr in
    ``chunk`` x ``chunk`` chunks; fill reads it, runs the network per chunk, passes observations through
    and assembles the result (dask's threaded scheduler). Rounds alternate between the two and each
    figure is the best round.
    """
    import tempfile

    import dask
    import xarray as xr

    import xrecon  # noqa: F401  (registers the accessor)
    from xrecon.testing import synthetic_cube
    from xrecon.times import day_of_year

    ds = synthetic_cube(ny=side, nx=side, bands=list(af.OFFICIAL_OPTICAL_BANDS), revisit_days=6,
                        sar_revisit_days=3, seed=0)
    n = side * side
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = net.save(os.path.join(tmp, "model.xrecon"))
        ds.chunk({"y": chunk, "x": chunk}).to_zarr(os.path.join(tmp, "cube.zarr"), zarr_format=2)
        lazy = xr.open_zarr(os.path.join(tmp, "cube.zarr"))
        nt, nts = lazy.sizes["time"], lazy.sizes["sar_time"]
        optical = ds.optical.transpose("y", "x", "time", "band").values.reshape(n, nt, C)
        sar = ds.sar.transpose("y", "x", "sar_time", "sar_band").values.reshape(n, nts, S)
        valid = np.isfinite(optical).all(-1)
        doy, sar_doy = day_of_year(ds.time.values), day_of_year(ds.sar_time.values)

        def bare() -> None:
            net.predict_pixels(optical, valid, doy, sar, sar_doy, doy, device=device)

        def fill() -> None:
            with dask.config.set(scheduler="threads"):
                lazy.recon.fill(None, method="anytimeformer", checkpoint=ckpt, device=device).compute()

        best = {"bare": np.inf, "fill": np.inf}
        bare(), fill()  # warm up: model cache, allocator
        for _ in range(repeat):
            for name, fn in (("bare", bare), ("fill", fill)):
                best[name] = min(best[name], timed(fn)[0])
    print(f"\nEnd to end on {device}: cube {side} x {side} px (T={nt}, Ts={nts}, Tq={nt}), "
          f"Zarr chunks {chunk} x {chunk}")
    print(f"  bare predict_pixels (numpy in memory): {n / best['bare']:8,.0f} pixels/s")
    print(f"  ds.recon.fill on Zarr, computed:       {n / best['fill']:8,.0f} pixels/s")
    print(f"  fill / bare: {best['bare'] / best['fill']:.2f}  (goal >= 0.85)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pixels", type=int, default=None, help="pixels per round (default 2048 on the CPU, "
                   "65536 on a GPU; --quick 256)")
    p.add_argument("--repeat", type=int, default=None, help="rounds; each figure is the best round (default 7; "
                   "--quick 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the CPU, and a GPU too when torch.cuda.is_available(); cuda: the GPU rows only")
    p.add_argument("--quick", action="store_true", help="a smoke run of every code path (a few pixels, 1 round, "
                   "no textbook form, no single-thread table, a small fill)")
    p.add_argument("--no-fill", action="store_true", help="skip the fill comparison")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    p.add_argument("--no-single-thread", action="store_true",
                   help="skip the second CPU table at 1 thread (less disturbed by other processes)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the model's default for the device")
    p.add_argument("--sweep", action="store_true", help="also time several batch sizes (fp32)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        p.error("--device cuda: torch.cuda.is_available() is False")
    devices = (["cpu"] if args.device in ("auto", "cpu") else []) + (["cuda"] if cuda and args.device != "cpu" else [])
    repeat = args.repeat or (1 if args.quick else 7)

    net, weights = model()
    print(f"AnytimeFormer throughput: T={T}, Ts={TS}, {weights}; torch {torch.__version__}, {os.cpu_count()} CPUs"
          + (" (--quick: a smoke run, its figures mean little)" if args.quick else ""))
    for device in devices:
        n = args.pixels or (256 if args.quick else 2048 if device == "cpu" else 65536)
        data = inputs(n)
        bs = args.batch_size or net.default_batch_size(torch.device(device))
        measure(net, data, device, bs, repeat, args.sweep and not args.quick, skip_textbook=args.quick)
        if device == "cpu" and torch.get_num_threads() > 1 and not (args.no_single_thread or args.quick):
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            measure(net, data, "cpu", bs, repeat, False)
            torch.set_num_threads(threads)
    if not cuda:
        print("\n[cuda] skipped: torch.cuda.is_available() is False")
    if not args.no_fill:
        for device in devices:
            if device == "cpu":
                fill_vs_bare(net, "cpu", max(2, repeat // 2) if not args.quick else 1,
                             **({"side": 32, "chunk": 16} if args.quick else {}))
            else:
                fill_vs_bare(net, "cuda", max(2, repeat // 2), side=256, chunk=128)
    print("\nNote: on a shared machine absolute rates vary from run to run; the fractions (same-run ratios) "
          "are what to compare.")


if __name__ == "__main__":
    main()
