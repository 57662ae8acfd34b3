"""The run folder: where a session's artifacts, inputs and worker files go.

``<base>/run/<session>/<worker>``: one folder per session, so concurrent sessions never share
files; xdist workers inherit the controller's session through the environment. A new session
removes the folders of earlier sessions that have ended (their process is gone), so the last
session's artifacts stay until the next session starts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time

SESSION_ENV = "DEPLOYCHECK_SESSION"


def base_dir(rootpath: str, given: str | None) -> str:
    """``given`` (--deploycheck-run-dir), else a folder in the temp dir named after the rootdir."""
    if given:
        return os.path.abspath(given)
    tag = hashlib.sha256(str(rootpath).encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"deploycheck-{tag}")


def session_dir(base: str, *, worker: str = "main") -> str:
    """This session's (and xdist worker's) folder under ``base``."""
    return os.path.join(base, "run", os.environ.get(SESSION_ENV, f"{os.getpid()}"), worker)


def start_session(base: str) -> None:
    """Name this session (in the environment its xdist workers inherit) and remove the folders
    of the sessions under ``base`` that have ended."""
    os.environ[SESSION_ENV] = f"{os.getpid()}-{int(time.time())}"
    runs = os.path.join(base, "run")
    if not os.path.isdir(runs):
        return
    for name in os.listdir(runs):
        pid = name.split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(runs, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
