"""RESTORE-DiT sampling throughput at the authors' size, as a fraction of this machine's matmul rate,
and ``ds.recon.fill(method="restore-dit")`` end to end against bare sampling of the same tiles.

Size (preset "authors": hidden 256, depth 4, 4 heads, patch 4) with 10 optical and 2 SAR bands (the
preset's PASTIS-R default is 3 SAR channels; Sentinel-1 VV + VH here), sequences of 15 frames,
128 x 128 tiles; random weights (the network's speed does not depend on them; the adaLN-Zero layers,
zero in a new network, are drawn too, so outputs and precision errors are not trivially 0).

What it prints
--------------
1. The network's FLOPs per forward and tile, counted with ``torch.utils.flop_counter.FlopCounterMode``
   on one real forward (linear layers, patch convolutions and attention: torch's counter has no formula
   for the CPU flash-attention kernel, so one is added, the same as its formula for the GPU kernels).
   A DPM-Solver++ step is one forward; the solver's own elementwise work is not counted.
2. Per device (the CPU always, at ``--threads``; a GPU when ``torch.cuda.is_available()``, skipped with
   a note otherwise): tiles/s and pixels/s of ``restore_dit.sample`` (a pixel = one tile pixel with its
   15-frame, 10-band sequence; tensors in and out on the device, noise given), with 1 and 4
   DPM-Solver++ steps, and the fraction of the machine's fp32 matmul rate (square ``torch.mm`` of
   2048 (CPU) / 8192 (GPU), same threads) that the counted FLOPs make. Batches of ``--batch`` tiles
   (default 2 on the CPU, 16 on a GPU). On a GPU for fp32, bf16 and fp16
   (autocast, as ``fill(precision=...)``), each against the matmul rate of its own dtype, with the max
   and mean abs error against the fp32 result (model units, [-1, 1]; reflectance = 0.4 x that).
3. End to end: ``ds.recon.fill(method="restore-dit", ...)`` on a synthetic in-memory cube (the same
   size and bands, 15 dates, a checkpoint saved with ``model.save``; 96 x 96 px on the CPU, 224 x 224
   on a GPU, 1 step; fp32) against calling the sampler
   directly on the very tiles and batches that fill built (recorded during a warm-up fill). fill
   computes overlapping tiles on its global grid (tiles of 128 every 96 pixels, hanging over the
   edges), so both are given per computed tile (the ratio to compare: goal fill >= 0.95 of bare) and
   per output pixel (what a user gets; on a small cube most of a tile lies outside it; on a large one
   each output pixel costs (128/96)^2 = 1.78 tile pixels).

Each figure is the median of ``--repeat`` rounds; the matmul rate is measured in every round, next to the
model runs, and the fractions are taken round by round (same-run ratios, less sensitive to other load
than the absolute rates). A CPU-time based fraction is printed too (rates per CPU-second of this
process: when other processes hold cores, the wall-clock fraction drops, this one much less). The load
average is printed with each table: on a shared machine, compare fractions rather than rates.

Run::

    python benchmarks/restore_dit_throughput.py [--threads K] [--repeat R] [--device auto|cpu|cuda]
        [--batch B] [--side PX] [--fill-steps S] [--fill-batch B] [--profile] [--cpu-bf16] [--no-fill] [--no-table]
        [--quick]

``--quick``: a small network (hidden 64, depth 1), 6 frames, 32 px tiles, a 24 px cube, 1 round: a smoke
run of every CPU code path in about 10 s (its figures say nothing of the authors' size). ``--profile``:
also cProfile one fill and print where its time goes. At the full size on one CPU thread a run takes about
5 to 10 minutes (one forward of one tile is about 0.33 TFLOP).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter

from xrecon.models import restore_dit as rd
from xrecon.runtime import autocast

GOAL = 0.95
FULL = {"config": dataclasses.replace(rd.PRESETS["authors"], n_sar_bands=2), "name": "authors",
        "frames": 15, "tile": 128, "side": 96, "batch": 2, "repeat": 3, "mm": 2048}
QUICK = {"config": dataclasses.replace(rd.PRESETS["small"], depth=1, n_sar_bands=2), "name": "small, depth 1",
         "frames": 6, "tile": 32, "side": 24, "batch": 2, "repeat": 1, "mm": 512}
STEPS = (1, 4)


# --------------------------------------------------------------------------------------------------
# helpers

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    sync(device)
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def make_model(config: rd.RestoreDiTConfig, seed: int = 0) -> rd.RestoreDiT:
    """A network of ``config`` with random weights, its zero-initialised (adaLN-Zero) layers drawn too."""
    torch.manual_seed(seed)
    model = rd.RestoreDiT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model


def sample_inputs(config: rd.RestoreDiTConfig, batch: int, frames: int, tile: int, seed: int = 0) -> dict:
    """Model-unit inputs of ``sample`` for ``batch`` tiles: about 40 % of the pixel-frames to reconstruct."""
    g = torch.Generator().manual_seed(seed)
    C, S = config.n_optical_bands, config.n_sar_bands
    image = (torch.rand(batch, frames, C, tile, tile, generator=g) * 2 - 1) * 0.5
    mask = (torch.rand(batch, frames, 1, tile, tile, generator=g) < 0.4).float()
    sar = torch.randn(batch, frames, S, tile, tile, generator=g).clamp(-3, 3) / 3
    dates = (600.0 + 5.0 * torch.arange(frames, dtype=torch.float32)).expand(batch, frames).contiguous()
    noise = torch.randn(batch, frames, C, tile, tile, generator=g)
    return {"image": image, "mask": mask, "dates": dates, "sar": sar, "noise": noise}


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def forward_flops(model: rd.RestoreDiT, frames: int, tile: int) -> tuple[float, dict[str, float]]:
    """FLOPs of one forward of one tile (counted on the CPU in fp32), and their split by operator."""
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_cpu_flop
    x = sample_inputs(model.config, 1, frames, tile)
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.inference_mode(), counter:
        model.cpu().denoise(x["image"], torch.tensor([999]), x["dates"], x["sar"])
    split = {str(k).replace("aten.", ""): v for k, v in counter.get_flop_counts()["Global"].items()}
    return float(counter.get_total_flops()), split


def matmul_round(device: str, size: int, dtype: torch.dtype = torch.float32) -> tuple[Callable[[], None], float]:
    """A round of square matrix products (about 0.3 s of work here or more), and its FLOP count."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    reps = 4 if device == "cpu" else 20

    def run() -> None:
        for _ in range(reps):
            a @ b

    return run, 2.0 * size**3 * reps


