"""Training a network on one's own cubes: spatial validation, checkpoints, resuming.

:func:`train` is a short loop in the manner of nanoGPT: a :class:`TrainConfig` of training settings
(the architecture is separate, e.g. an :class:`~xrecon.models.anytimeformer.AnytimeFormerConfig` or a
preset name), a stream of batches over the training blocks, AdamW with linear warm-up and cosine
decay, and an evaluation of a fixed, seeded set of validation samples from spatially held-out blocks.

The loop is the same for every network; what is the network's own (its architecture options, how a
new model is built, the samples it learns from, its forward pass and loss, its validation score) is
the method's training task, a :class:`~xrecon.training.tasks.TrainingTask` found with
``xrecon.methods.get(method).training_task()``. AnytimeFormer's is
:class:`~xrecon.training.tasks.AnytimeFormerTask`.

Files written for ``out="model.xrecon"`` (see :func:`training_files`):

``model.xrecon``
    The best model so far (lowest validation loss after step 0: the step-0 validation is a baseline,
    so this file appears at the first validation after training has started), an ordinary xrecon checkpoint for
    ``ds.recon.fill(method="anytimeformer", checkpoint=...)``; with ``TrainConfig.ema`` the moving
    average of the weights (which is also what validation scores). Its ``metadata["training"]`` holds the
    provenance: settings, seed, steps, best and final validation loss, normalization statistics,
    validation blocks, timings, what it was initialised from, and what the method's task adds
    (:meth:`TrainingTask.provenance <xrecon.training.tasks.TrainingTask.provenance>`; RESTORE-DiT: the
    ``tile``, ``frames`` and ``sar_window`` it trained on, which ``fill`` takes as its defaults).
``model.last.xrecon``
    The latest model (the trained weights, never the average), also a loadable checkpoint, with the
    full resumable state in ``metadata["resume"]``: optimizer, gradient scaler, random-number state,
    the stream's position, the best score so far and the moving average of the weights, if any.
    ``train(..., resume=True)`` continues from it.
``model.log.csv``
    One row per ``log_interval`` steps (and per validation): step, epoch, learning rate, training
    loss and its parts (the task's ``terms``; AnytimeFormer: imputation, reconstruction, tv),
    validation loss and RMSE, the best step so far, samples ("pixels") seen, seconds (see :func:`log_columns`).

With ``time_budget=`` the number of steps is planned from a short timed probe (see :func:`train`);
every timing reads the module's clock ``_now``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import datetime
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from xrecon._version import __version__
from xrecon.cube import AUTO_MASK, DEFAULT_SAR, resolve_mask, validate
from xrecon.errors import (
    CheckpointError,
    CubeError,
    MethodError,
    OutputExistsError,
    TrainingDivergedError,
    XreconError,
)
from xrecon.models.base import XreconModel
from xrecon.runtime import PRECISIONS, autocast, default_threads, resolve_device, resolve_precision
from xrecon.training.stats import NormStats, compute_stats
from xrecon.training.stream import BlockStream
from xrecon.training.tasks import TrainingTask

__all__ = ["TrainConfig", "log_columns", "parse_time_budget", "train", "training_files"]

_VALIDATION_STREAM = 1  # the validation set's seed is (seed, this): never the training stream's

#: The trainer's clock, in seconds: every timing (the time budget, the log's seconds, the provenance's
#: training seconds) reads it, so that a test can replace it with a fake clock.
_now = time.perf_counter

_PROBE = 10  # steps timed before a time budget's plan (at most warm-up + 1: the schedule's length does not matter)
_UNPLANNED = 10**9  # TrainConfig.steps of a budgeted run until its plan fixes them
_BUDGET_SAFETY = 0.95  # plan for this share of the budget left after the probe (steps vary in cost)

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


def training_files(out: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The best checkpoint, last (resumable) checkpoint and CSV log that :func:`train` writes for ``out``.

    Examples
    --------
    >>> [p.name for p in training_files("runs/model.xrecon")]
    ['model.xrecon', 'model.last.xrecon', 'model.log.csv']
    """
    best = Path(out)
    return best, best.with_name(f"{best.stem}.last{best.suffix}"), best.with_name(f"{best.stem}.log.csv")


def log_columns(terms: Sequence[str]) -> tuple[str, ...]:
    """The CSV log's columns for a training task with loss parts ``terms`` (its ``terms`` attribute).

    Examples
    --------
    >>> log_columns(("imputation", "reconstruction", "tv"))  # AnytimeFormer's  # doctest: +NORMALIZE_WHITESPACE
    ('step', 'epoch', 'lr', 'loss', 'imputation', 'reconstruction', 'tv', 'val_loss', 'val_rmse', 'best_step',
     'pixels', 'seconds')

    ``best_step`` is given on validation rows: the step of the best model so far (what ``out`` holds),
    empty at step 0, whose validation is a baseline and never the best.
    """
    return ("step", "epoch", "lr", "loss", *terms, "val_loss", "val_rmse", "best_step", "pixels", "seconds")


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


# --------------------------------------------------------------------------------------------------
# the data side: blocks, hold-out, statistics


def _block_size(cubes: Sequence[xr.Dataset], optical: Hashable, block: int | None) -> int | None:
    """The stream's ``block``: the dask chunks when they make enough blocks to hold some out, else a size."""
    if block is not None:
        return block
    n_blocks, sides = 0, []
    for ds in cubes:
        da = ds[optical]
        sides.append(max(da.sizes["y"], da.sizes["x"]))
        chunks = da.chunksizes
        n_blocks += len(chunks["y"]) * len(chunks["x"]) if chunks else 1
    if all(ds[optical].chunks is not None for ds in cubes) and n_blocks >= 8:
        return None
    return max(8, math.ceil(max(sides) / 4))


