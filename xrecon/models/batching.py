"""Numpy in, numpy out: running a network over many rows (pixels, patches) in batches.

What every ``predict_*`` method of an xrecon network shares, whatever the network computes: the
model moved to the device and put in eval mode for the call, torch's inference mode and autocast,
numpy rows sent to the device batch by batch, results written into a preallocated array, rows
without anything to predict from skipped, and batches run in this thread or in single-threaded
worker threads. A network supplies only what it does to one batch.

Examples
--------
>>> import numpy as np, torch
>>> from xrecon.models.batching import predict_in_batches
>>> net = torch.nn.Linear(3, 2)
>>> x = np.ones((10, 3), "float32")
>>> out = np.full((10, 2), np.nan, "float32")
>>> y = predict_in_batches(net, lambda _, xb: net(xb), [x], out, batch_size=4, device="cpu")
>>> y is out, bool(np.isfinite(y).all())
(True, True)
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xrecon.errors import XreconError
from xrecon.runtime import autocast, resolve_device, resolve_precision

__all__ = ["predict_in_batches"]

# numpy has no bfloat16, and results go back to numpy
_HALF = (torch.bfloat16, torch.float16)


def predict_in_batches(
    model: nn.Module,
    run_batch: Callable[..., Tensor],
    inputs: Sequence[np.ndarray | None],
    out: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    batch_size: int,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    workers: int | None = None,
    prepare: Callable[[], Any] | None = None,
) -> np.ndarray:
    """Fill ``out`` row by row: ``out[b] = run_batch(prepared, *(x[b] for x in inputs))`` per batch ``b``.

    In order: the device, precision and batch size are checked; if there is nothing to compute
    (no row selected, or ``out`` empty) ``out`` is returned untouched and so is the model; otherwise
    the model is moved to ``device`` if it is elsewhere (and stays there), put in eval mode for the
    call if it was training (and put back after, also on errors; a model already in eval mode, such
    as a cached one shared by threads, is not touched), ``prepare`` runs once, and then every batch.

    Parameters
    ----------
    model
        The network. Only moved and switched to eval mode here; ``run_batch`` calls it.
    run_batch
        ``run_batch(prepared, *tensors) -> Tensor``: one batch of ``b`` rows to a tensor that fits
        ``out[rows of the batch]`` (``(b, ...)``). ``tensors`` are the batch's rows of ``inputs`` on
        ``device`` (``None`` stays ``None``), floating arrays as float32, others in their own dtype.
        It runs under :func:`torch.inference_mode` and :func:`xrecon.runtime.autocast` in
        ``precision`` (which lowers matrix products only; element-wise pre- and post-processing
        keeps its float32), in several threads at once with ``workers``.
    inputs
        Arrays whose first axis is the row (``len(out)`` rows each), or ``None``.
    out
        The preallocated result, ``(N, ...)``; rows not computed keep their values (e.g. NaN).
        Half-precision results are written as float32.
    rows : array of bool (N,), optional
        Rows to compute (e.g. pixels with at least one valid observation); ``None`` = all.
    batch_size
        Rows per batch.
    device
        As for :func:`xrecon.runtime.resolve_device`.
    precision : {"fp32", "bf16", "fp16"}
        As for :func:`xrecon.runtime.resolve_precision`.
    workers : int, optional
        CPU only (ignored on a GPU). ``None`` or 1: batches one after another in this thread, each
        op on torch's intra-op threads. ``k > 1``: ``k`` threads each run whole batches on one torch
        thread; meanwhile threads that start using torch inherit one intra-op thread (torch keeps
        that setting process-wide).
    prepare
        ``prepare() -> prepared``, called once with the model on ``device`` and in eval mode, under
        inference mode (not autocast): what the batches share, such as date encodings. Its result is
        ``run_batch``'s first argument (``None`` without ``prepare``).

    Returns
    -------
    numpy.ndarray
        ``out``.

    Raises
    ------
    XreconError
        For an unknown device or precision, a ``batch_size`` that is not a positive integer, a
        ``workers`` that is neither ``None`` nor a positive integer (checked when batches run),
        inputs with another number of rows than ``out``, or ``rows`` not a boolean ``(N,)`` mask.
        An error in ``run_batch`` or ``prepare`` is raised as it is.

    Examples
    --------
    Rows 1 and 3 have nothing to predict from and stay NaN; the statistics are shared by the
    batches through ``prepare``:

    >>> import numpy as np, torch
    >>> from xrecon.models.batching import predict_in_batches
    >>> net = torch.nn.Linear(3, 2)
    >>> x = np.arange(15, dtype="float64").reshape(5, 3)
    >>> out = np.full((5, 2), np.nan, "float32")
    >>> def run(scale, xb):
    ...     return net(xb / scale)
    >>> y = predict_in_batches(net, run, [x], out, rows=np.array([True, False, True, False, True]),
    ...                        batch_size=2, device="cpu", prepare=lambda: torch.tensor(10.0))
    >>> np.isnan(y).any(axis=1).tolist()
    [False, True, False, True, False]
    """
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise XreconError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = out.shape[0]
    for x in inputs:
        if x is not None and x.shape[0] != n:
            raise XreconError(f"every input must have {n} rows, as out has; got shape {x.shape}")
    if rows is not None:
        rows = np.asarray(rows)
        if rows.dtype != bool or rows.shape != (n,):
            raise XreconError(f"rows must be a boolean mask of the {n} rows, got {rows.dtype} {rows.shape}")
    todo = None if rows is None else np.flatnonzero(rows)
    count = n if todo is None else todo.size
    if count == 0 or out.size == 0:
        return out
    if todo is not None and todo.size == n:
        todo = None  # every row: slices, no copies
    if todo is None:
        batches: list[slice | np.ndarray] = [slice(i, i + batch_size) for i in range(0, n, batch_size)]
    else:
        batches = [todo[i:i + batch_size] for i in range(0, todo.size, batch_size)]
    # float32 for floating inputs (float64 arrays are accepted), decided once rather than per batch
    as_dtype = [None if x is None else (np.float32 if np.issubdtype(x.dtype, np.floating) else x.dtype)
                for x in inputs]

    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is not None and first.device != dev:
        model.to(dev)
    was_training = model.training
    if was_training:  # a cached model shared by threads is in eval mode already: leave it untouched
        model.eval()
    try:
        prepared = None
        if prepare is not None:
            with torch.inference_mode():
                prepared = prepare()

        def run(batch: slice | np.ndarray) -> None:
            tensors = [None if x is None else torch.from_numpy(np.ascontiguousarray(x[batch], dtype=t)).to(dev)
                       for x, t in zip(inputs, as_dtype, strict=True)]
            with autocast(dev, dtype):
                y = run_batch(prepared, *tensors)
            if y.dtype in _HALF:
                y = y.float()
            out[batch] = y.cpu().numpy()

        _run_batches(batches, run, workers if dev.type == "cpu" else None)
    finally:
        if was_training:
            model.train()
    return out


def _run_batches(batches: list, run: Callable[[Any], None], workers: int | None) -> None:
    """``run`` every batch under inference mode: in this thread, or in ``workers`` single-threaded workers."""
    if workers is not None and (not isinstance(workers, int | np.integer) or workers < 1):
        raise XreconError(f"workers must be a positive integer or None, got {workers!r}")
    if not workers or workers == 1 or len(batches) < 2:
        with torch.inference_mode():
            for rows in batches:
                run(rows)
        return
    threads = torch.get_num_threads()
    todo = iter(batches)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        torch.set_num_threads(1)  # this thread's ops run on it alone
        try:
            with torch.inference_mode():  # thread-local, as is autocast
                while not errors:
                    with lock:
                        rows = next(todo, None)
                    if rows is None:
                        return
                    run(rows)
        except BaseException as err:  # re-raised in the caller
            errors.append(err)
        finally:
            torch.set_num_threads(threads)  # give later threads torch's setting back

    pool = [threading.Thread(target=worker, name=f"xrecon-batch-{i}") for i in range(min(workers, len(batches)))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