def med(values: list[float]) -> float:
    return statistics.median(values)


# --------------------------------------------------------------------------------------------------
# 2. bare sampling

def sampling_table(model: rd.RestoreDiT, device: str, flops_fwd: float, opts: dict, args: argparse.Namespace,
                   precisions: list[str]) -> None:
    model.to(device)
    dev = torch.device(device)
    x = {k: v.to(device) for k, v in sample_inputs(model.config, opts["batch"], opts["frames"], opts["tile"]).items()}
    B, tile = opts["batch"], opts["tile"]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    mm_size = opts["mm"] if device == "cpu" else 8192

    def run(steps: int, precision: str) -> torch.Tensor:
        with torch.inference_mode(), autocast(dev, dtypes[precision]):
            return rd.sample(model, x["image"], x["mask"], x["dates"], x["sar"], noise=x["noise"], steps=steps,
                             sampler="dpm++")

    mms = {p: matmul_round(device, mm_size, dtypes[p]) for p in precisions}
    for p in precisions:  # warm-up: kernels, allocator, one-time autotuning
        run(1, p)
        mms[p][0]()
    # results for the error columns (the noise is given, so the precisions see the same inputs)
    outputs = {(s, p): run(s, p).float() for s in STEPS for p in precisions} if len(precisions) > 1 else {}
    mm_rounds: dict[str, list[tuple[float, float]]] = {p: [] for p in precisions}
    rounds: dict[tuple[int, str], list[tuple[float, float]]] = {(s, p): [] for s in STEPS for p in precisions}
    for _ in range(opts["repeat"]):
        for p in precisions:
            mm_rounds[p].append(timed(mms[p][0], device))
            for s in STEPS:
                rounds[(s, p)].append(timed(lambda s=s, p=p: run(s, p), device))
    threads = f", {torch.get_num_threads()} thread(s)" if device == "cpu" else f" ({torch.cuda.get_device_name()})"
    print(f"\n[{device}{threads}] bare sampling, batch of {B} tiles, noise given, tensors on the device; "
          f"median of {opts['repeat']} round(s); load average {load()}")
    for p in precisions:
        wall = [mms[p][1] / w for w, _ in mm_rounds[p]]
        cpu = [mms[p][1] / c for _, c in mm_rounds[p] if c > 0]
        cpu_s = f", {med(cpu) / 1e9:.0f} GFLOP per CPU-second" if device == "cpu" and cpu else ""
        print(f"  {p} matmul rate ({mm_size}^2 torch.mm): {med(wall) / 1e9:.0f} GFLOP/s{cpu_s}")
    head = (f"  {'steps':>5s} {'precision':>9s} {'tiles/s':>9s} {'pixels/s':>10s} {'GFLOP/s':>9s} {'fraction':>9s}"
            f" {'(cpu-time)':>10s} {'max abs err':>12s} {'mean abs err':>13s}")
    print(head)
    for s in STEPS:
        for p in precisions:
            r = rounds[(s, p)]
            flops = flops_fwd * s * B
            tiles = med([B / w for w, _ in r])
            frac = med([(flops / w) / (mms[p][1] / mw) for (w, _), (mw, _) in zip(r, mm_rounds[p], strict=True)])
            cfrac = ""
            if device == "cpu":
                cf = [(flops / c) / (mms[p][1] / mc) for (_, c), (_, mc) in zip(r, mm_rounds[p], strict=True)
                      if c > 0 and mc > 0]
                cfrac = f"{med(cf):10.3f}" if cf else f"{'-':>10s}"
            else:
                cfrac = f"{'-':>10s}"
            err = f"{'-':>12s} {'-':>13s}"
            if outputs and p != "fp32":
                e = (outputs[(s, p)] - outputs[(s, "fp32")]).abs()
                err = f"{e.max().item():12.2e} {e.mean().item():13.2e}"
            elif outputs:
                err = f"{'(reference)':>12s} {'':>13s}"
            print(f"  {s:5d} {p:>9s} {tiles:9.3f} {tiles * tile * tile:10,.0f} {tiles * flops_fwd * s / 1e9:9.1f} "
                  f"{frac:9.3f} {cfrac} {err}")
    if len(precisions) > 1:
        print("  fraction: of the matmul rate of the row's own dtype; errors against the fp32 row's result")


