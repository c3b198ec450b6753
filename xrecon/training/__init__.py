"""Training: pixel and patch streams from cubes, gap simulation, losses, normalization statistics, the trainer.

The trainer is generic; what a method provides to be trainable is a :class:`TrainingTask`
(:mod:`xrecon.training.tasks`; AnytimeFormer's is :class:`AnytimeFormerTask`, RESTORE-DiT's
:class:`RestoreDiTTask` in :mod:`xrecon.training.restore_dit`).

See ``docs/training-data.md`` for the batch format and how resuming and sharding work, and
``docs/training.md`` for :func:`train`.
"""

from xrecon.training.gaps import GapConfig, hide_random, hide_runs, hide_transplant, simulate_gaps
from xrecon.training.losses import LossTerms, masked_error, reconstruction_loss, take_days, total_variation
from xrecon.training.patches import PatchStream, collate_patches, sar_in_reach
from xrecon.training.restore_dit import RestoreDiTTask
from xrecon.training.stats import NormStats, compute_stats, standardize_batch
from xrecon.training.stream import BlockStream, PixelStream, collate_pixels, pixel_loader
from xrecon.training.tasks import AnytimeFormerTask, TrainingTask
from xrecon.training.trainer import TrainConfig, log_columns, train, training_files

__all__ = [
    "AnytimeFormerTask",
    "BlockStream",
    "GapConfig",
    "LossTerms",
    "NormStats",
    "PatchStream",
    "PixelStream",
    "RestoreDiTTask",
    "TrainConfig",
    "TrainingTask",
    "collate_patches",
    "collate_pixels",
    "compute_stats",
    "hide_random",
    "hide_runs",
    "hide_transplant",
    "log_columns",
    "masked_error",
    "pixel_loader",
    "reconstruction_loss",
    "sar_in_reach",
    "simulate_gaps",
    "standardize_batch",
    "take_days",
    "total_variation",
    "train",
    "training_files",
]
