"""Building a cube from STAC items: Sentinel-2 L2A (optical + SCL) and Sentinel-1 (SAR), lazily.

:func:`from_stac` reads the items' assets with `stackstac <https://stackstac.readthedocs.io>`_ (imported
only when it is called: install it with ``pip install xrecon[stac]``) and returns a cube that follows the
conventions of :mod:`xrecon.cube`:

* ``optical`` ``(time, band, y, x)``: float32 reflectance, decoded item by item with the scale and offset of
  the asset's ``raster:bands`` where the item gives them, otherwise with the Sentinel-2 rule from
  ``s2:processing_baseline`` (``DN * 1e-4``, and ``- 0.1`` from baseline 04.00 on), never both; nodata NaN;
* ``clear`` ``(time, y, x)``: bool, from the SCL asset through :func:`xrecon.masks.scl_clear`;
* ``sar`` ``(sar_time, sar_band, y, x)``: float32 backscatter in dB (``10 log10`` of linear power) from one
  relative orbit, on the optical grid.

Items of one solar day (neighbouring tiles of one pass, slices of one Sentinel-1 pass) become one date
(``groupby="solar_day"``, as odc-stac groups them): each item is decoded on its own first, then the items are
mosaicked pixel by pixel, the first item (in the order ``mosaic=`` names) that has every band there winning.

Nothing is read but the items' metadata until the cube is computed.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xrecon.errors import CubeError
from xrecon.masks import DEFAULT_MASK, MASK_ATTR, SCL_CLEAR_DEFAULT, scl_clear

__all__ = ["from_stac", "solar_day", "StacError", "S2_BASELINE_OFFSET_FROM", "S2_SCALE", "S2_OFFSET"]

#: Sentinel-2 L2A reflectance scale: reflectance = DN * 1e-4 (+ offset).
S2_SCALE = 1e-4
#: The offset applied from processing baseline 04.00 on (2022-01-25): -1000 DN, i.e. -0.1 reflectance.
S2_OFFSET = -0.1
#: The first processing baseline with the -1000 DN offset.
S2_BASELINE_OFFSET_FROM = (4, 0)
#: Sentinel-2 L2A digital number meaning "no data", used when an item's ``raster:bands`` gives none.
S2_NODATA = 0

# One item per chunk as stackstac reads them, every band of it (the mosaic needs them together).
_DEFAULT_CHUNKS = {"time": 1, "band": -1, "y": 1024, "x": 1024}
#: The orders ``from_stac(mosaic=...)`` knows for the items of one date.
MOSAIC_ORDERS = ("first", "least-cloudy")


class StacError(CubeError):
    """STAC items that cannot be turned into a cube: none, a missing asset, mixed CRSs, unknown decoding."""


# ---------------------------------------------------------------------------------------------- items


def _as_dicts(items: Any, role: str) -> list[dict]:
    """Plain-dict copies of pystac Items / ItemCollections / dicts / a FeatureCollection dict."""
    if items is None:
        raise StacError(f"{role}=None: expected STAC items (pystac Items or dicts), e.g. from pystac_client search")
    if isinstance(items, Mapping):
        if items.get("type") == "FeatureCollection":
            items = items.get("features", [])
        else:
            items = [items]
    elif hasattr(items, "items") and not isinstance(items, Iterable):  # a pystac_client ItemSearch
        items = items.items()
    elif hasattr(items, "to_dict") and hasattr(items, "assets"):  # a single pystac.Item
        items = [items]
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise StacError(f"{role}: expected a list of STAC items (pystac Items or dicts), got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if hasattr(item, "to_dict") and not isinstance(item, Mapping):
            item = item.to_dict()
        if not isinstance(item, Mapping) or "assets" not in item or "properties" not in item:
            raise StacError(
                f"{role}[{i}] is a {type(item).__name__} without 'assets' and 'properties'; expected a STAC item "
                "(a pystac.Item or its dict)"
            )
        item = dict(item)
        props = dict(item["properties"])
        _fill_epsg(props)
        item["properties"] = props
        assets = {}
        for key, asset in item["assets"].items():
            asset = dict(asset)
            _fill_epsg(asset)
            assets[key] = asset
        item["assets"] = assets
        out.append(item)
    if not out:
        raise StacError(f"{role}: no STAC items; expected at least one (check the search's bbox, dates and filters)")
    return out


def _fill_epsg(d: dict) -> None:
    # stackstac reads proj:epsg; projection extension v2 items give proj:code = "EPSG:32633" instead.
    code = d.get("proj:code")
    if d.get("proj:epsg") is None and isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            d["proj:epsg"] = int(code.split(":", 1)[1])
        except ValueError:
            pass


def _item_id(item: dict) -> str:
    return str(item.get("id", "?"))


def _check_assets(items: list[dict], keys: Sequence[str], role: str, hint: str) -> None:
    for item in items:
        missing = [k for k in keys if k not in item["assets"]]
        if missing:
            raise StacError(
                f"{role} item {_item_id(item)!r} has no asset {missing[0]!r}"
                + (f" (nor {missing[1:]})" if len(missing) > 1 else "")
                + f"; its assets are {sorted(item['assets'])}. Expected every item to have the assets {list(keys)}"
                + hint
            )


def _epsg_of(items: list[dict], keys: Sequence[str]) -> set[int]:
    found = set()
    for item in items:
        for k in keys:
            e = item["assets"][k].get("proj:epsg", item["properties"].get("proj:epsg"))
            if e is not None:
                found.add(int(e))
    return found


def _resolve_epsg(items: list[dict], keys: Sequence[str], epsg: int | None) -> int:
    if epsg is not None:
        return int(epsg)
    found = _epsg_of(items, keys)
    if len(found) > 1:
        raise StacError(
            f"the items are in {len(found)} CRSs (EPSG {sorted(found)}); pass epsg=<code> to reproject them all "
            "to one grid (e.g. the UTM zone covering most of the area)"
        )
    if not found:
        raise StacError("the items give no proj:epsg (or proj:code); pass epsg=<code> for the output grid")
    return found.pop()


def _raster_band(asset: dict) -> dict:
    rb = asset.get("raster:bands")
    if isinstance(rb, list) and rb and isinstance(rb[0], Mapping):
        return dict(rb[0])
    return {}


def _parse_baseline(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    text = str(value).strip().lstrip("Nn")
    try:
        if "." in text:
            major, minor = text.split(".", 1)
            return int(major), int(minor[:2] or 0)
        if text.isdigit() and len(text) == 4:  # "0400" as in the product name (N0400)
            return int(text[:2]), int(text[2:])
        return int(float(text)), 0
    except ValueError:
        return None


def _optical_decoding(item: dict, band: str, scale: float | None, offset: float | None,
                      nodata: float | None) -> tuple[float, float, float]:
    """(scale, offset, nodata) of one item's band: raster:bands, else the S2 baseline rule (never both)."""
    rb = _raster_band(item["assets"][band])
    nod = nodata if nodata is not None else rb.get("nodata")
    if scale is not None:  # the caller's decoding, for every item
        return float(scale), float(offset or 0.0), _float_or_nan(S2_NODATA if nod is None else nod)
    if "scale" in rb or "offset" in rb:
        return float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0)), _float_or_nan(nod)
    baseline = _parse_baseline(item["properties"].get("s2:processing_baseline"))
    if baseline is not None:
        off = S2_OFFSET if baseline >= S2_BASELINE_OFFSET_FROM else 0.0
        return S2_SCALE, off, _float_or_nan(S2_NODATA if nod is None else nod)
    raise StacError(
        f"item {_item_id(item)!r}, band {band!r}: neither raster:bands scale/offset nor s2:processing_baseline, "
        "so its digital numbers cannot be decoded to reflectance; expected one of them on the item, or pass "
        "scale= (and offset=) to from_stac"
    )


