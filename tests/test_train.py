"""The trainer (xrecon.training.trainer): learning, spatial hold-out, files, resuming, seeds, init, CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import xarray as xr

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.models
from xrecon.cli import main
from xrecon.errors import CheckpointError, CubeError, MethodError, OutputExistsError, XreconError
from xrecon.testing import hide_observations, synthetic_cube
from xrecon.training import TrainConfig, compute_stats, train, training_files
from xrecon.training.trainer import _lr_at

# A network small enough to train in seconds on one core.
TINY = dict(model="small", d_model=32, d_inner=32, d_k=8, d_v=8, fusion_rank=2, dropout=0.0)
QUICK = dict(TINY, batch_size=32, block=8, validation_fraction=0.25, validation_interval=4, log_interval=2,
             checkpoint_interval=4, lr=3e-3, warmup=2, progress=False, mask="clear")


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: a second torch thread costs more in synchronisation than it gives.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_cube(seed: int = 3) -> xr.Dataset:
    # Small fields so that every land cover occurs in the training and the held-out blocks; a 10-day
    # revisit and 70 % clouds leave gaps long enough for a network to do better than a straight line.
    return synthetic_cube(ny=24, nx=24, bands=4, sar=True, seed=seed, revisit_days=10, field_size=4,
                          cloud_cover=0.7)


def log_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def weights(path) -> dict[str, torch.Tensor]:
    return xrecon.models.load(path, device="cpu").state_dict()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training run (about 15 s on one busy core), shared by the tests that inspect it."""
    torch.set_num_threads(1)
    ds = small_cube()
    out = tmp_path_factory.mktemp("train") / "model.xrecon"
    best = train(ds, out, **dict(QUICK, validation_fraction=0.34, validation_interval=75, log_interval=25,
                                 checkpoint_interval=100, batch_size=64), steps=300, seed=0)
    return ds, best


def test_validation_loss_falls_and_beats_linear_on_held_out_pixels(trained):
    ds, best = trained
    rows = [r for r in log_rows(training_files(best)[2]) if r["val_loss"]]
    start, end = float(rows[0]["val_loss"]), float(rows[-1]["val_loss"])
    assert rows[0]["step"] == "0" and rows[-1]["step"] == "300"
    assert end < 0.5 * start, f"validation loss {start:.3f} -> {end:.3f}"

    # Hidden clear observations of the validation blocks, which training never read.
    meta = xrecon.models.load(best, device="cpu").metadata["training"]
    held_out = np.zeros((24, 24), bool)
    b = meta["block"]
    for _, iy, ix in meta["validation_blocks"]:
        held_out[iy * b:(iy + 1) * b, ix * b:(ix + 1) * b] = True
    assert 0 < held_out.mean() < 0.5
    held, hidden = hide_observations(ds, 0.2, seed=1, mask="clear")
    hidden = hidden.values & held_out[None]
    rmse = {}
    for method in ("linear", "anytimeformer"):
        out = held.recon.fill(method=method, checkpoint=best if method != "linear" else None, mask="clear")
        err = (out.optical.values - ds.optical.values).transpose(0, 2, 3, 1)[hidden]
        rmse[method] = float(np.sqrt(np.mean(err**2)))
    assert hidden.sum() > 200
    assert rmse["anytimeformer"] < 0.95 * rmse["linear"], rmse  # measured: 0.84 x


