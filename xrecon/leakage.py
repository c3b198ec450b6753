"""What a network trained on, and whether an evaluation would score it on those very observations.

A training run records in its checkpoints a sketch of every clear observation it read (:func:`sketch`):
each observation is hashed from what identifies it, its date (int64 ns), its ``y`` and ``x`` coordinate
values and the cube's CRS, and the ``k`` smallest hashes are kept (a bottom-k sketch). The hashes are
uniform, so the kept ones are a uniform random sample of the observations, keyed to the observations and
not to their place in one array: a crop of the cube, another chunking or the same data rebuilt give the
same hashes.

:func:`seen_share` hashes the observations an evaluation hides in the same way: those whose hash is at most
the sketch's threshold (its largest hash) are a uniform sample of them, and the share of that sample found
in the sketch estimates the share of hidden observations the network trained on (exactly, when the
training cubes held at most ``k`` clear observations: then the sketch holds them all).

Both are dask reductions over the cube's blocks that return small results (at most ``k`` hashes, or three
counts), so they stay within memory for any cube.

Examples
--------
>>> import numpy as np, xarray as xr
>>> coords = {"time": np.arange(3).astype("datetime64[D]"), "y": np.arange(4.0), "x": np.arange(5.0)}
>>> valid = xr.DataArray(np.ones((3, 4, 5), bool), dims=("time", "y", "x"), coords=coords)
>>> trained = sketch(valid)
>>> seen_share(trained, valid).share          # every observation was trained on
1.0
>>> seen_share(trained, valid.assign_coords(x=valid.x + 10)).share    # other pixels: none
0.0
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from xrecon.errors import XreconError
from xrecon.rng import hash_bits

__all__ = ["DEFAULT_K", "LeakError", "ObservationSketch", "Seen", "crs_key", "seen_share", "sketch", "sketch_of"]

#: Hashes a sketch keeps: 128 KiB, and an estimate of the share seen to about 1 % when 10 % of a cube's
#: observations are hidden.
DEFAULT_K = 16384
_STREAM = 0x5EE7  # keys the observation hashes apart from every other use of xrecon.rng
_MAX = np.iinfo(np.uint64).max


class LeakError(XreconError):
    """An evaluation would score a network on observations it trained on (``evaluate(strict=True)``)."""


def crs_key(ds: xr.Dataset, optical: Hashable = "optical") -> str:
    """The CRS of a cube as a short, stable text ("EPSG:32631"; the WKT where no EPSG code fits; "" for none).

    Part of every observation's hash: two cubes in different CRSs never share observations, whatever their
    coordinate values. Read from the grid-mapping variable (a coordinate, or a data variable as in a cube
    reopened from Zarr), so the same cube gives the same text however it was opened.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> crs_key(synthetic_cube(ny=4, nx=4, crs="EPSG:32631"))
    'EPSG:32631'
    """
    from pyproj import CRS

    da = ds[optical] if optical in ds else None
    name = None if da is None else (da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping"))
    candidates = [n for n in (name, "spatial_ref", "crs") if n is not None and n in ds.variables]
    for n in candidates:
        attrs = ds[n].attrs
        text = attrs.get("crs_wkt") or attrs.get("spatial_ref")
        if text:
            try:
                crs = CRS.from_user_input(text)
            except Exception:  # not a CRS pyproj knows: the text itself still tells cubes apart
                return str(text)
            epsg = crs.to_epsg()
            return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()
    return ""


def _crs_seed(crs: str) -> int:
    """The hash seed of a CRS text: its bytes folded through the hash, so equal texts give equal seeds."""
    seed = _STREAM
    for chunk in np.frombuffer(crs.encode().ljust(-(-len(crs.encode()) // 8) * 8, b"\0"), dtype="<i8"):
        seed = int(hash_bits(seed, np.int64(chunk)).astype(np.int64))
    return seed


def _coordinate_bits(values: np.ndarray) -> np.ndarray:
    """Coordinate values -> int64 keys: float64 rounded to 1e-6 (so float32 and float64 copies of one grid,
    or a grid recomputed with other rounding, agree), as their bit patterns."""
    v = np.round(np.asarray(values, dtype=np.float64), 6) + 0.0  # + 0.0: -0.0 becomes 0.0
    return v.view(np.int64)


def _hashes(mask: np.ndarray, t_ns: np.ndarray, y: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """uint64 hashes of the True entries of a (T, Y, X) block with those dates and coordinate keys."""
    ti, yi, xi = np.nonzero(mask)
    return hash_bits(seed, t_ns[ti], y[yi], x[xi])


def _keys(valid: xr.DataArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dates in int64 ns, y keys, x keys) of a (time, y, x) array; positions where it has no coordinate."""
    def coord(dim: str) -> np.ndarray:
        return valid[dim].values if dim in valid.coords else np.arange(valid.sizes[dim])

    t = coord("time")
    t_ns = t.astype("datetime64[ns]").astype(np.int64) if np.issubdtype(t.dtype, np.datetime64) \
        else np.asarray(t, dtype=np.int64)
    return t_ns, _coordinate_bits(coord("y")), _coordinate_bits(coord("x"))


