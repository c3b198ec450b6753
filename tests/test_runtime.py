"""Device choice, precision, file hashes and the per-process model cache."""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch

from xrecon import runtime
from xrecon.errors import CheckpointError, XreconError
from xrecon.models import anytimeformer as af

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


@pytest.fixture
def checkpoints(tmp_path):
    runtime.clear_model_cache()
    paths = []
    for seed in range(6):
        torch.manual_seed(seed)
        paths.append(af.AnytimeFormer(af.AnytimeFormerConfig(**TINY)).save(tmp_path / f"m{seed}.xrecon"))
    yield paths
    runtime.clear_model_cache()


def test_cached_model_loads_once_per_key(checkpoints):
    path = checkpoints[0]
    sha = runtime.file_sha256(path)
    a = runtime.cached_model(path, sha, "cpu")
    assert runtime.cached_model(str(path), sha, torch.device("cpu")) is a
    assert not a.training and a.device.type == "cpu"
    b = runtime.cached_model(checkpoints[1], runtime.file_sha256(checkpoints[1]), "cpu")
    assert b is not a


def test_cached_model_is_loaded_once_under_threads(checkpoints, monkeypatch):
    import xrecon.models

    calls = []
    real_load = xrecon.models.load
    monkeypatch.setattr(xrecon.models, "load", lambda *a, **k: calls.append(1) or real_load(*a, **k))
    sha = runtime.file_sha256(checkpoints[0])
    got = []
    threads = [threading.Thread(target=lambda: got.append(runtime.cached_model(checkpoints[0], sha, "cpu")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(m is got[0] for m in got)


def test_cached_model_refuses_a_changed_file(checkpoints):
    path = checkpoints[0]
    with pytest.raises(CheckpointError, match="changed"):
        runtime.cached_model(path, "0" * 64, "cpu")


def test_cached_model_drops_least_recently_used(checkpoints):
    models = [runtime.cached_model(p, runtime.file_sha256(p), "cpu") for p in checkpoints]
    first = checkpoints[0]
    # the cache holds a few models: the first one was evicted and is loaded anew
    assert runtime.cached_model(first, runtime.file_sha256(first), "cpu") is not models[0]
    assert runtime.cached_model(checkpoints[-1], runtime.file_sha256(checkpoints[-1]), "cpu") is models[-1]


def test_cached_model_errors_for_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        runtime.cached_model(tmp_path / "nope.xrecon", None, "cpu")
