"""pytest hooks and options only: collection of spec files, the session's runner, reports."""

from __future__ import annotations

import json
import logging
import os
import tempfile

import pytest

from . import rundir
from .cache import Cache, default_root, evict, parse_size
from .checks import declared_files
from .collect import RUNNER_FACTORY, CheckItem, SpecFile
from .isolation import start_method
from .machine import summary as machine_summary
from .quiet import LOCK_ENV
from .report import summary_rows, terminal_table
from .report.records import Record
from .report.write import Journal, write_reports
from .runner import Runner
from .snapshots import enable_for_items
from .spec.loader import may_be_spec

_RUNNER = pytest.StashKey[object]()
log = logging.getLogger("deploycheck")


def pytest_addoption(parser):
    g = parser.getgroup("deploycheck", "deploycheck: deployed-model checks")
    g.addoption(
        "--deploycheck-run-dir",
        default=None,
        help="where artifacts are written (default: a folder under the system temp dir, outside the source tree)",
    )
    g.addoption(
        "--deploycheck-report-dir",
        default=None,
        help="where reports are written (default: ini deploycheck_report_dir, else <rootdir>/reports)",
    )
    g.addoption("--deploycheck-no-report", action="store_true", default=False, help="do not write report files")
    g.addoption(
        "--deploycheck-cache",
        choices=("all", "build", "off"),
        default="all",
        help="reuse results across sessions by content hash: all (built variants, artifacts and "
        "fresh-process results on this machine), build (re-measure every reload), off",
    )
    g.addoption(
        "--deploycheck-cache-dir",
        default=None,
        help="cache folder (default: $DEPLOYCHECK_CACHE_DIR, else $XDG_CACHE_HOME/deploycheck, else "
        "~/.cache/deploycheck; shared by every checkout)",
    )
    g.addoption(
        "--deploycheck-cache-size",
        default=None,
        help="size cap of the cache, e.g. 500MB or 5GB (default: ini deploycheck_cache_size, else 2GB); "
        "least recently used entries are evicted at the end of a session",
    )
    parser.addini("deploycheck_report_dir", "report folder, relative to the rootdir", default="reports")
    parser.addini("deploycheck_cache_size", "size cap of the cache (e.g. 2GB)", default="2GB")
    parser.addini(
        "deploycheck_workers",
        "pytest-xdist workers when -n is not given: a number or 'auto' (one per core); "
        "empty: one process. -n on the command line (-n 0: one process) and -p no:xdist win",
        default="",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_cmdline_main(config):
    # before xdist reads -n (its own hook resolves 'auto' and sets up the workers)
    _default_workers(config)
    return (yield)


def _default_workers(config) -> None:
    """``-n`` from ini ``deploycheck_workers`` when the command line gave none and xdist is loaded
    (an ``-n`` in addopts would make ``-p no:xdist`` a usage error)."""
    if _is_worker(config) or getattr(config.option, "numprocesses", 0) is not None:
        return  # xdist absent (no attribute), or -n given
    text = str(config.getini("deploycheck_workers") or "").strip()
    if not text:
        return
    from xdist.plugin import parse_numprocesses  # type: ignore[import-untyped]

    try:
        config.option.numprocesses = parse_numprocesses(text)
    except Exception as e:  # noqa: BLE001 - argparse's error types vary
        raise pytest.UsageError(f"ini deploycheck_workers: {text!r}: expected a number, 'auto' or 'logical'") from e


#: options that take a folder: in their space form (``--opt /tmp/x``) pytest, which sets its rootdir
#: before plugins add their options, takes the folder for a test path
PATH_OPTIONS = ("--deploycheck-run-dir", "--deploycheck-report-dir", "--deploycheck-cache-dir")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    _fix_rootdir(early_config, args)


def _fix_rootdir(config, args) -> None:
    """Give pytest back the rootdir (and ini file) it would have chosen had a deploycheck path option
    been written ``--opt=value``: with ``--deploycheck-run-dir /tmp/x``, pytest chose its rootdir
    from /tmp/x (``rootdir: /``), so reports, the pytest cache and the project's ini settings went
    astray. By now the options are known, so the args are parsed right and the setup is redone."""
    if not any(a in PATH_OPTIONS for a in args):
        return
    from _pytest.config.findpaths import determine_setup

    ns = config.known_args_namespace
    rootpath, inipath, inicfg, ignored = determine_setup(
        inifile=ns.inifilename,
        override_ini=ns.override_ini,
        args=ns.file_or_dir,
        rootdir_cmd_arg=ns.rootdir or None,
        invocation_dir=config.invocation_params.dir,
    )
    if rootpath == config.rootpath and inipath == config.inipath:
        return
    old_cut = str(config.inipath.parent) if config.inipath is not None else str(config.rootpath)
    config._rootpath, config._inipath, config._inicfg, config._ignored_config_files = rootpath, inipath, inicfg, ignored
    config._inicache.clear()
    config._parser.extra_info["rootdir"] = str(rootpath)
    config._parser.extra_info["inifile"] = str(inipath)
    if ns.confcutdir == old_cut:
        ns.confcutdir = str(inipath.parent) if inipath is not None else str(rootpath)
    if "addopts" in inicfg:
        import warnings

        warnings.warn(
            pytest.PytestConfigWarning(
                f"the addopts of {inipath} were not applied: a deploycheck path option was given as `--opt value`; "
                "write `--opt=value`"
            ),
            stacklevel=1,
        )


def pytest_configure(config):
    cache_size(config)  # a bad size is a usage error now, not at the end
    try:
        start_method()
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    _start_session(config)
    config.pluginmanager.register(ReportCollector(config), "deploycheck-report")
    config.stash[RUNNER_FACTORY] = lambda: get_runner(config)
    enable_for_items(declared=declared_files)
    # Keep the items of one variant in one xdist worker: it is built once there.
    if getattr(config.option, "dist", None) == "load" and getattr(config.option, "numprocesses", None):
        config.option.dist = "loadgroup"
    _share_quiet(config)


def _share_quiet(config) -> None:
    """With two or more xdist workers, name the session's lock folder (inherited by the workers and
    their fresh processes through the environment): a latency measurement then runs alone, while
    no worker builds, exports or evaluates (see :mod:`deploycheck.quiet`)."""
    if _is_worker(config):
        return
    workers = getattr(config.option, "numprocesses", None)
    if isinstance(workers, int) and workers > 1 and getattr(config.option, "dist", "no") != "no":
        os.environ[LOCK_ENV] = os.path.join(_run_base(config), "run", os.environ[rundir.SESSION_ENV], "quiet")


def variant_scope(nodeid: str) -> str:
    """The xdist work unit of a test id: a spec item goes with the other items of its variant
    (``specs/x.yaml::spec::variant``), so the variant is built and saved once, in one worker;
    an ``@group`` suffix keeps its group; any other test is a unit of its own."""
    if "@" in nodeid:
        return nodeid.rsplit("@", 1)[1]
    parts = nodeid.split("::")
    if len(parts) >= 4 and parts[0].endswith((".yaml", ".yml")):
        return "::".join(parts[:3])
    return nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``-n N`` (deploycheck turns ``--dist load`` into ``loadgroup``), schedule by variant.
    xdist's own ``loadgroup`` marks a grouped test by rewriting ``item._nodeid``, which pytest 9
    no longer reads, so it spreads a group over the workers (each then builds the variant)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class VariantScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return variant_scope(nodeid)

    return VariantScheduling(config, log)


def pytest_sessionstart(session):
    # an xdist controller collects nothing itself: check there at once
    if getattr(session.config.option, "numprocesses", None) and not _is_worker(session.config):
        check_report_dir(session.config)


def pytest_collection_finish(session):
    # an unusable report folder is named before the first test runs, not after every test ran
    if any(isinstance(i, CheckItem) for i in session.items):
        check_report_dir(session.config)


def pytest_collect_file(file_path, parent):
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    if not may_be_spec(str(file_path)):
        return None  # other YAML (CI workflows, configs) is not ours
    return SpecFile.from_parent(parent, path=file_path)


def run_dir(config) -> str:
    """This session's run folder (see :mod:`deploycheck.rundir`)."""
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    return rundir.session_dir(_run_base(config), worker=worker)


def _run_base(config) -> str:
    return rundir.base_dir(str(config.rootpath), config.getoption("deploycheck_run_dir"))


def _start_session(config) -> None:
    if not _is_worker(config):
        rundir.start_session(_run_base(config))


def cache_dir(config) -> str | None:
    if config.getoption("deploycheck_cache") == "off":
        return None
    given = config.getoption("deploycheck_cache_dir")
    return os.path.abspath(given) if given else default_root()


def cache_size(config) -> int:
    text = config.getoption("deploycheck_cache_size") or config.getini("deploycheck_cache_size")
    try:
        return parse_size(text)
    except ValueError as e:
        raise pytest.UsageError(f"--deploycheck-cache-size: {e}") from None


def _share_cores(config) -> None:
    """Under pytest-xdist, split the cores between workers: N workers each using every core for
    training, compilation and in-memory evaluation oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def get_runner(config):
    if _RUNNER not in config.stash:
        _share_cores(config)
        cache = Cache(cache_dir(config), level=config.getoption("deploycheck_cache"))  # warns once when unusable
        config.stash[_RUNNER] = Runner(run_dir=run_dir(config), log=log.info, cache=cache)
    return config.stash[_RUNNER]


class ReportCollector:
    """Gathers the records items attach to their reports (xdist workers' too) and writes the reports."""

    def __init__(self, config):
        self.config = config
        self.records: list[Record] = []
        self.paths: list[str] = []
        self.error: str | None = None
        self.journal = (
            None if _is_worker(config) or config.getoption("deploycheck_no_report") else Journal(report_dir(config))
        )

    def pytest_runtest_logreport(self, report):
        if report.when != "call":  # setup/teardown reports carry the same properties
            return
        for name, value in getattr(report, "user_properties", ()):
            if name == "deploycheck":
                self.records.append(Record.from_json(json.loads(value)))
                if self.journal is not None:
                    self.journal.add(value)

    def pytest_sessionfinish(self, session, exitstatus):
        # Also runs after -x or Ctrl-C, so a run cut short still writes what ran.
        if _is_worker(self.config) or not self.records or self.config.getoption("deploycheck_no_report"):
            return
        out = report_dir(self.config)
        try:
            self.paths = write_reports(self.records, out, rootdir=str(self.config.rootpath), exitstatus=int(exitstatus))
        except OSError as e:  # the disk filled during the run: say so, and do not pass
            self.error = f"deploycheck: the reports could not be written to {out}: {_os_why(e)}; {REPORT_DIR_HINT}"
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return  # the journal keeps the records
        if self.journal is not None:
            self.journal.close()

    def pytest_terminal_summary(self, terminalreporter):
        if _is_worker(self.config) or not self.records:
            return
        tr = terminalreporter
        tr.section("deploycheck summary")
        for line in terminal_table(summary_rows(self.records)).splitlines():
            tr.write_line(line)
        tr.write_line(machine_summary())
        runner = self.config.stash.get(_RUNNER, None)
        if runner is not None and runner.cache.enabled:
            h = runner.cache.hits
            tr.write_line(
                f"deploycheck cache: reused {h['built']} built variants, {h['artifact']} artifacts, "
                f"{h['result']} fresh-process results ({runner.cache.root})"
            )
        for p in self.paths:
            tr.write_line(f"report written: {p}")
        if self.error:
            tr.write_line(self.error, red=True, bold=True)


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def report_dir(config) -> str:
    given = config.getoption("deploycheck_report_dir") or config.getini("deploycheck_report_dir")
    return given if os.path.isabs(given) else str(config.rootpath / given)


REPORT_DIR_HINT = (
    "write them elsewhere with --deploycheck-report-dir DIR (or ini deploycheck_report_dir), "
    "or not at all with --deploycheck-no-report"
)


def _os_why(e: OSError) -> str:
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device"
    return e.strerror or str(e)


def check_report_dir(config) -> None:
    """The report folder (or, while it does not exist, its nearest existing parent) must be a
    writable folder with room for a file: probed with a small temporary file, removed at once."""
    if _is_worker(config) or config.getoption("deploycheck_no_report"):
        return
    out = report_dir(config)
    probe_in = out
    while not os.path.exists(probe_in):
        parent = os.path.dirname(probe_in)
        if parent == probe_in:
            break
        probe_in = parent
    why = None
    if not os.path.isdir(probe_in):
        why = f"{probe_in} is a file, not a folder"
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=probe_in, prefix=".deploycheck-probe-") as fh:
                fh.write(b"x" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            why = _os_why(e)
    if why:
        raise pytest.UsageError(f"deploycheck: cannot write reports to {out}: {why}; {REPORT_DIR_HINT}")


def pytest_unconfigure(config):
    r = config.stash.get(_RUNNER, None)
    if r is not None:
        r.close()
    if not _is_worker(config):
        root = cache_dir(config)
        if root and os.path.isdir(root):
            evict(root, cache_size(config))
