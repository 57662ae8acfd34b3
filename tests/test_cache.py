"""The cross-session cache: a re-run reuses everything; a changed input rebuilds what depends on it."""

from __future__ import annotations

import json
import os

from conftest import make_spec

TH = "  size: {max_mb: 1}"  # no metric gate: pruning a random net moves its accuracy
VARIANTS = "  baseline: {}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.5}"


def rows(project):
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    return {(r["variant"], r["format"]): r for r in doc["rows"]}


def test_second_run_reuses_everything(project, tmp_path):
    cache = f"--deploycheck-cache-dir={tmp_path / 'cache'}"
    project.write(make_spec(variants=VARIANTS, thresholds=TH))
    res = project.run(cache)
    res.assert_outcomes(passed=6, skipped=4)  # latency and size: measured, not gated by TH
    res.stdout.fnmatch_lines(["deploycheck cache: reused 0 built variants, 0 artifacts, 0 fresh-process results (*)"])
    assert rows(project)[("pruned", "torchscript")]["load"] == "ok"
    res = project.run(cache)
    res.assert_outcomes(passed=6, skipped=4)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 2 built variants, 2 artifacts, 2 fresh-process results (*)"])
    assert rows(project)[("pruned", "torchscript")]["load"] == "ok (cached)"


def test_changed_recipe_invalidates_only_that_variant(project, tmp_path):
    cache = f"--deploycheck-cache-dir={tmp_path / 'cache'}"
    project.write(make_spec(variants=VARIANTS, thresholds=TH))
    project.run(cache).assert_outcomes(passed=6, skipped=4)
    project.write(make_spec(variants=VARIANTS.replace("0.5", "0.6"), thresholds=TH))
    res = project.run(cache)
    res.assert_outcomes(passed=6, skipped=4)
    # the baseline is reused; the pruned variant is rebuilt, re-saved and re-run
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 built variants, 1 artifacts, 1 fresh-process results (*)"])


def test_changed_model_code_invalidates_everything(project, tmp_path, pytester):
    cache = f"--deploycheck-cache-dir={tmp_path / 'cache'}"
    project.write(make_spec(variants=VARIANTS, thresholds=TH))
    project.run(cache).assert_outcomes(passed=6, skipped=4)
    src = (pytester.path / "tinymodels.py").read_text()
    (pytester.path / "tinymodels.py").write_text(src + "\n# an edit\n")
    res = project.run(cache)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 0 built variants, 0 artifacts, 0 fresh-process results (*)"])


def test_build_level_remeasures_and_off_disables(project, tmp_path):
    cache = f"--deploycheck-cache-dir={tmp_path / 'cache'}"
    project.write(make_spec())
    project.run(cache).assert_outcomes(passed=5)
    res = project.run(cache, "--deploycheck-cache=build")
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 built variants, 1 artifacts, 0 fresh-process results (*)"])
    res = project.run(cache, "--deploycheck-cache=off")
    res.assert_outcomes(passed=5)
    assert "deploycheck cache:" not in res.stdout.str()


def test_a_damaged_cache_entry_is_rebuilt_not_used(project, tmp_path):
    cache_dir = tmp_path / "cache"
    project.write(make_spec())
    project.run(f"--deploycheck-cache-dir={cache_dir}").assert_outcomes(passed=5)
    for f in (cache_dir / "artifact").rglob("artifact"):
        f.write_bytes(f.read_bytes()[:100])
    res = project.run(f"--deploycheck-cache-dir={cache_dir}")
    res.assert_outcomes(passed=5)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 built variants, 0 artifacts, 0 fresh-process results (*)"])


LAYERED = """
import torch
from torch import nn

from tinylayers import Block


class Layered(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = Block()
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.block(x))
"""
LAYERS = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x):
        return torch.relu(self.fc(x)){extra}
