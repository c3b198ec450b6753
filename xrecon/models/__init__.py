"""Neural networks for reconstruction, a registry of them, their checkpoint files and the per-process cache.

Layout: :mod:`~xrecon.models.base` (registry, checkpoint format, :func:`load`),
:mod:`~xrecon.models.cache` (models kept per process and their locks, for dask workers),
:mod:`~xrecon.models.batching` (the numpy-in, numpy-out batch driver networks share) and one
module per network and its config (:mod:`~xrecon.models.anytimeformer`, :mod:`~xrecon.models.restore_dit`);
:mod:`~xrecon.models.conversion` makes the authors' checkpoints into xrecon models.

Examples
--------
>>> import xrecon.models
>>> xrecon.models.list_models()
['anytimeformer', 'restore-dit']
>>> model = xrecon.models.load("model.xrecon")  # doctest: +SKIP
"""

from xrecon.models import anytimeformer, batching, cache, conversion, restore_dit
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

# API.md's spellings of the conversions (they live in conversion.py, which imports the networks' modules:
# bound here, the model files need not import it back).
anytimeformer.from_official = conversion.from_official
restore_dit.from_upstream = conversion.from_upstream

__all__ = [
    "XreconModel",
    "anytimeformer",
    "batching",
    "cache",
    "cached_model",
    "clear_model_cache",
    "conversion",
    "get_model",
    "get_model_class",
    "list_models",
    "load",
    "model_lock",
    "read_checkpoint",
    "register_model",
    "restore_dit",
]
