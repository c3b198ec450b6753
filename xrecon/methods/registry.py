"""One registry of every reconstruction method ``fill`` knows, and the small interface they share.

A method is a :class:`Method`: a numpy **kernel** run inside the dask tasks, and a **build step** run once
when the graph is built. The build step checks the cube and the options (and, for a network, loads and
checks the model through the per-process cache) and returns a :class:`Plan`: the frozen, hashable keyword
arguments the kernel gets in every task. The graph carries the :class:`Method` and the plan, never a model
or a tensor.

Two footprints:

``"pixel"``
    ``kernel(values, valid, t, tq, *, edges, **kwargs)``: ``values`` (N, T, C) float32 (NaN = not
    observed), ``valid`` (N, T) bool, ``t`` (T,) and ``tq`` (Tq,) float days since 1970; returns
    (N, Tq, C). Each task hands the kernel slabs of a chunk's pixel series.
``"patch"``
    ``kernel(values, valid, t, tq, *, edges, offset, **kwargs)``: ``values`` (T, C, Y, X) holds a chunk
    **plus** ``halo`` pixels of its neighbours on every side (NaN beyond the cube's edge), ``valid``
    (T, Y, X), ``offset`` the (row, column) of the window's first pixel in the whole cube (negative at
    the top and left edges); returns (Tq, C, Y, X) for the same window, and ``fill`` trims the halo.

A kernel returns one array (the ``optical`` output) or a dict of the method's declared ``outputs``.
Methods that take SAR (``sar=True``) also get ``sar`` ((N, Ts, S) or (Ts, S, Y, X)) and ``sar_t`` (Ts,)
when the plan says SAR is used.

Kernels and build steps may be given as ``"module:attribute"`` strings, imported on first use, so that
registering a network costs no ``import torch``.

Examples
--------
>>> import numpy as np
>>> import xrecon.methods
>>> @xrecon.methods.register("last-clear")
... def last_clear(values, valid, t, tq, *, edges="hold"):
...     idx = np.maximum.accumulate(np.where(valid, np.arange(len(t)), 0), axis=1)[:, -1]
...     return np.repeat(values[np.arange(len(values)), idx][:, None], len(tq), axis=1)
>>> "last-clear" in xrecon.methods.list_methods()
True
>>> xrecon.methods.unregister("last-clear")
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from xrecon.errors import MethodError

if TYPE_CHECKING:
    import pandas as pd

    from xrecon.cube import Cube

__all__ = [
    "FOOTPRINTS",
    "BuildRequest",
    "Method",
    "Plan",
    "checkpoint_methods",
    "classical_methods",
    "freeze",
    "get",
    "list_methods",
    "register",
    "trainable_methods",
    "unregister",
]

FOOTPRINTS = ("pixel", "patch")
Footprint = Literal["pixel", "patch"]

_REGISTRY: dict[str, Method] = {}
_guard = threading.Lock()


def freeze(value: Any) -> Hashable:
    """Options -> hashable values, so that a plan tokenizes stably and carries no arrays.

    Examples
    --------
    >>> freeze({"b": [1, 2], "a": np.float64(0.5)})
    (('a', 0.5), ('b', (1, 2)))
    """
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return tuple(freeze(v) for v in value.tolist())
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def _resolve(ref: Callable | str) -> Callable:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class BuildRequest:
    """What ``fill`` knows when it builds the graph; handed to a method's build step.

    Attributes
    ----------
    cube : xrecon.cube.Cube
        The validated cube (lazy variables; nothing is computed).
    query_times : pandas.DatetimeIndex
    options : dict
        The method's options as the user gave them.
    edges : str
    checkpoint, checkpoint_sha256 : str or None
        Absolute path of the checkpoint and its sha256, for methods that need one.
    batch_size : int or None
    device : str or None
    keep_observed : bool
        Whether ``fill`` passes clear observations through (``optical`` only; a method with more outputs
        that should pass through too, such as interval bounds, reads it).
    """

    cube: Cube
    query_times: pd.DatetimeIndex
    options: Mapping[str, Any]
    edges: str = "hold"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    batch_size: int | None = None
    device: str | None = None
    keep_observed: bool = True


@dataclass(frozen=True)
class Plan:
    """What a method's build step returns: the kernel's keyword arguments, frozen, and whether SAR is used.

    ``kwargs`` holds small hashable values only (numbers, strings, tuples, other plans): it travels in the
    dask graph. A method whose reach or outputs depend on its options (an ensemble: the largest of its
    members' halos; intervals only when asked for) says so here: ``halo`` and ``outputs``, when not None,
    replace the registered ones for this graph (``outputs`` must start with ``"optical"``).
    """

    kwargs: tuple[tuple[str, Hashable], ...] = ()
    use_sar: bool = False
    halo: int | None = None
    outputs: tuple[str, ...] | None = None

    @classmethod
    def of(cls, kwargs: Mapping[str, Any], *, use_sar: bool = False, halo: int | None = None,
           outputs: Sequence[str] | None = None) -> Plan:
        if halo is not None and (isinstance(halo, bool) or not isinstance(halo, int | np.integer) or halo < 0):
            raise MethodError(f"a plan's halo must be an integer >= 0 or None, got {halo!r}")
        if outputs is not None:
            outputs = tuple(outputs)
            if not outputs or outputs[0] != "optical" or len(set(outputs)) != len(outputs):
                raise MethodError(f"a plan's outputs must start with 'optical' and be unique, got {outputs}")
        return cls(tuple(sorted((k, freeze(v)) for k, v in kwargs.items())), use_sar,
                   None if halo is None else int(halo), outputs)

    @property
    def kwargs_dict(self) -> dict[str, Any]:
        return dict(self.kwargs)


@dataclass(frozen=True)
class Method:
    """A reconstruction method as ``fill`` sees it.

    Attributes
    ----------
    name : str
    kernel : callable or "module:attribute"
        The task-time step (see the module docstring for its signature per footprint).
    footprint : {"pixel", "patch"}
    halo : int
        Pixels of the neighbouring chunks a patch kernel sees on every side (its spatial reach).
    outputs : tuple of str
        Names of the (time, band, y, x) arrays the kernel returns; the first is ``"optical"``.
    options : tuple of str or None
        Option names the method takes; None: those of the kernel's signature (anything if it takes ``**``).
    needs_checkpoint : bool
        True for networks: ``fill`` requires ``checkpoint=`` (or a model object as ``method=``).
    sar : bool
        The kernel takes ``sar=`` and ``sar_t=`` when the cube has SAR and the plan uses it.
    build : callable or "module:attribute" or None
        The graph-build step, ``build(method, request) -> Plan``; None: :meth:`default_build`.
    training : str or None
        ``"module:attribute"`` of the method's training task; None when it cannot be trained.
    summary : str
        One line for listings and ``--help``.
    native : callable or "module:attribute" or None
        Optional, pixel methods only: the same kernel in the cube's layout, ``native(values (T, C, N),
        valid (T, N), t, tq, *, edges, **kwargs) -> (Tq, C, N)``. ``fill`` then hands it a chunk's series
        without transposing them (the classical kernels have one).
    """

    name: str
    kernel: Callable | str
    footprint: Footprint = "pixel"
    halo: int = 0
    outputs: tuple[str, ...] = ("optical",)
    options: tuple[str, ...] | None = None
    needs_checkpoint: bool = False
    sar: bool = False
    build: Callable | str | None = field(default=None, compare=False)
    training: str | None = None
    summary: str = ""
    native: Callable | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise MethodError(
                f"a method name must be a non-empty string without surrounding spaces, got {self.name!r}"
            )
        if self.footprint not in FOOTPRINTS:
            raise MethodError(
                f"method {self.name!r}: footprint must be one of {list(FOOTPRINTS)}, got {self.footprint!r}"
            )
        if isinstance(self.halo, bool) or not isinstance(self.halo, int | np.integer) or self.halo < 0:
            raise MethodError(f"method {self.name!r}: halo must be an integer >= 0, got {self.halo!r}")
        if self.footprint == "pixel" and self.halo:
            raise MethodError(f"method {self.name!r}: a pixel method has no halo (got halo={self.halo})")
        if not self.outputs or self.outputs[0] != "optical" or len(set(self.outputs)) != len(self.outputs):
            raise MethodError(
                f"method {self.name!r}: outputs must start with 'optical' and be unique, got {self.outputs}"
            )
        if self.native is not None and (self.footprint != "pixel" or len(self.outputs) > 1):
            raise MethodError(f"method {self.name!r}: a native kernel is for pixel methods with one output")
        reserved = {"observed", "gap_days"} & set(self.outputs)
        if reserved:
            raise MethodError(f"method {self.name!r}: outputs {sorted(reserved)} are fill's own; choose other names")

    # -- the two steps -------------------------------------------------------------------------------
    def kernel_function(self) -> Callable:
        """The kernel, imported if it was given as a string."""
        return _resolve(self.kernel)

    def native_function(self) -> Callable | None:
        """The kernel in the cube's layout, or None."""
        return None if self.native is None else _resolve(self.native)

    def training_task(self) -> Any:
        """The method's training task (imported on first use), or MethodError when it cannot be trained."""
        if self.training is None:
            raise MethodError(f"method {self.name!r} cannot be trained; trainable methods are {trainable_methods()}")
        return _resolve(self.training)

    def prepare(self, request: BuildRequest) -> Plan:
        """Run the graph-build step: check everything that can be checked now, return the frozen plan."""
        if self.needs_checkpoint and request.checkpoint is None:
            from xrecon.errors import CheckpointError

            raise CheckpointError(f"method {self.name!r} needs checkpoint=<path of a model file>")
        if not self.needs_checkpoint and request.checkpoint is not None:
            raise MethodError(
                f"method {self.name!r} takes no checkpoint; checkpoints are for {checkpoint_methods()}"
            )
        plan = self.default_build(request) if self.build is None else _resolve(self.build)(self, request)
        if self.footprint == "pixel" and plan.halo:
            raise MethodError(f"method {self.name!r}: a pixel method has no halo (its plan asks for {plan.halo})")
        return plan

    def accepted_options(self) -> tuple[str, ...] | None:
        """Option names the method takes, or None when it takes any (a kernel with ``**kwargs``)."""
        if self.options is not None:
            return self.options
        try:
            params = inspect.signature(self.kernel_function()).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature: let the kernel decide
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        fixed = {"values", "valid", "t", "tq", "edges", "offset", "sar", "sar_t"}
        return tuple(
            p.name for p in params
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            and p.name not in fixed
        )

    def check_option_names(self, options: Mapping[str, Any]) -> None:
        """MethodError naming the options the method does not take."""
        accepted = self.accepted_options()
        unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
        if unknown:
            raise MethodError(
                f"method {self.name!r} does not take the option(s) {unknown}; it takes {sorted(accepted)}"
            )

    def default_build(self, request: BuildRequest) -> Plan:
        """Check the option names, then run the kernel on a two-date toy series so bad option values fail
        now, not inside a task; the plan is the options themselves."""
        options = dict(request.options)
        self.check_option_names(options)
        n_band = len(request.cube.bands)
        kernel = self.kernel_function()
        t, tq = np.array([0.0, 1.0]), np.array([0.5])
        try:
            if self.footprint == "pixel":
                kernel(np.zeros((1, 2, n_band), np.float32), np.ones((1, 2), bool), t, tq,
                       edges=request.edges, **options)
            else:
                side = 1 + 2 * self.halo
                kernel(np.zeros((2, n_band, side, side), np.float32), np.ones((2, side, side), bool), t, tq,
                       edges=request.edges, offset=(-self.halo, -self.halo), **options)
        except TypeError as err:
            raise MethodError(f"method {self.name!r} does not take these options: {err}") from None
        return Plan.of(options)


