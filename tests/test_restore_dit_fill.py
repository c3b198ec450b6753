"""RESTORE-DiT through ``ds.recon.fill``: laziness, chunk invariance, seam-free tiles, anytime queries,
SAR alignment, samples and the errors of the build step (xrecon.methods.restore_dit)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import xrecon
import xrecon.methods
import xrecon.models
from xrecon.errors import CheckpointError, MethodError
from xrecon.methods import restore_dit as adapter
from xrecon.testing import raise_if_dask_computes, synthetic_cube

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from xrecon.models import restore_dit  # noqa: E402  (after the skips)

DAY = 86_400 * 10**9
SMALL = "restore-dit-halo7"  # the same method with a halo for tiles of <= 8 px, so a 24 px cube has real chunks
CHUNKINGS = [{"y": 7, "x": 11}, {"y": 9, "x": 8}, {"y": 13, "x": 7}]
OPTS = {"tile": 8, "overlap": 2, "n_samples": 2, "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = restore_dit.RestoreDiTConfig(n_optical_bands=4, n_sar_bands=2, hidden_size=16, depth=1, num_heads=2,
                                          frequency_embedding_size=16)
    torch.manual_seed(0)
    model = restore_dit.RestoreDiT(config)
    with torch.no_grad():  # every parameter random, as the reference did: adaLN-Zero would predict 0
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.optical_bands, model.sar_bands = ["B02", "B03", "B04", "B08"], ["VV", "VH"]
    model.sar_offset.fill_(-15.0)
    model.sar_scale.fill_(10.0)
    return str(model.save(tmp_path_factory.mktemp("rdit") / "tiny.xrecon"))


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=24, nx=24, bands=4, seed=0).isel(time=slice(0, 8)).compute()


@pytest.fixture(scope="module")
def small():
    base = xrecon.methods.get("restore-dit")
    xrecon.methods.register(SMALL, base.kernel, footprint="patch", halo=7, build=base.build, options=base.options,
                            outputs=base.outputs, needs_checkpoint=True, sar=True, replace=True)
    yield SMALL
    xrecon.methods.unregister(SMALL)


def test_registered():
    m = xrecon.methods.get("restore-dit")
    assert (m.footprint, m.halo, m.outputs) == ("patch", adapter.HALO, ("optical", "optical_std"))
    assert m.needs_checkpoint and m.sar and isinstance(m.kernel, str) and isinstance(m.build, str)
    assert set(m.options) == set(adapter.OPTIONS)
    # registering costs no torch import
    code = "import sys, xrecon, xrecon.methods; xrecon.methods.get('restore-dit'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_training_task_imports():
    task = xrecon.methods.get("restore-dit").training_task()
    assert task.__name__ == "RestoreDiTTask"


def test_fill_lazy_and_chunk_invariant(cube, checkpoint, small):
    one = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", **OPTS).compute()
    assert one.optical.dtype == np.float32 and one.optical_std.dims == ("time", "band", "y", "x")
    assert np.isfinite(one.optical.values).all() and np.isfinite(one.optical_std.values).all()
    for chunks in CHUNKINGS:
        with raise_if_dask_computes():
            lazy = cube.chunk(chunks).recon.fill(method=small, checkpoint=checkpoint, mask="clear", **OPTS)
        assert lazy.optical.chunks[2:] == cube.chunk(chunks).optical.chunks[2:]
        got = lazy.compute()
        np.testing.assert_allclose(got.optical.values, one.optical.values, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.optical_std.values, one.optical_std.values, rtol=0, atol=1e-5)
    other = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", **{**OPTS, "seed": 4})
    assert not np.allclose(other.optical.values, one.optical.values)


def test_registered_method_is_lazy(checkpoint):
    big = synthetic_cube(ny=136, nx=136, bands=4, seed=0, chunks={"y": 68, "x": 68}).isel(time=slice(0, 4))
    with raise_if_dask_computes():
        out = big.recon.fill("10D", method="restore-dit", checkpoint=checkpoint, mask="clear", **OPTS)
    assert out.optical.chunks[2:] == ((68, 68), (68, 68)) and out.optical_std.chunks == out.optical.chunks


def test_precision_and_sampler(cube, checkpoint):
    ref = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", **OPTS).compute()
    bf16 = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", precision="bf16", **OPTS)
    np.testing.assert_allclose(bf16.optical.values, ref.optical.values, atol=0.05)
    ddim = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", sampler="ddim", **OPTS)
    assert np.isfinite(ddim.optical.values).all()
    with pytest.raises(MethodError, match="sampler"):
        cube.recon.fill(method="restore-dit", checkpoint=checkpoint, sampler="euler", **OPTS)


def test_real_method_on_a_dask_cube_smaller_than_its_halo(cube, checkpoint):
    """The cube is far narrower than the halo (127 px): fill pads it as the in-memory path does."""
    one = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", **OPTS).compute()
    got = cube.chunk({"y": 12}).recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", **OPTS)
    assert got.optical.chunks[2][0] == 12
    np.testing.assert_allclose(got.optical.values, one.optical.values, rtol=0, atol=1e-5)


def test_blend_weights_sum_to_one():
    for tile, overlap in [(8, 2), (16, 8), (12, 0), (32, 5)]:
        w = adapter.blend_weights(tile, overlap)
        s = tile - overlap
        total = np.zeros(200)
        for k in adapter.tile_origins(50, 150, tile, overlap):
            lo = k * s
            idx = np.arange(lo, lo + tile)
            keep = (idx >= 0) & (idx < 200)
            total[idx[keep]] += w[keep]
        np.testing.assert_allclose(total[50:150], 1.0, atol=1e-12)
        assert (np.abs(np.diff(w)) <= np.pi / max(overlap, 1)).all()  # a ramp, no step


def test_no_seams_with_a_position_consistent_network(cube, checkpoint, small, monkeypatch):
    # A fake sampler whose every tile predicts the same per-pixel field (the mean of the pixel's observed
    # frames): blending tiles put back at the right places must give that field exactly, on tile borders
    # and chunk borders alike.
    def fake_sample(model, image, mask, dates, sar, *, noise=None, n_samples=1, **_):
        obs = 1 - mask
        field = (image * obs).sum(1, keepdim=True) / obs.sum(1, keepdim=True).clamp(min=1)
        out = field.expand_as(image)
        return out if n_samples == 1 else out.expand(n_samples, *out.shape)

    monkeypatch.setattr(restore_dit, "sample", fake_sample)
    ds = cube.copy()
    ds["clear"] = ds["clear"] | True
    ds["optical"] = ds["optical"].fillna(0.3)
    query = pd.DatetimeIndex(ds.time.values[:3]) + pd.Timedelta(days=1)  # wholly masked frames
    opts = {**OPTS, "n_samples": 1, "frames": 32}
    expect = ds.optical.clip(0.0, 0.8).mean("time").values  # model units are clamped to [-1, 1]: 0..0.8
    for chunks in [None, *CHUNKINGS]:
        src = ds if chunks is None else ds.chunk(chunks)
        out = src.recon.fill(query, method=small, checkpoint=checkpoint, mask="clear", **opts).compute()
        np.testing.assert_allclose(out.optical.values, np.broadcast_to(expect, out.optical.shape), atol=2e-6)


def test_anytime_queries_and_temporal_windows(cube, checkpoint, small):
    times = pd.DatetimeIndex(cube.time.values)
    query = pd.DatetimeIndex([times[1], times[2] + pd.Timedelta(days=1), times[5] - pd.Timedelta(hours=30)])
    opts = {**OPTS, "frames": 4}  # 8 + 2 frames in windows of 4
    one = cube.recon.fill(query, method=small, checkpoint=checkpoint, mask="clear", **opts).compute()
    assert list(one.time.values) == list(query.values)
    assert np.isfinite(one.optical.values).all()
    assert not one.observed.values[1:].any() and one.observed.values[0].any()
    got = cube.chunk(CHUNKINGS[0]).recon.fill(query, method=small, checkpoint=checkpoint, mask="clear", **opts)
    np.testing.assert_allclose(got.optical.values, one.optical.values, atol=1e-5)

    frame_t, src, q_frame = adapter.sequence_frames([10, 20, 30, 40], [25, 30, 45])
    assert frame_t.tolist() == [10, 20, 25, 30, 40, 45] and src.tolist() == [0, 1, -1, 2, 3, -1]
    assert q_frame.tolist() == [2, 3, 5]
    starts, pick = adapter.temporal_windows(11, 4, np.arange(11))
    assert starts.tolist() == [0, 2, 4, 6, 7]
    centre = starts[pick] + 1.5
    assert (np.abs(np.arange(11) - centre) <= 1.5).all()  # each query from a window where it is central


def test_sar_alignment():
    s = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) * np.ones((1, 1, 1, 2), np.float32)
    s[1, 0, 0, 1] = np.nan  # pixel 1 lacks SAR on date 1: the next nearest in reach is used
    sar_ns = [0, 6 * DAY, 12 * DAY, 30 * DAY]
    got = adapter.align_sar(s, sar_ns, [5 * DAY, 9 * DAY, 21 * DAY], 6.0)
    assert got[0].ravel().tolist() == [1.0, 0.0]  # nearest (1 day), pixel 1 falls back to date 0 (5 days)
    assert got[1].ravel().tolist() == [1.0, 2.0]  # tie (3 days each way): the earlier; pixel 1 the later
    assert np.isnan(got[2]).all()  # nothing within 6 days


def test_sar_is_used(cube, checkpoint):
    a = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", **OPTS).compute()
    b = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", sar=None, **OPTS).compute()
    far = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", **OPTS, sar_window=0.0)
    gap = ~a.observed.values[:, None].repeat(4, 1)
    assert not np.allclose(a.optical.values[gap], b.optical.values[gap])
    assert not np.allclose(a.optical.values[gap], far.optical.values[gap])


def test_samples_spread(cube, checkpoint):
    many = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", **{**OPTS, "n_samples": 3})
    one = cube.recon.fill(method="restore-dit", checkpoint=checkpoint, mask="clear", **{**OPTS, "n_samples": 1})
    gap = ~many.observed.values[:, None].repeat(4, 1)
    std = many.optical_std.values
    assert (std[gap] > 0).all() and (std[~gap] == 0).all()
    assert (one.optical_std.values == 0).all()


def test_errors(cube, checkpoint, tmp_path):
    with pytest.raises(restore_dit.TileSizeError, match="multiple of the network's patch size 4"):
        cube.recon.fill(method="restore-dit", checkpoint=checkpoint, tile=6)
    with pytest.raises(MethodError, match="halo"):
        cube.recon.fill(method="restore-dit", checkpoint=checkpoint, tile=256)
    with pytest.raises(MethodError, match="overlap"):
        cube.recon.fill(method="restore-dit", checkpoint=checkpoint, tile=8, overlap=5)
    with pytest.raises(MethodError, match="does not take"):
        cube.recon.fill(method="restore-dit", checkpoint=checkpoint, tiles=8)
    renamed = cube.assign_coords(band=["B02", "B03", "B04", "B05"])
    with pytest.raises(CheckpointError, match="missing"):
        renamed.recon.fill(method="restore-dit", checkpoint=checkpoint, tile=8)
    with pytest.raises(CheckpointError, match="checkpoint="):
        cube.recon.fill(method="restore-dit")
    other = xrecon.models.get_model("anytimeformer", d_model=32, d_inner=16).save(tmp_path / "atf.xrecon")
    with pytest.raises(adapter.NotThisModelError, match="holds a 'anytimeformer' model"):
        cube.recon.fill(method="restore-dit", checkpoint=other)
