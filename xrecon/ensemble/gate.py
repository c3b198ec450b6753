"""Weights that move with each value: the ensemble's gate (numpy and scipy only).

The per-class blend (:mod:`xrecon.ensemble.blend`) gives every value of a gap class the same weights. Inside a
class, values still differ in ways that say which member to trust: how far the value is from a clear pixel
and from a clear date (the class only bins those), how much the members disagree there, and how unsure
RESTORE-DiT says it is. The gate turns them into weights per value with a softmax (a mixture-of-experts
gate over the members; feature-weighted stacking, Sill et al. 2009, with weights kept in the simplex)::

    z[m] = bias[m] + classes[k, m] + sum_f f[f] * coef[f, m]        w = softmax(z)        blend = sum_m w[m] P[m]

for a value of class ``k`` with standardised features ``f`` (:data:`FEATURES`). Weights stay positive and sum
to one, so the blend stays between its members, as the class blend does.

Fitting minimises, per band, over the hidden observations of the fit half::

    sum (blend - y)^2 / d2 + shrinkage (|bias - bias0|^2 + |classes - classes0|^2) + FEATURE_RIDGE |coef|^2

``d2`` being the members' mean squared spread around their mean (so each observation counts about one unit,
as in :func:`xrecon.ensemble.blend.fit_weights`), ``bias0`` the logarithm of the band's convex blend and
``classes0`` that of each class's (:func:`xrecon.ensemble.blend.fit_band`, shrunk toward the band's and the
band's toward its best member): the gate starts from the class blend, a class moves from it only as far as
its own observations carry it, and a feature's coefficients cost like ``FEATURE_RIDGE`` observations each.

The features' coefficients are shared by every class, and most hidden observations have short gaps: a slope
fitted there can carry a class of long gaps the wrong way. So the gate is kept per class only where it beats
the class blend on cross-fitting and the class's hidden observations lie on enough dates (``active``;
:func:`xrecon.ensemble.fit._fit_band`); elsewhere a value gets its class blend.

Measured on the real cubes (docs/training-results.md) the gate lowers the ensemble's RMSE further where the
members' strengths vary inside a class, and on dates the blend was not fitted on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xrecon.ensemble.blend import disagreement

__all__ = ["FEATURES", "FEATURE_RIDGE", "Gate", "features", "fit_gate", "gated_blend", "weights"]

#: The gate's features, in order (``spread`` only where a member gives ``optical_std``).
FEATURES = ("gap_size", "gap_days", "disagreement", "spread")
#: Ridge on the feature coefficients (standardised features, loss in units of one observation).
FEATURE_RIDGE = 30.0
_MAX_DAYS = 365.0  # gap days beyond a year (or no clear date at all) count as a year
_FLOOR = 1e-3  # reflectance: disagreement and spread below this count as this (their logarithm stays finite)
_EPS = 1e-3  # weight floor of the prior logits (a member with weight zero starts at log(1e-3))
_PARAMS = ("bias", "classes", "coef", "mean", "scale")
_SLICE = 1 << 18  # values per step when applying the gate (bounds the (n, M) temporaries)


def features(size: np.ndarray, days: np.ndarray, members: np.ndarray, spread: np.ndarray | None, *,
             reach: int) -> np.ndarray:
    """(n,) gap sizes, (n,) gap days, (M, n) member values (NaN where a member gives none) and (n,) spread or
    None -> (n, F) raw features: log(1 + gap size up to ``reach``), log(1 + gap days up to a year), log of the
    members' standard deviation and of the spread (each plus 0.001). NaN where no member gives a value.

    Computed from the values alone (not from any fitted ranking), the same way when fitting and filling.

    Examples
    --------
    >>> members = np.array([[0.1, 0.2], [0.3, np.nan]])
    >>> features(np.array([1.0, np.inf]), np.array([5.0, np.nan]), members, None, reach=24).round(2).tolist()
    [[0.69, 1.79, -2.29], [3.22, 5.9, -6.91]]
    """
    size = np.where(np.isnan(size), np.inf, size)
    days = np.where(np.isnan(days), np.inf, days)
    cols = [np.log1p(np.minimum(size, float(reach))), np.log1p(np.minimum(days, _MAX_DAYS))]
    cols.append(np.log(disagreement(members) + _FLOOR))
    if spread is not None:
        cols.append(np.log(np.nan_to_num(np.asarray(spread, np.float64), nan=0.0) + _FLOOR))
    out = np.stack([np.asarray(c, np.float64) for c in cols], axis=-1)
    out[np.isnan(members).all(axis=0)] = np.nan
    return out


@dataclass(frozen=True, eq=False)
class Gate:
    """A fitted gate per band (see the module docstring).

    Attributes
    ----------
    features : tuple of str
        The features used, a prefix of :data:`FEATURES`.
    bias : ndarray (band, member)
    classes : ndarray (band, class, member)
    coef : ndarray (band, feature, member)
    mean, scale : ndarray (band, feature)
        Standardisation of the raw features (:func:`features`), from the observations the gate was fitted on.
    active : ndarray (band, class) of bool, optional
        The classes whose weights the gate moves; the others keep their class blend (cross-fitting showed the
        gate no better there, or the class's hidden observations lay on too few dates). None: every class.
    """

    features: tuple[str, ...]
    bias: np.ndarray
    classes: np.ndarray
    coef: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    active: np.ndarray | None = None

    @property
    def uses_spread(self) -> bool:
        return "spread" in self.features

    def band(self, b: int) -> dict[str, np.ndarray]:
        """Band ``b``'s parameters, as :func:`fit_gate` returns them (with ``active`` where the gate has it)."""
        out = {k: getattr(self, k)[b] for k in _PARAMS}
        if self.active is not None:
            out["active"] = self.active[b]
        return out

    def to_plain(self) -> dict[str, Any]:
        out = {"features": list(self.features), **{k: getattr(self, k).tolist() for k in _PARAMS}}
        if self.active is not None:
            out["active"] = self.active.tolist()
        return out

    @classmethod
    def from_plain(cls, d: Mapping[str, Any], n_band: int, n_class: int, n_member: int) -> Gate:
        names = tuple(d["features"])
        if names != FEATURES[:len(names)] or len(names) < 3:
            raise ValueError(f"gate features {list(names)}: expected a prefix of {list(FEATURES)}")
        active = None if d.get("active") is None else np.asarray(d["active"], bool)
        gate = cls(names, *(np.asarray(d[k], np.float64) for k in _PARAMS), active=active)
        n_f = len(names)
        want = {"bias": (n_band, n_member), "classes": (n_band, n_class, n_member), "coef": (n_band, n_f, n_member),
                "mean": (n_band, n_f), "scale": (n_band, n_f)}
        if active is not None:
            want["active"] = (n_band, n_class)
        for k, shape in want.items():
            if getattr(gate, k).shape != shape:
                raise ValueError(f"gate {k} has shape {getattr(gate, k).shape}, expected {shape}")
        return gate

    @classmethod
    def stack(cls, names: Sequence[str], bands: Sequence[Mapping[str, np.ndarray]]) -> Gate:
        """One gate from the per-band parameters that :func:`fit_gate` returns (and ``active``, where they have it)."""
        active = np.stack([b["active"] for b in bands]).astype(bool) if all("active" in b for b in bands) else None
        return cls(tuple(names), *(np.stack([b[k] for b in bands]) for k in _PARAMS), active=active)


def weights(params: Mapping[str, np.ndarray], cls: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """One band's gate (:func:`fit_gate`), (n,) classes and (n, F) raw features -> (n, M) weights (a NaN feature
    counts as its mean)."""
    f = np.nan_to_num((raw - params["mean"]) / params["scale"], nan=0.0)
    return _softmax(params["bias"], params["classes"], params["coef"], cls, f)


def _softmax(bias: np.ndarray, classes: np.ndarray, coef: np.ndarray, cls: np.ndarray, f: np.ndarray) -> np.ndarray:
    """The gate's formula on standardised features ``f`` (n, F) -> (n, M) weights (fitting and filling)."""
    z = bias[None, :] + classes[cls] + f @ coef
    z -= z.max(axis=1, keepdims=True)
    w = np.exp(z)
    return w / w.sum(axis=1, keepdims=True)


def gated_blend(params: Mapping[str, np.ndarray], filled: np.ndarray, cls: np.ndarray, raw: np.ndarray,
                class_weights: np.ndarray) -> np.ndarray:
    """One band's gate, (M, n) member values (each member's NaN already replaced:
    :func:`xrecon.ensemble.blend.filled`), (n,) classes, (n, F) raw features and (K, M) the class blend -> (n,)
    the gated blend, a slice of values at a time; values of a class the gate leaves alone (``active`` False)
    get their class blend."""
    out = np.empty(filled.shape[1], np.float64)
    active = params.get("active")
    for s in range(0, filled.shape[1], _SLICE):
        part = slice(s, s + _SLICE)
        w = weights(params, cls[part], raw[part])
        if active is not None:
            off = ~active[cls[part]]
            w[off] = class_weights[cls[part][off]]
        out[part] = np.einsum("mn,nm->n", filled[:, part], w)
    return out


def fit_gate(filled: np.ndarray, y: np.ndarray, cls: np.ndarray, n_class: int, raw: np.ndarray,
             band: np.ndarray, class_weights: np.ndarray, *, shrinkage: float) -> dict[str, np.ndarray]:
    """Fit one band's gate: (M, n) member values (finite), (n,) truth, (n,) classes, (n, F) raw features, (M,)
    the band's convex blend and (K, M) the class blend (:func:`xrecon.ensemble.blend.fit_band`) -> its parameters
    (``bias``, ``classes``, ``coef``, ``mean``, ``scale``). With no features moving them, the gate gives every
    value its class blend (up to the weight floor).

    Examples
    --------
    >>> rng = np.random.default_rng(0); n = 4000; truth = rng.normal(size=n)
    >>> near = rng.random(n) < 0.5   # member 0 is good near clear pixels, member 1 far from them
    >>> sd0, sd1 = np.where(near, 0.05, 0.5), np.where(near, 0.5, 0.05)
    >>> P = np.stack([truth + rng.normal(0, sd0), truth + rng.normal(0, sd1)])
    >>> raw = np.stack([np.where(near, 0.7, 2.5), np.ones(n), np.zeros(n)], axis=1)
    >>> half = np.array([0.5, 0.5])
    >>> g = fit_gate(P, truth, np.zeros(n, np.int64), 1, raw, half, half[None], shrinkage=100)
    >>> weights(g, np.zeros(2, np.int64), raw[[np.argmax(near), np.argmin(near)]]).round(1).tolist()
    [[0.9, 0.1], [0.1, 0.9]]
    """
    from scipy.optimize import minimize

    n_member, n = filled.shape
    n_feature = raw.shape[1]
    mean = np.nanmean(raw, axis=0) if n else np.zeros(n_feature)
    scale = np.nanstd(raw, axis=0) if n else np.ones(n_feature)
    mean = np.nan_to_num(mean, nan=0.0)
    scale = np.where(np.isfinite(scale) & (scale > 1e-9), scale, 1.0)
    f = np.nan_to_num((raw - mean) / scale, nan=0.0)
    bias0 = np.log(np.asarray(band, np.float64) + _EPS)
    A0 = np.log(np.asarray(class_weights, np.float64) + _EPS) - bias0[None, :]  # the class blend's logits
    params = {"bias": bias0, "classes": A0, "coef": np.zeros((n_feature, n_member)),
              "mean": mean, "scale": scale}
    if n_member < 2 or n == 0:
        return params
    d2 = max(float(np.mean((filled - filled.mean(axis=0, keepdims=True)) ** 2)), 1e-12)
    lam, P, Pt = float(shrinkage), filled, filled.T
    n_bias, n_cls = n_member, n_class * n_member

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        bias = theta[:n_bias]
        A = theta[n_bias:n_bias + n_cls].reshape(n_class, n_member)
        B = theta[n_bias + n_cls:].reshape(n_feature, n_member)
        w = _softmax(bias, A, B, cls, f)
        pred = np.einsum("mn,nm->n", P, w)
        r = pred - y
        loss = r @ r / d2 + lam * (np.sum((bias - bias0) ** 2) + np.sum((A - A0) ** 2)) + FEATURE_RIDGE * np.sum(B ** 2)
        gz = (2.0 / d2) * r[:, None] * w * (Pt - pred[:, None])  # d loss / d z, (n, M)
        g_bias = gz.sum(axis=0) + 2 * lam * (bias - bias0)
        g_A = np.stack([np.bincount(cls, weights=gz[:, m], minlength=n_class) for m in range(n_member)], axis=1)
        g_A += 2 * lam * (A - A0)
        g_B = f.T @ gz + 2 * FEATURE_RIDGE * B
        return float(loss), np.concatenate([g_bias, g_A.ravel(), g_B.ravel()])

    theta0 = np.concatenate([bias0, A0.ravel(), np.zeros(n_feature * n_member)])
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    theta = res.x
    params["bias"] = theta[:n_bias]
    params["classes"] = theta[n_bias:n_bias + n_cls].reshape(n_class, n_member)
    params["coef"] = theta[n_bias + n_cls:].reshape(n_feature, n_member)
    return params
