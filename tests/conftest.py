"""Shared helpers: a tiny model package and spec builder for pytester-driven behaviour tests."""

from __future__ import annotations

import os
import sys
import textwrap

# pytester's in-process runs restore sys.modules afterwards; C extensions such as torch cannot be
# imported twice in one process, so they are imported once here, before any inner run.
import numpy  # noqa: F401,E402
import pytest
import safetensors.torch  # noqa: F401,E402
import sklearn.datasets  # noqa: F401,E402
import sklearn.model_selection  # noqa: F401,E402
import torch  # noqa: F401,E402
import torch._dynamo  # noqa: F401,E402
import torch._inductor.codecache  # noqa: F401,E402  (registers cache artifact types once per process)
import torch._inductor.runtime.autotune_cache  # noqa: F401,E402
import torch.ao.quantization  # noqa: F401,E402
import torch.export  # noqa: F401,E402
import yaml  # noqa: F401,E402  (its C loader, too, must not be imported twice)


def _warm_up_lazy_imports() -> None:
    """torch.export and the ONNX exporter import many modules lazily, some of which register global
    state once per process; run them once here so inner pytester sessions never import them anew."""
    import contextlib
    import io
    import warnings

    m = torch.nn.Linear(4, 2).eval()
    x = torch.ones(2, 4)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.export.export(m, (x,))
        torch.jit.trace(m, (x,))
        try:
            torch.onnx.export(m, (x,), dynamo=True)
        except Exception:
            pass


_warm_up_lazy_imports()


def _keep_installed_modules() -> None:
    """pytester's in-process runs restore ``sys.modules`` afterwards, dropping every module the
    inner session imported. For installed libraries that is wrong: torch imports its compiler
    stack lazily and registers global state as it goes, so a module dropped and imported again
    registers twice (an AOTInductor compile after an inner session that exported failed with
    "duplicate name: eager", then InductorError). Modules of installed packages and the standard
    library are kept; the test's own modules (the model files written to tmp dirs) still go."""
    import sysconfig

    import _pytest.pytester as pytester_mod

    roots = tuple(
        os.path.realpath(p) + os.sep
        for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    )

    def installed(name: str) -> bool:
        f = getattr(sys.modules.get(name), "__file__", None)
        return bool(f) and os.path.realpath(f).startswith(roots)

    base = pytester_mod.SysModulesSnapshot

    class KeepInstalled(base):  # type: ignore[misc,valid-type]
        def __init__(self, preserve=None):
            super().__init__(preserve=lambda name: installed(name) or (preserve is not None and preserve(name)))

    pytester_mod.SysModulesSnapshot = KeepInstalled  # type: ignore[misc]


_keep_installed_modules()

try:
    import transformers  # noqa: F401
except ImportError:
    pass

try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
    import torchao.quantization  # noqa: F401
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
except ImportError:  # optional extras
    pass

