"""The state rule of every stage output, in one place: one run at a time (a lock naming its owner), a directory that
is complete for exactly one config or visibly incomplete, part records tied to their input, upstream checks.

A driver runs as::

    with stage_run(out_dir, chash, "select") as done:
        if done:
            return done                     # complete for this config: nothing to do
        ...                                 # write outputs (temp name + rename each)
        write_manifest(out_dir, manifest)   # last: the output is complete from here on
        return manifest

``stage_run`` takes the lock, then, unless the manifest names ``chash`` and every output it lists exists, removes the
manifest and leaves an ``_INCOMPLETE`` marker *before* the first output is touched; ``write_manifest`` removes the
marker. So a run killed at any moment leaves no manifest vouching for outputs it did not write, and a reader that
finds a file beside the marker (but no manifest listing it) knows it is a leftover, not an input.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import fsspec
from fsspec.core import url_to_fs

from laionet.core.manifest import (
    MANIFEST_NAME,
    Manifest,
    incomplete_marker,
    is_local,
    join,
    manifest_path,
    read_manifest,
    write_text_atomic,
)

P = ParamSpec("P")
R = TypeVar("R")
LOCK_NAME = "_lock.json"
RESERVED_PREFIX = "_"  # names a stage directory keeps for itself: manifest, lock, marker, _parts/, _attempts/


class StageBusyError(RuntimeError):
    """Another run holds the output's lock."""


class UpstreamError(FileNotFoundError):
    """An input stage is missing, incomplete, or does not add up: re-run that stage first."""


def lock_path(target: str) -> str:
    """``<dir>/_lock.json`` for a directory output, ``<file>.lock.json`` for a single-file output."""
    return f"{target}.lock.json" if target.endswith(".parquet") else join(target, LOCK_NAME)


def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the lock's owner is still running (only decidable on the same host; else assume it is)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = owner.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def _owner_text(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')} (stage {owner.get('stage')}, since {owner.get('since')})"


@contextmanager
def stage_lock(target: str, stage: str = "") -> Iterator[dict[str, Any]]:
    """Hold the exclusive lock of a stage output for the duration of the block.

    The lock is a small JSON file (host, pid, process start, stage, time) created atomically: written under a temp
    name, then hard-linked to the lock name, which fails if a lock exists. A lock whose owner is gone (same host,
    process not running) is stale and taken over. On object storage, where no atomic create exists, the check is
    best effort.

    Raises:
        StageBusyError: naming the owner, when a live run holds the lock.
    """
    path = lock_path(target)
    fs, real = url_to_fs(path)
    fs.makedirs(real.rsplit("/", 1)[0], exist_ok=True)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "stage": stage,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }
    for _ in range(3):
        if _try_create(fs, real, me):
            break
        owner = _read_lock(fs, real)
        if owner is not None and _alive(owner):
            raise StageBusyError(
                f"{target} is being written by {_owner_text(owner)}; wait for that run to finish (or, if it is gone, "
                f"delete {path})"
            )
        _remove(fs, real)  # stale: its owner died
    else:  # pragma: no cover - three takeovers lost in a row
        raise StageBusyError(f"could not take the lock {path}")
    for leftover in fs.glob(f"{real}.tmp-*"):  # lock files of runs killed while taking the lock
        _remove(fs, leftover)
    try:
        yield me
    finally:
        owner = _read_lock(fs, real)
        if owner is not None and owner.get("token") == me["token"]:
            _remove(fs, real)


def _try_create(fs: Any, real: str, content: dict[str, Any]) -> bool:
    text = json.dumps(content, sort_keys=True)
    if is_local(fs):
        tmp = f"{real}.tmp-{content['token'][:8]}"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, real)  # atomic; fails if the lock exists, and the lock is never seen half-written
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    if fs.exists(real):
        return False
    with fs.open(real, "w") as f:
        f.write(text)
    return True


def _read_lock(fs: Any, real: str) -> dict[str, Any] | None:
    try:
        with fs.open(real, "r") as f:
            owner: dict[str, Any] = json.load(f)
            return owner
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable: treat as a dead owner's
        return {}


