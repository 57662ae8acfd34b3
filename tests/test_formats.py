"""Fault injection per format: every broken artifact fails with its class's message, in a separate
process, and nothing crashes pytest. Plus the fresh-process and isolation promises."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODELS, make_spec

from deploycheck.formats import FORMATS, SaveContext, sniff
from deploycheck.formats.integrity import read_manifest, write_manifest
from deploycheck.isolation import WorkerPool
from deploycheck.protocol import ArtifactRef, load_request

FORMAT_NAMES = ["export", "torchscript", "onnx", "safetensors", "pickle", "hdf5", "aoti"]
NEEDS_CODE = ("safetensors", "pickle", "hdf5")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("code")
    (d / "tinymodels_fi.py").write_text(TINY_MODELS)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = WorkerPool(str(tmp_path_factory.mktemp("workers")))
    yield p
    p.close()


def options_for(name: str):
    cls = FORMATS.get(name).Options
    return cls(allow=True, with_code=True) if name == "pickle" else cls()


@pytest.fixture(scope="module")
def artifacts(models_dir, tmp_path_factory):
    """One good artifact per format, of the plain Tiny model, with manifests."""
    import tinymodels_fi

    model = tinymodels_fi.Tiny().eval()
    out = {}
    d = tmp_path_factory.mktemp("artifacts")
    for name in FORMAT_NAMES:
        fmt = FORMATS.get(name)()
        path = str(d / f"model{fmt.suffix}")
        extra = fmt.save(
            model,
            path,
            SaveContext(
                example=torch.ones(1, 4),
                options=options_for(name),
                arch={"factory": "tinymodels_fi:Tiny", "kwargs": {}},
            ),
        )
        write_manifest(path, fmt=name, input_shape=[1, 4], input_dtype="float32", extra=extra or {})
        out[name] = path
    return out


def request(tmp_path, *, path, fmt, manifest, inputs=None, python_path=()):
    batches = inputs if inputs is not None else [torch.randn(5, 4), torch.randn(3, 4)]
    torch.save(batches, tmp_path / "in.pt")
    code = {"factory": "tinymodels_fi:Tiny", "kwargs": {}} if fmt in NEEDS_CODE else None  # as the spec would say
    return load_request(
        ArtifactRef(path, fmt, dataclasses.asdict(options_for(fmt)), manifest, code),
        workdir=str(tmp_path),
        stem="t",
        inputs=str(tmp_path / "in.pt"),
        python_path=python_path,
    )


def run(pool, tmp_path, *, path, fmt, manifest, inputs=None, python_path=(), timeout=120):
    req = request(tmp_path, path=path, fmt=fmt, manifest=manifest, inputs=inputs, python_path=python_path)
    return pool.run(req, timeout_s=timeout)


@pytest.fixture
def run_here(monkeypatch):
    """The worker's own ``handle`` in this process, for files its checks refuse before loading (each
    fresh worker costs a torch import): every format's ``load`` is replaced by one that raises, so
    a file that got past those checks is a wrong diagnosis here, never a load in the test process.
    The fresh-process path of each diagnosis is run through the pool below."""
    from deploycheck import worker

    def refuse(self, *a, **kw):
        raise AssertionError("the integrity checks let this file through to its loader")

    for name in FORMAT_NAMES:
        monkeypatch.setattr(FORMATS.get(name), "load", refuse)
    threads = torch.get_num_threads()

    def go(tmp_path, *, path, fmt, manifest, inputs=None):
        try:
            return worker.handle(request(tmp_path, path=path, fmt=fmt, manifest=manifest, inputs=inputs))
        finally:
            torch.set_num_threads(threads)

    return go


def copy_broken(src: str, dst: str, how: str, offset: int = 0) -> None:
    data = open(src, "rb").read()
    if how == "truncate":
        data = data[:offset]
    elif how == "flip":
        mid = len(data) // 2
        data = data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 16]) + data[mid + 16 :]
    elif how == "empty":
        data = b""
    with open(dst, "wb") as fh:
        fh.write(data)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_good_artifact_loads_and_runs_in_a_fresh_process(pool, artifacts, models_dir, tmp_path, fmt):
    code = [str(models_dir)] if fmt in NEEDS_CODE else []
    out = run(pool, tmp_path, path=artifacts[fmt], fmt=fmt, manifest=read_manifest(artifacts[fmt]), python_path=code)
    assert out.result.ok, out.result
    assert out.result.output_shape == [8, 3]
    assert out.result.pid != os.getpid()


def test_each_request_is_a_new_child_of_one_zygote(pool, artifacts, tmp_path):
    """Two requests, two processes; both children of the one zygote, which imported torch once."""
    first = run(pool, tmp_path, path=artifacts["onnx"], fmt="onnx", manifest=read_manifest(artifacts["onnx"]))
    second = run(pool, tmp_path, path=artifacts["onnx"], fmt="onnx", manifest=read_manifest(artifacts["onnx"]))
    assert first.result.ok and second.result.ok
    assert first.result.pid != second.result.pid
    assert pool.start == "fork" and pool._zygote is not None
    assert pool._zygote.popen.pid not in (first.result.pid, second.result.pid)


def test_a_zygote_that_died_is_started_again(artifacts, tmp_path):
    p = WorkerPool(str(tmp_path / "workers"))
    try:
        args = dict(path=artifacts["onnx"], fmt="onnx", manifest=read_manifest(artifacts["onnx"]))
        assert run(p, tmp_path, **args).result.ok
        dead = p._zygote
        os.kill(dead.popen.pid, signal.SIGKILL)
        dead.popen.wait()
        assert run(p, tmp_path, **args).result.ok
        assert p._zygote is not dead
    finally:
        p.close()
    assert p._zygote is None and dead.popen.poll() is not None


def test_spawn_start_answers_in_a_process_of_its_own(artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYCHECK_WORKER_START", "spawn")
    p = WorkerPool(str(tmp_path / "workers"))
    try:
        out = run(
            p,
            tmp_path,
            path=artifacts["torchscript"],
            fmt="torchscript",
            manifest=read_manifest(artifacts["torchscript"]),
        )
        assert out.result.ok and out.result.output_shape == [8, 3]
        assert p._zygote is None and p._spare is not None  # the next request's process is already starting
    finally:
        p.close()


def test_a_zygote_with_threads_hands_the_request_to_a_process_of_its_own(artifacts, tmp_path, monkeypatch):
    """Forking a process with threads can copy a held lock: the zygote says so and the pool spawns."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # numpy's OpenBLAS starts a thread pool at import
    probe = "import os, numpy, torch; print(len(os.listdir('/proc/self/task')))"
    threads = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True).stdout
    if int(threads) < 2:
        pytest.skip("OpenBLAS starts no thread pool on this machine (one core)")
    p = WorkerPool(str(tmp_path / "workers"))
    try:
        out = run(p, tmp_path, path=artifacts["onnx"], fmt="onnx", manifest=read_manifest(artifacts["onnx"]))
        assert out.result.ok
        assert p.start == "spawn" and p._zygote is None
    finally:
        p.close()


