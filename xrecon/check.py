"""Pre-flight checks: what would make a reconstruction wrong or slow, found before it runs.

``ds.recon.check()`` reads metadata, one spatial window of reflectance and (unless ``coverage=False``)
the clear observations per pixel and year, one pass over the mask, never the reconstruction itself,
and returns a :class:`Report`:
a list of findings with a severity, shown as a table. ``strict=True`` raises on any warning.

Examples
--------
>>> import xrecon
>>> from xrecon.testing import synthetic_cube
>>> report = synthetic_cube(ny=16, nx=16, seed=0).recon.check()
>>> report.ok
True
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xrecon.cube import AUTO_MASK, DEFAULT_SAR, resolve_mask, validate
from xrecon.errors import XreconError

__all__ = ["Finding", "Report", "check", "S2_BASELINE_CHANGES"]

#: Sentinel-2 processing-baseline changes that shift L2A reflectance (04.00: the -1000 DN offset).
S2_BASELINE_CHANGES = {"2022-01-25": "baseline 04.00: L2A digital numbers carry a +1000 offset (BOA_ADD_OFFSET)"}
#: Fewest clear observations per pixel-year each method needs to say something about that year.
MIN_CLEAR = {"linear": 2, "whittaker": 3, "harmonic": 5, "neighbors": 2, "anytimeformer": 1, "restore-dit": 1}


class CheckError(XreconError):
    """``check(strict=True)`` found something that would make a reconstruction wrong."""


@dataclass(frozen=True)
class Finding:
    """One thing the check found: ``level`` is "ok", "info" or "warning"."""

    level: str
    topic: str
    message: str


@dataclass
class Report:
    """The findings of :func:`check`, in order; ``repr`` prints them as a table."""

    findings: list[Finding] = field(default_factory=list)

    def add(self, level: str, topic: str, message: str) -> None:
        self.findings.append(Finding(level, topic, message))

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when nothing was found that would make a reconstruction wrong."""
        return not self.warnings

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([f.__dict__ for f in self.findings], columns=["level", "topic", "message"])

    def __repr__(self) -> str:
        width = max((len(f.topic) for f in self.findings), default=5)
        lines = [f"xrecon check: {len(self.warnings)} warning(s), {len(self.findings)} finding(s)"]
        for f in self.findings:
            mark = {"warning": "!!", "info": "--", "ok": "ok"}[f.level]
            lines.append(f"  {mark} {f.topic:<{width}}  {f.message}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.to_frame().to_html(index=False)


def check(
    ds: xr.Dataset,
    *,
    query_times: Any = None,
    methods: tuple[str, ...] = ("linear", "harmonic", "whittaker"),
    optical: Hashable = "optical",
    sar: Hashable | None = DEFAULT_SAR,
    mask: Hashable | bool | None = AUTO_MASK,
    sar_window: float = 6.0,
    coverage: bool = True,
    strict: bool = False,
) -> Report:
    """Report what would make a reconstruction of ``ds`` wrong or slow.

    Parameters
    ----------
    ds : xarray.Dataset
        A cube following the conventions (lazy is fine).
    query_times : optional
        As for ``fill``; SAR coverage is judged around them (default: the optical times).
    methods : tuple of str
        Methods whose needs (clear observations per pixel and year) are checked.
    optical, sar, mask
        As for ``fill``.
    sar_window : float
        Days within which a query time counts as covered by a SAR acquisition.
    coverage : bool
        Count clear observations per pixel and year (one pass over the mask or the optical data);
        False skips it for very large cubes.
    strict : bool
        Raise :class:`CheckError` listing the warnings instead of returning them.

    Returns
    -------
    Report
    """
    from xrecon.times import parse_query_times, to_ns

    report = Report()
    own_mask = resolve_mask(ds, AUTO_MASK, optical=optical)
    cube = validate(ds, optical=optical, sar=sar, mask=mask)
    opt = cube.optical
    report.add("ok", "cube", f"{opt.sizes['time']} dates, bands {cube.bands}, {opt.sizes['y']} x {opt.sizes['x']} px"
               + ("" if cube.sar is None else f"; SAR {cube.sar_bands} on {cube.sar.sizes['sar_time']} dates"))

    # Digital numbers read as reflectance
    sample = _sample(opt if cube.clear is None else opt.where(cube.clear.astype(bool)))
    if sample.size:
        high = float(np.nanpercentile(sample, 99))
        if high > 1.5:
            report.add("warning", "reflectance", f"values look like digital numbers (99th percentile {high:.0f}); "
                       "decode them: from_bands(..., scale=1e-4) or xrecon.cube.decode")
        else:
            report.add("ok", "reflectance", f"99th percentile {high:.3f} (0-1 units)")

    # The mask
    if cube.clear is None and own_mask is not None:
        report.add("warning", "mask", f"the cube has a mask {own_mask!r} that this run does not use (mask=False?)")
    elif cube.clear is None:
        report.add("info", "mask", "no clear mask: an observation is clear when all its bands are finite")
    else:
        report.add("ok", "mask", f"clear mask {cube.clear.name!r} used")

    # Chunking over time: fill rechunks time (and band) whole
    if opt.chunks is not None:
        chunks = dict(zip(opt.dims, opt.chunks, strict=True))
        if len(chunks["time"]) > 1 or len(chunks["band"]) > 1:
            per_chunk = opt.dtype.itemsize * opt.sizes["time"] * opt.sizes["band"] * max(chunks["y"]) * max(chunks["x"])
            report.add("warning", "chunks", f"time is in {len(chunks['time'])} chunks and band in {len(chunks['band'])}"
                       f": fill rechunks them whole, {per_chunk / 2**20:.1f} MiB per spatial chunk; store the cube "
                       "with whole time series per chunk to avoid the rechunk")
        else:
            report.add("ok", "chunks", f"whole time series per chunk ({max(chunks['y'])} x {max(chunks['x'])} px)")

    # Clear observations per pixel and year, against each method's needs
    valid = opt.notnull().all("band")
    if cube.clear is not None:
        valid = valid & cube.clear.astype(bool)
    if coverage:
        per_year = valid.groupby("time.year").sum("time").compute()
        never = int((per_year.sum("year") == 0).sum())
        if never:
            report.add("info", "coverage", f"{never} pixel(s) have no clear observation at all: they come out NaN")
    for method in methods if coverage else ():
        need = MIN_CLEAR.get(method, 2)
        short = float((per_year < need).mean())
        if short > 0.05:
            report.add("warning" if short > 0.25 else "info", "coverage",
                       f"{short:.0%} of pixel-years have fewer than {need} clear observations, what {method!r} needs "
                       "for a year" + (" (the networks fall back to a classical method there)"
                                       if method in ("anytimeformer", "restore-dit") else ""))

    # SAR around the query times
    query = parse_query_times(query_times, cube.times)
    if cube.sar is not None and len(query):
        s, q = np.asarray(to_ns(cube.sar_times)), np.asarray(to_ns(query))
        pos = np.clip(np.searchsorted(s, q), 1, max(len(s) - 1, 1))
        nearest = np.minimum(np.abs(q - s[pos - 1]), np.abs(s[np.minimum(pos, len(s) - 1)] - q)) / 86_400e9
        far = float((nearest > sar_window).mean())
        level = "warning" if far > 0.5 else "info" if far > 0 else "ok"
        report.add(level, "SAR", f"{far:.0%} of query times have no SAR acquisition within {sar_window:g} days")
        orbit = [name for name in ("sat:relative_orbit", "relative_orbit") if name in cube.sar.coords]
        if orbit:
            orbits = np.unique(np.asarray(cube.sar[orbit[0]].values))
            if orbits.size > 1:
                report.add("warning", "SAR", f"SAR mixes relative orbits {orbits.tolist()}: different geometries "
                           "(select one, e.g. from_stac(orbit=...))")

    # Processing-baseline changes inside the time range
    t0, t1 = cube.times.min(), cube.times.max()
    for day, what in S2_BASELINE_CHANGES.items():
        if t0 < pd.Timestamp(day) <= t1:
            report.add("info", "baseline", f"{day}: {what}; decode each scene by its own baseline (from_stac does)")

    if strict and not report.ok:
        raise CheckError("check found " + "; ".join(f"{f.topic}: {f.message}" for f in report.warnings))
    return report


def _sample(opt: xr.DataArray) -> np.ndarray:
    """The finite reflectance of a central window of up to 64 x 64 pixels: one or a few chunks read."""
    ny, nx = opt.sizes["y"], opt.sizes["x"]
    y0, x0 = max(0, ny // 2 - 32), max(0, nx // 2 - 32)
    part = np.asarray(opt.isel(y=slice(y0, y0 + 64), x=slice(x0, x0 + 64)).values, dtype=np.float64)
    return part[np.isfinite(part)]
