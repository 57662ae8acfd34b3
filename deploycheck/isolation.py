"""Fresh-process execution with a timeout, and a spare worker so each request skips torch's import.

Each artifact is loaded in a new process that has imported torch but no user code. The next
spare starts as soon as one is handed a request's result back, so its interpreter start and
torch import overlap with the parent's own work instead of adding to every reload.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

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
        data = b"".join(list(self._chunks))[-self.keep:]
        shown = data[-n:].decode("utf-8", "replace")
        lost = self.total - len(data)
        cut = len(data) - min(n, len(data))
        notes = []
        if lost > 0:
            notes.append(f"… {fmt_bytes(lost)} more output not kept")
        if cut > 0:
            notes.append(f"{cut} earlier bytes of output cut")
        return (f"[{'; '.join(notes)}]\n" if notes else "") + shown


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
            why = {"SIGSEGV": "segmentation fault", "SIGABRT": "aborted", "SIGKILL": "killed (out of memory?)",
                   "SIGBUS": "bus error"}.get(name, name)
            return f"the process died with {name} ({why})"
        return f"the process exited with code {rc} without an answer"


class _Proc:
    def __init__(self, workdir: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.setdefault("OMP_NUM_THREADS", "1")
        # -I: no PYTHONPATH, no user site, no script directory: only installed packages are importable.
        self.popen = subprocess.Popen([sys.executable, "-I", "-m", "deploycheck.worker", "--serve"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      cwd=workdir, env=env, start_new_session=True)
        self.output = OutputTail(self.popen.stdout)

    def tail(self) -> str:
        return self.output.text()

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()

    def close(self) -> None:
        pass


class WorkerPool:
    """Hands each request to a fresh, pre-started worker process."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self._spare: _Proc | None = None

    def _take(self) -> _Proc:
        p, self._spare = self._spare, None
        if p is None or p.popen.poll() is not None:
            if p is not None:
                p.close()
            p = _Proc(self.workdir)
        return p

    def run(self, request: WorkerRequest, *, timeout_s: float) -> Outcome:
        req_path = request.result + ".request.json"
        with open(req_path, "w") as fh:
            json.dump(request.to_json(), fh)
        proc = self._take()
        t0 = time.perf_counter()
        timed_out = False
        try:
            proc.popen.stdin.write((req_path + "\n").encode())
            proc.popen.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
        seconds = time.perf_counter() - t0
        result = None
        if not timed_out and os.path.exists(request.result):
            with open(request.result) as fh:
                result = WorkerResult.from_json(json.load(fh))
        out = Outcome(result, proc.popen.returncode, timed_out, proc.tail(), seconds)
        proc.close()
        self._spare = _Proc(self.workdir)
        return out

    def close(self) -> None:
        if self._spare is not None:
            self._spare.kill()
            self._spare.close()
            self._spare = None
