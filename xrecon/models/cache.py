"""Models kept per process, and one lock per kept model.

A dask graph carries only small, hashable specifications of a model (the checkpoint path and its
sha256), never the model itself. Each worker process loads the model once through
:func:`cached_model` and reuses it for every block it computes; :func:`model_lock` lets the blocks
of one process take turns on it.

Examples
--------
>>> import os, tempfile, xrecon.models
>>> from xrecon.models.cache import cached_model, clear_model_cache, model_lock
>>> from xrecon.runtime import file_sha256
>>> path = xrecon.models.get_model("anytimeformer", d_model=32, d_inner=16).save(
...     os.path.join(tempfile.mkdtemp(), "tiny.xrecon"))
>>> model = cached_model(path, file_sha256(path), "cpu")
>>> with model_lock(model):
...     pass  # model.predict_pixels(...)
>>> clear_model_cache()
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from xrecon.errors import CheckpointError
from xrecon.models import base
from xrecon.runtime import file_sha256, resolve_device

if TYPE_CHECKING:
    from xrecon.models.base import XreconModel

__all__ = ["cached_model", "clear_model_cache", "model_lock"]

# Models kept per process. Small: a worker computes blocks of one or two models at a time.
_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, str, str], XreconModel] = OrderedDict()
_cache_lock = threading.Lock()

# Keyed by the model object itself, held weakly: a lock lives exactly as long as its model, so a model
# dropped from the cache takes its lock along, and a new model cannot inherit an old one's lock (as an
# ``id()`` reused after garbage collection could).
_locks: weakref.WeakKeyDictionary[object, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def cached_model(path: str | os.PathLike, sha256: str | None, device: str | torch.device | None = None) -> XreconModel:
    """A model loaded from an xrecon checkpoint, once per process, path, content and device.

    This is what a dask block function calls: the graph holds ``(path, sha256)``, every task in a
    worker process gets the same model object (least recently used models are dropped beyond a few).
    The model is in eval mode and must be treated as read-only; calling its ``predict_pixels`` from
    several threads at once is safe (:func:`model_lock` makes them take turns).

    Parameters
    ----------
    path
        An xrecon checkpoint (see :func:`xrecon.models.load`).
    sha256
        The file's sha256 as recorded when the graph was built (:func:`xrecon.runtime.file_sha256`).
        The file is hashed again when it is first loaded in a process, so a checkpoint replaced
        between building and computing the graph raises instead of silently giving other results.
        ``None`` skips the check (the key is then the path only).
    device
        As for :func:`xrecon.runtime.resolve_device`.

    Returns
    -------
    XreconModel
        In eval mode, on ``device``; the same object for every call with the same key.

    Raises
    ------
    CheckpointError
        If the file is missing, is not an xrecon checkpoint, or no longer has the given sha256.

    Examples
    --------
    >>> import os, tempfile, xrecon.models
    >>> from xrecon.models.cache import cached_model, clear_model_cache
    >>> from xrecon.runtime import file_sha256
    >>> path = xrecon.models.get_model("anytimeformer", d_model=32, d_inner=16).save(
    ...     os.path.join(tempfile.mkdtemp(), "tiny.xrecon"))
    >>> sha = file_sha256(path)
    >>> cached_model(path, sha, "cpu") is cached_model(path, sha, "cpu")
    True
    >>> clear_model_cache()
    """
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
        model = base.load(path, device=dev)  # looked up at call time: a test may count the loads
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return model


def clear_model_cache() -> None:
    """Forget every model held by :func:`cached_model` in this process (frees their memory).

    Models still in use elsewhere stay valid, and so do their :func:`model_lock` locks.

    Examples
    --------
    >>> from xrecon.models.cache import clear_model_cache
    >>> clear_model_cache()
    """
    with _cache_lock:
        _cache.clear()


def model_lock(model: object) -> threading.Lock:
    """The lock of ``model`` in this process: one network call at a time per process and model.

    torch already spreads one call over all cores (or the GPU); calls from several of dask's threads
    at once would only oversubscribe them. Hold this lock around each call on a shared model, such as
    one from :func:`cached_model`.

    Parameters
    ----------
    model
        Any object that accepts weak references (every ``torch.nn.Module`` does).

    Returns
    -------
    threading.Lock
        The same lock for the same object for as long as the object lives; a different one for
        every other object.

    Examples
    --------
    >>> from torch import nn
    >>> from xrecon.models.cache import model_lock
    >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> model_lock(a) is model_lock(a), model_lock(a) is model_lock(b)
    (True, False)
    >>> with model_lock(a):
    ...     y = a.weight.sum()
    """
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.Lock()
        return lock
