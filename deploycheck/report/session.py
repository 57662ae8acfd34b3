"""A session's hold on its report folder, and whether it finished.

One session owns a report folder at a time (:class:`ReportLock`). The units a session was going
to run are known after collection (:func:`planned`); a report written before the end (at the
start, or after Ctrl-C, SIGTERM or a crashed worker) lists every unit that did not finish as
``not run``, and says why the session is incomplete.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from . import NOT_RUN
from .records import Record

LOCK_NAME = ".deploycheck.lock"


class ReportFolderBusy(Exception):
    """Another live session holds the report folder."""


class ReportLock:
    """An exclusive ``flock`` on ``<report dir>/.deploycheck.lock``, which holds the owner's pid.
    The kernel releases it when the owner ends in any way (SIGKILL included), so a killed
    session never leaves a stale lock. The file stays (unlinking it would let two sessions lock
    two different files)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: sessions are not kept apart
            return
        os.makedirs(self.out_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ReportFolderBusy(
                f"deploycheck: the report folder {self.out_dir} is in use by another session ({holder}); "
                "wait for it to end, or give this session its own folder with --deploycheck-report-dir DIR "
                "(or --deploycheck-no-report)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def unit_of(nodeid: str) -> dict | None:
    """(file, spec, variant, format, check) of a deploycheck item from its test id
    (``specs/x.yaml::spec::variant[::format]::check``), for an xdist controller, which has ids only."""
    parts = nodeid.split("::")
    if not parts[0].endswith((".yaml", ".yml")) or len(parts) not in (4, 5):
        return None
    fmt = parts[3] if len(parts) == 5 else None
    return {"file": parts[0], "spec": parts[1], "variant": parts[2], "format": fmt, "check": parts[-1]}


def not_run(unit: dict) -> Record:
    return Record(
        spec=unit["spec"],
        file=unit["file"],
        variant=unit["variant"],
        format=unit["format"],
        check=unit["check"],
        status=NOT_RUN,
        recipe=unit.get("recipe", ""),
        message="not run: the session did not finish",
    )


class Termination:
    """SIGTERM (a CI job's timeout, ``kill``) ends the session as Ctrl-C does, so the reports are
    still written, marked incomplete. Only the process that installed it handles the signal: a
    child forked from it (a build, a worker) dies of SIGTERM as it would have."""

    def __init__(self) -> None:
        self.received = False
        self._owner = os.getpid()
        self._old: Any = None

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.received:  # a second SIGTERM while the reports are written: let it go through
            return
        self.received = True
        raise KeyboardInterrupt("SIGTERM")


def incomplete_reason(
    *,
    exitstatus: int,
    terminated: bool,
    interrupted: str | None,
    crashed: list[str],
    stopped: str | None,
    missing: int,
) -> str | None:
    """Why a session did not finish, or None when it did (every planned unit finished)."""
    why = []
    if terminated:
        why.append("terminated by SIGTERM (a CI timeout or kill)")
    elif interrupted:
        why.append(f"interrupted ({interrupted})")
    elif exitstatus == 2:
        why.append("interrupted")
    elif exitstatus == 3:
        why.append("pytest hit an internal error")
    why += [f"a worker crashed while running {c}" for c in crashed]
    if stopped and missing:
        why.append(f"stopped early ({stopped})")
    if missing and not why:
        why.append("the session ended before every collected check ran")
    return "; ".join(why) if why else None


STARTED = (
    "the session has not finished (pid {pid}, started {created}); if it is no longer running, "
    "it was killed or crashed before it could write its reports"
)


def call_safely(fn: Callable[[], Any]) -> Any:
    """``fn()`` with a second Ctrl-C or SIGTERM held off until it returns: the final reports are
    written whole."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return fn()
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return fn()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
