"""Fresh-process execution with a timeout: artifacts in workers, the spec's own code in forked children.

Each artifact is loaded in a new process that has imported torch but no user code. A session
starts one zygote (``python -I -m deploycheck.worker --zygote``) at its first request; the zygote
imports torch once and forks a child per request, so no request pays torch's import and no
import is paid for a worker that is never used. Outside Linux, or with
``DEPLOYCHECK_WORKER_START=spawn``, each request gets a process started for it instead, with the
next one started as soon as the last answered, so its torch import overlaps the parent's work.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from .errors import StageError
from .protocol import WorkerRequest, WorkerResult

TAIL = 4000
#: Bytes of a worker's output kept in memory (its last ones); the rest is counted, not stored, so a
#: model that floods stdout costs neither memory nor disk.
KEEP = 1 << 20


def fmt_bytes(n: int) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} bytes"


class OutputTail:
    """Drains a pipe on a thread, keeping its last :data:`KEEP` bytes and counting the rest."""

    def __init__(self, stream, keep: int = KEEP):
        self.keep = keep
        self.total = 0
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream) -> None:
        try:
            for chunk in iter(lambda: stream.read1(1 << 16), b""):
                self.total += len(chunk)
                self._chunks.append(chunk)
                self._held += len(chunk)
                while self._held - len(self._chunks[0]) >= self.keep:
                    self._held -= len(self._chunks.popleft())
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def text(self, n: int = TAIL, wait_s: float = 2.0) -> str:
        """The last ``n`` characters, after a line saying how much came before them."""
        self._thread.join(wait_s)
        data = b"".join(list(self._chunks))[-self.keep :]
        shown = data[-n:].decode("utf-8", "replace")
        lost = self.total - len(data)
        cut = len(data) - min(n, len(data))
        notes = []
        if lost > 0:
            notes.append(f"… {fmt_bytes(lost)} more output not kept")
        if cut > 0:
            notes.append(f"{cut} earlier bytes of output cut")
        return (f"[{'; '.join(notes)}]\n" if notes else "") + shown


#: the pid of the process that started a worker (see :func:`die_with_parent`)
PARENT_ENV = "DEPLOYCHECK_PARENT_PID"
#: ``fork`` (the default where available: children of one zygote) or ``spawn`` (a process per request)
START_ENV = "DEPLOYCHECK_WORKER_START"


def exit_child(code: int) -> NoReturn:
    """Leave a forked child: flush what it printed, then end without returning into the caller's
    stack or running the parent's atexit handlers."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel kill this process when ``parent`` ends, even by SIGKILL, so a
    worker or build whose session was killed outright does not run on. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the request was made
        os._exit(1)


@dataclass
class Outcome:
    result: WorkerResult | None  # the worker's answer, or None when it died
    returncode: int | None
    timed_out: bool
    log_tail: str
    seconds: float

    def death(self) -> str | None:
        """Why the process gave no answer, in words."""
        if self.result is not None:
            return None
        if self.timed_out:
            return "the process was killed after its timeout"
        rc = self.returncode
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            why = {
                "SIGSEGV": "segmentation fault",
                "SIGABRT": "aborted",
                "SIGKILL": "killed (out of memory?)",
                "SIGBUS": "bus error",
            }.get(name, name)
            return f"the process died with {name} ({why})"
        return f"the process exited with code {rc} without an answer"


def start_method() -> str:
    """How workers start: ``DEPLOYCHECK_WORKER_START`` (``fork`` or ``spawn``), else fork on Linux
    and spawn elsewhere. ValueError names the variable for any other value."""
    got = os.environ.get(START_ENV, "")
    if got not in ("", "fork", "spawn"):
        raise ValueError(f"{START_ENV}={got!r}: expected 'fork' (children of one zygote) or 'spawn' (a process each)")
    if got == "fork" and not hasattr(os, "fork"):
        raise ValueError(f"{START_ENV}=fork: this platform has no fork; use 'spawn'")
    # Linux by default: the zygote counts its threads in /proc before each fork (see worker.zygote)
    return got or ("fork" if sys.platform.startswith("linux") else "spawn")


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env[PARENT_ENV] = str(os.getpid())
    return env


