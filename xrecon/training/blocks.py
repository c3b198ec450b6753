"""The data side of a training run: the cubes as the model sees them, the spatial blocks and their
hold-out, the normalization statistics of the training blocks, the validation set, and the sketch of the
observations read."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from xrecon.cube import resolve_mask, validate
from xrecon.errors import CubeError
from xrecon.models.base import XreconModel
from xrecon.training.blockstream import BlockStream
from xrecon.training.config import TrainConfig
from xrecon.training.stats import NormStats, compute_stats

if TYPE_CHECKING:
    from xrecon.training.tasks import TrainingTask

__all__ = ["TrainingData", "block_size", "observations", "prepare_data", "split_blocks", "training_mask",
           "training_stats", "validation_batches"]

_VALIDATION_STREAM = 1  # the validation set's seed is (seed, this): never the training stream's


@dataclass(frozen=True)
class TrainingData:
    """The cubes as the model sees them, the stream's settings and the spatial hold-out."""

    cubes: list[xr.Dataset]
    bands: list[str]
    sar_bands: list[str] | None  # None when the model takes no SAR
    stream_kw: dict[str, Any]  # optical, sar, mask, block: the task adds its own settings
    block: int | None
    grid: BlockStream  # unseeded, only for the blocks' geometry
    train_blocks: np.ndarray
    val_blocks: np.ndarray


def block_size(cubes: Sequence[xr.Dataset], optical: Hashable, block: int | None) -> int | None:
    """The stream's ``block``: the dask chunks when they make enough blocks to hold some out, else a size."""
    if block is not None:
        return block
    n_blocks, sides = 0, []
    for ds in cubes:
        da = ds[optical]
        sides.append(max(da.sizes["y"], da.sizes["x"]))
        chunks = da.chunksizes
        n_blocks += len(chunks["y"]) * len(chunks["x"]) if chunks else 1
    if all(ds[optical].chunks is not None for ds in cubes) and n_blocks >= 8:
        return None
    return max(8, math.ceil(max(sides) / 4))


