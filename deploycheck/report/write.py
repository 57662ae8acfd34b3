"""Writing a report: the JSON record of the run with its metadata (machine, libraries, git
commit, spec file hashes), and its Markdown and HTML renderings, written together as a set."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess

from ..formats.integrity import library_versions
from ..machine import fingerprint
from . import SCHEMA_VERSION, markdown, summary_lines, summary_rows
from .html import render
from .records import Record, as_records


def _git(rootdir: str) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=rootdir, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=rootdir, capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def metadata(records, rootdir: str, exitstatus: int, incomplete: str | None = None, *, light: bool = False) -> dict:
    files = sorted({r.file for r in as_records(records)})
    hashes: dict[str, str | None] = {}
    for f in files:
        p = f if os.path.isabs(f) else os.path.join(rootdir, f)
        try:
            with open(p, "rb") as fh:
                hashes[f] = hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            hashes[f] = None
    return {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "exitstatus": exitstatus,
        "complete": incomplete is None,
        "incomplete": incomplete,
        "machine": fingerprint(light=light),
        "libraries": library_versions(),
        "git": _git(rootdir),
        "spec_files": hashes,
    }


def write_reports(
    records,
    out_dir: str,
    *,
    rootdir: str,
    exitstatus: int,
    incomplete: str | None = None,
    draw: bool = True,
    shard: dict | None = None,
) -> list[str]:
    """The session's report set; ``incomplete`` says why the session did not finish (None: it did);
    ``draw=False`` leaves the HTML plots out (the set written before the first result)."""
    recs = sorted(as_records(records), key=Record.sort_key)
    meta = metadata(recs, rootdir, exitstatus, incomplete, light=not draw)  # before the first result: no torch
    doc = {**meta, "rows": summary_rows(recs), "records": [r.to_json() for r in recs]}
    if shard is not None:  # which share of the units this was, and the whole plan (merge checks it)
        doc["shard"] = shard
    return write_documents(doc, out_dir, draw=draw)


def write_documents(doc: dict, out_dir: str, *, stem: str = "deploycheck", draw: bool = True) -> list[str]:
    """Write the JSON record and the Markdown and HTML renderings of one report document, as a
    set: all three are rendered and written to temporary names first, and renamed into place only
    once every one is on disk, so a failure (a full disk, a crash while rendering) leaves the
    previous set whole rather than a mix of two sessions' files."""
    rows = doc["rows"]
    texts = {
        "md": markdown(rows, doc, full_report=f"{stem}.html"),
        "html": render(rows, doc, summary_lines(rows), draw=draw),
        "json": json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n",
    }
    paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in texts}
    os.makedirs(out_dir or ".", exist_ok=True)
    tmps: dict[str, str] = {}
    try:
        for ext, text in texts.items():
            tmps[ext] = f"{paths[ext]}.{os.getpid()}.tmp"
            with open(tmps[ext], "w", encoding="utf-8") as fh:
                fh.write(text)
    except BaseException:
        for t in tmps.values():
            try:
                os.unlink(t)
            except OSError:
                pass
        raise
    for ext in ("md", "html", "json"):  # the JSON, which tools read, last
        os.replace(tmps[ext], paths[ext])
    return [paths["md"], paths["html"], paths["json"]]


PARTIAL = "deploycheck.partial.jsonl"


class Journal:
    """Each finished item's record, appended to ``deploycheck.partial.jsonl`` in the report dir as
    soon as it is known (one JSON object a line, flushed), so a session that dies in its own
    process (a crash while saving, an in-memory model run that segfaults) leaves the results it had.
    Started afresh by each session; removed once the full reports are written."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, PARTIAL)
        self._mode = "w"  # the first record replaces an earlier session's journal
        self._broken = False

    def add(self, record_json: str) -> None:
        if self._broken:
            return
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, self._mode, encoding="utf-8") as fh:
                fh.write(record_json + "\n")  # compact JSON: one line
            self._mode = "a"
        except OSError:
            self._broken = True  # the reports at the end say what is wrong with the folder

    def close(self) -> None:
        """The full reports are written: the journal has done its job."""
        if self._mode == "a":
            try:
                os.unlink(self.path)
            except OSError:
                pass
