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
every timing reads the trainer's clock, :func:`xrecon.training.budget.now`.

This module holds :func:`train`, its loop (``_loop``) and one session of training (:class:`Session`:
a step, a validation, a log row, the checkpoints); the rest of the training wing is one concern a
module: the settings and keywords (:mod:`~xrecon.training.config`), the data and its hold-out
(:mod:`~xrecon.training.blocks`), the optimizer, schedule and moving average
(:mod:`~xrecon.training.optim`), the files and the starting point (:mod:`~xrecon.training.checkpoints`),
the time budget (:mod:`~xrecon.training.budget`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from xrecon._version import __version__
from xrecon.cube import AUTO_MASK, DEFAULT_SAR
from xrecon.errors import CheckpointError, CubeError, MethodError, TrainingDivergedError, XreconError
from xrecon.models.base import XreconModel
from xrecon.runtime import autocast, default_threads, resolve_device
from xrecon.training.blocks import (
    TrainingData,
    observations,
    prepare_data,
    training_mask,
    validation_batches,
)
from xrecon.training.budget import Budget, Planner, budget_to_run, now
from xrecon.training.checkpoints import (
    Progress,
    TrainingLog,
    log_columns,
    model_to_train,
    save_checkpoint,
    starting_point,
    training_files,
)
from xrecon.training.config import TrainConfig, describe_preset, parse_time_budget, resolve_options, resolve_preset
from xrecon.training.optim import EMA, autocast_dtype, decay_groups, lr_at, to_device
from xrecon.training.tasks import TrainingTask

__all__ = ["Session", "TrainConfig", "log_columns", "parse_time_budget", "train", "training_files"]


class Session:
    """One session of training: network, optimizer, stream, progress, and the files they are saved to.

    Built inside the run's seeded random state: the stream, validation set and a resumed random
    state are set up in the order a fresh and a resumed run share.
    """

    threads: int | None = None  # train(threads=...) on the CPU, for the provenance
    observations: dict[str, Any] | None = None  # the sketch of what the run reads (xrecon.leakage)

    def __init__(self, task: TrainingTask, cfg: TrainConfig, net: Any, data: TrainingData,
                 state: Mapping[str, Any] | None, init_source: Any, paths: tuple[Path, Path, Path],
                 dev: torch.device, amp: torch.dtype, t_start: float, budget: Budget | None = None) -> None:
        self.task, self.cfg, self.net, self.data, self.init_source = task, cfg, net, data, init_source
        self.dev, self.amp, self.t_start, self.budget = dev, amp, t_start, budget
        self.save_seconds = 0.0  # spent saving checkpoints in this session
        self.best_path, self.last_path, log_path = paths
        self.norm = net.normalization  # buffers, fixed during training: read once (numpy), for the provenance
        task.setup(net)
        self.stream = task.stream(data.cubes, cfg, **data.stream_kw, seed=cfg.seed, batch_size=cfg.batch_size,
                                  buffer_size=cfg.buffer_size, blocks=data.train_blocks)
        self.val_batches = validation_batches(task, data.cubes, data.stream_kw, data.val_blocks, cfg)
        self.optimizer = torch.optim.AdamW(decay_groups(net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
        self.scaler = torch.amp.GradScaler(dev.type, enabled=amp == torch.float16)
        self.p = Progress()
        self.task_provenance = dict(task.provenance(data.cubes, cfg, **data.stream_kw))
        clash = sorted(set(self.task_provenance) & set(self._provenance()))
        if clash:
            raise MethodError(f"{type(task).__name__}.provenance() returns keys of the trainer's own: {clash}")
        # The weights' moving average: validated and saved as the best model (draws no random numbers).
        self.ema = EMA(net, cfg.ema) if cfg.ema else None
        if state is not None:
            self._restore(state)
        self.log = TrainingLog(log_path, self.p.step if state is not None else None, log_columns(task.terms))
        # Training time excludes validation, and adds up over resumed sessions.
        self.val_seconds, self.session_start, self.session_base = 0.0, now(), self.p.train_seconds
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
        self.p = Progress.from_state(state)

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
        t0 = now()
        save_checkpoint(self.scored(), self.best_path, {"training": self.provenance(), **self._seen()})
        self.save_seconds += now() - t0

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
        t0 = now()
        save_checkpoint(self.net, self.last_path,
                        {"training": self.provenance(), "resume": resume_state, **self._seen()})
        self.save_seconds += now() - t0

    def clock(self) -> None:
        self.p.train_seconds = self.session_base + now() - self.session_start - self.val_seconds

    def validate(self, baseline: bool = False) -> None:
        """Score the validation set, and save the best model when it improves (never a ``baseline``)."""
        p, t0 = self.p, now()
        model = self.scored()
        model.eval()
        try:
            with torch.no_grad(), autocast(self.dev, self.amp):
                batches = (to_device(batch, self.dev) for batch in self.val_batches)
                p.last_val = self.task.validate(model, batches, self.cfg)
        finally:
            self.net.train()  # (the moving average stays in eval mode: it is never trained)
        self.val_seconds += now() - t0
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
                            "pixels": 0, "seconds": now() - self.t_start})
        if self.budget is not None:
            self.budget.validation_seconds = self.val_seconds - seconds
        saved = self.save_seconds
        self.save_last()
        if self.budget is not None:
            self.budget.checkpoint_seconds = self.save_seconds - saved

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

    def optimizer_step(self, batch: Mapping[str, torch.Tensor], lr: float) -> None:
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        # Autocast covers the task's forward pass and loss, as torch recommends; the task returns float32.
        with autocast(self.dev, self.amp):
            loss, terms = self.task.loss(self.net, to_device(batch, self.dev), cfg)
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
        row.update(pixels=p.pixels, seconds=now() - self.t_start)
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
        Other :class:`TrainConfig` fields (``lr=``, ``warmup=``, ``ema=0.999``...), the method's task's own
        options (its ``options_type``; AnytimeFormer's ``gaps=``, ``loss=``, ``anytime=``, ``min_obs=``...,
        RESTORE-DiT's ``tile=``, ``frames=``, ``min_clear=``, ``sar_window=``, ``gaps=``, ``gap_fraction=``)
        and its architecture options (the task's ``options()``; for AnytimeFormer the fields of
        ``AnytimeFormerConfig``: ``d_model=``, ``dropout=``...). ``xrecon train --option KEY=VALUE``.

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
    CubeError
        When the cubes give nothing to train on (the message names the task's option and a value that
        would work, e.g. RESTORE-DiT's ``min_clear=`` or ``frames=``).
    TrainingDivergedError
        When a loss becomes NaN or infinite; nothing of that step on is saved.

    Examples
    --------
    >>> import xrecon
    >>> from xrecon.testing import synthetic_cube
    >>> ds = synthetic_cube(ny=16, nx=16, seed=0)
    >>> ckpt = ds.recon.train(out="tiny.xrecon", preset="small", time_budget="1min",
    ...                       progress=False)  # doctest: +SKIP
    >>> filled = ds.recon.fill("10D", method="anytimeformer", checkpoint=ckpt)  # doctest: +SKIP
    """
    t_start = now()
    if not isinstance(out, str | os.PathLike) or not os.fspath(out).strip():
        raise XreconError(f"out={out!r}: expected a checkpoint file path, e.g. 'model.xrecon'")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int | np.integer)
                                or threads < 1):
        raise XreconError(f"threads={threads!r}: expected a positive number of torch threads, e.g. threads=1")
    budget = parse_time_budget(time_budget)
    task = _task(method)
    preset = resolve_preset(task, preset, model)
    shortcuts = dict(steps=steps if budget is None else None, batch_size=batch_size, seed=seed,
                     validation_fraction=validation_fraction)
    cubes, cfg, explicit, architecture = resolve_options(task, cubes, config, options, shortcuts)
    mask = training_mask(cubes, optical, mask)
    paths = training_files(out)
    cfg, model_obj, state = starting_point(paths, cfg, explicit, architecture, task, init, resume, overwrite)
    cfg, plan = budget_to_run(budget, steps, cfg, state, fit_warmup=config is None and "warmup" not in options)
    data = prepare_data(task, cubes, cfg, model_obj, state, optical, sar, mask)
    dev = resolve_device(device)
    rng_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with _cpu_threads(threads, dev), torch.random.fork_rng(devices=rng_devices):
        # Our own seeded random state for the weights and dropout; the caller's is restored afterwards.
        torch.manual_seed(cfg.seed)
        model_obj, init_source = model_to_train(task, model_obj, preset, architecture, data, state, init)
        run = Session(task, cfg, model_obj.to(dev).train(), data, state, init_source, paths, dev,
                      autocast_dtype(cfg.precision, dev), t_start, plan)
        run.threads = int(threads) if threads is not None and dev.type == "cpu" else None
        run.observations = observations(cubes, data, optical, model_obj if state is None else None, state, run.net)
        planner = Planner(plan, t_start)
        bar = _bar(progress, run.p.step, None if planner.planning else cfg.steps)
        bar.write(f"train {task.name}: preset {describe_preset(preset, init, state)}, device {dev}"
                  + (f", threads {torch.get_num_threads()}" if dev.type == "cpu" else "")
                  + f", batch {cfg.batch_size}" + (f", ema {cfg.ema:g}" if cfg.ema else "") + ", "
                  + (f"time budget {plan.seconds:g} s" if planner.planning else f"{cfg.steps} steps"))
        if state is None:
            run.begin()
        planner.start(run)
        _loop(run, planner, bar, callback)
        bar.close()
        run.finish()
        if run.p.best_step is not None:
            bar.write(f"train: best step {run.p.best_step} of {run.p.step}, validation loss {run.p.best:.4g}; "
                      f"{now() - t_start:.0f} s")
    return paths[0]


def _loop(run: Session, planner: Planner, bar: Any, callback: Callable[[dict[str, Any]], bool | None] | None,
          ) -> None:
    """Epochs of the training stream, one optimizer step per batch, a log row every ``log_interval`` steps
    (validating when due), the last checkpoint every ``checkpoint_interval``, until the planned steps are
    done or the callback asks to stop."""
    p, task = run.p, run.task
    stop, epoch = False, run.stream.epoch
    while p.step < run.cfg.steps and not stop:
        run.stream.set_epoch(epoch)
        fresh, got = not run.stream.state_dict()["consumed"], False
        # The loader's own generator: creating an iterator would otherwise draw from the global
        # random state that dropout uses, and a resumed run creates one more iterator.
        loader = task.loader(run.stream, num_workers=run.cfg.num_workers,
                             generator=torch.Generator().manual_seed(run.cfg.seed))
        for batch in loader:
            if p.step >= run.cfg.steps:
                break
            got, lr = True, lr_at(p.step, run.cfg)
            run.optimizer_step(batch, lr)
            bar.update(1)
            planner.after_step(run, bar)
            cfg = run.cfg
            validated = bool(run.val_batches) and (p.step % cfg.validation_interval == 0 or p.step == cfg.steps)
            if not (p.step % cfg.log_interval == 0 or validated or p.step == cfg.steps):
                continue
            row = run.log_row(epoch, lr, validated)
            planner.after_log(run, bar)
            bar.set_postfix(loss=f"{row['loss']:.4f}", val=f"{p.last_val[0]:.4f}", refresh=False)
            stop = run.checkpoint(row, callback)
            if stop or p.step >= run.cfg.steps:
                break
        if not got and fresh:
            raise CubeError(task.nothing_to_train(run.cfg))
        if not stop and p.step < run.cfg.steps:
            epoch += 1


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
