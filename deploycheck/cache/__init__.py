"""Cross-session cache of built variants, artifacts, fresh-process results and in-memory
evaluations, by content hash.

A key hashes everything that can change the result: the spec fields that matter, the weights
file, the source of the model code (factory, student, callables), deploycheck's own source,
the library versions, and for results also every file the worker reads, by content (the
artifact, its sidecar manifest in full, the KV-cache step, the shipped tokenizer, an ONNX graph's
external data, the baseline it is timed against), the evaluation inputs, the measurement settings
and the machine. A file the loader refuses (checksum mismatch, a manifest naming code or modules,
a changed KV-cache step) skips the cache on every run. In-memory evaluations (semantic and
batch-invariance inputs, greedy generations) are kept under the built variant's key, what is
computed and its inputs by content. A changed input invalidates exactly what depends on it.

Entries are written atomically (temp file + rename), so xdist workers and interrupted runs never
leave a half-written entry. Each entry records the sha256 of its files at publish
(``checksums.json``) and is verified before every use: a damaged entry (flipped bits, a truncated
file) is removed and rebuilt, with one warning saying so.

A cache folder may come from elsewhere (a CI cache, a shared disk), so nothing in it chooses code
to run: built models are read back with ``weights_only=True``, allowing only module and tensor
classes of torch, torchao, deploycheck and the modules the spec names (see :func:`load_model`);
a model that needs anything else is not stored (its entry keeps the build's facts and outputs,
and the model is rebuilt only when a save needs it). Pickle-format artifacts are never cached.

A cache that cannot be written (a full disk, a read-only folder) turns itself off with one
warning; the run goes on without it.
"""

from __future__ import annotations

from .evict import DEFAULT_MAX_BYTES, KINDS, clean, default_root, entries, evict, fmt_size, parse_size
from .keys import artifact_key, build_key, code_paths, result_key, value_key
from .store import Cache, CacheWarning, allowed_global, load_model

__all__ = [
    "DEFAULT_MAX_BYTES",
    "KINDS",
    "Cache",
    "CacheWarning",
    "allowed_global",
    "artifact_key",
    "build_key",
    "clean",
    "code_paths",
    "default_root",
    "entries",
    "evict",
    "fmt_size",
    "load_model",
    "parse_size",
    "result_key",
    "value_key",
]
