"""RESTORE-DiT's skill: a tiny network trained 1,600 CPU steps (about 40 s on one thread) beats temporal
interpolation on hidden cloud-shaped gaps where the same date's neighbours carry what the pixel's own
series cannot.

The scene (:func:`hazy_fields`) is a small landscape of fields (Voronoi cells), each with one green-up
(a Gaussian bump of vegetation cover over the field's soil, four S2 bands, a few percent of brightness
variation from pixel to pixel), observed every 5 days for a year under clouds (smoothed white noise
thresholded per date, U-shaped cover with mean 0.3). On top of it lies the radiometric effect a
temporal method cannot see: **per-date haze**, the residual of the atmospheric correction (the
aerosol load over- or under-estimated on a date, thin haze the cloud mask lets through). It is
additive, strongest in the blue and falling with wavelength (Angstrom exponent 1.3: 0.03 in B02, 0.015
in B08, one standard deviation), shared by the neighbourhood on a date (a scene-wide level plus a
smooth part of a third of it, correlation length about 12 pixels) and independent from date to date.
It is part of every clear observation, so a hidden one carries it too: to restore it a method has to
read it from the clear pixels of the same date around the gap, which RESTORE-DiT's spatial attention
can and linear, harmonic or Whittaker interpolation of the pixel's own series cannot (``neighbors``,
xrecon's spatial method, does it explicitly: see tests/test_neighbors.py for the same idea).

The network ("tiny" with 2-pixel patches) trains on eight 32 x 32 scenes (other fields, clouds and
haze on the same dates: several realisations of each date's haze, so it cannot learn the haze of a
date by heart through its date embedding) and is scored on another 48 x 48 scene, whose clear
observations are hidden under other dates' clouds (``gaps="clouds"``); it trained with the same kind
of simulated clouds. Everything is seeded: on a CPU the numbers are the same from run to run.
Measured here (one thread, about 45 s in all, 42 s of them training): RMSE on the hidden pixels 0.0239
for RESTORE-DiT (mean of 4 one-step samples), 0.0300 linear (0.80x), 0.0281 harmonic (the best temporal
method, 0.85x), 0.0289 Whittaker; ``neighbors`` 0.0196. Without the haze the same scene is easy for
linear interpolation (0.0012) while the network, in a shorter run (600 steps, one scene), stays at
0.011: its advantage here is the same date's neighbours, not a better temporal model. (With training
seed 1 and scoring scene 2: 0.0201 against 0.0361 linear and 0.0312 harmonic.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.methods
from xrecon.holdout import hide_observations
from xrecon.training import RestoreDiTTask, train

pytest.importorskip("diffusers")  # the samplers of fill(method="restore-dit")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BANDS = ["B02", "B03", "B04", "B08"]
WAVELENGTH = np.array([490.0, 560.0, 665.0, 842.0])  # nm, of BANDS
TEMPORAL = ("linear", "harmonic", "whittaker")


def hazy_fields(ny: int, nx: int, *, seed: int, nt: int = 73, haze: float = 0.03, haze_scale: float = 12.0,
                local: float = 0.3, cloud_cover: float = 0.3, cloud_scale: float = 4.0,
                field_size: float = 12.0) -> xr.Dataset:
    """A seeded cube of fields with one green-up each, clouds and per-date haze (see the module docstring).

    ``optical`` (NaN under clouds), ``truth`` (every date, haze included: what a clear sky would have
    shown) and ``clear``; ``haze`` is the standard deviation of a date's scene-wide haze in B02,
    ``local`` that of its smooth spatial part relative to it.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    days = 5.0 * np.arange(nt)
    n = max(4, int(round(ny * nx / field_size**2)))
    centres = rng.uniform([0, 0], [ny, nx], (n, 2))
    yy, xx = np.mgrid[:ny, :nx]
    _, fid = cKDTree(centres).query(np.c_[yy.ravel() + 0.5, xx.ravel() + 0.5])
    fid = fid.reshape(ny, nx)
    soil = rng.uniform(0.7, 1.4, n)[:, None] * np.array([0.09, 0.12, 0.16, 0.22])  # (fields, C)
    veg = rng.uniform(0.8, 1.2, n)[:, None] * np.array([0.03, 0.07, 0.035, 0.42])
    peak = rng.uniform(100, 260, n)  # day of the green-up's peak
    width = rng.uniform(25, 60, n)
    cover = rng.uniform(0.2, 0.95, n)
    f = cover[:, None] * np.exp(-0.5 * ((days[None] - peak[:, None]) / width[:, None]) ** 2)  # (fields, T)
    refl = (1 - f)[..., None] * soil[:, None] + f[..., None] * veg[:, None]  # (fields, T, C)
    truth = refl[fid] * (1 + 0.03 * rng.standard_normal((ny, nx, 1, 1)))  # (Y, X, T, C)
    truth = truth.transpose(2, 3, 0, 1)  # (T, C, Y, X)
    # per-date haze: additive, Angstrom-shaped across the bands, a scene-wide level plus a smooth field
    spectral = (WAVELENGTH / WAVELENGTH[0]) ** -1.3
    h = np.empty((nt, ny, nx))
    for k in range(nt):
        g = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), haze_scale, mode="reflect")
        g = (g - g.mean()) / (g.std() + 1e-12)
        h[k] = rng.normal(0, haze) + local * haze * g
    truth = (truth + h[:, None] * spectral[None, :, None, None]).astype(np.float32)
    # clouds: smoothed white noise thresholded at each date's cover (U-shaped: clear, overcast, partly)
    clear = np.ones((nt, ny, nx), bool)
    covers = np.clip(rng.beta(0.5, 0.5 * (1 - cloud_cover) / cloud_cover, nt), 0, 0.95)
    for k in range(nt):
        g = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), cloud_scale, mode="wrap")
        clear[k] = g < np.quantile(g, 1 - covers[k])
    times = pd.Timestamp("2020-01-03T10:30") + pd.to_timedelta(days, "D")
    coords = {"time": times, "band": BANDS, "y": np.arange(ny, dtype=float)[::-1] * 10, "x": np.arange(nx) * 10.0}
    dims = ("time", "band", "y", "x")
    optical = np.where(clear[:, None], truth, np.nan).astype(np.float32)
    return xr.Dataset({"optical": (dims, optical), "truth": (dims, truth), "clear": (("time", "y", "x"), clear)},
                      coords=coords)