def test_files_log_and_provenance(trained):
    ds, best = trained
    best_path, last_path, log_path = training_files(best)
    assert best == best_path and best_path.is_file() and last_path.is_file() and log_path.is_file()
    rows = log_rows(log_path)
    assert [int(r["step"]) for r in rows] == list(range(0, 301, 25))
    assert all(math.isfinite(float(r["loss"])) for r in rows[1:])
    assert float(rows[-1]["loss"]) < float(rows[1]["loss"])

    model = xrecon.models.load(best, device="cpu")
    meta = model.metadata["training"]
    assert model.optical_bands == ["B02", "B03", "B04", "B08"] and model.sar_bands == ["VV", "VH"]
    assert meta["seed"] == 0 and meta["config"]["steps"] == 300 and meta["best_val_loss"] <= meta["val_loss"]
    assert "resume" not in model.metadata  # the best file is for use, the last one for resuming
    last = xrecon.models.load(last_path, device="cpu")
    assert last.metadata["resume"]["step"] == 300 and last.metadata["resume"]["optimizer"]["state"]

    # Normalization from the training blocks only: the validation pixels are masked out here by hand.
    area = np.ones((24, 24), bool)
    b = meta["block"]
    for _, iy, ix in meta["validation_blocks"]:
        area[iy * b:(iy + 1) * b, ix * b:(ix + 1) * b] = False
    masked = ds.copy()
    masked["optical"] = ds.optical.where(xr.DataArray(area, dims=("y", "x")))
    masked["sar"] = ds.sar.where(xr.DataArray(area, dims=("y", "x")))
    expected = compute_stats(masked, mask="clear")
    np.testing.assert_allclose(model.normalization["optical_mean"], expected.optical_mean, rtol=1e-6)
    np.testing.assert_allclose(model.normalization["sar_std"], expected.sar_std, rtol=1e-6)
    assert not np.allclose(model.normalization["optical_mean"], compute_stats(ds, mask="clear").optical_mean,
                           rtol=1e-6)


def test_accessor_train_then_fill(tmp_path):
    ds = small_cube(seed=5)
    ckpt = ds.recon.train(out=tmp_path / "m.xrecon", steps=4, **QUICK)
    filled = ds.recon.fill("20D", method="anytimeformer", checkpoint=ckpt, mask="clear")
    assert filled.optical.dims == ("time", "band", "y", "x")
    assert np.isfinite(filled.optical.values).mean() > 0.99


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    ds = small_cube()
    a = train(ds, tmp_path / "a.xrecon", steps=6, seed=1, **QUICK)
    b = train(ds, tmp_path / "b.xrecon", steps=6, seed=1, **QUICK)
    c = train(ds, tmp_path / "c.xrecon", steps=6, seed=2, **QUICK)
    for name, last in (("best", 0), ("last", 1)):
        wa, wb, wc = (weights(training_files(p)[last]) for p in (a, b, c))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
        assert not all(torch.equal(wa[k], wc[k]) for k in wa), name


def test_resume_continues_as_if_uninterrupted(tmp_path):
    ds = small_cube()
    QUICK = dict(globals()["QUICK"], dropout=0.1)  # dropout: the random state must resume too
    whole = train(ds, tmp_path / "whole.xrecon", steps=12, seed=0, **QUICK)
    stopped_at = []

    def stop_at_6(row):
        stopped_at.append(row["step"])
        return row["step"] == 6

    part = train(ds, tmp_path / "part.xrecon", steps=12, seed=0, callback=stop_at_6, **QUICK)
    assert stopped_at == [2, 4, 6]
    _, last, log = training_files(part)
    assert xrecon.models.load(last, device="cpu").metadata["resume"]["step"] == 6
    resumed = train(ds, part, steps=12, seed=0, resume=True, **QUICK)
    assert resumed == part
    assert [int(r["step"]) for r in log_rows(log)] == [0, 2, 4, 6, 8, 10, 12]  # continued, nothing twice
    for i in (0, 1):
        wa, wb = weights(training_files(whole)[i]), weights(training_files(part)[i])
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a finished run resumed with more steps trains on
    train(ds, part, steps=14, seed=0, resume=True, **QUICK)
    assert xrecon.models.load(last, device="cpu").metadata["resume"]["step"] == 14
    assert int(log_rows(log)[-1]["step"]) == 14
    with pytest.raises(XreconError, match="saved settings"):
        train(ds, part, steps=16, seed=0, resume=True, **dict(QUICK, lr=1e-4))