TINY_MODELS = '''
import os
import sys
import time

import torch
from torch import nn


class Tiny(nn.Module):
    """4 features -> 3 classes (iris)."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, hidden)
        self.out = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


class Shifted(Tiny):
    """Tiny with its outputs moved by ``shift``: perturbs weights' effect by a known amount."""

    def __init__(self, shift: float = 0.0):
        super().__init__()
        with torch.no_grad():
            self.out.bias += shift


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class Drifting(Tiny):
    """Adds a Python-side call counter: tracing freezes it, so the reloaded artifact differs."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x) + float(self.calls)


class FirstRowOnly(Tiny):
    """Returns one row whatever the batch: the silent fixed-batch failure."""

    def forward(self, x):
        return super().forward(x[:1])


def _in_worker():
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec is not None and spec.name == "deploycheck.worker"


class Aborts(Tiny):
    def forward(self, x):
        if _in_worker():
            os.abort()
        return super().forward(x)


class Sleeps(Tiny):
    def forward(self, x):
        if _in_worker():
            time.sleep(60)
        return super().forward(x)


class Floods(Tiny):
    def forward(self, x):
        if _in_worker():
            sys.stdout.write("x" * 2_000_000)
            sys.stdout.flush()
            raise RuntimeError("boom after flooding stdout")
        return super().forward(x)


class Hogs(Tiny):
    def forward(self, x):
        if _in_worker():
            torch.ones(int(8e9), dtype=torch.uint8)  # 8 GB, far past the spec's memory limit
        return super().forward(x)


class NaNs(Tiny):
    """A broken model: every output is NaN."""

    def forward(self, x):
        return super().forward(x) * float("nan")


class Overflows(Tiny):
    """Fine in float32; in float16 the scaled intermediate overflows to Inf."""

    def forward(self, x):
        return (super().forward(x) * 1.0e5) / 1.0e5


class HistorySensitive(Tiny):
    """Like a runtime that specialises on the shapes it has seen (TorchScript's profiling
    executor): once it has run a batch of more than one row, every later call is much slower."""

    def __init__(self, hidden: int = 16):
        super().__init__(hidden)
        self.seen_batches = False

    def forward(self, x):
        if x.shape[0] > 1:
            self.seen_batches = True
        if self.seen_batches:
            end = time.perf_counter() + 300e-6
            while time.perf_counter() < end:
                pass
        return super().forward(x)


class Repeat(nn.Module):
    def __init__(self, inner, times):
        super().__init__()
        self.inner, self.times = inner, times

    def forward(self, x):
        y = self.inner(x)
        for _ in range(self.times - 1):
            y = self.inner(x + 0.0 * y.sum())
        return y


def repeat(model, ctx, times=2):
    """A custom recipe: the model run ``times`` times in a chain (``times`` x the work)."""
    return Repeat(model, times)


def inspect_context(model, ctx, expect_rows=0):
    """A custom recipe that checks what it is given and changes nothing."""
    assert ctx.x_train.shape == (expect_rows, 4), ctx.x_train.shape
    assert ctx.y_train is not None and ctx.example.shape == (1, 4)
    assert ctx.data.source == "sklearn:iris"
    ctx.log(f"got {len(ctx.x_train)} training rows; first draw {torch.rand(1, generator=ctx.generator).item():.4f}")
    return None


class Deep(nn.Module):
    """Four Linear layers: room for an error to start somewhere and grow."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.l3, self.l4 = nn.Linear(4, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, x):
        return self.l4(torch.relu(self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))))


class ExportsDifferently(Deep):
    """Deep, but l3 adds 1 while torch.export traces it: a stand-in for a conversion that changes
    one layer, so the reloaded export/ONNX file departs from the in-memory model at l3."""

    def __init__(self):
        super().__init__()
        self.l3.register_forward_hook(lambda m, i, o: o + 1.0 if torch.compiler.is_exporting() else o)


def corrupt(model, ctx, layer="l2"):
    """A custom recipe standing in for a bad conversion: one layer's weights scrambled."""
    with torch.no_grad():
        w = dict(model.named_modules())[layer].weight
        w.copy_(torch.randn(w.shape, generator=ctx.generator) * 3)
    return model


def crashes(model, ctx):
    raise ValueError("the recipe tripped over its own feet")


def broken():
    raise RuntimeError("factory exploded")
'''

BASE_SPEC = """\
deploycheck: 1
name: tiny
model:
  factory: tinymodels:{factory}
  inputs: {{shape: [1, 4]}}
data:
  source: sklearn:iris
  split: {{test_fraction: 0.25, seed: 0}}
formats: {formats}
variants:
{variants}
thresholds:
{thresholds}
latency: {{warmup: 1, min_rounds: 5, max_time_s: 0.5, round_ms: 0.2}}
snapshot: {{enabled: {snapshot}}}
{extra}
"""


