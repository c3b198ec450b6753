"""What every network behind ``fill`` shares: matching bands, checking a checkpoint against a cube,
the classical fallback, and saving an in-memory model so that the graph can carry its path.

A network's own adapter (e.g. :mod:`xrecon.methods.anytimeformer`) builds on these. The models are
loaded through the per-process cache (:func:`xrecon.models.cache.cached_model`) from the path and sha256
in the plan, so the graph never carries a model or a tensor.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from xrecon.errors import CheckpointError, MethodError

__all__ = ["DEFAULT_FALLBACK", "check_fallback", "check_network", "fill_from_classical", "match_bands",
           "model_to_checkpoint"]

#: The method that fills what a network cannot see (see :func:`fill_from_classical`).
DEFAULT_FALLBACK = "harmonic"


def model_to_checkpoint(model: Any) -> str:
    """Save an in-memory model to a content-addressed file, so that the graph can carry its path.

    The file lives in the system temporary folder; on a distributed cluster the workers must see
    the same file system, otherwise save the model yourself and pass ``checkpoint=``.
    """
    from xrecon.runtime import file_sha256

    folder = os.path.join(tempfile.gettempdir(), "xrecon-models")
    os.makedirs(folder, exist_ok=True)
    tmp = model.save(os.path.join(folder, f"model-{os.getpid()}-{threading.get_ident()}.xrecon"))
    final = os.path.join(folder, f"{file_sha256(tmp)}.xrecon")
    os.replace(tmp, final)
    return final


def match_bands(cube_bands: Sequence[str], model_bands: Sequence[str] | None, n_model: int, what: str) -> tuple:
    """Index into the cube's bands giving the model's band order; errors name what does not fit.

    ``model_bands`` None (an unnamed model) matches by count. Used by ``fill`` and by training.

    Examples
    --------
    >>> match_bands(["B04", "B02", "B03"], ["B02", "B03", "B04"], 3, "optical")
    (1, 2, 0)
    """
    cube_bands = [str(b) for b in cube_bands]
    if model_bands is None:
        if len(cube_bands) != n_model:
            raise CheckpointError(
                f"the checkpoint takes {n_model} {what} bands (unnamed), the cube has {len(cube_bands)}: {cube_bands}"
            )
        return tuple(range(n_model))
    missing = [b for b in model_bands if b not in cube_bands]
    extra = [b for b in cube_bands if b not in model_bands]
    if missing or extra:
        raise CheckpointError(
            f"the checkpoint's {what} bands {list(model_bands)} do not match the cube's {cube_bands}"
            + (f": missing {missing}" if missing else "")
            + (f"; not in the model {extra} (select the model's bands with ds.sel(...))" if extra else "")
        )
    return tuple(cube_bands.index(b) for b in model_bands)


def check_network(
    method: str, checkpoint: str, sha256: str | None, bands: Sequence[str], sar_bands: Sequence[str] | None
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Load (through the cache) and check the model against the cube when the graph is built.

    Returns the band index of the optical bands in model order, and that of the SAR bands, or None
    when SAR is not used (the model takes none, or the cube has none).
    """
    from xrecon.models import list_models
    from xrecon.models.cache import cached_model

    if method not in list_models():
        raise MethodError(f"method {method!r} has no network in this xrecon version; available: {list_models()}")
    model = cached_model(checkpoint, sha256, "cpu")
    if model.name != method:
        raise CheckpointError(f"{os.path.basename(checkpoint)!r} holds a {model.name!r} model, not {method!r}")
    config = model.config
    optical_index = match_bands(bands, model.optical_bands, config.n_optical_bands, "optical")
    sar_index = None
    if sar_bands is not None and getattr(config, "n_sar_bands", 0):
        sar_index = match_bands(sar_bands, model.sar_bands, config.n_sar_bands, "SAR")
    return optical_index, sar_index


def check_fallback(fallback: Any) -> str | None:
    """``fallback=`` must be None or a method that needs no checkpoint and works on pixels."""
    from xrecon.methods.registry import classical_methods

    if fallback is not None and fallback not in classical_methods():
        raise MethodError(f"fallback={fallback!r}: expected None or a classical method, one of {classical_methods()}")
    return fallback


def fill_from_classical(
    out: np.ndarray, values: np.ndarray, valid: np.ndarray, t: np.ndarray, tq: np.ndarray, method: str, edges: str
) -> None:
    """Where the network gave nothing (no clear observation in a query's window) but the pixel has clear
    observations elsewhere, use a classical method over the whole series, in place."""
    from xrecon.methods.registry import get

    gap = np.isnan(out).any(axis=-1)  # (N, Tq)
    rows = np.flatnonzero(gap.any(axis=1) & valid.any(axis=1))
    if rows.size == 0:
        return
    classical = get(method).kernel_function()(values[rows], valid[rows], t, tq, edges=edges)
    part, where = out[rows], gap[rows]
    part[where] = classical[where]
    out[rows] = part
