"""``method="ensemble"`` behind ``fill``: the graph-build step and the patch kernel (the method's adapter).

An ensemble file (:func:`xrecon.ensemble.fit_ensemble`) names its members and holds their weights per gap
class. Each block runs every member once, on the part of the window it needs (a pixel method on the block
alone, a patch method on the block and its own halo), measures every query's gap class on the window
(:mod:`xrecon.ensemble.features`: the distance to the nearest clear pixel of the date needs the halo), and
blends the members with the class's weights (:func:`xrecon.ensemble.blend.blend`), moved per value by the
ensemble's gate where it has one (:mod:`xrecon.ensemble.gate`). With ``interval=`` it adds
``optical_lower`` and ``optical_upper``: the blend minus and plus the class's calibrated half-width (times
the scale the band was calibrated with, :func:`xrecon.ensemble.blend.interval_scale`: RESTORE-DiT's
spread, the members' disagreement at the value, or both). Clear observations passed through (at query
times that are optical dates) have both bounds equal to the observation.

The graph carries the ensemble file's path and sha256, and each member's own frozen plan (built once here,
as ``fill`` would build it); the file is read once per process (:func:`xrecon.ensemble.file.cached_ensemble`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from xrecon.errors import MethodError
from xrecon.methods.registry import BuildRequest, Method, Plan

__all__ = ["build", "fill_ensemble", "interval_outputs"]


def _levels(interval: Any) -> tuple[tuple[float, ...], bool]:
    """(levels, single): ``interval`` as a tuple of probabilities, and whether one number was given."""
    if interval is None:
        return (), False
    single = not isinstance(interval, list | tuple | np.ndarray)
    levels = (interval,) if single else tuple(interval)
    for a in levels:
        if isinstance(a, bool) or not isinstance(a, int | float | np.floating) or not 0 < float(a) < 1:
            raise MethodError(f"ensemble: interval={interval!r}: expected a probability strictly between 0 and 1 "
                              "(e.g. interval=0.9), or a list of them")
    if len(set(levels)) != len(levels) or not levels:
        raise MethodError(f"ensemble: interval={interval!r}: expected distinct levels")
    return tuple(float(a) for a in levels), single


def interval_outputs(levels: Sequence[float], single: bool) -> tuple[str, ...]:
    """Output names of the bounds: ``optical_lower``/``optical_upper`` for one level, else one pair per level
    tagged by its percentage (``optical_lower_90``, ``optical_upper_97_5``...).

    Examples
    --------
    >>> interval_outputs([0.9], True)
    ('optical_lower', 'optical_upper')
    >>> interval_outputs([0.5, 0.975], False)
    ('optical_lower_50', 'optical_upper_50', 'optical_lower_97_5', 'optical_upper_97_5')
    """
    if not levels:
        return ()
    if single:
        return ("optical_lower", "optical_upper")
    names: list[str] = []
    for a in levels:
        tag = f"{round(100 * a, 3):g}".replace(".", "_")
        names += [f"optical_lower_{tag}", f"optical_upper_{tag}"]
    return tuple(names)


def build(method: Method, request: BuildRequest) -> Plan:
    """Read and check the ensemble, build each member's plan as ``fill`` would, freeze the plan."""
    from xrecon import methods
    from xrecon.ensemble.file import load_ensemble
    from xrecon.times import to_ns

    method.check_option_names(request.options)
    levels, single = _levels(request.options.get("interval"))
    ens = load_ensemble(request.checkpoint)  # CheckpointError for another file or changed member checkpoints
    cube = request.cube
    if list(map(str, cube.bands)) != list(ens.bands):
        raise MethodError(f"ensemble {os.path.basename(request.checkpoint)!r} was fitted on bands {list(ens.bands)}; "
                          f"the cube has {list(map(str, cube.bands))} (expected the same bands in the same order)")
    for a in levels:
        ens.half_width(a)  # a level outside the calibrated range fails now
    if ens.classes.sar and cube.sar is None:
        raise MethodError(f"ensemble {os.path.basename(request.checkpoint)!r} was fitted on a cube with SAR (its gap "
                          "classes split on SAR in reach); this cube has no SAR variable")
    members, halo = [], ens.classes.reach
    for m in ens.members:
        member = methods.get(m.method)
        plan = member.prepare(BuildRequest(
            cube=cube, query_times=request.query_times, options=dict(m.options), edges=request.edges,
            checkpoint=m.checkpoint, checkpoint_sha256=m.checkpoint_sha256, batch_size=request.batch_size,
            device=request.device, keep_observed=False,
        ))
        members.append((member, plan))
        halo = max(halo, member.halo if plan.halo is None else plan.halo)
    use_sar = cube.sar is not None and (ens.classes.sar or any(p.use_sar for _, p in members))
    kwargs = {
        "ensemble": request.checkpoint, "sha256": request.checkpoint_sha256, "members": tuple(members),
        "times": to_ns(cube.times), "query": to_ns(request.query_times),
        "sar_times": to_ns(cube.sar_times) if use_sar else None, "interval": levels,
        "keep_observed": bool(request.keep_observed), "halo": int(halo), "bounds": interval_outputs(levels, single),
    }
    outputs = ("optical", *kwargs["bounds"]) if levels else ("optical",)
    return Plan.of(kwargs, use_sar=use_sar, halo=halo, outputs=outputs)