def digits_cnn_spec(*, name: str, variants: str, thresholds: str) -> str:
    """A spec over the shipped digits CNN and its weights, with ONNX as its one format: the model
    whose static int8 ONNX file (onnxruntime's int8 kernels) really differs from torch's.
    ``variants`` and ``thresholds`` are YAML lines indented by two spaces."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = textwrap.dedent(
        f"""\
        deploycheck: 1
        name: {name}
        model:
          factory: examples.digits:CNN
          kwargs: {{channels: 16}}
          weights: {root}/specs/models/digits_cnn.safetensors
          inputs: {{shape: [1, 1, 8, 8]}}
          python_path: ["{root}", "."]
        data:
          source: sklearn:digits
          split: {{test_fraction: 0.25, seed: 0}}
          preprocess:
            - scale: 0.0625
            - reshape: [1, 8, 8]
            - normalize: {{mean: 0.3, std: 0.4}}
          batch_size: 128
        metric: accuracy
        formats: [onnx]
        snapshot: {{enabled: false}}
        """
    )
    return head + "variants:\n" + variants.rstrip("\n") + "\nthresholds:\n" + thresholds.rstrip("\n") + "\n"


#: The tiny spec's gates. An item no threshold gates is skipped as "not gated", never passed, so the
#: tests' tiny specs gate size and latency too, with bounds a four-feature model never nears: these
#: tests are about outcomes, not time (the latency gate's decisions are tested on synthetic times).
GATED = "  metric: {max_drop: 0.01}\n  size: {max_mb: 50}\n  latency: {p95_ms: 60000}"


def make_spec(
    *,
    factory: str = "Tiny",
    formats: str = "[torchscript]",
    variants: str = "  baseline: {}",
    thresholds: str = GATED,
    snapshot: str = "false",
    extra: str = "",
) -> str:
    return BASE_SPEC.format(
        factory=factory, formats=formats, variants=variants, thresholds=thresholds, snapshot=snapshot, extra=extra
    )


def tinymodels_of(project):
    """The project's tiny model module, imported in this process and forgotten again (the inner
    pytest runs import their own copy)."""
    import importlib
    import sys

    sys.path.insert(0, str(project.path))
    try:
        return importlib.import_module("tinymodels")
    finally:
        sys.path.remove(str(project.path))
        sys.modules.pop("tinymodels", None)


def run_once(tmp_path_factory, spec_text: str, *args: str, name: str = "tiny", files: dict | None = None):
    """One inner session, in a subprocess, for a module-scoped fixture whose result several tests
    read (pytester is function-scoped): returns the project folder and the completed process.
    ``files`` adds more files to the project (``{"other.yaml": text}``)."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("project")
    (root / "tinymodels.py").write_text(TINY_MODELS)
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / f"{name}.yaml").write_text(textwrap.dedent(spec_text))
    for rel, text in (files or {}).items():  # more specs, or the modules they name
        (root / rel).write_text(textwrap.dedent(text))
    # an inner session is a session of its own, not an xdist worker (see ``project``)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST") and k != "PYTEST_ADDOPTS"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--deploycheck-run-dir={tmp_path_factory.mktemp('run')}",
            f"--deploycheck-cache-dir={tmp_path_factory.mktemp('cache')}",
            *args,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return root, proc


def cli(*args: str, cwd=None, timeout: float = 120):
    """``python -m deploycheck.cli ARGS`` in a process of its own, as from a shell: its own imports
    (a factory module it resolves stays out of this process), no stdin, text output captured."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "deploycheck.cli", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _SharedRequest:
    """What :class:`pytest.Pytester` reads from its request, for a run made once per module."""

    function = None

    def __init__(self, request, name: str):
        self.node = type("Node", (), {"name": name})()
        self.config = request.config
        self.finalizers: list = []

    def addfinalizer(self, fn) -> None:
        self.finalizers.append(fn)


# The environment an inner session must not inherit from the machine that runs the suite: pytest
# prints whole failure messages in its short summary when CI or BUILD_NUMBER is set (as CI runners
# do), and a user's DEPLOYCHECK_CADENCE would deselect tiers. Inner runs read the same everywhere.
_OUTER_ENV = ("CI", "BUILD_NUMBER", "DEPLOYCHECK_CADENCE")


def shared_run(request, tmp_path_factory, spec_text: str, *args: str, name: str = "tiny", plots: bool = False):
    """One in-process inner session for a module-scoped fixture whose outcome several tests read
    (``project`` is function-scoped): the project folder and pytester's RunResult. Set up like
    ``project`` (the tiny models, a pytest.ini, its own run and cache folders, no xdist worker
    variables, no HTML plots unless ``plots``); the working directory, environment and imported
    modules are restored before it returns."""
    mp = pytest.MonkeyPatch()
    req = _SharedRequest(request, f"shared-{request.module.__name__}")
    try:
        tester = pytest.Pytester(req, tmp_path_factory, mp, _ispytest=True)
        mp.delenv("PYTEST_XDIST_WORKER", raising=False)
        mp.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
        for var in _OUTER_ENV:
            mp.delenv(var, raising=False)
        if not plots:
            from deploycheck.report import html

            mp.setattr(html, "plots", lambda rows: {})
        tester.makepyfile(tinymodels=TINY_MODELS)
        tester.makeini("[pytest]\n")
        (tester.path / f"{name}.yaml").write_text(textwrap.dedent(spec_text))
        res = tester.runpytest(
            "-p",
            "no:cacheprovider",
            f"--deploycheck-run-dir={tmp_path_factory.mktemp('run')}",
            f"--deploycheck-cache-dir={tmp_path_factory.mktemp('cache')}",
            *args,
        )
    finally:
        for fn in reversed(req.finalizers):
            fn()
        mp.undo()
    return tester.path, res


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """The suite never touches the user's cache (~/.cache/deploycheck): its default points into
    pytest's own temporary folder, which pytest rotates."""
    import os

    old = os.environ.get("DEPLOYCHECK_CACHE_DIR")
    os.environ["DEPLOYCHECK_CACHE_DIR"] = str(tmp_path_factory.mktemp("default-cache"))
    yield
    if old is None:
        os.environ.pop("DEPLOYCHECK_CACHE_DIR", None)
    else:
        os.environ["DEPLOYCHECK_CACHE_DIR"] = old


