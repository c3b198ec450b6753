"""Normalization statistics of a cube, computed lazily with dask, small enough for a checkpoint."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr

from xrecon.cube import DEFAULT_SAR, validate
from xrecon.errors import CheckpointError, CubeError

__all__ = ["NormStats", "compute_stats", "standardize_batch"]


@dataclass(frozen=True)
class NormStats:
    """Per-band mean and standard deviation of clear optical reflectance and of SAR dB.

    Stored in checkpoints with :meth:`to_dict` (plain lists and floats, loadable with
    ``torch.load(weights_only=True)`` or JSON) and read back with :meth:`from_dict`.

    Attributes
    ----------
    optical_bands : tuple of str
    optical_mean, optical_std : numpy.ndarray
        ``(C,)`` float64, over the clear observations (``valid`` as the stream defines it).
    optical_count : numpy.ndarray
        ``(C,)`` int64, how many values each band's statistics come from.
    sar_bands : tuple of str
        Empty when the cube has no SAR.
    sar_mean, sar_std, sar_count : numpy.ndarray
        ``(S,)``, over the SAR values that are finite in every SAR band.

    Examples
    --------
    >>> stats = NormStats(("B04",), np.array([0.1]), np.array([0.05]), np.array([10]))
    >>> NormStats.from_dict(stats.to_dict()) == stats
    True
    """

    optical_bands: tuple[str, ...]
    optical_mean: np.ndarray
    optical_std: np.ndarray
    optical_count: np.ndarray
    sar_bands: tuple[str, ...] = ()
    sar_mean: np.ndarray | None = None
    sar_std: np.ndarray | None = None
    sar_count: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NormStats):
            return NotImplemented
        arrays = ("optical_mean", "optical_std", "optical_count", "sar_mean", "sar_std", "sar_count")
        return (
            self.optical_bands == other.optical_bands
            and self.sar_bands == other.sar_bands
            and all(_same(getattr(self, a), getattr(other, a)) for a in arrays)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain Python lists, ints and floats, for a checkpoint."""

        def plain(a: np.ndarray | None) -> list | None:
            return None if a is None else np.asarray(a).tolist()

        return {
            "optical_bands": list(self.optical_bands),
            "optical_mean": plain(self.optical_mean),
            "optical_std": plain(self.optical_std),
            "optical_count": plain(self.optical_count),
            "sar_bands": list(self.sar_bands),
            "sar_mean": plain(self.sar_mean),
            "sar_std": plain(self.sar_std),
            "sar_count": plain(self.sar_count),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NormStats:
        """Read what :meth:`to_dict` wrote."""
        try:
            return cls(
                optical_bands=tuple(str(b) for b in d["optical_bands"]),
                optical_mean=np.asarray(d["optical_mean"], dtype=np.float64),
                optical_std=np.asarray(d["optical_std"], dtype=np.float64),
                optical_count=np.asarray(d["optical_count"], dtype=np.int64),
                sar_bands=tuple(str(b) for b in d.get("sar_bands") or ()),
                sar_mean=None if d.get("sar_mean") is None else np.asarray(d["sar_mean"], dtype=np.float64),
                sar_std=None if d.get("sar_std") is None else np.asarray(d["sar_std"], dtype=np.float64),
                sar_count=None if d.get("sar_count") is None else np.asarray(d["sar_count"], dtype=np.int64),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"normalization statistics are incomplete or malformed: {err!r}") from None


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _moments(values: xr.DataArray, keep: xr.DataArray, band_dim: str) -> tuple[Any, Any, Any]:
    """Lazy (count, mean, variance) per band of the values where ``keep`` is True."""
    dims = [d for d in values.dims if d != band_dim]
    # float64 so a year of 10 980 x 10 980 pixels sums without float32 round-off.
    x = values.astype(np.float64).where(keep)
    return x.count(dims).data, x.mean(dims).data, x.var(dims, ddof=0).data


def _combine(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Pool per-cube (count, mean, variance) into one (Chan et al.'s parallel formula)."""
    count = np.zeros_like(parts[0][0], dtype=np.int64)
    mean = np.zeros_like(parts[0][1], dtype=np.float64)
    m2 = np.zeros_like(mean)
    for n_b, mean_b, var_b in parts:
        n_b = np.asarray(n_b, dtype=np.int64)
        mean_b = np.nan_to_num(np.asarray(mean_b, dtype=np.float64))  # NaN where a cube has no data
        var_b = np.nan_to_num(np.asarray(var_b, dtype=np.float64))
        n = count + n_b
        safe = np.maximum(n, 1)
        delta = mean_b - mean
        mean = mean + delta * n_b / safe
        m2 = m2 + var_b * n_b + delta**2 * count * n_b / safe
        count = n
    return count, mean, np.sqrt(m2 / np.maximum(count, 1))


def compute_stats(
    cubes: xr.Dataset | Sequence[xr.Dataset],
    *,
    optical: Hashable = "optical",
    sar: Hashable | None = DEFAULT_SAR,
    mask: Hashable | None = None,
) -> NormStats:
    """Per-band mean and standard deviation of a cube (or several), computed with dask.

    Optical statistics use the clear observations: values finite in every band and, if a mask is
    named, clear in it; SAR statistics use the values finite in every SAR band. Standard deviations
    are population ones (``ddof=0``). Everything is one lazy reduction per cube, computed once, so
    memory stays at a few chunks whatever the cube's size.

    Parameters
    ----------
    cubes : xarray.Dataset or sequence of xarray.Dataset
        Cubes following xrecon's conventions, with the same bands; statistics are pooled over all.
    optical, sar, mask : str
        Variable names, as in :meth:`Dataset.recon.fill`. ``sar=None`` ignores SAR.

    Returns
    -------
    NormStats

    Raises
    ------
    xrecon.errors.CubeError
        When a band has no clear value at all, or the cubes' bands differ.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> stats = compute_stats(synthetic_cube(ny=8, nx=8, seed=0))
    >>> stats.optical_mean.shape == stats.optical_std.shape == (len(stats.optical_bands),)
    True
    """
    if isinstance(cubes, xr.Dataset):
        cubes = [cubes]
    if len(cubes) == 0:
        raise CubeError("compute_stats needs at least one cube")
    lazy = []
    bands: tuple[str, ...] | None = None
    sar_bands: tuple[str, ...] | None = None
    for i, ds in enumerate(cubes):
        cube = validate(ds, optical=optical, sar=sar, mask=mask)
        b = tuple(cube.bands)
        sb = tuple(cube.sar_bands or ())
        if bands is None:
            bands, sar_bands = b, sb
        elif (b, sb) != (bands, sar_bands):
            raise CubeError(
                f"cube {i} has optical bands {list(b)} and SAR bands {list(sb)}; expected the same as cube 0: "
                f"{list(bands)} and {list(sar_bands or ())}"
            )
        keep = cube.optical.notnull().all("band")
        if cube.clear is not None:
            keep = keep & cube.clear
        parts = [_moments(cube.optical, keep, "band")]
        if cube.sar is not None:
            parts.append(_moments(cube.sar, cube.sar.notnull().all("sar_band"), "sar_band"))
        lazy.append(parts)
    computed = dask.compute(lazy)[0]
    count, mean, std = _combine([c[0] for c in computed])
    assert bands is not None and sar_bands is not None
    empty = [bands[j] for j in np.flatnonzero(count == 0)]
    if empty:
        raise CubeError(f"optical bands {empty} have no clear observation in the cube(s); cannot normalize them")
    stats: dict[str, Any] = {
        "optical_bands": bands, "optical_mean": mean, "optical_std": std, "optical_count": count,
    }
    if sar_bands:
        s_count, s_mean, s_std = _combine([c[1] for c in computed])
        empty = [sar_bands[j] for j in np.flatnonzero(s_count == 0)]
        if empty:
            raise CubeError(f"SAR bands {empty} have no finite value in the cube(s); cannot normalize them")
        stats.update(sar_bands=sar_bands, sar_mean=s_mean, sar_std=s_std, sar_count=s_count)
    return NormStats(**stats)


def standardize_batch(
    batch: Mapping[str, torch.Tensor], stats: NormStats | Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Standardize a batch's reflectance and backscatter, with 0 (the band mean) where not observed.

    ``optical`` becomes ``(optical - mean) / std`` where ``kept`` and 0 elsewhere (hidden and missing
    dates look alike to the model), ``target`` the same where ``valid``, ``sar`` where
    ``sar_valid``: the inputs AnytimeFormer expects. Other entries are passed through; tensors stay
    on the batch's device.

    Parameters
    ----------
    batch : dict of torch.Tensor
        From :func:`xrecon.training.stream.collate_pixels`.
    stats : NormStats or mapping
        A :class:`NormStats`, or a mapping with ``optical_mean``, ``optical_std`` and (with SAR)
        ``sar_mean``, ``sar_std``, such as a model's ``normalization``.

    Examples
    --------
    >>> stats = NormStats(("B04",), np.array([0.1]), np.array([0.05]), np.array([10]))
    >>> batch = {"optical": torch.tensor([[[0.2], [0.0]]]), "target": torch.tensor([[[0.2], [0.3]]]),
    ...          "kept": torch.tensor([[True, False]]), "valid": torch.tensor([[True, True]])}
    >>> out = standardize_batch(batch, stats)
    >>> out["optical"].flatten().tolist(), out["target"].flatten().round().tolist()
    ([2.0, 0.0], [2.0, 4.0])
    """
    get = (lambda k: getattr(stats, k)) if isinstance(stats, NormStats) else (lambda k: stats.get(k))
    optical = batch["optical"]

    def standardized(x: torch.Tensor, ok: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
        m = torch.as_tensor(np.asarray(mean, dtype=np.float32), device=x.device)  # (C,)
        s = torch.as_tensor(np.asarray(std, dtype=np.float32), device=x.device)
        return torch.where(ok.unsqueeze(-1), (x - m) / s, torch.zeros((), dtype=x.dtype, device=x.device))

    out = dict(batch)
    out["optical"] = standardized(optical, batch["kept"], get("optical_mean"), get("optical_std"))
    if "target" in batch:
        out["target"] = standardized(batch["target"], batch["valid"], get("optical_mean"), get("optical_std"))
    if "sar" in batch and batch["sar"].shape[-1] > 0:
        out["sar"] = standardized(batch["sar"], batch["sar_valid"], get("sar_mean"), get("sar_std"))
    return out
