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

__all__ = ["Cube", "validate", "from_bands", "decode", "DEFAULT_SAR"]

#: The default name of the SAR variable; a cube without it is an optical-only cube.
DEFAULT_SAR = "sar"

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
    sar : xarray.DataArray or None
        ``(sar_time, sar_band, y, x)`` float dB, sorted by time, or None.
    """

    optical: xr.DataArray
    clear: xr.DataArray | None
    sar: xr.DataArray | None

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


def validate(
    ds: xr.Dataset,
    *,
    optical: Hashable = "optical",
    sar: Hashable | None = DEFAULT_SAR,
    mask: Hashable | None = None,
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
    mask : str or None
        Name of a bool ``(time, y, x)`` clear mask (True = clear), combined with NaN-ness of optical.

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
    >>> cube = validate(synthetic_cube(ny=8, nx=8), mask="clear")
    >>> cube.optical.dims
    ('time', 'band', 'y', 'x')
    """
    opt = _get_variable(ds, optical, "optical")
    opt = _check_dims(opt, _OPTICAL_DIMS, "optical")
    _check_float(opt, "optical")
    _check_encoded_integer(opt, "optical")
    if "band" not in opt.coords:
        raise CubeError(f"optical variable {opt.name!r} has no 'band' coordinate; expected band names")
    opt = _check_time(opt, "time", "optical")

    clear = None
    if mask is not None:
        clear = _get_variable(ds, mask, "mask")
        clear = _check_dims(clear, ("time", "y", "x"), "mask")
        if clear.dtype != bool:
            raise CubeError(
                f"mask variable {mask!r} has dtype {clear.dtype}; expected bool (True = clear). "
                "For a Sentinel-2 SCL layer use xrecon.masks.scl_clear"
            )
        # Same dataset, same time coordinate: sort it the way optical was sorted.
        clear = _check_time(clear, "time", "mask")

    sar_da = None
    if sar is not None and not (sar == DEFAULT_SAR and sar not in ds.data_vars):
        sar_da = _get_variable(ds, sar, "sar")
        _check_sar_grid(ds, ds[optical], sar_da, sar)
        sar_da = _check_dims(sar_da, _SAR_DIMS, "sar")
        _check_float(sar_da, "sar")
        sar_da = _check_time(sar_da, "sar_time", "sar")
    return Cube(optical=opt, clear=clear, sar=sar_da)


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
        ``xrecon.masks.scl_clear(ds.SCL)``. Stored as ``clear``.
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
        ``sar_decode`` turns stored values into dB (None: they are dB already).

    Returns
    -------
    xarray.Dataset
        ``optical``, optionally ``clear`` and ``sar``, with the input's CRS coordinate kept.

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
    if not bands:
        raise CubeError("from_bands needs at least one optical band variable in bands=")

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

    optical = _stack(ds, bands, band_names, time_dim, "time", "band", decode_optical)
    out = xr.Dataset({"optical": optical})
    if mask is not None:
        clear = _get_variable(ds, mask, "mask") if isinstance(mask, str) else mask
        tdim = _find_time_dim(clear, time_dim)
        if clear.dtype != bool:
            raise CubeError(f"mask has dtype {clear.dtype}; expected bool (True = clear)")
        out["clear"] = clear.rename({tdim: "time"}).transpose("time", "y", "x")
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
    return out
