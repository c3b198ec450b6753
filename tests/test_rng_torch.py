"""The torch port of the position-keyed random numbers (xrecon.rng_torch) against numpy's (xrecon.rng),
and RESTORE-DiT's per-tile noise computed on the model's device (xrecon.methods.restore_dit)."""

from __future__ import annotations

import numpy as np
import pytest

from xrecon.methods.restore_dit import tile_noise, tile_noise_torch
from xrecon.rng import hash_bits, hash_uniform

torch = pytest.importorskip("torch")

from xrecon.rng_torch import hash_bits_torch, hash_uniform_torch, normal_from_key  # noqa: E402

# seeds that reach every corner of int64: 0, small, negative, the extremes, and bit patterns with the
# top bit set (where an arithmetic right shift differs from numpy's logical one)
SEEDS = [0, 1, 7, -1, -123456789, 2**62, -(2**62), 2**63 - 1, -(2**63), 0x5D1, 987654321987]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _signed_view(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.int64)


@pytest.mark.parametrize("seed", SEEDS)
def test_bits_equal_numpy_for_many_positions(seed):
    rng = np.random.default_rng(abs(seed) % 2**32)
    # random 64-bit positions (all signs and magnitudes) and a dense run around 0
    idx = np.concatenate([rng.integers(-(2**63), 2**63 - 1, 20_000, dtype=np.int64, endpoint=True),
                          np.arange(-500, 500, dtype=np.int64)])
    got = hash_bits_torch(seed, torch.from_numpy(idx)).numpy()
    np.testing.assert_array_equal(got, _signed_view(hash_bits(seed, idx)))
    u = hash_uniform_torch(seed, torch.from_numpy(idx)).numpy()
    assert u.dtype == np.float64
    np.testing.assert_array_equal(u, hash_uniform(seed, idx))


@pytest.mark.parametrize("shape", [(3,), (4, 5), (2, 3, 4), (1, 6, 1, 7)])
def test_broadcast_indices_equal_numpy(shape):
    axes = [np.arange(n, dtype=np.int64).reshape([n if i == j else 1 for j in range(len(shape))]) - n // 2
            for i, n in enumerate(shape)]
    for seed in SEEDS[:5]:
        want = hash_bits(seed, np.array(3), *axes)
        got = hash_bits_torch(seed, torch.tensor(3), *(torch.from_numpy(a) for a in axes))
        assert tuple(got.shape) == want.shape == shape
        np.testing.assert_array_equal(got.numpy(), _signed_view(want))


def test_a_bad_port_would_fail():
    """The comparison can fail: the arithmetic shift of int64 without the mask differs for negative bits."""
    idx = torch.arange(-50, 50)
    bits = hash_bits_torch(5, idx)
    assert (bits < 0).any()  # top bits set: the masks matter
    assert not np.array_equal(hash_bits_torch(6, idx).numpy(), bits.numpy())
    arith = torch.bitwise_right_shift(bits, 11).to(torch.float64) * 2.0**-53
    assert not np.array_equal(arith.numpy(), hash_uniform(5, idx.numpy()))


@pytest.mark.parametrize("shape", [(1, 15, 3, 16, 16), (2, 4, 10, 8, 8), (3, 1, 1, 1, 5), (1, 2, 1, 32, 32)])
def test_tile_noise_equal_numpy_bit_for_bit(shape):
    for seed, ky, kx, window in [(0, 0, 0, 0), (3, -1, 2, 4), (-(2**61), 7, -3, 11), (2**62 - 5, 123, 456, 0)]:
        want = tile_noise(seed, ky, kx, window, shape)
        got = tile_noise_torch(seed, ky, kx, window, shape)
        assert got.dtype == torch.float32 and tuple(got.shape) == shape
        np.testing.assert_array_equal(got.numpy(), want)


def test_tile_noise_many_numbers_and_statistics():
    """A full-size tile's worth of numbers (about 2.5 million) equal, and a standard normal."""
    shape = (1, 15, 10, 128, 128)
    want = tile_noise(11, 2, -3, 5, shape)
    got = tile_noise_torch(11, 2, -3, 5, shape).numpy()
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {got.size} numbers differ"
    assert abs(float(want.mean())) < 5e-3 and abs(float(want.std()) - 1.0) < 5e-3


def test_normal_from_key_is_keyed():
    a, b = normal_from_key(1, 1000), normal_from_key(2, 1000)
    assert not torch.equal(a, b)
    assert torch.equal(normal_from_key(1, 10), a[:10])  # number i depends on (key, i) only


def test_fill_asks_for_noise_on_the_model_device(monkeypatch):
    """fill's kernel gets its noise through noise_on, for the model's device."""
    import tempfile

    import xrecon  # noqa: F401
    import xrecon.methods.restore_dit as adapter
    from xrecon.models import restore_dit
    from xrecon.testing import synthetic_cube

    devices = []
    original = adapter.noise_on

    def spy(device, *args):
        devices.append(device)
        return original(device, *args)

    monkeypatch.setattr(adapter, "noise_on", spy)
    config = restore_dit.RestoreDiTConfig(n_optical_bands=2, n_sar_bands=0, hidden_size=16, depth=1, num_heads=2,
                                          frequency_embedding_size=16)
    torch.manual_seed(0)
    model = restore_dit.RestoreDiT(config)
    model.optical_bands = ["B02", "B03"]
    ds = synthetic_cube(ny=8, nx=8, bands=2, seed=0, sar=False).isel(time=slice(0, 4)).compute()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(model.save(f"{tmp}/m.xrecon"))
        ds.recon.fill(None, method="restore-dit", checkpoint=ckpt, mask="clear", device="cpu", tile=8,
                      overlap=2, frames=4).compute()
    assert devices and all(torch.device(d).type == "cpu" for d in devices)


def test_noise_on_dispatches_by_device(monkeypatch):
    """The CPU takes numpy's hash, any other device torch's on that device (the meta device: shapes only)."""
    import xrecon.methods.restore_dit as adapter

    shape = (1, 2, 3, 4, 4)
    cpu = adapter.noise_on(torch.device("cpu"), 5, 1, 2, 0, shape)
    assert cpu.dtype == torch.float32 and np.array_equal(cpu.numpy(), tile_noise(5, 1, 2, 0, shape))
    calls = []
    monkeypatch.setattr(adapter, "tile_noise_torch", lambda *a: calls.append(a[-1]) or torch.zeros(shape))
    monkeypatch.setattr(adapter, "tile_noise", lambda *a: (_ for _ in ()).throw(AssertionError("numpy used")))
    adapter.noise_on("meta", 5, 1, 2, 0, shape)
    assert calls == ["meta"]


def test_torch_noise_runs_on_another_device():
    """The torch hash itself on a device without data (meta): every op exists there, shapes carry."""
    z = tile_noise_torch(5, 1, 2, 0, (1, 2, 3, 4, 4), "meta")
    assert z.device.type == "meta" and tuple(z.shape) == (1, 2, 3, 4, 4) and z.dtype == torch.float32


@cuda
def test_cuda_noise_equals_cpu():
    shape = (2, 15, 10, 64, 64)
    want = tile_noise(4, 1, 1, 0, shape)
    got = tile_noise_torch(4, 1, 1, 0, shape, "cuda")
    assert got.device.type == "cuda"
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    idx = np.arange(-1000, 1000, dtype=np.int64)
    np.testing.assert_array_equal(hash_bits_torch(9, torch.from_numpy(idx).cuda()).cpu().numpy(),
                                  _signed_view(hash_bits(9, idx)))
