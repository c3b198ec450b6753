"""Gap simulation (xrecon.training.gaps) and the training losses (xrecon.training.losses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xrecon.errors import XreconError
from xrecon.training.gaps import GapConfig, hide_random, hide_runs, hide_transplant, simulate_gaps
from xrecon.training.losses import masked_error, reconstruction_loss, take_days, total_variation


def _valid(seed: int, n: int = 200, t: int = 40, p_clear: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    valid = rng.random((n, t)) < p_clear
    valid[:5] = False  # pixels with nothing
    valid[5:10] = False
    valid[5:10, rng.integers(0, t, 5)] = True  # pixels with one observation
    valid[10:15] = True  # fully clear pixels
    return valid


def _check_invariants(valid: np.ndarray, kept: np.ndarray, hidden: np.ndarray, min_keep: int) -> None:
    assert kept.dtype == hidden.dtype == bool and kept.shape == hidden.shape == valid.shape
    assert not (hidden & ~valid).any(), "hid a date that was not observed"
    assert np.array_equal(kept, valid & ~hidden)
    need = np.minimum(min_keep, valid.sum(1))
    assert (kept.sum(1) >= need).all(), "left a pixel with fewer than min_keep observations"


# -- invariants shared by every mode, on arbitrary masks --------------------------------------------------
masks = st.integers(0, 2**32 - 1).flatmap(
    lambda seed: st.tuples(st.just(seed), st.integers(1, 30), st.integers(1, 25), st.floats(0.0, 1.0))
)


@settings(max_examples=60, deadline=None)
@given(masks, st.floats(0, 1), st.integers(1, 3), st.sampled_from(["random", "runs", "transplant"]))
def test_hidden_is_subset_of_valid_and_never_all(args, fraction, min_keep, mode):
    seed, n, t, p_clear = args
    valid = np.random.default_rng(seed).random((n, t)) < p_clear
    config = GapConfig(mode=mode, fraction=fraction, min_keep=min_keep, n_runs=2 if mode == "runs" else 1)
    kept, hidden = simulate_gaps(valid, config, rng=seed)
    _check_invariants(valid, kept, hidden, min_keep)
    # a pixel that has observations always keeps at least one
    has = valid.any(1)
    assert kept[has].any(1).all()


def test_all_hidden_is_impossible_even_at_fraction_one():
    valid = _valid(0)
    for fn in (hide_random, hide_runs):
        kept, hidden = fn(valid, 1.0, rng=1)
        _check_invariants(valid, kept, hidden, 1)
        has = valid.sum(1) >= 1
        assert (kept[has].sum(1) == 1).all()  # everything else hidden
    donors = np.zeros((3, valid.shape[1]), bool)  # donors cloudy on every date
    kept, hidden = hide_transplant(valid, donors, rng=1)
    _check_invariants(valid, kept, hidden, 1)
    assert (kept[valid.any(1)].sum(1) == 1).all()


# -- fractions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_random_hides_the_asked_fraction_per_pixel(fraction):
    valid = _valid(1, n=500, t=60)
    kept, hidden = hide_random(valid, fraction, rng=2)
    n = valid.sum(1)
    expected = np.clip(np.floor(n * fraction + 0.5), 0, np.maximum(n - 1, 0))
    assert np.array_equal(hidden.sum(1), expected)
    overall = hidden.sum() / valid.sum()
    assert abs(overall - fraction) < 0.02


def test_random_choice_is_uniform_over_observed_dates():
    valid = np.ones((4000, 8), bool)
    _, hidden = hide_random(valid, 0.25, rng=3)
    freq = hidden.mean(0)  # each date hidden with probability 2/8
    assert np.allclose(freq, 0.25, atol=0.03)


def test_runs_are_consecutive_among_observations():
    valid = _valid(2, n=300, t=50)
    kept, hidden = hide_runs(valid, 0.3, rng=4)
    _check_invariants(valid, kept, hidden, 1)
    rank = np.cumsum(valid, 1) - 1
    n_valid = valid.sum(1)
    for i in range(len(valid)):
        r = rank[i][hidden[i]]
        if len(r):
            assert np.array_equal(r, np.arange(r[0], r[0] + len(r))), f"row {i} hid {r}"
            # and no kept observation lies between two hidden ones, in time
            t = np.flatnonzero(hidden[i])
            assert not kept[i, t[0]: t[-1] + 1].any()
    expected = np.clip(np.floor(n_valid * 0.3 + 0.5), 0, np.maximum(n_valid - 1, 0))
    assert np.array_equal(hidden.sum(1), expected)


def test_runs_start_anywhere():
    valid = np.ones((2000, 10), bool)
    _, hidden = hide_runs(valid, 0.2, rng=5)
    starts = hidden.argmax(1)
    assert set(starts.tolist()) == set(range(9))  # runs of 2 start at 0..8


def test_several_runs_split_the_count():
    valid = np.ones((50, 40), bool)
    _, hidden = hide_runs(valid, 0.5, rng=6, n_runs=4)
    # 20 hidden dates in 4 runs of 5 that may overlap: at most 20, and more than one run when apart
    assert (hidden.sum(1) <= 20).all() and (hidden.sum(1) >= 5).all()
    n_segments = (np.diff(hidden.astype(int), axis=1) == 1).sum(1) + hidden[:, 0]
    assert (n_segments > 1).any()


# -- transplanted clouds ------------------------------------------------------------------------------------
def test_transplant_hides_exactly_a_donors_clouds():
    rng = np.random.default_rng(7)
    donors = rng.random((30, 24)) < 0.7  # real validity patterns of other pixels
    valid = np.ones((100, 24), bool)
    kept, hidden = hide_transplant(valid, donors, rng=8, min_keep=1)
    _check_invariants(valid, kept, hidden, 1)
    for i in range(len(valid)):
        # each pixel's hidden dates are one donor's cloudy dates (min_keep never binds: donors have clear dates)
        assert any(np.array_equal(hidden[i], ~d) for d in donors), f"row {i} is no donor's cloud pattern"


def test_transplant_with_shift_takes_rolled_donor_patterns():
    rng = np.random.default_rng(9)
    donors = rng.random((5, 16)) < 0.5
    donors[:, 0] = True  # at least one clear date each, so min_keep does not bind
    valid = np.ones((60, 16), bool)
    _, hidden = hide_transplant(valid, donors, rng=10, shift=True)
    rolled = [np.roll(~d, s) for d in donors for s in range(16)]
    for h in hidden:
        assert any(np.array_equal(h, r) for r in rolled)
    # and shifting does happen
    assert not all(any(np.array_equal(h, ~d) for d in donors) for h in hidden)


def test_transplant_never_picks_the_pixel_itself():
    donors = np.array([[True] * 6, [True, False, False, True, True, False]])
    valid = np.ones((2, 6), bool)
    for seed in range(20):
        # pixel 0 is donor 0 (clear), so it must get donor 1's clouds; pixel 1 must get donor 0's (none)
        _, hidden = hide_transplant(valid, donors, rng=seed, exclude=np.array([0, 1]))
        assert np.array_equal(hidden[0], ~donors[1]) and not hidden[1].any()


def test_transplant_respects_min_keep_and_validity():
    valid = _valid(11, n=200, t=30)
    donors = np.random.default_rng(12).random((40, 30)) < 0.2  # very cloudy donors
    kept, hidden = hide_transplant(valid, donors, rng=13, min_keep=3)
    _check_invariants(valid, kept, hidden, 3)


def test_mixed_modes_use_each_mode():
    valid = np.ones((3000, 30), bool)
    donors = np.ones((1, 30), bool)  # a donor without clouds: transplant hides nothing
    config = GapConfig(mode={"random": 1, "runs": 1, "transplant": 1}, fraction=0.2)
    _, hidden = simulate_gaps(valid, config, rng=14, donors=donors)
    none = (hidden.sum(1) == 0).mean()
    assert 0.28 < none < 0.39  # the transplant third
    consecutive = np.array([np.ptp(np.flatnonzero(h)) == 5 for h in hidden if h.any()])
    assert 0.4 < consecutive.mean() < 0.6  # runs vs random among the others (random is rarely a run)


# -- seeding and errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["random", "runs", "transplant"])
def test_same_seed_same_gaps_different_seed_different_gaps(mode):
    valid = _valid(15)
    config = GapConfig(mode=mode)
    a = simulate_gaps(valid, config, rng=np.random.default_rng(1))[1]
    b = simulate_gaps(valid, config, rng=np.random.default_rng(1))[1]
    c = simulate_gaps(valid, config, rng=np.random.default_rng(2))[1]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_arguments_are_refused():
    valid = np.ones((2, 5), bool)
    with pytest.raises(XreconError, match="fraction"):
        hide_random(valid, 1.5)
    with pytest.raises(XreconError, match="bool"):
        hide_random(valid.astype(int))
    with pytest.raises(XreconError, match="donors"):
        hide_transplant(valid, np.ones((2, 4), bool))
    with pytest.raises(XreconError, match="gap mode"):
        GapConfig(mode="blobs")
    with pytest.raises(XreconError, match="min_keep"):
        GapConfig(min_keep=0)


def test_empty_batch():
    kept, hidden = simulate_gaps(np.zeros((0, 7), bool), GapConfig(mode={"random": 1, "runs": 1}), rng=0)
    assert kept.shape == hidden.shape == (0, 7)


# -- losses -------------------------------------------------------------------------------------------------
def test_masked_error_counts_only_masked_dates_and_ignores_nans_elsewhere():
    pred = torch.zeros(2, 3, 2)
    target = torch.tensor([[[1.0, 1], [2, 2], [float("nan"), 0]], [[3, 3], [0, 0], [0, 0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_error(pred, target, mask).item() == pytest.approx((1 + 1 + 2 + 2 + 3 + 3) / 6)
    assert masked_error(pred, target, mask, kind="mse").item() == pytest.approx((1 + 1 + 4 + 4 + 9 + 9) / 6)
    empty = masked_error(pred.requires_grad_(), target, torch.zeros(2, 3, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()  # still differentiable


def test_reconstruction_loss_is_paper_combination():
    torch.manual_seed(0)
    pred = torch.rand(4, 6, 3, requires_grad=True)
    target = torch.rand(4, 6, 3)
    hidden = torch.rand(4, 6) < 0.3
    kept = ~hidden & (torch.rand(4, 6) < 0.8)
    dense = torch.rand(4, 20, 3, requires_grad=True)
    terms = reconstruction_loss(pred, target, hidden, kept, dense=dense)
    imp = (pred - target).abs()[hidden].mean()
    rec = (pred - target).abs()[kept].mean()
    tv = (dense[:, 1:] - dense[:, :-1]).abs().mean()
    assert terms.total.item() == pytest.approx((imp + rec + 0.01 * tv).item(), rel=1e-6)
    terms.total.backward()
    assert pred.grad is not None and dense.grad is not None
    no_tv = reconstruction_loss(pred, target, hidden, kept, reconstruction_weight=0)
    assert no_tv.total.item() == pytest.approx(imp.item(), rel=1e-6) and no_tv.tv.item() == 0


def test_total_variation_skips_padding():
    pred = torch.tensor([[[0.0], [1.0], [100.0]], [[0.0], [2.0], [4.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert total_variation(pred, mask).item() == pytest.approx((1 + 2 + 2) / 3)


def test_take_days_picks_observation_days_from_a_daily_grid():
    dense = torch.arange(10.0).view(1, 10, 1).repeat(2, 1, 1)  # days 5..14
    days = torch.tensor([[5.0, 9.0], [14.0, 0.0]])  # 0 = padding, clamped
    out = take_days(dense, torch.tensor([5, 5]), days)
    assert out[..., 0].tolist() == [[0.0, 4.0], [9.0, 0.0]]
