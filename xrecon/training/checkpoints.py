"""The files of a training run: the best and last checkpoints, the CSV log, and where a run starts from
(afresh, ``init``'s weights, or the last checkpoint's resume state)."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrecon.errors import CheckpointError, OutputExistsError, XreconError
from xrecon.models.base import XreconModel
from xrecon.training.blocks import TrainingData, training_stats
from xrecon.training.config import TrainConfig

if TYPE_CHECKING:
    from xrecon.training.tasks import TrainingTask

__all__ = ["Progress", "TrainingLog", "describe_init", "log_columns", "model_to_train", "save_checkpoint",
           "starting_point", "training_files"]


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


class TrainingLog:
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


def save_checkpoint(model: XreconModel, path: Path, metadata: dict[str, Any]) -> None:
    saved = model.metadata
    model.metadata = metadata
    try:
        model.save(path)
    finally:
        model.metadata = saved


@dataclass
class Progress:
    """How far a run has got: what the last checkpoint saves and a resumed run starts from."""

    step: int = 0
    best: float = math.inf
    best_step: int | None = None
    last_val: tuple[float, float] = (math.nan, math.nan)
    pixels: int = 0
    train_seconds: float = 0.0

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Progress:
        return cls(step=int(state["step"]), best=float(state["best"]), best_step=state["best_step"],
                   last_val=tuple(state["last_val"]), pixels=int(state["pixels"]),
                   train_seconds=float(state["train_seconds"]))


def changed_options(task: TrainingTask, model: XreconModel, architecture: Mapping[str, Any]) -> list[str]:
    """The architecture options that differ from ``model``'s."""
    fixed = task.architecture(model)
    return sorted(k for k, v in architecture.items() if fixed[k] != v)


def starting_point(paths: tuple[Path, Path, Path], cfg: TrainConfig, explicit: Mapping[str, Any],
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
        changed += changed_options(task, model_obj, architecture)
        saved_opts = saved_options(task, state)
        changed += sorted(k for k in task.given if getattr(saved_opts, k) != getattr(task.opts, k))
        task.configure(saved_opts)
        if changed:
            raise XreconError(f"resume continues with the saved settings; these differ: {changed} "
                              "(start a new run in another file to change them)")
        return dataclasses.replace(saved, steps=cfg.steps if "steps" in explicit else saved.steps), model_obj, state
    if not overwrite and (best_path.exists() or last_path.exists()) and not untrained(best_path, last_path, task):
        raise OutputExistsError(f"{os.fspath(best_path)!r} or its last checkpoint exists; pass resume=True to "
                                "continue that run or overwrite=True to start again")
    if init is None:
        return cfg, None, None
    model_obj = task.load_init(init)
    changed = changed_options(task, model_obj, architecture)
    if changed:
        raise XreconError(f"init fixes the architecture; these options differ from it: {changed}")
    return cfg, model_obj, None


def saved_options(task: TrainingTask, state: Mapping[str, Any]) -> Any:
    """The task's options of a resumed run: as saved, or (earlier checkpoints) from the saved config's
    fields of those names, the task's defaults for the others."""
    saved = state.get("task_options")
    if saved is None:
        config = state.get("config") or {}
        saved = {**task.default_options().to_dict(),
                 **{k: v for k, v in config.items() if k in task.options_type.names()}}
    return task.options_type.from_dict(saved)


def untrained(best_path: Path, last_path: Path, task: TrainingTask) -> bool:
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


def describe_init(init: Any, model: XreconModel) -> dict[str, Any]:
    from xrecon.runtime import file_sha256

    if isinstance(init, str | os.PathLike):
        return {"path": os.fspath(init), "sha256": file_sha256(init)}
    return {k: v for k, v in model.metadata.items() if isinstance(v, str | int | float)} or {"model": "in memory"}


def model_to_train(task: TrainingTask, model_obj: XreconModel | None, model: str | Any,
                    architecture: Mapping[str, Any], data: TrainingData, state: Mapping[str, Any] | None, init: Any,
                    ) -> tuple[XreconModel, Any]:
    """(the model, where its weights came from): a new one unless resuming or fine-tuning.

    Draws the initial weights from the global random state: call it right after seeding.
    """
    if model_obj is not None:
        return model_obj, (state or {}).get("init") if state else describe_init(init, model_obj)
    optical, sar, mask = (data.stream_kw[k] for k in ("optical", "sar", "mask"))
    stats = training_stats(data.cubes, data.grid, data.train_blocks, optical, sar, mask)
    return task.new_model(model, architecture, data.bands, data.sar_bands, stats), None