def _run_member(member: Method, plan: Plan, values: np.ndarray, valid: np.ndarray, sar: np.ndarray | None,
                offset: tuple[int, int], halo: int, kw: dict[str, Any], edges: str) -> np.ndarray:
    """One member on the part of the window it needs -> its packed (Tq, K, Y, X) core (see ``xrecon.kernels``)."""
    from xrecon.fill_blocks import FillSpec, fill_patch, fill_pixels

    spec = FillSpec(method=member, plan=plan, times=kw["times"], query_times=kw["query"],
                    sar_times=kw["sar_times"] if plan.use_sar else None, edges=edges, keep_observed=False,
                    has_mask=True, gap_days=False)
    cut = halo - (spec.halo if member.footprint == "patch" else 0)
    ny, nx = values.shape[-2:]
    win = (slice(cut, ny - cut), slice(cut, nx - cut))
    blocks = [values[..., win[0], win[1]], valid[..., win[0], win[1]]]
    if plan.use_sar:
        blocks.append(sar[..., win[0], win[1]])
    if member.footprint == "pixel":
        return fill_pixels(*blocks, spec=spec)
    return fill_patch(*blocks, spec=spec, offset=(offset[0] + cut, offset[1] + cut))


def fill_ensemble(values: np.ndarray, valid: np.ndarray, t: np.ndarray, tq: np.ndarray, *, edges: str,
                  offset: tuple[int, int], sar: np.ndarray | None = None, sar_t: np.ndarray | None = None,
                  **kw: Any) -> dict[str, np.ndarray]:
    """The patch kernel: every member once on the window, gap classes, the blend and its bounds (core only)."""
    from xrecon.ensemble import gate
    from xrecon.ensemble.blend import blend, filled, interval_scale
    from xrecon.ensemble.features import distance_to_clear, gap_days, sar_in_reach
    from xrecon.ensemble.file import cached_ensemble

    ens = cached_ensemble(kw["ensemble"], kw["sha256"])
    h = kw["halo"]
    n_time, n_band, wy, wx = values.shape
    ny, nx = wy - 2 * h, wx - 2 * h
    preds, spread = [], None
    for i, (member, plan) in enumerate(kw["members"]):
        packed = _run_member(member, plan, values, valid, sar, offset, h, kw, edges)
        preds.append(packed[:, :n_band])
        if i == ens.spread_member:
            names = member.outputs if plan.outputs is None else plan.outputs
            k = names.index("optical_std")
            spread = packed[:, k * n_band:(k + 1) * n_band]
    preds = np.stack(preds)  # (M, Tq, C, Y, X)

    # gap classes of every query at every core pixel
    times, query = np.asarray(kw["times"], np.int64), np.asarray(kw["query"], np.int64)
    pos = np.clip(np.searchsorted(times, query), 0, n_time - 1)
    date = np.where(times[pos] == query, pos, -1)  # the optical date of each query, or -1
    core_valid = valid[:, h:h + ny, h:h + nx]
    size = np.full((len(query), ny, nx), np.inf)
    if (date >= 0).any():
        r = ens.classes.reach
        cut = h - r
        around = valid[:, cut:wy - cut, cut:wx - cut]
        on = np.flatnonzero(date >= 0)
        dist = distance_to_clear(around[date[on]], np.ones((len(on), *around.shape[1:]), bool), reach=r)
        size[on] = dist[:, r:r + ny, r:r + nx]
    days = gap_days(core_valid, t, tq)
    near = None
    if ens.classes.sar:
        ok = np.isfinite(sar[:, :, h:h + ny, h:h + nx]).all(axis=1)
        near = sar_in_reach(ok, sar_t, tq, ens.classes.sar_window)
    cls = ens.classes.index(size, days, near).reshape(-1)

    n_member = preds.shape[0]
    optical = np.empty((len(query), n_band, ny, nx), np.float32)
    for b in range(n_band):
        P = preds[:, :, b].reshape(n_member, -1).astype(np.float64)
        if ens.gate is None:
            blended = blend(P, cls, ens.weights[b], ens.order[b])
        else:
            std = spread[:, b].reshape(-1) if ens.gate.uses_spread else None
            raw = gate.features(size.reshape(-1), days.reshape(-1), P, std, reach=ens.classes.reach)
            blended = gate.gated_blend(ens.gate.band(b), filled(P, ens.order[b][cls]), cls, raw, ens.weights[b])
        optical[:, b] = blended.reshape(len(query), ny, nx)
    out = {"optical": optical}
    if not kw["interval"]:
        return out
    core_values = values[:, :, h:h + ny, h:h + nx]
    bounds = kw["bounds"]
    scales = [interval_scale(ens.scale[b], preds[:, :, b].reshape(n_member, -1),
                             None if spread is None else spread[:, b].reshape(-1), ens.scale_floor[b])
              for b in range(n_band)]  # the same for every level
    for i, level in enumerate(kw["interval"]):
        half = ens.half_width(level)  # (C, K)
        lower = np.empty_like(optical)
        upper = np.empty_like(optical)
        for b in range(n_band):
            w = (half[b][cls] * scales[b]).reshape(len(query), ny, nx)
            lower[:, b] = optical[:, b] - w
            upper[:, b] = optical[:, b] + w
        if kw["keep_observed"]:
            for q in np.flatnonzero(date >= 0):
                obs = core_valid[date[q]][None]
                np.copyto(lower[q], core_values[date[q]], where=obs)
                np.copyto(upper[q], core_values[date[q]], where=obs)
        out[bounds[2 * i]], out[bounds[2 * i + 1]] = lower, upper
    return out
