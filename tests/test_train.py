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
from xrecon.training import AnytimeFormerTask, TrainConfig, compute_stats, train, training_files
from xrecon.training.optim import lr_at as _lr_at

# A network small enough to train in seconds on one core.
TINY = dict(preset="small", d_model=32, d_inner=32, d_k=8, d_v=8, fusion_rank=2, dropout=0.0)
QUICK = dict(TINY, batch_size=32, block=8, validation_fraction=0.25, validation_interval=4, log_interval=2,
             checkpoint_interval=4, lr=3e-3, warmup=2, progress=False, mask="clear")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


# -- time budget, presets, honest checkpoints -----------------------------------------------------


class FakeClock:
    """The trainer's clock (budget._now), advanced by a fixed amount per optimizer step and per validation."""

    def __init__(self, monkeypatch, step: float, validation: float, slow_after: int | None = None,
                 slow_step: float = 0.0) -> None:
        from xrecon.training import budget
        from xrecon.training.tasks import AnytimeFormerTask

        self.t, self.steps = 0.0, 0
        real_loss, real_validate = AnytimeFormerTask.loss, AnytimeFormerTask.validate

        def loss(task, *args, **kwargs):
            self.t += slow_step if slow_after is not None and self.steps >= slow_after else step
            self.steps += 1
            return real_loss(task, *args, **kwargs)

        def validate(task, *args, **kwargs):
            self.t += validation
            return real_validate(task, *args, **kwargs)

        monkeypatch.setattr(budget, "_now", lambda: self.t)
        monkeypatch.setattr(AnytimeFormerTask, "loss", loss)
        monkeypatch.setattr(AnytimeFormerTask, "validate", validate)


def test_time_budget_plans_the_steps_and_completes_the_schedule(tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch, step=0.5, validation=2.0)
    best = train(small_cube(), tmp_path / "m.xrecon", time_budget="30s", seed=0, **QUICK)
    # The step-0 validation (2 s), then a probe of warmup + 1 = 3 steps (0.5 s each, the first not
    # timed) at 3.5 s: 26.5 s left; a step costs 0.5 s and a validation every 4 steps 2 s, so 1 s a
    # step; with the end's validation (2 s) and 5 % margin: floor(26.5 * 0.95 - 2) = 23 more steps.
    meta = xrecon.models.load(best, device="cpu").metadata["training"]
    plan = meta["time_budget"]
    assert plan["planned"] == 26 and plan["probe_steps"] == 3 and plan["seconds"] == 30
    assert plan["step_seconds"] == pytest.approx(0.5) and plan["validation_seconds"] == pytest.approx(2.0)
    assert meta["steps"] == meta["config"]["steps"] == 26 == clock.steps
    assert 0.8 * 30 <= clock.t <= 30  # 2 + 26 * 0.5 + 7 validations of 2 s = 29 s
    rows = log_rows(training_files(best)[2])
    assert int(rows[-1]["step"]) == 26
    assert float(rows[-1]["lr"]) == pytest.approx(QUICK["lr"] * 0.1, rel=1e-6)  # the cosine's floor: completed

    # steps= with a budget is a maximum
    train(small_cube(), tmp_path / "capped.xrecon", time_budget=30, steps=12, seed=0, **QUICK)
    capped = xrecon.models.load(tmp_path / "capped.xrecon", device="cpu").metadata["training"]
    assert capped["steps"] == 12 and capped["time_budget"]["planned"] == 12
    assert float(log_rows(training_files(tmp_path / "capped.xrecon")[2])[-1]["lr"]) == pytest.approx(3e-4, rel=1e-6)


def test_resumed_budgeted_run_keeps_its_planned_steps(tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch, step=0.5, validation=2.0)
    out = tmp_path / "m.xrecon"
    train(small_cube(), out, time_budget="30s", seed=0, callback=lambda row: row["step"] == 8, **QUICK)
    assert xrecon.models.load(training_files(out)[1], device="cpu").metadata["resume"]["step"] == 8
    clock.t = 1000.0  # another session, a slower machine: the plan is kept all the same
    monkeypatch.setattr(clock, "steps", 0)
    train(small_cube(), out, time_budget="30s", seed=0, resume=True, **QUICK)
    meta = xrecon.models.load(out, device="cpu").metadata["training"]
    assert meta["steps"] == 26 and meta["time_budget"]["planned"] == 26 and clock.steps == 18
    assert [int(r["step"]) for r in log_rows(training_files(out)[2])][-2:] == [24, 26]
    with pytest.raises(XreconError, match="time budget"):
        train(small_cube(), out, time_budget="1min", seed=0, resume=True, **QUICK)


