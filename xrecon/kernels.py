"""Deprecated: the block functions of ``fill`` are :mod:`xrecon.fill_blocks` (they are block drivers, not
the methods' kernels). This alias keeps ``from xrecon.kernels import ...`` working, with a FutureWarning.
"""

from __future__ import annotations

import warnings

from xrecon.fill_blocks import (  # noqa: F401  (re-exported)
    DN_LIKE,
    DN_LIKE_SHARE,
    FillSpec,
    check_reflectance_values,
    fill_patch,
    fill_pixels,
    gap_days,
)

__all__ = ["DN_LIKE", "FillSpec", "check_reflectance_values", "fill_patch", "fill_pixels", "gap_days"]

warnings.warn("xrecon.kernels is now xrecon.fill_blocks: import from there (xrecon.kernels will go)",
              FutureWarning, stacklevel=2)