# --------------------------------------------------------------------------------------------------
# 3. fill against bare sampling of the same tiles

def fill_vs_bare(model: rd.RestoreDiT, device: str, opts: dict, args: argparse.Namespace,
                 precision: str = "fp32") -> None:
    import xrecon  # noqa: F401  (registers the accessor)
    from xrecon.runtime import resolve_precision
    from xrecon.testing import synthetic_cube

    frames, tile, side, steps = opts["frames"], opts["tile"], opts["side"], args.fill_steps
    C, S = model.config.n_optical_bands, model.config.n_sar_bands
    ds = synthetic_cube(ny=side, nx=side, bands=C, seed=0).isel(time=slice(0, frames)).compute()
    if ds.sizes["sar_band"] != S:
        ds = ds.isel(sar_band=slice(0, S))
    model = model.cpu()
    model.optical_bands, model.sar_bands = [str(b) for b in ds.band.values], [str(b) for b in ds.sar_band.values]
    dev = torch.device(device)
    dtype = resolve_precision(precision, dev)
    fill_opts = {"tile": tile, "frames": frames, "steps": steps, "seed": 0, "n_samples": 1, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(model.save(os.path.join(tmp, "restore_dit.xrecon")))

        def fill() -> Any:
            return ds.recon.fill(None, method="restore-dit", checkpoint=ckpt, mask="clear", device=device,
                                 batch_size=args.fill_batch, **fill_opts).compute()

        # warm-up fill, recording the sampler calls fill makes: the same tiles, batches and noise for bare
        calls: list[tuple] = []
        original = rd.sample

        def recording(net, image, mask, dates=None, sar=None, **kw):
            calls.append((net, image, mask, dates, sar, kw))
            return original(net, image, mask, dates, sar, **kw)

        rd.sample = recording
        try:
            fill()
        finally:
            rd.sample = original
        n_tiles = sum(c[1].shape[0] for c in calls)
        batches = [c[1].shape[0] for c in calls]

        def bare() -> None:
            for net, image, mask, dates, sar, kw in calls:
                with torch.inference_mode(), autocast(dev, dtype):
                    original(net, image, mask, dates, sar, **kw)

        bare()
        fill_t: list[float] = []
        bare_t: list[float] = []
        for _ in range(opts["repeat"]):
            bare_t.append(timed(bare, device)[0])
            fill_t.append(timed(fill, device)[0])
        prof = None
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(fill)
    tb, tf = med(bare_t), med(fill_t)
    out_px = side * side
    print(f"\n[{device}{', ' + str(torch.get_num_threads()) + ' thread(s)' if device == 'cpu' else ''}] "
          f"end to end, {precision}, {steps} DPM-Solver++ step(s): in-memory synthetic cube {side} x {side} px, "
          f"{frames} dates, {C} + {S} bands; tile {tile}, overlap {tile // 4}: fill computes {n_tiles} tiles in "
          f"batches {batches} ({n_tiles * tile * tile / out_px:.1f} tile pixels per output pixel); "
          f"median of {opts['repeat']} round(s); load average {load()}")
    print(f"  {'':34s}{'seconds':>9s}{'tiles/s':>10s}{'output px/s':>13s}")
    label = "bare sample() on fill's tiles"
    print(f"  {label:34s}{tb:9.2f}{n_tiles / tb:10.3f}{out_px / tb:13,.0f}")
    print(f"  {'ds.recon.fill(...).compute()':34s}{tf:9.2f}{n_tiles / tf:10.3f}{out_px / tf:13,.0f}")
    ratio = tb / tf
    print(f"  fill / bare, per computed tile: {ratio:.3f}  (goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}); "
          f"fill overhead {tf - tb:.2f} s = {(tf - tb) / n_tiles:.3f} s per tile")
    big = (tile / (tile - tile // 4)) ** 2
    print(f"  per output pixel: {out_px / tf:,.0f} px/s through fill here; bare tile rate x tile area: "
          f"{n_tiles * tile * tile / tb:,.0f} px/s; on a large cube (~{big:.2f} tile px per output px) fill "
          f"would give about {n_tiles * tile * tile / tf / big:,.0f} px/s")
    if prof is not None:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
        print("  cProfile of one fill (cumulative):")
        print("\n".join("    " + line for line in s.getvalue().splitlines() if line.strip()))


# --------------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small size for a smoke run (seconds)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    p.add_argument("--repeat", type=int, default=None, help="rounds; each figure is their median (default 3; quick 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the CPU, and a GPU too when torch.cuda.is_available()")
    p.add_argument("--batch", type=int, default=None, help="tiles per sampler call in the sampling table (default 2)")
    p.add_argument("--side", type=int, default=None, help="side of the fill cube in pixels (default 96: 4 tiles)")
    p.add_argument("--fill-steps", type=int, default=1, help="DPM-Solver++ steps of the fill comparison")
    p.add_argument("--fill-batch", type=int, default=None, help="fill's batch_size (default: fill's own, 16)")
    p.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on the CPU")
    p.add_argument("--no-fill", action="store_true", help="skip the fill comparison")
    p.add_argument("--no-table", action="store_true", help="skip the bare sampling table (only the fill comparison)")
    p.add_argument("--profile", action="store_true", help="cProfile one fill and print the top functions")
    args = p.parse_args()
    opts = dict(QUICK if args.quick else FULL)
    for key in ("repeat", "batch", "side"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        p.error("--device cuda: torch.cuda.is_available() is False")
    devices = (["cpu"] if args.device in ("auto", "cpu") else []) + (["cuda"] if cuda and args.device != "cpu" else [])

    c = opts["config"]
    model = make_model(c)
    flops, split = forward_flops(model, opts["frames"], opts["tile"])
    print(f"RESTORE-DiT sampling throughput{' (--quick: NOT the authors size)' if args.quick else ''}: "
          f"preset '{opts['name']}' (hidden {c.hidden_size}, depth {c.depth}, {c.num_heads} heads, patch "
          f"{c.patch_size}), {opts['frames']} frames, {c.n_optical_bands} optical + {c.n_sar_bands} SAR bands, "
          f"{opts['tile']} x {opts['tile']} tiles, random weights")
    print(f"torch {torch.__version__}; CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads "
          f"{torch.get_num_threads()}; load average {load()}")
    print(f"network: {flops / 1e9:.2f} GFLOP per forward per tile (FlopCounterMode: "
          + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in split.items())
          + "); one forward per solver step")
    for device in devices if not args.no_table else []:
        precisions = ["fp32", "bf16", "fp16"] if device == "cuda" else ["fp32"] + (["bf16"] if args.cpu_bf16 else [])
        dopts = dict(opts)
        if device == "cuda":
            dopts["batch"] = args.batch or 16
        sampling_table(model, device, flops, dopts, args, precisions)
    if not cuda:
        print("\n[cuda] skipped: torch.cuda.is_available() is False")
    if not args.no_fill:
        for device in devices:
            dopts = dict(opts)
            if device == "cuda" and args.side is None:
                dopts["side"] = 224 if not args.quick else opts["side"]  # 16 tiles: one batch of fill's default 16
            fill_vs_bare(model, device, dopts, args)
    print(f"\nload average at the end: {load()}. On a shared machine absolute rates vary from run to run; the "
          "fractions and fill / bare (same-run ratios) are what to compare.")


if __name__ == "__main__":
    main()