def register(
    name: str,
    kernel: Callable | str | None = None,
    *,
    footprint: Footprint = "pixel",
    halo: int = 0,
    outputs: Sequence[str] = ("optical",),
    options: Sequence[str] | None = None,
    needs_checkpoint: bool = False,
    sar: bool = False,
    build: Callable | str | None = None,
    training: str | None = None,
    summary: str = "",
    native: Callable | str | None = None,
    replace: bool = False,
) -> Any:
    """Add a method to the registry, so that ``fill``, ``evaluate`` and the CLI know it by ``name``.

    Usable as a call, ``register("mine", kernel)``, or as a decorator, ``@register("mine", footprint="patch",
    halo=2)``. See the module docstring for the kernel's signature per footprint, and
    ``docs/writing-a-method.md`` for worked examples.

    Parameters
    ----------
    name : str
    kernel : callable or "module:attribute", optional
        Omitted when used as a decorator.
    footprint : {"pixel", "patch"}
    halo : int
        For patch methods: how many pixels of the neighbouring chunks the kernel needs on every side.
        With a halo covering the method's reach the result does not depend on the chunking.
    outputs, options, needs_checkpoint, sar, build, training, summary, native
        See :class:`Method`.
    replace : bool
        Replace a method registered under the same name instead of raising.

    Returns
    -------
    The kernel (so the decorator leaves the function usable), or a decorator.

    Raises
    ------
    MethodError
        For a name already taken (unless ``replace``) or an invalid footprint, halo or outputs.
    """

    def add(func: Callable | str) -> Callable | str:
        method = Method(
            name=name, kernel=func, footprint=footprint, halo=int(halo), outputs=tuple(outputs),
            options=None if options is None else tuple(options), needs_checkpoint=bool(needs_checkpoint),
            sar=bool(sar), build=build, training=training, summary=summary, native=native,
        )
        with _guard:
            if name in _REGISTRY and not replace and _REGISTRY[name] != method:
                raise MethodError(f"a method named {name!r} is already registered; pass replace=True to replace it")
            _REGISTRY[name] = method
        return func

    return add if kernel is None else add(kernel)