def test_an_unknown_worker_start_is_a_usage_error(project, monkeypatch):
    monkeypatch.setenv("DEPLOYCHECK_WORKER_START", "thread")
    project.write(make_spec())
    res = project.run()
    res.stderr.fnmatch_lines(
        ["*DEPLOYCHECK_WORKER_START='thread': expected 'fork' (children of one zygote) or 'spawn'*"]
    )
    assert res.ret == pytest.ExitCode.USAGE_ERROR


def check_broken(go, artifacts, tmp_path, fmt, case):
    src = artifacts[fmt]
    size = os.path.getsize(src)
    dst = str(tmp_path / os.path.basename(src))
    how, _, where = case.partition("-")
    offset = {"1": 1, "half": size // 2, "tail": size - 7}.get(where, 0)
    copy_broken(src, dst, how, offset)
    r = go(tmp_path, path=dst, fmt=fmt, manifest=read_manifest(src))
    assert r.ok is False and r.stage == "load"
    expected = {"truncate": "truncated", "flip": "corrupted", "empty": "empty"}[how]
    assert r.kind == expected
    first = {
        "truncated": f"the file is incomplete: {offset} of {size} bytes",
        "corrupted": "checksum mismatch (same size, different bytes)",
        "empty": "the file is empty (0 bytes)",
    }[expected]
    assert r.message.startswith(first)
    return r


BROKEN = ["truncate-1", "truncate-half", "truncate-tail", "flip", "empty"]


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("case", BROKEN)
def test_broken_file_is_classified(run_here, artifacts, tmp_path, fmt, case):
    check_broken(run_here, artifacts, tmp_path, fmt, case)


@pytest.mark.parametrize("fmt,case", [("aoti", "truncate-half"), ("onnx", "flip"), ("pickle", "empty")])
def test_broken_file_is_classified_in_a_fresh_process(pool, artifacts, tmp_path, fmt, case):
    r = check_broken(lambda *a, **kw: run(pool, *a, **kw).result, artifacts, tmp_path, fmt, case)
    assert r.pid != os.getpid()


@pytest.mark.parametrize(
    "declared,actual",
    [
        ("export", "onnx"),
        ("onnx", "torchscript"),
        ("torchscript", "safetensors"),
        ("safetensors", "export"),
        ("pickle", "onnx"),
        ("hdf5", "safetensors"),
        ("export", "aoti"),
        ("aoti", "export"),
    ],
)
def test_file_of_another_format_is_named(run_here, artifacts, tmp_path, declared, actual):
    check_wrong_format(run_here, artifacts, tmp_path, declared, actual)


def check_wrong_format(go, artifacts, tmp_path, declared, actual):
    dst = str(tmp_path / ("model" + FORMATS.get(declared).suffix))
    shutil.copy(artifacts[actual], dst)
    r = go(tmp_path, path=dst, fmt=declared, manifest=None)
    assert (r.stage, r.kind) == ("load", "wrong-format")
    assert "but it is declared as" in r.message
    return r


def test_file_of_another_format_is_named_in_a_fresh_process(pool, artifacts, tmp_path):
    r = check_wrong_format(lambda *a, **kw: run(pool, *a, **kw).result, artifacts, tmp_path, "aoti", "export")
    assert r.pid != os.getpid()


def test_truncated_zip_without_manifest_is_still_diagnosed(run_here, artifacts, tmp_path):
    dst = str(tmp_path / "model.ts")
    copy_broken(artifacts["torchscript"], dst, "truncate", os.path.getsize(artifacts["torchscript"]) // 2)
    r = run_here(tmp_path, path=dst, fmt="torchscript", manifest=None)
    assert (r.kind, r.message.split(":")[0]) == ("truncated", "the zip archive has no readable directory")


def _rezip(src: str, dst: str, *, add: dict[str, bytes] | None = None, keep=lambda n: True) -> None:
    import zipfile

    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for name, data in (add or {}).items():
            out.writestr(name, data)
        for n in z.namelist():
            if keep(n):
                out.writestr(n, z.read(n))


@pytest.mark.parametrize("member", ["../evil/archive_format", "/etc/evil", "model/../../evil.txt", "other/x"])
def test_an_archive_with_a_member_outside_its_folder_is_refused_before_loading(run_here, artifacts, tmp_path, member):
    dst = str(tmp_path / "model.pt2")
    _rezip(artifacts["export"], dst, add={member: b"boom"})
    r = run_here(tmp_path, path=dst, fmt="export", manifest=None)
    assert (r.stage, r.kind) == ("load", "corrupted")
    assert f"the archive has a member outside its own folder ({member!r})" in r.message
    assert "(zip slip), so it is not loaded" in r.message


def test_an_export_archive_with_fake_members_names_the_readers_error(pool, artifacts, tmp_path):
    """torch.export.load logs the reader's error as a warning and raises 'Please check the warnings
    above', which the worker's captured output hid: the message names the cause."""
    dst = str(tmp_path / "model.pt2")
    _rezip(artifacts["export"], dst, keep=lambda n: not n.endswith("/version"))
    r = run(pool, tmp_path, path=dst, fmt="export", manifest=None).result
    assert (r.ok, r.stage) == (False, "load")
    assert 'not a readable torch.export archive (RuntimeError: Expected hasRecord("version")' in r.message
    assert "it was not written by torch.export.save, or it was altered after: re-export it" in r.message
    assert "check the warnings above" not in r.message


def test_a_folder_given_as_the_artifact_is_named(run_here, tmp_path):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x")
    r = run_here(tmp_path, path=str(folder), fmt="onnx", manifest=None)
    assert (r.stage, r.kind) == ("load", "not-a-file")
    assert r.message.endswith("it is a folder, not a file (it holds model.onnx): name the artifact file inside it")


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_wrong_input_shape_is_a_signature_error(pool, artifacts, models_dir, tmp_path, fmt):
    code = [str(models_dir)] if fmt in NEEDS_CODE else []
    r = run(
        pool,
        tmp_path,
        path=artifacts[fmt],
        fmt=fmt,
        manifest=read_manifest(artifacts[fmt]),
        inputs=[torch.randn(5, 7)],
        python_path=code,
    ).result
    assert (r.ok, r.stage, r.kind) == (False, "run", "signature"), r


def test_fixed_batch_artifact_returning_wrong_rows_is_caught(pool, models_dir, tmp_path):
    """The silent failure: a model built for one batch size returns (1, C) for a batch of N."""
    import tinymodels_fi

    fmt = FORMATS.get("torchscript")()
    path = str(tmp_path / "fixed.ts")
    fmt.save(
        tinymodels_fi.FirstRowOnly().eval(),
        path,
        SaveContext(example=torch.ones(1, 4), options=options_for("torchscript"), arch={}),
    )
    r = run(pool, tmp_path, path=path, fmt="torchscript", manifest=None, inputs=[torch.randn(6, 4)]).result
    assert (r.kind, r.message) == (
        "signature",
        "batch 0: input batch of 6 gave output of shape (1, 3): the "
        "artifact was built for a fixed batch size (export with a dynamic batch dimension)",
    )


def test_aoti_package_compiled_for_one_batch_size_is_caught(pool, models_dir, tmp_path):
    """Measured here: an AOTInductor package compiled for batch 1 returns (1, C) for a batch of N, no error."""
    import tinymodels_fi

    fmt = FORMATS.get("aoti")()
    path = str(tmp_path / "fixed.aoti.pt2")
    fmt.save(
        tinymodels_fi.Tiny().eval(),
        path,
        SaveContext(example=torch.ones(1, 4), options=FORMATS.get("aoti").Options(dynamic_batch=False), arch={}),
    )
    r = run(pool, tmp_path, path=path, fmt="aoti", manifest=None, inputs=[torch.randn(6, 4)]).result
    assert (r.kind, r.message) == (
        "signature",
        "batch 0: input batch of 6 gave output of shape (1, 3): the "
        "artifact was built for a fixed batch size (export with a dynamic batch dimension)",
    )


def test_version_skew_is_classified(pool, artifacts, tmp_path):
    import onnx

    m = onnx.load(artifacts["onnx"])
    m.ir_version = 99
    dst = str(tmp_path / "new.onnx")
    onnx.save(m, dst)
    r = run(pool, tmp_path, path=dst, fmt="onnx", manifest=None).result
    assert r.kind == "version-skew", r
    assert r.message.startswith("the file was written by a newer library or opset than this runtime reads")


def test_missing_custom_operator_is_classified(pool, tmp_path):
    """A TorchScript file calling an operator registered only in the exporting process."""
    lib = torch.library.Library("dcfault", "DEF")
    lib.define("double(Tensor x) -> Tensor")
    lib.impl("double", lambda x: x * 2, "CPU")

    class UsesCustomOp(torch.nn.Module):
        def forward(self, x):
            return torch.ops.dcfault.double(x)

    path = str(tmp_path / "custom.ts")
    torch.jit.save(torch.jit.trace(UsesCustomOp(), torch.ones(1, 4)), path)
    r = run(pool, tmp_path, path=path, fmt="torchscript", manifest=None).result
    assert r.kind == "missing-operator", r


def test_sniff_names_formats_from_bytes(artifacts):
    assert {f: sniff(p) for f, p in artifacts.items()} == {f: f for f in FORMAT_NAMES}


# --- isolation through pytest: crashes, hangs and floods fail one item, the session goes on -----

ISOLATION = "isolation: {timeout_s: 20}"


@pytest.mark.parametrize(
    "factory,message",
    [
        (
            "Aborts",
            "[[]load[]] tiny::baseline::pickle (declared at tiny.yaml:9): the process died with SIGABRT (aborted) "
            "while loading and running model.pkl.pt",
        ),
        (
            "Floods",
            "[[]run[]] tiny::baseline::pickle (declared at tiny.yaml:9): error: RuntimeError: boom after flooding stdout",
        ),
    ],
)
def test_crashing_model_fails_its_items_and_the_session_continues(project, factory, message):
    project.write(make_spec(factory=factory, formats="[{pickle: {allow: true, with_code: true}}]", extra=ISOLATION))
    project.write(make_spec(formats="[torchscript]").replace("name: tiny", "name: healthy"), name="healthy")
    res = project.run()
    res.assert_outcomes(passed=6, failed=4)  # the healthy spec's 5 items and the artifact's size still pass
    res.stdout.fnmatch_lines([message])


def test_model_exhausting_memory_fails_with_the_limit_named(project):
    project.write(
        make_spec(
            factory="Hogs",
            formats="[{pickle: {allow: true, with_code: true}}]",
            extra="isolation: {timeout_s: 60, memory_mb: 3000}",
        )
    )
    res = project.run("-k", "load")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "[[]run[]] tiny::baseline::pickle (declared at tiny.yaml:9): memory: ran out of memory "
            "(isolation.memory_mb: 3000): *"
        ]
    )


