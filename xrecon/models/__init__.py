"""Neural networks for reconstruction, a registry of them, their checkpoint files and the per-process cache.

Layout: :mod:`~xrecon.models.base` (registry, checkpoint format, :func:`load`),
:mod:`~xrecon.models.cache` (models kept per process and their locks, for dask workers),
:mod:`~xrecon.models.batching` (the numpy-in, numpy-out batch driver networks share) and one
module per network (:mod:`~xrecon.models.anytimeformer`).

Examples
--------
>>> import xrecon.models
>>> xrecon.models.list_models()
['anytimeformer', 'restore-dit']
>>> model = xrecon.models.load("model.xrecon")  # doctest: +SKIP
"""

from xrecon.models import anytimeformer, batching, cache, restore_dit
from xrecon.models.base import (
    XreconModel,
    get_model,
    get_model_class,
    list_models,
    load,
    read_checkpoint,
    register_model,
)
from xrecon.models.cache import cached_model, clear_model_cache, model_lock

__all__ = [
    "XreconModel",
    "anytimeformer",
    "batching",
    "cache",
    "cached_model",
    "clear_model_cache",
    "get_model",
    "get_model_class",
    "list_models",
    "load",
    "model_lock",
    "read_checkpoint",
    "register_model",
    "restore_dit",
]
