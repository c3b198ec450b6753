"""Cloud masks: turning quality layers into clear (True) / not clear (False) masks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from xrecon.errors import CubeError

#: The default name of the clear mask: ``from_bands`` stores its mask under it, and ``mask="auto"`` finds it
#: (also ``xrecon.cube.DEFAULT_MASK``).
DEFAULT_MASK = "clear"
#: The optical variable's attribute in which ``from_bands`` records the name of the cube's clear mask
#: (also ``xrecon.cube.MASK_ATTR``).
MASK_ATTR = "xrecon_mask"

__all__ = ["scl_clear", "SCL_CLASSES", "SCL_CLEAR_DEFAULT", "DEFAULT_MASK", "MASK_ATTR"]

#: Sentinel-2 L2A scene classification (SCL) classes.
SCL_CLASSES = {
    0: "no data",
    1: "saturated or defective",
    2: "topographic casted shadows",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow or ice",
}

#: The classes counted as clear by default: vegetation, not vegetated, water.
SCL_CLEAR_DEFAULT = (4, 5, 6)


def scl_clear(scl: xr.DataArray, classes: Iterable[int] = SCL_CLEAR_DEFAULT) -> xr.DataArray:
    """Turn a Sentinel-2 scene classification layer into a clear mask (True = clear).

    Lazy for dask-backed input; NaN (no SCL) counts as not clear.

    Parameters
    ----------
    scl : xarray.DataArray
        SCL class values (integer or float), any dimensions.
    classes : iterable of int
        SCL classes counted as clear; by default 4 (vegetation), 5 (not vegetated), 6 (water).
        Add 11 to keep snow, 7 to keep unclassified pixels; see :data:`SCL_CLASSES`.

    Returns
    -------
    xarray.DataArray
        bool, same dims and coordinates, named ``clear``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> scl_clear(xr.DataArray(np.array([4, 8, 5, np.nan]))).values.tolist()
    [True, False, True, False]
    """
    if isinstance(classes, str | bytes) or not isinstance(classes, Iterable):
        raise CubeError(f"classes={classes!r}: expected SCL class numbers, e.g. (4, 5, 6)")
    classes = list(classes)
    if not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in classes):
        raise CubeError(f"classes={classes!r}: expected integer SCL class numbers among {sorted(SCL_CLASSES)}")
    if not isinstance(scl, xr.DataArray):
        raise CubeError(f"scl_clear expects the SCL layer as an xarray.DataArray, got {type(scl).__name__}")
    classes = [int(c) for c in classes]
    unknown = sorted(set(classes) - set(SCL_CLASSES))
    if unknown:
        raise CubeError(f"unknown SCL classes {unknown}; expected values among {sorted(SCL_CLASSES)}")
    if not (np.issubdtype(scl.dtype, np.integer) or np.issubdtype(scl.dtype, np.floating)):
        raise CubeError(f"SCL layer {scl.name!r} has dtype {scl.dtype}; expected integer or float classes")
    clear = scl.isin(classes)
    clear.name = "clear"
    clear.attrs = {"long_name": "clear observation", "source": "Sentinel-2 SCL", "clear_classes": classes}
    return clear
