"""Hold-outs for evaluation: hide clear observations, chosen by position and seed, lazily.

The choice of what is hidden is keyed on each observation's (time, y, x) position and the seed
(:func:`xrecon.rng.hash_uniform`), so it does not depend on the chunking and computes nothing early.
Three shapes (``gaps=``):

``"pixels"``
    Single pixel-dates, each clear one hidden with probability ``fraction`` (the historical default).
``int`` (a side ``s`` in pixels)
    Square ``s x s`` blocks on a grid shifted per date; each block is hidden with probability
    ``fraction`` (its clear pixels are).
``"clouds"``
    Real cloud shapes: on a date, the clear pixels under the clouds of another date of the same cube
    (its donor, chosen per date from the seed) are hidden. Dates are taken in a seeded order, in up to
    :data:`CLOUD_ROUNDS` rounds of donors, until ``fraction`` of the clear observations is hidden.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xrecon.errors import CubeError, XreconError
from xrecon.rng import hash_uniform

__all__ = ["CLOUD_ROUNDS", "GAP_SHAPES", "hidden_mask", "hide_observations"]

#: The named hold-out shapes (an int, a block side in pixels, is the third kind).
GAP_SHAPES = ("pixels", "clouds")
#: Donor dates per date at most, for ``gaps="clouds"`` (rounds of transplanted clouds).
CLOUD_ROUNDS = 3
# Streams of hash_uniform, so the shapes' choices never correlate with the pixels' (stream 0 is implicit).
_BLOCK_STREAM, _DONOR_STREAM, _ORDER_STREAM = 101, 102, 103


def hide_observations(
    ds: xr.Dataset,
    fraction: float,
    *,
    seed: int = 0,
    optical: str = "optical",
    mask: str | None = None,
    gaps: str | int = "pixels",
    precompute: bool = False,
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
    gaps : {"pixels", "clouds"} or int
        The shape of what is hidden (see the module docstring). ``"pixels"`` hides each clear
        observation independently; an int ``s`` hides ``s x s`` blocks, each with probability
        ``fraction``; ``"clouds"`` hides the clear pixels under another date's clouds, date after date,
        until ``fraction`` of all clear observations is hidden (to within one date's transplant; fewer
        if :data:`CLOUD_ROUNDS` rounds of donor clouds cannot cover that much).
    precompute : bool
        For ``"clouds"``: compute now, in one pass over the clear mask, the small table of which donor clouds
        are applied, so that any block of the result is then cheap to compute on its own (what training on
        the held cube needs: otherwise every block read would recount the whole cube). Other shapes are
        always per block.

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
    gaps = check_gaps(gaps)
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
    hidden = hidden_mask(valid, fraction, seed=seed, gaps=gaps, precompute=precompute)
    hidden = hidden.rename("hidden")
    out = ds.copy()
    out[optical] = obs.where(~hidden)
    if mask is not None:
        out[mask] = ds[mask].astype(bool) & ~hidden
    return out, hidden


def hidden_mask(valid: xr.DataArray, fraction: float, *, seed: int = 0, gaps: str | int = "pixels",
                offset: tuple[int, int, int] = (0, 0, 0), precompute: bool = False) -> xr.DataArray:
    """Which clear observations to hide: the bool ``(time, y, x)`` mask of :func:`hide_observations`.

    The one implementation of the hold-out shapes, used by ``evaluate`` (on a whole cube, lazily) and
    by the training streams (on a block in memory, :class:`~xrecon.training.patches.PatchStream`
    with ``gaps="clouds"`` or a block side).

    Parameters
    ----------
    valid : xr.DataArray (time, y, x) of bool
        The clear observations (lazy or not).
    fraction, seed, gaps, precompute
        As for :func:`hide_observations`.
    offset : (int, int, int)
        Index of ``valid``'s first (time, y, x) in the cube it comes from: the pixel and block choices
        are keyed on positions in that cube, so a block gets the same choice as the whole cube does
        there. (``"clouds"`` reaches ``fraction`` within ``valid``: a block's choice is its own.)

    Examples
    --------
    >>> valid = xr.DataArray(np.ones((4, 6, 6), bool), dims=("time", "y", "x"))
    >>> whole = hidden_mask(valid, 0.3, seed=1, gaps=2)
    >>> part = hidden_mask(valid[1:, 2:, 4:], 0.3, seed=1, gaps=2, offset=(1, 2, 4))
    >>> bool((whole[1:, 2:, 4:] == part).all())
    True
    """
    gaps = check_gaps(gaps)
    if gaps == "clouds":
        return _cloud_hidden(valid, fraction, int(seed), precompute=precompute)
    idx = {d: xr.DataArray(np.arange(valid.sizes[d], dtype=np.int64) + o, dims=d)
           for d, o in zip(("time", "y", "x"), offset, strict=True)}
    if valid.chunks is not None:
        idx = {d: a.chunk({d: valid.chunksizes[d]}) for d, a in idx.items()}
    if gaps == "pixels":
        def uniform(t, y, x):
            return hash_uniform(int(seed), t, y, x)
    else:
        def uniform(t, y, x):
            return _block_uniform(int(seed), int(gaps), t, y, x)
    u = xr.apply_ufunc(uniform, idx["time"], idx["y"], idx["x"], dask="parallelized",
                       output_dtypes=[np.float64]).transpose("time", "y", "x")
    return (valid & (u < fraction)).transpose("time", "y", "x")


def check_gaps(gaps: object) -> str | int:
    """``gaps`` if it names a hold-out shape ("pixels", "clouds" or a block side >= 1), else XreconError."""
    if isinstance(gaps, str) and gaps.strip().isdigit():
        gaps = int(gaps)
    if isinstance(gaps, bool) or not (
        (isinstance(gaps, str) and gaps in GAP_SHAPES) or (isinstance(gaps, int | np.integer) and gaps >= 1)
    ):
        raise XreconError(f"gaps={gaps!r}: expected 'pixels', 'clouds' or a block side in pixels (an int >= 1)")
    return gaps if isinstance(gaps, str) else int(gaps)


def _block_uniform(seed: int, side: int, t: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """One uniform number per (date, block): blocks of ``side`` on a grid shifted per date by the seed."""
    t = np.asarray(t, np.int64)
    shift_y = np.floor(hash_uniform(seed, np.int64(_BLOCK_STREAM), t, np.int64(0)) * side).astype(np.int64)
    shift_x = np.floor(hash_uniform(seed, np.int64(_BLOCK_STREAM), t, np.int64(1)) * side).astype(np.int64)
    return hash_uniform(seed, np.int64(_BLOCK_STREAM + 1), t, (y + shift_y) // side, (x + shift_x) // side)


def cloud_donors(n_time: int, seed: int, rounds: int = CLOUD_ROUNDS) -> np.ndarray:
    """(rounds, T) donor date of each date in each round: distinct dates, never the date itself.

    Examples
    --------
    >>> d = cloud_donors(5, seed=0, rounds=3)
    >>> d.shape, bool((d != np.arange(5)).all()), bool(all(len(set(d[:, i])) == 3 for i in range(5)))
    ((3, 5), True, True)
    """
    t = np.arange(n_time, dtype=np.int64)
    keys = hash_uniform(seed, np.int64(_DONOR_STREAM), t[:, None], t[None, :])  # (T, T)
    keys[t, t] = np.inf  # never its own clouds
    rounds = max(min(rounds, n_time - 1), 0)
    return np.argsort(keys, axis=1, kind="stable")[:, :rounds].T


def _greedy_include(overlap: np.ndarray, n_clear: np.ndarray, *, fraction: float, order: np.ndarray) -> np.ndarray:
    """(R, T) incremental overlaps and the total of clear observations -> (R, T) bool: which transplants
    to apply. Rounds in turn, dates in ``order`` within a round, until ``fraction`` of the clear
    observations is hidden; the transplant that crosses the target is kept when that lands closer to it."""
    n_rounds, n_time = overlap.shape
    target = fraction * float(n_clear)
    seq = overlap[:, order].ravel().astype(np.float64)  # rounds in turn, dates in the seeded order
    cum = np.cumsum(seq)
    k = int(np.searchsorted(cum, target))  # first transplant reaching the target
    if k < len(seq) and abs(cum[k] - target) <= abs(target - (cum[k - 1] if k else 0.0)):
        k += 1
    take = np.zeros(len(seq), dtype=bool)
    take[:k] = True
    out = np.zeros((n_rounds, n_time), dtype=bool)
    out[:, order] = take.reshape(n_rounds, n_time)
    return out


def _cloud_hidden(valid: xr.DataArray, fraction: float, seed: int, precompute: bool = False) -> xr.DataArray:
    """Lazy ``gaps="clouds"``: clear pixels under donor dates' clouds, until ``fraction`` is hidden."""
    n_time = valid.sizes["time"]
    if valid.chunks is not None:
        valid = valid.chunk({"time": -1})  # a date's donor may be any date
    donors = cloud_donors(n_time, seed)
    n_rounds = len(donors)
    if n_rounds == 0 or fraction == 0:
        return valid & False
    # The clouds each round would add on each date, given all earlier rounds applied in full: integers,
    # so the choice below is exact whatever the chunking.
    covered = valid & False
    layers, overlaps = [], []
    for r in range(n_rounds):
        cloudy = ~valid.isel(time=donors[r]).assign_coords(time=valid["time"])
        layer = valid & cloudy & ~covered
        layers.append(layer)
        overlaps.append(layer.sum(("y", "x"), dtype=np.int64))
        covered = covered | layer
    overlap = xr.concat(overlaps, dim="round")  # (round, time)
    if overlap.chunks is not None:
        overlap = overlap.chunk({"round": -1, "time": -1})
    n_clear = valid.sum(dtype=np.int64)
    order = np.argsort(hash_uniform(seed, np.int64(_ORDER_STREAM), np.arange(n_time, dtype=np.int64)), kind="stable")
    include = xr.apply_ufunc(
        _greedy_include, overlap, n_clear, input_core_dims=[["round", "time"], []],
        output_core_dims=[["round", "time"]], dask="parallelized", output_dtypes=[bool],
        kwargs={"fraction": float(fraction), "order": order},
    )
    if precompute:
        include = include.compute()  # (round, time) bool: the only part that needs the whole cube
    hidden = valid & False
    for r, layer in enumerate(layers):
        hidden = hidden | (layer & include.isel(round=r))
    return hidden.transpose("time", "y", "x")
