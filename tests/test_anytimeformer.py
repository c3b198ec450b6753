"""AnytimeFormer: official-weight equivalence, arbitrary shapes, checkpoints and their errors."""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict

import numpy as np
import pytest
import torch

import xrecon
import xrecon.models
from tests.conftest import shared_path
from xrecon.errors import CheckpointError, MethodError, XreconError
from xrecon.models import anytimeformer as af

REF = ("reference", "anytimeformer")
CASES = {
    "seq2seq": ("anytimeformer_germany_40pct.ckpt", "seq2seq_40pct.npz"),
    "anytime": ("anytimeformer_germany_anytime.ckpt", "anytime_50_150_5.npz"),
}
TINY = dict(d_model=16, d_inner=8, n_heads=2, d_k=8, d_v=8, fusion_rank=2)


def _official(case: str) -> tuple[af.AnytimeFormer, dict[str, np.ndarray]]:
    ckpt, npz = CASES[case]
    ref = dict(np.load(shared_path(*REF, npz)))
    model = af.from_official(shared_path(*REF, ckpt), ref["X_mean"], ref["X_std"], ref["sar_mean"], ref["sar_std"],
                             device="cpu")
    return model, ref


@pytest.fixture(scope="module")
def seq2seq():
    return _official("seq2seq")


@pytest.fixture(scope="module")
def tiny() -> af.AnytimeFormer:
    torch.manual_seed(0)
    model = af.AnytimeFormer(af.AnytimeFormerConfig(n_optical_bands=4, **TINY)).eval()
    model.set_normalization([0.1, 0.2, 0.3, 0.4], [0.05, 0.05, 0.1, 0.1], [-12.0, -18.0], [3.0, 3.5])
    model.optical_bands, model.sar_bands = ["B02", "B03", "B04", "B08"], ["VV", "VH"]
    return model


def _inputs(rng: np.random.Generator, n: int, t: int, ts: int, c: int = 4, s: int = 2):
    optical = rng.uniform(0.0, 0.5, (n, t, c)).astype(np.float32)
    valid = rng.random((n, t)) < 0.6
    valid[:, 0] = True
    optical[~valid] = np.nan
    opt_doy = np.sort(rng.choice(np.arange(1, 366), t, replace=False)).astype(np.float32)
    sar = rng.normal(-15.0, 3.0, (n, ts, s)).astype(np.float32)
    sar_doy = np.sort(rng.choice(np.arange(1, 366), ts, replace=False)).astype(np.float32)
    return optical, valid, opt_doy, sar, sar_doy


# ------------------------------------------------------------------------------------------------
# the official weights reproduce the official outputs


@pytest.mark.realdata
@pytest.mark.parametrize("case", sorted(CASES))
def test_official_weights_reproduce_reference_outputs(case):
    model, ref = _official(case)
    # refl_true holds the true values where valid is False too: hide them to prove they are not used
    optical = np.where(ref["valid"][..., None], ref["refl_true"], np.nan)
    y = model.predict_pixels(optical, ref["valid"], ref["dates_opt"], ref["sar_db"], ref["dates_sar"],
                             ref["dates_query"], device="cpu")
    assert y.shape == ref["reconstructed"].shape and y.dtype == np.float32
    assert np.abs(y - ref["reconstructed"]).max() <= 1e-4


@pytest.mark.realdata
def test_official_network_in_standardized_units(seq2seq):
    """Stage check: the network alone, fed exactly what the official model received."""
    model, ref = seq2seq
    x = torch.from_numpy(ref["X_std_input"][:64])
    args = (torch.from_numpy(ref["dates_opt"]), torch.from_numpy(ref["dates_query"]),
            torch.from_numpy(ref["sar_std_input"][:64]), torch.from_numpy(ref["dates_sar"]))
    want = (ref["reconstructed"][:64] - ref["X_mean"]) / ref["X_std"]
    with torch.inference_mode():
        fast = model(x, *args).numpy()
        textbook = model.forward_reference(x, *args).numpy()
    assert np.abs(fast - want).max() < 1e-4
    assert np.abs(textbook - want).max() < 1e-4


@pytest.mark.realdata
def test_time_code_is_the_official_table():
    sd = torch.load(shared_path(*REF, CASES["seq2seq"][0]), map_location="cpu", weights_only=True)
    table = sd["position_enc.pos_table"]
    assert torch.equal(af.doy_encoding(torch.arange(366.0), 128, 365.0), table)


