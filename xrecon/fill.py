"""The xarray/dask orchestration of a reconstruction: ``Dataset.recon.fill``.

Every method comes from one registry (:mod:`xrecon.methods`) and is wired by its footprint:

- **pixel** methods are mapped over the spatial chunks as they are: every chunk holds whole time series
  (``time`` and ``band`` whole, rechunked automatically) and :func:`xrecon.fill_blocks.fill_pixels` hands
  ``(pixels, time, band)`` slabs to the kernel;
- **patch** methods get ``map_overlap``-style blocks: each chunk plus ``halo`` pixels of its neighbours
  (NaN beyond the cube's edge) and its offset in the cube's grid; :func:`xrecon.fill_blocks.fill_patch` runs
  the kernel and trims the halo.

Both return one packed ``(time, K, y, x)`` block per chunk (every output, ``observed`` and ``gap_days``),
split lazily into the result's variables. The graph carries only a :class:`~xrecon.fill_blocks.FillSpec`
(the method, its frozen plan, times and flags); models are loaded inside the tasks through a
per-process cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from xrecon import methods
from xrecon._version import __version__
from xrecon.cube import AUTO_MASK, DEFAULT_SAR, Cube, validate
from xrecon.errors import CheckpointError, MethodError, XreconError
from xrecon.fill_blocks import FillSpec, check_reflectance_values, fill_patch, fill_pixels
from xrecon.memory import prepare as prepare_memory
from xrecon.memory import trimming
from xrecon.methods._common import check_edges
from xrecon.methods.registry import BuildRequest, Method
from xrecon.times import MAX_QUERY_TIMES, parse_query_times, to_ns

__all__ = ["FillSpec", "chunks_at_least", "fill"]


def _spatial_chunks(cube: Cube) -> dict[str, tuple[int, ...]] | None:
    for da in (cube.optical, cube.clear, cube.sar):
        if da is not None and da.chunks is not None:
            chunks = dict(zip(da.dims, da.chunks, strict=True))
            return {"y": chunks["y"], "x": chunks["x"]}
    return None


def _check_checkpoint(checkpoint: str | os.PathLike | None) -> tuple[str | None, str | None]:
    if checkpoint is None:
        return None, None
    path = os.path.abspath(os.fspath(checkpoint))
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {os.fspath(checkpoint)!r} does not exist; expected a model file")
    from xrecon.runtime import file_sha256

    return path, file_sha256(path)


def _resolve_method(method: Any, checkpoint: Any) -> tuple[Method, Any]:
    """A registered method by name, or a model object (saved to a file the graph can name)."""
    if isinstance(method, str):
        return methods.get(method), checkpoint
    name = getattr(method, "name", None)
    if not (hasattr(method, "save") and name in methods.checkpoint_methods()):
        raise MethodError(
            f"method must be a name among {methods.list_methods()} or an xrecon model; got {type(method).__name__}"
        )
    if checkpoint is not None:
        raise MethodError("give either a model object as method= or checkpoint=, not both")
    from xrecon.neural import model_to_checkpoint

    return methods.get(name), model_to_checkpoint(method)


def fill(
    ds: xr.Dataset,
    query_times: Any = None,
    *,
    method: str | Any = "linear",
    checkpoint: str | os.PathLike | None = None,
    optical: Hashable = "optical",
    sar: Hashable | None = DEFAULT_SAR,
    mask: Hashable | bool | None = AUTO_MASK,
    keep_observed: bool = True,
    edges: str = "hold",
    batch_size: int | None = None,
    device: str | None = None,
    gap_days: bool = False,
    max_query_times: int = MAX_QUERY_TIMES,
    **options: Any,
) -> xr.Dataset:
    """Reconstruct gap-free optical reflectance at the query times.

    See :meth:`xrecon.accessor.ReconAccessor.fill` for the parameters. Lazy whenever the cube is
    dask-backed: the result's spatial chunks are the input's, with ``time`` and ``band`` whole.
    """
    check_fill_arguments(keep_observed=keep_observed, gap_days=gap_days, batch_size=batch_size, device=device)
    cube = validate(ds, optical=optical, sar=sar, mask=mask)
    check_reflectance(cube.optical)
    spec_method, checkpoint = _resolve_method(method, checkpoint)
    ckpt_path, ckpt_hash = _check_checkpoint(checkpoint)
    check_edges(edges)
    query = parse_query_times(query_times, cube.times, max_query_times=max_query_times)
    plan = spec_method.prepare(BuildRequest(
        cube=cube, query_times=query, options=options, edges=edges, checkpoint=ckpt_path,
        checkpoint_sha256=ckpt_hash, batch_size=batch_size, device=device, keep_observed=bool(keep_observed),
    ))
    use_sar = plan.use_sar and cube.sar is not None
    spec = FillSpec(
        method=spec_method,
        plan=plan,
        times=to_ns(cube.times),
        query_times=to_ns(query),
        sar_times=to_ns(cube.sar_times) if use_sar else None,
        edges=edges,
        keep_observed=bool(keep_observed),
        has_mask=cube.clear is not None,
        gap_days=bool(gap_days),
    )
    prepare_memory()  # once per process: one malloc arena for the threads that will compute (xrecon.memory)
    variables = _graph(cube, spec)
    out = xr.Dataset(coords={"time": query}).assign(variables)
    return _finish(out, ds, cube, spec, ckpt_path, ckpt_hash, options)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        raise XreconError(f"{name}={value!r} ({type(value).__name__}): expected True or False")


def check_fill_arguments(*, keep_observed: Any = True, gap_days: Any = False, batch_size: Any = None,
                         device: Any = None) -> None:
    """XreconError for ``fill`` arguments of the wrong type, before anything is built."""
    _check_bool("keep_observed", keep_observed)
    _check_bool("gap_days", gap_days)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)
                                   or batch_size < 1):
        raise XreconError(f"batch_size={batch_size!r}: expected a positive integer (pixels per batch) or None")
    if device is not None and not isinstance(device, str) and type(device).__name__ != "device":
        raise XreconError(f"device={device!r}: expected a torch device name such as 'cpu' or 'cuda', or None")


_SAMPLE = 1 << 20


def check_reflectance(optical: xr.DataArray) -> None:
    """CubeError when in-memory reflectance looks like digital numbers (see ``fill_blocks.check_reflectance_values``).

    Only for numpy-backed cubes, where it costs a strided look at at most about a million values: a lazy
    cube is never computed here; its blocks are checked by the same rule when they are computed (and its
    integer encodings from metadata by ``validate``).
    """
    if optical.chunks is not None:
        return
    flat = np.asarray(optical.variable.data).reshape(-1)
    check_reflectance_values(flat[::max(1, flat.size // _SAMPLE)], optical.name)


def _block_task(*blocks: np.ndarray, spec: FillSpec, starts: tuple[tuple[int, ...], tuple[int, ...]],
                block_id: tuple[int, ...] | None = None) -> np.ndarray:
    """One dask task: a pixel block, or a patch block with its offset in the grid found from its position.

    When it is done, freed memory goes back to the system if it piled up (:func:`xrecon.memory.maybe_trim`):
    without that glibc may keep it, and a long threaded fill grows with the cube's area."""
    with trimming():
        if spec.method.footprint == "pixel":
            return fill_pixels(*blocks, spec=spec)
        h = spec.halo
        offset = (starts[0][block_id[-2]] - h, starts[1][block_id[-1]] - h)
        return fill_patch(*blocks, spec=spec, offset=offset)


