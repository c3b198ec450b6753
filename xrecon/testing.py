"""Helpers for tests of lazy code, and the synthetic cubes (from :mod:`xrecon.synthetic`, re-exported).

:func:`raise_if_dask_computes` fails a test when something computes before it should (flox's helper),
and :func:`hide_observations` (from :mod:`xrecon.holdout`) hides a random share of the clear observations
for hold-out evaluation. :func:`synthetic_cube` and :func:`synthetic_truth` build seeded cubes with
ground truth (:mod:`xrecon.synthetic`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask

from xrecon.holdout import hide_observations
from xrecon.synthetic import LANDCOVER_CLASSES, S2_BANDS, SAR_BANDS, synthetic_cube, synthetic_truth

__all__ = [
    "S2_BANDS",
    "SAR_BANDS",
    "LANDCOVER_CLASSES",
    "synthetic_cube",
    "synthetic_truth",
    "raise_if_dask_computes",
    "hide_observations",
]


# --------------------------------------------------------------------------------------------------
# Test helpers


class _CountingScheduler:
    """A dask scheduler that counts the computations it is asked for and refuses too many."""

    def __init__(self, max_computes: int):
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"too many dask computations: {self.total_computes} > max_computes={self.max_computes}"
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[_CountingScheduler]:
    """Fail when dask computes more than ``max_computes`` times inside the block.

    Installs a synchronous counting scheduler (as flox and xarray do in their tests), so code that
    should only build a graph can be checked to stay lazy.

    Parameters
    ----------
    max_computes : int
        Number of computations allowed.

    Yields
    ------
    scheduler
        Its ``total_computes`` says how many computations ran.

    Raises
    ------
    RuntimeError
        On the computation that exceeds ``max_computes``.

    Examples
    --------
    >>> import dask.array as da
    >>> from xrecon.testing import raise_if_dask_computes
    >>> x = da.ones(4, chunks=2)
    >>> with raise_if_dask_computes():
    ...     y = x + 1  # building a graph is fine
    >>> with raise_if_dask_computes(max_computes=1):
    ...     int(y.sum().compute())
    8
    """
    scheduler = _CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler
