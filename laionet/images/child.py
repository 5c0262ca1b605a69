"""A function run in a spawned child process, and which failures are worth another attempt.

``run_in_child(target, kwargs, what)`` runs ``target(**kwargs)`` in a ``spawn`` child (img2dataset installs a SIGINT
handler, which Python allows only in the main thread), waits for it in short joins (so that a timeout raised into the
waiting thread by an orchestrator interrupts the wait; the child is then terminated), and turns a failure into a
``ChildError`` that carries the child's exception type, message and traceback and whether it is ``transient``.

``is_transient(exc)`` is the one rule (the Prefect retry condition uses it too): network and I/O errors, timeouts and a
child killed by a signal are transient; configuration and data errors (``ValueError``, ``KeyError``, ``TypeError``,
...), missing files, a path in the way (a file where a directory goes), a full disk and permission errors
(``ENOSPC``, ``EDQUOT``, ``EACCES``, ``EPERM``, ``EROFS``) are not: trying again would fail the same way.
"""

from __future__ import annotations

import errno
import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any

# OSErrors that another attempt would meet again: a full disk or quota, no permission, a read-only, missing or
# occupied path
PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
    }
)


class ChildError(RuntimeError):
    """A child process failed: ``kind`` is its exception's qualified type name (or ``killed by signal N``),
    ``transient`` whether another attempt may succeed, ``child_traceback`` the child's formatted traceback."""

    def __init__(self, message: str, kind: str, transient: bool, child_traceback: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.transient = transient
        self.child_traceback = child_traceback

    def __reduce__(self) -> tuple[Any, ...]:  # picklable with its attributes (Prefect persists failed states)
        return (type(self), (str(self), self.kind, self.transient, self.child_traceback))


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth another attempt (see the module docstring). An exception that carries a boolean
    ``transient`` attribute (``ChildError``) decides for itself."""
    own = getattr(exc, "transient", None)
    if isinstance(own, bool):
        return own
    if isinstance(exc, FileNotFoundError | FileExistsError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
        return False
    return isinstance(exc, OSError | TimeoutError)  # ConnectionError, socket and HTTP-level I/O errors included


def _child_main(target: Callable[..., Any], kwargs: dict[str, Any], report: Any) -> None:
    try:
        target(**kwargs)
    except BaseException as exc:
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        report.send((kind, str(exc)[:4000], is_transient(exc), traceback.format_exc()[-12000:]))
        raise


def run_in_child(target: Callable[..., Any], kwargs: dict[str, Any], what: str, poll_s: float = 0.5) -> None:
    """``target(**kwargs)`` in a spawned child process; raises ``ChildError`` (naming ``what``) if it fails."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(target, kwargs, send))
    child.start()
    send.close()
    try:
        while child.exitcode is None:
            child.join(poll_s)
    finally:
        if child.exitcode is None:  # interrupted while waiting (a task timeout, Ctrl-C): the child goes too
            child.terminate()
            child.join(10)
            if child.exitcode is None:
                child.kill()
                child.join()
    try:
        report = receive.recv() if receive.poll() else None
    except EOFError:  # the child died without a word (killed)
        report = None
    receive.close()
    if child.exitcode == 0:
        return
    if report is not None:
        kind, message, transient, tb = report
        raise ChildError(f"{what} failed in its child process: {kind}: {message}", kind, transient, tb)
    if child.exitcode is not None and child.exitcode < 0:  # killed (OOM killer, SIGTERM): a retry resumes
        kind = f"killed by signal {-child.exitcode}"
        raise ChildError(f"{what}: child process {kind}", kind, True)
    raise ChildError(f"{what}: child process exited with code {child.exitcode}", f"exit {child.exitcode}", False)
