"""The sampling loop of a patch diffusion model: upstream RESTORE-DiT's ``SeqDiffusionPipeline``.

:func:`sample` asks nothing of the network but ``denoise`` (the x0 prediction), ``check_inputs`` and
``config.num_train_timesteps``, so it lives here, beside the samplers (:mod:`xrecon.diffusion.samplers`)
and the training noise schedule (:mod:`xrecon.diffusion.schedule`); ``xrecon.models.restore_dit.sample``
is this function.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from xrecon.diffusion.samplers import get_sampler
from xrecon.errors import XreconError

__all__ = ["UNITS", "sample"]

UNITS = ("upstream", "model")


@torch.no_grad()
def sample(
    model: Any,
    image: Tensor,
    mask: Tensor,
    dates: Tensor | None = None,
    sar: Tensor | None = None,
    *,
    noise: Tensor | None = None,
    steps: int = 1,
    generator: torch.Generator | None = None,
    sampler: str | Any = "dpm++",
    n_samples: int = 1,
    valid: Tensor | None = None,
    units: str = "model",
) -> Tensor:
    """Reconstruct the masked pixels of a batch of sequences: upstream's sampling loop (``SeqDiffusionPipeline``).

    At each step the network sees the current sample where ``mask`` is 1 and the observation where it
    is 0; the sampler steps the sample from the network's x0 prediction, and the observed pixels are put
    back (noised to the next step's level, clean after the last step).

    Parameters
    ----------
    model
        The denoiser: a :class:`~xrecon.models.restore_dit.RestoreDiT`, or anything with its ``config``
        (``num_train_timesteps``), ``check_inputs`` and ``denoise``.
    image
        ``(B, T, C, H, W)`` sequences in model units (any finite value where masked).
    mask
        ``(B, T, 1, H, W)`` or ``(B, T, C, H, W)``: 1 = reconstruct, 0 = observed.
    dates, sar, valid
        As for :meth:`RestoreDiT.denoise <xrecon.models.restore_dit.RestoreDiT.denoise>`.
    noise
        Initial Gaussian noise, of the shape of the result in model units; None: drawn with ``generator``
        (on the CPU, as upstream, so that a seed gives the same noise on every device).
    steps
        Solver steps (upstream's evaluation: 1).
    sampler
        ``"dpm++"`` (upstream's), ``"ddim"``, or a sampler object (see :mod:`xrecon.diffusion`).
    n_samples
        Samples per sequence, batched into one network call per step.
    units
        ``"upstream"``: what upstream's pipeline returns, ``(x / 2 + 0.5).clamp(0, 1)``; ``"model"``: model
        units, unclamped.

    Returns
    -------
    Tensor
        ``(B, T, C, H, W)`` when ``n_samples == 1``, else ``(n_samples, B, T, C, H, W)``, on ``image``'s device.

    Examples
    --------
    >>> import torch
    >>> from xrecon.models import restore_dit
    >>> model = restore_dit.RestoreDiT(restore_dit.PRESETS["tiny"]).eval()
    >>> image, mask = torch.zeros(1, 2, 4, 8, 8), torch.ones(1, 2, 1, 8, 8)
    >>> y = restore_dit.sample(model, image, mask, None, None, n_samples=3,  # doctest: +SKIP
    ...                        generator=torch.Generator().manual_seed(0))
    >>> y.shape  # doctest: +SKIP
    torch.Size([3, 1, 2, 4, 8, 8])
    """
    if units not in UNITS:
        raise XreconError(f"units must be one of {UNITS}, got {units!r}")
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise XreconError(f"n_samples must be a positive integer, got {n_samples!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise XreconError(f"steps must be a positive integer, got {steps!r}")
    B = image.shape[0]
    model.check_inputs(image, 0, dates, sar, valid)
    if mask.ndim != 5 or mask.shape[:2] != image.shape[:2] or mask.shape[3:] != image.shape[3:] \
            or mask.shape[2] not in (1, image.shape[2]):
        raise XreconError(f"mask must be (B, T, 1, H, W) or like image {tuple(image.shape)}, got {tuple(mask.shape)}")
    shape = tuple(image.shape) if n_samples == 1 else (n_samples, *image.shape)
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=generator.device if generator is not None else "cpu",
                            dtype=image.dtype)
    elif tuple(noise.shape) != shape:
        raise XreconError(f"noise must have the shape of the result {shape}, got {tuple(noise.shape)}")
    noise = noise.to(image.device, image.dtype).reshape(n_samples * B, *image.shape[1:])  # (n B, T, C, H, W)

    def rep(v: Tensor | None) -> Tensor | None:  # sample-major: row s B + b is sample s of sequence b
        return None if v is None else v.repeat(n_samples, *([1] * (v.ndim - 1)))

    image, mask, dates, sar, valid = (rep(v) for v in (image, mask.to(image.dtype), dates, sar, valid))
    solver = get_sampler(sampler, num_train_timesteps=model.config.num_train_timesteps)
    timesteps = solver.set_timesteps(steps, device=image.device)
    latents = noise
    for i, t in enumerate(timesteps):
        model_input = latents * mask + (1 - mask) * image  # noisy where reconstructed, clean where observed
        x0 = model.denoise(model_input, t.expand(n_samples * B), dates, sar, valid=valid)  # (n B, T, C, H, W)
        latents = solver.step(x0, t, latents, generator=generator)
        known = image if i == len(timesteps) - 1 else solver.add_noise(image, noise, timesteps[i + 1: i + 2])
        latents = (1 - mask) * known + mask * latents
    out = (latents / 2 + 0.5).clamp(0, 1) if units == "upstream" else latents
    return out.reshape(shape)

