"""Neural networks for reconstruction, a registry of them, and their checkpoint files.

Examples
--------
>>> import xrecon.models
>>> xrecon.models.list_models()
['anytimeformer']
>>> model = xrecon.models.load("model.xrecon")  # doctest: +SKIP
"""

from xrecon.models import anytimeformer
from xrecon.models.base import (
    XreconModel,
    get_model,
    get_model_class,
    list_models,
    load,
    read_checkpoint,
    register_model,
)

__all__ = [
    "XreconModel",
    "anytimeformer",
    "get_model",
    "get_model_class",
    "list_models",
    "load",
    "read_checkpoint",
    "register_model",
]