def _float_or_nan(v: Any) -> float:
    if v is None:
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _select_orbit(items: list[dict], orbit: int | str | None) -> tuple[list[dict], int | None]:
    orbits = [item["properties"].get("sat:relative_orbit") for item in items]
    if orbit == "any":
        return items, None
    if orbit is not None:
        keep = [it for it, o in zip(items, orbits, strict=True) if o is not None and int(o) == int(orbit)]
        if not keep:
            known = sorted({int(o) for o in orbits if o is not None})
            raise StacError(f"orbit={orbit!r}: no SAR item has sat:relative_orbit {orbit}; the items have {known}")
        return keep, int(orbit)
    lacking = [_item_id(it) for it, o in zip(items, orbits, strict=True) if o is None]
    if lacking:
        raise StacError(
            f"SAR items {lacking[:5]} have no sat:relative_orbit, so one orbit cannot be chosen; expected it on every "
            "SAR item (pass orbit=<number> to keep one, or orbit='any' to mix geometries knowingly)"
        )
    counts = Counter(int(o) for o in orbits)
    # The most frequent orbit; on a tie the lowest number, so that the choice is reproducible.
    best = min(counts, key=lambda o: (-counts[o], o))
    return [it for it, o in zip(items, orbits, strict=True) if int(o) == best], best