@pytest.fixture
def project(pytester, tmp_path_factory, monkeypatch):
    """A pytester dir with the tiny model module; ``write(spec_text, name)`` adds a spec file."""
    # Under `pytest -n`, the inner runs are sessions of their own, not xdist workers: syrupy
    # prints no snapshot report in a worker, and deploycheck would split the cores between workers.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    monkeypatch.delenv("DEPLOYCHECK_QUIET_DIR", raising=False)  # an outer -n 2 session's lock folder
    for var in _OUTER_ENV:
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(tinymodels=TINY_MODELS)
    pytester.makeini("[pytest]\n")  # rootdir = the project, as in a real repository
    # The inner runs write their HTML report as on a machine without the `html` extra (no
    # matplotlib): the tables, not the plots. Drawing three SVG plots took a third of a small inner
    # session and no test here reads them; tests/test_report.py draws them (in a session of its
    # own, which this does not reach) and checks them, and renders plots of odd rows directly.
    from deploycheck.report import html

    monkeypatch.setattr(html, "plots", lambda rows: {})
    run_dir = tmp_path_factory.mktemp("run")
    cache_dir = tmp_path_factory.mktemp("cache")  # each test its own cache: no result leaks between tests

    class P:
        path = pytester.path
        tester = None

        def write(self, text: str, name: str = "tiny") -> str:
            p = pytester.path / f"{name}.yaml"
            p.write_text(textwrap.dedent(text))
            return str(p)

        def run(self, *args: str):
            return pytester.runpytest(
                "-p",
                "no:cacheprovider",
                f"--deploycheck-run-dir={run_dir}",
                f"--deploycheck-cache-dir={cache_dir}",
                *args,
            )

        def run_subprocess(self, *args: str):
            return pytester.runpytest_subprocess(
                "-p",
                "no:cacheprovider",
                f"--deploycheck-run-dir={run_dir}",
                f"--deploycheck-cache-dir={cache_dir}",
                *args,
            )

    p = P()
    p.tester = pytester
    return p


def pytest_configure(config):
    """Under `pytest -n 2`, the suite's files go to the workers whole (``--dist loadfile``): a
    module-scoped fixture (one inner session, files made once) then runs once, not once in each
    worker. Grouping single tests cannot do it here: pytest-xdist 3.8 marks a grouped test by
    rewriting ``item._nodeid``, which pytest 9 no longer reads, so ``--dist loadgroup`` spreads a
    group over the workers. An explicit other ``--dist`` is left as given."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) in ("load", "loadgroup"):
        config.option.dist = "loadfile"
    # The suite's own inner sessions (tiny models, no timing asserted) do not pause each other:
    # the lock folder deploycheck names for this -n session stays out of their environment.
    if hasattr(config, "workerinput"):
        os.environ.pop("DEPLOYCHECK_QUIET_DIR", None)
