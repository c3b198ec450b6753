"""RESTORE-DiT: the network against upstream's reference outputs, its shapes, masks and checkpoints."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import xrecon.models
from xrecon.errors import CheckpointError, XreconError
from xrecon.models import restore_dit
from xrecon.models.restore_dit import PRESETS, RestoreDiT, RestoreDiTConfig, TileSizeError

from .conftest import shared_path

REF = ("reference", "restore_dit")


def _tiny(seed: int = 0, **changes) -> RestoreDiT:
    """A tiny network with every weight random (adaLN-Zero would make a fresh one output 0)."""
    torch.manual_seed(seed)
    config = RestoreDiTConfig(**{**PRESETS["tiny"].__dict__, **changes})
    model = RestoreDiT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _inputs(B=2, T=3, C=4, S=2, H=8, W=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, H, W, generator=g)
    sar = torch.randn(B, T, S, H, W, generator=g)
    dates = torch.cumsum(torch.randint(5, 40, (B, T), generator=g), 1).float()
    t = torch.randint(0, 1000, (B,), generator=g)
    return x, t, dates, sar


@pytest.fixture(scope="module")
def reference():
    npz = np.load(shared_path(*REF, "restore_dit_small.npz"))
    kwargs = {k[len("config_"):]: npz[k].item() for k in npz.files if k.startswith("config_")}
    model = restore_dit.from_upstream(shared_path(*REF, "restore_dit_small.pth"), device="cpu", **kwargs)
    return model, {k: torch.from_numpy(npz[k]) for k in npz.files if not k.startswith("config_")}, kwargs


# --------------------------------------------------------------------------------------------------
# upstream equivalence

@pytest.mark.realdata
def test_denoise_matches_upstream(reference):
    model, r, _ = reference
    with torch.inference_mode():
        out = model.denoise(r["x"], r["t"], r["date"], r["cond"])
    err = (out - r["out"]).abs().max().item()
    assert err <= 1e-4, err


@pytest.mark.realdata
def test_upstream_model_saves_and_loads(reference, tmp_path):
    model, r, _ = reference
    loaded = xrecon.models.load(model.save(tmp_path / "small.xrecon"), device="cpu")
    assert loaded.metadata["sdt_arguments"]["hidden_size"] == 64
    with torch.inference_mode():
        assert (loaded.denoise(r["x"], r["t"], r["date"], r["cond"]) - r["out"]).abs().max().item() <= 1e-4


@pytest.mark.realdata
@pytest.mark.parametrize("K", [1, 4])
def test_sample_matches_upstream_pipeline(reference, K):
    pytest.importorskip("diffusers")
    model, r, _ = reference
    from xrecon.diffusion import get_sampler

    assert get_sampler("dpm++").set_timesteps(K).tolist() == r[f"pipeline_timesteps_{K}"].tolist()
    y = restore_dit.sample(model, r["p_image"], r["p_mask"], r["p_date"], r["p_cond"], noise=r["p_noise"], steps=K,
                           units="upstream")
    err = (y - r[f"pipeline_out_{K}"]).abs().max().item()
    assert err <= 1e-4, err
    # two samples of the same noise in one batched call: both are upstream's
    y2 = restore_dit.sample(model, r["p_image"], r["p_mask"], r["p_date"], r["p_cond"],
                            noise=torch.stack([r["p_noise"], r["p_noise"]]), steps=K, n_samples=2, units="upstream")
    assert y2.shape == (2, *y.shape)
    assert (y2 - r[f"pipeline_out_{K}"]).abs().max().item() <= 1e-4


@pytest.mark.realdata
def test_from_upstream_refuses_foreign_names(reference, tmp_path):
    _, _, kwargs = reference
    payload = torch.load(shared_path(*REF, "restore_dit_small.pth"), weights_only=True)
    sd = dict(payload["model_state_dict"])
    sd["module.blocks.0.extra.weight"] = torch.zeros(1)
    del sd["module.blocks.1.mlp.fc2.bias"]
    torch.save({"model_state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.extra\.weight.*blocks\.1\.mlp\.fc2\.bias"):
        restore_dit.from_upstream(tmp_path / "bad.pth", device="cpu", **kwargs)
    with pytest.raises(CheckpointError, match="shape"):
        restore_dit.from_upstream(shared_path(*REF, "restore_dit_small.pth"), device="cpu",
                                  **{**kwargs, "in_channels": 3})
    with pytest.raises(CheckpointError, match="not found"):
        restore_dit.from_upstream(tmp_path / "absent.pth")


# --------------------------------------------------------------------------------------------------
# the network

def test_save_load_round_trip(tmp_path):
    model = _tiny()
    model.optical_bands, model.sar_bands = ["B02", "B03", "B04", "B08"], ["VV", "VH"]
    x, t, dates, sar = _inputs()
    path = model.save(tmp_path / "rd.xrecon")
    payload = torch.load(path, weights_only=True)  # plain values only
    assert payload["model"] == "restore-dit" and payload["config"]["date_origin"] == "2018-09-01"
    loaded = xrecon.models.load(path, device="cpu")
    assert isinstance(loaded, RestoreDiT) and loaded.config == model.config
    assert loaded.optical_bands == model.optical_bands and loaded.sar_bands == model.sar_bands
    with torch.inference_mode():
        torch.testing.assert_close(loaded.denoise(x, t, dates, sar), model.denoise(x, t, dates, sar), rtol=0, atol=0)


@pytest.mark.parametrize(("H", "W"), [(4, 4), (8, 12), (16, 8)])
def test_any_tile_multiple_of_patch(H, W):
    model = _tiny()
    x, t, dates, sar = _inputs(H=H, W=W)
    with torch.inference_mode():
        out = model.denoise(x, t, dates, sar)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize(("H", "W"), [(10, 12), (8, 6), (0, 8)])
def test_tile_not_multiple_of_patch_is_refused(H, W):
    model = _tiny()
    x, t, dates, sar = _inputs(H=max(H, 1), W=W)
    x = x[..., :H, :]
    with pytest.raises(TileSizeError, match="multiples of the patch size 4"):
        model.denoise(x, t, dates, sar[..., :H, :])
    assert issubclass(TileSizeError, XreconError)


def test_any_frame_count():
    model = _tiny()
    for T in (1, 2, 7):
        x, t, dates, sar = _inputs(T=T)
        with torch.inference_mode():
            assert model.denoise(x, t, dates, sar).shape == x.shape


def test_without_sar():
    x, t, dates, sar = _inputs()
    optical_only = _tiny(n_sar_bands=0)
    assert not any("cross" in k or "sar_embed" in k for k in optical_only.state_dict())
    with torch.inference_mode():
        assert optical_only.denoise(x, t, dates, None).shape == x.shape
        with pytest.raises(XreconError, match="no SAR branch"):
            optical_only.denoise(x, t, dates, sar)
        # a SAR network without SAR skips the cross-attention; with SAR the output depends on it
        model = _tiny()
        without = model.denoise(x, t, dates, None)
        assert not torch.allclose(without, model.denoise(x, t, dates, sar))
        assert torch.isfinite(without).all()


def test_padding_mask():
    model = _tiny()
    x, t, dates, sar = _inputs(T=4)
    valid = torch.tensor([[True, True, True, False], [True, False, True, True]])
    x2, sar2, dates2 = x.clone(), sar.clone(), dates.clone()
    for b, f in ((0, 3), (1, 1)):  # change everything about the padded frames
        x2[b, f] = torch.randn_like(x2[b, f]) * 5
        sar2[b, f] = -sar2[b, f]
        dates2[b, f] += 123
    with torch.inference_mode():
        a = model.denoise(x, t, dates, sar, valid=valid)
        b = model.denoise(x2, t, dates2, sar2, valid=valid)
        unmasked = model.denoise(x2, t, dates2, sar2)
    keep = valid[:, :, None, None, None].expand_as(a)
    torch.testing.assert_close(a[keep], b[keep], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a[keep], unmasked[keep], atol=1e-3)  # without the mask they do take part
    with pytest.raises(XreconError, match="at least one valid frame"):
        model.denoise(x, t, dates, sar, valid=torch.zeros(2, 4, dtype=torch.bool))


def test_batch_of_timesteps():
    model = _tiny()
    x, t, dates, sar = _inputs(B=3)
    t = torch.tensor([0, 400, 999])
    with torch.inference_mode():
        together = model.denoise(x, t, dates, sar)
        for i in range(3):
            alone = model.denoise(x[i:i + 1], t[i:i + 1], dates[i:i + 1], sar[i:i + 1])
            torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-4, atol=1e-4)  # float rounding
        torch.testing.assert_close(model.denoise(x, 400, dates, sar), model.denoise(x, torch.full((3,), 400), dates,
                                                                                    sar), rtol=0, atol=0)
    with pytest.raises(XreconError, match="t must be"):
        model.denoise(x, torch.tensor([1, 2]), dates, sar)


def test_device_from_input():
    # on the meta device nothing is computed: any tensor made on a hard-coded device would fail here
    model = _tiny().to("meta")
    x, t, dates, sar = (v.to("meta") for v in _inputs())
    out = model(x, t, dates, sar, torch.ones(2, 3, dtype=torch.bool, device="meta"))  # denoise's checks read values
    assert out.device.type == "meta" and out.shape == x.shape


def test_position_embedding_orientation():
    # columns in the first half, rows in the second, row-major tokens (upstream's for square grids)
    pe = restore_dit.position_embedding(8, 2, 3)
    assert torch.equal(pe[1, 4:], pe[0, 4:]) and not torch.equal(pe[1, :4], pe[0, :4])
    assert torch.equal(pe[3, :4], pe[0, :4]) and not torch.equal(pe[3, 4:], pe[0, 4:])


def test_config_checks():
    with pytest.raises(XreconError, match="multiple of num_heads"):
        RestoreDiTConfig(hidden_size=30, num_heads=4)
    with pytest.raises(XreconError, match="date_origin"):
        RestoreDiTConfig(date_origin="1st of May")
    assert PRESETS["authors"].hidden_size == 256 and PRESETS["authors"].depth == 4
    assert PRESETS["authors"].num_heads == 4 and PRESETS["authors"].patch_size == 4


# --------------------------------------------------------------------------------------------------
# sampling

def test_sample_shapes_seed_and_composite():
    pytest.importorskip("diffusers")
    model = _tiny()
    x, _, dates, sar = _inputs(B=2, T=3, H=8, W=8)
    mask = (torch.rand(2, 3, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    for sampler in ("dpm++", "ddim"):
        a = restore_dit.sample(model, x, mask, dates, sar, steps=2, n_samples=3, sampler=sampler, units="model",
                               generator=torch.Generator().manual_seed(0))
        b = restore_dit.sample(model, x, mask, dates, sar, steps=2, n_samples=3, sampler=sampler, units="model",
                               generator=torch.Generator().manual_seed(0))
        assert a.shape == (3, 2, 3, 4, 8, 8) and torch.equal(a, b)
        observed = (mask == 0).expand_as(x)
        assert torch.equal(a[0][observed], x[observed])  # observed pixels are put back as they were
        assert not torch.allclose(a[0], a[1])  # samples differ where masked
        # each sample is what one call with its own noise gives
        noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))[1]
        one = restore_dit.sample(model, x, mask, dates, sar, steps=2, sampler=sampler, units="model", noise=noise)
        torch.testing.assert_close(one, a[1], rtol=1e-4, atol=1e-4)


def test_ddim_defaults_fit_few_steps():
    pytest.importorskip("diffusers")
    from xrecon.diffusion import get_sampler, list_samplers

    assert list_samplers() == ["ddim", "dpm++"]
    ddim = get_sampler("ddim")
    assert ddim.set_timesteps(1).tolist() == [999]  # diffusers' default "leading" spacing would give [0]
    assert ddim.set_timesteps(4).tolist() == [999, 749, 499, 249]
    assert ddim.scheduler.config.clip_sample is False
    with pytest.raises(XreconError, match="unknown sampler"):
        get_sampler("euler")


def test_importing_xrecon_does_not_import_diffusers():
    code = ("import sys, xrecon, xrecon.models, xrecon.diffusion; from xrecon.models import restore_dit; "
            "assert 'diffusers' not in sys.modules, 'diffusers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
