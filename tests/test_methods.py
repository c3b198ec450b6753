"""Tests of the classical kernels in xrecon.methods, on small seeded data built here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from xrecon.errors import MethodError, XreconError
from xrecon.methods import (
    classical_methods,
    fill_harmonic,
    fill_linear,
    fill_whittaker,
    get,
    get_method,
    list_methods,
    select_lambda,
)
from xrecon.methods import whittaker as whittaker_module

METHODS = ["linear", "harmonic", "whittaker"]


def make_data(n=40, nt=30, nc=3, cloudy=0.4, seed=0, irregular=True):
    """Seasonal reflectance with noise on (ir)regular dates; invalid entries hold NaN."""
    rng = np.random.default_rng(seed)
    if irregular:
        t = 17_000.0 + np.cumsum(rng.uniform(2.0, 12.0, nt))
    else:
        t = 17_000.0 + 5.0 * np.arange(nt)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    values = 0.2 + 0.1 * np.sin(2 * np.pi * t[None, :, None] / 365.25 + phase)
    values = values + rng.normal(0, 0.01, (n, nt, nc))
    valid = rng.random((n, nt)) > cloudy
    values = values.astype(np.float32)
    values[~valid] = np.nan
    return values, valid, t


def dense_whittaker(y, w, g, lam, d, h):
    """Reference solve of (W + lam D' S D) z = W y with dense matrices, D built by Eilers' recursion."""
    n = g.size
    dmat = np.eye(n)
    for k in range(1, d + 1):
        dmat = k * np.diff(dmat, axis=0) / (g[k:] - g[:-k])[:, None]
    s = (g[d:] - g[:-d]) / (d * h)
    a = np.diag(w) + lam * dmat.T @ (s[:, None] * dmat)
    return np.linalg.solve(a, w[:, None] * y)


# ------------------------------------------------------------------------------------------------ registry


def test_registry():
    # one list of every method fill knows: the classical kernels and the networks
    assert list_methods() == ["anytimeformer", "ensemble", "harmonic", "linear", "neighbors", "restore-dit",
                              "whittaker"]
    assert classical_methods() == ["harmonic", "linear", "whittaker"]
    assert get("anytimeformer").needs_checkpoint and not get("linear").needs_checkpoint
    assert get_method("linear") is fill_linear
    assert get_method("whittaker") is fill_whittaker
    with pytest.raises(MethodError,
                       match=r"'spline'.*anytimeformer, ensemble, harmonic, linear, neighbors, restore-dit, whittaker"):
        get_method("spline")


# ------------------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("name", METHODS)
def test_shape_dtype_and_float64_input(name):
    values, valid, t = make_data()
    tq = np.linspace(t[0] - 20, t[-1] + 20, 17)
    out = get_method(name)(values, valid, t, tq)
    assert out.shape == (40, 17, 3) and out.dtype == np.float32
    out64 = get_method(name)(values.astype(np.float64), valid, t, tq)
    assert out64.dtype == np.float32
    np.testing.assert_allclose(out64, out, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_garbage_under_invalid_never_leaks(name):
    values, valid, t = make_data(seed=1)
    tq = np.linspace(t[0] - 10, t[-1] + 10, 25)
    kernel = get_method(name)
    a = values.copy()
    a[~valid] = np.nan
    b = values.copy()
    b[~valid] = 1e30
    b[~valid & (np.arange(30) % 3 == 0)] = -np.inf
    out_a, out_b = kernel(a, valid, t, tq), kernel(b, valid, t, tq)
    assert np.all(np.isfinite(out_a))
    np.testing.assert_array_equal(out_a, out_b)


@pytest.mark.parametrize("name", METHODS)
def test_all_invalid_pixel_is_nan_without_warnings(name):
    values, valid, t = make_data(n=5)
    valid[2] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = get_method(name)(values, valid, t, t)
    assert np.all(np.isnan(out[2]))
    assert np.all(np.isfinite(np.delete(out, 2, axis=0)))


@pytest.mark.parametrize("name", METHODS)
def test_all_pixels_invalid(name):
    values, valid, t = make_data(n=3)
    out = get_method(name)(values, np.zeros_like(valid), t, t[:4])
    assert out.shape == (3, 4, 3) and np.all(np.isnan(out))


@pytest.mark.parametrize("name", METHODS)
def test_one_valid_observation(name):
    values, valid, t = make_data(n=4)
    valid[1] = False
    valid[1, 7] = True
    tq = np.concatenate([t[[0, 7, 20]], [t[0] - 50, t[-1] + 50]])
    hold = get_method(name)(values, valid, t, tq)
    np.testing.assert_allclose(hold[1], np.broadcast_to(values[1, 7], (5, 3)), rtol=1e-6)
    nan = get_method(name)(values, valid, t, tq, edges="nan")
    assert np.all(np.isnan(nan[1, [0, 2, 3, 4]]))
    np.testing.assert_allclose(nan[1, 1], values[1, 7], rtol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_edges_hold_and_nan(name):
    values, valid, t = make_data(seed=2)
    valid[:, :3] = False  # every pixel starts late ...
    valid[:, -2:] = False  # ... and ends early
    valid[:, [3, -3]] = True
    values[:, [3, -3]] = 0.25
    kernel = get_method(name)
    special = np.array([t[0] - 30, t[0], t[1], t[5], t[-1], t[-1] + 30, 0.5 * (t[4] + t[5])])
    # all observation dates are queried too, so the held values can be read from the same call (for
    # Whittaker the query dates are part of its grid, and another grid gives a slightly other smooth)
    tq = np.concatenate([special, t])
    first = np.argmax(valid, axis=1)
    last = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
    hold = kernel(values, valid, t, tq)
    rows = np.arange(len(first))
    at_first = hold[rows, special.size + first]
    at_last = hold[rows, special.size + last]
    for q in (0, 1, 2):  # before every pixel's first clear date
        np.testing.assert_array_equal(hold[:, q], at_first)
    for q in (4, 5):  # after every pixel's last clear date
        np.testing.assert_array_equal(hold[:, q], at_last)
    assert not np.array_equal(hold[:, 3], at_first)
    nan = kernel(values, valid, t, tq, edges="nan")
    outside = (tq[None, :] < t[first][:, None]) | (tq[None, :] > t[last][:, None])
    assert outside[:, [0, 1, 2, 4, 5]].all() and not outside[:, [3, 6]].any()
    np.testing.assert_array_equal(np.isnan(nan[..., 0]), outside)
    np.testing.assert_array_equal(nan[~outside], hold[~outside])


@pytest.mark.parametrize("name", METHODS)
def test_query_order_does_not_matter(name):
    values, valid, t = make_data(seed=3)
    rng = np.random.default_rng(3)
    tq = np.concatenate([t[::3], rng.uniform(t[0] - 40, t[-1] + 40, 15)])  # coinciding, inside, outside
    perm = rng.permutation(tq.size)
    kernel = get_method(name)
    out = kernel(values, valid, t, tq)
    np.testing.assert_allclose(kernel(values, valid, t, tq[perm]), out[:, perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_pixels_are_independent(name, monkeypatch):
    # fill.py calls the kernels per chunk: a pixel's result must not depend on its neighbours in the batch
    monkeypatch.setattr(whittaker_module, "_BLOCK", 7)
    values, valid, t = make_data(n=30, seed=4)
    valid[5] = False
    valid[6, 1:] = False
    tq = np.linspace(t[0], t[-1], 11)
    kernel = get_method(name)
    out = kernel(values, valid, t, tq)
    part = kernel(values[3:17], valid[3:17], t, tq)
    np.testing.assert_allclose(part, out[3:17], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", METHODS)
def test_bad_edges_and_unknown_options(name):
    values, valid, t = make_data(n=2)
    kernel = get_method(name)
    with pytest.raises(MethodError, match="edges must be one of"):
        kernel(values, valid, t, t, edges="clamp")
    with pytest.raises(MethodError, match="unexpected option"):
        kernel(values, valid, t, t, smoothness=3)


@pytest.mark.parametrize("name", METHODS)
def test_bad_arrays(name):
    values, valid, t = make_data(n=2)
    kernel = get_method(name)
    with pytest.raises(XreconError, match=r"shape \(N, T, C\)"):
        kernel(values[0], valid, t, t)
    with pytest.raises(XreconError, match="valid must have shape"):
        kernel(values, valid[:, :-1], t, t)
    with pytest.raises(XreconError, match="strictly increasing"):
        kernel(values, valid, t[::-1], t)
    with pytest.raises(XreconError, match="tq must be finite"):
        kernel(values, valid, t, np.array([np.nan]))


# ------------------------------------------------------------------------------------------------- linear


def test_linear_reproduces_a_line():
    rng = np.random.default_rng(5)
    t = np.cumsum(rng.uniform(1, 9, 25))
    slope = rng.normal(0, 0.01, (50, 1, 2))
    values = (0.3 + slope * (t[None, :, None] - t[0])).astype(np.float64)
    valid = rng.random((50, 25)) > 0.5
    valid[:, [0, -1]] = True
    tq = rng.uniform(t[0], t[-1], 40)
    out = fill_linear(np.where(valid[..., None], values, np.nan), valid, t, tq)
    expected = 0.3 + slope * (tq[None, :, None] - t[0])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_linear_equals_np_interp():
    # np.interp holds the end values outside the data: the same rule as edges="hold"
    values, valid, t = make_data(n=60, nt=40, nc=2, cloudy=0.7, seed=17)
    rng = np.random.default_rng(17)
    tq = np.concatenate([rng.uniform(t[0] - 30, t[-1] + 30, 30), t[::5]])
    out = fill_linear(values, valid, t, tq)
    for i in np.flatnonzero(valid.any(axis=1)):
        for c in range(2):
            expected = np.interp(tq, t[valid[i]], values[i, valid[i], c])
            np.testing.assert_allclose(out[i, :, c], expected, rtol=1e-6, atol=1e-7)


def test_linear_between_neighbours():
    values = np.array([[[1.0], [99.0], [3.0], [5.0]]], dtype=np.float32)
    valid = np.array([[True, False, True, True]])
    t = np.array([0.0, 1.0, 4.0, 6.0])
    out = fill_linear(values, valid, t, np.array([0.0, 1.0, 2.0, 4.0, 5.0, 7.0, -1.0]))
    np.testing.assert_allclose(out[0, :, 0], [1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 1.0])


# ----------------------------------------------------------------------------------------------- harmonic


def test_harmonic_recovers_sinusoid_and_trend():
    rng = np.random.default_rng(6)
    t = 18_000.0 + np.sort(rng.uniform(0, 3 * 365, 120))
    w = 2 * np.pi * t / 365.25
    truth = (
        0.25
        + 0.03 * (t - t[0]) / 365.25
        + 0.1 * np.cos(w)
        - 0.05 * np.sin(w)
        + 0.02 * np.sin(2 * w)
    )
    values = np.repeat(truth[None, :, None], 6, axis=0)
    valid = rng.random((6, 120)) > 0.4
    tq = np.linspace(t[0], t[-1], 50)
    wq = 2 * np.pi * tq / 365.25
    expected = 0.25 + 0.03 * (tq - t[0]) / 365.25 + 0.1 * np.cos(wq) - 0.05 * np.sin(wq) + 0.02 * np.sin(2 * wq)
    out = fill_harmonic(values, valid, t, tq, order=2, trend=True, edges="nan")
    inside = ~np.isnan(out[..., 0])
    assert inside.mean() > 0.9
    np.testing.assert_allclose(out[..., 0][inside], np.broadcast_to(expected, (6, 50))[inside], atol=1e-5)
    # without the trend the same data cannot be fitted
    no_trend = fill_harmonic(values, valid, t, tq, order=2, trend=False, edges="nan")
    assert np.nanmax(np.abs(no_trend[..., 0] - expected)) > 0.01


def test_harmonic_fallback_with_few_observations():
    t = np.arange(0.0, 365.0, 10.0)
    rng = np.random.default_rng(7)
    values = rng.uniform(0.1, 0.4, (3, t.size, 1))
    valid = np.zeros((3, t.size), bool)
    valid[0, [3, 15, 30]] = True  # 3 observations for 5 or 6 parameters
    valid[1, [4, 20]] = True  # 2 observations with trend=True: the line through them
    valid[2, [4, 20, 25, 30]] = True  # 4 observations, trend: mean + trend + 1 harmonic, interpolating
    out = fill_harmonic(values, valid, t, t, order=2, trend=True)
    # with the trend, 3 observations leave no room for a harmonic (4 parameters): the least-squares line
    coef = np.polyfit(t[[3, 15, 30]], values[0, [3, 15, 30], 0], 1)
    np.testing.assert_allclose(out[0, 3:31, 0], np.polyval(coef, t[3:31]), atol=1e-6)
    line = values[1, 4, 0] + (t - t[4]) / (t[20] - t[4]) * (values[1, 20, 0] - values[1, 4, 0])
    np.testing.assert_allclose(out[1, 4:21, 0], line[4:21], atol=1e-6)
    sel = [4, 20, 25, 30]
    np.testing.assert_allclose(out[2, sel, 0], values[2, sel, 0], atol=1e-6)
    full = fill_harmonic(values[2:], valid[2:], t, t, order=1, trend=True)  # the same model, asked for
    np.testing.assert_allclose(out[2], full[0], atol=1e-6)
    # the same pixel fitted without the trend: mean + 1 harmonic, also 3 parameters
    no_trend = fill_harmonic(values, valid, t, t, order=2)
    np.testing.assert_allclose(no_trend[0, [3, 15, 30], 0], values[0, [3, 15, 30], 0], atol=1e-6)


def test_harmonic_same_day_of_year_is_not_singular():
    # four years, always observed on the same day of the leap-year-free calendar: harmonic columns repeat
    t = np.array([0.0, 365.25, 730.5, 1095.75, 1461.0]) + 100.0
    values = np.array([0.1, 0.2, 0.3, 0.2, 0.1])[None, :, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fill_harmonic(values, np.ones((1, 5), bool), t, np.linspace(100, 1561, 30), order=2)
    assert np.all(np.isfinite(out)) and np.all(np.abs(out) < 1.0)


def test_harmonic_bad_options():
    values, valid, t = make_data(n=2)
    for options, match in [
        ({"order": -1}, "order must be an integer"),
        ({"order": 1.5}, "order must be an integer"),
        ({"period": 0}, "period must be a positive number"),
        ({"trend": "yes"}, "trend must be True or False"),
    ]:
        with pytest.raises(MethodError, match=match):
            fill_harmonic(values, valid, t, t, **options)


# ---------------------------------------------------------------------------------------------- whittaker


@pytest.mark.parametrize("order", [1, 2, 3])
def test_whittaker_equals_dense_solve(order):
    values, valid, t = make_data(n=12, nt=25, nc=2, seed=8)
    rng = np.random.default_rng(8)
    tq = rng.uniform(t[0], t[-1], 10)
    tq = tq[np.abs(tq[:, None] - t[None, :]).min(axis=1) > 0.1]  # dates within an hour are merged
    tq = np.concatenate([tq, t[[2, 5]]])
    lam = 3.0 ** (2 * order)
    out = fill_whittaker(values, valid, t, tq, lam=lam, order=order, edges="nan")
    g = np.union1d(t, tq)
    h = (t[-1] - t[0]) / (t.size - 1)
    for i in range(12):
        w = np.isin(g, t[valid[i]]).astype(float)
        y = np.zeros((g.size, 2))
        y[np.isin(g, t[valid[i]])] = values[i, valid[i]]
        z = dense_whittaker(y, w, g, lam, order, h)
        expected = z[np.searchsorted(g, tq)]
        inside = ~np.isnan(out[i, :, 0])
        np.testing.assert_allclose(out[i][inside], expected[inside], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_whittaker_inverse_diagonal_equals_dense(order):
    rng = np.random.default_rng(9)
    g = np.cumsum(rng.uniform(1, 8, 20))
    w = (rng.random((20, 5)) > 0.3).astype(float)
    w[: order + 1] = 1.0
    pen = whittaker_module._penalty_bands(g, order, 5.0)
    low, dinv = whittaker_module._factor(w, 50.0, pen)
    diag = whittaker_module._inverse_diagonal(low, dinv)
    for i in range(5):
        dmat = np.eye(20)
        for k in range(1, order + 1):
            dmat = k * np.diff(dmat, axis=0) / (g[k:] - g[:-k])[:, None]
        s = (g[order:] - g[:-order]) / (order * 5.0)
        a = np.diag(w[:, i]) + 50.0 * dmat.T @ (s[:, None] * dmat)
        np.testing.assert_allclose(diag[:, i], np.diag(np.linalg.inv(a)), rtol=1e-6)


def test_whittaker_tiny_lambda_interpolates():
    values, valid, t = make_data(seed=10)
    out = fill_whittaker(values, valid, t, t, lam=1e-6)
    np.testing.assert_allclose(out[valid], values[valid], atol=1e-5)


@pytest.mark.parametrize(
    ("order", "degree", "lam", "atol"), [(1, 0, 1e8, 1e-5), (2, 1, 1e10, 1e-4), (3, 2, 1e12, 1e-3)]
)
def test_whittaker_huge_lambda_tends_to_polynomial(order, degree, lam, atol):
    # order 2: a straight line; the limit is approached slowly for order 3, and far larger lam than these
    # lose float64 precision (the documented useful range ends well before)
    values, valid, t = make_data(n=6, nc=1, seed=11)
    tq = np.linspace(t[0], t[-1], 20)
    out = fill_whittaker(values, valid, t, tq, lam=lam, order=order)
    for i in range(6):
        coef = np.polyfit(t[valid[i]] - t[0], values[i, valid[i], 0], degree)
        first, last = t[valid[i]][[0, -1]]
        fit = np.polyval(coef, np.clip(tq, first, last) - t[0])
        np.testing.assert_allclose(out[i, :, 0], fit, atol=atol)


def test_whittaker_lambda_units():
    # regular 5-day dates, all clear: a sinusoid of period 2 pi lam^(1/4) days comes out at about half
    # its amplitude (the documented meaning of lam for order 2)
    t = 5.0 * np.arange(400)
    lam = 1e4
    period = 2 * np.pi * lam**0.25
    y = np.sin(2 * np.pi * t / period)[None, :, None]
    out = fill_whittaker(y, np.ones((1, 400), bool), t, t, lam=lam)
    middle = slice(100, 300)
    gain = np.abs(out[0, middle, 0]).max() / np.abs(y[0, middle, 0]).max()
    assert 0.45 < gain < 0.55


def test_whittaker_queries_between_observations_barely_change_the_fit():
    values, valid, t = make_data(seed=12, irregular=False)
    mid = 0.5 * (t[1:] + t[:-1])
    alone = fill_whittaker(values, valid, t, t)
    with_mid = fill_whittaker(values, valid, t, np.concatenate([t, mid]))[:, : t.size]
    assert np.abs(with_mid - alone).max() < 2e-3  # versus a 0.1 seasonal amplitude


def test_whittaker_nearly_coinciding_dates():
    values, valid, t = make_data(n=10, nc=2, seed=16, cloudy=0.2)
    second = 1.0 / 86_400
    base = fill_whittaker(values, valid, t, t)
    # a query one second after each observation reads the same node
    np.testing.assert_array_equal(fill_whittaker(values, valid, t, t + second), base)
    # an observation repeated one second later (two tiles of one overpass) counts twice at one node:
    # the same as observing it twice, with no ill-conditioning
    t2 = np.sort(np.concatenate([t, t[::4] + second]))
    dup = np.searchsorted(t, t2 - 2 * second)  # the original index of every date of t2
    out = fill_whittaker(values[:, dup], valid[:, dup], t2, t)
    assert np.all(np.isfinite(out))
    twice = 1.0 + (np.arange(t.size) % 4 == 0)
    h = (t2[-1] - t2[0]) / (t2.size - 1)
    z = dense_whittaker(np.where(valid[0, :, None], values[0], 0.0), valid[0] * twice, t, 1e4, 2, h)
    np.testing.assert_allclose(out[0], z, rtol=1e-5, atol=1e-6)
    # dense queries (every 40 minutes) do not chain into one node: they follow the smooth
    tq = np.arange(t[10], t[14], 40 / 1440)
    dense = fill_whittaker(values, valid, t, tq)
    np.testing.assert_allclose(dense[:, 0], fill_whittaker(values, valid, t, tq[:1])[:, 0], atol=1e-3)
    np.testing.assert_allclose(dense[:, -1], fill_whittaker(values, valid, t, tq[-1:])[:, 0], atol=1e-3)
    assert np.abs(np.diff(dense, axis=1)).max() < 1e-3


def test_whittaker_fewer_observations_than_order_is_linear():
    values, valid, t = make_data(n=3, seed=13)
    valid[0] = False
    valid[0, [4, 12]] = True
    tq = np.linspace(t[0], t[-1], 15)
    out = fill_whittaker(values, valid, t, tq, order=3)
    np.testing.assert_allclose(out[0], fill_linear(values, valid, t, tq)[0], rtol=1e-6)


@pytest.mark.parametrize("criterion", ["gcv", "vcurve"])
def test_automatic_lambda_is_larger_for_noisier_series(criterion):
    rng = np.random.default_rng(14)
    t = 5.0 * np.arange(60)
    signal = 0.2 + 0.1 * np.sin(2 * np.pi * t / 200.0)
    valid = rng.random((40, 60)) > 0.3
    quiet = signal + rng.normal(0, 0.002, (40, 60))
    noisy = signal + rng.normal(0, 0.03, (40, 60))
    values = np.stack([quiet, noisy], axis=-1)
    lam = select_lambda(values, valid, t, criterion=criterion)
    assert lam.shape == (40, 2)
    assert np.median(lam[:, 1]) >= 10 * np.median(lam[:, 0])


@pytest.mark.parametrize("criterion", ["gcv", "vcurve"])
def test_automatic_lambda_matches_fixed_solve(criterion):
    values, valid, t = make_data(n=8, nc=2, seed=15)
    auto = fill_whittaker(values, valid, t, t, lam=criterion)
    lam = select_lambda(values, valid, t, criterion=criterion)
    for i in range(8):
        for c in range(2):
            fixed = fill_whittaker(values[i : i + 1, :, c : c + 1], valid[i : i + 1], t, t, lam=lam[i, c])
            np.testing.assert_allclose(auto[i, :, c], fixed[0, :, 0], rtol=1e-5, atol=1e-6)


def test_whittaker_bad_options():
    values, valid, t = make_data(n=2)
    for options, match in [
        ({"lam": -1.0}, "lam must be a positive number"),
        ({"lam": "auto"}, "lam must be a positive number or one of"),
        ({"lam": np.inf}, "lam must be a positive number"),
        ({"order": 4}, r"order must be an integer in \[1, 3\]"),
        ({"order": 0}, r"order must be an integer in \[1, 3\]"),
        ({"lam": "gcv", "lam_grid": [1.0, -2.0, 3.0]}, "lam_grid must be"),
        ({"lam": "gcv", "lam_grid": [1.0]}, "lam_grid must be"),
    ]:
        with pytest.raises(MethodError, match=match):
            fill_whittaker(values, valid, t, t, **options)
    with pytest.raises(MethodError, match="criterion must be one of"):
        select_lambda(values, valid, t, criterion="aic")


def test_tiny_inputs_used_to_check_options():
    # fill.py validates options by running the kernel on one pixel, two dates and one query
    for name in METHODS:
        for options in [{}, {"lam": "gcv"}, {"lam": "vcurve"}, {"order": 3}] if name == "whittaker" else [{}]:
            out = get_method(name)(np.zeros((1, 2, 1)), np.ones((1, 2), bool), np.array([0.0, 1.0]),
                                   np.array([0.5]), **options)
            assert out.shape == (1, 1, 1) and np.isfinite(out).all()


@pytest.mark.parametrize("method", ["linear", "harmonic", "whittaker"])
def test_bitwise_independent_of_how_pixels_are_batched(method):
    """fill promises chunked == unchunked to the bit: a pixel's result may not depend on its neighbours
    in the call (a single (N, T) matrix product did, through BLAS's choice of kernel for N = 1)."""
    kernel = get_method(method)
    n, nt, nc = 97, 18, 3
    tq = np.arange(-10.0, 410.0, 3.0)
    for seed in range(20):  # last-bit differences are rare: several draws (seed 13 caught the BLAS one)
        rng = np.random.default_rng(seed)
        t = np.sort(rng.choice(np.arange(400.0), nt, replace=False))
        values = 0.2 + 0.1 * np.sin(2 * np.pi * t / 365)[None, :, None] + 0.01 * rng.normal(size=(n, nt, nc))
        values = values.astype(np.float32)
        valid = rng.random((n, nt)) > 0.4
        whole = kernel(values, valid, t, tq)
        for size in (1, 2, 5):
            parts = [kernel(values[i:i + size], valid[i:i + size], t, tq) for i in range(0, n, size)]
            np.testing.assert_array_equal(np.concatenate(parts), whole, err_msg=f"seed {seed}, size {size}")


@pytest.mark.parametrize("name,options", [("linear", {}), ("whittaker", {}), ("whittaker", {"order": 3, "lam": 40.0}),
                                          ("whittaker", {"lam": "gcv"}), ("linear", {"edges": "nan"})])
def test_native_layout_equals_pixel_layout(name, options):
    """fill calls the (T, C, N) version of the kernel: it must give the (N, T, C) kernel's numbers bit for bit."""
    values, valid, t = make_data(n=37, nt=25, nc=3, seed=3)
    valid[5] = False  # an empty pixel
    tq = np.concatenate([t[::2], [t[0] - 30.0, t[-1] + 12.5, 0.5 * (t[3] + t[4])]])
    native = get(name).native_function()
    got = native(np.ascontiguousarray(values.transpose(1, 2, 0)), np.ascontiguousarray(valid.T), t, tq, **options)
    assert got.shape == (tq.size, 3, 37) and got.dtype == np.float32
    expected = get_method(name)(values, valid, t, tq, **options)
    np.testing.assert_array_equal(got.transpose(2, 0, 1), expected)
