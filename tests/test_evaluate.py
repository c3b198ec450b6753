"""Hold-out evaluation: metrics equal a direct numpy computation; gap classes partition the hidden set."""

from __future__ import annotations

import numpy as np
import pytest

import xrecon  # noqa: F401
from xrecon.errors import XreconError
from xrecon.evaluate import _gap_block
from xrecon.testing import hide_observations, synthetic_cube


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=20, nx=20, bands=4, seed=3, chunks={"y": 10, "x": 10})


def test_metrics_match_numpy(cube):
    table = cube.recon.evaluate(["linear", "whittaker"], holdout=0.2, seed=1)
    assert set(table.method) == {"linear", "whittaker"}
    held, hidden = hide_observations(cube, 0.2, seed=1)
    pred = held.recon.fill(method="whittaker").optical.values.transpose(0, 2, 3, 1).astype(float)
    truth = cube.optical.values.transpose(0, 2, 3, 1).astype(float)
    h = hidden.values
    err = pred[h] - truth[h]
    row = table[(table.method == "whittaker") & (table.band == "B08")].iloc[0]
    b = 3
    assert row.n == h.sum()
    np.testing.assert_allclose(row.rmse, np.sqrt(np.mean(err[:, b] ** 2)), rtol=1e-5)
    np.testing.assert_allclose(row.mae, np.mean(np.abs(err[:, b])), rtol=1e-5)
    r2 = 1 - np.sum(err[:, b] ** 2) / np.sum((truth[h][:, b] - truth[h][:, b].mean()) ** 2)
    np.testing.assert_allclose(row.r2, r2, rtol=1e-4)
    cos = np.sum(pred[h] * truth[h], 1) / np.linalg.norm(pred[h], axis=1) / np.linalg.norm(truth[h], axis=1)
    sam = table[(table.method == "whittaker") & (table.band == "all")].sam.iloc[0]
    np.testing.assert_allclose(sam, np.degrees(np.arccos(np.clip(cos, -1, 1))).mean(), rtol=1e-4)
    # on a smooth synthetic scene every classical method is far better than nothing
    assert (table[table.band != "all"].r2 > 0.8).all(), table


def test_by_gap_partitions_the_hidden_observations(cube):
    table = cube.recon.evaluate(["linear"], holdout=0.3, by_gap=(0, 15, 30, np.inf))
    band = table[table.band == "B02"]
    total = band[band.gap == "all"].n.iloc[0]
    assert band[band.gap != "all"].n.sum() == total
    assert list(band.gap) == ["all", "0-15 d", "15-30 d", ">30 d"]
    # longer gaps are harder
    rmse = band.set_index("gap").rmse
    assert rmse["0-15 d"] < rmse[">30 d"]


def test_gap_block():
    t = np.array([0.0, 5, 10, 20, 40])
    valid = np.array([[True, False, False, True, False]])
    hidden = np.array([[False, True, True, False, True]])
    np.testing.assert_array_equal(_gap_block(valid, hidden, t), [[np.nan, 20, 20, np.nan, np.inf]])


def test_bad_holdout(cube):
    with pytest.raises(XreconError, match="holdout"):
        cube.recon.evaluate(["linear"], holdout=1.5)


def test_plot_evaluation(cube, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from xrecon.evaluate import plot_evaluation

    table = cube.recon.evaluate(["linear", "whittaker"], holdout=0.3, by_gap=True)
    fig = plot_evaluation(table, "mae", path=tmp_path / "eval.png")
    bars = [p for p in fig.axes[0].patches]
    assert len(bars) == 2 * 4  # two methods x four bands
    heights = sorted(round(b.get_height(), 8) for b in bars)
    expected = sorted(round(v, 8) for v in table[(table.gap == "all") & (table.band != "all")].mae)
    assert heights == expected
    assert len(fig.axes[1].lines) == 2 and (tmp_path / "eval.png").stat().st_size > 5000
    with pytest.raises(XreconError, match="metric"):
        plot_evaluation(table, "accuracy")
