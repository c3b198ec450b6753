"""The moving average of the weights (``TrainConfig.ema``): torch's EMA, validated and saved as the best
model, resumed bit for bit, and nothing changed without it (xrecon.training.trainer)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.methods
import xrecon.models
from xrecon.cli import main
from xrecon.errors import XreconError
from xrecon.testing import synthetic_cube
from xrecon.training import AnytimeFormerTask, TrainConfig, train, training_files
from xrecon.training import trainer as trainer_module
from xrecon.training.optim import EMA as _EMA

TINY = dict(preset="small", d_model=32, d_inner=32, d_k=8, d_v=8, fusion_rank=2, dropout=0.0)
QUICK = dict(TINY, batch_size=32, block=8, validation_fraction=0.25, validation_interval=4, log_interval=2,
             checkpoint_interval=4, lr=3e-3, warmup=2, progress=False, mask="clear")
RDIT = dict(preset="tiny", batch_size=4, mask="clear", lr=3e-3, warmup=2, validation_fraction=0.25,
            validation_pixels=8, validation_interval=4, log_interval=2, checkpoint_interval=4, progress=False)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=24, nx=24, bands=4, sar=True, seed=3, revisit_days=10, field_size=4, cloud_cover=0.7)


@pytest.fixture(scope="module")
def patch_cube():
    return synthetic_cube(ny=32, nx=32, bands=4, seed=0)


def weights(path) -> dict[str, torch.Tensor]:
    return xrecon.models.load(path, device="cpu").state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def lerp_average(history: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """The EMA of a sequence of state dicts, written out: the first, then ``decay e + (1 - decay) w``."""
    ema = {k: v.clone() for k, v in history[0].items()}
    for w in history[1:]:
        for k, v in w.items():
            if v.is_floating_point():
                ema[k] = decay * ema[k] + (1 - decay) * v
    return ema


# -- the average itself ----------------------------------------------------------------------------

def test_ema_equals_torchs_averaged_model_and_copies_buffers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    net.register_buffer("offset", torch.tensor([0.25, 0.5]))
    ours = _EMA(net, 0.9)
    theirs = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(5):
        opt.zero_grad()
        net(torch.randn(8, 3)).square().sum().backward()
        opt.step()
        net.offset.add_(1.0)  # a buffer that changes: copied, never averaged
        ours.update(net)
        theirs.update_parameters(net)
        assert same(ours.module.state_dict(), theirs.module.state_dict()), step
        assert torch.equal(ours.module.offset, net.offset)
    assert not same(ours.module.state_dict(), net.state_dict())  # an average, not the weights
    assert not any(q.requires_grad for q in ours.module.parameters())
    # its state round-trips
    again = _EMA(net, 0.9)
    again.load_state_dict(ours.state_dict())
    assert again.updates == 5 and same(again.module.state_dict(), ours.module.state_dict())


@pytest.mark.parametrize("bad", [1.0, -0.1, math.nan, True, "0.9"])
def test_bad_decays_are_refused(bad):
    with pytest.raises(XreconError, match="TrainConfig.ema"):
        TrainConfig(ema=bad)


def test_ema_is_off_by_default_and_round_trips_in_the_config():
    assert TrainConfig().ema == 0
    cfg = TrainConfig(ema=0.99)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    old = TrainConfig().to_dict()
    del old["ema"]  # a config saved before the field existed
    assert TrainConfig.from_dict(old).ema == 0


# -- training with it ------------------------------------------------------------------------------

def test_without_ema_nothing_changes(cube, tmp_path):
    a = train(cube, tmp_path / "a.xrecon", steps=6, seed=1, **QUICK)
    b = train(cube, tmp_path / "b.xrecon", steps=6, seed=1, ema=0.0, **QUICK)
    for i in (0, 1):
        assert same(weights(training_files(a)[i]), weights(training_files(b)[i]))
    last = xrecon.models.load(training_files(b)[1], device="cpu").metadata["resume"]
    assert "ema" not in last


def test_validation_and_best_checkpoint_use_the_average(cube, tmp_path, monkeypatch):
    """The trained weights follow the same path with or without the average (it draws no random
    numbers); validation scores, and the best checkpoint holds, the average of those weights."""
    history: list[dict[str, torch.Tensor]] = []
    step_of = trainer_module.Session.optimizer_step

    def record(self, batch, lr):
        step_of(self, batch, lr)
        history.append({k: v.detach().clone() for k, v in self.net.state_dict().items()})

    scored: list[dict[str, torch.Tensor]] = []
    validate = AnytimeFormerTask.validate

    def spy(self, model, batches, cfg):
        scored.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return validate(self, model, batches, cfg)

    monkeypatch.setattr(trainer_module.Session, "optimizer_step", record)
    monkeypatch.setattr(AnytimeFormerTask, "validate", spy)
    decay = 0.7
    best = train(cube, tmp_path / "ema.xrecon", steps=8, seed=0, ema=decay, **QUICK)
    assert len(history) == 8 and len(scored) == 3  # validations at steps 0, 4 and 8
    plain = train(cube, tmp_path / "plain.xrecon", steps=8, seed=0, **QUICK)

    # the trained weights (the last checkpoint) are those of the run without the average
    assert same(weights(training_files(best)[1]), weights(training_files(plain)[1]))
    # validation scored the average at steps 4 and 8, not the trained weights
    for k, at in ((1, 4), (2, 8)):
        expect = lerp_average(history[:at], decay)
        assert not same(scored[k], history[at - 1])
        for name, value in expect.items():
            torch.testing.assert_close(scored[k][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # the best checkpoint holds the average at its best step; the last one's resume state the final average
    meta = xrecon.models.load(best, device="cpu").metadata["training"]
    assert meta["config"]["ema"] == decay and meta["best_step"] in (4, 8)
    assert same(weights(best), scored[meta["best_step"] // 4])
    state = xrecon.models.load(training_files(best)[1], device="cpu").metadata["resume"]["ema"]
    assert state["updates"] == 8 and same(state["state_dict"], scored[2])
    # normalization buffers are the trained model's, unaveraged
    model = xrecon.models.load(best, device="cpu")
    for k, v in xrecon.models.load(training_files(plain)[1], device="cpu").normalization.items():
        assert (model.normalization[k] == v).all(), k


def test_without_validation_the_best_is_the_final_average(cube, tmp_path):
    best = train(cube, tmp_path / "m.xrecon", steps=6, seed=0, ema=0.5, **dict(QUICK, validation_fraction=0))
    last = xrecon.models.load(training_files(best)[1], device="cpu")
    assert same(weights(best), last.metadata["resume"]["ema"]["state_dict"])
    assert not same(weights(best), last.state_dict())


def test_resume_with_ema_continues_as_if_uninterrupted(cube, tmp_path):
    kw = dict(QUICK, dropout=0.1, ema=0.8)  # dropout: the random state must resume too
    whole = train(cube, tmp_path / "whole.xrecon", steps=12, seed=0, **kw)
    part = train(cube, tmp_path / "part.xrecon", steps=12, seed=0, callback=lambda row: row["step"] == 6, **kw)
    assert xrecon.models.load(training_files(part)[1], device="cpu").metadata["resume"]["ema"]["updates"] == 6
    train(cube, part, steps=12, seed=0, resume=True, **kw)
    for i in (0, 1):
        assert same(weights(training_files(whole)[i]), weights(training_files(part)[i]))
    ema = [xrecon.models.load(training_files(p)[1], device="cpu").metadata["resume"]["ema"] for p in (whole, part)]
    assert ema[0]["updates"] == ema[1]["updates"] == 12 and same(ema[0]["state_dict"], ema[1]["state_dict"])
    with pytest.raises(XreconError, match="saved settings"):
        train(cube, part, steps=14, seed=0, resume=True, **dict(kw, ema=0.9))


def test_restore_dit_trains_and_resumes_with_ema(patch_cube, tmp_path):
    assert "restore-dit" in xrecon.methods.trainable_methods()
    kw = dict(RDIT, method="restore-dit", ema=0.9, steps=8, seed=0)
    whole = train(patch_cube, tmp_path / "whole.xrecon", **kw)
    part = train(patch_cube, tmp_path / "part.xrecon", callback=lambda row: row["step"] == 4, **kw)
    train(patch_cube, part, resume=True, **kw)
    for i in (0, 1):
        assert same(weights(training_files(whole)[i]), weights(training_files(part)[i]))
    model = xrecon.models.load(whole, device="cpu")
    last = xrecon.models.load(training_files(whole)[1], device="cpu")
    assert model.metadata["training"]["config"]["ema"] == 0.9
    assert not same(model.state_dict(), last.state_dict())  # the best is an average
    for k, v in last.normalization.items():
        assert (model.normalization[k] == v).all(), k


def test_cli_takes_ema_as_an_option(cube, tmp_path):
    src = tmp_path / "cube.zarr"
    cube.drop_vars(["truth", "landcover", "field"]).to_zarr(src)
    out = tmp_path / "cli.xrecon"
    assert main(["train", str(src), str(out), "--preset", "small", "--steps", "2", "--batch-size", "32",
                 "--mask", "clear", "--validation-fraction", "0.25", "--device", "cpu", "--quiet",
                 "--option", "d_model=32", "--option", "d_inner=32", "--option", "block=8",
                 "--option", "ema=0.9"]) == 0
    assert xrecon.models.load(out, device="cpu").metadata["training"]["config"]["ema"] == 0.9
