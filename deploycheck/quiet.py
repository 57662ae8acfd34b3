"""A quiet core for timing while other workers of the same session build, export and evaluate.

Under pytest-xdist each worker runs its own variants, and a latency measurement taken beside
another worker's training or export measures the neighbour. Heavy work and timing share one
session-wide reader-writer lock made of two ``flock`` files in the session's run folder (named
by :data:`LOCK_ENV`, set by the plugin for ``-n 2`` and more): heavy work holds ``work`` shared,
so any number of heavy steps overlap; a measurement takes ``gate`` exclusive first, so no new
heavy step starts while it waits, then ``work`` exclusive, so it runs once the steps already
under way have finished, and alone. Two measurements never overlap either.

Without the variable (one process, no xdist) both are no-ops. The lock is advisory and bounded:
a measurement that waited :data:`MAX_WAIT_S` runs anyway, and the timing's own busy-machine
detection (:mod:`deploycheck.timing`) judges it, as it does any other load on the machine.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

LOCK_ENV = "DEPLOYCHECK_QUIET_DIR"
#: longest a measurement waits for heavy steps to finish before it runs anyway (one export of the
#: example LM takes about 30 s on a busy machine; a worker's request timeout is 300 s by default)
MAX_WAIT_S = 90.0

_depth = 0  # heavy sections entered in this process (a forked child inherits its parent's)


def _open(name: str) -> int | None:
    folder = os.environ.get(LOCK_ENV)
    if not folder:
        return None
    try:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None  # an unusable folder costs the quiet core, never the run


def _lock(fd: int, op: int, deadline: float | None) -> bool:
    import fcntl

    if deadline is None:
        fcntl.flock(fd, op)
        return True
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


@contextlib.contextmanager
def heavy() -> Iterator[None]:
    """Around a build, export or evaluation: waits while a measurement is pending or running."""
    global _depth
    if _depth or os.environ.get(LOCK_ENV) is None or not hasattr(os, "fork"):
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    import fcntl

    gate, work = _open("gate.lock"), _open("work.lock")
    try:
        if gate is not None and work is not None:
            _lock(gate, fcntl.LOCK_SH, None)
            _lock(work, fcntl.LOCK_SH, None)
            fcntl.flock(gate, fcntl.LOCK_UN)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
    finally:
        for fd in (work, gate):
            if fd is not None:
                os.close(fd)  # releases its lock


@contextlib.contextmanager
def quiet(max_wait_s: float = MAX_WAIT_S) -> Iterator[float]:
    """Around a timing: runs alone among the session's workers; yields the seconds it waited."""
    if _depth or os.environ.get(LOCK_ENV) is None or not hasattr(os, "fork"):
        # inside a heavy section of this very process (never expected): waiting would deadlock
        yield 0.0
        return
    import fcntl

    t0 = time.monotonic()
    deadline = t0 + max_wait_s
    gate, work = _open("gate.lock"), _open("work.lock")
    try:
        if gate is not None and work is not None and _lock(gate, fcntl.LOCK_EX, deadline):
            _lock(work, fcntl.LOCK_EX, deadline)
        yield time.monotonic() - t0
    finally:
        for fd in (work, gate):
            if fd is not None:
                os.close(fd)


@contextlib.contextmanager
def once(key: tuple) -> Iterator[None]:
    """Around a build or export that the session's workers share through the cache (a variant's
    baseline, which every variant's size and latency ratios need): one worker makes it while the
    others wait, then find it in the cache instead of making it again. Only a leaf step may hold
    it (nothing inside takes another), so no two workers wait on each other."""
    folder = os.environ.get(LOCK_ENV)
    if not folder or not hasattr(os, "fork"):
        yield
        return
    import fcntl
    import hashlib

    fd = _open(os.path.join("once", hashlib.sha256(repr(key).encode()).hexdigest()[:24] + ".lock"))
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)