@pytest.mark.parametrize("bad", ["soon", "-5s", 0, -1, float("nan"), True, "NaT", [60]])
def test_bad_time_budgets_are_refused(tmp_path, bad):
    with pytest.raises(XreconError, match="time_budget"):
        train(small_cube(), tmp_path / "m.xrecon", time_budget=bad, **QUICK)
    assert not training_files(tmp_path / "m.xrecon")[1].exists()


def test_time_budget_strings():
    from xrecon.training.trainer import parse_time_budget

    assert parse_time_budget("10min") == 600 and parse_time_budget("90s") == 90 and parse_time_budget("1h") == 3600
    assert parse_time_budget(" 45 ") == 45 and parse_time_budget(1.5) == 1.5 and parse_time_budget(None) is None


def test_preset_is_the_name_in_python_and_on_the_command_line(tmp_path, capsys):
    ds = small_cube()
    opts = {k: v for k, v in QUICK.items() if k != "preset"}
    a = train(ds, tmp_path / "a.xrecon", preset="small", steps=2, seed=0, **opts)
    with pytest.warns(FutureWarning, match="preset"):
        b = train(ds, tmp_path / "b.xrecon", model="small", steps=2, seed=0, **opts)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.warns(FutureWarning), pytest.raises(XreconError, match="not both"):
        train(ds, tmp_path / "c.xrecon", preset="small", model="small", steps=2, **opts)
    with pytest.raises(MethodError, match="preset='tiny'.*'official', 'optical-only', 'small'") as err:
        train(ds, tmp_path / "c.xrecon", preset="tiny", steps=2, **opts)
    assert "d_model" not in str(err.value)  # the presets, not a list of every option

    # the CLI's --preset small is Python's preset="small": same architecture, same weights
    path = tmp_path / "cube.zarr"
    ds.drop_vars(["truth", "landcover", "field"]).to_zarr(path)
    cli = tmp_path / "cli.xrecon"
    args = ["train", str(path), str(cli), "--preset", "small", "--steps", "2", "--seed", "0", "--mask", "clear",
            "--device", "cpu", "--quiet", "--batch-size", "32", "--validation-fraction", "0.25"]
    args += [f"--option={k}={v}" for k, v in opts.items() if k not in ("progress", "mask", "batch_size",
                                                                      "validation_fraction")]
    assert main(args) == 0
    wc = weights(cli)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    helptext = capsys.readouterr().out
    assert all(name in helptext for name in ("official", "optical-only", "small")) and "--time-budget" in helptext


def test_no_best_checkpoint_before_the_first_validation(tmp_path):
    ds = small_cube()
    out = tmp_path / "m.xrecon"
    best_path, last_path, log_path = training_files(out)
    seen = []

    def die(row):
        seen.append((row["step"], best_path.exists()))
        raise KeyboardInterrupt  # killed at step 2, before the first validation (step 4)

    with pytest.raises(KeyboardInterrupt):
        train(ds, out, steps=8, seed=0, callback=die, **QUICK)
    assert seen == [(2, False)] and not best_path.exists() and last_path.is_file()
    rows = log_rows(log_path)
    assert rows[0]["step"] == "0" and rows[0]["val_loss"] and rows[0]["best_step"] == ""  # a baseline only

    # its files are ours and trained nothing (last checkpoint at step 0): a rerun replaces them
    train(ds, out, steps=8, seed=0, **QUICK)
    meta = xrecon.models.load(out, device="cpu").metadata["training"]
    assert meta["best_step"] in (4, 8) and meta["best_val_loss"] == pytest.approx(min(
        float(r["val_loss"]) for r in log_rows(log_path) if r["val_loss"] and r["step"] != "0"), rel=1e-5)
    rows = [r for r in log_rows(log_path) if r["val_loss"]]
    assert [r["step"] for r in rows] == ["0", "4", "8"] and rows[-1]["best_step"] == str(meta["best_step"])

    # a run stopped after training steps but before a best exists: resumed, not replaced
    other = tmp_path / "o.xrecon"
    train(ds, other, steps=8, seed=0, callback=lambda row: row["step"] == 2, **QUICK)
    assert not other.exists() and training_files(other)[1].is_file()
    with pytest.raises(OutputExistsError):
        train(ds, other, steps=8, seed=0, **QUICK)
    train(ds, other, steps=8, seed=0, resume=True, **QUICK)
    assert xrecon.models.load(other, device="cpu").metadata["training"]["best_step"] in (4, 8)