def _graph(cube: Cube, spec: FillSpec) -> dict[str, xr.DataArray]:
    """Map the method over the spatial chunks (with a halo for patch methods); split the packed result."""
    h = spec.halo
    arrays = [cube.optical.transpose("time", "band", "y", "x")]
    fills: list[Any] = [np.nan]  # beyond the cube's edge: not observed
    if cube.clear is not None:
        arrays.append(cube.clear.transpose("time", "y", "x"))
        fills.append(False)
    if spec.plan.use_sar:
        arrays.append(cube.sar.transpose("sar_time", "sar_band", "y", "x"))
        fills.append(np.nan)
    n_query, n_band = len(spec.query_times), len(cube.bands)
    n_packed = n_band * len(spec.method_outputs) + 1 + int(spec.gap_days)
    chunks_yx = _spatial_chunks(cube)
    if chunks_yx is None:  # in memory: one block
        blocks = [np.asarray(a.values) for a in arrays]
        if h:
            blocks = [np.pad(b, [(0, 0)] * (b.ndim - 2) + [(h, h), (h, h)], constant_values=f)
                      for b, f in zip(blocks, fills, strict=True)]
        packed = _block_task(*blocks, spec=spec, starts=((0,), (0,)), block_id=(0, 0, 0, 0))
    else:
        import dask.array as dsa

        # dask's overlap needs every chunk at least as wide as the halo; rechunk back afterwards
        work_yx = {d: chunks_at_least(c, h) for d, c in chunks_yx.items()}
        data = []
        for a, f in zip(arrays, fills, strict=True):
            d = a.chunk({**{dim: -1 for dim in a.dims[:-2]}, **work_yx}).data
            if h:
                d = _with_halo(d, h, f)
            data.append(d)
        starts = tuple(tuple(int(s) for s in np.cumsum((0, *work_yx[d][:-1]))) for d in ("y", "x"))
        packed = dsa.map_blocks(
            _block_task, *data, spec=spec, starts=starts, dtype=np.float32,
            chunks=((n_query,), (n_packed,), work_yx["y"], work_yx["x"]),
            meta=np.empty((0, 0, 0, 0), np.float32), token=f"xrecon-{spec.method.name}",
        )
        if work_yx != chunks_yx:
            packed = packed.rechunk({2: chunks_yx["y"], 3: chunks_yx["x"]})
    coords = {"y": cube.optical["y"].variable, "x": cube.optical["x"].variable, "band": cube.optical["band"].variable}
    spatial = {"y": coords["y"], "x": coords["x"]}
    variables = {}
    for k, name in enumerate(spec.method_outputs):
        variables[name] = xr.DataArray(packed[:, k * n_band:(k + 1) * n_band], dims=("time", "band", "y", "x"),
                                       coords=coords)
    k = n_band * len(spec.method_outputs)
    variables["observed"] = xr.DataArray(packed[:, k] > 0.5, dims=("time", "y", "x"), coords=spatial)
    if spec.gap_days:
        variables["gap_days"] = xr.DataArray(packed[:, k + 1], dims=("time", "y", "x"), coords=spatial)
    return variables