@pytest.mark.realdata
def test_values_hidden_by_valid_are_ignored(seq2seq):
    model, ref = seq2seq
    sl = slice(0, 32)
    args = (ref["valid"][sl], ref["dates_opt"], ref["sar_db"][sl], ref["dates_sar"], ref["dates_query"])
    a = model.predict_pixels(np.where(ref["valid"][sl, :, None], ref["refl_true"][sl], np.nan), *args, device="cpu")
    b = model.predict_pixels(np.where(ref["valid"][sl, :, None], ref["refl_true"][sl], 7.0), *args, device="cpu")
    np.testing.assert_array_equal(a, b)


@pytest.mark.realdata
def test_official_bands_and_provenance(seq2seq):
    model, _ = seq2seq
    assert model.optical_bands == list(af.OFFICIAL_OPTICAL_BANDS)
    assert model.sar_bands == ["VV", "VH"]
    assert model.config == af.PRESETS["official"]
    assert model.metadata["official_file"] == "anytimeformer_germany_40pct.ckpt"
    assert len(model.metadata["official_sha256"]) == 64
    assert sum(p.numel() for p in model.parameters()) == 692_810 - 366 * 128  # the time table is not a weight


@pytest.mark.realdata
def test_bf16_is_close(seq2seq):
    model, ref = seq2seq
    sl = slice(0, 32)
    y = model.predict_pixels(ref["refl_true"][sl], ref["valid"][sl], ref["dates_opt"], ref["sar_db"][sl],
                             ref["dates_sar"], ref["dates_query"], device="cpu", precision="bf16")
    err = np.abs(y - ref["reconstructed"][sl])
    assert err.max() < 2e-2 and err.mean() < 1e-3


@pytest.mark.gpu
@pytest.mark.realdata
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("bf16", 2e-2), ("fp16", 1e-2)])
def test_official_on_gpu(precision, tol):
    model, ref = _official("anytime")
    y = model.predict_pixels(ref["refl_true"], ref["valid"], ref["dates_opt"], ref["sar_db"], ref["dates_sar"],
                             ref["dates_query"], device="cuda", precision=precision)
    assert np.abs(y - ref["reconstructed"]).max() <= tol


# ------------------------------------------------------------------------------------------------
# the fast path is the textbook network, for any configuration and any lengths


@pytest.mark.parametrize(
    "config",
    [
        dict(n_optical_bands=3, n_sar_bands=3, d_model=24, d_inner=10, n_heads=3, d_k=5, d_v=7, n_groups=2,
             n_group_inner_layers=2, fusion_rank=3),
        dict(n_optical_bands=4, n_sar_bands=0, **TINY),
        dict(n_optical_bands=4, n_sar_bands=2, diagonal_mask=False, n_groups=0, **TINY),
    ],
    ids=["odd-sizes", "optical-only", "no-mask-no-encoder"],
)
@pytest.mark.parametrize(("t", "ts", "tq"), [(9, 13, 5), (1, 1, 1), (30, 0, 40)])
def test_fast_forward_equals_textbook_forward(config, t, ts, tq):
    torch.manual_seed(1)
    model = af.AnytimeFormer(af.AnytimeFormerConfig(**config)).eval()
    g = torch.Generator().manual_seed(2)
    C, S = model.config.n_optical_bands, model.config.n_sar_bands
    x = torch.randn(6, t, C, generator=g)
    days = torch.rand(t, generator=g) * 366
    q = torch.rand(tq, generator=g) * 366
    sar = torch.randn(6, ts, S, generator=g) if S else None
    sar_days = torch.rand(ts, generator=g) * 366 if S else None
    with torch.inference_mode():
        fast = model(x, days, q, sar, sar_days)
        textbook = model.forward_reference(x, days, q, sar, sar_days)
    assert fast.shape == (6, tq, C)
    torch.testing.assert_close(fast, textbook, atol=2e-5, rtol=1e-5)


def test_date_order_does_not_matter(tiny):
    rng = np.random.default_rng(3)
    optical, valid, opt_doy, sar, sar_doy = _inputs(rng, 10, 12, 20)
    query = np.array([5.0, 100.0, 250.0, 366.0])
    y = tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, query, device="cpu")
    p, ps, pq = rng.permutation(12), rng.permutation(20), rng.permutation(4)
    y2 = tiny.predict_pixels(optical[:, p], valid[:, p], opt_doy[p], sar[:, ps], sar_doy[ps], query[pq], device="cpu")
    np.testing.assert_allclose(y2, y[:, pq], atol=1e-6)


