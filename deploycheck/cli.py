"""The ``deploycheck`` command: validate, schema, init, inspect, compare, merge."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile

from .cache import KINDS, clean, default_root, entries, fmt_size
from .cache.safe import UnsafeFolder
from .errors import SpecError
from .formats import FORMATS, formats_by_name, sniff
from .formats.integrity import FORMAT_NAMES, Diagnosis, check_file, read_manifest, sha256
from .isolation import WorkerPool
from .loading import describe_exc
from .protocol import ArtifactRef, load_request
from .report.compare import add_commands
from .resolve import missing_requirements, name_problems
from .spec import duplicate_name, parse, parse_file
from .spec.loader import may_be_spec
from .spec.model import Spec
from .spec.schema import json_schema


def _spec_files(paths: list[str]) -> list[str]:
    out = []
    for p in paths or ["specs"]:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if f.endswith((".yaml", ".yml")):
                        full = os.path.join(root, f)
                        if may_be_spec(full):
                            out.append(full)
        else:
            out.append(p)
    return out


def cmd_validate(args) -> int:
    files = _spec_files(args.paths)
    if not files:
        print("no deploycheck specs found (a spec is a YAML file with a top-level 'deploycheck: 1')", file=sys.stderr)
        return 1
    bad = 0
    names: dict[str, str] = {}
    for f in files:
        try:
            spec = parse_file(f)
        except SpecError as e:
            bad += 1
            print(e)
            continue
        spec = dataclasses.replace(spec, display=f)
        other = names.setdefault(spec.name, f)
        if other != f:
            bad += 1
            print(duplicate_name(spec, other))
            continue
        unresolved = name_problems(spec)
        if unresolved:
            bad += 1
            print(SpecError(f, unresolved))
            continue
        n = len(spec.variants)
        formats = sorted({fs.name for v in spec.variants.values() for fs in v.formats})
        lacking = missing_requirements(spec)
        note = f"; cannot run on this installation: {lacking}" if lacking else ""
        print(f"{f}: ok ({spec.name}: {n} variant{'s' * (n != 1)}, formats {', '.join(formats)}){note}")
    print(f"{len(files) - bad} valid, {bad} invalid")
    return 1 if bad else 0


def cmd_schema(args) -> int:
    print(json.dumps(json_schema(Spec), indent=2, sort_keys=True))
    return 0


INIT_TEMPLATE = """\
# yaml-language-server: $schema={schema}
deploycheck: 1
name: {name}
model:
  factory: {factory}
  inputs:{inputs}
  # weights: model.safetensors      # relative to this file; omit to keep the factory's initialisation
data:
  source: {data}{preprocess}
metric: {metric}
formats: [export, torchscript]
variants:
  baseline: {{}}
  int8:
    quantize: {{method: dynamic_int8}}
thresholds:
  metric: {{max_drop: 0.01}}
  outputs: {{atol: 1.0e-4, rtol: 1.0e-3}}
  latency: {{max_ratio: 1.10}}