# ---------------------------------------------------------------------------------------------- grids


def _chunksize(chunks: Mapping[str, int] | int | None, time_key: str, band_key: str) -> tuple[int, int, int, int]:
    if chunks is None:
        c = dict(_DEFAULT_CHUNKS)
    elif isinstance(chunks, int | np.integer) and not isinstance(chunks, bool):
        c = {**_DEFAULT_CHUNKS, "y": int(chunks), "x": int(chunks)}
    elif isinstance(chunks, Mapping):
        allowed = {"time", "band", "y", "x", "sar_time", "sar_band"}
        unknown = sorted(set(map(str, chunks)) - allowed)
        if unknown:
            raise StacError(
                f"chunks={dict(chunks)!r}: unknown dimensions {unknown}; expected some of {sorted(allowed)}"
            )
        c = {**_DEFAULT_CHUNKS, **{k: v for k, v in chunks.items() if k in _DEFAULT_CHUNKS}}
        if time_key in chunks:
            c["time"] = chunks[time_key]
        if band_key in chunks:
            c["band"] = chunks[band_key]
    else:
        raise StacError(f"chunks={chunks!r}: expected a dict such as {{'x': 512, 'y': 512}}, an int, or None")
    return tuple(int(c[k]) for k in ("time", "band", "y", "x"))  # type: ignore[return-value]


def _stack(stackstac: Any, items: list[dict], assets: list[str], role: str,
           **kwargs: Any) -> tuple[xr.DataArray, list[dict]]:
    """The stackstac array (dimension coordinates only) and the items in its (time-sorted) order."""
    ids = [_item_id(it) for it in items]
    dup_ids = sorted({i for i in ids if ids.count(i) > 1})
    if dup_ids:
        raise StacError(f"{role} items have duplicate ids {dup_ids[:5]}; expected each item once")
    by_id = dict(zip(ids, items, strict=True))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)  # affine's `*` in stackstac
            da = stackstac.stack(
                items, assets=assets, dtype=np.dtype("float32"), fill_value=np.float32(np.nan), rescale=False,
                properties=False, band_coords=False, sortby_date="asc", xy_coords="center", **kwargs,
            )
    except ValueError as err:
        raise StacError(f"cannot stack the {role} items: {err}") from err
    ordered = [by_id[str(i)] for i in np.asarray(da["id"].values).tolist()]
    # Keep only the dimension coordinates: the item ids and stackstac's metadata become attrs below.
    da = da.drop_vars([c for c in da.coords if c not in da.dims])
    return da, ordered


def _unique_times(da: xr.DataArray, role: str) -> pd.DatetimeIndex:
    times = pd.DatetimeIndex(da["time"].values).as_unit("ns")
    if times.has_duplicates:
        dups = times[times.duplicated()].unique()
        raise StacError(
            f"{role} items share acquisition times {[str(t) for t in dups[:3]]} (adjacent tiles or reprocessed "
            "copies of one pass); with groupby=None every item must have its own time: pass "
            "groupby='solar_day' to mosaic the items of one day, or keep one tile per date"
        )
    return times