def _remove(fs: Any, real: str) -> None:
    with suppress(FileNotFoundError):
        fs.rm(real)


def outputs_exist(manifest: Manifest) -> bool:
    """Whether every output a manifest lists still exists."""
    for output in manifest.outputs:
        fs, real = url_to_fs(output)
        if not fs.exists(real):
            return False
    return True


def sweep(target: str) -> list[str]:
    """Remove the temp files (``*.tmp-<id>``) that killed runs left in a stage output; call only under its lock
    (a live writer's temp files look the same)."""
    fs, real = url_to_fs(target)
    if target.endswith(".parquet"):
        found = fs.glob(f"{real}.tmp-*") + fs.glob(f"{real}.*.tmp-*")
    else:
        found = fs.glob(real.rstrip("/") + "/**/*.tmp-*") if fs.exists(real) else []
    removed = []
    for path in found:
        name = path.rsplit("/", 1)[-1]
        if ".tmp-" in name and not fs.isdir(path):
            fs.rm(path)
            removed.append(path)
    return removed


def begin(target: str, chash: str, *, locked: bool = True) -> Manifest | None:
    """The manifest of ``target`` if it is complete for ``chash`` (and its outputs exist); otherwise make the output
    visibly incomplete — manifest removed, ``_INCOMPLETE`` marker written — and return None. Call under the lock
    (``locked``: then temp files of killed runs are swept too), before the first output is touched."""
    path = manifest_path(target)
    fs, real = url_to_fs(path)
    if locked:
        sweep(target)
    try:
        manifest = read_manifest(target)
    except ValueError:  # a corrupt manifest of our own output: it is about to be rebuilt
        manifest = None
    if manifest is not None and manifest.config_hash == chash and outputs_exist(manifest):
        marker_fs, marker = url_to_fs(incomplete_marker(target))
        if locked and marker_fs.exists(marker):  # a run killed between its manifest and removing the marker
            marker_fs.rm(marker)
        return manifest
    write_text_atomic(incomplete_marker(target), json.dumps({"config_hash": chash, "since": time.time()}) + "\n")
    if fs.exists(real):
        with suppress(FileNotFoundError):  # unlocked callers (fanned-out groups) may race to remove it
            fs.rm(real)
    return None


@contextmanager
def stage_run(target: str, chash: str, stage: str = "") -> Iterator[Manifest | None]:
    """``stage_lock`` + ``begin``: yields the complete manifest (nothing to do) or None (build the output, write the
    manifest last)."""
    with stage_lock(target, stage):
        yield begin(target, chash)


@contextmanager
def stage_rebuild(target: str, stage: str = "") -> Iterator[None]:
    """For a stage that always runs (its own resume is per part or per shard): the lock, and the output made
    visibly incomplete before the block touches it."""
    with stage_lock(target, stage):
        begin(target, "")
        yield


