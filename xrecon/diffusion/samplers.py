"""DPM-Solver++ and DDIM samplers for x0-predicting networks, built on diffusers' schedulers.

Each sampler owns one diffusers scheduler, which keeps state between steps (DPM-Solver++ remembers
its previous outputs): make one per sampling run, not one per process.

Both use the training schedule of RESTORE-DiT (diffusers' defaults: 1000 steps, betas linear from
1e-4 to 0.02) and ``prediction_type="sample"``. Two diffusers defaults are overridden for DDIM because
they do not fit few-step sampling of an x0 network: ``timestep_spacing="leading"`` would start a
one-step run at t = 0 (no noise) instead of t = 999, so ``"trailing"`` is used; ``clip_sample=True``
would clamp every x0 prediction to [-1, 1], which is not a property of every normalization, so it is
off (DPM-Solver++ does not clip either).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from xrecon.errors import MethodError, XreconError

__all__ = ["DDIMSampler", "DPMSolverSampler", "Sampler", "get_sampler", "list_samplers"]


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:  # an optional dependency
        raise XreconError('sampling needs the diffusers package: pip install "xrecon[diffusion]" '
                          '(or pip install "diffusers>=0.30")') from err
    return diffusers


class Sampler:
    """Base of the samplers: a diffusers scheduler and the three calls a sampling loop makes."""

    name = ""
    #: scheduler options that differ from diffusers' defaults
    defaults: dict[str, Any] = {}

    def __init__(self, num_train_timesteps: int = 1000, **scheduler_options: Any) -> None:
        options = {"num_train_timesteps": num_train_timesteps, "prediction_type": "sample",
                   **self.defaults, **scheduler_options}
        self.scheduler = self._build(_diffusers(), options)
        self.timesteps: Tensor | None = None

    def _build(self, diffusers: Any, options: dict[str, Any]) -> Any:
        raise NotImplementedError

    def set_timesteps(self, steps: int, device: str | torch.device | None = None) -> Tensor:
        """Prepare a run of ``steps`` steps; returns the (steps,) timesteps to visit, largest first."""
        self.scheduler.set_timesteps(steps, device=device)
        self.timesteps = self.scheduler.timesteps
        return self.timesteps

    def step(self, x0: Tensor, t: Tensor | int, sample: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The sample at the next timestep, from the network's x0 prediction at ``t``."""
        return self.scheduler.step(x0, t, sample, generator=generator).prev_sample

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x0`` noised to level ``t`` ((1,) or one per batch row) with ``noise``."""
        return self.scheduler.add_noise(x0, noise, t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.scheduler.config)!r})"


class DPMSolverSampler(Sampler):
    """DPM-Solver++ (multistep, order 2): upstream RESTORE-DiT's evaluation sampler.

    ``DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="sample")`` and diffusers'
    other defaults, as upstream builds it.
    """

    name = "dpm++"

    def _build(self, diffusers: Any, options: dict[str, Any]) -> Any:
        return diffusers.DPMSolverMultistepScheduler(**options)


class DDIMSampler(Sampler):
    """Deterministic DDIM (eta = 0), with trailing timesteps and no x0 clipping (see the module notes)."""

    name = "ddim"
    defaults = {"timestep_spacing": "trailing", "clip_sample": False}

    def _build(self, diffusers: Any, options: dict[str, Any]) -> Any:
        return diffusers.DDIMScheduler(**options)

    def step(self, x0: Tensor, t: Tensor | int, sample: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.scheduler.step(x0, t, sample, eta=0.0, generator=generator).prev_sample


_SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (DPMSolverSampler, DDIMSampler)}


def list_samplers() -> list[str]:
    """Names :func:`get_sampler` knows."""
    return sorted(_SAMPLERS)


def get_sampler(sampler: str | Sampler, **options: Any) -> Sampler:
    """A new sampler called ``sampler`` (options go to the diffusers scheduler), or ``sampler`` itself.

    Raises
    ------
    MethodError
        For an unknown name.
    """
    if not isinstance(sampler, str):
        return sampler
    try:
        cls = _SAMPLERS[sampler]
    except KeyError:
        raise MethodError(f"unknown sampler {sampler!r}; known: {list_samplers()}") from None
    return cls(**options)
