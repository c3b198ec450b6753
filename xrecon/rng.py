"""Random numbers keyed to positions, not to the order of computation.

A stochastic method (a diffusion sampler's noise, a random hold-out) must give the same numbers for a
pixel whatever the chunking and whichever task runs first. Drawing from a generator per block cannot do
that; hashing each number's global position with the seed can. :func:`hash_uniform` is that counter-based
stream (splitmix64 over the seed and the integer positions), and :class:`PositionalRandom` wraps it for a
block, or a patch kernel's window, at a given ``offset`` in the cube's grid.

Examples
--------
>>> import numpy as np
>>> whole = PositionalRandom(seed=7).normal((2, 4, 6))           # (sample, y, x) over the whole grid
>>> part = PositionalRandom(seed=7, offset=(1, 3)).normal((2, 2, 3))
>>> bool(np.array_equal(whole[:, 1:3, 3:6], part))
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PositionalRandom", "hash_bits", "hash_uniform"]

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _splitmix(z: np.ndarray) -> np.ndarray:
    """One splitmix64 round of a uint64 array, in place where ``z`` is an array of its own (returned)."""
    if np.ndim(z) == 0:
        z = z + _M1
        z = (z ^ (z >> np.uint64(30))) * _M2
        z = (z ^ (z >> np.uint64(27))) * _M3
        return z ^ (z >> np.uint64(31))
    tmp = np.empty_like(z)
    z += _M1
    for shift, mult in ((30, _M2), (27, _M3)):
        np.right_shift(z, np.uint64(shift), out=tmp)
        z ^= tmp
        z *= mult
    np.right_shift(z, np.uint64(31), out=tmp)
    z ^= tmp
    return z


def hash_bits(seed: int, *indices: np.ndarray) -> np.ndarray:
    """64 random bits (uint64), one per broadcast position of the integer ``indices``, keyed on ``seed``.

    The integers behind :func:`hash_uniform`: a counter-based hash (splitmix64 over the seed and each index
    in turn), the same for the same (seed, indices) whatever else is computed.

    Examples
    --------
    >>> import numpy as np
    >>> bits = hash_bits(0, np.arange(3))
    >>> bits.dtype, bool(bits[1] == hash_bits(0, np.array([1]))[0])
    (dtype('uint64'), True)
    """
    shape = np.broadcast_shapes(*(np.shape(i) for i in indices))
    with np.errstate(over="ignore"):
        z = _splitmix(np.asarray(int(seed), dtype=np.int64).view(np.uint64))  # the seed's round: once
        for idx in indices:
            z = _splitmix(z ^ np.asarray(idx, dtype=np.int64).view(np.uint64))  # a new array: in place
    return np.broadcast_to(z, shape)


def hash_uniform(seed: int, *indices: np.ndarray) -> np.ndarray:
    """Uniform numbers in [0, 1), one per broadcast position of the integer ``indices``, keyed on ``seed``.

    The same (seed, indices) always give the same number, whatever else is computed; negative indices
    are fine (they wrap as 64-bit integers).

    Examples
    --------
    >>> import numpy as np
    >>> u = hash_uniform(0, np.arange(3)[:, None], np.arange(4)[None, :])
    >>> u.shape, bool(((0 <= u) & (u < 1)).all()), bool(u[1, 2] == hash_uniform(0, np.array(1), np.array(2)))
    ((3, 4), True, True)
    """
    z = hash_bits(seed, *indices) >> np.uint64(11)
    u = z.astype(np.float64)
    u *= 2.0**-53
    return u


class PositionalRandom:
    """Counter-based random numbers for a window of the cube's grid.

    Parameters
    ----------
    seed : int
        The user's seed.
    offset : (int, int)
        Row and column of the window's first pixel in the whole grid (the ``offset`` a patch kernel gets).
    stream : int
        Separate streams for separate uses (e.g. noise of each sampler step), so they never correlate.

    Notes
    -----
    Numbers for an array of shape ``(..., Y, X)`` are keyed on (seed, stream, position in the leading
    axes, global row, global column): two windows that overlap draw the same numbers where they overlap,
    provided the leading shape is the same.
    """

    def __init__(self, seed: int, offset: Sequence[int] = (0, 0), *, stream: int = 0) -> None:
        self.seed, self.offset, self.stream = int(seed), (int(offset[0]), int(offset[1])), int(stream)

    def _keys(self, shape: Sequence[int], which: int) -> tuple[np.ndarray, ...]:
        *lead, ny, nx = shape
        k = np.arange(int(np.prod(lead, dtype=np.int64)), dtype=np.int64).reshape(*lead, 1, 1)
        y = (self.offset[0] + np.arange(ny, dtype=np.int64))[:, None]
        x = (self.offset[1] + np.arange(nx, dtype=np.int64))[None, :]
        return np.asarray(2 * self.stream + which), k, y, x

    def uniform(self, shape: Sequence[int], dtype: type = np.float32) -> np.ndarray:
        """Uniform numbers in [0, 1) of ``shape`` = (..., Y, X)."""
        return hash_uniform(self.seed, *self._keys(shape, 0)).astype(dtype)

    def normal(self, shape: Sequence[int], dtype: type = np.float32) -> np.ndarray:
        """Standard normal numbers of ``shape`` = (..., Y, X) (Box-Muller over two keyed uniforms)."""
        u1 = hash_uniform(self.seed, *self._keys(shape, 0))
        u2 = hash_uniform(self.seed, *self._keys(shape, 1))
        return (np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)).astype(dtype)
