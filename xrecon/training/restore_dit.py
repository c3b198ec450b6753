"""Training RESTORE-DiT on one's own cubes: patch windows, transplanted clouds, the x0 diffusion loss.

:class:`RestoreDiTTask` is the :class:`~xrecon.training.tasks.TrainingTask` of ``method="restore-dit"``,
so ``ds.recon.train(method="restore-dit", ...)`` runs it through the generic trainer (time budget,
resuming, checkpoints, CSV log, mixed precision). As upstream (SQD1/RESTORE-DiT,
``lib/trainerDiff_SARv4.py``) trains:

- a 1000-step linear-beta schedule (diffusers' ``DDPMScheduler(num_train_timesteps=1000,
  beta_schedule="linear")``; :func:`add_noise` is its ``add_noise`` in closed form), one random
  timestep per sequence;
- the model input is the noised sequence where masked (simulated clouds, and anything not observed)
  and the clean observation elsewhere;
- the network predicts x0 ("sample"), and the loss is the MSE on the masked pixels that are truly
  observed, normalised by their number (:func:`masked_mse`), so it does not scale with the cloud fraction.

>>> task = RestoreDiTTask()
>>> sorted(task.presets())
['authors', 'authors-optical', 'small', 'tiny']
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import xarray as xr

from xrecon.diffusion.schedule import add_noise, linear_alphas_cumprod
from xrecon.errors import CubeError, XreconError
from xrecon.holdout import check_gaps
from xrecon.models.base import XreconModel
from xrecon.times import DATE_ORIGIN
from xrecon.training.patches import PatchStream, window_shares
from xrecon.training.stats import NormStats
from xrecon.training.tasks import TaskOptions, TrainingTask

__all__ = ["VALIDATION_TIMESTEPS", "RestoreDiTOptions", "RestoreDiTTask", "add_noise", "linear_alphas_cumprod",
           "masked_mse"]

#: The timesteps of the validation score: those of DPM-Solver++ with 1 to 4 steps (999 is the one step
#: of the authors' evaluation, from pure noise).
VALIDATION_TIMESTEPS = (999, 749, 500, 250)
_VALIDATION_NOISE_SEED = 0
_SAMPLE_BYTES_BUFFER = 512 * 2**20  # the shuffle buffer holds at most about this much
_ENOUGH_WINDOWS = 0.1  # below this share of windows reaching the default min_clear, it adapts to the cube


@dataclass(frozen=True)
class RestoreDiTOptions(TaskOptions):
    """RESTORE-DiT's training options: keywords of ``train(method="restore-dit", ...)`` and
    ``xrecon train --method restore-dit --option KEY=VALUE``.

    Attributes
    ----------
    tile : int
        Side of the windows in pixels (at most; less on a small cube, a multiple of 16).
    frames : int
        Consecutive optical dates per window; by default at most the cubes' number of dates.
    min_clear : float
        Windows whose share of clear pixel-frames is below this are skipped. Not given, it is lowered
        on a cloudy cube, with a warning, where fewer than a tenth of the windows would reach it.
    sar_window : float
        Days within which a frame takes the nearest SAR observation.
    gaps : "window", "clouds", "pixels" or int
        The simulated clouds: a donor window's clouds, or one of ``evaluate``'s hold-out shapes.
    gap_fraction : float
        The share of a block's clear observations hidden with ``evaluate``'s shapes.
    augment : bool
        Turn the windows by random flips and transpositions.

    Examples
    --------
    >>> RestoreDiTOptions(frames=6).frames
    6
    >>> RestoreDiTOptions(min_clear=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xrecon.errors.XreconError: min_clear must be a share in [0, 1], got 2; e.g. min_clear=0.2 ...
    """

    tile: int = 32
    frames: int = 8
    min_clear: float = 0.3
    sar_window: float = 6.0
    gaps: str | int = "window"
    gap_fraction: float = 0.3
    augment: bool = True

    def __post_init__(self) -> None:
        for name in ("tile", "frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise XreconError(f"{name} must be a positive integer, got {value!r}; e.g. {name}=16")
        for name, low, example in (("min_clear", 0, 0.2), ("gap_fraction", 0, 0.3)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
                    or not low <= value <= 1 or (name == "gap_fraction" and value == 0):
                interval = "(0, 1]" if name == "gap_fraction" else "[0, 1]"
                raise XreconError(f"{name} must be a share in {interval}, got {value!r}; e.g. {name}={example} "
                                  f"(CLI --option {name}={example})")
        days = self.sar_window
        if isinstance(days, bool) or not isinstance(days, int | float | np.integer | np.floating) or not days >= 0:
            raise XreconError(f"sar_window must be a number of days >= 0, got {self.sar_window!r}; e.g. sar_window=6")
        if not (isinstance(self.gaps, str) and self.gaps == "window"):
            check_gaps(self.gaps)
        if not isinstance(self.augment, bool | np.bool_):
            raise XreconError(f"augment must be True or False, got {self.augment!r}")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the pixels where ``weight`` is True, every band: ``sum / (n_pixels * C)``.

    ``pred`` and ``target`` are ``(B, T, C, H, W)``, ``weight`` ``(B, T, H, W)`` bool (the hidden, truly
    observed pixels). Normalised by the number of such pixels in the batch, so the loss is the same
    for a per-pixel error whatever the cloud fraction; 0 (with a zero gradient) when there are none.

    Examples
    --------
    >>> pred, target = torch.ones(1, 2, 3, 4, 4), torch.zeros(1, 2, 3, 4, 4)
    >>> w = torch.zeros(1, 2, 4, 4, dtype=torch.bool); w[0, 0, :2] = True
    >>> float(masked_mse(pred, target, w)), float(masked_mse(pred, target, torch.ones_like(w)))
    (1.0, 1.0)
    """
    w = weight.unsqueeze(2).to(pred.dtype)  # (B, T, 1, H, W)
    n = weight.sum() * pred.shape[2]
    return (((pred.float() - target.float()) ** 2) * w).sum() / n.clamp(min=1)


class RestoreDiTTask(TrainingTask):
    """Training RESTORE-DiT (Shu et al. 2025): space-time windows, transplanted clouds, the x0 loss.

    - **Architecture**: ``preset=`` is a name of :data:`xrecon.models.restore_dit.PRESETS` (default
      ``"small"``, CPU-sized; ``"authors"`` is the paper's size, for a GPU) or a ``RestoreDiTConfig``;
      its fields other than the numbers of bands are the architecture options. The numbers and names
      of bands come from the cube (an optical-only preset ignores the cube's SAR).
    - **Units** (buffers of the checkpoint): optical ``(reflectance - mean) / (3 std)`` per band of the
      training blocks' clear observations, SAR ``(dB - mean) / (2 std)`` (upstream's SAR map), both
      clamped to [-1, 1]. Frames and pixels without SAR in reach get 0, the mean: no information.
    - **Samples**: a :class:`~xrecon.training.patches.PatchStream` of ``tile x tile`` windows of
      ``frames`` consecutive dates; ``TrainConfig.batch_size`` counts windows, as do
      ``validation_pixels`` and ``buffer_size`` (the buffer is also capped at about 512 MiB); the
      task's defaults of these (:meth:`config_defaults`: 8, 64, 256) replace TrainConfig's, sized
      for pixel-years, where ``train`` is not given them. ``tile`` is the class's (32), or half the
      smaller side of the smallest cube rounded down to a multiple of 16 when that is smaller (so a
      small cube still makes blocks to hold out).
    - **Provenance**: the checkpoints record the ``tile`` used, ``frames`` and ``sar_window`` in
      ``metadata["training"]`` (:meth:`provenance`), from which ``fill(method="restore-dit")`` takes
      its default ``tile`` and ``frames``.
    - **Simulated clouds**: ``gaps`` (default ``"window"``: a donor window's clouds from elsewhere in
      the block) or one of ``evaluate``'s hold-out shapes, ``"clouds"`` or a block side, hiding
      ``gap_fraction`` of each block (the same implementation, :func:`xrecon.holdout.hidden_mask`;
      see :class:`~xrecon.training.patches.PatchStream`).
    - **Loss**: :func:`masked_mse` of the x0 prediction on the simulated clouds' clear pixels, the
      input noised (:func:`add_noise`, a random timestep per window) where masked (simulated clouds
      and missing pixels) and clean where observed.
    - **Validation**: that loss and the RMSE in reflectance of a one-step x0 prediction at each of
      :data:`VALIDATION_TIMESTEPS`, with noise from a fixed seed: deterministic.

    - **Options** (:class:`RestoreDiTOptions`, keywords of ``train``): ``tile``, ``frames``,
      ``min_clear``, ``sar_window``, ``gaps``, ``gap_fraction``, ``augment``. Where they are not given,
      ``frames`` is at most the cubes' number of optical dates (:meth:`adapt_options`) and
      ``min_clear`` is lowered, with a warning, on cloudy training blocks (:meth:`check_blocks`); a given
      one that leaves nothing to train on is refused, naming the value that would work.

    The class attributes ``tile``, ``frames``... are the options' defaults: a subclass may change them
    (and be registered as a method's ``training``); the options of a run are :attr:`opts`.
    """

    name = "restore-dit"
    terms = ("hidden_share",)
    sample = "window"
    default_preset = "small"
    options_type = RestoreDiTOptions
    tile: ClassVar[int] = RestoreDiTOptions.tile
    frames: ClassVar[int] = RestoreDiTOptions.frames
    min_clear: ClassVar[float] = RestoreDiTOptions.min_clear
    sar_window: ClassVar[float] = RestoreDiTOptions.sar_window
    gaps: ClassVar[str | int] = RestoreDiTOptions.gaps
    gap_fraction: ClassVar[float] = RestoreDiTOptions.gap_fraction
    augment: ClassVar[bool] = RestoreDiTOptions.augment

    def __init__(self) -> None:
        self._alphas: torch.Tensor | None = None
        self._date_shift = 0.0
        self._shares: dict[str, Any] | None = None  # what check_blocks found, for messages

    def default_options(self) -> RestoreDiTOptions:
        """The class attributes (a subclass's own, if it sets them) as options."""
        return RestoreDiTOptions(**{name: getattr(type(self), name) for name in RestoreDiTOptions.names()})

    # -- the model -------------------------------------------------------------------------------
    def options(self) -> frozenset[str]:
        from xrecon.models.restore_dit import RestoreDiTConfig

        return self.architecture_fields(RestoreDiTConfig)

    def presets(self) -> dict[str, str]:
        from xrecon.models.restore_dit import PRESETS

        out = {}
        for name, c in PRESETS.items():
            text = f"hidden {c.hidden_size}, depth {c.depth}, {c.num_heads} heads, patch {c.patch_size}"
            text += ", optical only" if c.n_sar_bands == 0 else ""
            out[name] = ("the authors' size (for a GPU): " + text) if name.startswith("authors") else text
        return out

    def new_model(self, preset: Any, architecture: Mapping[str, Any], bands: Sequence[str],
                  sar_bands: Sequence[str] | None, stats: NormStats) -> XreconModel:
        from xrecon.models.restore_dit import PRESETS, RestoreDiT, RestoreDiTConfig

        base = self.resolve_preset(preset, PRESETS, RestoreDiTConfig, "a RESTORE-DiT")
        use_sar = sar_bands is not None and base.n_sar_bands > 0
        config = dataclasses.replace(base, **architecture, n_optical_bands=len(bands),
                                     n_sar_bands=len(sar_bands) if use_sar else 0)
        net = RestoreDiT(config)
        net.set_normalization(stats.optical_mean, 3 * np.maximum(stats.optical_std, 1e-4),
                              stats.sar_mean if use_sar else None,
                              2 * np.maximum(stats.sar_std, 1e-4) if use_sar else None)
        net.optical_bands = list(bands)
        net.sar_bands = list(sar_bands) if use_sar else None
        return net

    # -- the data --------------------------------------------------------------------------------
    def tile_size(self, cubes: Sequence[xr.Dataset], optical: Any) -> int:
        """The window side for ``cubes``: the ``tile`` option, or less for small cubes (a multiple of 16)."""
        side = min(min(ds[optical].sizes["y"], ds[optical].sizes["x"]) for ds in cubes)
        half = (side // 2) // 16 * 16
        tile = self.opts.tile
        size = min(tile, half) if half >= 16 else min(tile, side // 16 * 16 or side)
        if size < 1:
            raise XreconError(f"the cubes are too small ({side} pixels) for RESTORE-DiT windows")
        return size

    def config_defaults(self) -> dict[str, Any]:
        """Batches, validation set and shuffle buffer count windows here, not pixel-years.

        A window (``frames`` x ``tile`` x ``tile`` = 8 x 32 x 32 pixel-dates) holds some 8000 pixel-dates,
        a pixel-year a few dozen: TrainConfig's 256 per batch would make a step of the "small" preset
        about 10 s on one CPU core. With 8 windows (upstream's order of batch size) a step takes about a
        third of a second there, and its gradient still averages over thousands of hidden pixels; 64
        validation windows (scored at 4 timesteps) take about a second; a buffer of 256 windows (about
        60 MB with 4 bands and 2 SAR channels) mixes windows of several blocks.
        """
        # (measured on one core: synthetic_cube(ny=96, nx=96, bands=4), preset "small", 0.3 s a step)
        return {"batch_size": 8, "validation_pixels": 64, "buffer_size": 256}

    def adapt_options(self, cubes: Sequence[xr.Dataset], given: frozenset[str], optical: Any = "optical",
                      ) -> RestoreDiTOptions:
        """``frames`` at most the cubes' optical dates: the default lowered to them (with a warning), a
        given value beyond them refused naming the most there are."""
        o = self.opts
        n_dates = max(int(ds[optical].sizes["time"]) for ds in cubes)
        if o.frames <= n_dates:
            return o
        if "frames" in given:
            raise CubeError(f"frames={o.frames}: the cubes have at most {n_dates} optical dates; pass "
                            f"frames={n_dates} or fewer")
        warnings.warn(f"RESTORE-DiT: the cubes have {n_dates} optical dates, fewer than the default frames="
                      f"{o.frames}: training on windows of {n_dates} frames (pass frames= to choose)",
                      UserWarning, stacklevel=4)
        return dataclasses.replace(o, frames=n_dates)

    def check_blocks(self, grid: Any, blocks: np.ndarray, given: frozenset[str]) -> RestoreDiTOptions:
        """Refuse or adapt to training blocks whose windows are too cloudy for ``min_clear``.

        The clear share of every window of ``frames`` dates over the blocks' aligned tiles
        (:meth:`PatchStream.clear_shares`, one pass over the blocks' validity) is compared with
        ``min_clear``. Where fewer than a tenth of them reach it: a default ``min_clear`` is lowered to
        the median share (half the windows train), with a warning saying how little the cube has; a
        given one that no window reaches is refused, naming a ``min_clear`` and a ``frames`` that work.
        """
        o = self.opts
        if len(blocks) == 0:
            return o
        tiles = grid.clear_shares(blocks)
        shares = np.concatenate([window_shares(t, o.frames) for t in tiles])
        if shares.size == 0:  # no window fits the blocks: nothing_to_train says so
            return o
        best, reach = float(shares.max()), float((shares >= o.min_clear).mean())
        if best <= 0:
            raise CubeError("the training blocks hold no clear observation: nothing to train RESTORE-DiT on "
                            "(check the mask= and that the optical values are not all NaN)")
        positive = shares[shares > 0]
        suggest = max(0.01, math.floor(float(np.median(positive)) * 100) / 100)
        fewer = self._frames_for(tiles, o.frames, o.min_clear)
        self._shares = {"best": best, "median": float(np.median(shares)), "min_clear": suggest, "frames": fewer}
        if reach >= _ENOUGH_WINDOWS or suggest >= o.min_clear:
            return o
        if "min_clear" in given:
            if reach > 0:
                return o  # few windows, as asked
            raise CubeError(self.nothing_to_train(None))
        warnings.warn(
            f"RESTORE-DiT: the training blocks are cloudy: windows of {o.frames} frames have at most "
            f"{best:.0%} clear pixel-frames (half of them {float(np.median(shares)):.0%} or less), and "
            f"{reach:.1%} of them reach the default min_clear={o.min_clear:g}: training with min_clear={suggest:g} "
            "(pass min_clear= or frames= to choose)", UserWarning, stacklevel=4)
        return dataclasses.replace(o, min_clear=suggest)

    @staticmethod
    def _frames_for(tiles: Sequence[np.ndarray], frames: int, min_clear: float) -> int | None:
        """The most frames (fewer than ``frames``) for which a tenth of the windows reach ``min_clear``."""
        for f in range(frames - 1, 0, -1):
            shares = np.concatenate([window_shares(t, f) for t in tiles])
            if shares.size and (shares >= min_clear).mean() >= _ENOUGH_WINDOWS:
                return f
        return None

    def nothing_to_train(self, cfg: Any) -> str:
        o, found = self.opts, self._shares
        text = (f"no window of {o.frames} frames of the training blocks has {o.min_clear:.0%} clear pixel-frames "
                f"(min_clear={o.min_clear:g})")
        if not found:
            return text + "; pass a smaller min_clear= or frames="
        ways = [f"min_clear={found['min_clear']:g}"] + ([f"frames={found['frames']}"] if found["frames"] else [])
        return text + f"; the best window has {found['best']:.0%}: pass " + " or ".join(ways)

    def stream(self, cubes: Sequence[xr.Dataset], cfg: Any, **kwargs: Any) -> PatchStream:
        o = self.opts
        size = self.tile_size(cubes, kwargs.get("optical", "optical"))
        if "buffer_size" in kwargs:
            # a window is far larger than a pixel-year: cap the buffer's memory
            first = cubes[0]
            n_band = first[kwargs.get("optical", "optical")].sizes["band"]
            sar = kwargs.get("sar")
            n_sar = first[sar].sizes["sar_band"] if sar is not None and sar in first else 0
            sample_bytes = o.frames * size * size * (4 * (n_band + n_sar) + 3)
            kwargs["buffer_size"] = max(1, min(int(kwargs["buffer_size"]), _SAMPLE_BYTES_BUFFER // sample_bytes))
        kwargs.setdefault("augment", o.augment)
        return PatchStream(cubes, size=size, frames=o.frames, min_clear=o.min_clear,
                           sar_window=o.sar_window, gaps=o.gaps, gap_fraction=o.gap_fraction, **kwargs)

    def provenance(self, cubes: Sequence[xr.Dataset], cfg: Any, **kwargs: Any) -> dict[str, Any]:
        """The windows trained on: ``tile`` (the side :meth:`tile_size` chose for these cubes),
        ``frames`` and ``sar_window``, the keys ``fill(method="restore-dit")`` takes its defaults from;
        and the simulated clouds (``gaps``, ``gap_fraction``)."""
        o = self.opts
        return {"tile": int(self.tile_size(cubes, kwargs.get("optical", "optical"))), "frames": int(o.frames),
                "sar_window": float(o.sar_window), "gaps": o.gaps, "gap_fraction": float(o.gap_fraction)}

    # -- the steps -------------------------------------------------------------------------------
    def setup(self, model: XreconModel) -> None:
        p = next(model.parameters())
        self._alphas = linear_alphas_cumprod(model.config.num_train_timesteps).to(p.device)
        self._date_shift = _date_shift(model)

    def _schedule(self, model: XreconModel, device: torch.device) -> torch.Tensor:
        # setup() is the trainer's; the task may be used on its own
        if self._alphas is None or self._alphas.device != device:
            self._alphas = linear_alphas_cumprod(model.config.num_train_timesteps).to(device)
            self._date_shift = _date_shift(model)
        return self._alphas

    def inputs(self, model: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        """A batch in model units: ``x0`` (B, T, C, H, W) (0 where not observed), ``mask`` (B, T, H, W)
        (to reconstruct: simulated clouds and missing pixels), ``target`` (B, T, H, W) (hidden and
        truly observed: where the loss is), ``dates`` (B, T), ``sar`` (B, T, S, H, W) or None."""
        valid, cloud = batch["valid"], batch["cloud"]
        x0 = torch.where(valid.unsqueeze(2), model.to_model_units(batch["optical"]), 0.0)
        sar = None
        if model.config.n_sar_bands and batch["sar"].shape[2] > 0:
            sar = torch.where(batch["sar_valid"].unsqueeze(2), model.sar_to_model_units(batch["sar"]), 0.0)
        dates = batch["dates"].float() + self._date_shift
        return {"x0": x0, "mask": cloud | ~valid, "target": cloud & valid, "dates": dates, "sar": sar}

    def predict(self, model: Any, b: Mapping[str, Any], t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The x0 prediction from ``b`` (:meth:`inputs`) noised to ``t`` where masked, clean elsewhere."""
        alphas = self._schedule(model, b["x0"].device)
        noisy = add_noise(b["x0"], noise, t, alphas)
        x = torch.where(b["mask"].unsqueeze(2), noisy, b["x0"])  # (B, T, C, H, W)
        t = model.check_inputs(x, t, b["dates"], b["sar"])  # shapes only: a tile not a multiple of the patch raises
        return model(x, t, b["dates"], b["sar"])[:, :, : model.config.n_optical_bands].float()

    def loss(self, model: XreconModel, batch: Mapping[str, torch.Tensor], cfg: Any,
             ) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        b = self.inputs(model, batch)
        x0 = b["x0"]
        n_steps = model.config.num_train_timesteps
        t = torch.randint(0, n_steps, (x0.shape[0],), device=x0.device)  # one timestep per window
        noise = torch.randn_like(x0)
        pred = self.predict(model, b, t, noise)
        loss = masked_mse(pred, x0, b["target"])
        share = b["target"].sum() / batch["valid"].sum().clamp(min=1)
        return loss, (share.float(),)

    def validate(self, model: XreconModel, batches: Iterable[Mapping[str, torch.Tensor]], cfg: Any,
                 ) -> tuple[float, float]:
        gen = torch.Generator().manual_seed(_VALIDATION_NOISE_SEED)
        scale = model.optical_scale.float()
        sq, sq_refl, count = 0.0, 0.0, 0
        for batch in batches:
            b = self.inputs(model, batch)
            x0, target = b["x0"], b["target"]
            w = target.unsqueeze(2).float()
            for step in VALIDATION_TIMESTEPS:
                # noise drawn on the CPU from a fixed seed: the same score on every device
                noise = torch.randn(x0.shape, generator=gen).to(x0.device)
                t = torch.full((x0.shape[0],), step, device=x0.device, dtype=torch.long)
                d = (self.predict(model, b, t, noise) - x0.float()) * w
                sq += float((d**2).sum())
                sq_refl += float(((d * scale[:, None, None]) ** 2).sum())
                count += int(target.sum()) * x0.shape[2]
        if count == 0:
            return float("nan"), float("nan")
        return sq / count, math.sqrt(sq_refl / count)


def _date_shift(model: Any) -> float:
    """Days to add to the stream's dates (since its origin) to get days since the model's origin."""
    origin = np.datetime64(model.config.date_origin, "D")
    return float((np.datetime64(DATE_ORIGIN, "D") - origin) / np.timedelta64(1, "D"))
