"""Reading cubes and writing results: all or nothing, never over what xrecon did not write, resumable.

A local write of ``OUT`` works beside it, in the same folder (so the last step is one rename):

- ``.OUT.xrecon-lock``: claims ``OUT``, created atomically (``O_CREAT | O_EXCL``) with the writer's pid,
  host and start time; a second writer is refused (:class:`OutputLockedError`), a lock whose process is
  gone (same host) is stale and taken over;
- ``.OUT.xrecon-partial/``: the store being written (``data.zarr``), what it is (``xrecon-partial.json``:
  the provenance and its fingerprint) and one marker per spatial chunk written (``done/I.J``);
- ``.OUT.xrecon-old``: only for a moment, an existing store being replaced with ``overwrite=True``.

A store at an fsspec URL (``s3://``, ``gs://``, ``memory://``...) cannot be renamed into place: it is written
where it is, region by region, with the same record and markers in ``.OUT.xrecon-partial/`` beside it on the
same filesystem, removed when the last region is written; no lock can be taken there (:class:`NoLockWarning`).

See ``docs/writing.md``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xrecon.errors import CubeError, OutputExistsError, XreconError
from xrecon.memory import maybe_trim

__all__ = [
    "open_cube",
    "write_zarr",
    "write_cog",
    "source_fingerprint",
    "OutputLockedError",
    "ResumeMismatchError",
    "NoLockWarning",
]

LOCK_SUFFIX = "xrecon-lock"
PARTIAL_SUFFIX = "xrecon-partial"
OLD_SUFFIX = "xrecon-old"
_RECORD = "xrecon-partial.json"
_CLEANUP_WAIT_S = 300.0  # the longest a failed write waits for its in-flight chunk writes before cleaning
_STALE_BREAK_S = 60.0  # a lock-breaking marker older than this was left by a killed process

# Called with (row, column) after each spatial chunk is written and recorded: a seam for tests.
_REGION_HOOK: Callable[[int, int], None] | None = None


class OutputLockedError(XreconError):
    """Another writer (a live process) holds the output path."""


class ResumeMismatchError(XreconError):
    """``resume=True`` found an interrupted write of another computation."""


class NoLockWarning(UserWarning):
    """A write to a URL: no lock can be taken there, so a second writer at the same time is not refused."""


def open_cube(path: str | os.PathLike, *, chunks: Any = None) -> xr.Dataset:
    """Open a cube lazily: a Zarr store (directory or URL) or a netCDF file.

    Parameters
    ----------
    path : str or path-like
        ``*.zarr`` (or any Zarr store), ``*.nc`` / ``*.h5``.
    chunks : dict, optional
        Dask chunks; by default the store's own chunks (Zarr) or one chunk per variable (netCDF).
    """
    text = os.fspath(path)
    partial = _remote_partial(text) if "://" in text else None
    if partial is not None and _is_local(partial.fs):
        text, partial = partial.store_path, None  # file://
    if partial is None and not os.path.exists(text):
        raise CubeError(f"input cube {text!r} does not exist; expected a Zarr store or a netCDF file")
    if text.endswith((".nc", ".nc4", ".h5", ".hdf5")):
        return xr.open_dataset(text, chunks=chunks if chunks is not None else {})
    if partial is not None and _quietly(lambda: partial.exists(_RECORD)):
        raise CubeError(
            f"{text!r} holds an unfinished xrecon write (its record {partial.folder!r} is still beside it); expected "
            "a complete store: finish it with write_zarr(..., resume=True) (xrecon fill ... --resume)"
        )
    store = Path(text) if partial is None else partial
    try:
        return xr.open_zarr(text, chunks=chunks if chunks is not None else {}, consolidated=_has_consolidated(store))
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise CubeError(f"cannot open {text!r} as a Zarr store ({err})") from None


def _quietly(check: Callable[[], bool]) -> bool:
    """A check of a remote store that may fail (no credentials for a listing): False then."""
    try:
        return bool(check())
    except Exception:  # noqa: BLE001
        return False


def _has_consolidated(store: Path | _Partial) -> bool | None:
    """Whether a store (a local path, or the store of a remote write) has consolidated metadata (None: let
    xarray find out)."""
    if isinstance(store, Path):
        def exists(name: str) -> bool:
            return (store / name).is_file()

        def read(name: str) -> str:
            return (store / name).read_text()
    else:
        def exists(name: str) -> bool:
            return _quietly(lambda: store.fs.isfile(f"{store.store_path}/{name}"))

        def read(name: str) -> str:
            return store.fs.cat(f"{store.store_path}/{name}").decode()
    if exists(".zmetadata"):
        return True
    if exists("zarr.json"):
        try:
            return json.loads(read("zarr.json")).get("consolidated_metadata") is not None
        except (OSError, ValueError):
            return None
    return None if not exists(".zgroup") else False


# -- what a write is: encodings, provenance ------------------------------------------------------------


def _clean_encoding(ds: xr.Dataset, zarr_format: int) -> xr.Dataset:
    # Encodings inherited from the input store (chunks, compressors of another zarr format) would clash
    # with the new dask chunks; let the writer choose from the data itself. Fixed-width unicode has no
    # Zarr v3 specification (zarr warns on every write): variable-length strings have one.
    ds = ds.copy()
    for var in ds.variables.values():
        var.encoding = {}
    if zarr_format == 3:
        for name, var in ds.variables.items():
            if var.dtype.kind == "U":
                ds[name] = var.astype(object)
    return ds


def _hash_values(values: np.ndarray) -> str:
    values = np.asarray(values)
    if values.dtype.kind in "OUT" or values.dtype.kind == "S":
        blob = json.dumps([str(v) for v in values.ravel().tolist()]).encode()
    else:
        blob = np.ascontiguousarray(values).tobytes()
    return hashlib.sha256(f"{values.dtype.str}{values.shape}".encode() + blob).hexdigest()


def source_fingerprint(source: Any) -> dict[str, Any]:
    """What identifies the input of a computation, cheaply: its path, sizes and coordinates.

    ``source`` is a path (opened lazily to read its sizes and coordinates), an :class:`xarray.Dataset`
    or a mapping (taken as it is). The values of the data are not read: an input rewritten in place
    with the same coordinates is told apart only by its modification time (local paths).
    """
    if source is None:
        return {}
    if isinstance(source, Mapping) and not isinstance(source, xr.Dataset):
        return {str(k): v for k, v in source.items()}
    record: dict[str, Any] = {}
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        record["path"] = text if "://" in text else os.path.abspath(text)
        if "://" not in text:
            meta = [Path(text) / m for m in (".zmetadata", "zarr.json", ".zgroup")] + [Path(text)]
            first = next(p for p in meta if p.exists()) if any(p.exists() for p in meta) else None
            if first is not None:
                record["modified_ns"] = first.stat().st_mtime_ns
        source = open_cube(text)
    record["sizes"] = {str(k): int(v) for k, v in sorted(source.sizes.items())}
    record["variables"] = sorted(str(k) for k in source.data_vars)
    record["coords"] = {
        str(name): _hash_values(coord.values)
        for name, coord in sorted(source.coords.items(), key=lambda kv: str(kv[0]))
        if coord.ndim == 1
    }
    return record


def _provenance(ds: xr.Dataset, source: Any, zarr_format: int) -> dict[str, Any]:
    """Everything that must be equal for a partial store to be continued: the result and its input."""
    attrs = {str(k): _jsonable(v) for k, v in sorted(ds.attrs.items()) if not str(k).startswith("xrecon_write")}
    variables = {
        str(name): {"dims": list(map(str, var.dims)), "dtype": var.dtype.str, "shape": list(var.shape)}
        for name, var in sorted(ds.variables.items(), key=lambda kv: str(kv[0]))
    }
    coords = {
        str(name): _hash_values(var.values)
        for name, var in sorted(ds.coords.items(), key=lambda kv: str(kv[0]))
        if not _is_dask(var)
    }
    return {
        "attrs": attrs,
        "variables": variables,
        "coords": coords,
        "source": source_fingerprint(source),
        "zarr_format": zarr_format,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fingerprint(provenance: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(provenance, sort_keys=True, default=str).encode()).hexdigest()


def _is_dask(var: xr.Variable) -> bool:
    return var.chunks is not None


# -- the lock ------------------------------------------------------------------------------------------


def _proc_start(pid: int) -> str | None:
    """The start time of a process (Linux), to tell a reused pid from the writer."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: Mapping[str, Any]) -> bool:
    """Whether the lock's holder runs (on another host: assumed so, it cannot be checked from here)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not _pid_alive(pid):
        return False
    started = holder.get("started")
    return started is None or _proc_start(pid) in (None, started)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _create_exclusive(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return True


def _describe(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "an unreadable lock (being created?)"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r} since {holder.get('time')}"


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[dict[str, Any]]:
    """Hold ``.OUT.xrecon-lock`` for the block; refuse if a live writer holds it, take over a dead one's."""
    lock = target.with_name(f".{target.name}.{LOCK_SUFFIX}")
    pid = os.getpid()
    mine = {
        "pid": pid,
        "host": socket.gethostname(),
        "started": _proc_start(pid),
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
        "path": str(target),
    }
    for _ in range(3):
        if _create_exclusive(lock, json.dumps(mine)):
            break
        holder = _read_json(lock)
        if holder is None:  # released meanwhile
            continue
        if holder == {}:  # being written this very moment, or garbage: look again shortly
            time.sleep(0.2)
            holder = _read_json(lock)
            if holder is None:
                continue
        if holder and _alive(holder) or holder == {} and _lock_age(lock) < _STALE_BREAK_S:
            raise OutputLockedError(
                f"output {str(target)!r} is being written by {_describe(holder)} (lock {str(lock)!r}); "
                "wait for it to finish, or remove the lock file if that process is gone"
            )
        _break_stale(lock, holder)
    else:
        raise OutputLockedError(f"output {str(target)!r}: could not take the lock {str(lock)!r}; try again")
    try:
        yield mine
    finally:
        if (_read_json(lock) or {}).get("token") == mine["token"]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _lock_age(lock: Path) -> float:
    try:
        return time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _break_stale(lock: Path, seen: Mapping[str, Any]) -> None:
    """Remove a dead writer's lock, once: one process at a time, and only the lock that was seen dead."""
    breaker = lock.with_name(lock.name + ".break")
    if not _create_exclusive(breaker, str(os.getpid())):
        if _lock_age(breaker) > _STALE_BREAK_S:
            with contextlib.suppress(FileNotFoundError):
                breaker.unlink()
        time.sleep(0.1)
        return
    try:
        if _read_json(lock) == seen:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    finally:
        breaker.unlink()