class CloudWindows(RestoreDiTTask):
    """RESTORE-DiT's training with 16 x 16 windows of 8 dates and evaluate's cloud-shaped hold-outs."""

    tile = 16
    frames = 8
    gaps = "clouds"
    gap_fraction = 0.3


@pytest.fixture(scope="module")
def method():
    name = "restore-dit-skill-test"
    xrecon.methods.register(name, lambda *a, **k: None, training=CloudWindows)
    yield name
    xrecon.methods.unregister(name)


def rmse(filled: xr.DataArray, truth: xr.DataArray, hidden: np.ndarray) -> float:
    order = ("time", "y", "x", "band")
    d = filled.transpose(*order).values[hidden] - truth.transpose(*order).values[hidden]
    return float(np.sqrt(np.mean(d.astype(np.float64) ** 2)))


def test_tiny_restore_dit_beats_temporal_methods_under_per_date_haze(method, tmp_path):
    scenes = [hazy_fields(32, 32, seed=10 + i)[["optical", "clear"]] for i in range(8)]
    best = train(scenes, tmp_path / "skill.xrecon", method=method, preset="tiny", patch_size=2, steps=1600,
                 batch_size=8, lr=3e-3, warmup=20, ema=0.99, validation_fraction=0.0, mask="clear", seed=0,
                 threads=1, log_interval=100, validation_interval=1600, checkpoint_interval=1600, progress=False)

    scene = hazy_fields(48, 48, seed=1)  # another place: other fields, clouds and haze
    held, hidden = hide_observations(scene[["optical", "clear"]], 0.2, seed=3, gaps="clouds", mask="clear")
    hidden = hidden.values
    assert hidden.sum() > 10_000
    err = {m: rmse(held.recon.fill(method=m, mask="clear").optical, scene.truth, hidden) for m in TEMPORAL}
    dit = held.recon.fill(method="restore-dit", checkpoint=best, mask="clear", n_samples=4, seed=0)
    err["restore-dit"] = rmse(dit.optical, scene.truth, hidden)
    best_temporal = min(err[m] for m in TEMPORAL)
    # measured: restore-dit 0.0239, linear 0.0300 (0.80x), harmonic 0.0281 (the best temporal, 0.85x); the
    # bounds leave room for another CPU's BLAS to round the 1,600 steps differently (another seed: 0.56x, 0.64x)
    assert err["restore-dit"] < 0.9 * err["linear"], err
    assert err["restore-dit"] < 0.95 * best_temporal, err
