"""Deletion only of what deploycheck made.

Every folder deploycheck deletes (cache entries, the cache's staging folders, earlier sessions'
run folders) carries its own marker file and a name deploycheck gives, sits directly in a folder
deploycheck configured, and is reached without following a symlink. A configured folder that is a
symlink resolves outside where it was configured: it is refused with an error naming both paths,
never walked (a cache's ``tmp/`` linked to a home folder once had every old subfolder there deleted).
"""

from __future__ import annotations

import os
import re
import shutil
import stat

#: written into each staging folder when it is made (published entries carry ``checksums.json``)
STAGING_MARK = ".deploycheck-staging"
ENTRY_MARK = "checksums.json"
#: names of the staging folders the store makes (mkdtemp ``<kind>-``) and of entries being evicted
STAGING_NAME = re.compile(r"(built|artifact|result|value)-[A-Za-z0-9_]+|evicted-[0-9a-f]{32}")


class UnsafeFolder(Exception):
    """A folder deploycheck would delete inside resolves outside where it was configured."""


def refuse_link(path: str, what: str, setting: str) -> None:
    """Raise :class:`UnsafeFolder` when ``path`` is a symlink (naming where it leads)."""
    if os.path.islink(path):
        real = os.path.realpath(path)
        raise UnsafeFolder(
            f"deploycheck: the {what} {path} is a symlink and resolves to {real}, outside where it was "
            f"configured; deploycheck deletes only inside folders it owns, so it refuses a linked one: "
            f"set {setting} to {real} itself, or remove the link"
        )


def check_cache_root(root: str) -> None:
    """The cache root and the folders in it that deletion walks are real folders, not links."""
    setting = "--deploycheck-cache-dir (or DEPLOYCHECK_CACHE_DIR)"
    refuse_link(root, "cache folder", setting)
    for sub in ("tmp", "built", "artifact", "result", "value"):
        refuse_link(os.path.join(root, sub), f"cache's {sub}/ folder", setting)


def is_own(path: str, mark: str) -> bool:
    """``path`` is a real folder (not a link) holding deploycheck's marker as a regular file."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        return stat.S_ISREG(os.lstat(os.path.join(path, mark)).st_mode)
    except OSError:
        return False


def remove_own(path: str, *marks: str) -> bool:
    """Delete ``path`` when it carries one of ``marks`` (see :func:`is_own`); True if it went.
    ``shutil.rmtree`` never follows a link inside it (it removes the link itself)."""
    if not any(is_own(path, m) for m in marks):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True