def test_batch_size_does_not_change_results(tiny):
    optical, valid, opt_doy, sar, sar_doy = _inputs(np.random.default_rng(4), 23, 8, 11)
    runs = [tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [10, 20], batch_size=b, device="cpu")
            for b in (1, 5, None)]
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)
    np.testing.assert_allclose(runs[0], runs[2], atol=1e-6)


def test_worker_threads_give_the_same_results(tiny):
    optical, valid, opt_doy, sar, sar_doy = _inputs(np.random.default_rng(11), 37, 8, 11)
    threads = torch.get_num_threads()
    one = tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [10, 20], batch_size=4, device="cpu")
    many = tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [10, 20], batch_size=4, device="cpu",
                               workers=3)
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-6)  # 1 vs all intra-op threads: BLAS may round otherwise
    assert torch.get_num_threads() == threads
    with pytest.raises(XreconError, match="workers"):
        tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [10], device="cpu", workers=0)


def test_query_defaults_to_optical_dates(tiny):
    optical, valid, opt_doy, sar, sar_doy = _inputs(np.random.default_rng(5), 3, 6, 7)
    a = tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, device="cpu")
    b = tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, opt_doy, device="cpu")
    assert a.shape == (3, 6, 4)
    np.testing.assert_array_equal(a, b)


def test_pixel_without_observation_is_nan_and_others_unaffected(tiny):
    optical, valid, opt_doy, sar, sar_doy = _inputs(np.random.default_rng(6), 5, 7, 9)
    full = tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [50, 60], device="cpu")
    valid = valid.copy()
    valid[2] = False
    optical = optical.copy()
    optical[3, :, 1] = np.nan  # a band missing everywhere: that pixel has no complete observation
    y = tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [50, 60], device="cpu")
    assert np.isnan(y[[2, 3]]).all()
    np.testing.assert_allclose(y[[0, 1, 4]], full[[0, 1, 4]], atol=1e-6)
    assert np.isfinite(y[[0, 1, 4]]).all()


def test_missing_sar_counts_as_the_mean(tiny):
    optical, valid, opt_doy, sar, sar_doy = _inputs(np.random.default_rng(7), 4, 6, 8)
    no_sar = tiny.predict_pixels(optical, valid, opt_doy, None, None, [30, 90], device="cpu")
    all_nan = tiny.predict_pixels(optical, valid, opt_doy, np.full_like(sar, np.nan), sar_doy, [30, 90],
                                  device="cpu")
    at_mean = tiny.predict_pixels(optical, valid, opt_doy, np.broadcast_to(np.float32([-12.0, -18.0]), sar.shape),
                                  sar_doy, [30, 90], device="cpu")
    np.testing.assert_allclose(no_sar, all_nan, atol=1e-6)
    np.testing.assert_allclose(no_sar, at_mean, atol=1e-6)
    with_sar = tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [30, 90], device="cpu")
    assert np.abs(with_sar - no_sar).max() > 1e-4  # SAR is used when given
    # a NaN in one SAR value changes only what that value would have contributed
    partly = sar.copy()
    partly[0, 3, 0] = np.nan
    y = tiny.predict_pixels(optical, valid, opt_doy, partly, sar_doy, [30, 90], device="cpu")
    np.testing.assert_allclose(y[1:], with_sar[1:], atol=1e-6)
    assert np.isfinite(y).all()


def test_empty_query_and_no_observations(tiny):
    optical, valid, opt_doy, sar, sar_doy = _inputs(np.random.default_rng(8), 3, 5, 4)
    assert tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [], device="cpu").shape == (3, 0, 4)
    y = tiny.predict_pixels(optical, np.zeros_like(valid), opt_doy, sar, sar_doy, [1, 2], device="cpu")
    assert y.shape == (3, 2, 4) and np.isnan(y).all()


def test_training_mode_backpropagates_and_drops_out():
    torch.manual_seed(0)
    model = af.AnytimeFormer(af.AnytimeFormerConfig(n_optical_bands=4, dropout=0.2, **TINY)).train()
    x, sar = torch.randn(3, 7, 4), torch.randn(3, 5, 2)
    args = (x, torch.arange(7.0) * 40, torch.tensor([3.0, 200.0]), sar, torch.arange(5.0) * 60)
    y = model(*args)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not torch.equal(model(*args), y)  # dropout is on in training mode
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*args), model(*args))


