"""What every xrecon network shares: a registry of model classes and the checkpoint file format.

A checkpoint is one file written by :func:`torch.save` holding a plain dict::

    {"format": "xrecon-checkpoint", "format_version": 1, "xrecon_version": "0.1.0",
     "model": "anytimeformer", "config": {...}, "state_dict": {name: tensor},
     "optical_bands": [...] | None, "sar_bands": [...] | None, "metadata": {...}}

Only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``, which
refuses the arbitrary code a pickle can carry. Normalization statistics are buffers in the
state dict: a checkpoint alone reproduces its predictions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from xrecon._version import __version__
from xrecon.errors import CheckpointError, MethodError, XreconError
from xrecon.runtime import resolve_device

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "XreconModel",
    "get_model",
    "get_model_class",
    "list_models",
    "load",
    "read_checkpoint",
    "register_model",
]

CHECKPOINT_FORMAT = "xrecon-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

_REGISTRY: dict[str, type[XreconModel]] = {}
M = TypeVar("M", bound="type[XreconModel]")


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator adding a network to the registry under ``name`` (the checkpoint's ``model``)."""

    def add(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a model named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def list_models() -> list[str]:
    """Names of the registered networks.

    Examples
    --------
    >>> import xrecon.models
    >>> "anytimeformer" in xrecon.models.list_models()
    True
    """
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[XreconModel]:
    """The registered network class called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown model {name!r}; registered models: {list_models()}") from None


def get_model(name: str, **config: Any) -> XreconModel:
    """A new, randomly initialised network ``name`` built from its config options.

    Examples
    --------
    >>> import xrecon.models
    >>> model = xrecon.models.get_model("anytimeformer", d_model=32, d_inner=16, n_optical_bands=4)
    >>> model.config.d_model
    32
    """
    cls = get_model_class(name)
    try:
        cfg = cls.config_class(**config)
    except TypeError as err:
        names = [f.name for f in dataclasses.fields(cls.config_class)]
        raise MethodError(f"{name!r} does not take these options: {err}; its options are {names}") from err
    return cls(cfg)


class XreconModel(nn.Module):
    """Base of xrecon networks: a typed config, band names, normalization buffers, ``save``.

    Subclasses set ``config_class`` (a frozen dataclass) and register themselves with
    :func:`register_model`.
    """

    name: str = ""
    config_class: type = type(None)

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.optical_bands: list[str] | None = None
        self.sar_bands: list[str] | None = None
        self.metadata: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.parameters()).device

    def save(self, path: str | os.PathLike) -> Path:
        """Write this model as one self-contained xrecon checkpoint file.

        The file holds the weights, the config, the normalization statistics, the band names,
        free-form ``metadata`` and the xrecon version. It is written to a temporary file in the
        same folder and renamed into place, so an interrupted save never leaves a partial file.

        Returns
        -------
        pathlib.Path
            The path written.

        Examples
        --------
        >>> import tempfile, os, xrecon.models
        >>> model = xrecon.models.get_model("anytimeformer", d_model=32, d_inner=16)
        >>> path = model.save(os.path.join(tempfile.mkdtemp(), "tiny.xrecon"))
        >>> xrecon.models.load(path).config == model.config
        True
        """
        path = Path(path)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "xrecon_version": __version__,
            "model": self.name,
            "config": dataclasses.asdict(self.config),
            # CPU copies so the file loads anywhere, whatever device the model is on.
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
            "optical_bands": None if self.optical_bands is None else list(self.optical_bands),
            "sar_bands": None if self.sar_bands is None else list(self.sar_bands),
            "metadata": dict(self.metadata),
        }
        _check_plain(payload["metadata"], "metadata")
        path.parent.mkdir(parents=True, exist_ok=True)
        # a fresh name beside the target (same file system, so the rename is atomic); open() rather
        # than mkstemp so the file gets the usual permissions, readable by other workers
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "xb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any]) -> XreconModel:
        """Build the model recorded in a checkpoint dict (see :func:`read_checkpoint`)."""
        try:
            config = cls.config_class(**payload["config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint config does not fit {cls.__name__}: {err}") from err
        _check_finite(payload["state_dict"], payload.get("model") or cls.__name__)
        model = cls(config)
        try:
            model.load_state_dict(payload["state_dict"], strict=True)
        except (RuntimeError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint weights do not fit its {cls.__name__} config: {err}") from err
        model.optical_bands = _names(payload.get("optical_bands"), "optical_bands")
        model.sar_bands = _names(payload.get("sar_bands"), "sar_bands")
        model.metadata = dict(payload.get("metadata") or {})
        return model.eval()


def non_finite_tensors(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding a NaN or an infinity.

    Examples
    --------
    >>> non_finite_tensors({"w": torch.ones(2), "b": torch.tensor([0.0, float("nan")]), "n": torch.ones(1).long()})
    ['b']
    """
    return sorted(str(k) for k, v in state_dict.items()
                  if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())
                  and not bool(torch.isfinite(v).all()))


