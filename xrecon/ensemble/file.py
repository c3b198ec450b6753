"""The ensemble file: members, gap classes, weights, interval half-widths and provenance, as JSON.

A small text file that loads without running anything (no pickle)::

    {"format": "xrecon-ensemble", "format_version": 1, "xrecon_version": "...",
     "members": [{"method": "neighbors", "options": {}, "checkpoint": null, "checkpoint_sha256": null}, ...],
     "bands": [...], "classes": {"size_edges": [...], "days_edges": [...], "sar": true, "sar_window": 6.0},
     "weights": [band][class][member], "order": [band][class][member],
     "levels": [...], "half_widths": [band][class][level] (null = unbounded), "calibration_count": [band][class],
     "scale": [band] "none" | "spread" | "disagreement" | "spread+disagreement", "scale_floor": [band],
     "spread_member": int | null,
     "gate": null | {"features": [...], "bias": [band][member], "classes": [band][class][member],
              "coef": [band][feature][member], "mean": [band][feature], "scale": [band][feature],
              "active": [band][class]},
     "report": {...}, "provenance": {...}, "observations": {...}}

Version 1 files (before the gate) have no ``gate``: they blend with the class weights alone. Version 3 added
the scales ``"disagreement"`` and ``"spread+disagreement"`` (:data:`xrecon.ensemble.blend.SCALES`), which an
xrecon reading version 2 would not apply. Version 4 added the gate's ``active`` (the classes it moves the weights
of; the others keep their class blend), which an xrecon reading version 3 would ignore; files without it gate
every class.

Member checkpoints are stored relative to the ensemble file when they lie beside it (so the folder can be
moved), with their sha256: a changed checkpoint is refused at load.
"""

from __future__ import annotations

import functools
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xrecon._version import __version__
from xrecon.ensemble.blend import SCALES
from xrecon.ensemble.features import GapClasses
from xrecon.ensemble.gate import Gate
from xrecon.errors import CheckpointError, OutputExistsError

__all__ = ["ENSEMBLE_FORMAT", "Ensemble", "Member", "cached_ensemble", "is_ensemble_file", "load_ensemble"]

ENSEMBLE_FORMAT = "xrecon-ensemble"
ENSEMBLE_FORMAT_VERSION = 4


