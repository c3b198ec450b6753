"""The exceptions xrecon raises for bad input.

Every one derives from :class:`XreconError`, itself a :class:`ValueError`, so ``except ValueError``
keeps working in user code, and each message says what was wrong and what was expected.
"""

from __future__ import annotations

__all__ = [
    "XreconError",
    "CubeError",
    "QueryTimesError",
    "MethodError",
    "CheckpointError",
    "OutputExistsError",
    "TrainingDivergedError",
]


class XreconError(ValueError):
    """Base class of every error xrecon raises for bad input."""


class CubeError(XreconError):
    """The cube does not follow the conventions: a missing variable or dimension, bad times, another grid."""


class QueryTimesError(XreconError):
    """The requested query times cannot be understood."""


class MethodError(XreconError):
    """An unknown reconstruction method, or options it does not take."""


class CheckpointError(XreconError):
    """A checkpoint that does not exist, is not an xrecon checkpoint, or does not fit the cube."""


class OutputExistsError(XreconError):
    """The output path exists and overwriting was not asked for."""


class TrainingDivergedError(XreconError):
    """Training stopped because the loss became NaN or infinite (nothing of that step on was saved)."""
