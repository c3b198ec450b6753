"""Synthetic cubes with ground truth: a seeded, stylized Sentinel-2 + Sentinel-1 landscape.

:func:`synthetic_cube` builds a seeded Sentinel-2 + Sentinel-1 cube that follows the cube conventions
(``optical``, ``sar``, a ``clear`` mask) and carries what real data never has: the cloud-free ``truth``
at every optical date, and through :func:`synthetic_truth` at any other time. The scene is a small
stylized landscape (fields of seven land-cover classes with their own phenology, spectra, rain-driven
soil moisture and radar response) so that models trained on it must learn that optical relates to
SAR and to the season. Production code (``xrecon demo``) uses it; :mod:`xrecon.testing` re-exports it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from scipy.spatial import cKDTree
from scipy.special import expit

from xrecon.errors import CubeError, QueryTimesError, XreconError

__all__ = ["S2_BANDS", "SAR_BANDS", "LANDCOVER_CLASSES", "synthetic_cube", "synthetic_truth"]

#: Sentinel-2 bands the generator knows, in the usual (wavelength) order.
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: Order in which ``bands=n`` picks bands: the four 10 m bands first, then SWIR, then red-edge.
_BAND_PRIORITY = ("B02", "B03", "B04", "B08", "B11", "B12", "B05", "B06", "B07", "B8A")
SAR_BANDS: tuple[str, ...] = ("VV", "VH")
#: Land-cover class codes of the ``landcover`` variable.
LANDCOVER_CLASSES: dict[int, str] = {
    0: "water",
    1: "urban",
    2: "bare_soil",
    3: "cropland",
    4: "grassland",
    5: "deciduous_forest",
    6: "evergreen_forest",
}
_WATER, _URBAN, _BARE, _CROP, _GRASS, _DECID, _EVERG = range(7)
_CLASS_PROB = np.array([0.06, 0.07, 0.04, 0.42, 0.21, 0.12, 0.08])

# Endmember spectra (surface reflectance) in S2_BANDS order. Vegetation is dark in the visible with a
# green bump, climbs through the red edge (B05-B07) to a high NIR plateau (B08/B8A) and drops again in
# the SWIR (B11/B12, water absorption); soils rise slowly with wavelength; water is dark beyond green.
_SPECTRA = {
    "green": [0.030, 0.070, 0.035, 0.110, 0.300, 0.380, 0.420, 0.440, 0.210, 0.100],
    "green_dense": [0.025, 0.055, 0.025, 0.090, 0.320, 0.420, 0.470, 0.490, 0.230, 0.105],
    "conifer": [0.020, 0.040, 0.020, 0.070, 0.190, 0.240, 0.270, 0.280, 0.130, 0.055],
    "dry_vegetation": [0.070, 0.095, 0.120, 0.160, 0.210, 0.240, 0.260, 0.270, 0.340, 0.260],
    "soil_bright": [0.110, 0.150, 0.200, 0.230, 0.250, 0.265, 0.280, 0.290, 0.360, 0.310],
    "soil_dark": [0.060, 0.085, 0.110, 0.135, 0.150, 0.160, 0.170, 0.180, 0.230, 0.200],
    "litter": [0.045, 0.065, 0.085, 0.110, 0.140, 0.160, 0.180, 0.190, 0.240, 0.170],
    "water": [0.060, 0.055, 0.035, 0.025, 0.015, 0.012, 0.010, 0.010, 0.005, 0.003],
    "urban": [0.100, 0.110, 0.120, 0.130, 0.140, 0.150, 0.160, 0.165, 0.200, 0.180],
    "cloud": [0.520, 0.500, 0.490, 0.490, 0.490, 0.480, 0.480, 0.470, 0.380, 0.300],
}
# How much a saturated soil darkens per band: water absorbs most in the SWIR.
_WET_DARKENING = np.array([0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.40, 0.45])

# Radar: a water-cloud model. Vegetation of biomass V scatters A*V*(1-T2) and lets T2 = exp(-2 b V) of
# the soil echo through; cross-polarised (VH) volume scattering is weaker than VV but rises more with
# biomass relative to the soil term, which is what makes VH a good vegetation index.
_A = {"VV": 0.13, "VH": 0.05}
_B = {"VV": 1.0, "VH": 0.6}
_SOIL_VH_MINUS_VV_DB = -7.0

_OPTICAL_HOUR = pd.Timedelta(hours=10, minutes=30)  # Sentinel-2 overpass over Europe, UTC
_SAR_HOUR = pd.Timedelta(hours=17, minutes=40)  # Sentinel-1 ascending pass, UTC
_DAY = np.timedelta64(86_400_000_000_000, "ns")
_ATTR = "xrecon_synthetic"

# Independent random streams, so that e.g. changing the date range leaves the landscape alone.
_STREAM = {
    "layout": 1,
    "phenology": 2,
    "weather": 3,
    "optical_dates": 4,
    "sar_dates": 5,
    "clouds": 6,
    "speckle": 7,
    "noise": 8,
}


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM[stream], *extra]))


# --------------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class _Params:
    ny: int
    nx: int
    seed: int
    field_size: float
    resolution: float
    x0: float
    y0: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def _resolve_bands(bands: int | Sequence[str]) -> list[str]:
    if isinstance(bands, int | np.integer) and not isinstance(bands, bool):
        if not 1 <= bands <= len(S2_BANDS):
            raise XreconError(f"bands={bands}: expected an integer from 1 to {len(S2_BANDS)} or a list of names")
        picked = set(_BAND_PRIORITY[: int(bands)])
        return [b for b in S2_BANDS if b in picked]
    if isinstance(bands, str):
        bands = [bands]
    names = list(bands)
    unknown = [b for b in names if b not in S2_BANDS]
    if unknown or not names:
        raise XreconError(f"bands={names!r}: unknown band(s) {unknown}; expected names from {list(S2_BANDS)}")
    if len(set(names)) != len(names):
        raise XreconError(f"bands={names!r}: each band may appear only once")
    return names


def _to_ns(times: Any, what: str) -> np.ndarray:
    try:
        idx = pd.DatetimeIndex(np.atleast_1d(np.asarray(times)))
    except (TypeError, ValueError) as err:
        raise QueryTimesError(f"{what}: could not read {times!r} as datetimes ({err})") from None
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    if idx.hasnans:
        raise QueryTimesError(f"{what}: contains NaT")
    return idx.to_numpy().astype("datetime64[ns]")


# --------------------------------------------------------------------------------------------------
# The scene: a landscape of fields, and its state as a function of continuous time


class _Scene:
    """Everything that does not depend on the acquisition dates; evaluates the truth at any time."""

    def __init__(self, p: _Params):
        self.p = p
        rng = _rng(p.seed, "layout")
        ny, nx = p.ny, p.nx
        n_fields = max(len(LANDCOVER_CLASSES), int(round(ny * nx / p.field_size**2)))
        # Voronoi cells as fields: pixels belong to the nearest field centre.
        centres = rng.uniform([0, 0], [ny, nx], size=(n_fields, 2))
        yy, xx = np.mgrid[0:ny, 0:nx]
        pix = np.column_stack([yy.ravel() + 0.5, xx.ravel() + 0.5])
        _, fid = cKDTree(centres).query(pix)
        self.field = fid.reshape(ny, nx).astype(np.int32)
        # Every class appears at least once, the rest in realistic proportions.
        cls = rng.choice(len(_CLASS_PROB), size=n_fields, p=_CLASS_PROB)
        cls[: len(_CLASS_PROB)] = rng.permutation(len(_CLASS_PROB))
        self.cls = cls.astype(np.int8)
        self.n_fields = n_fields

        spec = {k: np.asarray(v, dtype=np.float64) for k, v in _SPECTRA.items()}
        # Per-field background (what shows where there are no green leaves) and green spectrum.
        soil_mix = rng.uniform(0, 1, n_fields)[:, None]
        soil = soil_mix * spec["soil_bright"] + (1 - soil_mix) * spec["soil_dark"]
        bg = soil * rng.uniform(0.9, 1.1, n_fields)[:, None]
        bg[cls == _WATER] = spec["water"] * rng.uniform(0.8, 1.3, (cls == _WATER).sum())[:, None]
        bg[cls == _URBAN] = spec["urban"] * rng.uniform(0.85, 1.2, (cls == _URBAN).sum())[:, None]
        forest = (cls == _DECID) | (cls == _EVERG)
        bg[forest] = spec["litter"] * rng.uniform(0.85, 1.15, forest.sum())[:, None]
        leaf_mix = rng.uniform(0, 1, n_fields)[:, None]
        green = leaf_mix * spec["green_dense"] + (1 - leaf_mix) * spec["green"]
        green[cls == _EVERG] = spec["conifer"]
        self.bg, self.green, self.dry = bg, green, spec["dry_vegetation"]
        # Sensitivity of the soil to rain: none under water, roofs or a closed canopy.
        self.wet_sens = np.where(np.isin(cls, [_BARE, _CROP, _GRASS]), rng.uniform(0.6, 1.2, n_fields), 0.0)
        self.wet_sens[forest] = 0.2
        self.roughness_db = rng.normal(0.0, 1.0, n_fields)
        self.sow_offset = rng.normal(0.0, 12.0, n_fields)  # farmers sow on different days
        self.field_jitter = rng.normal(0.0, 5.0, n_fields)  # other classes: local climate, soils
        self.water_wind_phase = rng.uniform(0, 2 * np.pi, 4)

        # Small per-pixel departures from the field: timing (days), vigour, brightness.
        amp_sd = np.where(self.cls == _URBAN, 0.5, 0.05)[self.field]
        self.pix_shift = rng.normal(0.0, 2.0, (ny, nx)).astype(np.float32)
        self.pix_amp = np.clip(1 + amp_sd * rng.standard_normal((ny, nx)), 0.3, 2.0).astype(np.float32)
        self.pix_bright = (1 + 0.03 * rng.standard_normal((ny, nx))).astype(np.float32)

    # -- field-level state -----------------------------------------------------------------------

    def _years(self, times: np.ndarray) -> range:
        years = times.astype("datetime64[Y]").astype(int) + 1970
        # Seasons of the year before (winter crops sown in autumn) and after reach into the range.
        return range(int(years.min()) - 1, int(years.max()) + 2)

    def vegetation(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Green fraction g, dry-vegetation fraction d (both 0-1) and biomass V, each (n_fields, T)."""
        nf = self.n_fields
        cls = self.cls[:, None]
        t_abs = ((times - np.datetime64("1970-01-01", "ns")) / _DAY)[None, :]
        g = np.zeros((nf, t_abs.shape[1]))
        v = np.zeros_like(g)
        grass_base = np.zeros_like(g)
        mow_g = np.ones_like(g)
        mow_v = np.ones_like(g)
        for year in self._years(times):
            r = _rng(self.p.seed, "phenology", year + 10_000)
            t = t_abs - (np.datetime64(f"{year}-01-01", "ns") - np.datetime64("1970-01-01", "ns")) / _DAY
            col = np.ones((nf, 1))

            def draw(mu, sd, r=r):
                return mu + sd * r.standard_normal((nf, 1))

            # Cropland: crop per field and year (rotation): winter cereal, summer crop or two crops.
            crop = r.choice(3, size=(nf, 1), p=[0.4, 0.4, 0.2])
            sow = self.sow_offset[:, None] + draw(0, 6)
            amp = np.clip(draw(0.85, 0.06), 0.6, 0.95)
            # winter cereal: emerges in autumn, greens up in March, senesces in June, harvested in July
            gw, vw = _crop_season(t, e0=-75 + sow, a0=0.2, e1=75 + sow / 2, r1=8, amp=amp,
                                  sen=165 + draw(0, 8), rs=7, harvest=190 + draw(0, 6), vamp=0.9)
            # summer crop (maize-like): sown in spring, harvested in autumn
            e1 = 135 + sow
            gs, vs = _crop_season(t, e0=0 * col, a0=0.0, e1=e1, r1=7, amp=amp,
                                  sen=e1 + 95 + draw(0, 8), rs=6, harvest=e1 + 120 + draw(0, 6), vamp=1.3)
            # two crops a year
            ea = 80 + sow
            ga, va = _crop_season(t, e0=0 * col, a0=0.0, e1=ea, r1=6, amp=amp, sen=ea + 70, rs=6,
                                  harvest=ea + 85, vamp=0.8)
            eb = ea + 120 + draw(0, 5)
            gb, vb = _crop_season(t, e0=0 * col, a0=0.0, e1=eb, r1=6, amp=amp * 0.9, sen=eb + 65, rs=6,
                                  harvest=eb + 80, vamp=0.8)
            crop_g = np.where(crop == 0, gw, np.where(crop == 1, gs, ga + gb))
            crop_v = np.where(crop == 0, vw, np.where(crop == 1, vs, va + vb))
            is_crop = cls == _CROP
            g += np.where(is_crop, crop_g, 0.0)
            v += np.where(is_crop, crop_v, 0.0)

            # Grassland: a broad season, cut one to three times a year.
            jit = self.field_jitter[:, None] + draw(0, 6)
            grass_base += 0.55 * expit((t - 80 - jit) / 15) * expit(-(t - 290 - jit) / 20)
            n_mow = r.choice(4, size=(nf, 1), p=[0.1, 0.3, 0.4, 0.2])
            t_mow = 140 + self.field_jitter[:, None] + draw(0, 12)
            for k in range(3):
                since = t - t_mow
                cut = (k < n_mow) & (since >= 0)
                mow_g *= np.where(cut, 1 - 0.6 * np.exp(-np.maximum(since, 0) / 20), 1.0)
                mow_v *= np.where(cut, 1 - 0.8 * np.exp(-np.maximum(since, 0) / 30), 1.0)
                t_mow = t_mow + 40 + draw(0, 8)

            # Deciduous forest: leaves out in late April, gone in late October.
            on, off = 115 + jit, 290 + jit
            decid = 0.75 * expit((t - on) / 6) * expit(-(t - off) / 9)
            g += np.where(cls == _DECID, decid, 0.0)
            # Evergreen forest: green all year, a little greener in summer.
            everg = 0.2 * expit((t - 100 - jit) / 15) * expit(-(t - 280 - jit) / 20)
            g += np.where(cls == _EVERG, everg, 0.0)

        grass_g = np.clip(0.25 + grass_base, 0, 1) * mow_g
        grass_v = 0.9 * np.clip(0.25 + grass_base, 0, 1) * mow_v
        g = np.where(cls == _GRASS, grass_g, g)
        v = np.where(cls == _GRASS, grass_v, v)
        g = np.where(cls == _DECID, 0.12 + g, g)
        g = np.where(cls == _EVERG, 0.6 + g, g)
        g = np.where(cls == _URBAN, 0.12, g)
        g = np.where(cls == _BARE, 0.02, g)
        g = np.where(cls == _WATER, 0.0, g)
        g = np.clip(g, 0.0, 1.0)
        # Standing dry matter: ripe crops between senescence and harvest.
        dry = np.where((cls == _CROP) | (cls == _GRASS), np.clip(np.minimum(v, 1.0) - g, 0, 1 - g), 0.0)
        v = np.where(cls == _DECID, 1.2 + 0.3 * g, v)
        v = np.where(cls == _EVERG, 1.5 + 0.0 * g, v)
        v = np.where(cls == _URBAN, 0.1, v)
        v = np.where((cls == _BARE) | (cls == _WATER), 0.0, v)
        return g, dry, v

    def moisture(self, times: np.ndarray) -> np.ndarray:
        """Topsoil wetness 0-1 (T,): rain events that dry out over a few days."""
        t_abs = (times - np.datetime64("1970-01-01", "ns")) / _DAY
        wet = np.zeros(t_abs.shape)
        for year in self._years(times):
            r = _rng(self.p.seed, "weather", year + 10_000)
            start = (np.datetime64(f"{year}-01-01", "ns") - np.datetime64("1970-01-01", "ns")) / _DAY
            n = r.poisson(365 / 6)
            when = start + np.sort(r.uniform(0, 365, n))
            amount = r.exponential(0.6, n)
            since = t_abs[:, None] - when[None, :]
            wet += np.where(since >= 0, amount * np.exp(-np.maximum(since, 0) / 4.0), 0.0).sum(axis=1)
        return 1 - np.exp(-wet)

    # -- pixel-level state -----------------------------------------------------------------------

    def _pixel_veg(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        half = np.timedelta64(12, "h")
        g, dry, v = self.vegetation(times)
        g_lo, _, _ = self.vegetation(times - half)
        g_hi, _, _ = self.vegetation(times + half)
        fid = self.field

        def to_pixels(a: np.ndarray) -> np.ndarray:
            # (n_fields, T) -> C-ordered (T, y, x); a transposed gather would leave a slow layout.
            return np.take(np.ascontiguousarray(a.T, dtype=np.float32), fid, axis=1)

        # A pixel runs pix_shift days late: first-order shift g(t - s) ~ g(t) - s g'(t).
        gp = to_pixels(g)
        gp -= self.pix_shift * to_pixels(g_hi - g_lo)
        gp *= self.pix_amp
        np.clip(gp, 0, 1, out=gp)
        dp = np.minimum(to_pixels(dry), 1 - gp)
        vp = to_pixels(v)
        vp *= self.pix_amp
        return gp, dp, vp

    def reflectance(self, times: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Cloud-free surface reflectance, float32 (T, band, y, x)."""
        times = np.asarray(times, dtype="datetime64[ns]")
        bi = [S2_BANDS.index(b) for b in bands]
        gp, dp, _ = self._pixel_veg(times)
        wet = np.ascontiguousarray(np.outer(self.moisture(times), self.wet_sens), dtype=np.float32)
        wet = np.take(wet, self.field, axis=1)
        out = np.empty((len(times), len(bi), self.p.ny, self.p.nx), dtype=np.float32)
        soil_frac = 1 - gp - dp
        soil_wet = soil_frac * wet
        tmp = np.empty_like(gp)
        # Linear mixing of endmembers; in place, as these arrays are the bulk of the cube.
        for j, b in enumerate(bi):
            bg = self.bg[:, b].astype(np.float32)[self.field] * self.pix_bright
            green = self.green[:, b].astype(np.float32)[self.field]
            o = out[:, j]
            np.multiply(soil_frac, bg, out=o)
            o -= np.multiply(soil_wet, bg * np.float32(_WET_DARKENING[b]), out=tmp)
            o += np.multiply(gp, green, out=tmp)
            o += np.multiply(dp, np.float32(self.dry[b]), out=tmp)
        return np.clip(out, 0, 1, out=out)

    def backscatter_db(self, times: np.ndarray) -> np.ndarray:
        """Speckle-free backscatter in dB, float32 (T, 2, y, x) for VV, VH."""
        times = np.asarray(times, dtype="datetime64[ns]")
        _, _, vp = self._pixel_veg(times)
        m = self.moisture(times)
        fid, cls = self.field, self.cls
        soil_vv_db = -17.0 + 5.0 * m[:, None] * self.wet_sens[None, :] + self.roughness_db[None, :]
        soil_vv_db[:, cls == _URBAN] = -5.0 + self.roughness_db[cls == _URBAN]  # double bounce
        # Open water: specular, darker when calm; wind as a smooth function of time.
        t_abs = (times - np.datetime64("1970-01-01", "ns")) / _DAY
        ph = self.water_wind_phase
        wind = 0.5 + 0.25 * np.sin(2 * np.pi * t_abs / 9.7 + ph[0]) + 0.25 * np.sin(2 * np.pi * t_abs / 3.3 + ph[1])
        soil_vv_db[:, cls == _WATER] = -23.0 + 6.0 * wind[:, None]
        soil_vv = np.take(np.ascontiguousarray(10 ** (soil_vv_db / 10), dtype=np.float32), fid, axis=1)
        vh_offset = np.where(cls == _URBAN, -7.0, np.where(cls == _WATER, -6.0, _SOIL_VH_MINUS_VV_DB))
        out = np.empty((len(times), 2, self.p.ny, self.p.nx), dtype=np.float32)
        for j, pol in enumerate(SAR_BANDS):
            soil = soil_vv if pol == "VV" else soil_vv * (10 ** (vh_offset / 10)).astype(np.float32)[fid]
            t2 = np.exp(np.float32(-2 * _B[pol]) * vp)
            out[:, j] = 10 * np.log10(np.float32(_A[pol]) * vp * (1 - t2) + t2 * soil)
        return out


def _crop_season(t, *, e0, a0, e1, r1, amp, sen, rs, harvest, vamp):
    """Green fraction and biomass of one crop: rise (optionally in two steps), senescence, harvest."""
    rise = a0 * expit((t - e0) / 8) + (amp - a0) * expit((t - e1) / r1)
    rise = np.where(t > e0 - 60, rise, 0.0)  # nothing before sowing
    g = rise * expit(-(t - sen) / rs)
    # Biomass keeps growing after the canopy turns yellow and disappears at harvest.
    v = (vamp / amp) * rise * expit(-(t - harvest) / 2)
    return g, v


# --------------------------------------------------------------------------------------------------
# Dates and clouds


def _optical_dates(start, end, revisit, missing, seed) -> np.ndarray:
    rng = _rng(seed, "optical_dates")
    first = start + pd.Timedelta(days=int(rng.integers(0, revisit))) + _OPTICAL_HOUR
    dates = pd.date_range(first, end + pd.Timedelta(days=1) - pd.Timedelta(seconds=1),
                          freq=pd.Timedelta(days=revisit))
    keep = rng.uniform(size=len(dates)) >= missing
    if keep.sum() < 2:  # a time series needs at least two dates
        keep[:2] = True
    return dates[keep].to_numpy().astype("datetime64[ns]")


def _sar_dates(start, end, revisit, missing, seed) -> np.ndarray:
    rng = _rng(seed, "sar_dates")
    first = start + pd.Timedelta(days=int(rng.integers(0, revisit))) + _SAR_HOUR
    dates = pd.date_range(first, end + pd.Timedelta(days=1) - pd.Timedelta(seconds=1),
                          freq=pd.Timedelta(days=revisit))
    keep = rng.uniform(size=len(dates)) >= missing / 2  # SAR sees through clouds; only outages
    if keep.sum() < 1:
        keep[:1] = True
    return dates[keep].to_numpy().astype("datetime64[ns]")


def _smooth_noise(noise: np.ndarray, scale: float) -> np.ndarray:
    """Spatially correlated gaussian fields from white noise (n, ny, nx), low-passed in Fourier space."""
    ny, nx = noise.shape[-2:]
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k2 = (ky**2 + kx**2) * (2 * np.pi) ** 2
    # Big cloud systems plus smaller cumulus-scale texture.
    filt = np.exp(-k2 * scale**2 / 2) + 0.25 * np.exp(-k2 * (scale / 4) ** 2 / 2)
    field = np.fft.irfft2(np.fft.rfft2(noise) * filt.astype(np.float32), s=(ny, nx))
    field = field - field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-12
    return field.astype(np.float32)


def _clouds(n, ny, nx, cover, scale, shadows, seed):
    """Cloud mask, shadow mask (n, ny, nx) and cloud opacity; per-date cover is U-shaped around `cover`."""
    rng = _rng(seed, "clouds")
    if cover <= 0:
        frac = np.zeros(n)
    elif cover >= 1:
        frac = np.ones(n)
    else:
        # Beta with a, b < 1 piles up near 0 and 1: many clear dates, many overcast ones, mean = cover.
        k = 0.7
        frac = rng.beta(cover * k, (1 - cover) * k, n)
        frac[frac < 0.02] = 0.0
        frac[frac > 0.98] = 1.0
    noise = rng.standard_normal((n, ny, nx), dtype=np.float32)
    cloud = np.zeros((n, ny, nx), dtype=bool)
    cloud[frac >= 1] = True
    opacity = np.ones((n, ny, nx), dtype=np.float32)
    # Only partly cloudy dates need a cloud field (the costly part); clear and overcast ones do not.
    partly = np.flatnonzero((frac > 0) & (frac < 1))
    if len(partly):
        field = _smooth_noise(noise[partly], scale)
        flat = field.reshape(len(partly), -1)
        # Threshold at the (1 - cover) quantile, so each date gets exactly its drawn cover.
        kth = np.clip(np.ceil((1 - frac[partly]) * (flat.shape[1] - 1)).astype(int), 0, flat.shape[1] - 1)
        thr = np.array([np.partition(row, k)[k] for row, k in zip(flat, kth, strict=True)], dtype=np.float32)
        above = field - thr[:, None, None]
        cloud[partly] = above >= 0
        # Thin at the edges, opaque in the core.
        opacity[partly] = np.clip(0.3 + above, 0.3, 1.0)
    shadow = np.zeros_like(cloud)
    if shadows:
        # Shadows fall away from the sun (south-east at overpass): towards north-west, i.e. up-left.
        angle = rng.uniform(0.6, 1.0) * np.pi
        for i in range(n):
            dist = rng.uniform(0.5, 1.5) * scale
            dy, dx = int(round(-dist * np.sin(angle))), int(round(dist * np.cos(angle)))
            shifted = np.zeros_like(cloud[i])
            ys, yd = (slice(-dy, None), slice(0, ny + dy)) if dy < 0 else (slice(0, ny - dy), slice(dy, None))
            xs, xd = (slice(-dx, None), slice(0, nx + dx)) if dx < 0 else (slice(0, nx - dx), slice(dx, None))
            shifted[yd, xd] = cloud[i][ys, xs]
            shadow[i] = shifted & ~cloud[i]
    return cloud, shadow, opacity


# --------------------------------------------------------------------------------------------------
# Public API


def synthetic_cube(
    *,
    ny: int = 64,
    nx: int = 64,
    start: str | pd.Timestamp = "2020-01-01",
    end: str | pd.Timestamp = "2020-12-31",
    bands: int | Sequence[str] = 4,
    sar: bool = True,
    cloud_cover: float = 0.4,
    revisit_days: int = 5,
    sar_revisit_days: int = 6,
    missing_dates: float = 0.1,
    seed: int = 0,
    chunks: int | tuple[int, int] | dict[str, int] | None = None,
    crs: str = "EPSG:32631",
    resolution: float = 10.0,
    origin: tuple[float, float] = (600_000.0, 5_000_000.0),
    field_size: float = 16.0,
    cloud_scale: float | None = None,
    shadows: bool = False,
    cloudy: str = "nan",
    noise: float = 0.0,
    sar_looks: float = 4.4,
    truth_times: Any = None,
) -> xr.Dataset:
    """A seeded, realistic Sentinel-2 + Sentinel-1 cube with its cloud-free ground truth.

    The scene is a landscape of fields (Voronoi cells, ``field_size`` pixels across on average), each
    of one land-cover class (see :data:`LANDCOVER_CLASSES`): cropland (a winter cereal, a summer crop or
    two crops a year, rotating between years, sown on different days per field), grassland (cut one to
    three times a year), deciduous and evergreen forest, water, urban and bare soil. A green fraction
    with class phenology, standing dry matter, and rain-driven soil wetness mix per-field endmember
    spectra into the reflectance of every band (NIR rises with vegetation, red and SWIR fall, wet soil
    darkens most in the SWIR). Backscatter follows a water-cloud model of biomass over the soil echo
    (VH rises with biomass; VV/VH of bare soil rise after rain), with gamma speckle of ``sar_looks``
    looks. Each pixel departs a little from its field in timing, vigour and brightness. Phenology and
    weather are drawn per year, so multi-year ranges repeat the seasons with year-to-year variation.

    Parameters
    ----------
    ny, nx : int
        Grid size in pixels.
    start, end : str or Timestamp
        Date range, both days included.
    bands : int or list of str
        Sentinel-2 bands: a list of names from :data:`S2_BANDS`, or a number ``n`` taking the first
        ``n`` of B02, B03, B04, B08, B11, B12, B05, B06, B07, B8A (returned in wavelength order;
        ``4`` gives B02, B03, B04, B08).
    sar : bool
        Add the ``sar`` variable.
    cloud_cover : float
        Expected fraction of pixel-dates under cloud, 0-1. Per-date cover is drawn from a U-shaped
        distribution with this mean, so some dates are clear and some fully overcast.
    revisit_days, sar_revisit_days : int
        Optical revisit (on a grid from a random offset after ``start``, 10:30 UTC) and SAR revisit (its
        own grid, 17:40 UTC, so the two are asynchronous).
    missing_dates : float
        Probability that an optical acquisition is missing altogether (half of it for SAR).
    seed : int
        Everything is drawn from independent streams of this seed: same seed, same bytes. The
        landscape and its phenology do not depend on the date range.
    chunks : int, (int, int), dict or None
        Chunk sizes in ``y`` and ``x``; time and band axes stay whole. None returns numpy arrays.
    crs, resolution, origin
        Grid: EPSG code, pixel size in metres and the (x, y) of the upper-left corner.
    field_size : float
        Mean field side in pixels.
    cloud_scale : float, optional
        Correlation length of clouds in pixels (default ``max(ny, nx) / 8``).
    shadows : bool
        Also mask cloud shadows (cast north-west of clouds); they add to ``cloud_cover``.
    cloudy : {"nan", "values"}
        What ``optical`` holds where not clear: NaN, or cloud/shadow-contaminated reflectances (bright,
        thin at cloud edges; dark under shadow), to test masking.
    noise : float
        Standard deviation of additive gaussian noise on the clear ``optical`` values (``truth`` stays
        noise-free). With 0, ``optical`` equals ``truth`` wherever clear.
    sar_looks : float
        Equivalent number of looks of the speckle (4.4 for Sentinel-1 IW GRD); ``inf`` for none.
    truth_times : datetimes, pandas frequency string or None
        Also return the truth at these times as ``truth_at`` on a ``truth_time`` axis (a frequency such
        as ``"1D"`` spans ``start`` to ``end``). See also :func:`synthetic_truth`.

    Returns
    -------
    xr.Dataset
        ``optical`` (time, band, y, x) float32, NaN where not clear; ``truth`` (time, band, y, x) float32
        cloud-free; ``clear`` (time, y, x) bool; ``sar`` (sar_time, sar_band, y, x) float32 dB when
        ``sar``; ``landcover`` (y, x) int8 with CF ``flag_values``/``flag_meanings``; ``field`` (y, x)
        int32 field ids; ``truth_at`` when asked. ``y`` descends, ``x`` ascends (pixel centres, metres),
        the CRS is written the rioxarray way, and ``attrs["xrecon_synthetic"]`` records the scene so
        that :func:`synthetic_truth` can evaluate it at other times.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> ds = synthetic_cube(ny=32, nx=32, seed=1)
    >>> ds.optical.dims, ds.sar.sizes["sar_band"]
    (('time', 'band', 'y', 'x'), 2)
    >>> bool((ds.optical.notnull().all("band") == ds.clear).all())
    True
    """
    for name, value in (("ny", ny), ("nx", nx)):
        if not isinstance(value, int | np.integer) or value < 2:
            raise XreconError(f"{name}={value!r}: expected an integer of at least 2")
    band_names = _resolve_bands(bands)
    try:
        t0, t1 = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    except (TypeError, ValueError) as err:
        raise QueryTimesError(f"start={start!r}, end={end!r}: expected dates ({err})") from None
    if t1 < t0:
        raise QueryTimesError(f"end={end!r} is before start={start!r}")
    if not 0 <= cloud_cover <= 1:
        raise XreconError(f"cloud_cover={cloud_cover!r}: expected a fraction from 0 to 1")
    if not 0 <= missing_dates < 1:
        raise XreconError(f"missing_dates={missing_dates!r}: expected a fraction from 0 to below 1")
    for name, value in (("revisit_days", revisit_days), ("sar_revisit_days", sar_revisit_days)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise XreconError(f"{name}={value!r}: expected a whole number of days, at least 1")
    span = (t1 - t0).days + 1
    if span < max(2 * revisit_days, sar_revisit_days if sar else 0):
        raise QueryTimesError(
            f"start={start!r}, end={end!r} spans {span} days: too short for two optical dates every "
            f"{revisit_days} days (and one SAR date every {sar_revisit_days}); give a longer range"
        )
    if cloudy not in ("nan", "values"):
        raise XreconError(f"cloudy={cloudy!r}: expected 'nan' or 'values'")
    if not (resolution > 0 and field_size > 0 and noise >= 0 and sar_looks > 0):
        raise XreconError("resolution, field_size and sar_looks must be positive and noise non-negative")

    p = _Params(ny=int(ny), nx=int(nx), seed=int(seed), field_size=float(field_size),
                resolution=float(resolution), x0=float(origin[0]), y0=float(origin[1]))
    scene = _Scene(p)
    times = _optical_dates(t0, t1, int(revisit_days), missing_dates, p.seed)
    truth = scene.reflectance(times, band_names)

    scale = float(cloud_scale) if cloud_scale is not None else max(ny, nx) / 8
    cloud, shadow, opacity = _clouds(len(times), ny, nx, float(cloud_cover), scale, shadows, p.seed)
    clear = ~(cloud | shadow)
    optical = truth.copy()
    if noise > 0:
        optical += _rng(p.seed, "noise").normal(0, noise, optical.shape).astype(np.float32)
        np.clip(optical, 0, 1, out=optical)
    if cloudy == "nan":
        np.copyto(optical, np.float32(np.nan), where=~clear[:, None])
    else:
        cloud_spec = np.asarray(_SPECTRA["cloud"], np.float32)[[S2_BANDS.index(b) for b in band_names]]
        op = np.where(cloud, opacity, 0).astype(np.float32)[:, None]
        optical = (1 - op) * optical + op * cloud_spec[None, :, None, None]
        optical = np.where(shadow[:, None], optical * np.float32(0.35), optical).astype(np.float32)

    x = p.x0 + (np.arange(nx) + 0.5) * p.resolution
    y = p.y0 - (np.arange(ny) + 0.5) * p.resolution
    coords = {"time": times, "band": band_names, "y": y, "x": x}
    landcover = scene.cls[scene.field]
    data_vars: dict[str, Any] = {
        "optical": (("time", "band", "y", "x"), optical,
                    {"long_name": "surface reflectance", "units": "1"}),
        "truth": (("time", "band", "y", "x"), truth,
                  {"long_name": "cloud-free surface reflectance (ground truth)", "units": "1"}),
        "clear": (("time", "y", "x"), clear, {"long_name": "clear-sky mask (True = clear)"}),
        "landcover": (("y", "x"), landcover.astype(np.int8), {
            "long_name": "land cover class",
            "flag_values": np.array(list(LANDCOVER_CLASSES), dtype=np.int8),
            "flag_meanings": " ".join(LANDCOVER_CLASSES.values()),
        }),
        "field": (("y", "x"), scene.field, {"long_name": "field (parcel) id"}),
    }
    if sar:
        sar_times = _sar_dates(t0, t1, int(sar_revisit_days), missing_dates, p.seed)
        sigma_db = scene.backscatter_db(sar_times)
        rng = _rng(p.seed, "speckle")
        if np.isfinite(sar_looks):
            speckle = rng.standard_gamma(sar_looks, sigma_db.shape, dtype=np.float32) / np.float32(sar_looks)
            sigma_db += 10 * np.log10(np.maximum(speckle, np.float32(1e-6)))
        # Residual calibration / incidence-angle differences between acquisitions.
        sigma_db += rng.normal(0, 0.3, (len(sar_times), 1, 1, 1)).astype(np.float32)
        coords.update(sar_time=sar_times, sar_band=list(SAR_BANDS))
        data_vars["sar"] = (("sar_time", "sar_band", "y", "x"), sigma_db,
                            {"long_name": "backscatter coefficient sigma0", "units": "dB"})
    if truth_times is not None:
        tt = _truth_times(truth_times, t0, t1)
        coords["truth_time"] = tt
        data_vars["truth_at"] = (("truth_time", "band", "y", "x"), scene.reflectance(tt, band_names),
                                 {"long_name": "cloud-free surface reflectance at truth_time", "units": "1"})

    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs[_ATTR] = p.to_json()
    ds.attrs["title"] = "xrecon synthetic Sentinel-2 + Sentinel-1 cube"
    ds = ds.rio.write_crs(crs, inplace=True)  # not a copy: the arrays are large and ours
    if chunks is not None:
        ds = ds.chunk(_chunk_spec(chunks, ds))
    return ds


def _truth_times(truth_times: Any, t0: pd.Timestamp, t1: pd.Timestamp) -> np.ndarray:
    if isinstance(truth_times, str):
        try:
            return pd.date_range(t0, t1 + pd.Timedelta(days=1) - pd.Timedelta(seconds=1),
                                 freq=truth_times).to_numpy().astype("datetime64[ns]")
        except ValueError:
            pass  # not a frequency: maybe a single date
    return _to_ns(truth_times, "truth_times")


def _chunk_spec(chunks: Any, ds: xr.Dataset) -> dict[str, int]:
    if isinstance(chunks, int | np.integer):
        cy = cx = int(chunks)
    elif isinstance(chunks, dict):
        if set(chunks) - {"y", "x"}:
            raise XreconError(f"chunks={chunks!r}: only 'y' and 'x' can be chunked; time and band stay whole")
        cy, cx = chunks.get("y", -1), chunks.get("x", -1)
    elif isinstance(chunks, tuple | list) and len(chunks) == 2:
        cy, cx = chunks
    else:
        raise XreconError(f"chunks={chunks!r}: expected an int, a (y, x) pair or a dict with 'y'/'x'")
    spec = {d: -1 for d in ds.dims}
    spec.update(y=cy, x=cx)
    return spec


def synthetic_truth(ds: xr.Dataset, times: Any, *, bands: Sequence[str] | None = None) -> xr.DataArray:
    """The cloud-free reflectance of a synthetic cube's scene at any times.

    The truth is a smooth function of time, so reconstructions at query times off the optical dates
    (anytime reconstruction) can be scored. At the cube's own dates it equals ``ds.truth``.

    Parameters
    ----------
    ds : xr.Dataset
        A cube from :func:`synthetic_cube` (or one written to and read back from Zarr): its
        ``attrs["xrecon_synthetic"]`` record the scene.
    times : datetimes
        Anything :class:`pandas.DatetimeIndex` reads.
    bands : list of str, optional
        Bands to evaluate; default the cube's ``band`` coordinate.

    Returns
    -------
    xr.DataArray
        float32 ``(time, band, y, x)`` with the cube's ``y``/``x`` coordinates and CRS, chunked like
        ``ds.optical`` in space when that is dask-backed.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube, synthetic_truth
    >>> ds = synthetic_cube(ny=16, nx=16)
    >>> synthetic_truth(ds, ["2020-06-01", "2020-06-02"]).shape
    (2, 4, 16, 16)
    """
    if _ATTR not in ds.attrs:
        raise CubeError(f"the cube has no attrs[{_ATTR!r}]: synthetic_truth needs a cube from synthetic_cube")
    p = _Params(**json.loads(ds.attrs[_ATTR]))
    times = _to_ns(times, "times")
    band_names = list(ds["band"].values) if bands is None else _resolve_bands(list(bands))
    # The cube may be a spatial subset of the scene: find its rows and columns on the scene grid.
    rows = np.rint((p.y0 - ds["y"].values) / p.resolution - 0.5).astype(int)
    cols = np.rint((ds["x"].values - p.x0) / p.resolution - 0.5).astype(int)
    if rows.min() < 0 or rows.max() >= p.ny or cols.min() < 0 or cols.max() >= p.nx:
        raise CubeError("the cube's y/x coordinates lie outside the synthetic scene it records")
    values = _Scene(p).reflectance(times, band_names)
    if len(rows) != p.ny or len(cols) != p.nx or (rows != np.arange(p.ny)).any() or (cols != np.arange(p.nx)).any():
        values = values[:, :, rows][:, :, :, cols]
    out = xr.DataArray(values, dims=("time", "band", "y", "x"),
                       coords={"time": times, "band": band_names, "y": ds["y"].values, "x": ds["x"].values},
                       name="truth", attrs={"long_name": "cloud-free surface reflectance", "units": "1"})
    if ds.rio.crs is not None:
        out = out.rio.write_crs(ds.rio.crs)
    if "optical" in ds and ds["optical"].chunks is not None:
        out = out.chunk({"time": -1, "band": -1, "y": ds["optical"].chunksizes["y"],
                         "x": ds["optical"].chunksizes["x"]})
    return out
