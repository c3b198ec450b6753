"""Figures people want to look at: maps before / after / difference, a pixel's series, interval reliability.

matplotlib is imported only when a figure is drawn.

Examples
--------
>>> import xrecon
>>> from xrecon.plot import plot_maps, plot_series
>>> from xrecon.testing import synthetic_cube
>>> ds = synthetic_cube(ny=16, nx=16, seed=0)
>>> out = ds.recon.fill(method="linear", mask="clear", gap_days=True)
>>> fig = plot_maps(ds, out, ds.time.values[3], mask="clear")
>>> fig = plot_series(ds, out, y=4, x=5, band="B08", mask="clear")
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xrecon.errors import XreconError

__all__ = ["plot_maps", "plot_reliability", "plot_series", "TRUE_COLOUR"]

#: Sentinel-2 bands of a true-colour image, red, green, blue.
TRUE_COLOUR = ("B04", "B03", "B02")
_CLOUD_RGB = (0.82, 0.82, 0.86)  # cloudy pixels: light grey, not white (white reads as bright ground)


def _bands(da: xr.DataArray, band: Hashable | None) -> tuple[list[str], str]:
    names = [str(b) for b in da["band"].values]
    if band is not None:
        if str(band) not in names:
            raise XreconError(f"band {band!r} is not in the cube; expected one of {names}")
        return [str(band)], str(band)
    for rgb in (TRUE_COLOUR, ("B4", "B3", "B2")):
        if all(b in names for b in rgb):
            return list(rgb), "true colour (" + ", ".join(rgb) + ")"
    return [names[0]], names[0]


def _extent(da: xr.DataArray) -> tuple[float, float, float, float]:
    x, y = da["x"].values.astype(float), da["y"].values.astype(float)
    dx = abs(x[1] - x[0]) if x.size > 1 else 1.0
    dy = abs(y[1] - y[0]) if y.size > 1 else 1.0
    return x.min() - dx / 2, x.max() + dx / 2, y.min() - dy / 2, y.max() + dy / 2


def _image(frame: xr.DataArray, bands: list[str], vmax: float) -> np.ndarray:
    """(band, y, x) -> (y, x, 3) true colour in [0, 1], or (y, x) for one band; NaN stays NaN."""
    values = frame.sel(band=bands).transpose("y", "x", "band").values.astype(float)
    if len(bands) == 3:
        return np.clip(values / vmax, 0, 1)
    return values[..., 0]


def _show(ax: Any, frame: xr.DataArray, bands: list[str], vmax: float, cmap: str = "viridis",
          vmin: float = 0.0) -> Any:
    img = _image(frame, bands, vmax)
    y = frame["y"].values
    origin = "upper" if y.size < 2 or y[0] > y[-1] else "lower"
    if img.ndim == 3:
        cloudy = ~np.isfinite(img).all(-1)
        img = np.where(cloudy[..., None], np.asarray(_CLOUD_RGB), img)
        return ax.imshow(img, extent=_extent(frame), origin=origin, interpolation="nearest")
    import matplotlib as mpl

    colours = mpl.colormaps[cmap].copy()
    colours.set_bad(_CLOUD_RGB)
    return ax.imshow(np.ma.masked_invalid(img), extent=_extent(frame), origin=origin, interpolation="nearest",
                     cmap=colours, vmin=vmin, vmax=vmax)


def _clear_frame(ds: xr.Dataset, optical: Hashable, mask: Hashable | None, when: Any) -> xr.DataArray:
    frame = ds[optical].sel(time=when, method="nearest")
    if mask is not None:
        frame = frame.where(ds[mask].sel(time=frame.time).astype(bool))
    return frame


def plot_maps(
    cube: xr.Dataset,
    filled: xr.Dataset,
    time: Any,
    *,
    band: Hashable | None = None,
    truth: xr.DataArray | None = None,
    optical: Hashable = "optical",
    mask: Hashable | None = None,
    vmax: float | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Before / after / difference maps for one date.

    Parameters
    ----------
    cube : xarray.Dataset
        The cloudy input (``optical`` ``(time, band, y, x)``).
    filled : xarray.Dataset
        A ``fill`` result; its query time nearest to ``time`` is shown.
    time : datetime-like
        The date to show (the input's nearest date is shown as "before").
    band : str, optional
        One band, with a colour bar; default true colour (B04, B03, B02) when the cube has them.
    truth : xarray.DataArray, optional
        ``(time, band, y, x)`` reference; then the difference panel is filled minus truth, else filled
        minus the clear observations.
    optical, mask : str
        Variable names, as for ``fill``; masked (cloudy) pixels are shown grey.
    vmax : float, optional
        Reflectance shown as full brightness (true colour) or the top of the colour bar; default 0.15 for
        true colour, else the 98th percentile.
    path : path, optional
        Also save the figure there.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    bands, label = _bands(cube[optical], band)
    before = _clear_frame(cube, optical, mask, time)
    after = filled["optical"].sel(time=before.time.values, method="nearest")
    if vmax is None:
        vmax = 0.15 if len(bands) == 3 else float(np.nanpercentile(after.sel(band=bands).values, 98)) or 1.0
    ref = before if truth is None else truth.sel(time=after.time.values, method="nearest")
    diff_band = bands[0] if len(bands) == 1 else "B08" if "B08" in list(cube[optical]["band"].values) else bands[0]
    diff = (after - ref).sel(band=[diff_band])
    panels = [("before: " + _date(before), before), ("after: " + _date(after) + f" ({filled.attrs.get('method', '')})",
                                                     after)]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), layout="constrained")
    for ax, (title, frame) in zip(axes[:2], panels, strict=True):
        im = _show(ax, frame, bands, vmax)
        ax.set_title(title)
    if len(bands) == 1:
        fig.colorbar(im, ax=axes[:2], label=f"{label} reflectance", shrink=0.85)
    lim = float(np.nanpercentile(np.abs(diff.values), 98)) if np.isfinite(diff.values).any() else 0.01
    im = _show(axes[2], diff, [diff_band], max(lim, 1e-4), cmap="RdBu_r", vmin=-max(lim, 1e-4))
    axes[2].set_title(f"after - {'truth' if truth is not None else 'clear observations'} ({diff_band})")
    fig.colorbar(im, ax=axes[2], label="reflectance difference", shrink=0.85)
    for ax in axes:
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.locator_params(nbins=4)  # projected coordinates are long numbers: few ticks, no overlap
        ax.ticklabel_format(style="plain", useOffset=False)
    fig.suptitle(f"{label}; grey: not observed")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _date(frame: xr.DataArray) -> str:
    return str(np.datetime_as_string(np.asarray(frame.time.values, dtype="datetime64[ns]"), unit="D"))


def plot_series(
    cube: xr.Dataset,
    filled: xr.Dataset | Sequence[xr.Dataset],
    *,
    y: int,
    x: int,
    band: Hashable = "B08",
    truth: xr.DataArray | None = None,
    optical: Hashable = "optical",
    mask: Hashable | None = None,
    ax: Any = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """One pixel's series: the clear observations, each fill, its ``optical_std`` band and ``gap_days``.

    Parameters
    ----------
    cube : xarray.Dataset
        The cloudy input.
    filled : xarray.Dataset or list of them
        ``fill`` results (one line each, labelled by their method).
    y, x : int
        Pixel position (indices).
    band : str
    truth : xarray.DataArray, optional
        Reference series to draw too.
    optical, mask : str
        Variable names, as for ``fill``.
    ax : matplotlib axes, optional
    path : path, optional
        Also save the figure there.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    results = [filled] if isinstance(filled, xr.Dataset) else list(filled)
    _bands(cube[optical], band)
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 4), layout="constrained")
    else:
        fig = ax.figure
    obs = cube[optical].sel(band=band).isel(y=y, x=x)
    if mask is not None:
        obs = obs.where(cube[mask].isel(y=y, x=x).astype(bool))
    if truth is not None:
        t = truth.sel(band=band).isel(y=y, x=x)
        ax.plot(t.time, t, color="0.6", lw=3, label="truth")
    gap = None
    for k, res in enumerate(results):
        line = res["optical"].sel(band=band).isel(y=y, x=x)
        colour = f"C{k}"
        ax.plot(res.time, line, color=colour, label=res.attrs.get("method", f"fill {k}"))
        if "optical_std" in res:
            sd = res["optical_std"].sel(band=band).isel(y=y, x=x)
            ax.fill_between(res.time.values, line - sd, line + sd, color=colour, alpha=0.2, lw=0,
                            label=f"{res.attrs.get('method', '')} +- 1 std")
        if gap is None and "gap_days" in res:
            gap = res["gap_days"].isel(y=y, x=x)
    ax.plot(obs.time, obs, "o", color="C3", ms=5, label="clear observations")
    ax.set_ylabel(f"{band} reflectance")
    ax.set_title(f"pixel y={y}, x={x}: {int(obs.notnull().sum())} clear observations of {obs.sizes['time']}")
    if gap is not None:
        twin = ax.twinx()
        twin.fill_between(gap.time.values, gap.values, color="0.5", alpha=0.12, lw=0, step="mid")
        twin.set_ylabel("days to the nearest clear observation", color="0.4")
        twin.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")
    fig.autofmt_xdate()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _coverage_points(source: Any, band: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{label: (nominal levels, observed coverage)} of an evaluate table, an Ensemble or an ensemble file."""
    import pandas as pd

    from xrecon.ensemble.file import Ensemble, load_ensemble

    if isinstance(source, str | os.PathLike):
        source = load_ensemble(source, verify=False)
    if isinstance(source, Ensemble):
        cov = source.coverage()
        if cov.empty:
            raise XreconError("this ensemble file records no coverage to plot")
        use = band if (cov["band"] == band).any() else cov["band"].iloc[0]
        cov = cov[cov["band"] == use].sort_values("level")
        return {"ensemble (held-out half)": (cov["level"].to_numpy(), cov["coverage"].to_numpy())}
    if isinstance(source, pd.DataFrame):
        columns = [c for c in source.columns if c.startswith("coverage_")]
        if not columns:
            raise XreconError("the table has no coverage_* columns: evaluate(..., interval=[0.5, 0.9, 0.95]) "
                              "scores intervals")
        levels = np.array([float(c.removeprefix("coverage_").replace("_", ".")) / 100 for c in columns])
        rows = source[source["band"] == band] if (source["band"] == band).any() else source
        for key in ("gap", "gap_size"):
            if key in rows.columns:
                rows = rows[rows[key] == "all"]
        out = {}
        for method, row in rows.groupby("method", sort=False):
            values = row[columns].iloc[0].to_numpy(dtype=float)
            if np.isfinite(values).any():
                order = np.argsort(levels)
                out[str(method)] = (levels[order], values[order])
        if not out:
            raise XreconError("no method of the table has intervals (only an ensemble gives them)")
        return out
    raise XreconError(f"plot_reliability takes an evaluate table, an Ensemble or an ensemble file, got "
                      f"{type(source).__name__}")


def plot_reliability(source: Any, *, band: str = "all", ax: Any = None,
                     path: str | os.PathLike | None = None) -> Any:
    """Nominal against observed coverage of intervals: on the diagonal, an interval covers what it claims.

    Parameters
    ----------
    source : pandas.DataFrame, Ensemble or path
        An ``evaluate(..., interval=[...])`` table (its ``coverage_*`` columns, one line per method with
        intervals), or an ensemble (the coverage measured when it was fitted, at every calibrated level,
        on the spatial half not used for calibration).
    band : str
        A band, or "all" (pooled).
    ax : matplotlib Axes, optional
    path : path, optional
        Also save the figure there.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"method": ["ensemble"], "band": ["all"], "coverage_50": [0.48], "coverage_90": [0.91]})
    >>> fig = plot_reliability(table)
    """
    import matplotlib.pyplot as plt

    points = _coverage_points(source, band)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
    else:
        fig = ax.figure
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    for label, (nominal, observed) in points.items():
        ax.plot(nominal, observed, "o-", ms=4, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage (interval=)")
    ax.set_ylabel("observed coverage of hidden observations")
    ax.set_title("interval reliability" + ("" if band == "all" else f" ({band})"))
    ax.legend(loc="upper left")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
