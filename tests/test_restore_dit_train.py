"""Training RESTORE-DiT: the patch stream (xrecon.training.patches) and the task (xrecon.training.restore_dit)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.methods
import xrecon.models
from xrecon.errors import MethodError
from xrecon.models import restore_dit
from xrecon.testing import synthetic_cube
from xrecon.training import PatchStream, RestoreDiTTask, sar_in_reach, train, training_files
from xrecon.training.restore_dit import add_noise, linear_alphas_cumprod, masked_mse

SIZE, FRAMES = 16, 8
QUICK = dict(preset="tiny", batch_size=8, mask="clear", lr=3e-3, warmup=10, validation_fraction=0.25,
             progress=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=32, nx=32, bands=4, seed=0)


@pytest.fixture(scope="module")
def method():
    """The method name to train: "restore-dit" once its fill adapter registers it, else a stand-in."""
    if "restore-dit" in xrecon.methods.list_methods():
        yield "restore-dit"
        return
    name = "restore-dit-training-test"
    xrecon.methods.register(name, lambda *a, **k: None, training="xrecon.training.restore_dit:RestoreDiTTask")
    yield name
    xrecon.methods.unregister(name)


def stream(cube, **kw):
    kw = dict(dict(size=SIZE, frames=FRAMES, seed=0, mask="clear", block=16), **kw)
    return PatchStream(cube, **kw)


def log_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the stream ------------------------------------------------------------------------------------

def test_samples_have_the_documented_shapes_and_values(cube):
    samples = list(stream(cube, augment=False))  # windows as they lie in the cube
    assert len(samples) > 10
    times, sar_times = cube["time"].values, cube["sar_time"].values
    for s in samples:
        assert s["optical"].shape == (FRAMES, 4, SIZE, SIZE) and s["optical"].dtype == np.float32
        for key in ("valid", "cloud", "sar_valid"):
            assert s[key].shape == (FRAMES, SIZE, SIZE) and s[key].dtype == bool
        assert s["sar"].shape == (FRAMES, 2, SIZE, SIZE) and s["sar"].dtype == np.float32
        assert s["dates"].shape == (FRAMES,) and s["dates"].dtype == np.float32
        assert s["sar_frame"].shape == (FRAMES,) and s["sar_frame"].dtype == bool
        t, y, x = s["t"], s["y"], s["x"]
        win = dict(time=slice(t, t + FRAMES), y=slice(y, y + SIZE), x=slice(x, x + SIZE))
        ref = cube["optical"].isel(win).values
        valid = np.isfinite(ref).all(1) & cube["clear"].isel(win).values
        np.testing.assert_array_equal(s["valid"], valid)
        np.testing.assert_array_equal(s["optical"], np.where(valid[:, None], ref, 0))
        assert valid.mean() >= 0.3  # min_clear
        hidden = (s["cloud"] & s["valid"]).sum() / s["valid"].sum()
        assert 0 < hidden < 1
        np.testing.assert_allclose(s["dates"], restore_dit.days_since_origin(times[t:t + FRAMES]), atol=1e-3)
        # SAR: per pixel, the nearest SAR date within 6 days of the frame with a finite value
        gap = np.abs(times[t:t + FRAMES, None] - sar_times[None, :]) / np.timedelta64(1, "D")
        np.testing.assert_array_equal(s["sar_frame"], gap.min(1) <= 6)
        raw = cube["sar"].isel(y=win["y"], x=win["x"]).values  # (Ts, S, s, s)
        for f in range(FRAMES):
            expect, ok = np.zeros((2, SIZE, SIZE), np.float32), np.zeros((SIZE, SIZE), bool)
            for j in sorted(np.flatnonzero(gap[f] <= 6), key=lambda j: (gap[f, j], j)):
                take = np.isfinite(raw[j]).all(0) & ~ok
                expect[:, take], ok = raw[j][:, take], ok | take
            np.testing.assert_array_equal(s["sar_valid"][f], ok)
            np.testing.assert_array_equal(s["sar"][f], expect)


def test_sar_in_reach():
    assert [r.tolist() for r in sar_in_reach(np.array([0.0, 10.0]), np.array([]), 6.0)] == [[], []]
    reach = sar_in_reach(np.array([0.0, 10.0, 30.0]), np.array([9.0, 11.0, 14.0]), 6.0)
    assert [r.tolist() for r in reach] == [[], [0, 1, 2], []]  # a tie goes to the earlier date


def test_stream_is_seeded_and_batched(cube):
    a = [b["optical"] for b in stream(cube, batch_size=4)]
    b = [b["optical"] for b in stream(cube, batch_size=4)]
    c = [b["optical"] for b in stream(cube, batch_size=4, seed=1)]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=False))
    assert all(x.shape[0] == 4 for x in a[:-1]) and a[-1].shape[0] <= 4
    other_epoch = stream(cube, batch_size=4)
    other_epoch.set_epoch(1)
    assert not torch.equal(next(iter(other_epoch))["optical"], a[0])
    # augmentation turns windows (flips, transposition) but keeps them consistent
    plain = {(s["t"], s["y"], s["x"]): s for s in stream(cube, augment=False, per_block=40)}
    turned = [s for s in stream(cube, per_block=40) if (s["t"], s["y"], s["x"]) in plain]
    assert turned and any(not np.array_equal(s["valid"], plain[s["t"], s["y"], s["x"]]["valid"]) for s in turned)
    for s in turned:
        ref = plain[s["t"], s["y"], s["x"]]
        assert sorted(ref["optical"].ravel().tolist()) == sorted(s["optical"].ravel().tolist())
        assert s["valid"].sum() == ref["valid"].sum()


def test_stream_resumes_exactly(cube):
    whole = [b for b in stream(cube, batch_size=4, buffer_size=8)]
    first = stream(cube, batch_size=4, buffer_size=8)
    it = iter(first)
    for _ in range(3):
        first.mark_consumed(next(it))
    resumed = stream(cube, batch_size=4, buffer_size=8)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(rest) == len(whole) - 3
    for x, y in zip(rest, whole[3:], strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_sharded_streams_split_the_blocks(cube):
    shards = [[(int(s["y"]) // 16, int(s["x"]) // 16) for s in stream(cube, rank=r, world_size=2)] for r in (0, 1)]
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])


def test_task_caps_the_buffer_and_sizes_tiles(cube):
    task = RestoreDiTTask()
    s = task.stream([cube], None, optical="optical", sar="sar", mask="clear", block=8, buffer_size=10**9, seed=0)
    assert s.size == 16 and s.frames == task.frames and s.buffer_size * 16 * 16 * 8 * 4 * 6 <= 2**30
    big = synthetic_cube(ny=64, nx=64, bands=4, seed=0)
    assert task.tile_size([big], "optical") == 32


# -- the loss --------------------------------------------------------------------------------------

def test_add_noise_is_diffusers_ddpm():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    x0, noise = torch.randn(3, 2, 4, 8, 8), torch.randn(3, 2, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(add_noise(x0, noise, t, linear_alphas_cumprod()), sched.add_noise(x0, noise, t),
                               rtol=0, atol=1e-6)


def test_masked_mse_is_a_mean_over_hidden_observed_pixels():
    pred, target = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    w = torch.rand(2, 3, 8, 8) < 0.3
    loss = masked_mse(pred, target, w)
    assert loss == pytest.approx(float(((pred - target) ** 2).permute(0, 1, 3, 4, 2)[w].mean()), rel=1e-5)
    # what lies outside the weights does not count
    assert masked_mse(torch.where(w[:, :, None], pred, 1e3), target, w) == pytest.approx(float(loss), rel=1e-6)
    # the same per-pixel error over a larger cloud fraction gives the same loss
    err = torch.where(torch.arange(8)[None, None, None, :, None] % 2 == 0, 1.0, -1.0).expand(2, 3, 4, 8, 8)
    small, large = torch.zeros(2, 3, 8, 8, dtype=torch.bool), torch.ones(2, 3, 8, 8, dtype=torch.bool)
    small[:, 0, :2] = True
    assert masked_mse(err, torch.zeros_like(err), small) == masked_mse(err, torch.zeros_like(err), large) == 1.0
    assert masked_mse(pred, target, torch.zeros_like(w)) == 0


def tiny_model(task, cube):
    from xrecon.training import compute_stats

    stats = compute_stats(cube, mask="clear")
    torch.manual_seed(0)
    model = task.new_model("tiny", {}, ["B02", "B03", "B04", "B08"], ["VV", "VH"], stats)
    with torch.no_grad():  # adaLN-Zero: a new network predicts 0 whatever its input; wake it up
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_loss_ignores_unobserved_pixels(cube):
    task = RestoreDiTTask()
    model = tiny_model(task, cube)
    batch = next(iter(stream(cube, batch_size=4)))

    def loss(b):
        torch.manual_seed(1)
        return task.loss(model, b, None)[0]

    base = loss(batch)
    assert base > 0
    hidden = batch["cloud"] & batch["valid"]
    # values and simulated clouds where nothing is observed are never seen
    other = dict(batch, optical=torch.where(batch["valid"][:, :, None], batch["optical"], 0.7),
                 cloud=batch["cloud"] ^ ~batch["valid"])
    assert torch.equal(loss(other), base)
    # the prediction counts only on the hidden observations: wrong values elsewhere in the target change nothing
    b = task.inputs(model, batch)
    torch.manual_seed(1)
    t, noise = torch.full((4,), 500), torch.randn_like(b["x0"])
    pred = task.predict(model, b, t, noise)
    assert masked_mse(pred, torch.where(hidden[:, :, None], b["x0"], 9.0), hidden) == masked_mse(pred, b["x0"], hidden)


def test_new_model_takes_the_cubes_bands_and_units(cube):
    from xrecon.training import compute_stats

    stats = compute_stats(cube, mask="clear")
    task = RestoreDiTTask()
    model = task.new_model("small", {"depth": 1}, ["B02", "B03", "B04", "B08"], ["VV", "VH"], stats)
    assert model.config.n_optical_bands == 4 and model.config.n_sar_bands == 2 and model.config.depth == 1
    np.testing.assert_allclose(model.optical_offset.numpy(), stats.optical_mean, rtol=1e-6)
    np.testing.assert_allclose(model.optical_scale.numpy(), 3 * stats.optical_std, rtol=1e-6)
    np.testing.assert_allclose(model.sar_scale.numpy(), 2 * stats.sar_std, rtol=1e-6)
    optical_only = task.new_model("authors-optical", {"hidden_size": 32, "num_heads": 2, "depth": 1},
                                  ["B02", "B03", "B04", "B08"], ["VV", "VH"], stats)
    assert optical_only.config.n_sar_bands == 0 and optical_only.sar_bands is None


def test_normalization_is_a_property_of_the_model(cube, tmp_path):
    from xrecon.errors import XreconError
    from xrecon.training import compute_stats

    stats = compute_stats(cube, mask="clear")
    model = RestoreDiTTask().new_model("tiny", {}, ["B02", "B03", "B04", "B08"], ["VV", "VH"], stats)
    assert "normalization" not in vars(model)  # the class's, not a snapshot set on the instance
    norm = model.normalization
    assert set(norm) == {"optical_offset", "optical_scale", "sar_offset", "sar_scale"}
    for k, v in norm.items():
        assert isinstance(v, np.ndarray) and v.dtype == np.float32
        np.testing.assert_array_equal(v, getattr(model, k).numpy())
    norm["optical_offset"][:] = 9  # a copy
    assert (model.optical_offset < 1).all()
    np.testing.assert_array_equal(model.normalization["optical_offset"], stats.optical_mean.astype(np.float32))
    loaded = xrecon.models.load(model.save(tmp_path / "n.xrecon"), device="cpu")
    for k, v in model.normalization.items():
        np.testing.assert_array_equal(loaded.normalization[k], v)
    model.set_normalization(0.25, [0.5, 0.5, 0.25, 0.125])
    assert model.optical_offset.tolist() == [0.25] * 4 and model.sar_scale.tolist() == loaded.sar_scale.tolist()
    for bad in (dict(optical_offset=[0.1, 0.2]), dict(optical_scale=0.0), dict(optical_offset=np.nan)):
        with pytest.raises(XreconError):
            model.set_normalization(**dict(dict(optical_offset=0.1, optical_scale=0.2), **bad))
    optical_only = RestoreDiTTask().new_model("authors-optical", {"hidden_size": 32, "num_heads": 2, "depth": 1},
                                              ["B02", "B03", "B04", "B08"], None, stats)
    assert optical_only.normalization["sar_offset"].shape == (0,)


def test_validation_is_deterministic(cube):
    task = RestoreDiTTask()
    model = tiny_model(task, cube).eval()
    batches = list(stream(cube, batch_size=4))[:2]
    with torch.no_grad():
        a, b = task.validate(model, batches, None), task.validate(model, batches, None)
    assert a == b and np.isfinite(a).all()


# -- training through the generic trainer ----------------------------------------------------------

def test_training_lowers_the_validation_loss(cube, method, tmp_path):
    best = cube.recon.train(method=method, out=tmp_path / "m.xrecon", steps=150, validation_interval=50,
                            log_interval=25, seed=0, **QUICK)
    rows = [r for r in log_rows(training_files(best)[2]) if r["val_loss"]]
    start, end = float(rows[0]["val_loss"]), min(float(r["val_loss"]) for r in rows[1:])
    assert end < 0.85 * start, rows
    model = xrecon.models.load(best, device="cpu")
    assert model.name == "restore-dit" and model.optical_bands == ["B02", "B03", "B04", "B08"]
    meta = model.metadata["training"]
    assert meta["steps"] == meta["best_step"] and set(meta["normalization"]) >= {"optical_offset", "optical_scale"}
    assert xrecon.models.load(training_files(best)[1], device="cpu").metadata["training"]["steps"] == 150


def test_resume_is_exact(cube, method, tmp_path):
    kw = dict(QUICK, steps=12, seed=0, validation_interval=4, log_interval=2, checkpoint_interval=4)
    whole = train(cube, tmp_path / "whole.xrecon", method=method, **kw)
    part = train(cube, tmp_path / "part.xrecon", method=method, callback=lambda row: row["step"] == 6, **kw)
    assert xrecon.models.load(training_files(part)[1], device="cpu").metadata["resume"]["step"] == 6
    train(cube, part, method=method, resume=True, **kw)
    for i in (0, 1):
        wa = xrecon.models.load(training_files(whole)[i], device="cpu").state_dict()
        wb = xrecon.models.load(training_files(part)[i], device="cpu").state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_time_budget(cube, method, tmp_path):
    best = cube.recon.train(method=method, out=tmp_path / "b.xrecon", time_budget="6s", seed=0,
                            validation_interval=20, **QUICK)
    plan = xrecon.models.load(best, device="cpu").metadata["training"]["time_budget"]
    assert plan["seconds"] == 6 and plan["planned"] >= 1


# -- what the checkpoint records for fill, and the task's training defaults ------------------------

def test_checkpoint_records_the_windows_and_fill_defaults_to_them(cube, method, tmp_path):
    kw = {k: v for k, v in QUICK.items() if k != "batch_size"}  # the task's defaults
    best = cube.recon.train(method=method, out=tmp_path / "w.xrecon", steps=3, seed=0, **kw)
    task = RestoreDiTTask()
    tile = task.tile_size([cube], "optical")
    assert tile == SIZE != 128 and task.frames == FRAMES != 16  # not fill's fallbacks
    for path in training_files(best)[:2]:
        meta = xrecon.models.load(path, device="cpu").metadata["training"]
        assert (meta["tile"], meta["frames"], meta["sar_window"]) == (tile, FRAMES, task.sar_window)
        assert {k: meta["config"][k] for k in task.config_defaults()} == task.config_defaults()
    if method != "restore-dit":
        pytest.skip("restore-dit's fill adapter is not registered")
    small = cube.isel(time=slice(0, 20))
    opts = dict(method="restore-dit", checkpoint=best, mask="clear", seed=0)
    default = small.recon.fill(**opts).compute()
    explicit = small.recon.fill(tile=tile, frames=FRAMES, **opts).compute()
    assert default.attrs["options"] == '{"seed": 0}'  # nothing given: the defaults are the checkpoint's
    for name in ("optical", "optical_std", "observed"):
        np.testing.assert_allclose(default[name].values, explicit[name].values, rtol=0, atol=1e-6, err_msg=name)
    fallback = small.recon.fill(tile=128, frames=16, **opts).compute()  # what fill took before they were recorded
    assert float(abs(default.optical - fallback.optical).max()) > 1e-4


def test_task_defaults_apply_only_where_nothing_was_given(cube):
    from xrecon.training import AnytimeFormerTask, TrainConfig
    from xrecon.training.config import resolve_options as _resolve_options

    task = RestoreDiTTask()
    defaults = task.config_defaults()
    assert defaults == {"batch_size": 8, "validation_pixels": 64, "buffer_size": 256}

    def resolved(task, config=None, options=None, **shortcuts):
        shortcuts = dict(dict(batch_size=None, steps=None), **shortcuts)
        return _resolve_options(task, cube, config, options or {}, shortcuts)[1]

    cfg = resolved(task)
    assert {k: getattr(cfg, k) for k in defaults} == defaults and cfg.steps == TrainConfig().steps
    cfg = resolved(task, batch_size=16, options={"buffer_size": 32})
    assert (cfg.batch_size, cfg.validation_pixels, cfg.buffer_size) == (16, 64, 32)
    assert resolved(task, config=TrainConfig(steps=5)) == TrainConfig(steps=5)  # a config gives every field
    assert resolved(AnytimeFormerTask()) == TrainConfig()  # AnytimeFormer: TrainConfig's own

    class Bad(RestoreDiTTask):
        def config_defaults(self):
            return {"batch": 8}

    with pytest.raises(MethodError, match="not TrainConfig fields"):
        resolved(Bad())
