"""xrecon: gap-free satellite image time series from cloudy optical and SAR datacubes.

Importing xrecon registers the ``Dataset.recon`` accessor; ``xrecon.methods`` (the registry of every
method) and ``xrecon.io`` (safe Zarr writes) come along. Nothing here imports torch, and importing changes
no process-wide setting (``fill`` tunes glibc's allocator when it first builds a graph: :mod:`xrecon.memory`).

>>> import xrecon
>>> from xrecon.testing import synthetic_cube
>>> filled = synthetic_cube(ny=8, nx=8).recon.fill("5D", method="linear")
"""

from xrecon import accessor as _accessor  # noqa: F401  (registers Dataset.recon)
from xrecon import io, methods
from xrecon._version import __version__
from xrecon.errors import XreconError

__all__ = ["XreconError", "__version__", "io", "methods"]

# Imported on first use: these pull in torch (models, training) or test helpers, which `import xrecon` must not.
_LAZY = ("models", "training", "testing", "evaluate", "runtime", "diffusion", "ensemble", "leakage", "plot")


def __getattr__(name: str):
    """``xrecon.models.load(...)`` and the like work after a plain ``import xrecon``."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"xrecon.{name}")
    raise AttributeError(f"module 'xrecon' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