"""


def test_a_change_in_a_helper_module_the_factory_imports_invalidates_the_build(project, pytester, tmp_path):
    cache = f"--deploycheck-cache-dir={tmp_path / 'cache'}"
    pytester.makepyfile(layered=LAYERED, tinylayers=LAYERS.format(extra=""))
    project.write(make_spec(factory="Layered").replace("tinymodels:Layered", "layered:Layered"))
    project.run(cache).assert_outcomes(passed=5)
    res = project.run(cache)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 built variants, 1 artifacts, 1 fresh-process results (*)"])
    pytester.makepyfile(tinylayers=LAYERS.format(extra=" * 2"))  # only the helper changes
    res = project.run(cache)
    res.assert_outcomes(passed=5)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 0 built variants, 0 artifacts, 0 fresh-process results (*)"])


def _fake_entry(root, kind, key, size, used):
    import os

    d = root / kind / key[:2] / key
    d.mkdir(parents=True)
    (d / "blob").write_bytes(b"x" * size)
    (d / "checksums.json").write_bytes(b"")  # the marker every published entry carries (empty: sizes stay exact)
    os.utime(d, (used, used))
    return d


def test_eviction_keeps_the_cache_under_its_cap_and_the_most_recent_entries(tmp_path):
    from deploycheck.cache import entries, evict

    old = [_fake_entry(tmp_path, "built", f"a{i}" + "0" * 10, 1000, 1_000_000 + i) for i in range(5)]
    new = [_fake_entry(tmp_path, "result", f"b{i}" + "0" * 10, 1000, 2_000_000 + i) for i in range(3)]
    removed = evict(str(tmp_path), 3500)
    assert [e["path"] for e in removed] == [str(p) for p in old]  # least recently used first
    left = entries(str(tmp_path))
    assert sum(e["bytes"] for e in left) <= 3500
    assert sorted(e["path"] for e in left) == sorted(str(p) for p in new)


def test_cache_info_and_clean_print_exact_output(tmp_path, capsys):
    import time

    from deploycheck.cli import main

    _fake_entry(tmp_path, "built", "aa" + "0" * 10, 1500, time.time() - 10 * 86400)
    _fake_entry(tmp_path, "artifact", "bb" + "0" * 10, 2_500_000, time.time())
    _fake_entry(tmp_path, "result", "cc" + "0" * 10, 500, time.time())
    assert main(["cache", "info", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        f"location: {tmp_path}\n"
        "size: 2.5 MB in 3 entries\n"
        "  built: 1 entries, 1.5 kB\n"
        "  artifact: 1 entries, 2.5 MB\n"
        "  result: 1 entries, 500 B\n"
        "  value: 0 entries, 0 B\n"
        "  converted: 0 entries, 0 B\n"
    )
    assert main(["cache", "clean", "--older-than", "7d", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"removed 1 entries unused for more than 7d (1.5 kB) from {tmp_path}\n"
    assert main(["cache", "clean", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"removed 2 entries (2.5 MB) from {tmp_path}\n"
    assert main(["cache", "clean", "--older-than", "soon", "--dir", str(tmp_path)]) == 2
    assert "expected a duration such as 7d, 12h, 30m or 45s, got 'soon'" in capsys.readouterr().err


def test_a_session_evicts_down_to_the_configured_size(project, tmp_path):
    from deploycheck.cache import entries

    project.write(make_spec(variants=VARIANTS, thresholds=TH))
    res = project.run(f"--deploycheck-cache-dir={tmp_path / 'cache'}", "--deploycheck-cache-size=1kB")
    res.assert_outcomes(passed=6, skipped=4)
    assert sum(e["bytes"] for e in entries(str(tmp_path / "cache"))) <= 1000
    # the user is told, in the summary, that the next run will not find them
    res.stdout.fnmatch_lines(
        [
            "deploycheck cache: evicted * least recently used entries (*) to stay under the 1.0 kB cap; the next "
            "run builds them again (--deploycheck-cache-size or ini deploycheck_cache_size raises the cap; *"
        ]
    )
    again = project.run(f"--deploycheck-cache-dir={tmp_path / 'cache'}", "--deploycheck-cache-size=1GB")
    assert "deploycheck cache: evicted" not in again.stdout.str()  # under its cap: nothing goes, nothing said
    res = project.run("--deploycheck-cache-size=lots")
    res.stderr.fnmatch_lines(["*--deploycheck-cache-size: not a size: 'lots' (examples: 500MB, 2GB, 1.5GiB, 1000000)*"])


def _artifact_entry(tmp_path, payload: bytes):
    import hashlib

    src = tmp_path / f"model-{hashlib.sha256(payload).hexdigest()[:8]}.bin"
    src.write_bytes(payload)
    return str(src), {"sha256": hashlib.sha256(payload).hexdigest(), "format": "torchscript", "size": len(payload)}


def test_a_second_publisher_of_one_entry_leaves_the_first_whole_and_no_staging_behind(tmp_path):
    """Two sessions that make the same entry both publish it by an atomic rename of a staged folder:
    the loser's folder is dropped, never merged into or over the entry a reader may be copying."""
    from deploycheck.cache import Cache

    first, second = Cache(str(tmp_path / "c")), Cache(str(tmp_path / "c"))
    path1, man1 = _artifact_entry(tmp_path, b"first" * 1000)
    path2, man2 = _artifact_entry(tmp_path, b"second" * 1000)
    first.put_artifact("ab" * 32, path1, man1)
    second.put_artifact("ab" * 32, path2, man2)  # same key, e.g. a model whose save is not bit-stable
    got = first.get_artifact("ab" * 32, str(tmp_path / "out.bin"))
    assert got == man1 and (tmp_path / "out.bin").read_bytes() == b"first" * 1000
    assert os.listdir(tmp_path / "c" / "tmp") == []  # the staged copy of the loser is gone