def test_init_starts_from_the_given_weights(tmp_path):
    ds = small_cube()
    first = train(ds, tmp_path / "first.xrecon", steps=8, seed=0, **QUICK)
    start_val = xrecon.models.load(training_files(first)[1], device="cpu").metadata["training"]["val_loss"]
    source = xrecon.models.load(training_files(first)[1], device="cpu")
    before = {k: v.clone() for k, v in source.state_dict().items()}
    for init in (training_files(first)[1], source):
        tuned = train(ds, tmp_path / f"tuned-{type(init).__name__}.xrecon", steps=2, seed=0, init=init, **QUICK)
        rows = [r for r in log_rows(training_files(tuned)[2]) if r["val_loss"]]
        # same seed, same validation set: the fine-tune's step 0 scores exactly the weights it was given
        assert float(rows[0]["val_loss"]) == pytest.approx(start_val, rel=1e-6)
        model = xrecon.models.load(tuned, device="cpu")
        np.testing.assert_array_equal(model.normalization["optical_mean"], source.normalization["optical_mean"])
        assert model.metadata["training"]["init"]
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())  # caller's model untouched


def test_init_with_other_bands_is_refused(tmp_path):
    ds = small_cube()
    first = train(ds, tmp_path / "first.xrecon", steps=2, seed=0, **QUICK)
    other = synthetic_cube(ny=24, nx=24, bands=["B02", "B03", "B04", "B05"], seed=3, revisit_days=10)
    with pytest.raises(CheckpointError, match="B05"):
        train(other, tmp_path / "other.xrecon", steps=2, init=first, **QUICK)
    with pytest.raises(CheckpointError, match="SAR"):
        train(ds.drop_vars("sar"), tmp_path / "nosar.xrecon", steps=2, init=first, **QUICK)


def test_refusals(tmp_path):
    ds = small_cube()
    train(ds, tmp_path / "m.xrecon", steps=2, **QUICK)
    with pytest.raises(OutputExistsError):
        train(ds, tmp_path / "m.xrecon", steps=2, **QUICK)
    train(ds, tmp_path / "m.xrecon", steps=2, overwrite=True, **QUICK)
    with pytest.raises(MethodError, match="unknown options"):
        train(ds, tmp_path / "x.xrecon", steps=2, learning_rate=1, **QUICK)
    with pytest.raises(MethodError):
        train(ds, tmp_path / "x.xrecon", method="whittaker", steps=2, **QUICK)
    with pytest.raises(CubeError, match="too few"):
        train(ds, tmp_path / "x.xrecon", steps=2, **dict(QUICK, block=64))
    with pytest.raises(XreconError):
        TrainConfig(steps=0)


def test_optical_only_and_no_validation(tmp_path):
    ds = small_cube()
    best = train(ds, tmp_path / "m.xrecon", steps=3, sar=None, **dict(QUICK, validation_fraction=0.0))
    model = xrecon.models.load(best, device="cpu")
    assert model.config.n_sar_bands == 0 and model.sar_bands is None
    assert model.metadata["training"]["validation_blocks"] == []
    wa, wb = weights(best), weights(training_files(best)[1])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # without validation the best is the last


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [_lr_at(s, cfg) for s in range(100)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[10] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4, rel=0.01)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_train(tmp_path, capsys):
    ds = small_cube().drop_vars(["truth", "landcover", "field"])
    path = tmp_path / "cube.zarr"
    ds.to_zarr(path)
    out = tmp_path / "cli.xrecon"
    args = ["train", str(path), str(out), "--preset", "small", "--steps", "2", "--batch-size", "32", "--seed", "0",
            "--mask", "clear", "--validation-fraction", "0.25", "--device", "cpu", "--quiet",
            "--option", "d_model=32", "--option", "d_inner=32", "--option", "block=8"]
    assert main(args) == 0
    assert out.is_file() and training_files(out)[1].is_file()
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 2  # exists
    assert "resume" in capsys.readouterr().err
    other = str(tmp_path / "other.xrecon")
    assert main([*args[:2], other, "--init", str(tmp_path / "missing.xrecon"), "--steps", "2", "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err


def test_anytime_training_adds_total_variation(tmp_path):
    best = train(small_cube(), tmp_path / "m.xrecon", steps=4, anytime=True, **QUICK)
    rows = [r for r in log_rows(training_files(best)[2]) if r["loss"]]
    assert all(float(r["tv"]) > 0 for r in rows)
    terms = [float(rows[-1][k]) for k in ("loss", "imputation", "reconstruction", "tv")]
    assert terms[0] == pytest.approx(terms[1] + terms[2] + 0.01 * terms[3], rel=1e-4)
