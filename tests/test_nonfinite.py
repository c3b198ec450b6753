"""What a diverged run leaves: checkpoints with NaN weights are refused, and training stops at a NaN loss."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.models
from xrecon.errors import CheckpointError, TrainingDivergedError
from xrecon.models.base import non_finite_tensors
from xrecon.testing import synthetic_cube
from xrecon.training import AnytimeFormerTask, train, training_files

TINY = dict(preset="small", d_model=32, d_inner=32, d_k=8, d_v=8, fusion_rank=2, dropout=0.0)
QUICK = dict(TINY, batch_size=32, block=8, validation_fraction=0.25, validation_interval=4, log_interval=2,
             checkpoint_interval=4, lr=3e-3, warmup=2, progress=False, mask="clear")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model():
    model = xrecon.models.get_model("anytimeformer", d_model=32, d_inner=16, d_k=8, d_v=8, n_optical_bands=4)
    model.optical_bands = ["B02", "B03", "B04", "B08"]
    return model


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensors(tmp_path):
    model = tiny_model()
    good = model.save(tmp_path / "good.xrecon")
    xrecon.models.load(good, device="cpu")  # finite: loads
    names = [n for n, p in model.named_parameters() if p.dim() >= 2][:2]
    with torch.no_grad():
        for n in names:
            model.get_parameter(n).fill_(math.nan)
    bad = model.save(tmp_path / "diverged.xrecon")
    with pytest.raises(CheckpointError, match="not finite") as err:
        xrecon.models.load(bad, device="cpu")
    for n in names:
        assert n in str(err.value)
    assert "diverged.xrecon" in str(err.value)
    # fill refuses it too, instead of taking every value from its fallback
    ds = synthetic_cube(ny=8, nx=8, bands=4, seed=0, sar=False)
    with pytest.raises(CheckpointError, match="not finite"):
        ds.recon.fill(method="anytimeformer", checkpoint=bad, sar=None).compute()


def test_a_checkpoint_with_infinite_normalization_is_refused(tmp_path):
    model = tiny_model()
    model.optical_std[1] = math.inf  # set_normalization refuses this; a damaged file may not
    path = model.save(tmp_path / "inf.xrecon")
    with pytest.raises(CheckpointError, match="optical_std"):
        xrecon.models.load(path, device="cpu")


def test_non_finite_tensors_ignores_integer_buffers():
    state = {"a": torch.ones(3), "b": torch.tensor([1.0, -math.inf]), "c": torch.arange(3), "d": np.zeros(2)}
    assert non_finite_tensors(state) == ["b"]


def test_training_stops_at_the_first_nan_loss_and_saves_nothing_of_it(tmp_path, monkeypatch):
    ds = synthetic_cube(ny=16, nx=16, bands=3, seed=3)
    calls = {"n": 0}
    loss = AnytimeFormerTask.loss

    def poisoned(self, model, batch, cfg):
        total, terms = loss(self, model, batch, cfg)
        calls["n"] += 1
        return (total * math.nan if calls["n"] >= 3 else total), terms

    monkeypatch.setattr(AnytimeFormerTask, "loss", poisoned)
    out = tmp_path / "m.xrecon"
    with pytest.raises(TrainingDivergedError, match=r"not finite .* at step 3 of 8.*lr="):
        train(ds, out, steps=8, **QUICK)
    best, last, log = training_files(out)
    with open(log, newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert max(steps) < 3  # no row of the NaN steps
    assert not best.exists()  # the first validation (step 4) never came
    model = xrecon.models.load(last, device="cpu")  # what is saved loads: step 0's state
    assert model.metadata["resume"]["step"] == 0