def unregister(name: str) -> None:
    """Remove a method from the registry (a no-op for an unknown name)."""
    with _guard:
        _REGISTRY.pop(name, None)


def list_methods() -> list[str]:
    """Names of every method ``fill`` knows: the classical ones, the networks and registered ones, sorted.

    Examples
    --------
    >>> import xrecon.methods
    >>> xrecon.methods.list_methods()
    ['anytimeformer', 'ensemble', 'harmonic', 'linear', 'neighbors', 'restore-dit', 'whittaker']
    """
    return sorted(_REGISTRY)


def checkpoint_methods() -> list[str]:
    """Names of the methods that run a network from a checkpoint."""
    return [name for name in list_methods() if _REGISTRY[name].needs_checkpoint]


def classical_methods() -> list[str]:
    """Names of the methods that need no checkpoint (what a network's ``fallback=`` may name).

    Examples
    --------
    >>> from xrecon.methods import classical_methods
    >>> classical_methods()
    ['harmonic', 'linear', 'whittaker']
    """
    return [n for n in list_methods() if not _REGISTRY[n].needs_checkpoint and _REGISTRY[n].footprint == "pixel"]


def trainable_methods() -> list[str]:
    """Names of the methods ``ds.recon.train`` can train.

    Examples
    --------
    >>> from xrecon.methods import trainable_methods
    >>> trainable_methods()
    ['anytimeformer', 'restore-dit']
    """
    return [name for name in list_methods() if _REGISTRY[name].training is not None]


def get(name: str) -> Method:
    """The registered :class:`Method` called ``name``.

    Raises
    ------
    MethodError
        If no method has that name; the message lists those available.

    Examples
    --------
    >>> import xrecon.methods
    >>> xrecon.methods.get("whittaker").footprint
    'pixel'
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise MethodError(f"unknown method {name!r}; available: {', '.join(list_methods())}") from None
