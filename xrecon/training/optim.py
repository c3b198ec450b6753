"""The optimiser's side of training: AdamW's decay groups, the learning-rate schedule, the weights' moving
average, the autocast precision."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from xrecon.runtime import resolve_precision

if TYPE_CHECKING:
    from xrecon.training.config import TrainConfig

__all__ = ["EMA", "autocast_dtype", "decay_groups", "lr_at", "to_device"]


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    # The last step (steps - 1) is at the floor: a schedule that ran to its end reached it.
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``TrainConfig.precision``: "auto" is the trainer's choice, the rest runtime's."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        # fp16 only where bf16 is missing: it needs loss scaling (the GradScaler is on for it alone).
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return resolve_precision(precision, device)


class EMA:
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