# -- renames -------------------------------------------------------------------------------------------


def _rename_noreplace(src: Path, dst: Path) -> None:
    """``src`` to ``dst``, failing with FileExistsError if ``dst`` exists (even an empty folder)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST or err == errno.ENOTEMPTY:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src))
    if os.path.lexists(dst):  # a filesystem without renameat2: check, then rename
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


# -- where a write keeps its store and its markers ----------------------------------------------------


@dataclass
class _Partial:
    """Where a write keeps its store, its record (``xrecon-partial.json``) and its markers.

    The markers are ``init.done`` (the metadata is written), ``done/I.J`` (one per region written, made after
    its data), ``active/I.J.PID`` (a region being written) and ``cancelled`` (a failed write calling the
    others off). ``folder`` is the hidden ``.OUT.xrecon-partial`` beside ``OUT``. Local (``fs`` None): the store
    is ``folder/data.zarr``, renamed to ``OUT`` when complete. At a URL (``fs`` an fsspec filesystem): the
    store is ``OUT`` itself, which object storage cannot rename (``store_path`` its path on ``fs``), and the
    store is complete when ``folder`` is gone. The markers are beside the store rather than in it: zarr warns
    about every key it does not know in a store, and consolidated metadata would list them.
    """

    folder: str
    store: str
    fs: Any = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    store_path: str = ""

    def _path(self, name: str) -> str:
        return f"{self.folder}/{name}" if name else self.folder

    def exists(self, name: str = "") -> bool:
        return os.path.exists(self._path(name)) if self.fs is None else bool(self.fs.exists(self._path(name)))

    def touch(self, name: str) -> None:
        if self.fs is None:
            Path(self._path(name)).touch()
        else:
            self.fs.pipe(self._path(name), b"")

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.fs is None:
                os.unlink(self._path(name))
            else:
                self.fs.rm(self._path(name))

    def names(self, name: str) -> set[str]:
        """The markers in one of the folders; FileNotFoundError when the local folder is gone."""
        if self.fs is None:
            return {p.name for p in Path(self._path(name)).iterdir()}
        try:
            return {str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._path(name), detail=False)}
        except FileNotFoundError:
            return set()

    def read_record(self) -> dict[str, Any] | None:
        """The record: None when there is none, {} when it does not read."""
        if self.fs is None:
            return _read_json(Path(self._path(_RECORD)))
        try:
            return json.loads(self.fs.cat(self._path(_RECORD)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def write_record(self, fingerprint: str, provenance: Mapping[str, Any]) -> None:
        text = json.dumps({"fingerprint": fingerprint, "provenance": provenance}, sort_keys=True, indent=1,
                          default=str)
        if self.fs is None:
            Path(self._path(_RECORD)).write_text(text)
        else:
            self.fs.pipe(self._path(_RECORD), text.encode())

    def start(self, key: str) -> str | None:
        """Say that region ``key`` is being written; None when the write was called off and cleaned."""
        active = f"active/{key}.{os.getpid()}"
        if self.fs is None:
            try:
                Path(self._path(active)).touch(exist_ok=False)
            except FileNotFoundError:
                return None
        else:
            if not self.fs.exists(self._path(_RECORD)):
                return None
            self.fs.pipe(self._path(active), b"")
        return active

    def reset_store(self) -> None:
        """Remove what an interrupted initialisation left of the store."""
        if self.fs is None:
            shutil.rmtree(self.store, ignore_errors=True)
        elif self.fs.exists(self.store_path):
            self.fs.rm(self.store_path, recursive=True)

    @property
    def zarr_kwargs(self) -> dict[str, Any]:
        return {"storage_options": self.storage_options} if self.storage_options else {}


def _remote_partial(url: str, storage_options: Mapping[str, Any] | None = None) -> _Partial:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url, **dict(storage_options or {}))
    root = root.rstrip("/")
    parent, _, name = root.rpartition("/")
    return _Partial(folder=f"{parent}/.{name}.{PARTIAL_SUFFIX}", store=url, fs=fs,
                    storage_options=dict(storage_options or {}), store_path=root)


# -- the write -----------------------------------------------------------------------------------------


def write_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    source: Any = None,
    **to_zarr_kwargs: Any,
) -> Path | str:
    """Compute and write a dataset to Zarr, all or nothing, never over what xrecon did not write.

    A local store is claimed with a lock file beside it, written spatial chunk by spatial chunk into a
    hidden sibling folder and moved into place only when complete: a failure never leaves a store
    that opens as complete, and never touches an existing one.

    Parameters
    ----------
    ds : xarray.Dataset
    path : str or path-like
        The store: a local path, or an fsspec URL (``s3://...``, ``gs://...``, ``memory://...``). A store at a
        URL is written in place, region by region, with its markers beside it (``.OUT.xrecon-partial/``,
        removed at the end), so that ``resume=True`` works there too; no lock can be taken on it
        (:class:`NoLockWarning`), and ``overwrite=True`` removes the old store first. ``file://`` URLs are
        local paths.
    overwrite : bool
        Replace an existing store (locally: only after the new one is complete).
    resume : bool
        Continue an interrupted write of the same computation (same provenance: the result's attrs,
        variables and coordinates, and ``source``), writing only the chunks not yet written; a partial
        write of another computation is refused (:class:`ResumeMismatchError`). A write started with
        ``resume=True`` keeps its partial store when it fails, so that it can be continued.
    progress : bool
        Show a progress bar while computing.
    source : path, Dataset or mapping, optional
        The input of the computation, recorded and compared on resume (see :func:`source_fingerprint`).
    **to_zarr_kwargs
        Passed to :meth:`xarray.Dataset.to_zarr` (``storage_options`` to fsspec too); ``zarr_format`` is 2
        unless given, ``consolidated`` is True for format 2 and False for format 3 (consolidated metadata is
        not part of its spec).

    Raises
    ------
    OutputExistsError
        ``path`` exists (or appeared during the write) and ``overwrite`` is False.
    OutputLockedError
        Another live process is writing ``path`` (local paths).
    ResumeMismatchError
        ``resume=True`` and the interrupted write at ``path`` is of another computation.

    Examples
    --------
    >>> import tempfile, numpy as np, xarray as xr
    >>> target = Path(tempfile.mkdtemp()) / "out.zarr"
    >>> _ = write_zarr(xr.Dataset({"a": ("x", np.arange(3))}), target)
    >>> xr.open_zarr(target).a.values.tolist()
    [0, 1, 2]
    """
    # Zarr format 2 unless asked otherwise: what most Pangeo tools read today.
    zarr_format = int(to_zarr_kwargs.pop("zarr_format", None) or 2)
    to_zarr_kwargs.setdefault("consolidated", zarr_format == 2)
    for key in ("mode", "region", "compute", "append_dim"):
        if key in to_zarr_kwargs:
            raise XreconError(f"write_zarr chooses {key}= itself; got {key}={to_zarr_kwargs[key]!r}")
    ds = _clean_encoding(ds, zarr_format)
    text = os.fspath(path)
    if not text:
        raise XreconError("output path is empty; expected a path to a Zarr store")
    ctx = _progress() if progress else contextlib.nullcontext()
    if "://" in text:
        storage_options = to_zarr_kwargs.pop("storage_options", None) or {}
        partial = _remote_partial(text, storage_options)
        if not _is_local(partial.fs):
            return _write_remote(ds, partial, overwrite=overwrite, resume=resume, source=source,
                                 zarr_format=zarr_format, to_zarr_kwargs=to_zarr_kwargs, ctx=ctx)
        text = partial.store_path  # file:// is a local path, with the local guarantees

    target = Path(text).absolute()
    if target.exists() and not (overwrite or resume):
        raise OutputExistsError(f"output {text!r} exists; expected a new path (or pass overwrite=True)")
    target.parent.mkdir(parents=True, exist_ok=True)
    provenance = _provenance(ds, source, zarr_format)
    fingerprint = _fingerprint(provenance)
    with _locked(target):
        _recover_swap(target)
        if target.exists():
            if resume and _store_fingerprint(str(target)) == fingerprint and not overwrite:
                return target  # written completely by an earlier run of the same computation
            if not overwrite:
                raise OutputExistsError(
                    f"output {text!r} exists and is not the result of this computation; expected a new "
                    "path (or pass overwrite=True)"
                )
        work = target.with_name(f".{target.name}.{PARTIAL_SUFFIX}")
        partial, done = _open_partial(work, provenance, fingerprint, resume=resume, target=target)
        ds = _with_fingerprint(ds, fingerprint, provenance)
        with _cleaned_up(partial, resume=resume):
            with ctx:
                _write_regions(ds, partial, done, zarr_format, to_zarr_kwargs)
            _swap_in(Path(partial.store), target, overwrite=overwrite)
    return target


@contextlib.contextmanager
def _cleaned_up(partial: _Partial, *, resume: bool) -> Iterator[None]:
    """Remove a local write's partial folder when it is done; on a failure, call off the region writes still
    running, wait for them, and remove it unless resuming."""
    try:
        yield
    except BaseException:
        _cancel_and_wait(partial)
        if not resume:
            shutil.rmtree(partial.folder, ignore_errors=True)
        raise
    shutil.rmtree(partial.folder, ignore_errors=True)


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _with_fingerprint(ds: xr.Dataset, fingerprint: str, provenance: Mapping[str, Any]) -> xr.Dataset:
    ds = ds.assign_attrs(xrecon_write_fingerprint=fingerprint)
    if provenance["source"]:
        ds = ds.assign_attrs(xrecon_write_source=json.dumps(provenance["source"], sort_keys=True, default=str))
    return ds


def _write_remote(ds: xr.Dataset, partial: _Partial, *, overwrite: bool, resume: bool, source: Any,
                  zarr_format: int, to_zarr_kwargs: dict[str, Any], ctx: Any) -> str:
    """A store at a URL: written in place, region by region, its record and markers inside it."""
    url, fs, root = partial.store, partial.fs, partial.store_path
    warnings.warn(
        f"{url!r} is written without a lock: object storage (fsspec) offers no atomic create-if-absent, so a "
        "second writer to the same URL at the same time is not refused and would mix its chunks into this "
        "store; make sure that one job at a time writes it. The store is complete when "
        f"{partial.folder!r} is gone",
        NoLockWarning, stacklevel=3,
    )
    provenance = {**_provenance(ds, source, zarr_format), "store": "fsspec"}
    fingerprint = _fingerprint(provenance)
    record = partial.read_record()
    entries = fs.ls(root, detail=False) if fs.exists(root) else []
    done: set[str] = set()
    fresh = True
    if record is not None:  # an unfinished xrecon write
        if resume and record.get("fingerprint") == fingerprint:
            fresh = False
            partial.remove("cancelled")  # a clean-up killed half-way
            done = partial.names("done") if partial.exists("init.done") else set()
        elif resume:
            changed = _differences(record.get("provenance", {}), provenance)
            raise ResumeMismatchError(
                f"cannot resume {url!r}: the unfinished write there is of another computation (it differs in "
                f"{', '.join(changed) or 'provenance'}); pass overwrite=True to remove it and start again"
            )
        elif not overwrite:
            raise OutputExistsError(
                f"{url!r} holds an unfinished xrecon write, of an earlier run or of one still running (no lock "
                "tells them apart on object storage); pass resume=True to continue it, or overwrite=True to "
                "remove it and start again"
            )
    elif entries:
        if resume and not overwrite and _store_fingerprint(url, partial.storage_options) == fingerprint:
            return url  # written completely by an earlier run of the same computation
        if not overwrite:
            raise OutputExistsError(f"output {url!r} exists; expected a new URL (or pass overwrite=True, which "
                                    "removes it before writing: a store at a URL cannot be swapped atomically)")
    if fresh:
        for old in (root, partial.folder):
            if fs.exists(old):
                fs.rm(old, recursive=True)
        partial.write_record(fingerprint, provenance)
    ds = _with_fingerprint(ds, fingerprint, provenance)
    try:
        with ctx:
            _write_regions(ds, partial, done, zarr_format, to_zarr_kwargs)
        fs.rm(partial.folder, recursive=True)  # the last step: the store is complete
    except BaseException:
        _cancel_and_wait(partial)
        if not resume:
            for path in (root, partial.folder):
                with contextlib.suppress(OSError):
                    fs.rm(path, recursive=True)
        raise
    return url


def _store_fingerprint(store: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    import zarr

    try:
        group = zarr.open_group(store, mode="r", **({"storage_options": dict(storage_options)}
                                                    if storage_options else {}))
        return group.attrs.get("xrecon_write_fingerprint")
    except Exception:  # noqa: BLE001  (anything that does not open is not ours)
        return None


def _recover_swap(target: Path) -> None:
    """A replacement killed between its two renames: put the old store back; after them: drop the old."""
    old = target.with_name(f".{target.name}.{OLD_SUFFIX}")
    if not os.path.lexists(old):
        return
    if os.path.lexists(target):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(old, target)


def _open_partial(work: Path, provenance: dict[str, Any], fingerprint: str, *, resume: bool,
                  target: Path) -> tuple[_Partial, set[str]]:
    """The partial folder to write into, and the chunks it already holds (only when resuming)."""
    partial = _Partial(folder=str(work), store=str(work / "data.zarr"))
    if os.path.lexists(work):
        if not work.is_dir() or (_read_json(work / _RECORD) is None and any(work.iterdir())):
            raise XreconError(
                f"{str(work)!r} is in the way of the write of {str(target)!r} and was not made by xrecon; "
                "move it away"
            )
        record = _read_json(work / _RECORD) or {}
        if resume and record.get("fingerprint") not in (None, fingerprint):
            changed = _differences(record.get("provenance", {}), provenance)
            raise ResumeMismatchError(
                f"cannot resume {str(target)!r}: the interrupted write there is of another computation "
                f"(it differs in {', '.join(changed) or 'provenance'}); run without resume (--resume) to "
                "start again, which removes it"
            )
        if resume and record.get("fingerprint") == fingerprint and (work / "init.done").exists():
            (work / "active").mkdir(exist_ok=True)
            partial.remove("cancelled")  # a clean-up killed half-way
            return partial, partial.names("done")
        shutil.rmtree(work)  # a dead writer's partial store (we hold the lock): start again
    work.mkdir()
    partial.write_record(fingerprint, provenance)
    (work / "done").mkdir()
    (work / "active").mkdir()
    return partial, set()


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{key}.{sub}" for sub in _differences(a, b)]
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(key)
    return out


def _uniform(chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Zarr chunks: all equal but the last, which may be smaller."""
    size, total = chunks[0], sum(chunks)
    if all(c == size for c in chunks[:-1]) and chunks[-1] <= size:
        return tuple(chunks)
    return (size,) * (total // size) + ((total % size,) if total % size else ())


def _grid(ds: xr.Dataset) -> dict[str, tuple[int, ...]]:
    """The spatial chunks of the write: the first chunked variable's, made uniform."""
    grid: dict[str, tuple[int, ...]] = {}
    for dim in ("y", "x"):
        if dim not in ds.dims:
            continue
        for var in ds.variables.values():
            if dim in var.dims and _is_dask(var):
                grid[dim] = _uniform(var.chunks[var.dims.index(dim)])
                break
        else:
            grid[dim] = (ds.sizes[dim],)
    return grid


def _write_regions(ds: xr.Dataset, partial: _Partial, done: set[str], zarr_format: int,
                   to_zarr_kwargs: Mapping[str, Any], *, split: Iterable[str] = ()) -> None:
    """Initialise the store's metadata, then write each spatial chunk not yet done and record it.

    The store is chunked like the spatial grid, whole along the other dimensions except those in ``split``,
    stored one index per chunk (so that one date can be read back without the others).
    """
    import dask

    grid = _grid(ds)
    split = set(split)
    spatial = [name for name, var in ds.variables.items() if set(var.dims) & set(grid)]
    index = [d for d in grid if d in ds.indexes]
    chunked = ds.copy()
    for name, var in ds.variables.items():  # without y/x: small, and written with the metadata
        if name not in spatial and _is_dask(var):
            var = var.compute()
            chunked = chunked.assign_coords({name: var}) if name in ds.coords else chunked.assign({name: var})
    for name in spatial:
        if name in index:
            continue
        var = ds.variables[name]
        var = var.chunk({d: (grid[d] if d in grid else 1 if d in split else -1) for d in var.dims})
        chunked = chunked.assign_coords({name: var}) if name in ds.coords else chunked.assign({name: var})
    if not partial.exists("init.done"):
        partial.reset_store()
        # numpy-backed variables (the indexes, time, band, the CRS) are written now, the chunked ones not
        chunked.to_zarr(partial.store, mode="w-", compute=False, zarr_format=zarr_format, **partial.zarr_kwargs,
                        **to_zarr_kwargs)
        partial.touch("init.done")
    writes = []
    names = [n for n in spatial if n not in index]
    dims = {n: ds.variables[n].dims for n in names}
    starts = {d: np.cumsum((0, *grid[d])).tolist() for d in grid}
    ny, nx = len(grid.get("y", (0,))), len(grid.get("x", (0,)))
    for i in range(ny):
        for j in range(nx):
            key = f"{i}.{j}"
            if key in done or not names:
                continue
            region = {}
            if "y" in grid:
                region["y"] = slice(starts["y"][i], starts["y"][i + 1])
            if "x" in grid:
                region["x"] = slice(starts["x"][j], starts["x"][j + 1])
            blocks = {n: chunked.variables[n].isel({d: s for d, s in region.items() if d in dims[n]}).data
                      for n in names}
            writes.append(dask.delayed(_write_region, pure=False)(
                partial, key, (i, j), region, dims, blocks, zarr_format,
            ))
    if writes:
        dask.compute(*writes)
    written = partial.names("done")
    missing = [f"{i}.{j}" for i in range(ny) for j in range(nx) if f"{i}.{j}" not in written]
    if names and missing:
        raise XreconError(f"write of {partial.store!r} ended without chunks {missing[:5]}; run again with resume")


def _write_region(partial: _Partial, key: str, ij: tuple[int, int], region: dict[str, slice],
                  dims: Mapping[str, tuple], blocks: Mapping[str, np.ndarray], zarr_format: int) -> None:
    """One task: write one spatial chunk of every variable with a region write, then record it."""
    # first say we are writing, then look whether the write was called off: a cleaner that calls it off
    # waits for every chunk that said so first, and every later one sees the call-off
    active = partial.start(key)
    if active is None:
        return  # the partial folder is gone: the write was called off and cleaned
    try:
        if partial.exists("cancelled"):
            return
        part = xr.Dataset({n: (dims[n], np.asarray(b)) for n, b in blocks.items()})
        region = {d: s for d, s in region.items() if d in part.dims}
        part.to_zarr(partial.store, mode="r+", region=region, zarr_format=zarr_format, consolidated=False,
                     **partial.zarr_kwargs)
        partial.touch(f"done/{key}")
    finally:
        partial.remove(active)
        maybe_trim()  # freed memory back to the system if it piled up (xrecon.memory)
    if _REGION_HOOK is not None:
        _REGION_HOOK(*ij)


def _cancel_and_wait(partial: _Partial) -> None:
    """Call off a failed write and wait for the chunk writes still running (dask threads, processes)."""
    if not partial.exists():
        return
    with contextlib.suppress(OSError):
        partial.touch("cancelled")
    deadline = time.monotonic() + _CLEANUP_WAIT_S
    while time.monotonic() < deadline:
        try:
            running = [n for n in partial.names("active") if _pid_of(n) is None or _pid_alive(_pid_of(n))]
        except FileNotFoundError:
            return
        if not running:
            break
        time.sleep(0.02)
    partial.remove("cancelled")


def _pid_of(marker: str) -> int | None:
    tail = marker.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_in(store: Path, target: Path, *, overwrite: bool) -> None:
    """Move the complete store to ``target``: never over something, unless ``overwrite`` (then last)."""
    try:
        _rename_noreplace(store, target)
        return
    except FileExistsError:
        if not overwrite:
            raise OutputExistsError(
                f"output {str(target)!r} appeared while the result was being written, and was left as it "
                "is; expected a new path (or pass overwrite=True)"
            ) from None
    old = target.with_name(f".{target.name}.{OLD_SUFFIX}")
    os.rename(target, old)
    try:
        _rename_noreplace(store, target)
    except BaseException:
        with contextlib.suppress(OSError):
            _rename_noreplace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- Cloud-Optimized GeoTIFFs --------------------------------------------------------------------------


@dataclass(frozen=True)
class _CogFile:
    """One GeoTIFF of a ``write_cog``: a variable at one index of its time dimension (or time-less)."""

    name: str
    variable: str
    time_dim: str | None = None
    index: int | None = None
    time: str | None = None
    band_dim: str | None = None


def _cog_plan(ds: xr.Dataset, variables: Iterable[str] | None) -> list[_CogFile]:
    """The files of a ``write_cog``: names, and what goes in each."""
    if not isinstance(ds, xr.Dataset):
        raise XreconError(f"write_cog expects an xarray.Dataset, got {type(ds).__name__}")
    if variables is None:
        names = [str(n) for n, v in ds.data_vars.items() if {"y", "x"} <= set(v.dims)]
    else:
        names = [variables] if isinstance(variables, str) else [str(v) for v in variables]
        unknown = [n for n in names if n not in ds.data_vars]
        if unknown:
            raise XreconError(f"write_cog(variables={names}): {unknown} not in the dataset; expected some of "
                              f"{sorted(map(str, ds.data_vars))}")
    if not names:
        raise XreconError(f"write_cog: no variable with 'y' and 'x' dimensions in {sorted(map(str, ds.data_vars))}")
    plan = []
    for name in names:
        if os.sep in name or "/" in name or name.startswith("."):
            raise XreconError(f"variable {name!r} cannot name a file; rename it before write_cog")
        var = ds[name]
        if not {"y", "x"} <= set(var.dims):
            raise XreconError(f"variable {name!r} has dims {tuple(map(str, var.dims))}; a GeoTIFF needs 'y' and 'x'")
        others = [str(d) for d in var.dims if d not in ("y", "x")]
        times = [d for d in others if d in var.coords and np.issubdtype(var[d].dtype, np.datetime64)]
        bands = [d for d in others if d not in times]
        if len(times) > 1 or len(bands) > 1:
            raise XreconError(
                f"variable {name!r} has dims {tuple(map(str, var.dims))}; write_cog writes (time, band, y, x), "
                "(time, y, x), (band, y, x) or (y, x): select the others away first"
            )
        band = bands[0] if bands else None
        if not times:
            plan.append(_CogFile(f"{name}.tif", name, band_dim=band))
            continue
        stamps = pd.DatetimeIndex(var[times[0]].values)
        text = stamps.strftime("%Y-%m-%d")
        if text.has_duplicates:  # two query times on one day: the time of day in every name of this variable
            text = stamps.strftime("%Y-%m-%dT%H%M%S")
        if text.has_duplicates:
            raise XreconError(f"variable {name!r}: two {times[0]!r} values in one second; expected distinct times")
        plan += [_CogFile(f"{name}_{t}.tif", name, times[0], k, stamps[k].isoformat(), band)
                 for k, t in enumerate(text)]
    return plan


def write_cog(
    ds: xr.Dataset,
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    source: Any = None,
    variables: Iterable[str] | None = None,
    compress: str = "deflate",
    blocksize: int = 512,
    overviews: bool = True,
) -> Path:
    """Compute a dataset and write one Cloud-Optimized GeoTIFF per variable and time, all or nothing.

    ``optical`` at 2020-03-01 becomes ``DIRECTORY/optical_2020-03-01.tif``, its bands in the cube's band order
    with the band names as band descriptions; ``observed`` and ``gap_days``, without a band axis, one band
    each (``observed`` as 0/1 bytes). When two times of a variable fall on one day, all its files are named
    with the time of day too (``optical_2020-03-01T120000.tif``); a variable without a time axis is
    ``NAME.tif``. Float data carry NaN as nodata; every file has the dataset's CRS and transform, tiles of
    ``blocksize`` pixels, ``compress`` compression, overviews, and the provenance in its metadata tags (the
    dataset's attrs, ``variable``, ``time``).

    The dataset is computed once, spatial chunk by spatial chunk, into a hidden Zarr store beside
    ``DIRECTORY`` (the same writer, lock and markers as :func:`write_zarr`, so ``resume=True`` continues an
    interrupted write), then each GeoTIFF is written from it. A new ``DIRECTORY`` appears in one rename,
    complete; into an existing one the files are moved one by one once all are written, and none that is
    there is replaced unless ``overwrite=True`` (other files are left alone).

    Parameters
    ----------
    ds : xarray.Dataset
        E.g. a ``fill`` result; variables need ``y`` and ``x`` (others are skipped unless named).
    directory : str or path-like
        A local folder (created if needed).
    overwrite : bool
        Replace files of the same names.
    resume : bool
        Continue an interrupted write of the same computation (see :func:`write_zarr`).
    progress : bool
        Show a progress bar while computing.
    source : path, Dataset or mapping, optional
        The input of the computation, recorded and compared on resume.
    variables : list of str, optional
        The variables to write; default every one with ``y`` and ``x``.
    compress : str
        GDAL compression (``deflate``, ``zstd``, ``lzw``, ``none``...), with the predictor suited to the type.
    blocksize : int
        Tile size in pixels: a multiple of 16 (GDAL advises at least 128).
    overviews : bool
        Add overviews (averages for float data, nearest for integers and masks) down to one tile.

    Returns
    -------
    pathlib.Path
        The folder.

    Raises
    ------
    OutputExistsError
        One of the files exists (or appeared during the write) and ``overwrite`` is False.
    OutputLockedError
        Another live process is writing ``directory``.

    Examples
    --------
    >>> import tempfile, rioxarray
    >>> from xrecon.testing import synthetic_cube
    >>> out = synthetic_cube(ny=16, nx=16, start="2020-01-01", end="2020-01-31").recon.fill("2020-01-15")
    >>> folder = write_cog(out, Path(tempfile.mkdtemp()) / "cogs")
    >>> sorted(p.name for p in folder.iterdir())
    ['observed_2020-01-15.tif', 'optical_2020-01-15.tif']
    >>> rioxarray.open_rasterio(folder / "optical_2020-01-15.tif").attrs["long_name"]
    ('B02', 'B03', 'B04', 'B08')
    """
    text = os.fspath(directory)
    if not text or "://" in text:
        raise XreconError(f"write_cog writes into a local folder; got {text!r} (write Zarr to URLs with write_zarr)")
    if int(blocksize) % 16 or int(blocksize) < 16:
        raise XreconError(f"blocksize={blocksize}: expected a multiple of 16 (256, 512...)")
    plan = _cog_plan(ds, variables)
    target = Path(text).absolute()
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"output {text!r} exists and is not a folder; expected a folder for the GeoTIFFs")
    options = {"compress": str(compress).lower(), "blocksize": int(blocksize), "overviews": bool(overviews)}
    selected = _clean_encoding(ds[list(dict.fromkeys(f.variable for f in plan))], 2)
    provenance = {**_provenance(selected, source, 2), "format": "cog", "cog": options}
    fingerprint = _fingerprint(provenance)
    if not (overwrite or resume):
        _refuse_existing(target, plan)
    target.parent.mkdir(parents=True, exist_ok=True)
    ctx = _progress() if progress else contextlib.nullcontext()
    with _locked(target):
        if not overwrite and _cogs_fingerprint(target, plan) == fingerprint and resume:
            return target  # written completely by an earlier run of the same computation
        if not overwrite:
            _refuse_existing(target, plan)
        work = target.with_name(f".{target.name}.{PARTIAL_SUFFIX}")
        partial, done = _open_partial(work, provenance, fingerprint, resume=resume, target=target)
        times = sorted({f.time_dim for f in plan if f.time_dim})
        with _cleaned_up(partial, resume=resume):
            with ctx:
                _write_regions(selected, partial, done, 2, {"consolidated": True}, split=times)
            files = work / "cog"
            shutil.rmtree(files, ignore_errors=True)
            files.mkdir()
            tags = {**_tags(selected), "xrecon_write_fingerprint": fingerprint}
            _write_geotiffs(Path(partial.store), selected, plan, files, tags, options)
            _move_in(files, target, [f.name for f in plan], overwrite=overwrite)
    return target


def _refuse_existing(target: Path, plan: list[_CogFile]) -> None:
    there = [f.name for f in plan if os.path.lexists(target / f.name)]
    if there:
        raise OutputExistsError(
            f"{len(there)} of the {len(plan)} files exist in {str(target)!r} ({', '.join(there[:3])}"
            f"{', ...' if len(there) > 3 else ''}); expected none of them there (or pass overwrite=True)"
        )


def _cogs_fingerprint(target: Path, plan: list[_CogFile]) -> str | None:
    """The fingerprint all the files of ``plan`` in ``target`` share, or None."""
    import rasterio

    found = set()
    for f in plan:
        try:
            with rasterio.open(target / f.name) as src:
                found.add(src.tags().get("xrecon_write_fingerprint"))
        except (OSError, rasterio.errors.RasterioError):
            return None
    return found.pop() if len(found) == 1 else None


def _tags(ds: xr.Dataset) -> dict[str, str]:
    """The dataset's attrs as GeoTIFF metadata: strings as they are, anything else as JSON."""
    out = {}
    for key, value in ds.attrs.items():
        if str(key).startswith("xrecon_write"):
            continue
        value = _jsonable(value)
        out[str(key)] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def _write_geotiffs(store: Path, ds: xr.Dataset, plan: list[_CogFile], folder: Path, tags: Mapping[str, str],
                    options: Mapping[str, Any]) -> None:
    """Each file of ``plan`` from the computed store: a tiled GeoTIFF written window by window, then a COG."""
    from concurrent.futures import ThreadPoolExecutor

    import rioxarray  # noqa: F401  (the .rio accessor)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # affine's `*` in rioxarray
        crs, transform = ds.rio.crs, ds.rio.transform(recalc=True)
    if crs is None:
        warnings.warn("write_cog: the dataset has no CRS (rioxarray's spatial_ref); the GeoTIFFs get the "
                      "transform from its x/y coordinates but no CRS", UserWarning, stacklevel=3)
    grid = _grid(ds)
    computed = xr.open_zarr(store, chunks=None, consolidated=True)

    def one(f: _CogFile) -> None:
        var = computed[f.variable]
        if f.time_dim is not None:
            var = var.isel({f.time_dim: f.index})
        labels = [str(b) for b in ds[f.variable][f.band_dim].values] if f.band_dim else [f.variable]
        own = {k: v for k, v in ds[f.variable].attrs.items() if isinstance(v, str) and k != "grid_mapping"}
        _geotiff(var.transpose(*([f.band_dim] if f.band_dim else []), "y", "x"), folder / f.name, labels, crs,
                 transform, grid, {**tags, **own, "variable": f.variable, **({"time": f.time} if f.time else {})},
                 options)

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(one, f) for f in plan]:
            future.result()


