"""Classical reconstruction kernels: numpy in, numpy out, many pixels at once.

Every method has the signature::

    fill_<name>(values, valid, t, tq, *, edges="hold", **options) -> ndarray

with ``values`` (N, T, C) reflectance (anything where not valid), ``valid`` (N, T) bool, ``t`` (T,) strictly
increasing days, ``tq`` (Tq,) query days in any order, and the result (N, Tq, C) float32. ``edges`` says
what happens before a pixel's first and after its last clear observation, the same for every method:
``"hold"`` (default) returns the method's value at that first (last) clear date, i.e. the query time is
clamped per pixel into [first clear date, last clear date]; ``"nan"`` returns NaN there. A pixel without
any clear observation is NaN at every query.
"""

from __future__ import annotations

from collections.abc import Callable

from xrecon.errors import MethodError
from xrecon.methods.harmonic import fill_harmonic
from xrecon.methods.linear import fill_linear
from xrecon.methods.whittaker import fill_whittaker, select_lambda

__all__ = ["get_method", "list_methods", "fill_linear", "fill_harmonic", "fill_whittaker", "select_lambda"]

_METHODS: dict[str, Callable[..., object]] = {
    "harmonic": fill_harmonic,
    "linear": fill_linear,
    "whittaker": fill_whittaker,
}


def list_methods() -> list[str]:
    """Names of the classical methods, sorted.

    Examples
    --------
    >>> list_methods()
    ['harmonic', 'linear', 'whittaker']
    """
    return sorted(_METHODS)


def get_method(name: str) -> Callable[..., object]:
    """The kernel ``fill_<name>`` of a classical method.

    Raises
    ------
    MethodError
        If no classical method has that name; the message lists those available.

    Examples
    --------
    >>> get_method("linear").__name__
    'fill_linear'
    """
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise MethodError(
            f"unknown classical method {name!r}; available: {', '.join(list_methods())}"
        ) from None
