"""Give freed memory back to the operating system between blocks, where the C allocator allows it.

glibc's ``malloc`` keeps memory freed by ``free`` inside the process unless the top of a heap is free
beyond ``M_TRIM_THRESHOLD``, and raises its mmap threshold (above which large arrays are mapped and
unmapped on their own) up to 32 MiB after the first large array is freed. A fill's blocks free a few
large arrays of a few MiB each per block, in several threads (each thread with its own arena), so the
resident size of a long threaded fill creeps up with the cube's area although nothing is held. dask's
distributed workers fight the same by calling ``malloc_trim`` through ctypes; :func:`trim` does that
after each block of ``fill`` and each region ``write_zarr`` writes.

Where the C library is not glibc (macOS, Windows, musl) :func:`trim` does nothing and returns False.
Set the environment variable ``XRECON_TRIM=0`` to turn it off (read at each call).

Examples
--------
>>> trimmed = trim()          # True where glibc gave memory back (or could have), False elsewhere
>>> isinstance(trimmed, bool)
True
>>> with trimming():          # trims when the block ends
...     pass
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["trim", "trim_available", "trimming"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "fn": the C function or None, once looked up


def _malloc_trim():  # -> ctypes function or None
    """glibc's ``malloc_trim``, looked up once; None where there is none."""
    with _lock:
        if "fn" not in _state:
            _state["fn"] = _lookup()
        return _state["fn"]


def _lookup():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim  # AttributeError on musl and other C libraries without it
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def enabled() -> bool:
    """Whether trimming is on: the default, unless ``XRECON_TRIM`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get("XRECON_TRIM", "1").strip().lower() not in ("0", "false", "no", "off")


def trim_available() -> bool:
    """Whether this platform's C library has ``malloc_trim`` (glibc on Linux)."""
    return _malloc_trim() is not None


def trim() -> bool:
    """Return the memory the C allocator holds free to the system (glibc ``malloc_trim(0)``).

    Returns True when trimming ran, False where it is off (``XRECON_TRIM=0``) or not available; it never
    raises and changes no data, only the process's resident size.
    """
    if not enabled():
        return False
    fn = _malloc_trim()
    if fn is None:
        return False
    try:
        fn(0)
    except Exception:  # noqa: BLE001  (a foreign function: whatever happens, memory is only not trimmed)
        return False
    return True


@contextmanager
def trimming() -> Iterator[None]:
    """Run the block, then :func:`trim` (also when it raises)."""
    try:
        yield
    finally:
        trim()
