"""Training tasks: the model-specific half of :func:`xrecon.training.train`.

The trainer (:mod:`xrecon.training.trainer`) is generic: data preparation and the spatial hold-out,
normalization statistics, AdamW and its schedule, the loop, mixed precision, checkpoints, resuming,
logging. What depends on the network is the method's **training task**: a :class:`TrainingTask`
subclass that the method names when it is registered (``register(..., training="module:Class")``)
and that ``xrecon.methods.get(name).training_task()`` returns. :class:`AnytimeFormerTask` is
AnytimeFormer's.

Examples
--------
>>> import xrecon.methods
>>> task = xrecon.methods.get("anytimeformer").training_task()()
>>> task.name, task.terms
('anytimeformer', ('imputation', 'reconstruction', 'tv'))
>>> "d_model" in task.options()
True
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from xrecon.errors import CheckpointError, MethodError, XreconError
from xrecon.models.base import XreconModel
from xrecon.training.gaps import GapConfig
from xrecon.training.losses import reconstruction_loss, take_days
from xrecon.training.stats import NormStats, standardize_batch
from xrecon.training.stream import BlockStream, PixelStream, pixel_loader

if TYPE_CHECKING:
    import xarray as xr

    from xrecon.training.config import TrainConfig

__all__ = ["AnytimeFormerOptions", "AnytimeFormerTask", "NoOptions", "TaskOptions", "TrainingTask"]


class TaskOptions:
    """Base of a training task's own options: a frozen dataclass whose fields are keywords of
    :func:`~xrecon.training.train` (and ``xrecon train --option KEY=VALUE``), saved in the checkpoints.

    Subclasses are ``@dataclass(frozen=True)`` and check their values in ``__post_init__``
    (:class:`~xrecon.errors.XreconError` naming the option and a value that works).
    """

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and JSON."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """Read what :meth:`to_dict` wrote (unknown keys are refused)."""
        try:
            return cls(**dict(d))
        except TypeError as err:
            raise XreconError(f"not {cls.__name__}: {err}") from None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The options' names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


@dataclass(frozen=True)
class NoOptions(TaskOptions):
    """The options of a task that has none of its own."""


def _default_gaps() -> GapConfig:
    # The paper's 25 % of random dates, plus cloudy seasons and real cloud patterns of the same cube.
    return GapConfig(mode={"random": 2, "runs": 1, "transplant": 1}, fraction=0.25)


@dataclass(frozen=True)
class AnytimeFormerOptions(TaskOptions):
    """AnytimeFormer's training options (keywords of ``train(method="anytimeformer", ...)``).

    Attributes
    ----------
    gaps : GapConfig
        Gap simulation of training and validation samples (``xrecon train --option`` also takes a
        dict of its fields, e.g. ``gaps={'mode':'random','fraction':0.3}``).
    loss : {"l1", "mse"}
        Loss on hidden and kept observations (the paper: L1).
    reconstruction_weight : float
        Weight of the loss on the kept observations (the paper: 1).
    anytime : bool
        Anytime training: predict a daily grid (days 1..366) and add its total variation to the
        loss (smoother curves between observations, about 1.6x the cost per step).
    tv_weight : float
        Weight of the total variation with ``anytime``.
    window : {"year", None}
        Samples are calendar years (as ``fill`` runs AnytimeFormer), see ``PixelStream``.
    min_obs : int
        Pixel-years with fewer clear observations are skipped.

    Examples
    --------
    >>> AnytimeFormerOptions(loss="mse").loss
    'mse'
    >>> AnytimeFormerOptions.from_dict(AnytimeFormerOptions().to_dict()) == AnytimeFormerOptions()
    True
    """

    gaps: GapConfig = field(default_factory=_default_gaps)
    loss: str = "l1"
    reconstruction_weight: float = 1.0
    anytime: bool = False
    tv_weight: float = 0.01
    window: str | None = "year"
    min_obs: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.gaps, Mapping):
            object.__setattr__(self, "gaps", GapConfig(**self.gaps))
        for name in ("reconstruction_weight", "tv_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
                    or not math.isfinite(value) or value < 0:
                raise XreconError(f"{name} must be a finite number >= 0, got {value!r}; e.g. {name}=0.01 "
                                  f"(CLI --option {name}=0.01)")
        if not isinstance(self.anytime, bool | np.bool_):
            raise XreconError(f"anytime must be True or False, got {self.anytime!r}")
        if not isinstance(self.min_obs, int | np.integer) or isinstance(self.min_obs, bool) or self.min_obs < 1:
            raise XreconError(f"min_obs must be a positive integer, got {self.min_obs!r}")
        if self.loss not in ("l1", "mse"):
            raise XreconError(f"loss must be 'l1' or 'mse', got {self.loss!r}")
        if self.window not in ("year", None):
            raise XreconError(f"window must be 'year' or None, got {self.window!r}")
        if not isinstance(self.gaps, GapConfig):
            raise XreconError(f"gaps must be a GapConfig, got {type(self.gaps).__name__}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        g = self.gaps
        out["gaps"] = {"mode": g.mode if isinstance(g.mode, str) else dict(g.mode), "fraction": g.fraction,
                       "min_keep": g.min_keep, "n_runs": g.n_runs, "shift": g.shift}
        return out


class TrainingTask:
    """What a method provides to be trainable by :func:`xrecon.training.train`.

    A method is trainable when its registration names a subclass of this class
    (``training="module:Class"``). The trainer makes one instance per run and calls it in this order:

    1. :meth:`presets` (``train(preset=...)`` is checked against them), :meth:`options`: the
       architecture options ``train(**options)`` takes besides the :class:`~xrecon.training.TrainConfig`
       fields, and :meth:`config_defaults`: the task's defaults of those fields.
    2. :meth:`load_init` for ``init=`` and for resuming, then :meth:`architecture` (to refuse
       architecture options that differ from the loaded model's) and :meth:`check_model` (its bands
       against the cube's).
    3. :meth:`stream`: the stream of training batches (also the block grid and the validation set).
    4. :meth:`new_model` when training from scratch, inside the run's seeded random state.
    5. :meth:`setup` once the model is on its device and :meth:`provenance` (what the task adds to
       the checkpoints' provenance), then :meth:`loss` at every step and :meth:`validate` at every
       validation.

    :meth:`loss` and :meth:`validate` run under the trainer's autocast (``TrainConfig.precision``,
    see :func:`xrecon.runtime.autocast`), :meth:`validate` also under ``torch.no_grad()`` with the
    model in eval mode; their batches are already on the model's device. A task needs no device or
    precision of its own: a part that must run in float32 can leave autocast locally
    (``torch.autocast(device_type, enabled=False)``).

    Subclasses implement :meth:`options`, :meth:`new_model`, :meth:`stream`, :meth:`loss` and
    :meth:`validate`; the others have defaults for xrecon's networks (an :class:`XreconModel` with
    ``config.n_optical_bands`` and ``config.n_sar_bands``). The model must also have a
    ``normalization`` mapping of arrays (its statistics, recorded in the checkpoint's provenance).

    Attributes
    ----------
    name : str
        The method's name, which is also the registered name of its model class (checked on ``init=``).
    terms : tuple of str
        Names of the loss's parts that :meth:`loss` returns, in order: the log's columns after ``loss``.
    sample : str
        What one training sample is, for messages (e.g. ``"pixel-year"``).
    default_preset : str or None
        ``train(preset=None)``'s preset, one of :meth:`presets` (None for a task without presets).
    """

    name: ClassVar[str] = ""
    terms: ClassVar[tuple[str, ...]] = ()
    sample: ClassVar[str] = "sample"
    default_preset: ClassVar[str | None] = None
    #: The task's own training options (a :class:`TaskOptions` dataclass): keywords of ``train``.
    options_type: ClassVar[type] = NoOptions
    #: The names of the options ``train`` was given (set by the trainer; the others are defaults).
    given: frozenset[str] = frozenset()

    # -- the task's options ----------------------------------------------------------------------
    def default_options(self) -> Any:
        """The options when ``train`` is given none of them: ``options_type()``."""
        return self.options_type()

    @property
    def opts(self) -> Any:
        """The options of this run (:meth:`configure`; the defaults until then)."""
        opts = self.__dict__.get("_opts")
        if opts is None:
            opts = self.__dict__["_opts"] = self.default_options()
        return opts

    def configure(self, opts: Any) -> None:
        """Use these options (an ``options_type`` instance) from now on."""
        if not isinstance(opts, self.options_type):
            raise MethodError(f"{type(self).__name__} takes {self.options_type.__name__} options, "
                              f"got {type(opts).__name__}")
        self.__dict__["_opts"] = opts

    def adapt_options(self, cubes: Sequence[xr.Dataset], given: frozenset[str], optical: Any = "optical") -> Any:
        """The options of a new run on ``cubes``, before any stream is made: the defaults of the options
        not ``given`` may adapt to the cubes (RESTORE-DiT: ``frames`` at most their dates), and the given
        ones may be refused, naming the option and a value that works. The default: :attr:`opts`."""
        return self.opts

    def check_blocks(self, grid: BlockStream, blocks: np.ndarray, given: frozenset[str]) -> Any:
        """The options of a new run once its training ``blocks`` (of the stream ``grid``) are known: the
        place to refuse data that give nothing to train on, or to adapt defaults to it with a warning
        (RESTORE-DiT: ``min_clear`` on a cloudy cube). The default: :attr:`opts`."""
        return self.opts

    def nothing_to_train(self, cfg: TrainConfig) -> str:
        """The message when an epoch of the training blocks gives no sample: what to change."""
        return f"no {self.sample} of the training blocks can be trained on"

    # -- the model -------------------------------------------------------------------------------
    def presets(self) -> dict[str, str]:
        """The named architectures ``train(preset=...)`` and ``xrecon train --preset`` accept: name ->
        a short description (for ``--help``). A preset that is not a name (a config object) is the
        task's to accept or refuse in :meth:`new_model`. The default: none."""
        return {}

    def options(self) -> frozenset[str]:
        """Names of the architecture options ``train(**options)`` accepts (passed to :meth:`new_model`)."""
        raise NotImplementedError

    def config_defaults(self) -> dict[str, Any]:
        """The task's own defaults of :class:`~xrecon.training.TrainConfig` fields.

        They replace ``TrainConfig``'s defaults for the fields the user does not give: neither as a
        keyword of :func:`~xrecon.training.train` (or ``xrecon train``'s flags and ``--option``) nor in
        a ``config=`` object, which gives every field. A resumed run keeps its saved settings. The
        default: none (``TrainConfig``'s defaults, sized for AnytimeFormer's pixel-years).

        Returns
        -------
        dict
            Field name -> value; the names must be fields of ``TrainConfig``.
        """
        return {}

    def new_model(self, preset: Any, architecture: Mapping[str, Any], bands: Sequence[str],
                  sar_bands: Sequence[str] | None, stats: NormStats) -> XreconModel:
        """A new, randomly initialised model for the cube's bands, normalized with ``stats``.

        Parameters
        ----------
        preset : Any
            ``train``'s ``preset=`` (a name of :meth:`presets`, checked by the trainer, or a config,
            as the method defines).
        architecture : mapping
            The architecture options given (names from :meth:`options`); they override ``preset``.
        bands, sar_bands : sequence of str
            The cube's optical and SAR bands; ``sar_bands`` None for a model without SAR.
        stats : NormStats
            Normalization statistics of the training blocks.

        Draws its initial weights from torch's global random state, which the trainer has seeded.
        """
        raise NotImplementedError

    @staticmethod
    def architecture_fields(config_type: type) -> frozenset[str]:
        """The fields of a network's config dataclass a user may set: all but the numbers of bands,
        which come from the cube (for :meth:`options`)."""
        return frozenset(f.name for f in dataclasses.fields(config_type)) - {"n_optical_bands", "n_sar_bands"}

    @staticmethod
    def resolve_preset(preset: Any, presets: Mapping[str, Any], config_type: type, network: str) -> Any:
        """``preset`` as a config: a name of ``presets`` or a ``config_type`` instance, else MethodError.

        ``network`` names the network with its article, for the messages ("an AnytimeFormer").
        """
        if isinstance(preset, str):
            if preset not in presets:
                raise MethodError(f"preset={preset!r} is not {network} preset; presets: {sorted(presets)}")
            return presets[preset]
        if isinstance(preset, config_type):
            return preset
        article = network.split()[0]  # "an AnytimeFormer" -> "an AnytimeFormerConfig"
        raise MethodError(f"preset must be a preset name or {article} {config_type.__name__}, "
                          f"got {type(preset).__name__}")

    def load_init(self, init: Any) -> XreconModel:
        """The model to start from: a checkpoint path or an :class:`XreconModel` (copied), on the CPU.

        Raises
        ------
        CheckpointError
            For anything else, or a model of another method.
        """
        from xrecon.models import load

        if isinstance(init, XreconModel):
            model = copy.deepcopy(init).cpu()  # never train the caller's object in place
        elif isinstance(init, str | os.PathLike):
            model = load(init, device="cpu")
        else:
            raise CheckpointError(f"init must be a checkpoint path or an xrecon model, got {type(init).__name__}")
        if model.name != self.name:
            raise CheckpointError(f"init holds a {model.name!r} model, not {self.name!r}")
        return model

    def architecture(self, model: XreconModel) -> dict[str, Any]:
        """The model's architecture as plain values (compared with the options; in the provenance)."""
        return dataclasses.asdict(model.config)

    def check_model(self, model: XreconModel, bands: Sequence[str], sar_bands: Sequence[str] | None,
                    what: str) -> tuple[list[str], list[str] | None]:
        """Check a loaded model against the cube's bands; the cube's bands in the order the model takes them.

        Bands match by name (by count for a model without band names), as ``fill`` matches them
        (:func:`xrecon.neural.match_bands`).

        Parameters
        ----------
        model : XreconModel
        bands, sar_bands : sequence of str
            The cube's optical and SAR bands (``sar_bands`` None: the cube has no SAR).
        what : str
            The model in messages: ``"init"`` or ``"the resumed model"``.

        Returns
        -------
        (list of str, list of str or None)
            The optical and the SAR bands to select from the cube; SAR None when the model takes none.

        Raises
        ------
        CheckpointError
            When the cube lacks bands the model takes, or has others.
        """
        config = model.config
        optical = _fit(bands, model.optical_bands, config.n_optical_bands, "optical", what)
        n_sar = getattr(config, "n_sar_bands", 0)
        sar = _fit(sar_bands, model.sar_bands, n_sar, "SAR", what) if n_sar else None
        return optical, sar

    # -- the data --------------------------------------------------------------------------------
    def stream(self, cubes: Sequence[xr.Dataset], cfg: TrainConfig, **kwargs: Any) -> BlockStream:
        """The stream of training batches over ``cubes``.

        ``kwargs`` are :class:`~xrecon.training.stream.BlockStream` arguments: always ``optical``,
        ``sar``, ``mask`` and ``block``; for the training and validation streams also ``seed``,
        ``batch_size``, ``buffer_size`` and ``blocks``. The stream must yield ready batches (dicts of
        tensors whose ``"optical"`` has one row per sample) of ``batch_size`` samples at most.
        """
        raise NotImplementedError

    def loader(self, stream: BlockStream, *, num_workers: int, generator: torch.Generator) -> DataLoader:
        """A DataLoader over one epoch of the training stream's batches (made anew every epoch)."""
        return DataLoader(stream, batch_size=None, num_workers=num_workers, generator=generator)

    def provenance(self, cubes: Sequence[xr.Dataset], cfg: TrainConfig, **kwargs: Any) -> dict[str, Any]:
        """What the task adds to the checkpoints' provenance (``metadata["training"]``).

        Called once per run (after :meth:`setup`) with the arguments of :meth:`stream` (``kwargs``:
        ``optical``, ``sar``, ``mask``, ``block``). The place for the settings the task actually used
        that are not :class:`~xrecon.training.TrainConfig` fields, such as the sample shape a method's
        ``fill`` should default to. Values must be plain (str, numbers, bools, lists, dicts) and the
        keys must differ from the trainer's own (``steps``, ``config``, ``normalization``...). The
        default: nothing.
        """
        return {}

    # -- the steps -------------------------------------------------------------------------------
    def setup(self, model: XreconModel) -> None:
        """Called once per run with the model on its training device, before the first loss: keep
        what stays fixed during training (the default keeps nothing)."""

    def loss(self, model: XreconModel, batch: Mapping[str, torch.Tensor], cfg: TrainConfig,
             ) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        """(loss to back-propagate, its parts named by :attr:`terms`) for a batch on the model's device."""
        raise NotImplementedError

    def validate(self, model: XreconModel, batches: Iterable[Mapping[str, torch.Tensor]], cfg: TrainConfig,
                 ) -> tuple[float, float]:
        """(validation loss, RMSE in reflectance) on the validation batches; the best model has the lowest loss.

        NaN for both when the batches hold nothing to score.
        """
        raise NotImplementedError


def _fit(cube_bands: Sequence[str] | None, model_bands: Sequence[str] | None, n: int, kind: str,
         what: str) -> list[str]:
    """The cube's bands in the model's order, with the training context added to ``match_bands``' errors."""
    from xrecon.neural import match_bands

    if not cube_bands:
        raise CheckpointError(f"{what} takes {n} {kind} band(s) {model_bands or ''} but the cube has none")
    try:
        index = match_bands(cube_bands, model_bands, n, kind)
    except CheckpointError as err:
        # match_bands says what is missing or extra (and how to select); add what training can do instead.
        raise CheckpointError(f"{what} does not fit the cube: {err}; or train from scratch without init=") from None
    return [str(cube_bands[i]) for i in index]


class AnytimeFormerTask(TrainingTask):
    """Training AnytimeFormer (Tang et al. 2025): pixel-years, hidden and kept observations, anytime TV.

    - **Architecture**: ``preset=`` is a name of :data:`xrecon.models.anytimeformer.PRESETS` or an
      :class:`~xrecon.models.anytimeformer.AnytimeFormerConfig`; its fields other than the numbers
      of bands are the architecture options. The numbers of bands come from the cube.
    - **Samples**: a :class:`~xrecon.training.stream.PixelStream` of one pixel's calendar year
      (``TrainConfig.window``; days of year, as ``fill`` runs the model), batches sharing their dates,
      gaps simulated by ``TrainConfig.gaps``, pixel-years with fewer than ``min_obs`` clear dates skipped.
    - **Loss**: :func:`~xrecon.training.losses.reconstruction_loss` on standardized values: the error
      on the hidden observations, plus ``reconstruction_weight`` times that on the kept ones, plus
      with ``anytime`` ``tv_weight`` times the total variation of a prediction for days 1..366.
    - **Validation**: the imputation error (``TrainConfig.loss``, standardized units) on the hidden
      observations, and their RMSE in reflectance.

    Examples
    --------
    >>> task = AnytimeFormerTask()
    >>> sorted(task.options())[:3]
    ['d_inner', 'd_k', 'd_model']
    >>> task.presets()["small"]
    'd_model 64, 2 blocks'
    """

    name = "anytimeformer"
    terms = ("imputation", "reconstruction", "tv")
    sample = "pixel-year"
    default_preset = "official"
    options_type = AnytimeFormerOptions

    def __init__(self) -> None:
        self._norm: dict[str, Any] | None = None

    def options(self) -> frozenset[str]:
        from xrecon.models.anytimeformer import AnytimeFormerConfig

        return self.architecture_fields(AnytimeFormerConfig)

    def presets(self) -> dict[str, str]:
        from xrecon.models.anytimeformer import PRESETS

        described = {}
        for name, c in PRESETS.items():
            text = f"d_model {c.d_model}, {c.n_groups * c.n_group_inner_layers} blocks"
            text += ", optical only" if c.n_sar_bands == 0 else ""
            described[name] = ("the authors' size: " + text) if name == "official" else text
        return described

    def new_model(self, preset: Any, architecture: Mapping[str, Any], bands: Sequence[str],
                  sar_bands: Sequence[str] | None, stats: NormStats) -> XreconModel:
        from xrecon.models.anytimeformer import PRESETS, AnytimeFormer, AnytimeFormerConfig

        base = self.resolve_preset(preset, PRESETS, AnytimeFormerConfig, "an AnytimeFormer")
        n_sar = len(sar_bands) if sar_bands is not None else 0
        config = dataclasses.replace(base, **architecture, n_optical_bands=len(bands), n_sar_bands=n_sar)
        net = AnytimeFormer(config)
        net.set_normalization(stats.optical_mean, stats.optical_std, stats.sar_mean, stats.sar_std)
        net.optical_bands = list(bands)
        net.sar_bands = None if sar_bands is None else list(sar_bands)
        return net

    def stream(self, cubes: Sequence[xr.Dataset], cfg: TrainConfig, **kwargs: Any) -> PixelStream:
        o = self.opts
        return PixelStream(cubes, window=o.window, min_obs=o.min_obs, gaps=o.gaps, **kwargs)

    def nothing_to_train(self, cfg: TrainConfig) -> str:
        return (f"no {self.sample} of the training blocks has {self.opts.min_obs} clear observations (min_obs); "
                "nothing to train on: pass a smaller min_obs= (e.g. min_obs=2) or a cube with more clear dates")

    def loader(self, stream: BlockStream, *, num_workers: int, generator: torch.Generator) -> DataLoader:
        return pixel_loader(stream, num_workers=num_workers, generator=generator)

    def setup(self, model: XreconModel) -> None:
        # Buffers fixed during training, read once: reading them per step would copy from the GPU
        # (and wait for it) at every step.
        self._norm = model.normalization

    def loss(self, model: XreconModel, batch: Mapping[str, torch.Tensor], cfg: TrainConfig,
             ) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        b = standardize_batch(batch, self._normalization(model))
        o = self.opts
        pred, dense = self._forward(model, b, o.anytime)
        terms = reconstruction_loss(pred, b["target"], b["hidden"], b["kept"], kind=o.loss,
                                    reconstruction_weight=o.reconstruction_weight, dense=dense,
                                    tv_weight=o.tv_weight)
        return terms.total, (terms.imputation, terms.reconstruction, terms.tv)

    def validate(self, model: XreconModel, batches: Iterable[Mapping[str, torch.Tensor]], cfg: TrainConfig,
                 ) -> tuple[float, float]:
        norm = self._normalization(model)
        err_sum, sq_sum, count = 0.0, 0.0, 0
        std = model.optical_std
        for batch in batches:
            b = standardize_batch(batch, norm)
            pred, _ = self._forward(model, b, self.opts.anytime)
            hidden = b["hidden"].unsqueeze(-1).expand_as(pred)
            d = (pred - b["target"])[hidden]
            err_sum += float((d.abs() if self.opts.loss == "l1" else d**2).sum())
            sq_sum += float(((d.view(-1, pred.shape[-1]) * std) ** 2).sum())
            count += int(hidden.sum())
        if count == 0:
            return float("nan"), float("nan")
        return err_sum / count, math.sqrt(sq_sum / count)

    def _normalization(self, model: XreconModel) -> dict[str, Any]:
        # setup() is the trainer's; read the model's own when the task is used on its own.
        return self._norm if self._norm is not None else model.normalization

    @staticmethod
    def _forward(model: Any, b: Mapping[str, torch.Tensor], anytime: bool,
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predictions at the observation days, and on the daily grid for anytime training."""
        doy = b["doy"][0]  # (T,) shared by the batch
        use_sar = model.config.n_sar_bands > 0 and b["sar"].shape[1] > 0
        sar, sar_doy = (b["sar"], b["sar_doy"][0]) if use_sar else (None, None)
        if anytime:
            days = torch.arange(1, 367, device=b["optical"].device, dtype=torch.float32)
            dense = model(b["optical"], doy, days, sar, sar_doy).float()  # (B, 366, C)
            return take_days(dense, 1, b["doy"]), dense
        return model(b["optical"], doy, doy, sar, sar_doy).float(), None  # (B, T, C)