def test_device_follows_the_inputs(tiny):
    x = torch.zeros(2, 3, 4)
    out = tiny(x, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0]))
    assert out.device == x.device


# ------------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_raise_clear_errors(tiny):
    optical, valid, opt_doy, sar, sar_doy = _inputs(np.random.default_rng(9), 3, 5, 4)
    with pytest.raises(CheckpointError, match="4 optical bands"):
        tiny.predict_pixels(optical[..., :3], valid, opt_doy, sar, sar_doy, [1], device="cpu")
    with pytest.raises(CheckpointError, match="2 SAR bands"):
        tiny.predict_pixels(optical, valid, opt_doy, sar[..., :1], sar_doy, [1], device="cpu")
    with pytest.raises(XreconError, match="valid"):
        tiny.predict_pixels(optical, valid[:, :4], opt_doy, sar, sar_doy, [1], device="cpu")
    with pytest.raises(XreconError, match="optical_doy"):
        tiny.predict_pixels(optical, valid, opt_doy[:4], sar, sar_doy, [1], device="cpu")
    with pytest.raises(XreconError, match="query_doy"):
        tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [400], device="cpu")
    with pytest.raises(XreconError, match="sar_doy"):
        tiny.predict_pixels(optical, valid, opt_doy, sar, None, [1], device="cpu")
    with pytest.raises(XreconError, match="fp16"):
        tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [1], device="cpu", precision="fp16")
    with pytest.raises(XreconError, match="batch_size"):
        tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [1], batch_size=0, device="cpu")
    optical_only = af.AnytimeFormer(af.AnytimeFormerConfig(n_optical_bands=4, n_sar_bands=0, **TINY))
    with pytest.raises(XreconError, match="no SAR"):
        optical_only.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [1], device="cpu")
    with pytest.raises(XreconError):
        af.AnytimeFormerConfig(d_model=0)
    with pytest.raises(XreconError, match="optical_std"):
        tiny.set_normalization([0.1] * 4, [0.1, 0.1, 0.0, 0.1], [0, 0], [1, 1])


# ------------------------------------------------------------------------------------------------
# checkpoints


def test_save_load_round_trip_is_exact(tiny, tmp_path):
    tiny.metadata = {"trained_on": "synthetic"}
    path = tiny.save(tmp_path / "sub" / "tiny.xrecon")
    loaded = xrecon.models.load(path, device="cpu")
    assert type(loaded) is af.AnytimeFormer and not loaded.training
    assert loaded.config == tiny.config
    assert loaded.optical_bands == tiny.optical_bands and loaded.sar_bands == tiny.sar_bands
    assert loaded.metadata == {"trained_on": "synthetic"}
    for k, v in tiny.normalization.items():
        np.testing.assert_array_equal(loaded.normalization[k], v)
    optical, valid, opt_doy, sar, sar_doy = _inputs(np.random.default_rng(10), 9, 6, 5)
    np.testing.assert_array_equal(
        loaded.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [7, 77], device="cpu"),
        tiny.predict_pixels(optical, valid, opt_doy, sar, sar_doy, [7, 77], device="cpu"),
    )
    payload = xrecon.models.read_checkpoint(path)
    assert payload["xrecon_version"] == xrecon.__version__ and payload["model"] == "anytimeformer"
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())
    assert os.listdir(tmp_path / "sub") == ["tiny.xrecon"]  # no temporary file left behind


@pytest.mark.realdata
def test_official_model_survives_a_checkpoint(seq2seq, tmp_path):
    model, ref = seq2seq
    loaded = xrecon.models.load(model.save(tmp_path / "official.xrecon"), device="cpu")
    y = loaded.predict_pixels(ref["refl_true"][:16], ref["valid"][:16], ref["dates_opt"], ref["sar_db"][:16],
                              ref["dates_sar"], ref["dates_query"], device="cpu")
    assert np.abs(y - ref["reconstructed"][:16]).max() <= 1e-4


def test_save_refuses_metadata_a_safe_load_would_refuse(tiny, tmp_path):
    tiny.metadata = {"where": tmp_path}
    with pytest.raises(XreconError, match="plain values"):
        tiny.save(tmp_path / "m.xrecon")
    assert os.listdir(tmp_path) == []
    tiny.metadata = {}