def _geotiff(var: xr.DataArray, path: Path, labels: list[str], crs: Any, transform: Any,
             grid: Mapping[str, tuple[int, ...]], tags: Mapping[str, str], options: Mapping[str, Any]) -> None:
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window

    dtype = np.dtype("uint8") if var.dtype == bool else np.dtype("float32") if var.dtype == np.float16 else var.dtype
    floating = np.issubdtype(dtype, np.floating)
    count, (ny, nx) = (var.shape[0] if var.ndim == 3 else 1), var.shape[-2:]
    size = options["blocksize"]
    plain = path.with_name(f".{path.name}.tiled")
    profile = {"driver": "GTiff", "width": nx, "height": ny, "count": count, "dtype": dtype.name, "crs": crs,
               "transform": transform, "nodata": np.nan if floating else None, "tiled": True,
               "blockxsize": size, "blockysize": size, "BIGTIFF": "IF_SAFER"}
    with rasterio.open(plain, "w", **profile) as out:
        out.descriptions = tuple(labels)
        out.update_tags(**tags)
        ys = np.cumsum((0, *grid.get("y", (ny,))))
        xs = np.cumsum((0, *grid.get("x", (nx,))))
        for y0, y1 in zip(ys[:-1], ys[1:], strict=True):
            for x0, x1 in zip(xs[:-1], xs[1:], strict=True):
                block = np.asarray(var.isel(y=slice(y0, y1), x=slice(x0, x1)).values).astype(dtype)
                out.write(block.reshape(count, y1 - y0, x1 - x0), window=Window(x0, y0, x1 - x0, y1 - y0))
    cog = {"driver": "COG", "COMPRESS": options["compress"].upper(), "BLOCKSIZE": size, "BIGTIFF": "IF_SAFER",
           "OVERVIEWS": "AUTO" if options["overviews"] else "NONE",
           "OVERVIEW_RESAMPLING": "AVERAGE" if floating else "NEAREST"}
    if options["compress"] in ("deflate", "lzw", "zstd"):
        cog["PREDICTOR"] = "YES"  # 3 (floating point) for floats, 2 for integers
    try:
        rasterio.shutil.copy(plain, path, **cog)
    finally:
        plain.unlink()


def _move_in(files: Path, target: Path, names: list[str], *, overwrite: bool) -> None:
    """The written files into ``target``: the whole folder in one rename when it is new, else one by one."""
    if not os.path.lexists(target):
        try:
            _rename_noreplace(files, target)
            return
        except FileExistsError:
            pass  # made meanwhile: move the files into it
    moved: list[str] = []
    try:
        for name in names:
            if overwrite:
                os.replace(files / name, target / name)
            else:
                _rename_noreplace(files / name, target / name)
                moved.append(name)
    except FileExistsError as err:
        for name in moved:  # ours, just moved: take them back, so that the write is all or nothing
            with contextlib.suppress(OSError):
                os.rename(target / name, files / name)
        raise OutputExistsError(
            f"{err.filename!r} appeared while the result was being written, and was left as it is; expected none "
            "of the files there (or pass overwrite=True)"
        ) from None


@contextlib.contextmanager
def _progress():
    from tqdm.dask import TqdmCallback

    with TqdmCallback(desc="xrecon", unit="task"):
        yield
