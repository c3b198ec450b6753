"""Hold-outs for evaluation: hide clear observations, chosen by position and seed, lazily.

The choice of what is hidden is keyed on each observation's (time, y, x) position and the seed
(:func:`xrecon.rng.hash_uniform`), so it does not depend on the chunking and computes nothing early.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xrecon.errors import CubeError, XreconError
from xrecon.rng import hash_uniform

__all__ = ["hide_observations"]


def hide_observations(
    ds: xr.Dataset,
    fraction: float,
    *,
    seed: int = 0,
    optical: str = "optical",
    mask: str | None = None,
) -> tuple[xr.Dataset, xr.DataArray]:
    """Hide a random share of the clear observations, for hold-out evaluation.

    Each clear observation (all bands finite, and ``mask`` True when given) is hidden independently
    with probability ``fraction``, keyed on its (time, y, x) position and ``seed``: the choice does not
    depend on the chunking, and nothing is computed for dask-backed cubes.

    Parameters
    ----------
    ds : xr.Dataset
        A cube following the conventions.
    fraction : float
        Probability, 0-1, that a clear observation is hidden.
    seed : int
        Seed of the choice.
    optical : str
        Name of the optical variable.
    mask : str, optional
        Name of a clear mask ``(time, y, x)``; it is also set False where hidden.

    Returns
    -------
    (xr.Dataset, xr.DataArray)
        The cube with hidden observations set to NaN, and the bool ``hidden`` mask ``(time, y, x)``.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> from xrecon.holdout import hide_observations
    >>> ds = synthetic_cube(ny=16, nx=16, seed=2)
    >>> held, hidden = hide_observations(ds, 0.2, seed=0, mask="clear")
    >>> bool(held.optical.where(hidden).isnull().all())
    True
    """
    if not 0 <= fraction <= 1:
        raise XreconError(f"fraction={fraction!r}: expected a fraction from 0 to 1")
    for name in (optical, mask):
        if name is not None and name not in ds:
            raise CubeError(f"variable {name!r} not in the cube (variables: {list(ds.data_vars)})")
    obs = ds[optical]
    for dim in ("time", "band", "y", "x"):
        if dim not in obs.dims:
            raise CubeError(f"{optical!r} has dims {obs.dims}; expected ('time', 'band', 'y', 'x')")
    valid = obs.notnull().all("band")
    if mask is not None:
        valid = valid & ds[mask].astype(bool)
    idx = {d: xr.DataArray(np.arange(obs.sizes[d], dtype=np.int64), dims=d) for d in ("time", "y", "x")}
    if obs.chunks is not None:
        idx = {d: a.chunk({d: obs.chunksizes[d]}) for d, a in idx.items()}
    u = xr.apply_ufunc(
        lambda t, y, x: hash_uniform(int(seed), t, y, x),
        idx["time"], idx["y"], idx["x"],
        dask="parallelized", output_dtypes=[np.float64],
    ).transpose("time", "y", "x")
    hidden = (valid & (u < fraction)).rename("hidden")
    out = ds.copy()
    out[optical] = obs.where(~hidden)
    if mask is not None:
        out[mask] = ds[mask].astype(bool) & ~hidden
    return out, hidden