def test_budgeted_run_killed_in_its_probe_plans_when_resumed(tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch, step=0.5, validation=2.0)
    out = tmp_path / "m.xrecon"

    def die(row):
        raise KeyboardInterrupt  # at step 2, inside the probe (3 steps): nothing planned, nothing saved after step 0

    with pytest.raises(KeyboardInterrupt):
        train(small_cube(), out, time_budget="30s", seed=0, callback=die, **QUICK)
    state = xrecon.models.load(training_files(out)[1], device="cpu").metadata["resume"]
    assert state["step"] == 0 and state["time_budget"]["planned"] is None and not out.exists()
    clock.t = 0.0
    train(small_cube(), out, time_budget="30s", seed=0, resume=True, **QUICK)
    plan = xrecon.models.load(out, device="cpu").metadata["training"]["time_budget"]
    # no step-0 validation in this session: 1.5 s of probe, 28.5 s left: floor(28.5 * 0.95 - 2) = 25 more
    assert plan["planned"] == 28 and plan["probe_steps"] == 3
    assert float(log_rows(training_files(out)[2])[-1]["lr"]) == pytest.approx(3e-4, rel=1e-6)


def test_cli_time_budget(tmp_path, capsys, monkeypatch):
    FakeClock(monkeypatch, step=0.5, validation=2.0)
    ds = small_cube().drop_vars(["truth", "landcover", "field"])
    path = tmp_path / "cube.zarr"
    ds.to_zarr(path)
    out = tmp_path / "cli.xrecon"
    args = ["train", str(path), str(out), "--preset", "small", "--batch-size", "32", "--seed", "0", "--mask", "clear",
            "--validation-fraction", "0.25", "--device", "cpu", "--quiet"]
    for option in ("d_model=32", "d_inner=32", "block=8", "warmup=2", "validation_interval=4", "checkpoint_interval=4",
                   "log_interval=2"):
        args += ["--option", option]
    assert main([*args, "--time-budget", "soon"]) == 2
    assert "time_budget" in capsys.readouterr().err and not training_files(out)[1].exists()
    assert main([*args, "--time-budget", "30s"]) == 0
    plan = xrecon.models.load(out, device="cpu").metadata["training"]["time_budget"]
    assert plan["seconds"] == 30 and plan["planned"] > plan["probe_steps"] == 3


def test_time_budget_corrects_its_plan_when_the_machine_slows_down(tmp_path, monkeypatch):
    # 0.5 s a step in the probe, then 1 s from the 10th step on (another job took the core)
    clock = FakeClock(monkeypatch, step=0.5, validation=2.0, slow_after=10, slow_step=1.0)
    best = train(small_cube(), tmp_path / "m.xrecon", time_budget="60s", seed=0, **QUICK)
    plan = xrecon.models.load(best, device="cpu").metadata["training"]["time_budget"]
    first = plan["replans"][0]
    assert plan["probe_steps"] == 3 and first[1] < 54  # 54 planned after the probe, fewer once the rate drifted
    assert clock.steps == plan["planned"] == plan["replans"][-1][1]
    assert 0.8 * 60 <= clock.t <= 60 * 1.02
    assert float(log_rows(training_files(best)[2])[-1]["lr"]) == pytest.approx(3e-4, rel=1e-6)


class _NotedTask(AnytimeFormerTask):
    """AnytimeFormer with a record of its own in the provenance, and defaults of its own."""

    note: dict = {"window_note": "year"}

    def provenance(self, cubes, cfg, **kwargs):
        assert kwargs["optical"] == "optical" and len(cubes) == 1
        return dict(self.note)

    def config_defaults(self):
        return {"validation_pixels": 96}


@pytest.fixture
def noted_method():
    import xrecon.methods

    name = "anytimeformer-noted-test"
    xrecon.methods.register(name, lambda *a, **k: None, training=_NotedTask)
    yield name
    xrecon.methods.unregister(name)


def test_a_task_adds_to_the_provenance_and_sets_its_defaults(tmp_path, noted_method, monkeypatch):
    ds = small_cube()
    kw = dict(QUICK, steps=2)
    best = train(ds, tmp_path / "n.xrecon", method=noted_method, **kw)
    for path in training_files(best)[:2]:
        meta = xrecon.models.load(path, device="cpu").metadata["training"]
        assert meta["window_note"] == "year" and meta["config"]["validation_pixels"] == 96
        assert meta["config"]["batch_size"] == QUICK["batch_size"]  # given: the task's defaults do not touch it
    # the same training as AnytimeFormer's own (the hooks change no weights)
    plain = train(ds, tmp_path / "p.xrecon", validation_pixels=96, **kw)
    assert all(torch.equal(a, b) for a, b in zip(weights(best).values(), weights(plain).values(), strict=True))
    monkeypatch.setattr(_NotedTask, "note", {"steps": 1})
    with pytest.raises(MethodError, match="trainer's own"):
        train(ds, tmp_path / "clash.xrecon", method=noted_method, **kw)
