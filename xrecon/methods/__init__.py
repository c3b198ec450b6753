"""Reconstruction methods: one registry for the classical kernels, the networks and your own.

:func:`list_methods` names every method ``fill`` knows; :func:`register` adds one (see
:mod:`xrecon.methods.registry` for the interface and ``docs/writing-a-method.md`` for examples).

The classical kernels have the pixel signature::

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

from xrecon.methods.harmonic import fill_harmonic
from xrecon.methods.linear import fill_linear, linear_native
from xrecon.methods.registry import (
    BuildRequest,
    Method,
    Plan,
    checkpoint_methods,
    classical_methods,
    get,
    list_methods,
    register,
    trainable_methods,
    unregister,
)
from xrecon.methods.whittaker import fill_whittaker, select_lambda, whittaker_native

__all__ = [
    "BuildRequest",
    "Method",
    "Plan",
    "checkpoint_methods",
    "classical_methods",
    "fill_harmonic",
    "fill_linear",
    "fill_whittaker",
    "get",
    "get_method",
    "list_methods",
    "register",
    "select_lambda",
    "trainable_methods",
    "unregister",
]

register("harmonic", fill_harmonic,
         summary="annual harmonics (order, period, optional trend), least squares per pixel")
register("linear", fill_linear, native=linear_native,
         summary="linear interpolation between the clear observations around each query")
register("whittaker", fill_whittaker, native=whittaker_native,
         summary="Whittaker smoother on irregular dates (fixed lam, or 'gcv' / 'vcurve')")

# The networks and the patch method register themselves next to their code, from their own constants
# (halo, options); their modules import no torch.
from xrecon.methods import anytimeformer as _anytimeformer  # noqa: E402, F401
from xrecon.methods import neighbors as _neighbors  # noqa: E402, F401
from xrecon.methods import restore_dit as _restore_dit  # noqa: E402, F401

register(
    "ensemble",
    "xrecon.methods.ensemble:fill_ensemble",
    footprint="patch",
    halo=24,  # the default gap classes' reach; the plan takes the largest of that and its members' halos
    build="xrecon.methods.ensemble:build",
    options=("interval",),
    needs_checkpoint=True,
    sar=True,
    summary="a blend of other methods with weights per gap class and calibrated intervals (interval=0.9); "
            "checkpoint= an ensemble file from fit_ensemble",
)


def get_method(name: str) -> Callable[..., object]:
    """The kernel of a registered method (``fill_<name>`` for the classical ones).

    Raises
    ------
    MethodError
        If no method has that name; the message lists those available.

    Examples
    --------
    >>> get_method("linear").__name__
    'fill_linear'
    """
    return get(name).kernel_function()