def rebuilds(stage: str, target: str = "out_dir") -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator for a driver that always rebuilds its output (argument ``target`` names the output directory): the
    call runs under ``stage_rebuild`` — locked, and the output visibly incomplete until the driver's manifest."""

    def decorate(driver: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(driver)

        @functools.wraps(driver)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with stage_rebuild(str(bound.arguments[target]), stage):
                return driver(*args, **kwargs)

        return wrapper

    return decorate


def require_complete(target: str, stage: str, *, hint: str | None = None) -> Manifest:
    """The manifest of an upstream stage output, checked: it exists, its counts add up and every output it lists
    exists.

    Raises:
        UpstreamError: naming the upstream stage and what to re-run.
    """
    rerun = hint or f"re-run the {stage} stage"
    manifest = read_manifest(target)
    if manifest is None:
        state = "incomplete (a run was interrupted or failed)" if _marker_exists(target) else "not complete"
        raise UpstreamError(f"{target}: the {stage} stage is {state}: no manifest; {rerun}")
    try:
        manifest.check_counts()
    except ValueError as exc:
        raise UpstreamError(f"{target}: the {stage} stage's manifest does not add up ({exc}); {rerun}") from exc
    missing = [o for o in manifest.outputs if not url_to_fs(o)[0].exists(url_to_fs(o)[1])]
    if missing:
        raise UpstreamError(f"{target}: the {stage} stage lists outputs that are gone ({missing[:3]}); {rerun}")
    return manifest


def require_file_input(path: str, stage: str, *, hint: str | None = None) -> Manifest | None:
    """Check a file input that may be another stage's output (e.g. ``selection/laionet.parquet``).

    A file listed by the manifest beside it (``<dir>/_manifest.json`` or ``<file>.manifest.json``) is a complete
    stage output: that manifest is checked and returned. A file beside an ``_INCOMPLETE`` marker and no manifest
    listing it is the leftover of an interrupted or failed run: an error. Any other file is a user's own input: None.

    Raises:
        UpstreamError: for a leftover of an incomplete stage, or a missing file.
    """
    fs, real = url_to_fs(path)
    if not fs.exists(real):
        raise UpstreamError(f"{path} does not exist; {hint or f're-run the {stage} stage'}")
    parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path else "."
    for target in (path, parent):
        manifest = read_manifest(target)
        if manifest is not None and _lists(manifest, path):
            return require_complete(target, stage, hint=hint)
    if _marker_exists(path) or _marker_exists(parent):
        raise UpstreamError(
            f"{path} is a leftover of an incomplete {stage} stage (no manifest lists it); "
            f"{hint or f're-run the {stage} stage'}"
        )
    return None


def _lists(manifest: Manifest, path: str) -> bool:
    wanted = url_to_fs(path)[1]
    return any(url_to_fs(o)[1] == wanted for o in manifest.outputs)


def _marker_exists(target: str) -> bool:
    fs, real = url_to_fs(incomplete_marker(target))
    return bool(fs.exists(real))


def input_identity(path: str) -> dict[str, Any]:
    """What identifies the content of an input file without reading it: size and modification time (fsspec's info;
    object stores give an ETag or a generation instead). A webdataset ``pipe:`` command has no file to look at: its
    identity is the command itself (change the command, or what it names, to make a stage redo its part)."""
    if path.startswith("pipe:"):
        return {"command": path[len("pipe:") :]}
    fs, real = url_to_fs(path)
    info = fs.info(real)
    identity: dict[str, Any] = {"size": int(info.get("size") or 0)}
    for key in ("mtime", "LastModified", "updated", "ETag", "etag", "generation", "md5Hash"):
        if info.get(key) is not None:
            identity[key] = str(info[key])
    return identity


def prune(out_dir: str, keep: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """Remove the files of ``out_dir`` (not its subdirectories) that match ``patterns`` but are not in ``keep``: the
    outputs of earlier inputs. Names starting with ``_`` are never touched. Returns what was removed."""
    fs, real = url_to_fs(out_dir)
    if not fs.exists(real):
        return []
    wanted = {url_to_fs(k)[1] for k in keep}
    removed = []
    for pattern in patterns:
        for found in fs.glob(real.rstrip("/") + "/" + pattern):
            name = found.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(RESERVED_PREFIX) or found in wanted or fs.isdir(found):
                continue
            fs.rm(found)
            removed.append(found)
    return sorted(removed)


def prune_records(out_dir: str, parts: Iterable[str]) -> None:
    """Remove the ``_parts/*.json`` records of parts that are not among the current inputs."""
    from laionet.core.manifest import part_stem

    fs, real = url_to_fs(join(out_dir, "_parts"))
    if not fs.exists(real):
        return
    stems = {part_stem(p) for p in parts}
    for found in fs.glob(real.rstrip("/") + "/*.json"):
        if found.rsplit("/", 1)[-1].removesuffix(".json") not in stems:
            fs.rm(found)


def read_json(path: str) -> Any:
    """A JSON file, with its path in the error when it is not valid JSON."""
    with fsspec.open(path, "r") as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it to redo that part") from exc


__all__ = [
    "MANIFEST_NAME",
    "StageBusyError",
    "UpstreamError",
    "begin",
    "input_identity",
    "lock_path",
    "outputs_exist",
    "prune",
    "prune_records",
    "rebuilds",
    "require_complete",
    "require_file_input",
    "stage_lock",
    "stage_rebuild",
    "stage_run",
]
