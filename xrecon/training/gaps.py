"""Gap simulation for self-supervised training: hide some of the observations a pixel has.

Every function here takes the validity of a batch of pixel series, ``valid`` ``(B, T)`` bool (True =
a clear observation), and returns ``(kept, hidden)``, two ``(B, T)`` bool arrays with

* ``hidden`` a subset of ``valid``: a hidden observation is always a real one, so the target of the
  imputation loss is never a NaN;
* ``kept = valid & ~hidden``: what the model is shown;
* ``kept.sum(1) >= min(min_keep, valid.sum(1))``: a pixel is never left without observations (and a
  pixel with fewer than ``min_keep`` observations keeps all of them).

Three ways of hiding, after AnytimeFormer's training (Tang et al.), which hides 25 % of the observed
dates at random, and its "continuous gap" experiments:

* :func:`hide_random` hides a fraction of each pixel's observed dates, chosen at random;
* :func:`hide_runs` hides runs of consecutive observed dates (a cloudy season);
* :func:`hide_transplant` hides the dates on which another pixel of the same cube was cloudy: real
  cloud patterns, taken from a pool of donor validity series, optionally shifted in time;
* ``"clouds"`` hides what ``evaluate(gaps="clouds")`` hides: the clear pixel-dates under other dates'
  clouds at the same place, chosen over a whole block of the cube by the same function,
  :func:`xrecon.holdout.hidden_mask` (the stream computes it per block and passes it as ``shapes``).

:func:`simulate_gaps` picks one of them per pixel, following a :class:`GapConfig`. All are numpy
only, vectorised over the batch, and seeded by a :class:`numpy.random.Generator`, so the same
generator state gives the same gaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from xrecon.errors import XreconError

__all__ = ["GapConfig", "hide_random", "hide_runs", "hide_transplant", "simulate_gaps", "GAP_MODES"]

#: The names :class:`GapConfig` accepts as modes.
GAP_MODES = ("random", "runs", "transplant", "clouds")


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check_valid(valid: np.ndarray) -> np.ndarray:
    valid = np.asarray(valid)
    if valid.ndim != 2 or valid.dtype != bool:
        raise XreconError(f"valid must be a (B, T) bool array, got shape {valid.shape} and dtype {valid.dtype}")
    return valid


def _check_fraction(fraction: float) -> float:
    if not 0.0 <= fraction <= 1.0:
        raise XreconError(f"fraction must be in [0, 1], got {fraction}")
    return float(fraction)


def _n_to_hide(n_valid: np.ndarray, fraction: float, min_keep: int) -> np.ndarray:
    # Half-up rounding (not numpy's half-to-even), so 2 observations at 25 % hide one, as 0.5 -> 1.
    k = np.floor(n_valid * fraction + 0.5).astype(np.int64)
    return np.clip(k, 0, np.maximum(n_valid - min_keep, 0))


def _valid_rank(valid: np.ndarray) -> np.ndarray:
    """Position of each observation among its pixel's observations (0, 1, ...); -1 where not valid."""
    return np.where(valid, np.cumsum(valid, axis=1) - 1, -1)


def _restore_min_keep(
    valid: np.ndarray, hidden: np.ndarray, min_keep: int, rng: np.random.Generator
) -> np.ndarray:
    """Un-hide random hidden observations of the pixels left with fewer than ``min_keep``."""
    n_valid = valid.sum(1)
    need = np.minimum(min_keep, n_valid) - (valid & ~hidden).sum(1)  # (B,) observations to give back
    if not (need > 0).any():
        return hidden
    keys = np.where(hidden, rng.random(hidden.shape), np.inf)  # random order among hidden ones
    order = np.argsort(keys, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(hidden.shape[1])[None, :], axis=1)
    return hidden & ~(rank < need[:, None])


