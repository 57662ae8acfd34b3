"""sha256 of files, remembered per process by each file's change stamps. The bottom layer: the
artifacts' integrity (:mod:`deploycheck.formats.integrity`), the cache keys and the Hugging Face
sources (a GGUF file) all hash through it, without importing one another."""

from __future__ import annotations

import hashlib
import os
import time

#: sha256 of files this process already read, by identity and change stamps (device, inode, size,
#: mtime and ctime in ns, taken from the open file): a cache entry, an artifact or a data file is
#: hashed once per session however many keys and checks read it; any write to it changes its
#: ctime, so a changed file is always read again. File times tick coarsely (a few ms): as git does
#: with "racy" index entries, a file changed in the last two seconds is not remembered, since a
#: second write within the same tick would leave every stamp as it was.
_SHA: dict[tuple[int, int, int, int, int], str] = {}
_RACY_NS = 2_000_000_000


def sha256(path: str) -> str:
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = _SHA.get(stamp)
        if known is not None:
            return known
        h = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        _SHA[stamp] = digest
    return digest


def remember(st: os.stat_result, digest: str) -> None:
    """Record the sha256 of a file just written whole from bytes already hashed (stamps ``st``)."""
    _SHA[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)] = digest
