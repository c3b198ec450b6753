"""Where models run: device choice, numeric precision, file hashes and a per-process model cache.

A dask graph carries only small, hashable specifications of a model (the checkpoint path and its
sha256), never the model itself. Each worker process loads the model once through
:func:`cached_model` and reuses it for every block it computes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from xrecon.errors import CheckpointError, XreconError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "PRECISIONS",
    "autocast",
    "cached_model",
    "clear_model_cache",
    "file_sha256",
    "resolve_device",
    "resolve_precision",
]

#: Numeric precisions accepted by the neural models, and the torch dtype of their matrix products.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Models kept per process. Small: a worker computes blocks of one or two models at a time.
_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, str, str], nn.Module] = OrderedDict()
_cache_lock = threading.Lock()


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


def cached_model(path: str | os.PathLike, sha256: str | None, device: str | torch.device | None = None) -> nn.Module:
    """A model loaded from an xrecon checkpoint, once per process, path, content and device.

    This is what a dask block function calls: the graph holds ``(path, sha256)``, every task in a
    worker process gets the same model object (least recently used models are dropped beyond a few).
    The model is in eval mode and must be treated as read-only; calling its ``predict_pixels`` from
    several threads at once is safe.

    Parameters
    ----------
    path
        An xrecon checkpoint (see :func:`xrecon.models.load`).
    sha256
        The file's sha256 as recorded when the graph was built (:func:`file_sha256`). The file is
        hashed again when it is first loaded in a process, so a checkpoint replaced between building
        and computing the graph raises instead of silently giving other results. ``None`` skips the
        check (the key is then the path only).
    device
        As for :func:`resolve_device`.

    Raises
    ------
    CheckpointError
        If the file is missing, is not an xrecon checkpoint, or no longer has the given sha256.

    Examples
    --------
    >>> from xrecon.runtime import cached_model, file_sha256   # doctest: +SKIP
    >>> model = cached_model("model.xrecon", file_sha256("model.xrecon"), "cpu")  # doctest: +SKIP
    """
    from xrecon.models import load  # late: xrecon.models imports this module

    dev = resolve_device(device)
    key = (os.path.abspath(os.fspath(path)), sha256 or "", str(dev))
    # One lock for the whole load: with dask's threaded scheduler many tasks start at once, and
    # each would otherwise read and build the same model.
    with _cache_lock:
        model = _cache.get(key)
        if model is not None:
            _cache.move_to_end(key)
            return model
        if sha256 is not None:
            actual = file_sha256(path)
            if actual != sha256.lower():
                raise CheckpointError(
                    f"checkpoint {Path(path).name!r} changed: its sha256 is {actual[:12]}..., "
                    f"expected {sha256[:12]}... (recompute the graph with the current file)"
                )
        model = load(path, device=dev)
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return model


def clear_model_cache() -> None:
    """Forget every model held by :func:`cached_model` in this process (frees their memory)."""
    with _cache_lock:
        _cache.clear()