def _check_finite(state_dict: Mapping[str, Any], what: str) -> None:
    """Refuse weights or normalization buffers that are not finite: what a diverged run leaves.

    A network with NaN weights predicts NaN everywhere, and ``fill`` would then quietly take every
    value from its fallback while the provenance names the network.
    """
    bad = non_finite_tensors(state_dict)
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise CheckpointError(
            f"the {what} checkpoint's weights are not finite (NaN or inf) in {len(bad)} tensor(s): {shown}; "
            "the run that saved it diverged: train again (e.g. with a lower lr=) or use an earlier checkpoint"
        )


def _check_plain(value: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would refuse later, when the file is read."""
    if value is None or isinstance(value, str | int | float | bool | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise XreconError(f"checkpoint {where} keys must be strings, got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise XreconError(f"checkpoint {where} must hold plain values (str, numbers, lists, dicts, tensors), "
                      f"got {type(value).__name__}: convert it first (e.g. str(path), array.tolist())")


def _names(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"checkpoint entry {key!r} must be a list of band names, got {value!r}")
    return list(value)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of an xrecon checkpoint file, without building the model.

    Raises
    ------
    CheckpointError
        For a missing file, a file torch cannot read or that holds more than tensors and plain
        values (refused unread), or a file that is not an xrecon checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {os.fspath(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated, foreign or unsafe files
        raise CheckpointError(
            f"{path.name!r} is not a readable xrecon checkpoint (torch.load with weights_only=True "
            f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(payload, Mapping) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            hint = (
                " It looks like a bare PyTorch state_dict; for the official AnytimeFormer release use "
                "xrecon.models.anytimeformer.from_official(path, optical_mean, optical_std, sar_mean, sar_std)."
            )
        raise CheckpointError(f"{path.name!r} is not an xrecon checkpoint (no format marker).{hint}")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name!r} has checkpoint format version {version!r}, this xrecon ({__version__}) "
            f"reads versions up to {CHECKPOINT_FORMAT_VERSION}; upgrade xrecon"
        )
    for key in ("model", "config", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{path.name!r} is a damaged xrecon checkpoint: entry {key!r} is missing")
    if not isinstance(payload["config"], dict) or not isinstance(payload["state_dict"], dict):
        raise CheckpointError(f"{path.name!r} is a damaged xrecon checkpoint: config/state_dict are not dicts")
    return payload


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> XreconModel:
    """Load any xrecon checkpoint, in eval mode.

    Parameters
    ----------
    path
        A file written by ``model.save``.
    device
        Where to put the weights: None = "cuda" if available, else "cpu" (see
        :func:`xrecon.runtime.resolve_device`); the file itself is
        always read onto the CPU first, so checkpoints written on a GPU load on machines without one.

    Raises
    ------
    CheckpointError
        For a missing, foreign, damaged or unsafe file, an unknown model name, weights that do
        not match the recorded config, or weights or normalization statistics that are not finite
        (NaN or inf: what a diverged run leaves; the message names the tensors).

    Examples
    --------
    >>> import xrecon.models
    >>> model = xrecon.models.load("model.xrecon")  # doctest: +SKIP
    >>> model.optical_bands  # doctest: +SKIP
    ['B02', 'B03', ...]
    """
    payload = read_checkpoint(path)
    name = payload["model"]
    if name not in _REGISTRY:
        raise CheckpointError(
            f"{Path(path).name!r} holds a {name!r} model, which this xrecon does not know; known: {list_models()}"
        )
    try:
        model = _REGISTRY[name].from_checkpoint(payload)
    except CheckpointError as err:
        raise CheckpointError(f"{Path(path).name!r}: {err}") from err.__cause__
    return model.to(resolve_device(device))
