"""The training loop's settings (:class:`TrainConfig`), time budgets, and how ``train``'s keywords resolve.

``train(**options)`` takes three kinds of keyword: the loop's settings (:class:`TrainConfig` fields,
the same for every method), the method's training task's own options (its ``options_type``, e.g.
AnytimeFormer's ``gaps`` or RESTORE-DiT's ``frames``) and the network's architecture options
(``task.options()``); :func:`resolve_options` sorts them, and refuses the others listing all three.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from xrecon.errors import CubeError, MethodError, XreconError
from xrecon.runtime import PRECISIONS

if TYPE_CHECKING:
    from xrecon.training.tasks import TrainingTask

__all__ = ["LEGACY_FIELDS", "TrainConfig", "describe_preset", "parse_time_budget", "resolve_options",
           "resolve_preset", "task_config"]

#: Fields TrainConfig had until AnytimeFormer's options became its task's (``AnytimeFormerOptions``):
#: a saved config holding them is read without them, and a resumed run takes them as task options.
LEGACY_FIELDS = ("gaps", "loss", "reconstruction_weight", "anytime", "tv_weight", "window", "min_obs")


@dataclass(frozen=True)
class TrainConfig:
    """The loop's settings, the same for every method (the architecture is separate: a preset name or
    a config object; what a method's task reads, such as AnytimeFormer's ``gaps`` or RESTORE-DiT's
    ``frames``, is the task's own :class:`~xrecon.training.tasks.TaskOptions`).

    The defaults are sized for AnytimeFormer's pixel-years; a task may replace some of them for the
    fields :func:`train` is not given (:meth:`TrainingTask.config_defaults
    <xrecon.training.tasks.TrainingTask.config_defaults>`; RESTORE-DiT's count windows).

    Attributes
    ----------
    steps : int
        Optimizer steps in all (the schedule's length).
    batch_size : int
        Samples per step. AnytimeFormer: pixel-years; a batch's pixels come from one cube and one
        calendar year (they share dates). RESTORE-DiT: windows (its default: 8).
    lr, min_lr_ratio : float
        Peak learning rate, and the fraction of it the cosine decays to at ``steps``.
    warmup : int
        Steps of linear warm-up from 0 to ``lr``.
    schedule : {"cosine", "constant"}
        After warm-up.
    weight_decay : float
        AdamW decay of the weight matrices (not of biases, norms and fusion factors' bias rows... only
        tensors with 2 or more dimensions are decayed, as in nanoGPT).
    grad_clip : float
        Clip the gradient norm to this (0 = no clipping).
    validation_fraction : float
        Share of the spatial blocks held out for validation (0 = none: the best model is the last).
    block : int, optional
        Side of the spatial blocks, in pixels: the unit of reading and of validation hold-out.
        None: the cubes' dask chunks when they make at least 8 blocks, else about a quarter of the
        larger side (at least 8 pixels).
    validation_pixels : int
        At most this many validation samples (pixel-years; RESTORE-DiT: windows, default 64) are
        scored (a fixed set, read once).
    validation_interval, log_interval, checkpoint_interval : int
        Every how many steps to validate (and save the best), to log, to save the last state.
    seed : int
        Seeds the block hold-out, the stream, the gaps, the initial weights and dropout: same seed,
        same data and settings, same weights (bit for bit on a CPU with ``num_workers=0``).
    precision : {"auto", "fp32", "bf16", "fp16"}
        Mixed precision of the forward pass. "auto": bf16 on GPUs that have it (else fp16 with loss
        scaling), fp32 on CPUs.
    num_workers : int
        DataLoader worker processes reading blocks (0 = in the main process).
    buffer_size : int
        Samples in the stream's shuffle buffer (RESTORE-DiT: windows, default 256).
    ema : float
        Decay of an exponential moving average of the weights, kept after every optimizer step
        (``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: ``ema_w = decay ema_w
        + (1 - decay) w``, starting from the weights after the first step; buffers such as the
        normalization statistics are copied, never averaged). 0 (the default): none. With a decay,
        validation scores the averaged weights and the best checkpoint holds them; the last
        checkpoint holds the trained weights and the average in its resume state, so a resumed run
        continues both. Its horizon is about ``1 / (1 - ema)`` steps (0.999: the last thousand), so
        keep it well below ``steps``.

    Examples
    --------
    >>> config = TrainConfig(steps=500, batch_size=128)
    >>> TrainConfig.from_dict(config.to_dict()) == config
    True
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    validation_fraction: float = 0.1
    block: int | None = None
    validation_pixels: int = 4096
    validation_interval: int = 100
    log_interval: int = 10
    checkpoint_interval: int = 100
    seed: int = 0
    precision: str = "auto"
    num_workers: int = 0
    buffer_size: int = 4096
    ema: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "validation_fraction", "ema"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
                    or not math.isfinite(value):
                raise XreconError(f"TrainConfig.{name} must be a finite number, got {value!r} "
                                  f"({type(value).__name__}); e.g. lr=1e-3 (CLI --option lr=1e-3)")
        positive = ("steps", "batch_size", "validation_pixels", "validation_interval", "log_interval",
                    "checkpoint_interval", "buffer_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise XreconError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        for name in ("warmup", "seed", "num_workers"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
                raise XreconError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise XreconError(f"TrainConfig: lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, "
                              f"{self.min_lr_ratio}")
        if self.schedule not in ("cosine", "constant"):
            raise XreconError(f"TrainConfig.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0 <= self.ema < 1:
            raise XreconError(f"TrainConfig.ema must be in [0, 1): the decay of the weights' moving average "
                              f"(0 = none, e.g. 0.999), got {self.ema!r}")
        if not 0 <= self.validation_fraction < 1:
            raise XreconError(f"TrainConfig.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.block is not None and (not isinstance(self.block, int) or self.block < 1):
            raise XreconError(f"TrainConfig.block must be a positive integer or None, got {self.block!r}")
        if self.precision not in ("auto", *PRECISIONS):
            raise XreconError(f"TrainConfig.precision must be 'auto' or one of {sorted(PRECISIONS)}, "
                              f"got {self.precision!r}")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise XreconError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and JSON."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Read what :meth:`to_dict` wrote (unknown keys are refused; AnytimeFormer's options, which
        earlier checkpoints saved here, are left to its task: see :data:`LEGACY_FIELDS`)."""
        d = {k: v for k, v in d.items() if k not in LEGACY_FIELDS}
        try:
            return cls(**d)
        except TypeError as err:
            raise XreconError(f"not a TrainConfig: {err}") from None


def parse_time_budget(budget: Any) -> float | None:
    """A time budget in seconds: a number of seconds, a ``timedelta``, or a pandas-style string.

    Examples
    --------
    >>> parse_time_budget("10min"), parse_time_budget("90s"), parse_time_budget("1h"), parse_time_budget(600)
    (600.0, 90.0, 3600.0, 600.0)
    >>> parse_time_budget("600")  # a bare number is seconds
    600.0
    >>> parse_time_budget("soon")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xrecon.errors.XreconError: time_budget='soon' is not a duration: give seconds (600) or a string like ...
    """
    if budget is None:
        return None
    bad = XreconError(f"time_budget={budget!r} is not a duration: give seconds (600) or a string like "
                      "'10min', '90s', '1h'")
    if isinstance(budget, bool):
        raise bad
    if isinstance(budget, int | float | np.integer | np.floating):
        seconds = float(budget)
    elif isinstance(budget, datetime.timedelta):  # pandas.Timedelta too
        seconds = budget.total_seconds()
    elif isinstance(budget, str):
        import pandas as pd

        try:
            seconds = float(budget.strip())
        except ValueError:
            try:
                seconds = pd.Timedelta(budget.strip()).total_seconds()
            except (ValueError, TypeError):
                raise bad from None
    else:
        raise bad
    if not math.isfinite(seconds) or seconds <= 0:
        raise XreconError(f"time_budget={budget!r} must be a positive, finite duration")
    return seconds


def resolve_options(task: TrainingTask, cubes: xr.Dataset | Sequence[xr.Dataset], config: TrainConfig | None,
                    options: Mapping[str, Any], shortcuts: Mapping[str, Any],
                    ) -> tuple[list[xr.Dataset], TrainConfig, dict[str, Any], dict[str, Any]]:
    """(cubes, settings, the training settings given explicitly, the architecture options).

    The task's own options (``task.options_type``) go to the task (:meth:`TrainingTask.configure`),
    and the names of those given to ``task.given``.
    """
    if isinstance(cubes, xr.Dataset):
        cubes = [cubes]
    cubes = list(cubes)
    if not cubes:
        raise CubeError("train needs at least one cube")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    task_fields = set(task.options_type.names())
    arch_fields = set(task.options())
    clash = sorted(task_fields & (train_fields | arch_fields))
    if clash:
        raise MethodError(f"{type(task).__name__}: its options {clash} have the names of training or architecture "
                          "options")
    unknown = sorted(set(options) - train_fields - arch_fields - task_fields)
    if unknown:
        raise MethodError(f"train: unknown options {unknown}; {task.name} options: {sorted(task_fields)}; "
                          f"training options: {sorted(train_fields)}; architecture options: {sorted(arch_fields)}")
    explicit = {k: v for k, v in options.items() if k in train_fields}
    explicit.update((k, v) for k, v in shortcuts.items() if v is not None)
    architecture = {k: v for k, v in options.items() if k in arch_fields}
    given = {k: v for k, v in options.items() if k in task_fields}
    task.configure(dataclasses.replace(task.default_options(), **given))
    task.given = frozenset(given)
    return cubes, dataclasses.replace(config or task_config(task), **explicit), explicit, architecture


def task_config(task: TrainingTask) -> TrainConfig:
    """``TrainConfig()`` with the task's own defaults (:meth:`TrainingTask.config_defaults`)."""
    defaults = dict(task.config_defaults())
    unknown = sorted(set(defaults) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise MethodError(f"{type(task).__name__}.config_defaults() names {unknown}, which are not TrainConfig "
                          "fields")
    return TrainConfig(**defaults)


def resolve_preset(task: TrainingTask, preset: Any, model: Any) -> Any:
    """``train``'s architecture preset: ``preset=``, or its deprecated alias ``model=``, or the task's default."""
    if model is not None:
        warnings.warn("train(model=...) is deprecated: use preset=..., the same name as `xrecon train --preset`",
                      FutureWarning, stacklevel=4)
        if preset is not None:
            raise XreconError("train: give preset= or its deprecated alias model=, not both")
        preset = model
    presets = task.presets()
    if preset is None:
        preset = task.default_preset
    if isinstance(preset, str) and preset not in presets:
        raise MethodError(f"preset={preset!r} is not a {task.name} preset; presets: {sorted(presets)} "
                          "(or pass a config object)")
    return preset


def describe_preset(preset: Any, init: Any, state: Any) -> str:
    if state is not None:
        return "of the resumed run"
    if init is not None:
        return "of init"
    return preset if isinstance(preset, str) else type(preset).__name__
