"""The run folder: where a session's artifacts, inputs and worker files go.

``<base>/run/<session>/<worker>``: one folder per session, so concurrent sessions never share
files; xdist workers inherit the controller's session through the environment. A new session
removes the folders of earlier sessions that have ended (their process is gone), so the last
session's artifacts stay until the next session starts: only folders it made (a session's name and
marker file), never through a link; a run folder that is a link is refused (see
:mod:`deploycheck.cache.safe`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time

from .cache.safe import refuse_link, remove_own

SESSION_ENV = "DEPLOYCHECK_SESSION"
#: written into each session's folder when it starts: what a later session may delete
RUN_MARK = ".deploycheck-run"


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
    setting = "--deploycheck-run-dir"
    refuse_link(base, "run folder", setting)
    runs = os.path.join(base, "run")
    refuse_link(runs, "run folder's run/ folder", setting)
    session = f"{os.getpid()}-{int(time.time())}"
    os.environ[SESSION_ENV] = session
    os.makedirs(os.path.join(runs, session), exist_ok=True)
    open(os.path.join(runs, session, RUN_MARK), "w").close()
    for name in sorted(os.listdir(runs)):
        m = re.fullmatch(r"(\d+)-\d+", name)
        if m is None or _alive(int(m.group(1))):
            continue
        remove_own(os.path.join(runs, name), RUN_MARK)


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