def test_hanging_model_is_killed_after_the_timeout(project):
    project.write(
        make_spec(
            factory="Sleeps", formats="[{pickle: {allow: true, with_code: true}}]", extra="isolation: {timeout_s: 3}"
        )
    )
    res = project.run("-k", "load")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "[[]load[]] tiny::baseline::pickle (declared at tiny.yaml:9): the process was killed after "
            "its timeout while loading and running model.pkl.pt"
        ]
    )


def test_artifact_that_needs_training_code_is_caught_by_the_fresh_process(project):
    """A whole-module pickle loads only where the model's class is importable: the deployment host is not."""
    project.write(make_spec(formats="[{pickle: {allow: true}}]"))
    res = project.run("-k", "load")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "[[]load[]] tiny::baseline::pickle (declared at tiny.yaml:9): missing-module: loading needs "
            "Python module/attribute 'tinymodels', which this process cannot import: the artifact "
            "depends on the training code*"
        ]
    )
    project.write(make_spec(formats="[{pickle: {allow: true, with_code: true}}]"))
    project.run("-k", "load").assert_outcomes(passed=1)


def test_unsupported_combination_is_skipped_with_the_exporters_reason_or_failed(project):
    variants = "  baseline: {}\n  int8:\n    quantize: {method: dynamic_int8}"
    project.write(make_spec(variants=variants, formats="[export]"))
    res = project.run("-k", "int8", "-rs")
    # batch_invariance and quantized run in memory; every format item is skipped
    res.assert_outcomes(passed=2, skipped=5)
    res.stdout.fnmatch_lines(
        [
            "*unsupported: export cannot hold variant 'int8': torch.export failed: *"
            "LinearPackedParamsBase*__obj_flatten__*(on_unsupported: skip)"
        ]
    )
    # The next session knows the answer without rebuilding and exporting again, and says so.
    res = project.run("-k", "int8", "-rs")
    res.assert_outcomes(passed=2, skipped=5)
    res.stdout.fnmatch_lines(
        [
            "deploycheck cache: *, 1 formats known not to hold their variant",
            "*unsupported: export cannot hold variant 'int8': torch.export failed: *(cached) (on_unsupported: skip)",
        ]
    )
    project.write(make_spec(variants=variants, formats="[export]", extra="on_unsupported: fail"))
    res = project.run("-k", "int8 and export")
    res.assert_outcomes(failed=5)
    res.stdout.fnmatch_lines(["[[]save[]] unsupported (tiny.yaml:9): export cannot hold variant 'int8': *"])
