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
import tempfile
import time
from dataclasses import dataclass

from .protocol import WorkerRequest, WorkerResult

TAIL = 4000


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
        self.log_path = tempfile.mktemp(prefix="worker-", suffix=".log", dir=workdir)
        self.log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.setdefault("OMP_NUM_THREADS", "1")
        # -I: no PYTHONPATH, no user site, no script directory: only installed packages are importable.
        self.popen = subprocess.Popen([sys.executable, "-I", "-m", "deploycheck.worker", "--serve"],
                                      stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
                                      cwd=workdir, env=env, start_new_session=True)

    def tail(self) -> str:
        self.log.flush()
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - TAIL))
                data = fh.read().decode("utf-8", "replace")
            prefix = f"[… {size - TAIL} earlier bytes of output cut]\n" if size > TAIL else ""
            return prefix + data
        except OSError:
            return ""

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()

    def close(self) -> None:
        self.log.close()
        try:
            os.unlink(self.log_path)
        except OSError:
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
        assert proc.popen.stdin is not None  # opened with stdin=PIPE
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