def test_saved_checkpoint_is_readable_by_others(tiny, tmp_path):
    mode = tiny.save(tmp_path / "m.xrecon").stat().st_mode
    umask = os.umask(0)
    os.umask(umask)
    assert mode & 0o666 == 0o666 & ~umask


def test_failed_save_leaves_the_old_file(tiny, tmp_path, monkeypatch):
    path = tiny.save(tmp_path / "m.xrecon")
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tiny.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.xrecon"]


def _payload(model: af.AnytimeFormer) -> dict:
    return {"format": "xrecon-checkpoint", "format_version": 1, "xrecon_version": xrecon.__version__,
            "model": "anytimeformer", "config": asdict(model.config),
            "state_dict": dict(model.state_dict()), "optical_bands": None, "sar_bands": None, "metadata": {}}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        (b"certainly not a torch file", "not a readable"),
        ("truncated", "not a readable"),
        ("bare-state-dict", "from_official"),
        ({"format": "something-else"}, "not an xrecon checkpoint"),
        ("evil-pickle", "not a readable"),
        ("future-version", "upgrade xrecon"),
        ("unknown-model", "does not know"),
        ("bad-config", "config does not fit"),
        ("bad-weights", "weights do not fit"),
        ("bad-bands", "band names"),
    ],
)
def test_bad_checkpoints_raise_checkpoint_error(tiny, tmp_path, content, match):
    path = tmp_path / "bad.xrecon"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        tiny.save(path)
        path.write_bytes(path.read_bytes()[:1000])
    elif content == "bare-state-dict":
        torch.save(tiny.state_dict(), path)
    elif content == "evil-pickle":
        with open(path, "wb") as f:
            pickle.dump({"format": "xrecon-checkpoint", "x": _Evil()}, f, protocol=2)
    elif isinstance(content, dict):
        torch.save(content, path)
    elif content is not None:
        payload = _payload(tiny)
        if content == "future-version":
            payload["format_version"] = 99
        elif content == "unknown-model":
            payload["model"] = "no-such-net"
        elif content == "bad-config":
            payload["config"]["no_such_option"] = 1
        elif content == "bad-weights":
            payload["config"]["d_inner"] = 9
        elif content == "bad-bands":
            payload["optical_bands"] = "B02"
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=match):
        xrecon.models.load(path, device="cpu")


@pytest.mark.realdata
def test_official_file_is_not_an_xrecon_checkpoint_but_loads_through_from_official():
    with pytest.raises(CheckpointError, match="from_official"):
        xrecon.models.load(shared_path(*REF, CASES["anytime"][0]), device="cpu")


def test_from_official_rejects_other_files(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        af.from_official(tmp_path / "missing.ckpt", [0] * 10, [1] * 10, [0, 0], [1, 1])
    tiny.save(tmp_path / "x.xrecon")
    with pytest.raises(CheckpointError, match="not an official AnytimeFormer"):
        af.from_official(tmp_path / "x.xrecon", [0] * 10, [1] * 10, [0, 0], [1, 1])


@pytest.mark.realdata
def test_from_official_checks_normalization_and_bands():
    path = shared_path(*REF, CASES["seq2seq"][0])
    with pytest.raises(XreconError, match="optical_mean"):
        af.from_official(path, [0.1] * 9, [0.1] * 10, [0, 0], [1, 1], device="cpu")
    with pytest.raises(XreconError, match="sar_std"):
        af.from_official(path, [0.1] * 10, [0.1] * 10, [0, 0], None, device="cpu")
    with pytest.raises(XreconError, match="sar_bands"):
        af.from_official(path, [0.1] * 10, [0.1] * 10, [0, 0], [1, 1], sar_bands=["VV"], device="cpu")


# ------------------------------------------------------------------------------------------------
# registry


def test_registry():
    assert "anytimeformer" in xrecon.models.list_models()
    model = xrecon.models.get_model("anytimeformer", n_optical_bands=3, **TINY)
    assert isinstance(model, af.AnytimeFormer) and model.config.n_optical_bands == 3
    assert xrecon.models.get_model_class("anytimeformer") is af.AnytimeFormer
    with pytest.raises(MethodError, match="unknown model"):
        xrecon.models.get_model("no-such-net")
    with pytest.raises(MethodError, match="does not take"):
        xrecon.models.get_model("anytimeformer", n_layers=3)
