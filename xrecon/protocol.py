"""Hide first, then train, then score: what ``evaluate`` and ``fit_ensemble`` share.

:func:`train_networks` trains every network that has no checkpoint on the cube with the hidden observations
removed; :func:`check_leaks` tells, for the checkpoints a user gives, which share of the hidden observations
each was trained on (:mod:`xrecon.leakage`), warning (or, ``strict``, raising :class:`LeakError`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from xrecon import leakage
from xrecon.errors import CheckpointError, MethodError, OutputExistsError, XreconError
from xrecon.leakage import LeakError
from xrecon.methods import registry

__all__ = ["LeakError", "LeakWarning", "check_leaks", "needs_checkpoint", "resolve_checkpoints", "split_train_options",
           "train_networks"]


class LeakWarning(UserWarning):
    """A score of a network on observations it trained on: not an honest score."""


def needs_checkpoint(methods: Sequence[str]) -> list[str]:
    """The methods of ``methods`` that run from a checkpoint (networks, ensembles)."""
    return [m for m in methods if registry.get(m).needs_checkpoint]


def resolve_checkpoints(methods: Sequence[str], checkpoint: Any) -> dict[str, str]:
    """``checkpoint`` as {method: path} for the methods that need one: a path serves every network (as in
    earlier versions); a dict names one per method."""
    wanted = needs_checkpoint(methods)
    if checkpoint is None:
        return {}
    if isinstance(checkpoint, Mapping):
        unknown = sorted(set(checkpoint) - set(wanted))
        if unknown:
            raise MethodError(f"checkpoint= names {unknown}, which are not methods of this run that take a checkpoint "
                              f"({wanted})")
        return {m: os.fspath(p) for m, p in checkpoint.items()}
    if not isinstance(checkpoint, str | os.PathLike):
        raise XreconError(f"checkpoint={checkpoint!r}: expected a path, or a dict of paths by method name")
    return {m: os.fspath(checkpoint) for m in wanted}


def split_train_options(train: Any, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``train=``'s keywords per network: one dict of ``train`` keywords for all of them, or one dict per
    method name ({"anytimeformer": {...}, "restore-dit": {...}}; a network it does not name gets none)."""
    if train is None:
        return {}
    if not isinstance(train, Mapping):
        raise XreconError(f"train={train!r}: expected a dict of train() keywords, e.g. {{'time_budget': '5min'}}, "
                          "or one such dict per method name")
    names = set(registry.list_methods())
    per_method = [k for k in train if k in names]
    if per_method and len(per_method) != len(train):
        raise XreconError(f"train= mixes method names {sorted(per_method)} with train() keywords "
                          f"{sorted(set(train) - set(per_method))}; give one or the other")
    if per_method:
        bad = [k for k, v in train.items() if not isinstance(v, Mapping)]
        if bad:
            raise XreconError(f"train={{{bad[0]!r}: ...}}: expected a dict of train() keywords for that method")
        return {m: dict(train.get(m, {})) for m in methods}
    return {m: dict(train) for m in methods}


def train_networks(held: xr.Dataset, methods: Sequence[str], train: Any, out_dir: str | os.PathLike, *,
                   optical: Hashable, sar: Hashable | None, mask: Hashable | None, seed: int, progress: bool,
                   overwrite: bool = False) -> dict[str, str]:
    """Train each of ``methods`` on ``held`` (the cube with the hidden observations removed) into
    ``out_dir/<method>.xrecon``; {method: checkpoint}."""
    from xrecon.training.trainer import train as train_one
    from xrecon.training.trainer import training_files

    out_dir = Path(out_dir)
    options = split_train_options(train, methods)
    paths = {m: out_dir / f"{m}.xrecon" for m in methods}
    if not overwrite:
        for path in paths.values():
            taken = [p for p in training_files(path) if p.exists()]
            if taken:
                raise OutputExistsError(f"{os.fspath(taken[0])!r} exists: a network of an earlier run; pass "
                                        "overwrite=True to train it again, or give it as checkpoints=")
    out = {}
    for m in methods:
        registry.get(m).training_task()  # MethodError naming the trainable methods for one that is not
        kwargs = {"seed": seed, "progress": progress, **options.get(m, {})}
        for key in ("optical", "sar", "mask", "method", "out", "resume"):
            if key in kwargs:
                raise XreconError(f"train={{{key!r}: ...}}: {key} is set by the evaluation itself")
        out[m] = os.fspath(train_one(held, paths[m], method=m, optical=optical, sar=sar,
                                     mask=False if mask is None else mask, overwrite=True, **kwargs))
    return out


def _sketches(path: str) -> list[tuple[str, leakage.ObservationSketch]]:
    """(what, sketch) of everything a checkpoint or an ensemble file was fitted on."""
    from xrecon.ensemble.file import is_ensemble_file, load_ensemble

    if is_ensemble_file(path):
        ens = load_ensemble(path, verify=False)
        found = [] if ens.observations is None else [
            (f"the blend of {os.path.basename(path)!r}", leakage.ObservationSketch.from_plain(ens.observations))]
        for m in ens.members:
            if m.checkpoint is not None and os.path.isfile(m.checkpoint):
                found += [(f"member {m.method!r} ({os.path.basename(m.checkpoint)!r})", s)
                          for _, s in _sketches(m.checkpoint)]
        return [(w, s) for w, s in found if s is not None]
    from xrecon.models.base import read_checkpoint

    try:
        sketch = leakage.sketch_of(read_checkpoint(path).get("metadata"))
    except CheckpointError:
        return []  # fill reports what is wrong with the file
    return [] if sketch is None else [(repr(os.path.basename(path)), sketch)]


def check_leaks(checkpoints: Mapping[str, str], hidden: xr.DataArray, *, crs: str, strict: bool = False,
                ) -> dict[str, float]:
    """For each {method: checkpoint}: the estimated share of the ``hidden`` observations (time, y, x) it was
    trained (or, an ensemble, fitted) on; a :class:`LeakWarning` for every share above zero, or with
    ``strict`` a :class:`LeakError`. Checkpoints that record nothing (official weights, older files) are
    left out."""
    shares: dict[str, float] = {}
    problems = []
    for method, path in checkpoints.items():
        for what, sketch in _sketches(path):
            seen = leakage.seen_share(sketch, hidden, crs=crs)
            share = seen.share
            shares[method] = max(shares.get(method, 0.0), 0.0 if share != share else share)
            if seen.seen:
                problems.append(f"{method}: {what} was trained on {seen.describe()} of this evaluation, so "
                                "its scores are not honest")
    if problems:
        advice = ("hide first, then train: pass train={'time_budget': '5min'} (and no checkpoint) to train it on "
                  "the cube without the hidden observations, or score it on an area it never saw")
        text = "; ".join(problems) + "; " + advice
        if strict:
            raise LeakError(text)
        warnings.warn(text, LeakWarning, stacklevel=3)
    return shares