def _split_blocks(blocks: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training blocks, validation blocks): a seeded random share of the blocks, at least one each way."""
    if fraction == 0:
        return blocks, blocks[:0]
    n = len(blocks)
    if n < 2:
        raise CubeError(
            f"the cube makes {n} spatial block(s), too few to hold one out for validation; pass a smaller "
            "block= or validation_fraction=0"
        )
    n_val = min(max(1, round(fraction * n)), n - 1)
    pick = np.random.default_rng([seed, 7]).permutation(n)[:n_val]
    is_val = np.zeros(n, bool)
    is_val[pick] = True
    return blocks[~is_val], blocks[is_val]


def _area(stream: BlockStream, blocks: np.ndarray, cube: int, shape: tuple[int, int]) -> np.ndarray:
    """(y, x) bool: the pixels of ``cube`` inside ``blocks``."""
    area = np.zeros(shape, bool)
    for task in blocks[blocks[:, 0] == cube]:
        area[stream.block_slices(task)] = True
    return area


def _training_stats(cubes: Sequence[xr.Dataset], stream: BlockStream, blocks: np.ndarray, optical: Hashable,
                    sar: Hashable | None, mask: Hashable | None) -> NormStats:
    """Normalization statistics of the training blocks only (validation pixels stay unseen)."""
    masked = []
    for c, ds in enumerate(cubes):
        shape = (ds[optical].sizes["y"], ds[optical].sizes["x"])
        area = xr.DataArray(_area(stream, blocks, c, shape), dims=("y", "x"))
        ds = ds.copy()
        ds[optical] = ds[optical].where(area)
        if sar is not None:
            ds[sar] = ds[sar].where(area)
        masked.append(ds)
    return compute_stats(masked, optical=optical, sar=sar, mask=mask)


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    # The last step (steps - 1) is at the floor: a schedule that ran to its end reached it.
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class _EMA:
    """An exponential moving average of a model's weights (``TrainConfig.ema``), on the model's device.

    What ``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))``
    computes, bit for bit (the tests compare them): the first update copies the parameters, later ones
    ``ema = lerp(ema, w, 1 - decay)``; buffers (normalization statistics...) are copied from the
    model at every update, never averaged. Written out because ``AveragedModel`` keeps its count of
    updates in a tensor and reads it at every step (``bool(self.n_averaged == 0)``), which on a GPU
    waits for the step to finish; here the count is a Python int.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained; the average is a copy of it (without its ``metadata``), in eval mode.
    decay : float
        In (0, 1).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        saved = getattr(model, "metadata", None)
        if saved is not None:
            model.metadata = {}  # a resumed model's metadata holds the whole resume state: not copied
        try:
            self.module = copy.deepcopy(model).eval()
        finally:
            if saved is not None:
                model.metadata = saved
        for q in self.module.parameters():
            q.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Average in the model's current weights and copy its buffers."""
        ema = list(self.module.parameters())
        now = [q.detach() for q in model.parameters()]
        if self.updates == 0:
            for e, w in zip(ema, now, strict=True):
                e.copy_(w)
        else:
            torch._foreach_lerp_(ema, now, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The number of updates and the averaged weights (CPU copies), for the last checkpoint."""
        return {"updates": self.updates,
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["state_dict"], strict=True)


# --------------------------------------------------------------------------------------------------
# files


class _Log:
    """The CSV log; on resume, rows written after the last checkpoint are dropped (they are redone)."""

    def __init__(self, path: Path, resume_step: int | None, columns: Sequence[str]) -> None:
        self.path, self.columns = path, tuple(columns)
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow({k: _fmt(row.get(k)) for k in self.columns})


def _fmt(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def _save(model: XreconModel, path: Path, metadata: dict[str, Any]) -> None:
    saved = model.metadata
    model.metadata = metadata
    try:
        model.save(path)
    finally:
        model.metadata = saved


# --------------------------------------------------------------------------------------------------
# the run: what train() resolves and sets up, and one session of training


@dataclass
class _Progress:
    """How far a run has got: what the last checkpoint saves and a resumed run starts from."""

    step: int = 0
    best: float = math.inf
    best_step: int | None = None
    last_val: tuple[float, float] = (math.nan, math.nan)
    pixels: int = 0
    train_seconds: float = 0.0

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Progress:
        return cls(step=int(state["step"]), best=float(state["best"]), best_step=state["best_step"],
                   last_val=tuple(state["last_val"]), pixels=int(state["pixels"]),
                   train_seconds=float(state["train_seconds"]))


@dataclass
class _Budget:
    """A time budget and its plan: what the probe measured and the steps it allows (saved for resuming)."""

    seconds: float
    max_steps: int | None = None  # steps= given with the budget: at most these
    fit_warmup: bool = False  # no warmup= given: the warm-up is a tenth of the planned steps, at most TrainConfig's
    planned: int | None = None  # the schedule's length, once the probe has measured the step rate
    probe_steps: int | None = None
    step_seconds: float | None = None  # a training step (reading its batch included)
    validation_seconds: float | None = None  # a validation (at step 0)
    checkpoint_seconds: float | None = None  # saving a checkpoint (at step 0)
    replans: list[list[int]] = field(default_factory=list)  # [step, steps]: corrections when the rate drifted

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Budget:
        return cls(**{k: ([list(r) for r in v] if k == "replans" else v) for k, v in d.items()})


@dataclass(frozen=True)
class _Data:
    """The cubes as the model sees them, the stream's settings and the spatial hold-out."""

    cubes: list[xr.Dataset]
    bands: list[str]
    sar_bands: list[str] | None  # None when the model takes no SAR
    stream_kw: dict[str, Any]  # optical, sar, mask, block: the task adds its own settings
    block: int | None
    grid: BlockStream  # unseeded, only for the blocks' geometry
    train_blocks: np.ndarray
    val_blocks: np.ndarray


def _task(method: str) -> TrainingTask:
    """A new instance of the method's training task (one per run: a task may keep per-run state)."""
    import xrecon.methods  # late: the registry may import training tasks

    try:
        found = xrecon.methods.get(method)
    except MethodError:
        raise MethodError(f"train(method={method!r}): no such method; trainable methods are "
                          f"{xrecon.methods.trainable_methods()}") from None
    task = found.training_task()  # MethodError naming the trainable methods when it has none
    if not (isinstance(task, type) and issubclass(task, TrainingTask)):
        raise MethodError(f"method {method!r}: its training task must be a TrainingTask subclass, got {task!r}")
    return task()


def _precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``TrainConfig.precision``: "auto" is the trainer's choice, the rest runtime's."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        # fp16 only where bf16 is missing: it needs loss scaling (the GradScaler is on for it alone).
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return resolve_precision(precision, device)


def _resolve_options(task: TrainingTask, cubes: xr.Dataset | Sequence[xr.Dataset], config: TrainConfig | None,
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
    return cubes, dataclasses.replace(config or _task_config(task), **explicit), explicit, architecture


def _task_config(task: TrainingTask) -> TrainConfig:
    """``TrainConfig()`` with the task's own defaults (:meth:`TrainingTask.config_defaults`)."""
    defaults = dict(task.config_defaults())
    unknown = sorted(set(defaults) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise MethodError(f"{type(task).__name__}.config_defaults() names {unknown}, which are not TrainConfig "
                          "fields")
    return TrainConfig(**defaults)


def _changed(task: TrainingTask, model: XreconModel, architecture: Mapping[str, Any]) -> list[str]:
    """The architecture options that differ from ``model``'s."""
    fixed = task.architecture(model)
    return sorted(k for k, v in architecture.items() if fixed[k] != v)


def _starting_point(paths: tuple[Path, Path, Path], cfg: TrainConfig, explicit: Mapping[str, Any],
                    architecture: Mapping[str, Any], task: TrainingTask, init: Any, resume: bool, overwrite: bool,
                    ) -> tuple[TrainConfig, XreconModel | None, dict[str, Any] | None]:
    """(settings, model to start from, resume state): the last checkpoint's, ``init``, or none (from scratch)."""
    best_path, last_path, _ = paths
    if resume and last_path.is_file():
        model_obj = task.load_init(last_path)
        state = model_obj.metadata.get("resume")
        if not isinstance(state, dict):
            raise CheckpointError(f"{last_path.name!r} holds no training state to resume from")
        saved = TrainConfig.from_dict(state["config"])
        changed = sorted(k for k, v in explicit.items() if k != "steps" and getattr(saved, k) != v)
        changed += _changed(task, model_obj, architecture)
        saved_opts = _saved_options(task, state)
        changed += sorted(k for k in task.given if getattr(saved_opts, k) != getattr(task.opts, k))
        task.configure(saved_opts)
        if changed:
            raise XreconError(f"resume continues with the saved settings; these differ: {changed} "
                              "(start a new run in another file to change them)")
        return dataclasses.replace(saved, steps=cfg.steps if "steps" in explicit else saved.steps), model_obj, state
    if not overwrite and (best_path.exists() or last_path.exists()) and not _untrained(best_path, last_path, task):
        raise OutputExistsError(f"{os.fspath(best_path)!r} or its last checkpoint exists; pass resume=True to "
                                "continue that run or overwrite=True to start again")
    if init is None:
        return cfg, None, None
    model_obj = task.load_init(init)
    changed = _changed(task, model_obj, architecture)
    if changed:
        raise XreconError(f"init fixes the architecture; these options differ from it: {changed}")
    return cfg, model_obj, None


def _saved_options(task: TrainingTask, state: Mapping[str, Any]) -> Any:
    """The task's options of a resumed run: as saved, or (earlier checkpoints) from the saved config's
    fields of those names, the task's defaults for the others."""
    saved = state.get("task_options")
    if saved is None:
        config = state.get("config") or {}
        saved = {**task.default_options().to_dict(),
                 **{k: v for k, v in config.items() if k in task.options_type.names()}}
    return task.options_type.from_dict(saved)


def _untrained(best_path: Path, last_path: Path, task: TrainingTask) -> bool:
    """True when the files are those of a run that trained nothing: no best checkpoint, and a last
    checkpoint of this trainer (with a resume state) at step 0. A rerun may replace them without
    ``overwrite``: nothing would be lost."""
    if best_path.exists() or not last_path.is_file():
        return False
    try:
        state = task.load_init(last_path).metadata.get("resume")
    except Exception:  # not a checkpoint of ours: leave it alone
        return False
    return isinstance(state, dict) and state.get("step") == 0


def _budget_to_run(budget: float | None, max_steps: int | None, cfg: TrainConfig, state: Mapping[str, Any] | None,
                   fit_warmup: bool = False) -> tuple[TrainConfig, _Budget | None]:
    """(settings, plan) of a time budget: a new plan, or on resume the saved one (its planned steps are kept)."""
    if state is None:
        if budget is None:
            return cfg, None
        steps = _UNPLANNED if max_steps is None else max_steps
        return dataclasses.replace(cfg, steps=steps), _Budget(budget, max_steps, fit_warmup=fit_warmup)
    saved = state.get("time_budget")
    if saved is None:
        if budget is not None:
            raise XreconError("resume continues with the saved settings: that run has no time budget (it trains for "
                              "its steps; steps= may be raised); start a new run in another file for a budget")
        return cfg, None
    plan = _Budget.from_dict(saved)
    if budget is not None and budget != plan.seconds:
        raise XreconError(f"resume keeps the saved time budget ({plan.seconds:g} s) and its plan; time_budget="
                          f"{budget:g} s differs (steps= without time_budget may be raised to train longer)")
    if plan.planned is None and budget is None and cfg.steps != _UNPLANNED and cfg.steps != plan.max_steps:
        plan.planned = cfg.steps  # steps= given on resume before the probe had planned: they win
    return cfg, plan


def _training_mask(cubes: Sequence[xr.Dataset], optical: Hashable, mask: Any) -> Hashable | bool:
    """The one mask name every cube is read with, or False for none (``mask="auto"``: the cubes' own)."""
    names = {resolve_mask(ds, mask, optical=optical) for ds in cubes}
    if len(names) > 1:
        raise CubeError(f"the cubes carry different clear masks {sorted(map(str, names))} (None = no mask); "
                        "expected the same in every cube: pass mask=<name> or mask=False")
    (name,) = names
    return False if name is None else name


def _prepare_data(task: TrainingTask, cubes: Sequence[xr.Dataset], cfg: TrainConfig, model_obj: XreconModel | None,
                  state: Mapping[str, Any] | None, optical: Hashable, sar: Hashable | None,
                  mask: Hashable | None) -> _Data:
    """The cubes as the model will see them (only its variables, bands in its order), and the hold-out."""
    parts = [validate(ds, optical=optical, sar=sar, mask=mask) for ds in cubes]
    bands = [str(b) for b in parts[0].bands]
    sar_bands = [str(b) for b in parts[0].sar_bands] if parts[0].sar is not None else None
    # A new model takes what the cube has; a loaded one the bands it was trained on, in its order.
    model_bands, model_sar = bands, sar_bands
    if model_obj is not None:
        model_bands, model_sar = task.check_model(model_obj, bands, sar_bands,
                                                  "the resumed model" if state else "init")
    use_sar = sar_bands is not None and model_sar is not None
    sar_name = sar if use_sar else None
    has_mask = mask is not None and mask is not False
    keep = [optical] + ([mask] if has_mask else []) + ([sar_name] if use_sar else [])
    selected = []
    for ds in cubes:
        ds = ds[keep]
        if model_bands != bands:
            ds = ds.sel(band=model_bands)
        if use_sar and model_sar != sar_bands:
            ds = ds.sel(sar_band=model_sar)
        selected.append(ds)

    block = _block_size(selected, optical, cfg.block)
    stream_kw = dict(optical=optical, sar=sar_name, mask=mask, block=block)
    if state is None:  # a new run: the task's defaults may adapt to the cubes (a resumed run keeps its own)
        task.configure(task.adapt_options(selected, task.given, optical))
    grid = task.stream(selected, cfg, **stream_kw)
    if state is not None:  # the saved hold-out, whatever the seed would pick now
        val_blocks = np.asarray(state["validation_blocks"], dtype=np.int64).reshape(-1, 3)
        is_val = {tuple(v) for v in val_blocks.tolist()}
        train_blocks = np.array([b for b in grid.blocks.tolist() if tuple(b) not in is_val], np.int64)
    else:
        train_blocks, val_blocks = _split_blocks(grid.blocks, cfg.validation_fraction, cfg.seed)
        task.configure(task.check_blocks(grid, train_blocks, task.given))
    return _Data(selected, bands, sar_bands if use_sar else None, stream_kw, block, grid, train_blocks, val_blocks)


def _observations(cubes: Sequence[xr.Dataset], data: _Data, optical: Hashable, init_model: XreconModel | None,
                  state: Mapping[str, Any] | None, net: XreconModel) -> dict[str, Any]:
    """The sketch of every clear observation the run reads (training and validation blocks: validation chooses
    the best checkpoint), merged with what ``init``'s weights were trained on; a resumed run keeps its own.

    One pass over the cubes' validity (:func:`xrecon.leakage.sketch`), recorded in both checkpoints as
    ``metadata["observations"]`` so that ``evaluate`` can tell when it would score the network on them.
    """
    from xrecon import leakage

    if state is not None and net.metadata.get("observations") is not None:
        return net.metadata["observations"]
    mask = data.stream_kw["mask"]
    seen = None
    for original, ds in zip(cubes, data.cubes, strict=True):
        valid = ds[optical].notnull().all("band")
        if mask is not None and mask is not False:
            valid = valid & ds[mask].astype(bool)
        part = leakage.sketch(valid, crs=leakage.crs_key(original, optical))
        seen = part if seen is None else seen.merge(part)
    prior = leakage.sketch_of(init_model.metadata) if init_model is not None else None
    return (seen if prior is None else seen.merge(prior)).to_plain()


def _model_to_train(task: TrainingTask, model_obj: XreconModel | None, model: str | Any,
                    architecture: Mapping[str, Any], data: _Data, state: Mapping[str, Any] | None, init: Any,
                    ) -> tuple[XreconModel, Any]:
    """(the model, where its weights came from): a new one unless resuming or fine-tuning.

    Draws the initial weights from the global random state: call it right after seeding.
    """
    if model_obj is not None:
        return model_obj, (state or {}).get("init") if state else _describe_init(init, model_obj)
    optical, sar, mask = (data.stream_kw[k] for k in ("optical", "sar", "mask"))
    stats = _training_stats(data.cubes, data.grid, data.train_blocks, optical, sar, mask)
    return task.new_model(model, architecture, data.bands, data.sar_bands, stats), None


class _Run:
    """One session of training: network, optimizer, stream, progress, and the files they are saved to.

    Built inside the run's seeded random state: the stream, validation set and a resumed random
    state are set up in the order a fresh and a resumed run share.
    """

    threads: int | None = None  # train(threads=...) on the CPU, for the provenance
    observations: dict[str, Any] | None = None  # the sketch of what the run reads (xrecon.leakage)

    def __init__(self, task: TrainingTask, cfg: TrainConfig, net: Any, data: _Data, state: Mapping[str, Any] | None,
                 init_source: Any, paths: tuple[Path, Path, Path], dev: torch.device, amp: torch.dtype,
                 t_start: float, budget: _Budget | None = None) -> None:
        self.task, self.cfg, self.net, self.data, self.init_source = task, cfg, net, data, init_source
        self.dev, self.amp, self.t_start, self.budget = dev, amp, t_start, budget
        self.save_seconds = 0.0  # spent saving checkpoints in this session
        self.plan_mark: tuple[int, float] | None = None  # (step, training clock) when this session planned
        self.best_path, self.last_path, log_path = paths
        self.norm = net.normalization  # buffers, fixed during training: read once (numpy), for the provenance
        task.setup(net)
        self.stream = task.stream(data.cubes, cfg, **data.stream_kw, seed=cfg.seed, batch_size=cfg.batch_size,
                                  buffer_size=cfg.buffer_size, blocks=data.train_blocks)
        self.val_batches = _validation_batches(task, data.cubes, data.stream_kw, data.val_blocks, cfg)
        self.optimizer = torch.optim.AdamW(_decay_groups(net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
        self.scaler = torch.amp.GradScaler(dev.type, enabled=amp == torch.float16)
        self.p = _Progress()
        self.task_provenance = dict(task.provenance(data.cubes, cfg, **data.stream_kw))
        clash = sorted(set(self.task_provenance) & set(self._provenance()))
        if clash:
            raise MethodError(f"{type(task).__name__}.provenance() returns keys of the trainer's own: {clash}")
        # The weights' moving average: validated and saved as the best model (draws no random numbers).
        self.ema = _EMA(net, cfg.ema) if cfg.ema else None
        if state is not None:
            self._restore(state)
        self.log = _Log(log_path, self.p.step if state is not None else None, log_columns(task.terms))
        # Training time excludes validation, and adds up over resumed sessions.
        self.val_seconds, self.session_start, self.session_base = 0.0, _now(), self.p.train_seconds
        self.sums = torch.zeros(1 + len(task.terms), device=dev)  # loss and its parts since the last log row
        self.n_sum = 0
        # The first step whose loss (or gradient) was not finite, -1 while none: kept on the device (no
        # sync per step) and read at each log row, before anything of that step is validated or saved.
        self.diverged = torch.full((), -1, dtype=torch.long, device=dev)

    def _restore(self, state: Mapping[str, Any]) -> None:
        if self.ema is not None:
            if not isinstance(state.get("ema"), Mapping):
                raise CheckpointError(f"{self.last_path.name!r} was saved with ema={self.cfg.ema} but holds no "
                                      "moving average of the weights to resume")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["rng"])
        if self.dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.dev)
        self.p = _Progress.from_state(state)

    def _seen(self) -> dict[str, Any]:
        """``metadata["observations"]``: what the network trained on, for ``evaluate``'s leak check."""
        return {} if self.observations is None else {"observations": self.observations}

    def provenance(self) -> dict[str, Any]:
        """``metadata["training"]`` of both checkpoints: the trainer's record and the task's (its ``provenance``)."""
        return {**self._provenance(), **self.task_provenance}

    def _provenance(self) -> dict[str, Any]:
        p, data = self.p, self.data
        return {
            "steps": p.step, "seed": self.cfg.seed, "config": self.cfg.to_dict(),
            "architecture": self.task.architecture(self.net),
            "best_step": p.best_step, "best_val_loss": p.best, "val_loss": p.last_val[0], "val_rmse": p.last_val[1],
            "pixels": p.pixels, "train_seconds": p.train_seconds, "device": str(self.dev), "precision": str(self.amp),
            "torch_threads": torch.get_num_threads(), "threads": self.threads,
            "xrecon_version": __version__, "init": self.init_source,
            "validation_blocks": data.val_blocks.tolist(), "block": data.block,
            "normalization": {k: v.tolist() for k, v in self.norm.items()},
            "time_budget": None if self.budget is None else self.budget.to_dict(),
            "task_options": self.task.opts.to_dict(),
        }

    def scored(self) -> Any:
        """The weights validated and saved as the best model: the moving average, if any, else the trained ones."""
        return self.net if self.ema is None else self.ema.module

    def save_best(self) -> None:
        t0 = _now()
        _save(self.scored(), self.best_path, {"training": self.provenance(), **self._seen()})
        self.save_seconds += _now() - t0

    def save_last(self) -> None:
        p, dev = self.p, self.dev
        resume_state = {
            "config": self.cfg.to_dict(), "step": p.step, "best": p.best, "best_step": p.best_step,
            "last_val": list(p.last_val), "pixels": p.pixels, "train_seconds": p.train_seconds,
            "validation_blocks": self.data.val_blocks.tolist(), "init": self.init_source,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "stream": self.stream.state_dict(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "time_budget": None if self.budget is None else self.budget.to_dict(),
            "task_options": self.task.opts.to_dict(),
        }
        if self.ema is not None:
            resume_state["ema"] = self.ema.state_dict()
        t0 = _now()
        _save(self.net, self.last_path, {"training": self.provenance(), "resume": resume_state, **self._seen()})
        self.save_seconds += _now() - t0

    def clock(self) -> None:
        self.p.train_seconds = self.session_base + _now() - self.session_start - self.val_seconds

    def validate(self, baseline: bool = False) -> None:
        """Score the validation set, and save the best model when it improves (never a ``baseline``)."""
        p, t0 = self.p, _now()
        model = self.scored()
        model.eval()
        try:
            with torch.no_grad(), autocast(self.dev, self.amp):
                batches = (_to(batch, self.dev) for batch in self.val_batches)
                p.last_val = self.task.validate(model, batches, self.cfg)
        finally:
            self.net.train()  # (the moving average stays in eval mode: it is never trained)
        self.val_seconds += _now() - t0
        self.clock()
        if baseline:
            return
        if p.last_val[0] < p.best or p.best_step is None:
            p.best, p.best_step = p.last_val[0], p.step
            self.save_best()

    def begin(self) -> None:
        """A new run's step 0: the starting point's validation (a baseline in the log, never the best
        checkpoint), and a last checkpoint to resume from; both timed for a time budget's plan."""
        seconds = self.val_seconds
        if self.val_batches:
            self.validate(baseline=True)
            self.log.write({"step": 0, "epoch": 0, "val_loss": self.p.last_val[0], "val_rmse": self.p.last_val[1],
                            "pixels": 0, "seconds": _now() - self.t_start})
        if self.budget is not None:
            self.budget.validation_seconds = self.val_seconds - seconds
        saved = self.save_seconds
        self.save_last()
        if self.budget is not None:
            self.budget.checkpoint_seconds = self.save_seconds - saved

    def probe_length(self) -> int:
        """Steps to time in this session before a time budget's plan: within the warm-up (and the step
        after it, whose learning rate is the peak), so that the schedule's length does not matter yet."""
        cfg, b = self.cfg, self.budget
        n = _PROBE if cfg.schedule == "constant" else min(_PROBE, cfg.warmup + 1 - self.p.step)
        if b is not None and b.max_steps is not None:
            n = min(n, b.max_steps - self.p.step)
        return max(1, n)

    def plan(self, step_seconds: float | None, probe_steps: int) -> int:
        """Fix the run's steps so that training, validations, checkpoints and the end fit the budget."""
        b, cfg, p = self.budget, self.cfg, self.p
        assert b is not None
        if step_seconds is None:  # steps= is no more than the probe: nothing to measure
            planned = b.max_steps if b.max_steps is not None else p.step
        else:
            per_step, end = self._costs(step_seconds)
            left = b.seconds - (_now() - self.t_start)
            more = math.floor((left * _BUDGET_SAFETY - end) / max(per_step, 1e-9))
            planned = p.step + max(0, more)
            if b.max_steps is not None:
                planned = min(planned, b.max_steps)
        planned = max(planned, p.step, 1)
        b.planned, b.probe_steps, b.step_seconds = planned, probe_steps, step_seconds
        warmup = cfg.warmup
        if b.fit_warmup and cfg.schedule == "cosine":
            # a tenth of the schedule (at most the default's 100 steps), and no less than the steps taken
            warmup = min(cfg.warmup, max(planned // 10, p.step))
        self.cfg = dataclasses.replace(cfg, steps=planned, warmup=warmup)
        if self.plan_mark is None:
            self.plan_mark = (p.step, self.training_clock())
        return planned

    def _costs(self, step_seconds: float) -> tuple[float, float]:
        """(seconds a step costs, validations and checkpoints included; seconds of the run's end)."""
        b, cfg = self.budget, self.cfg
        assert b is not None
        val = (b.validation_seconds or 0.0) if self.val_batches else 0.0
        save = b.checkpoint_seconds or 0.0
        # a validation may save the best; without validation every checkpoint saves the best too
        per_step = step_seconds + (val + save) / cfg.validation_interval if self.val_batches else step_seconds
        per_step += save * (1 if self.val_batches else 2) / cfg.checkpoint_interval
        return per_step, val + 2 * save  # the end: the final validation and the final best and last checkpoints

    def training_clock(self) -> float:
        """The clock less this session's validations and checkpoints."""
        return _now() - self.val_seconds - self.save_seconds

    def correct(self) -> int | None:
        """Plan again when the step rate since this session's plan has drifted so far that the run
        would end after the budget, or before 80 % of it; the new steps, or None when kept."""
        b, p = self.budget, self.p
        if b is None or self.plan_mark is None or self.cfg.steps - p.step < _PROBE:
            return None
        step0, t0 = self.plan_mark
        if p.step - step0 < _PROBE:
            return None
        rate = (self.training_clock() - t0) / (p.step - step0)
        per_step, end = self._costs(rate)
        projected = _now() - self.t_start + (self.cfg.steps - p.step) * per_step + end
        if 0.8 * b.seconds <= projected <= 1.02 * b.seconds:
            return None
        old = self.cfg.steps
        planned = self.plan(rate, b.probe_steps or 0)
        if planned == old:
            return None
        b.replans.append([p.step, planned])
        return planned

    def optimizer_step(self, batch: Mapping[str, torch.Tensor], lr: float) -> None:
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        # Autocast covers the task's forward pass and loss, as torch recommends; the task returns float32.
        with autocast(self.dev, self.amp):
            loss, terms = self.task.loss(self.net, _to(batch, self.dev), cfg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        bad = ~torch.isfinite(loss.detach())
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
            if not self.scaler.is_enabled():  # (fp16's scaler skips the steps whose gradients overflow)
                bad = bad | ~torch.isfinite(norm)
        self.diverged = torch.where(bad & (self.diverged < 0), self.p.step + 1, self.diverged)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.net)
        self.stream.mark_consumed(batch)
        self.p.step += 1
        self.p.pixels += int(batch["optical"].shape[0])
        self.sums += torch.stack([t.detach().float() for t in (loss, *terms)])  # no sync with the GPU here
        self.n_sum += 1

    def check_finite(self) -> None:
        """Stop with :class:`~xrecon.errors.TrainingDivergedError` when a step since the last log row had
        a loss or gradient that is not finite: its weights are neither validated nor saved."""
        first = int(self.diverged)
        if first < 0:
            return
        cfg = self.cfg
        raise TrainingDivergedError(
            f"training stopped: the loss was not finite (NaN or inf) at step {first} of {cfg.steps}; nothing "
            f"from that step on was saved (the files hold the last checkpoint before it). Train again with a "
            f"lower lr= (now {cfg.lr:g}), a longer "
            f"warmup= (now {cfg.warmup}), grad_clip= (now {cfg.grad_clip:g}) or precision='fp32' "
            f"(now {cfg.precision!r})")

    def log_row(self, epoch: int, lr: float, validated: bool) -> dict[str, Any]:
        """Write the mean losses since the last row (validating first if due) and start a new mean."""
        p = self.p
        self.check_finite()
        self.clock()
        if validated:
            self.validate()
        mean = (self.sums / self.n_sum).tolist()
        row = {"step": p.step, "epoch": epoch, "lr": lr, "loss": mean[0]}
        row.update(zip(self.task.terms, mean[1:], strict=True))
        row.update(pixels=p.pixels, seconds=_now() - self.t_start)
        if validated:
            row.update(val_loss=p.last_val[0], val_rmse=p.last_val[1], best_step=p.best_step)
        self.log.write(row)
        self.sums.zero_()
        self.n_sum = 0
        return row

    def checkpoint(self, row: Mapping[str, Any], callback: Callable[[dict[str, Any]], bool | None] | None) -> bool:
        """Save what is due after a log row; True when the callback asks to stop."""
        p, cfg = self.p, self.cfg
        if not self.val_batches and p.step % cfg.checkpoint_interval == 0:
            self.save_best()  # without validation, the best model is the latest
        stop = callback is not None and callback(dict(row)) is True
        if stop or (p.step % cfg.checkpoint_interval == 0 and p.step < cfg.steps):
            self.save_last()  # (the final state is saved by finish)
        return stop

    def finish(self) -> None:
        self.clock()
        if not self.val_batches:
            self.save_best()
        self.save_last()


# --------------------------------------------------------------------------------------------------


def train(
    cubes: xr.Dataset | Sequence[xr.Dataset],
    out: str | os.PathLike,
    *,
    method: str = "anytimeformer",
    preset: str | Any | None = None,
    config: TrainConfig | None = None,
    steps: int | None = None,
    time_budget: float | str | datetime.timedelta | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    validation_fraction: float | None = None,
    init: str | os.PathLike | XreconModel | None = None,
    optical: Hashable = "optical",
    sar: Hashable | None = DEFAULT_SAR,
    mask: Hashable | bool | None = AUTO_MASK,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    model: str | Any | None = None,
    **options: Any,
) -> Path:
    """Train a network on cubes, self-supervised: hide clear observations and learn to restore them.

    Parameters
    ----------
    cubes : xarray.Dataset or sequence of xarray.Dataset
        Cubes following the conventions (lazy is best), with the same bands. Band names (``band``,
        ``sar_band``) are stored in the model, which ``fill`` matches by name.
    out : path
        The best checkpoint; the last (resumable) one and a CSV log go beside it (:func:`training_files`).
    method : str
        The network, one of :func:`xrecon.methods.trainable_methods` (``"anytimeformer"``); its
        training task (:mod:`xrecon.training.tasks`) says what the options below mean for it.
    preset : str or AnytimeFormerConfig, optional
        The architecture: a preset name of the method's task (``TrainingTask.presets()``; for
        AnytimeFormer "official", "optical-only", "small") or a config object; None: the task's
        default ("official"). The same name as ``xrecon train --preset``. The numbers of bands always
        come from the cube. Ignored with ``init`` and on resume.
    config : TrainConfig, optional
        Training settings; the keyword arguments below override it.
    steps : int, optional
        Optimizer steps (the schedule's length). With ``time_budget``: at most this many.
    time_budget : seconds, str or timedelta, optional
        Train for about this long, counted from this call, on this machine: ``600``, ``"10min"``,
        ``"90s"``, ``"1h"``. After the step-0 validation and checkpoint (both timed) a short probe of
        steps inside the warm-up measures the step rate; the number of steps is then fixed so that
        training, validations, checkpoints and the last validation fit in the budget, and the
        learning-rate schedule runs to its end within it. Unless ``warmup=`` or ``config`` is given,
        the warm-up is then a tenth of the planned steps (at most 100). The plan (steps, measured
        seconds) is in the provenance's ``time_budget`` and on stderr; a resumed run keeps its
        planned steps (the budget counts from each call only while nothing is planned yet).
    batch_size, seed, validation_fraction
        Shortcuts for the :class:`TrainConfig` fields. Fields given neither here, in ``**options``
        nor through ``config`` take the task's defaults (``TrainingTask.config_defaults()``;
        RESTORE-DiT: ``batch_size=8``, ``validation_pixels=64``, ``buffer_size=256`` windows), else
        TrainConfig's.
    device : str or torch.device, optional
        None: CUDA when available, else the CPU.
    threads : int, optional
        Torch's intra-op threads for a run on the CPU (``torch.set_num_threads``), restored when the run
        ends; recorded in the provenance (``threads``, and ``torch_threads`` the count used). None:
        :func:`xrecon.runtime.default_threads`, half the usable CPUs (torch's own setting when
        ``OMP_NUM_THREADS`` is set), which trains fastest on a shared machine; on an idle one of
        your own, all its cores may be faster. Ignored on a GPU. ``xrecon train --threads``.
    init : path or XreconModel, optional
        Fine-tune from these weights: an xrecon checkpoint, or a model such as
        ``anytimeformer.from_official(...)``. Its bands must match the cube's by name, and its
        normalization statistics are kept (the weights were trained with them).
    optical, sar, mask : str
        Variable names, as for ``fill``; ``sar=None`` trains an optical-only network. ``mask="auto"``
        (the default) uses the cubes' own clear mask (recorded by ``from_bands`` or named ``clear``);
        ``mask=False`` none.
    resume : bool
        Continue from the last checkpoint if there is one (else start afresh), with its settings;
        ``steps`` may be raised to train longer (the schedule then stretches to the new length).
    overwrite : bool
        Replace existing files of an earlier run. Without ``resume`` they are refused, unless that
        run trained nothing (no best checkpoint and a last one at step 0): those are replaced.
    progress : bool
        Show a tqdm bar with the losses, and on stderr the run's set-up and a time budget's plan.
    callback : callable, optional
        Called with each log row (a dict of the log's columns, :func:`log_columns`); returning True
        stops training after saving the last checkpoint (early stopping; ``resume=True`` continues).
    model : str or AnytimeFormerConfig, optional
        Deprecated alias of ``preset`` (a FutureWarning).
    **options
        Other :class:`TrainConfig` fields (``lr=``, ``warmup=``, ``anytime=``, ``ema=0.999``...) and
        the method's architecture options (its task's ``options()``; for AnytimeFormer the fields of
        ``AnytimeFormerConfig``: ``d_model=``, ``dropout=``...).

    Returns
    -------
    pathlib.Path
        The best checkpoint, ``out``.

    Raises
    ------
    MethodError
        For a method that cannot be trained (the message names those that can), an unknown preset
        or unknown options.
    CheckpointError
        When ``init`` does not fit the cube's bands, or the last checkpoint cannot be resumed.
    OutputExistsError
        When files of an earlier run exist and neither ``resume`` nor ``overwrite`` is set.
    XreconError
        For a ``time_budget`` that is not a positive duration.

    Examples
    --------
    >>> import xrecon
    >>> from xrecon.testing import synthetic_cube
    >>> ds = synthetic_cube(ny=16, nx=16, seed=0)
    >>> ckpt = ds.recon.train(out="tiny.xrecon", preset="small", time_budget="1min",
    ...                       progress=False)  # doctest: +SKIP
    >>> filled = ds.recon.fill("10D", method="anytimeformer", checkpoint=ckpt)  # doctest: +SKIP
    """
    t_start = _now()
    if not isinstance(out, str | os.PathLike) or not os.fspath(out).strip():
        raise XreconError(f"out={out!r}: expected a checkpoint file path, e.g. 'model.xrecon'")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int | np.integer)
                                or threads < 1):
        raise XreconError(f"threads={threads!r}: expected a positive number of torch threads, e.g. threads=1")
    budget = parse_time_budget(time_budget)
    task = _task(method)
    preset = _preset(task, preset, model)
    shortcuts = dict(steps=steps if budget is None else None, batch_size=batch_size, seed=seed,
                     validation_fraction=validation_fraction)
    cubes, cfg, explicit, architecture = _resolve_options(task, cubes, config, options, shortcuts)
    mask = _training_mask(cubes, optical, mask)
    paths = training_files(out)
    cfg, model_obj, state = _starting_point(paths, cfg, explicit, architecture, task, init, resume, overwrite)
    cfg, plan = _budget_to_run(budget, steps, cfg, state, fit_warmup=config is None and "warmup" not in options)
    data = _prepare_data(task, cubes, cfg, model_obj, state, optical, sar, mask)
    dev = resolve_device(device)
    amp = _precision(cfg.precision, dev)
    rng_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with _cpu_threads(threads, dev), torch.random.fork_rng(devices=rng_devices):
        # Our own seeded random state for the weights and dropout; the caller's is restored afterwards.
        torch.manual_seed(cfg.seed)
        model_obj, init_source = _model_to_train(task, model_obj, preset, architecture, data, state, init)
        run = _Run(task, cfg, model_obj.to(dev).train(), data, state, init_source, paths, dev, amp, t_start, plan)
        run.threads = int(threads) if threads is not None and dev.type == "cpu" else None
        run.observations = _observations(cubes, data, optical, model_obj if state is None else None, state,
                                         run.net)
        planning = plan is not None and plan.planned is None
        bar = _bar(progress, run.p.step, None if planning else cfg.steps)
        bar.write(f"train {task.name}: preset {_describe_preset(preset, init, state)}, device {dev}"
                  + (f", threads {torch.get_num_threads()}" if dev.type == "cpu" else "")
                  + f", batch {cfg.batch_size}" + (f", ema {cfg.ema:g}" if cfg.ema else "") + ", "
                  + (f"time budget {plan.seconds:g} s" if planning else f"{cfg.steps} steps"))
        if state is None:
            run.begin()
        if planning and plan.max_steps is not None and plan.max_steps <= run.probe_length():
            run.plan(None, 0)  # steps= within the probe: nothing to time
            planning = False
        probe = run.probe_length() if planning else 0
        marks: list[float] = [_now() - run.val_seconds - run.save_seconds] if planning else []

        p = run.p
        stop, epoch = False, run.stream.epoch
        while p.step < run.cfg.steps and not stop:
            run.stream.set_epoch(epoch)
            fresh, got = not run.stream.state_dict()["consumed"], False
            # The loader's own generator: creating an iterator would otherwise draw from the global
            # random state that dropout uses, and a resumed run creates one more iterator.
            loader = task.loader(run.stream, num_workers=cfg.num_workers,
                                 generator=torch.Generator().manual_seed(cfg.seed))
            for batch in loader:
                if p.step >= run.cfg.steps:
                    break
                got, lr = True, _lr_at(p.step, run.cfg)
                run.optimizer_step(batch, lr)
                bar.update(1)
                if planning:
                    # training time only: validations and checkpoints are counted apart
                    marks.append(_now() - run.val_seconds - run.save_seconds)
                    if len(marks) == probe + 1:
                        # the first step pays one-off costs: time the others when there are a few
                        step_s = (marks[-1] - marks[1]) / (probe - 1) if probe >= 3 else (marks[-1] - marks[0]) / probe
                        _announce(bar, run, run.plan(step_s, probe))
                        planning = False
                cfg = run.cfg
                validated = bool(run.val_batches) and (p.step % cfg.validation_interval == 0 or p.step == cfg.steps)
                if not (p.step % cfg.log_interval == 0 or validated or p.step == cfg.steps):
                    continue
                row = run.log_row(epoch, lr, validated)
                if (corrected := run.correct()) is not None:
                    bar.write(f"train: the step rate changed to {run.budget.step_seconds:.3g} s a step: "
                              f"{corrected} steps planned at step {p.step}")
                    bar.total = corrected
                    cfg = run.cfg
                bar.set_postfix(loss=f"{row['loss']:.4f}", val=f"{p.last_val[0]:.4f}", refresh=False)
                stop = run.checkpoint(row, callback)
                if stop or p.step >= cfg.steps:
                    break
            if not got and fresh:
                raise CubeError(task.nothing_to_train(cfg))
            if not stop and p.step < run.cfg.steps:
                epoch += 1
        bar.close()
        run.finish()
        if p.best_step is not None:
            bar.write(f"train: best step {p.best_step} of {p.step}, validation loss {p.best:.4g}; "
                      f"{_now() - t_start:.0f} s")
    return paths[0]


@contextlib.contextmanager
def _cpu_threads(threads: int | None, dev: torch.device) -> Any:
    """``torch.set_num_threads(threads)`` (None: :func:`~xrecon.runtime.default_threads`) for a run on the CPU,
    the caller's setting restored afterwards."""
    if dev.type != "cpu":
        yield
        return
    if threads is None:
        threads = default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _preset(task: TrainingTask, preset: Any, model: Any) -> Any:
    """``train``'s architecture preset: ``preset=``, or its deprecated alias ``model=``, or the task's default."""
    if model is not None:
        warnings.warn("train(model=...) is deprecated: use preset=..., the same name as `xrecon train --preset`",
                      FutureWarning, stacklevel=3)
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


def _describe_preset(preset: Any, init: Any, state: Any) -> str:
    if state is not None:
        return "of the resumed run"
    if init is not None:
        return "of init"
    return preset if isinstance(preset, str) else type(preset).__name__


def _announce(bar: Any, run: _Run, planned: int) -> None:
    """Say what a time budget's probe measured and how many steps it planned (warn when they are too few)."""
    b, cfg = run.budget, run.cfg
    assert b is not None
    val = f", {b.validation_seconds:.3g} s a validation" if run.val_batches and b.validation_seconds else ""
    bar.write(f"train: time budget {b.seconds:g} s: {b.step_seconds:.3g} s a step{val}; "
              f"{planned} steps planned, warm-up {cfg.warmup}"
              + (f" (steps= at most {b.max_steps})" if b.max_steps is not None else ""))
    bar.total = planned
    bar.refresh()
    if cfg.schedule == "cosine" and planned <= cfg.warmup:
        warnings.warn(f"the time budget ({b.seconds:g} s) allows {planned} steps, no more than the warm-up "
                      f"({cfg.warmup}): the learning rate will not decay; give more time or a smaller warmup=",
                      UserWarning, stacklevel=3)


def _describe_init(init: Any, model: XreconModel) -> dict[str, Any]:
    from xrecon.runtime import file_sha256

    if isinstance(init, str | os.PathLike):
        return {"path": os.fspath(init), "sha256": file_sha256(init)}
    return {k: v for k, v in model.metadata.items() if isinstance(v, str | int | float)} or {"model": "in memory"}


def _validation_batches(task: TrainingTask, cubes: Sequence[xr.Dataset], stream_kw: Mapping[str, Any],
                        blocks: np.ndarray, cfg: TrainConfig) -> list[dict[str, torch.Tensor]]:
    """A fixed, seeded set of validation batches (gaps included), read once and kept in memory."""
    if len(blocks) == 0:
        return []
    stream = task.stream(cubes, cfg, **stream_kw, seed=cfg.seed * 1000 + _VALIDATION_STREAM,
                         batch_size=cfg.batch_size, buffer_size=min(cfg.buffer_size, cfg.validation_pixels),
                         blocks=blocks)
    batches, n = [], 0
    for batch in stream:
        batches.append(batch)
        n += int(batch["optical"].shape[0])
        if n >= cfg.validation_pixels:
            break
    return batches


def _bar(progress: bool, start: int, total: int | None) -> Any:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
    bar.write = lambda text: tqdm.write(text, file=sys.stderr)  # set-up and plan lines: stderr, above the bar
    return bar


class _NoBar:
    total: int | None = None

    def update(self, n: int = 1) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def refresh(self) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
