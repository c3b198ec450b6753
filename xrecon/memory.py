"""Keep the resident size of a long threaded fill flat, where the C allocator allows it (glibc).

What ``fill`` and dask hold is flat in the cube's area, but glibc's ``malloc`` keeps memory that was freed:

- each thread that allocates while another holds the main arena gets an arena of its own, and memory
  freed at the top of a thread arena's heap is given back only when it exceeds the trim threshold (which
  glibc raises, with its mmap threshold, up to 32-64 MiB as large arrays come and go); ``malloc_trim``
  does not shrink those heaps either. With dask's worker threads each taking arenas, the resident size
  of a fill crept up with the number of chunks (1.44-1.50x from 1x to 16x the area, 2 threads);
- freed chunks in the middle of a heap stay resident until ``malloc_trim`` gives their pages back.

So, once per process (at the first :func:`prepare`, which ``fill`` calls when it builds a graph), the
number of arenas is limited to one (``mallopt(M_ARENA_MAX, 1)``, what ``MALLOC_ARENA_MAX=1`` does:
numpy allocates few, large blocks, so threads hardly wait for each other), unless the environment already
sets ``MALLOC_ARENA_MAX``; and after a block of ``fill`` or a region write :func:`maybe_trim` calls
``malloc_trim(0)`` when the resident size has grown by more than :data:`TRIM_GROWTH` since the last trim
(trimming after every block would make every block fault its memory in again: about 10-30 % slower).
dask's distributed workers call ``malloc_trim`` through ctypes in the same way.

Threads that already have arenas of their own keep them: a dask thread pool made before the first fill
(by another computation) is not affected by the arena limit, only by the trims.

Where the C library is not glibc (macOS, Windows, musl) all of this does nothing. Set the environment
variable ``XRECON_TRIM=0`` to turn it off (read at each call).

Examples
--------
>>> isinstance(trim(), bool)   # True where glibc trimmed, False elsewhere or when switched off
True
>>> with trimming():           # trims (if memory grew) when the block ends
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

__all__ = ["TRIM_GROWTH", "maybe_trim", "prepare", "resident_bytes", "trim", "trim_available", "trimming"]

#: Growth of the resident size (bytes) since the last trim above which :func:`maybe_trim` trims.
TRIM_GROWTH = 32 * 2**20
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)

_lock = threading.Lock()
_state: dict[str, object] = {}  # "libc": the C library or None, once looked up; "last": RSS after the last trim


def _libc():  # -> ctypes.CDLL or None
    """The C library when it is glibc (it has ``malloc_trim`` and ``mallopt``), looked up once; else None."""
    with _lock:
        if "libc" not in _state:
            _state["libc"] = _lookup()
        return _state["libc"]


def _lookup():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim_fn, opt_fn = libc.malloc_trim, libc.mallopt  # AttributeError on musl and other C libraries
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
    except (OSError, AttributeError):
        return None
    trim_fn.argtypes, trim_fn.restype = [ctypes.c_size_t], ctypes.c_int
    opt_fn.argtypes, opt_fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


def enabled() -> bool:
    """Whether this module acts: the default, unless ``XRECON_TRIM`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get("XRECON_TRIM", "1").strip().lower() not in ("0", "false", "no", "off")


def trim_available() -> bool:
    """Whether this platform's C library is glibc, with ``malloc_trim`` and ``mallopt``."""
    return _libc() is not None


def resident_bytes() -> int | None:
    """This process's resident size in bytes (Linux ``/proc/self/statm``), None where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def prepare() -> bool:
    """Once per process: limit glibc to one malloc arena, unless ``MALLOC_ARENA_MAX`` is set or this module
    is switched off. Returns True when the limit is (or was already) set by this call or an earlier one."""
    if not enabled() or "MALLOC_ARENA_MAX" in os.environ:
        return False
    with _lock:
        if "arenas" in _state:
            return bool(_state["arenas"])
    libc = _libc()
    ok = False
    if libc is not None:
        try:
            ok = bool(libc.mallopt(_M_ARENA_MAX, 1))
        except Exception:  # noqa: BLE001  (a foreign function: at worst the arenas are not limited)
            ok = False
    with _lock:
        _state["arenas"] = ok
    return ok


def trim() -> bool:
    """Return the memory the C allocator holds free to the system (glibc ``malloc_trim(0)``), now.

    Returns True when trimming ran, False where it is off (``XRECON_TRIM=0``) or not available; it never
    raises and changes no data, only the process's resident size.
    """
    if not enabled():
        return False
    libc = _libc()
    if libc is None:
        return False
    try:
        libc.malloc_trim(0)
    except Exception:  # noqa: BLE001  (a foreign function: whatever happens, memory is only not trimmed)
        return False
    with _lock:
        _state["last"] = resident_bytes()
    return True


def maybe_trim(growth: int | None = None) -> bool:
    """:func:`trim` when the resident size grew by more than ``growth`` bytes (default :data:`TRIM_GROWTH`)
    since the last trim (or since the first call). Returns whether it trimmed."""
    if not enabled() or _libc() is None:
        return False
    now = resident_bytes()
    with _lock:
        last = _state.get("last")
        if last is None:
            _state["last"] = now
    if now is None or last is None or now - last <= (TRIM_GROWTH if growth is None else growth):
        return False
    return trim()


@contextmanager
def trimming() -> Iterator[None]:
    """Run the block, then :func:`maybe_trim` (also when it raises)."""
    try:
        yield
    finally:
        maybe_trim()
