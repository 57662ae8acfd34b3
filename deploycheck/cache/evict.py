"""Where the cache lives, how big it is, and least-recently-used eviction."""

from __future__ import annotations

import os

from .safe import ENTRY_MARK, STAGING_MARK, STAGING_NAME, check_cache_root, is_own, remove_own
from .store import remove_entry

DEFAULT_MAX_BYTES = 2 * 1000**3  # 2 GB
KINDS = ("built", "artifact", "result", "value", "converted")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def default_root() -> str:
    """The user's cache folder, shared by every checkout (keys are content hashes):
    $DEPLOYCHECK_CACHE_DIR, else $XDG_CACHE_HOME/deploycheck, else the platform's cache folder."""
    import sys

    if os.environ.get("DEPLOYCHECK_CACHE_DIR"):
        return os.path.abspath(os.environ["DEPLOYCHECK_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.environ["XDG_CACHE_HOME"], "deploycheck")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/deploycheck")
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return os.path.join(os.environ["LOCALAPPDATA"], "deploycheck", "Cache")
    return os.path.expanduser("~/.cache/deploycheck")


def parse_size(text: str | int) -> int:
    """'2GB', '500MB', '1.5GiB' or a number of bytes -> bytes."""
    import re

    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 500MB, 2GB, 1.5GiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_size(n: int) -> str:
    for unit, f in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


def _tree_size(path: str) -> int:
    total = 0
    for d, _, fs in os.walk(path):
        for f in fs:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


def entries(root: str) -> list[dict]:
    """Every published entry: kind, key, path, bytes, last use (mtime of its folder). Only real
    folders carrying the entry marker count; links and anything else found there are left alone.
    :class:`~deploycheck.cache.safe.UnsafeFolder` when the cache or a folder in it is a link."""
    check_cache_root(root)
    out = []
    for kind in KINDS:
        base = os.path.join(root, kind)
        if not os.path.isdir(base):
            continue
        for shard in sorted(os.listdir(base)):
            sd = os.path.join(base, shard)
            if os.path.islink(sd) or not os.path.isdir(sd):
                continue
            for key in sorted(os.listdir(sd)):
                d = os.path.join(sd, key)
                if not is_own(d, ENTRY_MARK):
                    continue
                try:
                    used = os.stat(d).st_mtime
                except OSError:
                    continue
                out.append({"kind": kind, "key": key, "path": d, "bytes": _tree_size(d), "used": used})
    return out


def evict(root: str, max_bytes: int) -> list[dict]:
    """Remove least recently used entries until the cache is at most ``max_bytes``; returns them.
    Staging folders older than an hour (an interrupted writer) go too: only those deploycheck made
    (its name and marker), never through a link (see :mod:`deploycheck.cache.safe`)."""
    import time

    check_cache_root(root)
    for p in _staging(root):
        try:
            if time.time() - os.lstat(p).st_mtime > 3600:
                remove_own(p, STAGING_MARK, ENTRY_MARK)
        except OSError:
            pass
    es = entries(root)
    total = sum(e["bytes"] for e in es)
    removed = []
    for e in sorted(es, key=lambda e: (e["used"], e["path"])):
        if total <= max_bytes:
            break
        remove_entry(e["path"])
        total -= e["bytes"]
        removed.append(e)
    return removed


def clean(root: str, *, older_than_s: float | None = None) -> list[dict]:
    """Remove every entry, or only those unused for longer than ``older_than_s``."""
    import time

    now = time.time()
    gone = [e for e in entries(root) if older_than_s is None or now - e["used"] > older_than_s]
    for e in gone:
        remove_entry(e["path"])
    if older_than_s is None:
        for p in _staging(root):
            remove_own(p, STAGING_MARK, ENTRY_MARK)
    return gone


def _staging(root: str) -> list[str]:
    """The staging folders deploycheck's store named in ``<root>/tmp`` (a linked tmp/ is refused
    before this by :func:`check_cache_root`)."""
    staging = os.path.join(root, "tmp")
    if os.path.islink(staging) or not os.path.isdir(staging):
        return []
    return [os.path.join(staging, n) for n in sorted(os.listdir(staging)) if STAGING_NAME.fullmatch(n)]