# ---------------------------------------------------------------------------------------------- mosaics


def _longitude(item: dict) -> float | None:
    """The longitude of an item's centre: from its bbox, else its geometry; None when it has neither."""
    bbox = item.get("bbox")
    if isinstance(bbox, Sequence) and len(bbox) in (4, 6):
        west, east = float(bbox[0]), float(bbox[len(bbox) // 2])
        if west > east:  # across the antimeridian
            east += 360.0
        return (west + east) / 2.0
    geometry = item.get("geometry")
    if isinstance(geometry, Mapping) and geometry.get("coordinates") is not None:
        xs = np.asarray(_flatten(geometry["coordinates"]), dtype="float64")
        if xs.size:
            return float((xs.min() + xs.max()) / 2.0)
    return None


def _flatten(coords: Any) -> list[float]:
    """The x (longitude) of every position of a GeoJSON coordinates array."""
    if isinstance(coords, Sequence) and coords and not isinstance(coords[0], Sequence):
        return [float(coords[0])]
    return [x for part in coords for x in _flatten(part)] if isinstance(coords, Sequence) else []


def solar_day(time: Any, longitude: float | None) -> pd.Timestamp:
    """The local solar day of an acquisition: UTC time plus 4 minutes per degree east, as a day.

    The rule odc-stac's ``groupby="solar_day"`` follows: one satellite pass crosses a tile boundary seconds
    apart but may cross midnight UTC far from Greenwich; the local solar day is the same for the whole pass.
    Without a longitude the UTC day is used.

    Examples
    --------
    >>> str(solar_day("2022-03-01T23:50:00Z", 150.0).date())   # 10 h east: already 2 March there
    '2022-03-02'
    >>> str(solar_day("2022-03-01T23:50:00Z", None).date())
    '2022-03-01'
    """
    t = pd.Timestamp(time)
    t = t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t
    if longitude is not None:
        t = t + pd.Timedelta(seconds=int(round(float(longitude) * 240.0)))
    return t.floor("D")


def _cloud_cover(item: dict) -> float:
    value = item["properties"].get("eo:cloud_cover")
    try:
        return float(value) if value is not None else float("inf")
    except (TypeError, ValueError):
        return float("inf")


def _groups(items: list[dict], times: pd.DatetimeIndex, groupby: str | None,
            mosaic: str) -> tuple[list[list[int]], pd.DatetimeIndex]:
    """The items (positions in ``items``) of each output date, in mosaic order, and each date's time.

    A date's time is the earliest acquisition of its items; the dates are in time order.
    """
    if groupby is None:
        return [[i] for i in range(len(items))], times
    keys = [solar_day(t, _longitude(it)) for t, it in zip(times, items, strict=True)]
    by_day: dict[pd.Timestamp, list[int]] = {}
    for i, key in enumerate(keys):
        by_day.setdefault(key, []).append(i)

    def rank(i: int) -> tuple:
        first = (_cloud_cover(items[i]),) if mosaic == "least-cloudy" else ()
        return (*first, times[i], _item_id(items[i]))

    groups = [sorted(members, key=rank) for members in by_day.values()]
    groups.sort(key=lambda g: min(times[i] for i in g))
    return groups, pd.DatetimeIndex([min(times[i] for i in g) for g in groups]).as_unit("ns")


def _first_valid(block: np.ndarray) -> np.ndarray:
    """``(k, c, y, x)`` -> ``(1, c, y, x)``: per pixel, the first of the k items with all c channels finite.

    Where none has them all, the first item's values (whatever it has) are kept.
    """
    valid = np.isfinite(block).all(axis=1)  # (k, y, x)
    pick = np.where(valid.any(axis=0), valid.argmax(axis=0), 0)  # (y, x)
    return np.take_along_axis(block, pick[None, None], axis=0)


def _mosaic(da: xr.DataArray, groups: list[list[int]], times: pd.DatetimeIndex,
            time_chunk: int) -> xr.DataArray:
    """One date per group of items along ``time``, lazily: ``_first_valid`` over each group's block."""
    if all(len(g) == 1 for g in groups):
        return da.isel(time=[g[0] for g in groups]).assign_coords(time=times)
    import dask.array

    data = da.data if isinstance(da.data, dask.array.Array) else dask.array.from_array(da.data)
    data = data[[i for g in groups for i in g]]
    data = data.rechunk({0: tuple(len(g) for g in groups), 1: -1})
    out = data.map_blocks(_first_valid, chunks=((1,) * len(groups), *data.chunks[1:]), dtype=data.dtype,
                          token="xrecon-mosaic")
    if time_chunk != 1:
        out = out.rechunk({0: time_chunk})
    coords = {name: c for name, c in da.coords.items() if "time" not in c.dims}
    return xr.DataArray(out, dims=da.dims, coords={**coords, "time": times}, attrs=da.attrs)


def _group_ids(items: list[dict], groups: list[list[int]]) -> list[str]:
    """Per date, the id of its item, or the ids of its mosaic in order joined by ' + '."""
    return [" + ".join(_item_id(items[i]) for i in g) for g in groups]


# ---------------------------------------------------------------------------------------------- main


def from_stac(
    items: Any,
    *,
    bands: Sequence[str],
    mask: str | None = "SCL",
    sar_items: Any = None,
    sar_bands: Sequence[str] = ("vv", "vh"),
    resolution: float | tuple[float, float] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    bbox_latlon: tuple[float, float, float, float] | None = None,
    epsg: int | None = None,
    chunks: Mapping[str, int] | int | None = None,
    orbit: int | str | None = None,
    clear_classes: Iterable[int] = SCL_CLEAR_DEFAULT,
    scale: float | None = None,
    offset: float | None = None,
    nodata: float | None = None,
    sar_nodata: float | None = None,
    groupby: str | None = "solar_day",
    mosaic: str = "first",
) -> xr.Dataset:
    """A lazy cube from Sentinel-2 L2A (and optionally Sentinel-1) STAC items.

    Parameters
    ----------
    items : list of pystac.Item or dict, pystac.ItemCollection, or a FeatureCollection dict
        The optical items, e.g. ``pystac_client.Client.open(url).search(...).item_collection()``.
    bands : list of str
        Optical asset keys, in order (``["B02", "B03", "B04", "B08"]``, or ``["blue", ...]`` in catalogues
        that name assets so); they become the ``band`` coordinate.
    mask : str or None
        The scene classification asset turned into ``clear`` by :func:`xrecon.masks.scl_clear`; None: no mask.
    sar_items : items, optional
        Sentinel-1 items whose assets hold backscatter in linear power (e.g. Planetary Computer's
        ``sentinel-1-rtc``); decoded to dB, one relative orbit kept, reprojected on the optical grid.
    sar_bands : list of str
        SAR asset keys; they become the ``sar_band`` coordinate.
    resolution : float or (x, y), optional
        Pixel size in units of the output CRS; default: the items' own (their finest).
    bbox : (minx, miny, maxx, maxy), optional
        Bounds in the output CRS (``epsg``); default: the union of the items' footprints.
    bbox_latlon : (west, south, east, north), optional
        Bounds in longitude/latitude instead, as in a STAC search.
    epsg : int, optional
        The output CRS; required when the items are in several CRSs (several UTM zones).
    chunks : dict or int, optional
        Dask chunks by dimension name (``{"x": 512, "y": 512}``, and ``time``/``band``, ``sar_time``/``sar_band``);
        an int is the spatial chunk size. Default: one date, every band, 1024 x 1024 px.
    orbit : int or "any", optional
        The Sentinel-1 relative orbit to keep; default the most frequent ``sat:relative_orbit`` of the SAR items
        (ties: the lowest number). ``"any"`` keeps all orbits (mixed viewing geometries).
    clear_classes : iterable of int
        SCL classes counted as clear (:data:`xrecon.masks.SCL_CLEAR_DEFAULT`).
    scale, offset : float, optional
        Decode every optical item with these instead of the items' metadata.
    nodata, sar_nodata : float, optional
        Digital numbers meaning "no data" when the items' ``raster:bands`` give none (optical default 0, the
        Sentinel-2 L2A fill value). Pixels flagged nodata in the files themselves are masked as well.
    groupby : "solar_day" or None
        ``"solar_day"``: the items acquired on one local solar day (:func:`solar_day`: the item's time and the
        longitude of its centre; neighbouring tiles of one pass, slices of one Sentinel-1 pass) become one
        date, timed at its earliest item. None: one date per item (two items at one time are then an error).
    mosaic : "first" or "least-cloudy"
        The order in which the items of one date are taken, pixel by pixel: the first item that has every band
        (and the SCL) at a pixel gives that pixel, all its bands and its clear flag. ``"first"``: by
        acquisition time, then item id; ``"least-cloudy"``: by ascending ``eo:cloud_cover`` (items without it
        last), then time and id. SAR items are always taken by time. Each item is decoded (its own scale,
        offset, processing baseline and nodata) before the items are mosaicked.

    Returns
    -------
    xarray.Dataset
        ``optical`` (float32 reflectance), ``clear`` (bool) and ``sar`` (float32 dB), dask-backed, with the
        CRS and transform written the rioxarray way (``spatial_ref`` coordinate, pixel-centre ``x``/``y``).

    Raises
    ------
    StacError
        (an :class:`xrecon.errors.CubeError`) for no items, a missing asset, several CRSs without ``epsg=``,
        items whose digital numbers cannot be decoded, SAR orbits that cannot be chosen, an unknown
        ``groupby`` or ``mosaic``.

    Examples
    --------
    Two tiles of one pass, seconds apart, come out as one date (here without reading any pixel):

    >>> import numpy as np, rasterio, tempfile
    >>> from rasterio.transform import from_origin
    >>> folder, items = tempfile.mkdtemp(), []
    >>> for k, x0 in enumerate([500000.0, 500040.0]):   # 8 x 8 px each, overlapping by 4 columns
    ...     href = f"{folder}/B04_{k}.tif"
    ...     with rasterio.open(href, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16",
    ...                        crs="EPSG:32633", transform=from_origin(x0, 4000080.0, 10, 10)) as dst:
    ...         dst.write(np.full((1, 8, 8), 1500 + 1000 * k, dtype="uint16"))
    ...     items.append({"type": "Feature", "stac_version": "1.0.0", "id": f"T{k}", "bbox": [15, 36, 15.1, 36.1],
    ...                   "geometry": None, "links": [], "properties": {
    ...                       "datetime": f"2022-03-01T10:00:0{k}Z", "proj:epsg": 32633,
    ...                       "s2:processing_baseline": ["03.01", "04.00"][k]},
    ...                   "assets": {"B04": {"href": href, "proj:shape": [8, 8],
    ...                                      "proj:transform": [10, 0, x0, 0, -10, 4000080.0]}}})
    >>> cube = from_stac(items, bands=["B04"], mask=None)
    >>> cube.optical.shape, cube.attrs["stac_items"]
    ((1, 1, 8, 12), ['T0 + T1'])
    >>> np.unique(cube.optical.values.astype(float).round(4)).tolist()   # 1500 DN (03.01), 2500 DN (04.00)
    [0.15]
    """
    try:
        import stackstac
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("from_stac reads STAC items with stackstac: pip install 'xrecon[stac]'") from err
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    if isinstance(bands, str) or not bands:
        raise StacError(f"bands={bands!r}: expected a list of optical asset keys, e.g. ['B02', 'B03', 'B04', 'B08']")
    bands = [str(b) for b in bands]
    if len(set(bands)) != len(bands):
        raise StacError(f"bands={bands!r}: duplicate asset keys; expected each band once")
    if mask is not None and mask in bands:
        raise StacError(f"mask={mask!r} is also among bands={bands}; expected the mask asset apart from the bands")
    if bbox is not None and bbox_latlon is not None:
        raise StacError("give bbox= (output CRS) or bbox_latlon= (longitude/latitude), not both")
    if groupby not in ("solar_day", None):
        raise StacError(f"groupby={groupby!r}: expected 'solar_day' (one date per local solar day) or None")
    if mosaic not in MOSAIC_ORDERS:
        raise StacError(f"mosaic={mosaic!r}: expected one of {list(MOSAIC_ORDERS)}")
    opt_items = _as_dicts(items, "items")
    keys = bands + ([mask] if mask is not None else [])
    _check_assets(opt_items, keys, "optical", " (pass mask=None for items without a scene classification)"
                  if mask is not None else "")
    out_epsg = _resolve_epsg(opt_items, keys, epsg)

    stack_kwargs: dict[str, Any] = {"epsg": out_epsg}
    if resolution is not None:
        stack_kwargs["resolution"] = resolution
    if bbox is not None:
        stack_kwargs["bounds"] = tuple(bbox)
    if bbox_latlon is not None:
        stack_kwargs["bounds_latlon"] = tuple(bbox_latlon)
    for it in opt_items:
        _item_datetime(it)
    size = _chunksize(chunks, "time", "band")
    raw, sorted_items = _stack(stackstac, opt_items, keys, "optical", chunksize=size, **stack_kwargs)
    spec = raw.attrs["spec"]
    item_times = _unique_times(raw, "optical") if groupby is None else pd.DatetimeIndex(raw["time"].values)
    groups, times = _groups(sorted_items, item_times.as_unit("ns"), groupby, mosaic)
    raw = raw.drop_vars("time")  # positions of items from here on; the mosaic gives the dates their times

    # Each item decoded with its own scale, offset and nodata, before any two are mixed.
    table = np.array([[_optical_decoding(it, b, scale, offset, nodata) for b in bands] for it in sorted_items],
                     dtype="float64")  # (item, band, 3)
    scales, offsets, nodatas = (xr.DataArray(table[..., k].astype("float32"), dims=("time", "band"),
                                             coords={"band": bands}) for k in range(3))
    dn = raw.sel(band=bands)
    decoded = (dn * scales + offsets).where(dn != nodatas).astype("float32")
    if mask is not None:
        scl = raw.sel(band=[mask])
        decoded = xr.concat([decoded, scl.where(scl != 0)], "band")  # SCL 0 = no data: look at the next item
    mixed = _mosaic(decoded, groups, times, size[0])
    optical = mixed.isel(band=slice(0, len(bands))).transpose("time", "band", "y", "x")
    optical = optical.assign_coords(band=np.array(bands, dtype=object))
    optical.name = "optical"
    optical.attrs = {"long_name": "surface reflectance", "units": "1", "xrecon_decoded": 1}
    data_vars: dict[Hashable, xr.DataArray] = {"optical": optical}
    if mask is not None:
        clear = scl_clear(mixed.isel(band=len(bands)).drop_vars("band"), clear_classes).transpose("time", "y", "x")
        data_vars[DEFAULT_MASK] = clear
        optical.attrs[MASK_ATTR] = DEFAULT_MASK
    ds = xr.Dataset(data_vars)
    ds.attrs["stac_items"] = _group_ids(sorted_items, groups)
    ds.attrs["xrecon_decoding"] = "raster:bands scale/offset where given, else the Sentinel-2 processing baseline"
    if groupby is not None:
        ds.attrs["xrecon_mosaic"] = f"groupby={groupby}, mosaic={mosaic}: per pixel the first item with every band"

    if sar_items is not None:
        ds["sar"] = _sar(stackstac, sar_items, sar_bands, spec, chunks, orbit, sar_nodata, ds, groupby)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # affine's `*` in rioxarray
        ds = ds.rio.write_crs(f"EPSG:{out_epsg}")
        ds = ds.rio.write_transform(ds.rio.transform(recalc=True))
    return ds


def _item_datetime(item: dict) -> Any:
    props = item["properties"]
    value = props.get("datetime") or props.get("start_datetime")
    if value is None:
        raise StacError(f"item {_item_id(item)!r} has no datetime; expected an acquisition time in its properties")
    return value


def _sar(stackstac: Any, sar_items: Any, sar_bands: Sequence[str], spec: Any, chunks: Any, orbit: Any,
         sar_nodata: float | None, ds: xr.Dataset, groupby: str | None) -> xr.DataArray:
    if isinstance(sar_bands, str) or not sar_bands:
        raise StacError(f"sar_bands={sar_bands!r}: expected a list of SAR asset keys, e.g. ['vv', 'vh']")
    sar_bands = [str(b) for b in sar_bands]
    s_items = _as_dicts(sar_items, "sar_items")
    _check_assets(s_items, sar_bands, "SAR", " (pass sar_bands= with the asset keys of your SAR collection)")
    s_items, chosen = _select_orbit(s_items, orbit)
    for item in s_items:
        for b in sar_bands:
            rb = _raster_band(item["assets"][b])
            dtype = str(rb.get("data_type", "float32"))
            if dtype.startswith(("uint", "int")) and "scale" not in rb:
                raise StacError(
                    f"SAR item {_item_id(item)!r}, asset {b!r} holds {dtype} digital numbers; expected backscatter "
                    "in linear power (float), as in RTC collections. Decode DN products (amplitude, sentinel "
                    "values such as 65534) with xrecon.cube.from_bands(..., sar_decode=...) instead"
                )
    # Exactly the optical grid: same CRS, bounds and resolution, no snapping.
    for it in s_items:
        _item_datetime(it)
    size = _chunksize(chunks, "sar_time", "sar_band")
    raw, s_sorted = _stack(stackstac, s_items, sar_bands, "SAR", chunksize=size, epsg=spec.epsg,
                           resolution=spec.resolutions_xy, bounds=spec.bounds, snap_bounds=False)
    if raw.sizes["y"] != ds.sizes["y"] or raw.sizes["x"] != ds.sizes["x"]:  # pragma: no cover - defensive
        raise StacError(f"SAR grid {dict(raw.sizes)} differs from the optical grid {dict(ds.sizes)}")
    item_times = _unique_times(raw, "SAR") if groupby is None else pd.DatetimeIndex(raw["time"].values)
    groups, times = _groups(s_sorted, item_times.as_unit("ns"), groupby, "first")
    raw = raw.drop_vars("time").assign_coords(y=ds["y"].values, x=ds["x"].values)
    table = np.empty((len(s_sorted), len(sar_bands), 3), dtype="float64")
    for i, item in enumerate(s_sorted):
        for j, b in enumerate(sar_bands):
            rb = _raster_band(item["assets"][b])
            nod = sar_nodata if sar_nodata is not None else rb.get("nodata")
            table[i, j] = (float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0)), _float_or_nan(nod))
    scales, offsets, nodatas = (xr.DataArray(table[..., k].astype("float32"), dims=("time", "band"),
                                             coords={"band": sar_bands}) for k in range(3))
    power = (raw * scales + offsets).where(raw != nodatas)
    # Linear power -> dB; zero or negative power (no data, border noise) -> NaN rather than -inf.
    db = (10.0 * np.log10(power.where(power > 0))).astype("float32")
    db = _mosaic(db, groups, times, size[0])  # slices of one pass: each decoded, then the first valid
    db = db.rename({"time": "sar_time", "band": "sar_band"}).transpose("sar_time", "sar_band", "y", "x")
    db = db.assign_coords(sar_band=np.array(sar_bands, dtype=object))
    db.name = "sar"
    db.attrs = {"long_name": "backscatter", "units": "dB", "xrecon_decoded": 1,
                "stac_items": _group_ids(s_sorted, groups)}
    if chosen is not None:
        db.attrs["relative_orbit"] = chosen
    return db
