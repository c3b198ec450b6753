"""The position-keyed random numbers of :mod:`xrecon.rng`, computed in torch on any device.

A method that runs a network on a GPU should not hash its noise on the CPU and copy it over: for
RESTORE-DiT the numpy hash of one 128-px tile of 15 frames costs more than the network's own work on a
GPU. These functions compute the same numbers as :func:`xrecon.rng.hash_bits` and
:func:`xrecon.rng.hash_uniform` with torch's integer operations, on the device asked for.

torch has no unsigned 64-bit arithmetic that works on every device, so the splitmix64 rounds run on
``int64`` tensors: addition, multiplication and XOR of two's-complement integers give the same 64 bits as
their unsigned counterparts (both wrap modulo 2**64); only the right shift differs (torch's is
arithmetic, copying the sign bit), so each shift is followed by a mask that clears the bits it copied.
The constants above 2**63 are written as the negative int64 with the same bits.

The bits and the uniforms are the same as numpy's exactly. Normal numbers (:func:`normal_from_key`, Box-
Muller in float64 as in :func:`xrecon.methods.restore_dit.tile_noise`, rounded to float32) go through
``log1p`` and ``cos``, which numpy and torch take from different maths libraries: in float64 they differ in
the last bit for a few per cent of the numbers, which changes the float32 result only where the float64
value lies within that last bit of a float32 rounding boundary (about one number in 10**9); the tests
compare millions of numbers bit for bit.

Examples
--------
>>> import numpy as np, torch
>>> from xrecon.rng import hash_uniform
>>> idx = np.arange(5)
>>> bool(np.array_equal(hash_uniform_torch(3, torch.arange(5)).numpy(), hash_uniform(3, idx)))
True
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xrecon.rng import _splitmix

__all__ = ["hash_bits_torch", "hash_uniform_torch", "normal_from_key"]


def _signed(v: int) -> int:
    """The int64 with the bits of the uint64 ``v``."""
    return v - (1 << 64) if v >= 1 << 63 else v


_M1 = _signed(0x9E3779B97F4A7C15)
_M2 = _signed(0xBF58476D1CE4E5B9)
_M3 = _signed(0x94D049BB133111EB)


def _splitmix_(z: torch.Tensor) -> torch.Tensor:
    """One splitmix64 round of an int64 tensor (seen as uint64), in place; returns ``z``."""
    tmp = torch.empty_like(z)
    z.add_(_M1)
    for shift, mult in ((30, _M2), (27, _M3)):
        torch.bitwise_right_shift(z, shift, out=tmp)
        tmp.bitwise_and_((1 << (64 - shift)) - 1)  # a logical shift: clear the copied sign bits
        z.bitwise_xor_(tmp)
        z.mul_(mult)
    torch.bitwise_right_shift(z, 31, out=tmp)
    tmp.bitwise_and_((1 << 33) - 1)
    z.bitwise_xor_(tmp)
    return z


def _seed_round(seed: int) -> int:
    """The seed's splitmix round (a scalar, computed once in numpy), as an int64."""
    with np.errstate(over="ignore"):
        z = _splitmix(np.asarray(int(seed), dtype=np.int64).view(np.uint64))
    return int(np.asarray(z, dtype=np.uint64).view(np.int64))


def hash_bits_torch(seed: int, *indices: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`xrecon.rng.hash_bits` in torch: int64 tensor with the 64 bits of numpy's uint64 result.

    ``indices`` are integer tensors (or ints), broadcast together; the result is on ``device`` (default:
    the first tensor index's device, else the CPU).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from xrecon.rng import hash_bits
    >>> bits = hash_bits_torch(0, torch.arange(3)[:, None], torch.arange(4))
    >>> bool(np.array_equal(bits.numpy().view(np.uint64), hash_bits(0, np.arange(3)[:, None], np.arange(4))))
    True
    """
    if device is None:
        device = next((i.device for i in indices if isinstance(i, torch.Tensor)), torch.device("cpu"))
    z = torch.tensor(_seed_round(seed), dtype=torch.int64, device=device)
    for idx in indices:
        z = _splitmix_(torch.bitwise_xor(z, torch.as_tensor(idx, dtype=torch.int64, device=device)))
    return z


def _to_uniform_(bits: torch.Tensor) -> torch.Tensor:
    """The top 53 bits of int64 ``bits`` (seen as uint64) as float64 in [0, 1), as numpy's ``hash_uniform``."""
    bits = torch.bitwise_right_shift(bits, 11).bitwise_and_((1 << 53) - 1)
    return bits.to(torch.float64).mul_(2.0**-53)  # exact: below 2**53


def hash_uniform_torch(seed: int, *indices: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`xrecon.rng.hash_uniform` in torch: float64 in [0, 1), equal to numpy's bit for bit."""
    return _to_uniform_(hash_bits_torch(seed, *indices, device=device))


def normal_from_key(key: int, n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` standard normal float32 numbers keyed on ``key``: number ``i`` is Box-Muller over the uniforms of
    (``key``, ``2 i``) and (``key``, ``2 i + 1``), computed in float64 on ``device`` (the numbers of
    :func:`xrecon.methods.restore_dit.tile_noise` before its reshape)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    z0 = _seed_round(key)
    lin = torch.arange(0, 2 * n, 2, dtype=torch.int64, device=device)
    u1 = _to_uniform_(_splitmix_(lin.bitwise_xor(z0)))
    u2 = _to_uniform_(_splitmix_(lin.add_(1).bitwise_xor_(z0)))
    # sqrt(-2 log1p(-u1)) cos(2 pi u2), in the order numpy computes it (each step rounded as there)
    u1.neg_().log1p_().mul_(-2.0).sqrt_()
    u2.mul_(2.0 * math.pi).cos_()
    return u1.mul_(u2).to(torch.float32)
