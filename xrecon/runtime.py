"""Where models run: device choice, numeric precision and file hashes.

This module imports nothing from :mod:`xrecon.models` (which builds on it). The per-process model
cache is :mod:`xrecon.models.cache`; the old names ``xrecon.runtime.cached_model`` and
``xrecon.runtime.clear_model_cache`` are gone (importing them from here made an import circle), and
asking for them says where they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from xrecon.errors import CheckpointError, XreconError

__all__ = [
    "PRECISIONS",
    "autocast",
    "default_threads",
    "file_sha256",
    "resolve_device",
    "resolve_precision",
    "usable_cpus",
]

#: Numeric precisions accepted by the neural models, and the torch dtype of their matrix products.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Names that moved to xrecon.models.cache, served by __getattr__ below for existing callers.
_MOVED_TO_CACHE = ("cached_model", "clear_model_cache")


#: Environment variables by which a user sets the threads of torch's CPU kernels: when one is set,
#: :func:`default_threads` keeps torch's setting.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """Torch threads for training on a CPU when none are asked for: half the usable CPUs, at least one.

    At most torch's current setting, and torch's setting itself when ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` is set. Why half: torch's own default (every core) is fastest only on an idle
    machine, and loses badly as soon as anything else runs, because its threads wait for each other
    at every operation. On the project's 2-core machine (``benchmarks/train_threads.py``, see
    docs/training.md) two threads trained 1.5x faster than one when nothing else ran, and 3x
    (AnytimeFormer) to 14x (RESTORE-DiT) slower beside one busy process, which one thread hardly
    noticed. Pass ``threads=`` (``xrecon train --threads``) on an idle machine of your own.
    """
    if any(os.environ.get(name) for name in THREAD_ENV):
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), usable_cpus() // 2))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to compute on.

    Parameters
    ----------
    device
        ``None`` picks ``"cuda"`` when a GPU is available and ``"cpu"`` otherwise; a string such as
        ``"cpu"``, ``"cuda"`` or ``"cuda:1"``, or a :class:`torch.device`, is checked and returned.

    Returns
    -------
    torch.device
        With an explicit index for CUDA (``"cuda"`` becomes ``cuda:<current device>``).

    Raises
    ------
    XreconError
        For a device string torch does not understand, or a CUDA device on a machine without one.

    Examples
    --------
    >>> from xrecon.runtime import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise XreconError(f"device={device!r} is not a device torch knows; expected e.g. 'cpu' or 'cuda'") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise XreconError(f"device={device!r} asks for CUDA but this machine has no usable CUDA GPU; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise XreconError(
                f"device={device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        # "cuda" and "cuda:0" are the same GPU: give one spelling so cache keys and comparisons agree
        dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of matrix products for ``precision`` ("fp32", "bf16" or "fp16") on ``device``.

    fp16 is offered on GPUs only: CPUs without AMX-FP16 run it slower than fp32 and with more error
    than bf16.

    Examples
    --------
    >>> import torch
    >>> from xrecon.runtime import resolve_precision
    >>> resolve_precision("bf16", torch.device("cpu"))
    torch.bfloat16
    """
    if precision not in PRECISIONS:
        raise XreconError(f"precision={precision!r} is not one of {sorted(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise XreconError("precision='fp16' is for GPUs; on a CPU use 'bf16' (fast with AMX) or 'fp32'")
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision for matrix products in ``dtype``; a no-op for fp32.

    Layer norms, softmax and reductions stay in fp32 under torch's autocast rules.
    """
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def file_sha256(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks so large checkpoints need little memory.

    Examples
    --------
    >>> import tempfile
    >>> from xrecon.runtime import file_sha256
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> file_sha256(f.name)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk_size):
                digest.update(block)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint file not found: {os.fspath(path)!r}") from err
    return digest.hexdigest()


def __getattr__(name: str) -> Any:
    """The model cache's old names say where the functions are now (PEP 562).

    Examples
    --------
    >>> import xrecon.runtime
    >>> xrecon.runtime.cached_model  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AttributeError: xrecon.runtime.cached_model moved to xrecon.models.cache.cached_model: ...
    """
    if name in _MOVED_TO_CACHE:
        raise AttributeError(f"xrecon.runtime.{name} moved to xrecon.models.cache.{name}: use "
                             f"`from xrecon.models.cache import {name}`")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