@dataclass(frozen=True)
class Member:
    """One method of an ensemble: its name, its fill options and (for a network) its checkpoint."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # absolute, once loaded
    checkpoint_sha256: str | None = None


@dataclass(frozen=True, eq=False)
class Ensemble:
    """A fitted ensemble (see :func:`xrecon.ensemble.fit_ensemble` and docs/ensemble.md).

    Attributes
    ----------
    members : tuple of Member
    bands : tuple of str
    classes : GapClasses
    weights : ndarray (band, class, member)
        The class blend's weights (summing to one per band and class): every value's weights without a gate,
        where the gate starts from with one.
    order : ndarray (band, class, member) of int
        Members from best to worst per class: a member's NaN is replaced by the first finite one.
    levels : tuple of float
        Levels of the stored half-widths.
    half_widths : ndarray (band, class, level)
        Interval half-widths in score units (``inf``: too few observations for that level).
    calibration_count : ndarray (band, class)
        Hidden observations each class's half-widths come from (classes with too few use the band's pooled).
    scale : tuple of str
        Per band, one of :data:`~xrecon.ensemble.blend.SCALES`: the score is ``|residual|`` divided by
        :func:`~xrecon.ensemble.blend.interval_scale` (1, the ``optical_std`` of member ``spread_member``, the
        members' disagreement or both, plus ``scale_floor``).
    scale_floor : ndarray (band,)
    spread_member : int or None
        The member whose ``optical_std`` the intervals' scale or the gate uses.
    gate : Gate or None
        Weights per value (:mod:`xrecon.ensemble.gate`); None: the class weights alone.
    report : dict
        Scores measured when fitting (docs/ensemble.md): see :meth:`scores` and :meth:`coverage`.
    provenance : dict
    observations : dict or None
        The sketch of the hidden observations the blend was fitted on (:mod:`xrecon.leakage`).
    """

    members: tuple[Member, ...]
    bands: tuple[str, ...]
    classes: GapClasses
    weights: np.ndarray
    order: np.ndarray
    levels: tuple[float, ...]
    half_widths: np.ndarray
    calibration_count: np.ndarray
    scale: tuple[str, ...]
    scale_floor: np.ndarray
    spread_member: int | None = None
    gate: Gate | None = None
    report: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    observations: Mapping[str, Any] | None = None

    @property
    def methods(self) -> list[str]:
        return [m.method for m in self.members]

    def half_width(self, level: float) -> np.ndarray:
        """(band, class) half-widths at ``level``, interpolated linearly between the stored levels.

        Raises
        ------
        XreconError
            For a level outside the stored range.
        """
        from xrecon.errors import XreconError

        levels = np.asarray(self.levels)
        if isinstance(level, bool) or not isinstance(level, int | float | np.floating) \
                or not levels[0] <= level <= levels[-1]:
            raise XreconError(f"interval={level!r}: expected a probability from {levels[0]:g} to {levels[-1]:g} "
                              "(the levels this ensemble was calibrated at), e.g. interval=0.9")
        i = int(np.clip(np.searchsorted(levels, level), 1, len(levels) - 1))
        lo, hi = levels[i - 1], levels[i]
        a, b = self.half_widths[..., i - 1], self.half_widths[..., i]
        if level == hi:
            return b.copy()
        if level == lo:
            return a.copy()
        with np.errstate(invalid="ignore"):
            out = a + (b - a) * (level - lo) / (hi - lo)
        return np.where(np.isinf(b), np.inf, out)

    def _report(self, what: str, split: str) -> list:
        from xrecon.errors import XreconError

        if split == "space":
            return list(self.report.get(what, []))
        if split == "dates":
            dates = self.report.get("dates")
            return [] if not dates else list(dates.get(what, []))
        raise XreconError(f"split={split!r}: expected 'space' (the checkerboard halves) or 'dates'")

    def scores(self, split: str = "space") -> Any:
        """The fitting's scores as a DataFrame: RMSE and MAE of every member and of the ensemble, per band
        ("all" pooled) and gap class ("all" for every class), on the hidden observations of each half with
        the blend fitted on the other half. ``dates`` counts the hidden dates a row's values lie on: the values
        of one date share its weather, so a class seen on one or two dates is measured on one or two
        situations, however many values it holds.

        ``split="dates"``: the same with halves of the hidden dates (every other one, in time order) instead
        of space, pooled only; both spatial halves share every date, so this says how much of the gain carries
        over to dates the blend was not fitted on. Empty when the hidden observations lie on one date."""
        import pandas as pd

        return pd.DataFrame(self._report("scores", split))

    def coverage(self, split: str = "space") -> Any:
        """Interval coverage and mean width at every stored level, as a DataFrame: half-widths calibrated on
        one spatial half, coverage measured on the other (both ways, pooled); ``split="dates"`` as in
        :meth:`scores`."""
        import pandas as pd

        return pd.DataFrame(self._report("coverage", split))

    # -- the file ------------------------------------------------------------------------------------
    def to_plain(self, where: Path) -> dict[str, Any]:
        members = []
        for m in self.members:
            ckpt = m.checkpoint
            if ckpt is not None:
                rel = os.path.relpath(ckpt, where.parent)
                ckpt = rel if not rel.startswith("..") else os.path.abspath(ckpt)
            members.append({"method": m.method, "options": _plain(dict(m.options)), "checkpoint": ckpt,
                            "checkpoint_sha256": m.checkpoint_sha256})
        return {
            "format": ENSEMBLE_FORMAT, "format_version": ENSEMBLE_FORMAT_VERSION, "xrecon_version": __version__,
            "members": members, "bands": list(self.bands), "classes": self.classes.to_plain(),
            "weights": _plain(self.weights), "order": self.order.astype(int).tolist(), "levels": list(self.levels),
            "half_widths": _plain(self.half_widths), "calibration_count": self.calibration_count.astype(int).tolist(),
            "scale": list(self.scale), "scale_floor": _plain(self.scale_floor), "spread_member": self.spread_member,
            "gate": None if self.gate is None else _plain(self.gate.to_plain()),
            "report": _plain(dict(self.report)), "provenance": _plain(dict(self.provenance)),
            "observations": None if self.observations is None else dict(self.observations),
        }

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the ensemble file atomically (a temporary file beside it, then a rename); never replaces an
        existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{os.fspath(path)!r} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_plain(path), allow_nan=False)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "x") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if the path appeared meanwhile: never replaces
                os.unlink(tmp)
        except FileExistsError:
            raise OutputExistsError(f"{os.fspath(path)!r} appeared while writing; it was left as it is") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        return path


def _plain(value: Any) -> Any:
    """Numbers, lists and dicts for JSON: arrays as lists, inf and NaN as None."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _array(value: Any, what: str, ndim: int, dtype: Any = np.float64) -> np.ndarray:
    arr = np.array(value, dtype=object)
    arr = np.where(arr == None, np.inf, arr).astype(dtype)  # noqa: E711  (JSON null = unbounded)
    if arr.ndim != ndim:
        raise CheckpointError(f"ensemble file: {what!r} has {arr.ndim} dimensions, expected {ndim}")
    return arr


def is_ensemble_file(path: str | os.PathLike) -> bool:
    """True when the file starts as an xrecon ensemble file does (read without loading the whole file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and ENSEMBLE_FORMAT.encode() in head


def load_ensemble(path: str | os.PathLike, *, verify: bool = True) -> Ensemble:
    """Read an ensemble file; CheckpointError for anything else, a damaged file, or (``verify``) a member
    checkpoint that is missing or changed since the ensemble was fitted."""
    from xrecon.runtime import file_sha256

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ensemble file not found: {os.fspath(path)!r}")
    try:
        d = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path.name!r} is not an xrecon ensemble file (not JSON: {err})") from None
    if not isinstance(d, dict) or d.get("format") != ENSEMBLE_FORMAT:
        raise CheckpointError(f"{path.name!r} is not an xrecon ensemble file (no format marker)")
    if not isinstance(d.get("format_version"), int) or d["format_version"] > ENSEMBLE_FORMAT_VERSION:
        raise CheckpointError(f"{path.name!r} has ensemble format version {d.get('format_version')!r}; this xrecon "
                              f"({__version__}) reads versions up to {ENSEMBLE_FORMAT_VERSION}: upgrade xrecon")
    try:
        members = []
        for m in d["members"]:
            ckpt = m.get("checkpoint")
            if ckpt is not None:
                ckpt = os.path.abspath(os.path.join(path.parent, ckpt))
                if verify:
                    if not os.path.isfile(ckpt):
                        raise CheckpointError(f"{path.name!r}: the checkpoint of member {m['method']!r} is missing "
                                              f"({ckpt!r}); keep the members folder beside the ensemble file")
                    if file_sha256(ckpt) != m.get("checkpoint_sha256"):
                        raise CheckpointError(f"{path.name!r}: the checkpoint of member {m['method']!r} ({ckpt!r}) "
                                              "changed since the ensemble was fitted; fit the ensemble again")
            members.append(Member(m["method"], dict(m.get("options") or {}), ckpt, m.get("checkpoint_sha256")))
        n_band, n_member = len(d["bands"]), len(members)
        classes = GapClasses(**d["classes"])
        weights = _array(d["weights"], "weights", 3)
        order = np.asarray(d["order"], dtype=np.int64)
        half = _array(d["half_widths"], "half_widths", 3)
        if weights.shape != (n_band, classes.n, n_member) or order.shape != weights.shape \
                or half.shape != (n_band, classes.n, len(d["levels"])):
            raise CheckpointError(f"{path.name!r} is a damaged ensemble file: weights {weights.shape}, order "
                                  f"{order.shape}, half_widths {half.shape} do not fit {n_band} bands, {classes.n} "
                                  f"classes, {n_member} members and {len(d['levels'])} levels")
        scale = tuple(d["scale"])
        if len(scale) != n_band or not set(scale) <= set(SCALES):
            raise CheckpointError(f"{path.name!r} is a damaged ensemble file: interval scales {list(scale)}, expected "
                                  f"one of {list(SCALES)} per band ({n_band})")
        if any("spread" in k for k in scale) and d.get("spread_member") is None:
            raise CheckpointError(f"{path.name!r} is a damaged ensemble file: its intervals scale with a member's "
                                  "spread, but it names no member giving one (spread_member)")
        return Ensemble(
            members=tuple(members), bands=tuple(d["bands"]), classes=classes, weights=weights, order=order,
            levels=tuple(float(v) for v in d["levels"]), half_widths=half,
            calibration_count=np.asarray(d["calibration_count"], dtype=np.int64), scale=scale,
            scale_floor=_array(d["scale_floor"], "scale_floor", 1), spread_member=d.get("spread_member"),
            gate=None if d.get("gate") is None else Gate.from_plain(d["gate"], n_band, classes.n, n_member),
            report=d.get("report") or {}, provenance=d.get("provenance") or {}, observations=d.get("observations"),
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path.name!r} is a damaged ensemble file: {type(err).__name__}: {err}") from None


@functools.lru_cache(maxsize=8)
def cached_ensemble(path: str, sha256: str | None) -> Ensemble:
    """The ensemble at ``path`` with that sha256, read once per process (the dask tasks' view of it)."""
    return load_ensemble(path, verify=False)


def member_list(members: Sequence[Member]) -> list[str]:
    return [m.method for m in members]