PUBLISHER = """
import json
import sys
from deploycheck.cache import Cache
cache = Cache(sys.argv[1])
for _ in range(int(sys.argv[4])):
    cache.put_artifact(sys.argv[2], sys.argv[3], json.loads(sys.argv[5]))
"""


def test_concurrent_publishers_in_two_processes_never_expose_a_partial_entry(tmp_path):
    """The cross-process case, cheaply: two processes publish one key over and over while this one
    reads it; every read is the whole entry or a miss, never a torn file."""
    import subprocess
    import sys

    from deploycheck.cache import Cache

    payload = bytes(range(256)) * 4000  # 1 MB: a copy takes long enough to be caught half-done
    path, man = _artifact_entry(tmp_path, payload)
    root, key = str(tmp_path / "c"), "cd" * 32
    procs = [
        subprocess.Popen([sys.executable, "-c", PUBLISHER, root, key, path, "40", json.dumps(man)]) for _ in range(2)
    ]
    reader = Cache(root)
    while any(p.poll() is None for p in procs):
        out = tmp_path / "read.bin"
        if reader.get_artifact(key, str(out)) is not None:
            assert out.read_bytes() == payload
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert reader.get_artifact(key, str(tmp_path / "last.bin")) == man
    assert sorted(os.listdir(tmp_path / "c" / "tmp")) == []


def test_old_session_run_folders_are_cleaned(project, tmp_path):
    import os

    project.write(make_spec())
    base = tmp_path / "base"
    project.run(f"--deploycheck-run-dir={base}").assert_outcomes(passed=5)
    (base / "run" / "999999999-1").mkdir(parents=True)  # a session whose process is gone
    (base / "run" / "999999999-1" / ".deploycheck-run").touch()  # the marker a session's folder carries
    (base / "run" / "999999998-1").mkdir()  # named like one, but not made by deploycheck: kept
    project.run(f"--deploycheck-run-dir={base}").assert_outcomes(passed=5)
    assert "999999999-1" not in os.listdir(base / "run")
    assert "999999998-1" in os.listdir(base / "run")


def test_a_result_key_depends_on_what_is_measured_not_on_where_the_files_lie():
    """The fresh-process result is keyed by the artifacts' contents, the measurement and generation
    settings and the inputs; the run folder's paths change every session and must not count."""
    from deploycheck.cache import result_key
    from deploycheck.protocol import ArtifactRef, GeneratePlan, LatencyPlan, WorkerRequest

    def request(folder: str, *, sha: str = "aa", rounds: int = 5, new_tokens: int = 8) -> WorkerRequest:
        def ref(name: str, digest: str) -> ArtifactRef:
            return ArtifactRef(f"{folder}/{name}", "torchscript", {}, {"sha256": digest})

        latency = LatencyPlan(
            example=f"{folder}/x.pt",
            warmup=1,
            min_rounds=rounds,
            max_time_s=1.0,
            round_ms=1.0,
            confidence=0.95,
            baseline=ref("base.pt", "bb"),
        )
        generate = GeneratePlan(prompts=f"{folder}/p.pt", new_tokens=new_tokens)
        return WorkerRequest(
            ref("model.pt", sha),
            f"{folder}/in.pt",
            f"{folder}/out.pt",
            f"{folder}/r.json",
            latency=latency,
            generate=generate,
        )

    key = result_key(request("/run/1"), "inputs")
    assert result_key(request("/run/2"), "inputs") == key
    assert result_key(request("/run/1", sha="cc"), "inputs") != key
    assert result_key(request("/run/1", rounds=9), "inputs") != key
    assert result_key(request("/run/1", new_tokens=9), "inputs") != key
    assert result_key(request("/run/1"), "other inputs") != key


