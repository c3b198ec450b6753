"""``xrecon demo``: build a synthetic cloudy cube, fill it, write Zarr and a figure.

Everything runs offline on an embedded example: the synthetic Sentinel-2 + Sentinel-1 cube of
:func:`xrecon.testing.synthetic_cube`, whose cloud-free truth is known, so the demo also scores itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from xrecon.io import write_zarr

__all__ = ["run_demo"]


def _figures(out: Path, cloudy: xr.Dataset, filled: xr.Dataset, truth: xr.DataArray) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xrecon.plot import plot_maps, plot_series

    # The optical date with the most clouds that still has some clear pixels, for the maps.
    clear_share = np.isfinite(cloudy.optical.isel(band=0)).mean(("y", "x")).values
    candidates = np.flatnonzero((clear_share > 0.05) & (clear_share < 0.7))
    t_map = int(candidates[np.argmin(clear_share[candidates])]) if len(candidates) else int(np.argmin(clear_share))
    # A vegetated pixel (strong NIR seasonality) with long gaps.
    n_clear = np.isfinite(cloudy.optical.isel(band=0)).sum("time").values
    dynamics = truth.sel(band="B08").std("time").values
    score = np.where((n_clear > 4) & (n_clear < 0.6 * cloudy.sizes["time"]), dynamics, -1.0)
    iy, ix = np.unravel_index(np.argmax(score), score.shape)

    maps, series = out / "demo.png", out / "demo-series.png"
    plt.close(plot_maps(cloudy, filled, cloudy.time.values[t_map], truth=truth, path=maps))
    plt.close(plot_series(cloudy, filled, y=int(iy), x=int(ix), band="B08", truth=truth, path=series))
    return maps, series


def run_demo(out_dir: str | Path = "xrecon-demo", *, size: int = 128, method: str = "whittaker",
             progress: bool = True) -> Path:
    """Run the demo; returns the output folder.

    Writes ``cloudy.zarr`` (the synthetic input), ``filled.zarr`` (the gap-free cube every 5 days),
    ``demo.png`` (maps before, after, and after minus the truth) and ``demo-series.png`` (a pixel's
    series with its observations, the fill and ``gap_days``) into ``out_dir``,
    and prints the RMSE against the known truth on the pixels that were not observed.
    """
    import xrecon  # noqa: F401  (registers the accessor)
    from xrecon.synthetic import synthetic_cube, synthetic_truth

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chunk = max(16, size // 2)
    ds = synthetic_cube(ny=size, nx=size, bands=4, sar=True, seed=0, chunks={"y": chunk, "x": chunk})
    write_zarr(ds, out / "cloudy.zarr", overwrite=True)

    cube = xr.open_zarr(out / "cloudy.zarr")
    filled = cube.recon.fill("5D", method=method, gap_days=True)  # lazy: nothing computed yet
    write_zarr(filled, out / "filled.zarr", overwrite=True, progress=progress)

    result = xr.open_zarr(out / "filled.zarr").load()
    truth = synthetic_truth(cube, result.time.values).load()
    gaps = ~result.observed.values[:, None] & np.ones(result.optical.shape, bool)
    rmse = float(np.sqrt(np.nanmean((result.optical.values - truth.values)[gaps] ** 2)))
    cloudy = cube[["optical"]].load()
    maps, series = _figures(out, cloudy, result, truth)

    clear = float(np.isfinite(cloudy.optical.isel(band=0)).mean())
    print(f"xrecon demo: {size}x{size} pixels, {cube.sizes['time']} optical dates ({clear:.0%} clear), "
          f"{cube.sizes['sar_time']} SAR dates")
    print(f"  filled with method={method} every 5 days: {result.sizes['time']} dates, RMSE vs truth on "
          f"unobserved pixel-dates {rmse:.4f} reflectance")
    print(f"  input:  {out / 'cloudy.zarr'}")
    print(f"  result: {out / 'filled.zarr'}")
    print(f"  figures: {maps} (maps), {series} (a pixel's series)")
    return out