def split_blocks(blocks: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training blocks, validation blocks): a seeded random share of the blocks, at least one each way."""
    if fraction == 0:
        return blocks, blocks[:0]
    n = len(blocks)
    if n < 2:
        raise CubeError(
            f"the cube makes {n} spatial block(s), too few to hold one out for validation; pass a smaller "
            "block= or validation_fraction=0"
        )
    n_val = min(max(1, round(fraction * n)), n - 1)
    pick = np.random.default_rng([seed, 7]).permutation(n)[:n_val]
    is_val = np.zeros(n, bool)
    is_val[pick] = True
    return blocks[~is_val], blocks[is_val]


def _area(stream: BlockStream, blocks: np.ndarray, cube: int, shape: tuple[int, int]) -> np.ndarray:
    """(y, x) bool: the pixels of ``cube`` inside ``blocks``."""
    area = np.zeros(shape, bool)
    for task in blocks[blocks[:, 0] == cube]:
        area[stream.block_slices(task)] = True
    return area


def training_stats(cubes: Sequence[xr.Dataset], stream: BlockStream, blocks: np.ndarray, optical: Hashable,
                   sar: Hashable | None, mask: Hashable | None) -> NormStats:
    """Normalization statistics of the training blocks only (validation pixels stay unseen)."""
    masked = []
    for c, ds in enumerate(cubes):
        shape = (ds[optical].sizes["y"], ds[optical].sizes["x"])
        area = xr.DataArray(_area(stream, blocks, c, shape), dims=("y", "x"))
        ds = ds.copy()
        ds[optical] = ds[optical].where(area)
        if sar is not None:
            ds[sar] = ds[sar].where(area)
        masked.append(ds)
    return compute_stats(masked, optical=optical, sar=sar, mask=mask)


def training_mask(cubes: Sequence[xr.Dataset], optical: Hashable, mask: Any) -> Hashable | bool:
    """The one mask name every cube is read with, or False for none (``mask="auto"``: the cubes' own)."""
    names = {resolve_mask(ds, mask, optical=optical) for ds in cubes}
    if len(names) > 1:
        raise CubeError(f"the cubes carry different clear masks {sorted(map(str, names))} (None = no mask); "
                        "expected the same in every cube: pass mask=<name> or mask=False")
    (name,) = names
    return False if name is None else name


def prepare_data(task: TrainingTask, cubes: Sequence[xr.Dataset], cfg: TrainConfig, model_obj: XreconModel | None,
                 state: Mapping[str, Any] | None, optical: Hashable, sar: Hashable | None,
                 mask: Hashable | None) -> TrainingData:
    """The cubes as the model will see them (only its variables, bands in its order), and the hold-out."""
    parts = [validate(ds, optical=optical, sar=sar, mask=mask) for ds in cubes]
    bands = [str(b) for b in parts[0].bands]
    sar_bands = [str(b) for b in parts[0].sar_bands] if parts[0].sar is not None else None
    # A new model takes what the cube has; a loaded one the bands it was trained on, in its order.
    model_bands, model_sar = bands, sar_bands
    if model_obj is not None:
        model_bands, model_sar = task.check_model(model_obj, bands, sar_bands,
                                                  "the resumed model" if state else "init")
    use_sar = sar_bands is not None and model_sar is not None
    sar_name = sar if use_sar else None
    has_mask = mask is not None and mask is not False
    keep = [optical] + ([mask] if has_mask else []) + ([sar_name] if use_sar else [])
    selected = []
    for ds in cubes:
        ds = ds[keep]
        if model_bands != bands:
            ds = ds.sel(band=model_bands)
        if use_sar and model_sar != sar_bands:
            ds = ds.sel(sar_band=model_sar)
        selected.append(ds)

    block = block_size(selected, optical, cfg.block)
    stream_kw = dict(optical=optical, sar=sar_name, mask=mask, block=block)
    if state is None:  # a new run: the task's defaults may adapt to the cubes (a resumed run keeps its own)
        task.configure(task.adapt_options(selected, task.given, optical))
    grid = task.stream(selected, cfg, **stream_kw)
    if state is not None:  # the saved hold-out, whatever the seed would pick now
        val_blocks = np.asarray(state["validation_blocks"], dtype=np.int64).reshape(-1, 3)
        is_val = {tuple(v) for v in val_blocks.tolist()}
        train_blocks = np.array([b for b in grid.blocks.tolist() if tuple(b) not in is_val], np.int64)
    else:
        train_blocks, val_blocks = split_blocks(grid.blocks, cfg.validation_fraction, cfg.seed)
        task.configure(task.check_blocks(grid, train_blocks, task.given))
    return TrainingData(selected, bands, sar_bands if use_sar else None, stream_kw, block, grid, train_blocks,
                        val_blocks)


def observations(cubes: Sequence[xr.Dataset], data: TrainingData, optical: Hashable,
                 init_model: XreconModel | None, state: Mapping[str, Any] | None, net: XreconModel) -> dict[str, Any]:
    """The sketch of every clear observation the run reads (training and validation blocks: validation chooses
    the best checkpoint), merged with what ``init``'s weights were trained on; a resumed run keeps its own.

    One pass over the cubes' validity (:func:`xrecon.leakage.sketch`), recorded in both checkpoints as
    ``metadata["observations"]`` so that ``evaluate`` can tell when it would score the network on them.
    """
    from xrecon import leakage

    if state is not None and net.metadata.get("observations") is not None:
        return net.metadata["observations"]
    mask = data.stream_kw["mask"]
    seen = None
    for original, ds in zip(cubes, data.cubes, strict=True):
        valid = ds[optical].notnull().all("band")
        if mask is not None and mask is not False:
            valid = valid & ds[mask].astype(bool)
        part = leakage.sketch(valid, crs=leakage.crs_key(original, optical))
        seen = part if seen is None else seen.merge(part)
    prior = leakage.sketch_of(init_model.metadata) if init_model is not None else None
    return (seen if prior is None else seen.merge(prior)).to_plain()


def validation_batches(task: TrainingTask, cubes: Sequence[xr.Dataset], stream_kw: Mapping[str, Any],
                       blocks: np.ndarray, cfg: TrainConfig) -> list[dict[str, torch.Tensor]]:
    """A fixed, seeded set of validation batches (gaps included), read once and kept in memory."""
    if len(blocks) == 0:
        return []
    stream = task.stream(cubes, cfg, **stream_kw, seed=cfg.seed * 1000 + _VALIDATION_STREAM,
                         batch_size=cfg.batch_size, buffer_size=min(cfg.buffer_size, cfg.validation_pixels),
                         blocks=blocks)
    batches, n = [], 0
    for batch in stream:
        batches.append(batch)
        n += int(batch["optical"].shape[0])
        if n >= cfg.validation_pixels:
            break
    return batches
