"""The noise schedule a diffusion model trains on: the linear betas and noising in closed form.

As diffusers' ``DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")`` (what upstream
RESTORE-DiT trains with): :func:`linear_alphas_cumprod` is its ``alphas_cumprod`` and :func:`add_noise` its
``add_noise``, without importing diffusers. The samplers (:mod:`xrecon.diffusion.samplers`) and the
sampling loop (:func:`xrecon.diffusion.sample`) sit beside it.
"""

from __future__ import annotations

import torch

__all__ = ["add_noise", "linear_alphas_cumprod"]


def linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> torch.Tensor:
    """``(N,)`` float32 cumulative products of ``1 - beta`` of the linear schedule, as diffusers' DDPMScheduler.

    Examples
    --------
    >>> a = linear_alphas_cumprod()
    >>> a.shape, round(float(a[0]), 6), float(a[-1]) < 1e-4
    (torch.Size([1000]), 0.9999, True)
    """
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` per sequence (``t`` (B,)), as ``DDPMScheduler.add_noise``.

    Examples
    --------
    >>> x0, noise = torch.ones(2, 3), torch.zeros(2, 3)
    >>> add_noise(x0, noise, torch.tensor([0, 999]), linear_alphas_cumprod())[:, 0]
    tensor([0.9999, 0.0064])
    """
    a = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t.to(x0.device)]  # (B,)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return a.sqrt().view(shape) * x0 + (1 - a).sqrt().view(shape) * noise