# --- a cached result never outlives a change in a file the item read (issue 32) ---------------------


def test_a_changed_artifact_or_sidecar_fails_after_a_cached_pass(project, tmp_path):
    """Each file a fresh-process result read is in its key, and a file the loader refuses is
    refused before any cache lookup: after a cached pass, a sidecar that asks to import a module or
    names a factory, and an artifact swapped, truncated or deleted, all fail under the default cache."""
    import hashlib

    from conftest import tinymodels_of
    from safetensors.torch import save_file

    tiny = tinymodels_of(project)
    dist = project.path / "dist"
    dist.mkdir()
    art, side = dist / "model.safetensors", dist / "model.safetensors.manifest.json"

    def ship(model) -> bytes:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(art))
        data = art.read_bytes()
        manifest = {"format": "safetensors", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        side.write_text(json.dumps(manifest))
        return data

    good = ship(tiny.Tiny())
    good_side = side.read_text()
    other = tiny.Tiny()
    for p in other.parameters():
        p.data.add_(1.0)
    ship(other)
    swapped = art.read_bytes()
    art.write_bytes(good)
    side.write_text(good_side)
    project.write(
        make_spec(
            formats="[safetensors]",
            variants="  baseline: {}\n  shipped:\n    artifact: {path: dist/model.safetensors}",
            thresholds="  size: {max_mb: 50}",
        )
    )
    project.run("-k", "load and shipped").assert_outcomes(passed=1)
    project.run("-k", "load and shipped").assert_outcomes(passed=1)
    assert rows(project)[("shipped", "safetensors")]["load"] == "ok (cached)"  # the cache is in play

    manifest = json.loads(good_side)
    cases = {
        "requires": (lambda: side.write_text(json.dumps({**manifest, "requires": ["pwnmod"]})), "*manifest-refused*"),
        "factory": (
            lambda: side.write_text(json.dumps({**manifest, "factory": "os:system", "kwargs": {"command": "true"}})),
            "*manifest-mismatch: model.safetensors.manifest.json names factory 'os:system'*",
        ),
        "swapped": (lambda: art.write_bytes(swapped), "*corrupted: checksum mismatch (same size, different bytes)*"),
        "truncated": (lambda: art.write_bytes(good[: len(good) // 2]), "*truncated: the file is incomplete*"),
        "deleted": (art.unlink, "*missing: the file does not exist*"),
    }
    for name, (change, message) in cases.items():
        change()
        res = project.run("-k", "load and shipped")
        res.assert_outcomes(failed=1)
        res.stdout.fnmatch_lines([message])
        assert "ok (cached)" not in rows(project)[("shipped", "safetensors")]["load"], name
        art.write_bytes(good)
        side.write_text(good_side)
    # the same files again: served from the cache as before
    project.run("-k", "load and shipped").assert_outcomes(passed=1)
    assert rows(project)[("shipped", "safetensors")]["load"] == "ok (cached)"


def test_a_result_key_covers_the_kv_step_tokenizer_and_external_data_by_content(tmp_path):
    """A causal LM's KV-cache step, its shipped tokenizer and an ONNX graph's external data are read
    by the worker: each one swapped, truncated or deleted changes the key, and a KV-cache step that
    is missing or differs from the manifest is refused before the cache is asked (issue 32)."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deploycheck.cache import result_key
    from deploycheck.protocol import ArtifactRef, WorkerRequest
    from deploycheck.stages.reload import refused

    weight = numpy_helper.from_array(__import__("numpy").ones((4, 4), dtype="float32"), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    art = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(art), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (tmp_path / "model.kv.onnx").write_bytes(b"kv step")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text('{"vocab": 1}')

    def sha(p) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    def key() -> tuple[str, bool]:
        manifest = {
            "sha256": sha(art),
            "kv_cache": {"file": "model.kv.onnx", "sha256": hashlib.sha256(b"kv step").hexdigest()},
            "tokenizer": {"tokenizer.json": "recorded"},
        }
        ref = ArtifactRef(str(art), "onnx", {}, manifest)
        req = WorkerRequest(ref, str(tmp_path / "in.pt"), str(tmp_path / "out.pt"), str(tmp_path / "r.json"))
        return result_key(req, "inputs"), refused(ref)

    first, refuse = key()
    assert not refuse
    for path, change in (
        (tmp_path / "model.kv.onnx", lambda p: p.write_bytes(b"another step")),
        (tmp_path / "model.kv.onnx", lambda p: p.write_bytes(b"kv")),
        (tmp_path / "model.kv.onnx", lambda p: p.unlink()),
    ):
        change(path)
        changed, refuse = key()
        assert changed != first and refuse, path
        path.write_bytes(b"kv step")
    weights = (tmp_path / "weights.bin").read_bytes()
    for path, original, change in (
        (tmp_path / "tokenizer" / "tokenizer.json", b'{"vocab": 1}', lambda p: p.write_text('{"vocab": 2}')),
        (tmp_path / "tokenizer" / "tokenizer.json", b'{"vocab": 1}', lambda p: p.unlink()),
        (tmp_path / "weights.bin", weights, lambda p: p.write_bytes(weights[::-1])),
        (tmp_path / "weights.bin", weights, lambda p: p.write_bytes(weights[:8])),
        (tmp_path / "weights.bin", weights, lambda p: p.unlink()),
    ):
        change(path)
        changed, refuse = key()
        assert changed != first and not refuse, path  # not a refusal: a miss, the worker loads it again
        path.write_bytes(original)
    assert key() == (first, False)


# --- a warm rerun pays only for what changed (issue 31) ----------------------------------------------


def test_a_warm_rerun_serves_batch_invariance_probes_from_the_cache_and_a_changed_recipe_reruns_them(project):
    variants = (
        "  baseline: {}\n  int8:\n    quantize: {method: dynamic_int8}\n"
        "    thresholds:\n      batch_invariance: {atol: 1.0, probes: 8}"
    )
    project.write(make_spec(variants=variants))

    def formula() -> str:
        doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
        (rec,) = [r for r in doc["records"] if r["check"] == "batch_invariance"]
        return rec["formula"]

    first = project.run("-k", "batch_invariance")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["deploycheck cache: reused 0 in-memory evaluations (*"])
    measured = formula()
    assert measured.startswith("max |alone - batched| ") and "(8 probes, batches of 38)" in measured
    warm = project.run("-k", "batch_invariance")
    warm.assert_outcomes(passed=1)
    # the probes and the prepared data, both read back
    warm.stdout.fnmatch_lines(["deploycheck cache: reused 1 in-memory evaluations (*), 1 prepared datasets, *"])
    assert formula() == measured  # the same numbers, read back
    # a changed recipe is another build: its probes run again
    project.write(
        make_spec(variants=variants.replace("dynamic_int8}", "dynamic_int8, engine: qnnpack, per_channel: false}"))
    )
    project.run("-k", "batch_invariance").stdout.fnmatch_lines(["deploycheck cache: reused 0 in-memory evaluations (*"])


def test_a_remeasurement_redoes_only_the_timing_never_the_evaluation(project):
    """A failing latency verdict forgets its measurement; the next run times the artifact again in
    a fresh process and reads the evaluation it came with from the cache (issue 31)."""

    def records() -> dict:
        doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
        return {r["check"]: r for r in doc["records"] if r["variant"] == "baseline"}

    project.write(make_spec(thresholds="  metric: {max_drop: 0.01}\n  latency: {p95_ms: 0.000001}"))
    first = project.run("-k", "load or latency or metric")
    first.assert_outcomes(passed=2, failed=1)
    first.stdout.fnmatch_lines(["*(not kept in the cache: the next run measures again)*"])
    assert records()["load"]["formula"] == "loaded and ran in a fresh process"
    second = project.run("-k", "load or latency or metric")
    second.assert_outcomes(passed=2, failed=1)  # measured again: still too slow for 1 ns
    second.stdout.fnmatch_lines(
        [
            "*(not kept in the cache: the next run measures again)*",
            "deploycheck cache: reused 1 built variants, 1 artifacts, 0 fresh-process results (*)",
            "deploycheck cache: reused * in-memory evaluations (*), 1 prepared datasets, 1 fresh-process "
            "evaluations whose latency was measured again, 0 formats known not to hold their variant",
        ]
    )
    rec = records()
    assert rec["load"]["formula"] == "loaded and ran in a fresh process (cached evaluation; latency measured again)"
    assert rec["latency"]["status"] == "failed" and "p95" in rec["latency"]["formula"]
    assert rec["metric"]["status"] == "passed"
    # a passing threshold keeps the whole result: the third run is served from the cache
    project.write(make_spec(thresholds="  metric: {max_drop: 0.01}\n  latency: {p95_ms: 60000}"))
    project.run("-k", "load or latency or metric").assert_outcomes(passed=3)
    project.run("-k", "load or latency or metric").assert_outcomes(passed=3)
    assert records()["load"]["formula"] == "loaded and ran in a fresh process (cached result)"


def test_a_prepared_dataset_is_kept_as_tensors_and_anything_else_is_prepared_again():
    """The cache keeps a dataset only as numeric tensors (read back with ``weights_only``), and
    reads back only that shape: a value of another shape, or text arrays, are prepared again."""
    import numpy as np
    import torch

    from deploycheck.data.dataset import Dataset, restored, stored

    x = {"input_ids": np.arange(12, dtype=np.int64).reshape(3, 4), "mask": np.ones((3, 4), dtype=bool)}
    ds = Dataset(x, np.array([0, 1, 2]), {k: v[:2] for k, v in x.items()}, None, ("mask",))
    kept = stored(ds)
    assert kept is not None and set(kept) == {"x_train", "x_test", "y_train", "y_test", "bf16"}
    back = restored(torch.load(_saved(kept), weights_only=True))
    assert back is not None and back.bf16 == ("mask",) and back.y_test is None
    assert np.array_equal(back.x_train["input_ids"], x["input_ids"]) and back.x_train["mask"].dtype == bool
    assert np.array_equal(back.y_train, [0, 1, 2])
    texts = Dataset(np.array(["a", "b"], dtype=object), None, np.array(["c"], dtype=object), None)
    assert stored(texts) is None
    for bad in (None, [1, 2], {"x_train": 1}, {**kept, "bf16": "mask"}, {**kept, "x_test": "not a tensor"}):
        assert restored(bad) is None


def _saved(value) -> str:
    import tempfile

    import torch

    f = tempfile.NamedTemporaryFile(suffix=".pt", delete=False)
    torch.save(value, f.name)
    return f.name


def test_only_data_a_build_key_covers_is_kept(tmp_path):
    """A ``python:`` source or a ``callable`` preprocessing step may read files no key covers: it
    runs every session. Files and libraries' datasets are in the baseline's build key."""
    from types import SimpleNamespace as NS

    from deploycheck.data.dataset import keepable

    def spec(source, *ops):
        return NS(data=NS(source=source, preprocess=[NS(op=o) for o in ops]))

    assert keepable(spec("sklearn:digits")) and keepable(spec("npz:d.npz", "scale"))
    assert keepable(spec("text:t.txt", "tokenize"))
    assert not keepable(spec("python:mod:fn")) and not keepable(spec("npz:d.npz", "callable"))


def test_a_declared_size_the_model_cannot_take_fails_dynamic_and_again_from_the_cache(project):
    """A dynamic dimension declared down to a size the in-memory model itself cannot take: the
    dynamic item fails naming the size and the model's own error, and a rerun that reads the
    in-memory outputs from the cache fails the same way (the error is what is kept)."""
    spec = make_spec().replace(
        "inputs: {shape: [1, 4]}", "inputs: {shape: [1, 4], dynamic: {1: {name: feat, min: 2, max: 4}}}"
    )
    project.write(spec)
    for _ in range(2):
        res = project.run("-k", "dynamic")
        res.assert_outcomes(failed=1)
        res.stdout.fnmatch_lines(
            [
                "*feat traced at 4; at 2 (*) the in-memory variant fails: RuntimeError: *(check model.inputs dynamic min/max)*"
            ]
        )
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 in-memory evaluations (*"])