def hide_random(
    valid: np.ndarray,
    fraction: float = 0.25,
    *,
    rng: np.random.Generator | int | None = None,
    min_keep: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Hide ``round(fraction * n)`` of each pixel's ``n`` observed dates, chosen uniformly.

    This is AnytimeFormer's training mask (``fraction=0.25``). The count is rounded half up and
    capped so that at least ``min_keep`` observations stay visible.

    Parameters
    ----------
    valid : numpy.ndarray
        ``(B, T)`` bool, True = a clear observation.
    fraction : float
        Fraction of each pixel's observations to hide, in [0, 1].
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for one.
    min_keep : int
        Observations that always stay visible (fewer if the pixel has fewer).

    Returns
    -------
    kept, hidden : numpy.ndarray
        ``(B, T)`` bool each; ``hidden`` is a subset of ``valid`` and ``kept = valid & ~hidden``.

    Examples
    --------
    >>> valid = np.ones((2, 8), bool)
    >>> kept, hidden = hide_random(valid, 0.25, rng=0)
    >>> hidden.sum(1).tolist(), bool((hidden & ~valid).any())
    ([2, 2], False)
    """
    valid = _check_valid(valid)
    fraction = _check_fraction(fraction)
    rng = _as_rng(rng)
    k = _n_to_hide(valid.sum(1), fraction, min_keep)
    # Random keys, invalid dates last: the k smallest keys of a row are k random observed dates.
    keys = np.where(valid, rng.random(valid.shape), np.inf)
    order = np.argsort(keys, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(valid.shape[1])[None, :], axis=1)
    hidden = valid & (rank < k[:, None])
    return valid & ~hidden, hidden


def hide_runs(
    valid: np.ndarray,
    fraction: float = 0.25,
    *,
    rng: np.random.Generator | int | None = None,
    n_runs: int = 1,
    min_keep: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Hide runs of consecutive observed dates, about ``fraction`` of each pixel's observations.

    With ``n_runs=1`` the hidden observations of a pixel are consecutive among its observations:
    one contiguous stretch of time with no visible observation, like a cloudy season. With more
    runs, ``round(fraction * n)`` is split into ``n_runs`` runs placed independently (they may
    overlap, hiding a little less).

    Parameters
    ----------
    valid : numpy.ndarray
        ``(B, T)`` bool, True = a clear observation.
    fraction : float
        Fraction of each pixel's observations to hide, in [0, 1].
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for one.
    n_runs : int
        Number of runs per pixel.
    min_keep : int
        Observations that always stay visible (fewer if the pixel has fewer).

    Returns
    -------
    kept, hidden : numpy.ndarray
        ``(B, T)`` bool each.

    Examples
    --------
    >>> valid = np.ones((1, 12), bool)
    >>> kept, hidden = hide_runs(valid, 0.25, rng=1)
    >>> int(hidden.sum()), int(np.diff(np.flatnonzero(hidden)).max())
    (3, 1)
    """
    valid = _check_valid(valid)
    fraction = _check_fraction(fraction)
    if n_runs < 1:
        raise XreconError(f"n_runs must be >= 1, got {n_runs}")
    rng = _as_rng(rng)
    n_valid = valid.sum(1)
    total = _n_to_hide(n_valid, fraction, min_keep)  # (B,)
    rank = _valid_rank(valid)  # (B, T)
    hidden = np.zeros_like(valid)
    for r in range(n_runs):
        # Split the total as evenly as possible: the first (total % n_runs) runs get one more.
        length = total // n_runs + (r < total % n_runs)  # (B,)
        start = np.floor(rng.random(len(valid)) * (n_valid - length + 1)).astype(np.int64)  # (B,)
        hidden |= (rank >= start[:, None]) & (rank < (start + length)[:, None])
    hidden &= valid
    return valid & ~hidden, hidden


def hide_transplant(
    valid: np.ndarray,
    donors: np.ndarray,
    *,
    rng: np.random.Generator | int | None = None,
    min_keep: int = 1,
    shift: bool = False,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hide the dates on which a donor pixel was not observed: real clouds, transplanted.

    Each pixel draws one donor series from ``donors`` (validity of other pixels of the same cube on
    the same dates) and hides its observations where the donor was cloudy. With ``shift=True`` the
    donor's pattern is also rolled by a random number of dates, so a pixel can get the clouds another
    pixel had at other dates. If that would leave fewer than ``min_keep`` observations, random
    hidden ones are given back.

    Parameters
    ----------
    valid : numpy.ndarray
        ``(B, T)`` bool, True = a clear observation.
    donors : numpy.ndarray
        ``(P, T)`` bool validity series of donor pixels (True = clear), P >= 1.
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for one.
    min_keep : int
        Observations that always stay visible (fewer if the pixel has fewer).
    shift : bool
        Roll each donor pattern by a random number of dates (circularly).
    exclude : numpy.ndarray, optional
        ``(B,)`` int: the row of ``donors`` that is the pixel itself, never drawn as its donor
        (when P > 1).

    Returns
    -------
    kept, hidden : numpy.ndarray
        ``(B, T)`` bool each.

    Examples
    --------
    >>> valid = np.ones((1, 6), bool)
    >>> donors = np.array([[True, False, False, True, True, True]])
    >>> kept, hidden = hide_transplant(valid, donors, rng=0)
    >>> hidden.astype(int).tolist()
    [[0, 1, 1, 0, 0, 0]]
    """
    valid = _check_valid(valid)
    donors = np.asarray(donors)
    if donors.ndim != 2 or donors.dtype != bool or donors.shape[1] != valid.shape[1] or len(donors) == 0:
        raise XreconError(
            f"donors must be a (P, T) bool array with P >= 1 and T = {valid.shape[1]} (the dates of valid), "
            f"got shape {donors.shape} and dtype {donors.dtype}"
        )
    rng = _as_rng(rng)
    n_batch, n_time = valid.shape
    n_donors = len(donors)
    if exclude is not None and n_donors > 1:
        exclude = np.asarray(exclude, dtype=np.int64)
        # Draw among the P - 1 other rows: skip over the pixel's own row.
        pick = rng.integers(0, n_donors - 1, size=n_batch)
        pick = pick + (pick >= exclude)
    else:
        pick = rng.integers(0, n_donors, size=n_batch)
    cloudy = ~donors[pick]  # (B, T)
    if shift and n_time > 0:
        offset = rng.integers(0, n_time, size=n_batch)
        idx = (np.arange(n_time)[None, :] - offset[:, None]) % n_time  # (B, T) rolled positions
        cloudy = np.take_along_axis(cloudy, idx, axis=1)
    hidden = _restore_min_keep(valid, valid & cloudy, min_keep, rng)
    return valid & ~hidden, hidden


@dataclass(frozen=True)
class GapConfig:
    """How to hide observations during self-supervised training.

    Attributes
    ----------
    mode : str or mapping
        ``"random"``, ``"runs"``, ``"transplant"`` or ``"clouds"``, or a mapping of those names to
        weights: each pixel then gets one mode drawn with these probabilities, e.g.
        ``{"random": 2, "runs": 1, "transplant": 1}``.
    fraction : float
        Fraction of a pixel's observations hidden by ``random`` and ``runs`` (the paper's 0.25), and
        of a block's clear observations by ``clouds`` (evaluate's cloud shapes, see the module
        docstring). ``transplant`` hides what the donor's clouds hide.
    min_keep : int
        Observations per pixel that always stay visible.
    n_runs : int
        Runs per pixel for ``runs``.
    shift : bool
        For ``transplant``: also roll donor patterns in time (clouds of other dates).

    Examples
    --------
    >>> config = GapConfig(mode={"random": 1, "runs": 1}, fraction=0.3)
    >>> config.weights()
    {'random': 0.5, 'runs': 0.5}
    """

    mode: str | Mapping[str, float] = "random"
    fraction: float = 0.25
    min_keep: int = 1
    n_runs: int = 1
    shift: bool = True
    _weights: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = {self.mode: 1.0} if isinstance(self.mode, str) else dict(self.mode)
        unknown = [m for m in raw if m not in GAP_MODES]
        if unknown or not raw:
            raise XreconError(f"unknown gap mode(s) {unknown or raw!r}; expected some of {GAP_MODES}")
        if any(w < 0 for w in raw.values()) or sum(raw.values()) <= 0:
            raise XreconError(f"gap mode weights must be >= 0 with a positive sum, got {raw}")
        _check_fraction(self.fraction)
        if self.min_keep < 1:
            raise XreconError(f"min_keep must be >= 1 (a pixel needs one observation), got {self.min_keep}")
        if self.n_runs < 1:
            raise XreconError(f"n_runs must be >= 1, got {self.n_runs}")
        total = float(sum(raw.values()))
        object.__setattr__(self, "_weights", tuple((m, float(w) / total) for m, w in raw.items() if w > 0))

    def weights(self) -> dict[str, float]:
        """The probability of each mode."""
        return dict(self._weights)


def simulate_gaps(
    valid: np.ndarray,
    config: GapConfig | None = None,
    *,
    rng: np.random.Generator | int | None = None,
    donors: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    shapes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hide observations following ``config``, choosing a mode per pixel when it names several.

    Parameters
    ----------
    valid : numpy.ndarray
        ``(B, T)`` bool, True = a clear observation.
    config : GapConfig, optional
        Default ``GapConfig()``: 25 % of the observed dates at random.
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for one.
    donors : numpy.ndarray, optional
        ``(P, T)`` bool validity series for ``transplant`` (see :func:`hide_transplant`); without
        donors, the pixels themselves are the donors.
    exclude : numpy.ndarray, optional
        ``(B,)`` the donor row of each pixel itself, see :func:`hide_transplant`.
    shapes : numpy.ndarray, optional
        ``(B, T)`` bool, what ``"clouds"`` hides (:func:`xrecon.holdout.hidden_mask` of the pixels'
        block); needed when the config has that mode. ``min_keep`` is restored on top.

    Returns
    -------
    kept, hidden : numpy.ndarray
        ``(B, T)`` bool each.

    Examples
    --------
    >>> valid = np.ones((4, 20), bool)
    >>> kept, hidden = simulate_gaps(valid, GapConfig(mode="runs", fraction=0.25), rng=0)
    >>> hidden.sum(1).tolist()
    [5, 5, 5, 5]
    """
    valid = _check_valid(valid)
    config = GapConfig() if config is None else config
    rng = _as_rng(rng)
    weights = config._weights
    if len(weights) == 1:
        choice = np.zeros(len(valid), dtype=np.int64)
    else:
        choice = rng.choice(len(weights), size=len(valid), p=[w for _, w in weights])
    hidden = np.zeros_like(valid)
    for i, (mode, _) in enumerate(weights):
        rows = np.flatnonzero(choice == i)
        if len(rows) == 0:
            continue
        sub = valid[rows]
        if mode == "random":
            _, h = hide_random(sub, config.fraction, rng=rng, min_keep=config.min_keep)
        elif mode == "runs":
            _, h = hide_runs(sub, config.fraction, rng=rng, n_runs=config.n_runs, min_keep=config.min_keep)
        elif mode == "clouds":
            if shapes is None:
                raise XreconError("gap mode 'clouds' needs the block's cloud shapes (shapes=): use it through "
                                  "PixelStream, which computes them with xrecon.holdout.hidden_mask")
            h = _restore_min_keep(sub, sub & np.asarray(shapes, bool)[rows], config.min_keep, rng)
        else:
            pool = valid if donors is None else donors
            own = rows if donors is None else (None if exclude is None else np.asarray(exclude)[rows])
            _, h = hide_transplant(
                sub, pool, rng=rng, min_keep=config.min_keep, shift=config.shift, exclude=own
            )
        hidden[rows] = h
    return valid & ~hidden, hidden
