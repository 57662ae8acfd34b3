"""sha256 of files, remembered for this process while a file's identity stays the same (a low
layer: the Hugging Face sources hash GGUF files with it without importing the cache or formats)."""

from __future__ import annotations

import hashlib
import os
import time

_SEEN: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """The file's sha256; read once per process while its inode, size and mtime are unchanged
    (a file changed within the last two seconds is read every time: its mtime may not have moved)."""
    st = os.stat(path)
    ident = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if ident in _SEEN:
        return _SEEN[ident]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        _SEEN[ident] = digest
    return digest
