"""Diffusion, apart from the networks: the training noise schedule (:mod:`~xrecon.diffusion.schedule`),
the samplers (:mod:`~xrecon.diffusion.samplers`, on diffusers' schedulers) and the sampling loop
(:func:`sample`, :mod:`~xrecon.diffusion.sampling`).

A sampler has the interface of a diffusers scheduler, reduced to what a sampling loop needs:
``set_timesteps(steps, device)`` returns the timesteps to visit, ``step(x0, t, sample)`` returns the
sample at the next timestep from the network's clean-signal (x0) prediction, ``add_noise(x0, noise, t)``
noises a clean signal to level ``t``. ``diffusers`` is imported when a sampler is made, never by
``import xrecon`` (it takes seconds); install it with ``pip install "xrecon[diffusion]"``.

Examples
--------
>>> from xrecon.diffusion import list_samplers
>>> list_samplers()
['ddim', 'dpm++']
>>> from xrecon.diffusion import get_sampler
>>> sampler = get_sampler("dpm++")  # doctest: +SKIP
>>> sampler.set_timesteps(4)  # doctest: +SKIP
tensor([999, 749, 500, 250])
"""

from xrecon.diffusion.samplers import DDIMSampler, DPMSolverSampler, Sampler, get_sampler, list_samplers
from xrecon.diffusion.sampling import sample
from xrecon.diffusion.schedule import add_noise, linear_alphas_cumprod

__all__ = ["DDIMSampler", "DPMSolverSampler", "Sampler", "add_noise", "get_sampler", "linear_alphas_cumprod",
           "list_samplers", "sample"]