def _cells(func: Callable[..., Any], valid: xr.DataArray) -> Any:
    """``func(block, t_ns, y, x)`` for every spatial block of a (time, y, x) array (time whole), as a lazy
    object dask array with one cell per block. One array graph: a block's inputs are computed once, and
    shared work (such as a cloud hold-out's plan) once for all blocks."""
    import dask.array as dsa

    valid = valid.transpose("time", "y", "x")
    t_ns, y, x = _keys(valid)
    data = dsa.asarray(valid.data)
    data = data.rechunk({0: -1})
    cy, cx = data.chunks[1], data.chunks[2]

    def cell(block: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        out = np.empty((1, 1), dtype=object)
        out[0, 0] = func(np.asarray(block, dtype=bool), t_ns, ys, xs)
        return out

    return dsa.blockwise(cell, "yx", data, "tyx", dsa.from_array(y, chunks=(cy,)), "y",
                         dsa.from_array(x, chunks=(cx,)), "x", concatenate=True, dtype=object,
                         meta=np.empty((0, 0), object), adjust_chunks={"y": 1, "x": 1})


def _smallest(hashes: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` smallest distinct values, sorted."""
    hashes = np.unique(hashes)  # sorted
    return hashes[:k]


def _merge(parts: Sequence[tuple[np.ndarray, int]], k: int) -> tuple[np.ndarray, int]:
    return _smallest(np.concatenate([p[0] for p in parts]), k), int(sum(p[1] for p in parts))


@dataclass(frozen=True)
class ObservationSketch:
    """A bottom-k sketch of a set of clear observations (see the module docstring).

    Attributes
    ----------
    hashes : numpy.ndarray
        The ``k`` smallest observation hashes (uint64, sorted, distinct); all of them when there are fewer.
    count : int
        How many observations were sketched (counted once per cube they came from).
    k : int
        The sketch's capacity.
    """

    hashes: np.ndarray
    count: int
    k: int = DEFAULT_K

    @property
    def exact(self) -> bool:
        """True when the sketch holds every observation's hash (there were at most ``k``)."""
        return len(self.hashes) < self.k or self.count <= self.k

    @property
    def threshold(self) -> int:
        """Observations with a hash up to this are sampled; the largest kept hash (all of them when exact)."""
        return int(_MAX) if self.exact or not len(self.hashes) else int(self.hashes[-1])

    def merge(self, other: ObservationSketch) -> ObservationSketch:
        """The sketch of both sets (e.g. the cubes of a fine-tuned model and those of its initial weights)."""
        k = min(self.k, other.k)
        merged, count = _merge([(self.hashes, self.count), (other.hashes, other.count)], k)
        return ObservationSketch(merged, count, k)

    def to_plain(self) -> dict[str, Any]:
        """Plain values (a base64 string of the hashes), for checkpoint metadata and JSON files."""
        return {"format": "xrecon-observations", "version": 1, "k": int(self.k), "count": int(self.count),
                "hashes": base64.b64encode(np.ascontiguousarray(self.hashes, dtype="<u8").tobytes()).decode()}

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> ObservationSketch:
        """Read what :meth:`to_plain` wrote; XreconError for anything else."""
        try:
            if plain.get("format") != "xrecon-observations":
                raise ValueError("no format marker")
            hashes = np.frombuffer(base64.b64decode(plain["hashes"]), dtype="<u8").astype(np.uint64)
            return cls(hashes, int(plain["count"]), int(plain["k"]))
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise XreconError(f"not a sketch of training observations: {err}") from None


def sketch(valid: xr.DataArray, *, k: int = DEFAULT_K, crs: str = "") -> ObservationSketch:
    """The sketch of the True entries of a ``(time, y, x)`` bool array: the clear observations of a cube.

    Parameters
    ----------
    valid : xr.DataArray (time, y, x) of bool
        Lazy or not; read once, block by block.
    k : int
        Hashes kept.
    crs : str
        The cube's CRS (:func:`crs_key`), part of every hash.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise XreconError(f"k={k!r}: expected a positive number of hashes to keep")
    seed = _crs_seed(crs)

    def block(mask: np.ndarray, t_ns: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, int]:
        return _smallest(_hashes(mask, t_ns, y, x, seed), k), int(np.count_nonzero(mask))

    cells = _cells(block, valid)
    while cells.size > 1:  # a tree of merges: no task holds more than 64 blocks' hashes
        cells = cells.rechunk(8).map_blocks(_merge_cells, k=k, dtype=object, chunks=(1, 1))
    hashes, count = cells.compute()[0, 0]
    return ObservationSketch(hashes, count, k)


def _merge_cells(cells: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = _merge(list(cells.ravel()), k)
    return out


@dataclass(frozen=True)
class Seen:
    """How many of the hidden observations a sketched training set holds.

    Attributes
    ----------
    hidden : int
        Hidden observations.
    sampled : int
        Those whose hash falls below the sketch's threshold (all of them for an exact sketch).
    seen : int
        Sampled ones found in the sketch: trained on.
    """

    hidden: int
    sampled: int
    seen: int

    @property
    def share(self) -> float:
        """Estimated share of the hidden observations trained on (NaN when none was sampled)."""
        return self.seen / self.sampled if self.sampled else math.nan

    @property
    def exact(self) -> bool:
        return self.sampled == self.hidden

    def describe(self) -> str:
        """"96 % of the 78,310 hidden observations (estimated from a sample of 4,712)", or "(exactly)"."""
        if not self.sampled:
            return f"an unknown share of the {self.hidden:,} hidden observations (none fell in the sketch's sample)"
        how = "exactly" if self.exact else f"estimated from a sample of {self.sampled:,}"
        return f"{100 * self.share:.0f} % of the {self.hidden:,} hidden observations ({how})"


def seen_share(trained: ObservationSketch, hidden: xr.DataArray, *, crs: str = "") -> Seen:
    """How many of the True entries of ``hidden`` (time, y, x) were among the sketched observations.

    ``crs`` must be the hidden cube's CRS as :func:`crs_key` gives it (the training run recorded its own).
    Computes ``hidden`` block by block; the result is three counts.
    """
    seed, threshold = _crs_seed(crs), np.uint64(trained.threshold)
    table = trained.hashes

    def block(mask: np.ndarray, t_ns: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        h = _hashes(mask, t_ns, y, x, seed)
        sampled = h[h <= threshold]
        return np.array([h.size, sampled.size, np.count_nonzero(np.isin(sampled, table, assume_unique=False))])

    counts = np.sum(list(_cells(block, hidden).compute().ravel()), axis=0)
    return Seen(*(int(c) for c in counts))


def sketch_of(metadata: Mapping[Hashable, Any] | None) -> ObservationSketch | None:
    """The training sketch a checkpoint's (or an ensemble file's) metadata records, or None."""
    plain = (metadata or {}).get("observations")
    return None if plain is None else ObservationSketch.from_plain(plain)
