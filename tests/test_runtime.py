"""Device choice, precision, file hashes (xrecon.runtime), the per-process model cache and model locks
(xrecon.models.cache), and the batch driver of the networks (xrecon.models.batching)."""

from __future__ import annotations

import gc
import hashlib
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from xrecon import runtime
from xrecon.errors import CheckpointError, XreconError
from xrecon.models import anytimeformer as af
from xrecon.models import cache
from xrecon.models.batching import predict_in_batches

TINY = dict(n_optical_bands=3, d_model=16, d_inner=8, n_heads=2, d_k=8, d_v=8, fusion_rank=2)


def test_resolve_device():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.resolve_device(None).type == expected
    with pytest.raises(XreconError, match="not a device"):
        runtime.resolve_device("gpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(XreconError, match="no usable CUDA"):
        runtime.resolve_device("cuda")


def test_resolve_precision():
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("fp32", cpu) is torch.float32
    assert runtime.resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(XreconError, match="GPU"):
        runtime.resolve_precision("fp16", cpu)
    with pytest.raises(XreconError, match="precision"):
        runtime.resolve_precision("fp8", cpu)


def test_file_sha256(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert runtime.file_sha256(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()
    with pytest.raises(CheckpointError, match="not found"):
        runtime.file_sha256(tmp_path / "missing")


def test_importing_runtime_does_not_import_models():
    # a fresh interpreter: this one has imported xrecon.models already
    code = ("import sys, xrecon.runtime; "
            "loaded = sorted(m for m in sys.modules if m == 'xrecon.models' or m.startswith('xrecon.models.')); "
            "print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_old_runtime_names_say_where_the_cache_functions_are():
    # xrecon.runtime importing xrecon.models.cache for them made an import circle: they are gone, with a pointer
    for name in ("cached_model", "clear_model_cache"):
        with pytest.raises(AttributeError, match=f"moved to xrecon.models.cache.{name}"):
            getattr(runtime, name)
    with pytest.raises(AttributeError, match="no attribute 'model_lock'"):
        runtime.model_lock  # noqa: B018


@pytest.fixture
def checkpoints(tmp_path):
    cache.clear_model_cache()
    paths = []
    for seed in range(6):
        torch.manual_seed(seed)
        paths.append(af.AnytimeFormer(af.AnytimeFormerConfig(**TINY)).save(tmp_path / f"m{seed}.xrecon"))
    yield paths
    cache.clear_model_cache()


def test_cached_model_loads_once_per_key(checkpoints):
    path = checkpoints[0]
    sha = runtime.file_sha256(path)
    a = cache.cached_model(path, sha, "cpu")
    assert cache.cached_model(str(path), sha, torch.device("cpu")) is a
    assert not a.training and a.device.type == "cpu"
    b = cache.cached_model(checkpoints[1], runtime.file_sha256(checkpoints[1]), "cpu")
    assert b is not a


def test_cached_model_is_loaded_once_under_threads(checkpoints, monkeypatch):
    import xrecon.models.base

    calls = []
    real_load = xrecon.models.base.load
    monkeypatch.setattr(xrecon.models.base, "load", lambda *a, **k: calls.append(1) or real_load(*a, **k))
    sha = runtime.file_sha256(checkpoints[0])
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.cached_model(checkpoints[0], sha, "cpu")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(m is got[0] for m in got)


def test_cached_model_refuses_a_changed_file(checkpoints):
    path = checkpoints[0]
    with pytest.raises(CheckpointError, match="changed"):
        cache.cached_model(path, "0" * 64, "cpu")


def test_cached_model_drops_least_recently_used(checkpoints):
    models = [cache.cached_model(p, runtime.file_sha256(p), "cpu") for p in checkpoints]
    first = checkpoints[0]
    # the cache holds a few models: the first one was evicted and is loaded anew
    assert cache.cached_model(first, runtime.file_sha256(first), "cpu") is not models[0]
    assert cache.cached_model(checkpoints[-1], runtime.file_sha256(checkpoints[-1]), "cpu") is models[-1]


def test_cached_model_errors_for_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        cache.cached_model(tmp_path / "nope.xrecon", None, "cpu")


def test_model_lock_is_one_lock_per_model(checkpoints):
    a = cache.cached_model(checkpoints[0], None, "cpu")
    b = cache.cached_model(checkpoints[1], None, "cpu")
    lock = cache.model_lock(a)
    assert isinstance(lock, type(threading.Lock()))
    assert cache.model_lock(a) is lock and cache.model_lock(b) is not lock
    # the lock goes with its model: nothing kept for models that are gone
    other = torch.nn.Linear(1, 1)
    cache.model_lock(other)
    ref = weakref.ref(other)
    del other
    gc.collect()
    assert ref() is None and all(m is not None for m in cache._locks.keys())


def test_model_lock_serializes_calls():
    model = torch.nn.Linear(1, 1)
    active, most = [0], [0]
    guard = threading.Lock()

    def call() -> None:
        with cache.model_lock(model):
            with guard:
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.01)
            with guard:
                active[0] -= 1

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


# ------------------------------------------------------------------------------------------------
# the batch driver


def _affine(n: int = 11):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    x = np.random.default_rng(0).normal(size=(n, 3))  # float64: sent as float32
    with torch.no_grad():
        expected = net(torch.from_numpy(x.astype(np.float32))).numpy()
    return net, x, expected


@pytest.mark.parametrize("workers", [None, 1, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_predict_in_batches_fills_the_selected_rows(batch_size, workers):
    net, x, expected = _affine()
    rows = np.arange(len(x)) % 3 != 1
    seen = []

    def run(prepared, xb, mask):
        assert prepared == "shared" and xb.dtype == torch.float32 and mask.dtype == torch.bool
        assert torch.is_inference_mode_enabled() and not net.training
        seen.append(len(xb))
        return net(xb)

    out = np.full((len(x), 2), np.nan, np.float32)
    got = predict_in_batches(net, run, [x, rows.copy()], out, rows=rows, batch_size=batch_size, device="cpu",
                             workers=workers, prepare=lambda: "shared")
    assert got is out
    np.testing.assert_allclose(out[rows], expected[rows], rtol=1e-6)
    assert np.isnan(out[~rows]).all()
    assert max(seen) <= batch_size and sum(seen) == rows.sum()


def test_predict_in_batches_all_rows_and_none_inputs():
    net, x, expected = _affine()
    out = np.zeros((len(x), 2), np.float32)

    def run(_, xb, nothing):
        assert nothing is None
        return net(xb)

    predict_in_batches(net, run, [x, None], out, batch_size=4, device="cpu")
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_predict_in_batches_bf16_results_come_back_as_float32():
    net, x, expected = _affine()
    out = np.full((len(x), 2), np.nan, np.float32)
    predict_in_batches(net, lambda _, xb: net(xb).bfloat16(), [x], out, batch_size=4, device="cpu",
                       precision="bf16")
    np.testing.assert_allclose(out, expected, atol=0.05)


def test_predict_in_batches_restores_training_mode_and_moves_nothing_without_work():
    net, x, _ = _affine()
    net.train()
    calls = []
    out = np.full((len(x), 2), np.nan, np.float32)
    predict_in_batches(net, lambda *_: calls.append(1), [x], out, rows=np.zeros(len(x), bool), batch_size=2,
                       device="cpu", prepare=lambda: calls.append(1))
    assert calls == [] and net.training and np.isnan(out).all()

    def broken(_, xb):
        assert not net.training
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        predict_in_batches(net, broken, [x], out, batch_size=2, device="cpu", workers=2)
    assert net.training


def test_predict_in_batches_errors():
    net, x, _ = _affine()
    out = np.full((len(x), 2), np.nan, np.float32)
    kw = dict(batch_size=4, device="cpu")
    run = lambda _, xb: net(xb)  # noqa: E731
    with pytest.raises(XreconError, match="batch_size"):
        predict_in_batches(net, run, [x], out, batch_size=0, device="cpu")
    with pytest.raises(XreconError, match="precision"):
        predict_in_batches(net, run, [x], out, precision="fp8", **kw)
    with pytest.raises(XreconError, match="not a device"):
        predict_in_batches(net, run, [x], out, batch_size=4, device="gpu-please")
    with pytest.raises(XreconError, match="workers"):
        predict_in_batches(net, run, [x], out, workers=0, **kw)
    with pytest.raises(XreconError, match="rows"):
        predict_in_batches(net, run, [x], out, rows=np.arange(len(x)), **kw)
    with pytest.raises(XreconError, match="every input"):
        predict_in_batches(net, run, [x[:3]], out, **kw)