class _Proc:
    """A worker process started for one request (``--serve``)."""

    def __init__(self, workdir: str):
        # -I: no PYTHONPATH, no user site, no script directory: only installed packages are importable.
        self.popen = subprocess.Popen(
            [sys.executable, "-I", "-m", "deploycheck.worker", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=_worker_env(),
            start_new_session=True,
        )
        self.output = OutputTail(self.popen.stdout)

    def tail(self) -> str:
        return self.output.text()

    def wait(self, timeout_s: float) -> bool:
        """Whether the worker ended within ``timeout_s``; it stays unreaped, so its process group
        is still this worker's own when :meth:`kill` sends to it."""
        return _await_exit(self.popen.pid, timeout_s)

    def kill(self) -> None:
        """Kill the worker's whole process group (it runs in its own session): whatever its model
        started goes too, then reap it."""
        _kill_group(self.popen.pid)
        self.popen.wait()


class _ZygoteGone(Exception):
    """The zygote ended (or stopped answering) before it forked the request's child."""


class _Zygote:
    """``python -I -m deploycheck.worker --zygote FD``: forks a child per request (see
    :func:`deploycheck.worker.zygote` for the protocol on the socket)."""

    def __init__(self, workdir: str):
        ours, theirs = socket.socketpair()
        self.log_path = os.path.join(workdir, "zygote.log")
        with open(self.log_path, "wb") as log:
            # -I: no PYTHONPATH, no user site, no script directory: only installed packages are importable.
            self.popen = subprocess.Popen(
                [sys.executable, "-I", "-m", "deploycheck.worker", "--zygote", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=_worker_env(),
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        theirs.close()
        self.sock = ours
        self._buf = b""

    def send(self, path: str, out_fd: int) -> None:
        try:
            socket.send_fds(self.sock, [path.encode()], [out_fd])
        except OSError as e:
            raise _ZygoteGone(str(e)) from e

    def line(self, deadline: float) -> str | None:
        """The zygote's next line; None when it ended; TimeoutError past ``deadline`` (monotonic)."""
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def death(self) -> Outcome:
        """What to report when the zygote itself is gone: its exit and its own output."""
        self.kill()
        return Outcome(None, self.popen.returncode, False, _read_text(self.log_path, TAIL), 0.0)

    def kill(self) -> None:
        _kill_group(self.popen.pid)
        self.popen.wait()
        self.sock.close()


def _close_pool(ref: weakref.ref[WorkerPool]) -> None:
    pool = ref()
    if pool is not None:
        pool.close()


class WorkerPool:
    """Answers each request in a fresh worker process: a child forked from this session's zygote,
    or a process started for it (see the module's docstring)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.start = start_method()
        self._spare: _Proc | None = None
        self._zygote: _Zygote | None = None
        # a session that ends without closing the pool (an error, Ctrl-C) leaves no process behind
        atexit.register(_close_pool, weakref.ref(self))

    def run(self, request: WorkerRequest, *, timeout_s: float) -> Outcome:
        req_path = request.result + ".request.json"
        with open(req_path, "w") as fh:
            json.dump(request.to_json(), fh)
        out = self._forked(req_path, timeout_s) if self.start == "fork" else None
        if out is None:
            out = self._spawned(req_path, timeout_s)
        result, unreadable = None, None
        if not out.timed_out and os.path.exists(request.result):
            try:
                with open(request.result) as fh:
                    result = WorkerResult.from_json(json.load(fh))
            except ValueError as e:  # the worker's JSON is data: malformed, it fails the item
                unreadable = e
        if unreadable is not None:
            raise unreadable
        out.result = result
        return out

    def _spawned(self, req_path: str, timeout_s: float) -> Outcome:
        p, self._spare = self._spare, None
        if p is None or p.popen.poll() is not None:
            p = _Proc(self.workdir)
        t0 = time.perf_counter()
        timed_out = False
        assert p.popen.stdin is not None  # opened with stdin=PIPE
        try:
            p.popen.stdin.write((req_path + "\n").encode())
            p.popen.stdin.close()
        except BrokenPipeError:
            pass
        try:
            timed_out = not p.wait(timeout_s)
        finally:  # also on Ctrl-C: the worker and every process it started end here
            p.kill()
        seconds = time.perf_counter() - t0
        out = Outcome(None, p.popen.returncode, timed_out, p.tail(), seconds)
        self._spare = _Proc(self.workdir)
        return out

    def _forked(self, req_path: str, timeout_s: float) -> Outcome | None:
        """The request answered by a child of the zygote; None when the zygote cannot fork safely
        (it has started threads), and the request goes to a process of its own instead."""
        for last_try in (False, True):  # a zygote that died since the last request is started again, once
            if self._zygote is None or self._zygote.popen.poll() is not None:
                self._drop_zygote()
                self._zygote = _Zygote(self.workdir)
            z = self._zygote
            r, w = os.pipe()
            tail = OutputTail(os.fdopen(r, "rb"))
            t0 = time.perf_counter()
            try:
                z.send(req_path, w)
                # the zygote reads the request once torch is imported: that import is not the request's time
                reply = z.line(time.monotonic() + max(600.0, timeout_s))
            except (_ZygoteGone, TimeoutError):
                reply = None
            finally:
                os.close(w)
            if reply == "spawn":
                self._drop_zygote()
                self.start = "spawn"
                return None
            if reply is not None and reply.startswith("forked "):
                return self._await_child(z, int(reply.split()[1]), tail, t0, timeout_s)
            self._drop_zygote()
            if last_try:
                return z.death()
        raise AssertionError("unreachable: the last try returns")

    def _await_child(self, z: _Zygote, pid: int, tail: OutputTail, t0: float, timeout_s: float) -> Outcome:
        code: int | None = None
        timed_out = False
        ended = False
        try:
            try:
                last = z.line(time.monotonic() + timeout_s)
            except TimeoutError:
                timed_out, last = True, None
            if last is not None and last.startswith(f"exit {pid} "):
                code, ended = int(last.split()[2]), True
        except BaseException:  # Ctrl-C: the zygote's answer for this child is never read
            self._drop_zygote()
            raise
        finally:  # the child and every process it started end here
            _kill_group(pid)
            if not ended:
                try:
                    os.kill(pid, signal.SIGKILL)  # not yet in its own group if it was killed at once
                except (ProcessLookupError, PermissionError):
                    pass
        seconds = time.perf_counter() - t0
        if not ended:
            try:
                last = z.line(time.monotonic() + 10.0)
            except (TimeoutError, KeyboardInterrupt):
                last = None
            if last is not None and last.startswith(f"exit {pid} "):
                code = int(last.split()[2])
            else:  # out of step with the zygote: the next request starts a new one
                self._drop_zygote()
        return Outcome(None, code, timed_out, tail.text(), seconds)

    def _drop_zygote(self) -> None:
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote = None

    def close(self) -> None:
        if self._spare is not None:
            self._spare.kill()
            self._spare = None
        self._drop_zygote()


# --- the spec's own code (factories, data callables, recipes) in a forked child -----------------


class ChildGone(Exception):
    """The forked child gave no answer: it ran past its timeout or ended without one.

    ``stacks`` is Python's own dump of every thread of the child (faulthandler): where it was
    when the timeout struck, or where a fatal signal (segfault, abort) hit it."""

    def __init__(self, why: str, *, timed_out: bool, stacks: str = ""):
        super().__init__(why)
        self.why, self.timed_out, self.stacks = why, timed_out, stacks


class ChildUnpicklable(Exception):
    """The child's answer could not be pickled, so it cannot come back (e.g. a local class)."""


class RemoteError(Exception):
    """An exception raised by the child's function that could not be sent back as itself."""

    def __init__(self, description: str, traceback_text: str):
        super().__init__(description)
        self.description, self.traceback_text = description, traceback_text


def can_fork() -> bool:
    """Whether user code can run in a forked child: POSIX fork, and no CUDA context in this
    process (CUDA cannot be used in a child forked after it was initialised)."""
    if not hasattr(os, "fork"):
        return False
    torch = sys.modules.get("torch")
    try:
        return not (torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a torch without CUDA support answers nothing useful
        return True


def status_words(status: int) -> str:
    """A child's wait status in words, as :meth:`Outcome.death` says it for workers."""
    if os.WIFSIGNALED(status):
        return Outcome(None, -os.WTERMSIG(status), False, "", 0.0).death() or ""
    return Outcome(None, os.waitstatus_to_exitcode(status), False, "", 0.0).death() or ""


def call_forked(fn: Callable[[], Any], *, timeout_s: float, workdir: str) -> Any:
    """``fn()`` run in a forked child in its own process group; its value comes back pickled
    (``torch.save``) through a pipe. The child is this process's own copy running the spec's code,
    so what it sends is as trusted as the spec. On return, timeout, death or Ctrl-C, the child's
    whole process group is killed, so nothing it started survives it.

    Raises :class:`ChildGone` when it times out or dies, :class:`ChildUnpicklable` when its value
    cannot be pickled, and :class:`RemoteError` when ``fn`` raised something unpicklable."""
    import io
    import warnings

    os.makedirs(workdir, exist_ok=True)
    dump_fd, dump_path = tempfile.mkstemp(prefix="build-", suffix=".stacks", dir=workdir)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: "process is multi-threaded"
        pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack
        code = 0
        try:
            os.close(r)
            os.setpgid(0, 0)
            die_with_parent(parent)
            _child_setup(dump_fd)
            _child_run(fn, w, io)
        except BaseException:  # noqa: BLE001 - the parent reports the missing answer
            code = 70
        finally:
            exit_child(code)
    os.close(w)
    os.close(dump_fd)
    try:
        os.setpgid(pid, pid)  # also from this side: killpg works even before the child ran a line
    except OSError:
        pass
    reaped = False
    try:
        data, timed_out = _read_answer(r, pid, timeout_s)
        if timed_out:
            _dump_stacks(pid, dump_path)
        else:  # it ends by itself once it has answered (or died); then whatever it started goes
            _await_exit(pid, 5.0)
        _kill_group(pid)
        _, status = os.waitpid(pid, 0)
        reaped = True
        stacks = _read_text(dump_path)
        if timed_out:
            raise ChildGone(f"did not finish within {timeout_s:g} s and was killed", timed_out=True, stacks=stacks)
        if data is None:
            raise ChildGone(
                status_words(status).replace("the process", "the build process", 1), timed_out=False, stacks=stacks
            )
    finally:
        if not reaped:  # Ctrl-C or an error while waiting: the child and its children go too
            _kill_group(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os.close(r)
        try:
            os.unlink(dump_path)
        except OSError:
            pass
    import torch

    try:
        kind, *rest = torch.load(io.BytesIO(data), weights_only=False)  # this process's own child wrote it
    except Exception as e:  # noqa: BLE001 - pickled, but cannot be rebuilt here
        raise ChildUnpicklable(f"{type(e).__name__}: {e}") from e
    if kind == "ok":
        return rest[0]
    if kind == "unpicklable":
        raise ChildUnpicklable(rest[0])
    if kind == "raised":
        raise rest[0]
    raise RemoteError(rest[0], rest[1])


def _child_setup(fd: int) -> None:
    import faulthandler

    torch = sys.modules.get("torch")
    if torch is not None:
        # GNU OpenMP cannot start a thread team in a process forked after its parent ran one: a
        # second thread would hang the child on its first parallel operator.
        torch.set_num_threads(1)
    faulthandler.cancel_dump_traceback_later()  # pytest's faulthandler_timeout belongs to the parent
    faulthandler.enable(file=fd, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=fd, all_threads=True, chain=False)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent alone handles Ctrl-C, and kills this group


def _child_run(fn: Callable[[], Any], w: int, io: Any) -> None:
    import traceback

    import torch

    try:
        payload: tuple = ("ok", fn())
    except StageError as e:  # pickles by value (see StageError.__reduce__)
        payload = ("raised", e)
    except BaseException as e:  # noqa: BLE001 - any other exception comes back as its text and traceback
        text = str(e).strip()
        payload = (
            "remote",
            f"{type(e).__name__}: {text}" if text else type(e).__name__,
            "".join(traceback.format_exception(e))[-3000:],
        )
    buf = io.BytesIO()
    try:
        torch.save(payload, buf)
    except Exception as e:  # noqa: BLE001 - the value cannot be pickled
        buf = io.BytesIO()
        torch.save(("unpicklable", f"{type(e).__name__}: {e}"), buf)
    data = buf.getvalue()
    view = memoryview(len(data).to_bytes(8, "little") + data)
    while view:
        n = os.write(w, view)
        view = view[n:]
    os.close(w)


def _read_answer(r: int, pid: int, timeout_s: float) -> tuple[bytes | None, bool]:
    """(the answer, or None when the child ended without all of it; whether time ran out).
    The answer is length-prefixed and the child's exit is watched, so a grandchild that kept the
    pipe open cannot hold us up."""
    import select

    deadline = time.monotonic() + timeout_s
    buf = bytearray()
    need: int | None = None
    while need is None or len(buf) < need + 8:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, True
        ready, _, _ = select.select([r], [], [], min(left, 0.25))
        if not ready:
            if _exited(pid) and not select.select([r], [], [], 0)[0]:
                return None, False
            continue
        chunk = os.read(r, 1 << 20)
        if not chunk:
            return None, False
        buf += chunk
        if need is None and len(buf) >= 8:
            need = int.from_bytes(buf[:8], "little")
    return bytes(buf[8 : 8 + need]), False


def _exited(pid: int) -> bool:
    """Whether the child has ended, leaving it unreaped (its pid, and so its group, stay ours)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _await_exit(pid: int, seconds: float) -> bool:
    """Whether the child ``pid`` ended within ``seconds`` (left unreaped, see :func:`_exited`)."""
    end = time.monotonic() + seconds
    pause = 0.002
    while not _exited(pid):
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
    return True


def _dump_stacks(pid: int, path: str) -> None:
    """Ask the child's faulthandler for every thread's stack, and give it a moment to write it
    (it writes from its signal handler, so even a child stuck in C code answers)."""
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return
    end, last = time.monotonic() + 2.0, -1
    while time.monotonic() < end:
        time.sleep(0.05)
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size and size == last:
            return
        last = size


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_text(path: str, limit: int = 20000) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read()[-limit:].decode("utf-8", "replace")
    except OSError:
        return ""


def call_in_thread(fn: Callable[[], Any], *, timeout_s: float) -> Any:
    """``fn()`` in this process, in a daemon thread joined with a timeout: the fallback where no
    child can be forked. A timed-out ``fn`` cannot be stopped: it keeps running in the background
    until the session ends. Raises :class:`ChildGone` with the thread's stack on a timeout."""
    import threading
    import traceback

    box: dict[str, Any] = {}

    def target():
        try:
            box["ok"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["err"] = e

    th = threading.Thread(target=target, name="deploycheck-build", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        frame = sys._current_frames().get(th.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        raise ChildGone(
            f"did not finish within {timeout_s:g} s (it still runs in the background: a build in "
            f"this process cannot be killed)",
            timed_out=True,
            stacks=f"Thread {th.name} (most recent call last):\n{stack}",
        )
    if "err" in box:
        raise box["err"]
    return box["ok"]