"""


def init_inputs(shapes: list[str], dtypes: list[str]) -> tuple[str, list[tuple[str, list[int], str]]]:
    """``model.inputs`` for init from ``--shape 1,64`` (one input) or ``--shape NAME=1,16`` (each
    named input) and ``--dtype int64`` / ``--dtype NAME=int64``; and the inputs as (name, shape, dtype)."""
    named = [s.partition("=") for s in shapes]
    by_name = {n: d for n, sep, d in (x.partition("=") for x in dtypes) if sep}
    plain = [d for d in dtypes if "=" not in d]
    items = []
    for n, sep, shape in named:
        dims = [int(v) for v in (shape if sep else n).split(",")]
        name = n if sep else "x"
        items.append((name, dims, by_name.get(name, plain[-1] if plain else "float32")))
    if len(items) == 1 and not named[0][1]:
        _, dims, dt = items[0]
        return f" {{shape: {dims}, dtype: {dt}}}", items
    lines = "".join(f"\n    {n}: {{shape: {dims}, dtype: {dt}}}" for n, dims, dt in items)
    return lines, items


def init_steps(text: str, *, out: str, shape: list[int], dtype: str) -> tuple[list[str], str | None]:
    """The ``scale``/``reshape`` steps that make the data's samples the shape ``--shape`` declares,
    read from the data itself; or why none could be found (printed, the spec still written)."""
    import numpy as np

    from .data.dataset import _raw

    try:
        x = np.asarray(_raw(parse(text, filename=out))[0])
    except Exception as e:  # noqa: BLE001 - init never fails on data it cannot read; the run will say more
        return [], f"could not read the data to match its shape ({type(e).__name__}: {e})"
    steps, note = [], None
    if dtype.startswith(("float", "bfloat")) and x.dtype.kind in "fiu" and x.size and x.min() >= 0 and x.max() > 1:
        steps.append(f"- scale: {1 / float(x.max()):.6g}  # data in [0, {float(x.max()):g}] -> [0, 1]")
    sample, want = list(x.shape[1:]), shape[1:]
    if sample != want:
        if int(np.prod(sample)) == int(np.prod(want)):
            steps.append(f"- reshape: {want}  # per-sample shape: {tuple(x.shape[1:])} -> {tuple(want)}")
        else:
            note = (
                f"the data gives samples of shape {tuple(sample)} but --shape declares {tuple(want)} per sample "
                "(batch first): fix --shape, or add preprocess steps to the spec"
            )
    return steps, note


def cmd_init(args) -> int:
    name = args.name or args.factory.rpartition(":")[2].lower().replace("_", "-")
    inputs, items = init_inputs(args.shape, args.dtype or [])
    out = args.output or os.path.join("specs", f"{name}.yaml")
    fields = dict(name=name, factory=args.factory, inputs=inputs, data=args.data, schema=args.schema)

    def render(metric: str, preprocess: str = "") -> str:
        return INIT_TEMPLATE.format(preprocess=preprocess, metric=metric, **fields)

    try:
        spec = parse(render(args.metric or "accuracy"), filename=out)
        factory = [p for p in name_problems(spec) if p.path == "model.factory"]
        if factory:
            raise InitError(f"--factory {factory[0].message}")
        metric = args.metric or _metric_for(spec)
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    except InitError as e:
        print(f"deploycheck init: {e}", file=sys.stderr)
        return 2
    text = render(metric)
    if os.path.exists(out) and not args.force:
        print(f"{out} exists; not overwriting it (use --force)", file=sys.stderr)
        return 1
    if len(items) == 1 and items[0][0] == "x":  # one input: make the data's samples its shape
        steps, note = init_steps(text, out=out, shape=items[0][1], dtype=items[0][2])
        if steps:
            text = render(metric, "\n  preprocess:" + "".join(f"\n    {s}" for s in steps))
        if note:
            print(f"note: {note}", file=sys.stderr)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {out}; run: pytest {out}")
    return 0


class InitError(Exception):
    pass


def _metric_for(spec) -> str:
    """The metric that fits the data's targets: accuracy for integer class labels, r2 for values to
    predict, cosine (to the baseline's outputs) for data without targets."""
    import numpy as np

    from .data.dataset import _raw

    try:
        raw = _raw(spec)
    except Exception as e:
        raise InitError(
            f"cannot load --data {spec.data.source!r} to choose a metric: {describe_exc(e)}; fix it, or pass --metric"
        ) from None
    y = raw[1] if len(raw) == 2 else raw[3]
    if y is None:
        return "cosine"
    y = np.asarray(y)
    return "accuracy" if np.issubdtype(y.dtype, np.integer) or y.dtype == bool else "r2"


def cmd_inspect(args) -> int:
    path = args.file
    if not os.path.exists(path):
        print(f"missing: {path}: the file does not exist")
        return 1
    manifest = read_manifest(path)
    found = sniff(path)
    declared = args.format or (manifest or {}).get("format") or (found if found in FORMATS else None)
    size = os.path.getsize(path)
    print(f"file:     {path}")
    print(
        f"format:   {FORMAT_NAMES.get(found, found) if found else 'unknown'}"
        + (f" (declared: {declared})" if declared and declared != found else "")
    )
    if os.path.islink(path):
        print(f"link:     -> {os.path.realpath(path)}")
    print(f"size:     {size} bytes ({size / 1e6:.3f} MB)")
    print(f"sha256:   {sha256(path) if size else '-'}")
    inputs = _manifest_inputs(manifest)
    if manifest:
        print(
            f"manifest: {os.path.basename(path)}.manifest.json (written with torch "
            f"{manifest.get('libraries', {}).get('torch', '?')})"
        )
        for line in _signature_lines("inputs", [(n, s, d) for n, s, d in inputs]):
            print(line)
    else:
        print("manifest: none (size and checksum cannot be verified)")
    diag = check_file(path, declared if declared in FORMATS else None, manifest)
    if diag is None and (declared is None or declared not in FORMATS):
        # Neither the bytes, a manifest nor --format name a format deploycheck knows: nothing was
        # checked, so it is not ok (random bytes named x.onnx, a text file named .ts, a link to /etc/passwd).
        print("status:   unknown")
        if declared is not None:
            print(
                f"reason:   unknown-format: {path}: declared as {declared!r}, which is not a format deploycheck "
                f"knows ({', '.join(FORMATS.names())}); it holds {_looks_like(path, found)}; nothing was checked"
            )
            return 1
        print(
            f"reason:   unknown-format: {path}: not a format deploycheck recognises: "
            f"{_looks_like(path, found)}; nothing was checked"
        )
        named = formats_by_name(path)
        if named:
            says = " or ".join(FORMAT_NAMES.get(n, n) for n in named)
            print(
                f"hint:     the name says {says} file, but the bytes do not; if it is one, "
                f"pass --format {named[0]} to check and load it as one"
            )
        return 1
    named = formats_by_name(path)
    if found is not None and found in FORMATS and named and found not in named:
        # The name promises another format than the bytes hold: a loader that goes by the name fails.
        says = " or ".join(FORMAT_NAMES.get(n, n) for n in named)
        mismatch = (
            f"the file is {FORMAT_NAMES.get(found, found)} file, but its name "
            f"({os.path.basename(path)}) says {says} file"
        )
        if args.format == found:
            print(f"note:     {mismatch}; checked as {found}, as --format says")
        elif diag is None:
            diag = Diagnosis("wrong-format", mismatch + ": rename it, or pass --format " + found)
    named_code = (manifest or {}).get("factory")
    if named_code is not None:
        print(f"note:     the manifest names factory {named_code!r}: not used (only a spec chooses code to run)")
    if diag is None and declared is not None and declared in FORMATS and not args.no_load:
        fmt = FORMATS.get(declared)
        if fmt.unpickles and not args.allow_pickle:
            print("status:   NOT LOADED")
            print(
                f"reason:   {declared}: {path}: loading a pickle runs code from the file; "
                "pass --allow-pickle to load it if you trust where it came from"
            )
            return 1
        if fmt().needs_code(fmt.Options()):
            print(
                f"status:   ok (bytes checked; not loaded: a {declared} state dict is rebuilt by a spec's "
                "model.factory, and a manifest never chooses the code to run)"
            )
            return 0
        diag, outputs = _try_load(path, declared, manifest, args.timeout, inputs)
        if diag is None and isinstance(outputs, str):
            print(f"outputs:  not listed: {outputs}")
        elif diag is None and isinstance(outputs, dict):
            for line in _signature_lines("outputs", [(n, s, None) for n, s in outputs.items()]):
                print(line)
    if diag is not None:
        print("status:   BROKEN")
        print(f"reason:   {diag.render(path).splitlines()[0]}")
        return 1
    print("status:   ok" + (" (loaded in a fresh process)" if declared in FORMATS and not args.no_load else ""))
    return 0


def _manifest_inputs(manifest: dict | None) -> list[tuple[str, list, str]]:
    """Every input the manifest declares, as (name, shape, dtype): its ``inputs`` (named or
    dynamic models), else its one ``input``."""
    if not manifest:
        return []
    named = manifest.get("inputs")
    if isinstance(named, dict) and named:
        return [
            (str(n), list(i.get("shape") or []), str(i.get("dtype", "?")))
            for n, i in named.items()
            if isinstance(i, dict)
        ]
    one = manifest.get("input")
    if isinstance(one, dict) and one.get("shape") is not None:
        return [("x", list(one["shape"]), str(one.get("dtype", "?")))]
    return []


def _signature_lines(title: str, items: list[tuple[str, list, str | None]]) -> list[str]:
    lines = [f"{title + ':':<10}{len(items)}"]
    for name, shape, dtype in items:
        lines.append(f"  {name}: {list(shape)}" + (f" {dtype}" if dtype else ""))
    return lines


def _looks_like(path: str, found: str | None) -> str:
    """What an unrecognised file looks like: its size, first bytes and a sniffed kind."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as e:
        return f"the file cannot be read ({e.strerror or e})"
    size = os.path.getsize(path)
    first = head[:16].hex(" ")
    if found is not None and found in FORMATS:
        kind = f"{FORMAT_NAMES.get(found, found)} file"
    elif found == "zip":
        kind = "a zip archive that no format of deploycheck writes"
    elif head and b"\x00" not in head and _is_text(head):
        line = head.decode("utf-8", "replace").splitlines()[0][:40] if head.strip() else ""
        kind = f"text (first line {line!r})"
    else:
        kind = "binary data with no header deploycheck knows"
    return f"{size} bytes of {kind}, starting {first}"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def _try_load(path, fmt, manifest, timeout, inputs=()) -> tuple[Diagnosis | None, dict | str]:
    """Load in a fresh worker process, so a crashing file cannot take this command down; and run
    it on one batch of zeros of the declared inputs, to name its outputs and their shapes."""
    import torch

    opts = FORMATS.get(fmt).Options
    options = dataclasses.asdict(opts(allow=True) if FORMATS.get(fmt).unpickles else opts())  # --allow-pickle given
    with tempfile.TemporaryDirectory() as d:
        pool = WorkerPool(d)
        try:
            torch.save(_zeros(inputs, manifest), os.path.join(d, "in.pt"))
            req = load_request(
                ArtifactRef(os.path.abspath(path), fmt, options, manifest),
                workdir=d,
                stem="inspect",
                inputs=os.path.join(d, "in.pt"),
            )
            out = pool.run(req, timeout_s=timeout)
        finally:
            pool.close()
    if out.result is None:
        return Diagnosis("crash", out.death() or "no answer"), ""
    if not out.result.ok and out.result.stage == "load":
        return Diagnosis(out.result.kind or "load-error", out.result.message.splitlines()[0]), ""
    if not out.result.ok:  # loaded, but it did not run on zeros of the declared inputs
        return None, f"it did not run on zeros of the declared inputs ({out.result.message.splitlines()[0][:200]})"
    if not inputs:
        return None, "the manifest declares no inputs to run it on"
    if not out.result.output_shapes:
        return None, "the declared inputs' shapes or dtypes cannot be made into a batch"
    return None, out.result.output_shapes


def _zeros(inputs, manifest) -> list:
    """One batch of zeros shaped as the manifest declares, or no batch when it declares none (or
    a dtype torch does not have): then the file is only loaded."""
    import torch

    batch = {}
    for name, shape, dtype in inputs:
        dt = getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype) or not all(isinstance(n, int) and n > 0 for n in shape):
            return []
        batch[name] = torch.zeros(shape, dtype=dt)
    if not batch:
        return []
    named = isinstance((manifest or {}).get("inputs"), dict) and len(batch) > 1
    return [batch if named else next(iter(batch.values()))]


def cmd_cache(args) -> int:
    root = os.path.abspath(args.dir) if args.dir else default_root()
    try:
        return _cache(args, root)
    except UnsafeFolder as e:
        print(e, file=sys.stderr)
        return 2


def _cache(args, root: str) -> int:
    if args.action == "info":
        es = entries(root) if os.path.isdir(root) else []
        total = sum(e["bytes"] for e in es)
        print(f"location: {root}")
        print(f"size: {fmt_size(total)} in {len(es)} entries")
        for kind in KINDS:
            k = [e for e in es if e["kind"] == kind]
            print(f"  {kind}: {len(k)} entries, {fmt_size(sum(e['bytes'] for e in k))}")
        return 0
    older = None
    if args.older_than:
        try:
            older = _duration(args.older_than)
        except ValueError as e:
            print(f"deploycheck cache clean: {e}", file=sys.stderr)
            return 2
    gone = clean(root, older_than_s=older) if os.path.isdir(root) else []
    what = f" unused for more than {args.older_than}" if older is not None else ""
    print(f"removed {len(gone)} entries{what} ({fmt_size(sum(e['bytes'] for e in gone))}) from {root}")
    return 0


def _duration(text: str) -> float:
    """'7d', '12h', '30m', '45s' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([dhms])\s*", text)
    if not m:
        raise ValueError(f"--older-than: expected a duration such as 7d, 12h, 30m or 45s, got {text!r}")
    return float(m.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[m.group(2)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="deploycheck",
        description="Declarative tests for deployed PyTorch models. Run the checks with: pytest specs/",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="lint specs without running anything")
    v.add_argument("paths", nargs="*", help="spec files or folders (default: specs)")
    v.set_defaults(fn=cmd_validate)
    s = sub.add_parser("schema", help="print the JSON Schema of a spec")
    s.set_defaults(fn=cmd_schema)
    i = sub.add_parser("init", help="scaffold a spec for a model factory (never prompts)")
    i.add_argument("--factory", required=True, help="module:callable returning the nn.Module")
    i.add_argument(
        "--shape",
        required=True,
        action="append",
        help="example input shape, batch first, e.g. 1,64; NAME=1,16 (repeated) for named inputs",
    )
    i.add_argument(
        "--dtype", action="append", help="input dtype (default float32), e.g. int64; NAME=int64 for a named input"
    )
    i.add_argument("--data", default="sklearn:digits", help="data source (default: sklearn:digits)")
    i.add_argument(
        "--metric",
        help="quality metric (default: from the data's targets: accuracy for class "
        "labels, r2 for values to predict, cosine without targets)",
    )
    i.add_argument("--name")
    i.add_argument("--schema", default="../reports/deploycheck.schema.json", help="$schema path for editors")
    i.add_argument("-o", "--output", help="spec path (default: specs/NAME.yaml)")
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    i.set_defaults(fn=cmd_init)
    n = sub.add_parser("inspect", help="sniff, checksum and test-load an artifact; non-zero exit when broken")
    n.add_argument("file")
    n.add_argument("--format", help="the format it is declared as (default: from its manifest, else sniffed)")
    n.add_argument("--no-load", action="store_true", help="only check bytes, do not load in a fresh process")
    n.add_argument("--timeout", type=float, default=120.0)
    n.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a torch.save pickle (it runs code from the file: only for files you trust)",
    )
    n.set_defaults(fn=cmd_inspect)
    c = sub.add_parser("cache", help="show or empty the cache of built variants, artifacts and results")
    c.add_argument("action", choices=("info", "clean"))
    c.add_argument("--older-than", help="clean: only entries unused for longer than this (e.g. 7d, 12h)")
    c.add_argument(
        "--dir",
        help="cache folder (default: $DEPLOYCHECK_CACHE_DIR, else $XDG_CACHE_HOME/deploycheck, "
        "else ~/.cache/deploycheck)",
    )
    c.set_defaults(fn=cmd_cache)
    add_commands(sub)
    args = p.parse_args(argv)
    try:
        rc = args.fn(args)
        sys.stdout.flush()  # here, so a closed pipe is seen while we can still handle it
    except BrokenPipeError:
        # `deploycheck schema | head`: the reader has gone; end quietly, as a process killed by SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
