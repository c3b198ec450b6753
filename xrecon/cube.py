"""Building and validating cubes that follow xrecon's conventions.

A cube is an :class:`xarray.Dataset` with

* ``optical`` ``(time, band, y, x)``: surface reflectance, float, 0-1 units, NaN = not observed;
* optionally ``sar`` ``(sar_time, sar_band, y, x)``: backscatter in dB on its own time axis;
* optionally a clear mask ``(time, y, x)``, bool, True = clear.

Everything here reads coordinates and metadata only, so validating a lazy (dask-backed) cube never
computes its data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from xrecon.errors import CubeError
from xrecon.masks import DEFAULT_MASK, MASK_ATTR

__all__ = ["Cube", "validate", "resolve_mask", "from_bands", "whole_series_chunks", "decode", "dn_to_db",
           "DEFAULT_SAR", "DEFAULT_MASK", "AUTO_MASK", "MASK_ATTR"]

#: The default name of the SAR variable; a cube without it is an optical-only cube.
DEFAULT_SAR = "sar"
#: ``mask=`` value (the default everywhere) that uses the cube's own mask: see :func:`resolve_mask`.
AUTO_MASK = "auto"

_OPTICAL_DIMS = ("time", "band", "y", "x")
_SAR_DIMS = ("sar_time", "sar_band", "y", "x")


@dataclass(frozen=True)
class Cube:
    """A validated cube: the variables in canonical dimension order, and the parsed time axes.

    Attributes
    ----------
    optical : xarray.DataArray
        ``(time, band, y, x)``, float, sorted by time.
    clear : xarray.DataArray or None
        ``(time, y, x)`` bool user mask, or None (then clear = finite optical values).
    mask_name : str or None
        The name of the mask variable in the dataset, or None.
    sar : xarray.DataArray or None
        ``(sar_time, sar_band, y, x)`` float dB, sorted by time, or None.
    """

    optical: xr.DataArray
    clear: xr.DataArray | None
    sar: xr.DataArray | None
    #: The name of the mask variable used (``clear``), or None without a mask.
    mask_name: Hashable | None = None

    @property
    def times(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.optical["time"].values)

    @property
    def sar_times(self) -> pd.DatetimeIndex | None:
        return None if self.sar is None else pd.DatetimeIndex(self.sar["sar_time"].values)

    @property
    def bands(self) -> list[str]:
        return [str(b) for b in self.optical["band"].values]

    @property
    def sar_bands(self) -> list[str] | None:
        return None if self.sar is None else [str(b) for b in self.sar["sar_band"].values]


def _get_variable(ds: xr.Dataset, name: Hashable, role: str) -> xr.DataArray:
    if not isinstance(ds, xr.Dataset):
        raise CubeError(f"expected an xarray.Dataset as the cube, got {type(ds).__name__}")
    if name not in ds.data_vars:
        raise CubeError(
            f"the {role} variable {name!r} is not in the dataset; expected one of {sorted(map(str, ds.data_vars))}"
            f" (pass {role}=<name>)"
        )
    return ds[name]


def _check_dims(da: xr.DataArray, expected: tuple[str, ...], role: str) -> xr.DataArray:
    missing = [d for d in expected if d not in da.dims]
    extra = [d for d in da.dims if d not in expected]
    if missing or extra:
        raise CubeError(
            f"{role} variable {da.name!r} has dimensions {tuple(map(str, da.dims))}; expected {expected}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    return da.transpose(*expected)


def _check_time(da: xr.DataArray, dim: str, role: str) -> xr.DataArray:
    if dim not in da.coords:
        raise CubeError(f"{role} variable {da.name!r} has no {dim!r} coordinate; expected datetimes")
    values = da[dim].values
    if not np.issubdtype(values.dtype, np.datetime64):
        raise CubeError(
            f"the {dim!r} coordinate of {da.name!r} has dtype {values.dtype}; expected datetime64 "
            "(decode times with xr.decode_cf or pandas.to_datetime)"
        )
    if np.isnat(values).any():
        raise CubeError(f"the {dim!r} coordinate of {da.name!r} contains NaT; expected valid datetimes")
    index = pd.DatetimeIndex(values)
    if index.has_duplicates:
        dups = index[index.duplicated()].unique()
        raise CubeError(
            f"the {dim!r} coordinate of {da.name!r} has duplicate times {[str(t) for t in dups[:5]]}; "
            "expected unique times (merge or drop duplicate acquisitions first)"
        )
    if not index.is_monotonic_increasing:
        # sortby is a lazy isel, so sorting costs nothing until compute.
        da = da.sortby(dim)
    return da


def _check_float(da: xr.DataArray, role: str) -> None:
    if np.issubdtype(da.dtype, np.integer) or da.dtype == bool:
        raise CubeError(
            f"{role} variable {da.name!r} has integer dtype {da.dtype}; expected float reflectance in 0-1 "
            "units. Decode digital numbers with xrecon.cube.decode(da, scale=...) or "
            "xrecon.cube.from_bands(..., scale=...)"
        )
    if not np.issubdtype(da.dtype, np.floating):
        raise CubeError(f"{role} variable {da.name!r} has dtype {da.dtype}; expected a float dtype")


def _crs_text(ds: xr.Dataset, da: xr.DataArray) -> str | None:
    name = da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")
    if name is None or name not in ds.variables:
        return None
    attrs = ds[name].attrs
    return attrs.get("crs_wkt") or attrs.get("spatial_ref")


def _check_sar_grid(ds: xr.Dataset, opt: xr.DataArray, sar: xr.DataArray, sar_name: Hashable) -> None:
    # Variables of one Dataset share their y/x coordinates, so another grid shows as other spatial
    # dimensions or as another CRS.
    other_dims = [d for d in sar.dims if d not in _SAR_DIMS]
    if other_dims or not {"y", "x"} <= set(sar.dims):
        raise CubeError(
            f"sar variable {sar_name!r} is on another grid than optical {opt.name!r}: its dims are "
            f"{tuple(map(str, sar.dims))}; expected ('sar_time', 'sar_band', 'y', 'x') on the optical y/x grid "
            "(reproject SAR with rioxarray's reproject_match first)"
        )
    crs_opt, crs_sar = _crs_text(ds, opt), _crs_text(ds, sar)
    if crs_opt is not None and crs_sar is not None and crs_opt != crs_sar:
        raise CubeError(
            f"sar variable {sar_name!r} is on another grid than optical {opt.name!r}: its CRS differs; expected "
            "both in the same CRS (reproject SAR with rioxarray's reproject_match first)"
        )


def resolve_mask(ds: xr.Dataset, mask: Hashable | bool | None = AUTO_MASK, *,
                 optical: Hashable = "optical") -> Hashable | None:
    """The name of the clear mask to use, or None for no mask.

    - ``"auto"`` (the default of every xrecon function) or None: the cube's own mask, that is the
      variable named by the optical variable's ``attrs["xrecon_mask"]`` (set by :func:`from_bands`),
      else a variable named ``clear``; None when the cube has neither;
    - False: no mask, even when the cube has one;
    - a name: that variable (it must exist).

    Reads metadata only.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> ds = synthetic_cube(ny=4, nx=4)
    >>> resolve_mask(ds), resolve_mask(ds, False), resolve_mask(ds.drop_vars("clear"))
    ('clear', None, None)
    """
    if mask is False:
        return None
    if mask is True:
        raise CubeError("mask=True: expected 'auto' (the cube's own mask), False (none) or a mask variable name")
    if mask is not None and not (isinstance(mask, str) and mask == AUTO_MASK):
        if not isinstance(mask, Hashable) or isinstance(mask, int | float | np.number):
            raise CubeError(f"mask={mask!r}: expected 'auto', False or the name of a bool (time, y, x) variable")
        return mask
    if not isinstance(ds, xr.Dataset):
        raise CubeError(f"expected an xarray.Dataset as the cube, got {type(ds).__name__}")
    recorded = ds[optical].attrs.get(MASK_ATTR) if optical in ds.data_vars else None
    if recorded:
        if recorded not in ds.data_vars:
            raise CubeError(
                f"optical variable {optical!r} records its clear mask {recorded!r} (attrs[{MASK_ATTR!r}]), which is "
                f"not in the dataset; expected it beside {optical!r} (keep it when selecting variables), or pass "
                "mask=False (CLI --no-mask) to reconstruct without a mask"
            )
        return recorded
    if DEFAULT_MASK in ds.data_vars:
        return DEFAULT_MASK
    return None


def _check_unique_labels(da: xr.DataArray, dim: str, role: str) -> None:
    labels = [str(b) for b in np.asarray(da[dim].values).tolist()]
    seen, dups = set(), []
    for b in labels:
        if b in seen and b not in dups:
            dups.append(b)
        seen.add(b)
    if dups:
        raise CubeError(
            f"the {dim!r} coordinate of {role} variable {da.name!r} has duplicate names {dups}; expected unique "
            "band names (pass band_names= to from_bands, or rename with assign_coords)"
        )


def _check_spatial(da: xr.DataArray, role: str) -> None:
    for dim in ("y", "x"):
        if dim not in da.coords:
            continue
        values = np.asarray(da[dim].values)
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            raise CubeError(
                f"the {dim!r} coordinate of {role} variable {da.name!r} contains NaN or infinite values; expected "
                "finite pixel coordinates (fix the grid, e.g. with rioxarray's reproject, before filling)"
            )


def validate(
    ds: xr.Dataset,
    *,
    optical: Hashable = "optical",
    sar: Hashable | None = DEFAULT_SAR,
    mask: Hashable | bool | None = AUTO_MASK,
) -> Cube:
    """Check that ``ds`` follows the cube conventions and return its parts in canonical order.

    Reads only coordinates and metadata: a lazy cube stays lazy.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    optical : str
        Name of the optical variable ``(time, band, y, x)``.
    sar : str or None
        Name of the SAR variable ``(sar_time, sar_band, y, x)``. The default name may be absent
        (an optical-only cube); any other name must exist. None ignores SAR.
    mask : "auto", str, None or False
        A bool ``(time, y, x)`` clear mask (True = clear), combined with NaN-ness of optical. "auto"
        (or None): the cube's own mask, recorded by :func:`from_bands` or named ``clear``; False: none;
        or the variable's name. See :func:`resolve_mask`.

    Returns
    -------
    Cube

    Raises
    ------
    xrecon.errors.CubeError
        Naming the variable or dimension that does not follow the conventions.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> cube = validate(synthetic_cube(ny=8, nx=8))
    >>> cube.optical.dims, cube.mask_name
    (('time', 'band', 'y', 'x'), 'clear')
    """
    opt = _get_variable(ds, optical, "optical")
    mask = resolve_mask(ds, mask, optical=optical)
    opt = _check_dims(opt, _OPTICAL_DIMS, "optical")
    _check_float(opt, "optical")
    _check_encoded_integer(opt, "optical")
    if "band" not in opt.coords:
        raise CubeError(f"optical variable {opt.name!r} has no 'band' coordinate; expected band names")
    _check_unique_labels(opt, "band", "optical")
    _check_spatial(opt, "optical")
    opt = _check_time(opt, "time", "optical")

    clear = None
    if mask is not None:
        clear = _get_variable(ds, mask, "mask")
        clear = _check_dims(clear, ("time", "y", "x"), "mask")
        if clear.dtype != bool:
            raise CubeError(
                f"mask variable {mask!r} has dtype {clear.dtype}; expected bool (True = clear). "
                "For a Sentinel-2 SCL layer use xrecon.masks.scl_clear; pass mask=False to use no mask"
            )
        # Same dataset, same time coordinate: sort it the way optical was sorted.
        clear = _check_time(clear, "time", "mask")

    sar_da = None
    if sar is not None and not (sar == DEFAULT_SAR and sar not in ds.data_vars):
        sar_da = _get_variable(ds, sar, "sar")
        _check_sar_grid(ds, ds[optical], sar_da, sar)
        sar_da = _check_dims(sar_da, _SAR_DIMS, "sar")
        _check_float(sar_da, "sar")
        if "sar_band" in sar_da.coords:
            _check_unique_labels(sar_da, "sar_band", "sar")
        sar_da = _check_time(sar_da, "sar_time", "sar")
    return Cube(optical=opt, clear=clear, sar=sar_da, mask_name=mask)


def _check_encoded_integer(da: xr.DataArray, role: str) -> None:
    # A float array whose on-disk dtype was an integer without a scale factor holds digital numbers that
    # xarray only turned into floats for its _FillValue: reading it as reflectance would be silently wrong.
    disk = da.encoding.get("dtype")
    if disk is not None and np.issubdtype(np.dtype(disk), np.integer) and "scale_factor" not in da.encoding:
        if da.attrs.get("xrecon_decoded"):
            return
        raise CubeError(
            f"{role} variable {da.name!r} was stored as {np.dtype(disk)} digital numbers without a scale factor; "
            "expected reflectance in 0-1 units. Decode with xrecon.cube.decode(da, scale=1e-4) or "
            "xrecon.cube.from_bands(..., scale=1e-4)"
        )


def decode(
    da: xr.DataArray,
    *,
    scale: float | None = None,
    offset: float = 0.0,
    nodata: float | Sequence[float] | None = None,
    func: Callable[[xr.DataArray], xr.DataArray] | None = None,
) -> xr.DataArray:
    """Decode digital numbers: ``value = DN * scale + offset`` (or ``func(DN)``), nodata -> NaN.

    Lazy for dask-backed input. The result is float32 and marked as decoded in its attrs.

    Parameters
    ----------
    da : xarray.DataArray
        Digital numbers (integer or float).
    scale, offset : float
        Linear decoding; Sentinel-2 L2A reflectance is ``DN * 1e-4`` (``offset=-0.1`` from
        processing baseline 04.00 on).
    nodata : float or sequence of float, optional
        DN values meaning "no data" (e.g. 0, 65535), set to NaN.
    func : callable, optional
        A non-linear decoding instead of scale/offset, e.g. ``lambda dn: 20 * np.log10(dn) - 83``
        for backscatter stored as amplitude DN.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> dn = xr.DataArray(np.array([0, 1200, 65535], dtype="uint16"))
    >>> [round(float(v), 4) for v in decode(dn, scale=1e-4, nodata=[0, 65535]).values]
    [nan, 0.12, nan]
    """
    if (scale is None) == (func is None):
        raise CubeError(f"decoding {da.name!r}: give exactly one of scale= or func=")
    values = da.astype("float64")
    if nodata is not None:
        nodata_values = [nodata] if np.isscalar(nodata) else list(nodata)
        values = values.where(~da.isin(nodata_values))
    values = func(values) if func is not None else values * scale + offset
    out = values.astype("float32")
    out.attrs = {k: v for k, v in da.attrs.items() if k not in ("scale_factor", "add_offset", "_FillValue")}
    out.attrs["xrecon_decoded"] = 1
    out.encoding = {}
    return out


def _short_names(names: Sequence[str]) -> list[str]:
    """Strip a prefix shared by all names up to a separator: 'S2-L2A-B02' -> 'B02'."""
    if len(names) < 2:
        return list(names)
    prefix = os.path.commonprefix(list(names))
    cut = max(prefix.rfind(sep) for sep in "-_:/. ") + 1
    return [n[cut:] for n in names] if cut > 0 else list(names)


def _find_time_dim(da: xr.DataArray, time_dim: str | None) -> str:
    if time_dim is not None:
        if time_dim not in da.dims:
            raise CubeError(f"time dimension {time_dim!r} is not a dimension of {da.name!r} {tuple(da.dims)}")
        return time_dim
    candidates = [d for d in da.dims if d in da.coords and np.issubdtype(da[d].dtype, np.datetime64)]
    if len(candidates) != 1:
        raise CubeError(
            f"cannot tell the time dimension of {da.name!r} (dims {tuple(da.dims)}); pass time_dim=<name>"
        )
    return str(candidates[0])


def _stack(
    ds: xr.Dataset,
    names: Sequence[str],
    band_names: Sequence[str] | None,
    time_dim: str | None,
    new_time: str,
    new_band: str,
    decoder: Callable[[xr.DataArray], xr.DataArray],
) -> xr.DataArray:
    arrays = []
    for name in names:
        da = _get_variable(ds, name, "band")
        tdim = _find_time_dim(da, time_dim)
        missing = [d for d in ("y", "x") if d not in da.dims]
        if missing:
            raise CubeError(f"band variable {name!r} has dims {tuple(da.dims)}; expected {tdim!r}, 'y', 'x'")
        arrays.append(decoder(da).rename({tdim: new_time}).transpose(new_time, "y", "x"))
    labels = list(band_names) if band_names is not None else _short_names([str(n) for n in names])
    if len(labels) != len(names):
        raise CubeError(f"{len(labels)} band names given for {len(names)} band variables")
    dups = sorted({str(b) for b in labels if list(labels).count(b) > 1})
    if dups or len(set(names)) != len(names):
        raise CubeError(
            f"duplicate band names {dups or sorted({str(n) for n in names if list(names).count(n) > 1})} "
            f"(variables {list(names)}); expected each band once, with unique names (pass band_names=)"
        )
    stacked = xr.concat(arrays, dim=new_band, coords="minimal", compat="override", join="override")
    stacked = stacked.assign_coords({new_band: labels}).transpose(new_time, new_band, "y", "x")
    stacked.attrs = {"xrecon_decoded": 1}
    return stacked


def from_bands(
    ds: xr.Dataset,
    bands: Sequence[str],
    *,
    mask: str | xr.DataArray | None = None,
    scale: float | None = None,
    offset: float = 0.0,
    nodata: float | Sequence[float] | None = None,
    time_dim: str | None = None,
    band_names: Sequence[str] | None = None,
    sar_bands: Sequence[str] | None = None,
    sar_decode: Callable[[xr.DataArray], xr.DataArray] | None = None,
    sar_nodata: float | Sequence[float] | None = None,
    sar_band_names: Sequence[str] | None = None,
) -> xr.Dataset:
    """Stack one-variable-per-band datasets (as STAC and netCDF products ship them) into a cube.

    Parameters
    ----------
    ds : xarray.Dataset
        Variables ``(time-like, y, x)``, one per band. The time dimension may have any name.
    bands : list of str
        Optical band variables, in order.
    mask : str or xarray.DataArray, optional
        A bool clear mask (True = clear): a variable of ``ds`` or an array, e.g.
        ``xrecon.masks.scl_clear(ds.SCL)``. Stored as ``clear`` and recorded in
        ``optical.attrs["xrecon_mask"]``, so that fill, evaluate, train and the CLI use it by default
        (``mask=False`` / ``--no-mask`` turns it off).
    scale, offset, nodata
        Decoding of integer digital numbers to reflectance (see :func:`decode`). Required when the
        bands are stored as integers, or as floats read from integer files without a scale factor.
    time_dim : str, optional
        The name of the time dimension, when it cannot be told from the datetime coordinates.
    band_names : list of str, optional
        Names for the ``band`` coordinate; by default the variable names with a shared prefix
        removed (``S2-L2A-B02`` -> ``B02``).
    sar_bands, sar_decode, sar_nodata, sar_band_names
        The same for SAR: variables to stack into ``sar`` ``(sar_time, sar_band, y, x)`` in dB.
        ``sar_decode`` turns stored values into dB (None: they are dB already; integer SAR is refused
        without it). For unsigned digital numbers use :func:`dn_to_db` ("amplitude" or "power", with the
        product's calibration constant; sentinel values become NaN).

    Returns
    -------
    xarray.Dataset
        ``optical``, optionally ``clear`` and ``sar``, with the input's CRS coordinate kept. A dask-backed
        input gives a cube laid out the way ``fill`` reads it: every time and band in each chunk, the
        input's spatial chunks halved until a chunk fits in dask's ``array.chunk-size`` (see
        :func:`whole_series_chunks`). A numpy-backed input stays in memory.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> t = pd.date_range("2020-01-01", periods=3, freq="5D")
    >>> dn = np.full((3, 2, 2), 1500, dtype="uint16")
    >>> src = xr.Dataset({b: (("t", "y", "x"), dn) for b in ["B04", "B08"]}, coords={"t": t})
    >>> cube = from_bands(src, ["B04", "B08"], scale=1e-4, nodata=0)
    >>> cube.optical.dims, round(float(cube.optical.max()), 4)
    (('time', 'band', 'y', 'x'), 0.15)
    """
    if isinstance(bands, str) or (not bands and not sar_bands):
        raise CubeError(f"bands={bands!r}: from_bands needs a list of optical band variable names, e.g. "
                        "['B02', 'B03', 'B04'] (or bands=[] with sar_bands= for a SAR-only part)")

    def decode_optical(da: xr.DataArray) -> xr.DataArray:
        stored_as_int = np.issubdtype(da.dtype, np.integer) or (
            da.encoding.get("dtype") is not None
            and np.issubdtype(np.dtype(da.encoding["dtype"]), np.integer)
            and "scale_factor" not in da.encoding
        )
        if scale is None:
            if stored_as_int:
                raise CubeError(
                    f"band variable {da.name!r} holds integer digital numbers; pass scale= (and offset=, "
                    "nodata=) to decode them to reflectance, e.g. scale=1e-4 for Sentinel-2 L2A"
                )
            out = da.astype("float32")
            return out.where(~da.isin(np.atleast_1d(nodata))) if nodata is not None else out
        return decode(da, scale=scale, offset=offset, nodata=nodata)

    def decode_sar(da: xr.DataArray) -> xr.DataArray:
        if sar_decode is None:
            if np.issubdtype(da.dtype, np.integer):
                raise CubeError(f"SAR variable {da.name!r} is integer; pass sar_decode= turning it into dB")
            out = da.astype("float32")
            return out.where(~da.isin(np.atleast_1d(sar_nodata))) if sar_nodata is not None else out
        return decode(da, func=sar_decode, nodata=sar_nodata)

    out = xr.Dataset()
    if bands:
        out["optical"] = _stack(ds, bands, band_names, time_dim, "time", "band", decode_optical)
    if mask is not None:
        if not bands:
            raise CubeError("mask= goes with optical bands; this call builds SAR only (bands=[])")
        clear = _get_variable(ds, mask, "mask") if isinstance(mask, str) else mask
        tdim = _find_time_dim(clear, time_dim)
        if clear.dtype != bool:
            raise CubeError(f"mask has dtype {clear.dtype}; expected bool (True = clear)")
        out[DEFAULT_MASK] = clear.rename({tdim: "time"}).transpose("time", "y", "x")
        out["optical"].attrs[MASK_ATTR] = DEFAULT_MASK
    if sar_bands:
        sar = _stack(ds, sar_bands, sar_band_names, time_dim, "sar_time", "sar_band", decode_sar)
        out["sar"] = sar
    # Keep the CRS (rioxarray's grid-mapping coordinate or variable) and the dataset's attributes.
    for name, var in ds.variables.items():
        if var.ndim == 0 and ("crs_wkt" in var.attrs or "spatial_ref" in var.attrs):
            out = out.assign_coords({name: var})
            for v in out.data_vars.values():
                v.attrs["grid_mapping"] = str(name)
            break
    out.attrs = dict(ds.attrs)
    if any(var.chunks is not None for var in out.variables.values()):
        out = out.chunk(whole_series_chunks(out))
    return out


def whole_series_chunks(ds: xr.Dataset, *, budget: int | str | None = None, smallest: int = 32) -> dict[str, int]:
    """Chunks with whole time series and all bands, and spatial chunks that keep a chunk within ``budget``.

    ``fill`` reads every time and band of a pixel at once, so a cube stored that way is read without a
    rechunk (and ``check()`` finds nothing to say about its chunks). The spatial chunk starts at the
    cube's own (the largest ``y``/``x`` chunk of its dask variables, or the whole grid) and is halved,
    the longer side first, until the largest variable's chunk fits in ``budget`` bytes, but not below
    ``smallest`` pixels a side.

    Parameters
    ----------
    ds : xarray.Dataset
        A cube (or the parts of one): ``optical``, the mask and ``sar`` are all given the same ``y``/``x``.
    budget : int or str, optional
        Bytes per chunk (``"128MiB"``); default dask's ``array.chunk-size``.
    smallest : int
        The smallest spatial chunk side.

    Examples
    --------
    >>> from xrecon.testing import synthetic_cube
    >>> cube = synthetic_cube(ny=128, nx=128, chunks={"y": 128, "x": 128})   # 65 dates x 4 bands float32
    >>> whole_series_chunks(cube, budget="4MiB")   # 1040 bytes a pixel: 64 x 64 would be 4.06 MiB
    {'time': -1, 'band': -1, 'sar_time': -1, 'sar_band': -1, 'y': 32, 'x': 64}
    """
    import dask
    from dask.utils import parse_bytes

    limit = parse_bytes(budget if budget is not None else dask.config.get("array.chunk-size"))
    whole = [d for d in ("time", "band", "sar_time", "sar_band") if d in ds.dims]
    side = {}
    for dim in ("y", "x"):
        if dim not in ds.dims:
            continue
        sizes = [max(v.chunksizes[dim]) for v in ds.variables.values() if v.chunks is not None and dim in v.dims]
        side[dim] = max(sizes) if sizes else int(ds.sizes[dim])
    per_pixel = max((int(np.prod([ds.sizes[d] for d in v.dims if d not in side])) * v.dtype.itemsize
                     for v in ds.data_vars.values() if set(side) <= set(v.dims)), default=0)
    while side and per_pixel * int(np.prod(list(side.values()))) > limit:
        dim = max(side, key=lambda d: (side[d], d == "y"))
        if side[dim] <= smallest:
            break
        side[dim] = max(smallest, -(-side[dim] // 2))
    return {**{d: -1 for d in whole}, **side}


def dn_to_db(kind: str = "amplitude", *, calibration: float = 83.0,
             invalid: Sequence[float] = (0, 65534, 65535)) -> Callable[[xr.DataArray], xr.DataArray]:
    """A ``sar_decode=`` for Sentinel-1 stored as unsigned digital numbers, which cannot be decoded blindly.

    ``kind="amplitude"``: dB = 20 log10(DN) - ``calibration`` (e.g. openEO / WorldCereal SIGMA0 products);
    ``kind="power"``: dB = 10 log10(DN) - ``calibration``. The values in ``invalid`` (0 and the usual uint16
    sentinels 65534 and 65535, which would otherwise decode to about +13 dB) become NaN.

    Examples
    --------
    >>> import xarray as xr
    >>> decode = dn_to_db("amplitude", calibration=83.0)
    >>> decode(xr.DataArray([1000, 65535, 0], dims="t")).round(2).values.tolist()
    [-23.0, nan, nan]
    """
    if kind not in ("amplitude", "power"):
        raise CubeError(f"dn_to_db(kind={kind!r}): expected 'amplitude' (20 log10) or 'power' (10 log10)")
    factor = 20.0 if kind == "amplitude" else 10.0

    def decode_dn(da: xr.DataArray) -> xr.DataArray:
        bad = da.isin(np.asarray(invalid)) | (da <= 0)
        return (factor * np.log10(da.astype("float64").where(~bad)) - calibration).astype("float32")

    return decode_dn


def __getattr__(name: str):
    """``xrecon.cube.from_stac`` (API.md's spelling) lives in :mod:`xrecon.stac`, imported on first use."""
    if name == "from_stac":
        from xrecon.stac import from_stac

        return from_stac
    raise AttributeError(f"module 'xrecon.cube' has no attribute {name!r}")