def _with_halo(d: Any, h: int, fill: Any) -> Any:
    """``d`` with ``h`` pixels of the neighbouring chunks around every chunk of its last two axes.

    ``fill`` beyond the array's edge. dask's overlap refuses a depth larger than the array, so an axis
    in one chunk (such as a cube narrower than the halo) is padded instead: it has no neighbours.
    """
    import dask.array as dsa

    axes = (d.ndim - 2, d.ndim - 1)
    single = [ax for ax in axes if len(d.chunks[ax]) == 1]
    if single:
        widths = [(h, h) if ax in single else (0, 0) for ax in range(d.ndim)]
        d = dsa.pad(d, widths, mode="constant", constant_values=fill).rechunk({ax: -1 for ax in single})
    depth = {ax: h for ax in axes if ax not in single}
    if depth:
        d = dsa.overlap.overlap(d, depth=depth, boundary={ax: fill for ax in depth})
    return d


def chunks_at_least(chunks: tuple[int, ...], size: int) -> tuple[int, ...]:
    """The chunks, or uniform chunks of ``size`` when one is smaller (dask's overlap needs that)."""
    if min(chunks) >= size:
        return tuple(chunks)
    total = sum(chunks)
    n = total // size
    return (size,) * (n - 1) + (total - size * (n - 1),) if n > 1 else (total,)


def _finish(
    out: xr.Dataset,
    ds: xr.Dataset,
    cube: Cube,
    spec: FillSpec,
    checkpoint: str | None,
    checkpoint_sha256: str | None,
    options: Mapping[str, Any],
) -> xr.Dataset:
    """Coordinates, CRS and provenance."""
    # Coordinates on y/x only (lat/lon, the CRS variable) come along; anything on time or band does not.
    keep = {
        name: coord
        for name, coord in cube.optical.coords.items()
        if name not in out.coords and set(coord.dims) <= {"y", "x"}
    }
    out = out.assign_coords(keep)
    out["optical"].attrs = {
        k: v for k, v in cube.optical.attrs.items() if k in ("grid_mapping", "long_name", "units")
    }
    out["optical"].attrs.setdefault("long_name", "surface reflectance")
    grid_mapping = cube.optical.attrs.get("grid_mapping") or cube.optical.encoding.get("grid_mapping")
    if grid_mapping is None and "spatial_ref" in out.coords:
        grid_mapping = "spatial_ref"
    if grid_mapping is not None and grid_mapping in ds.variables and grid_mapping not in out.coords:
        # A cube reopened from Zarr holds its CRS variable as a data variable: carry it as a coordinate.
        out = out.assign_coords({grid_mapping: ds[grid_mapping].variable})
    if grid_mapping is not None:
        for name in out.data_vars:
            out[name].attrs["grid_mapping"] = grid_mapping
    out["observed"].attrs["long_name"] = "value is a clear observation passed through"
    if "gap_days" in out:
        out["gap_days"].attrs.update(long_name="days to the nearest clear observation", units="days")
    out.attrs = {
        "method": spec.method.name,
        "options": json.dumps({k: v for k, v in sorted(options.items())}, default=str),
        "edges": spec.edges,
        "keep_observed": int(spec.keep_observed),
        "checkpoint": "" if checkpoint is None else os.path.basename(checkpoint),
        "checkpoint_sha256": checkpoint_sha256 or "",
        # the clear mask combined with the optical NaNs ("" = none: clear means all bands finite)
        "mask": "" if cube.mask_name is None else str(cube.mask_name),
        "xrecon_version": __version__,
    }
    # Nothing inherited from the input store's encoding (chunks, another Zarr format's codecs) may reach
    # a plain ``out.to_zarr(...)``; band names as variable-length strings, which Zarr v3 specifies
    # (fixed-width unicode has no v3 specification and warns on every write).
    out = out.drop_encoding()
    if "band" in out.coords and out["band"].dtype.kind in "UT":
        out = out.assign_coords(band=out["band"].astype(object))
    return out
