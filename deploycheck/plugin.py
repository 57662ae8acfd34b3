"""pytest hooks and options only: collection of spec files, the session's runner, reports."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile

import pytest

from . import rundir
from .cache import Cache, default_root, evict, fmt_size, parse_size
from .cache.safe import UnsafeFolder
from .checks import declared_files
from .collect import RUN_CADENCE, RUNNER_FACTORY, CheckItem, SpecFile
from .isolation import start_method
from .machine import adopt as adopt_machine
from .machine import fingerprint as machine_fingerprint
from .machine import summary as machine_summary
from .quiet import LOCK_ENV
from .report import summary_rows, terminal_table
from .report.records import Record
from .report.session import (
    STARTED,
    ReportFolderBusy,
    ReportLock,
    Termination,
    call_safely,
    incomplete_reason,
    not_run,
    unit_of,
)
from .report.write import Journal, write_reports
from .runner import Runner
from .snapshots import enable_for_items, new_snapshots_note
from .spec.loader import may_be_spec
from .spec.model import CADENCES

_RUNNER = pytest.StashKey[object]()
_REPORTS = pytest.StashKey["ReportCollector"]()
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
        "--deploycheck-shard",
        default=None,
        metavar="I/N",
        help="run the I-th (1-based) of N balanced shares of the (spec, variant) units; every shard must "
        f"collect the same items (same paths and -k). Default: env {SHARD_ENV}. Merge the shards' reports "
        "with `deploycheck merge`, which names a shard that did not report",
    )
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
    g.addoption(
        "--deploycheck-cadence",
        choices=CADENCES,
        default=None,
        help="run tier: commit (default; $DEPLOYCHECK_CADENCE overrides it), nightly (also the specs and "
        "variants declared 'cadence: nightly') or weekly (everything)",
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


def run_cadence(config) -> str:
    """The tier this run includes: the option, else $DEPLOYCHECK_CADENCE, else commit."""
    chosen = config.getoption("--deploycheck-cadence", None)
    if chosen:
        return chosen
    env = os.environ.get("DEPLOYCHECK_CADENCE", "").strip()
    if env and env not in CADENCES:
        raise pytest.UsageError(f"DEPLOYCHECK_CADENCE={env!r} is not one of {list(CADENCES)}")
    return env or "commit"


def pytest_configure(config):
    # torch's structured-trace logger emits empty DEBUG records on every export (its own handler
    # writes them to TORCH_TRACE files); passed up, they filled -rA reports with blank lines
    logging.getLogger("torch.__trace").propagate = False
    cache_size(config)  # a bad size is a usage error now, not at the end
    config.stash[RUN_CADENCE] = run_cadence(config)
    try:
        start_method()
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    _start_session(config)
    config.stash[_REPORTS] = collector = ReportCollector(config)
    config.pluginmanager.register(collector, "deploycheck-report")
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


SHARD_ENV = "DEPLOYCHECK_SHARD"
_SHARD = pytest.StashKey[dict]()


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4); anything else is a usage error naming the form."""
    i, sep, n = text.strip().partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        index = count = 0
    if not sep or count < 1 or not 1 <= index <= count:
        raise pytest.UsageError(f"--deploycheck-shard / {SHARD_ENV}: expected I/N with 1 <= I <= N, got {text!r}")
    return index, count


def assign_shards(units: dict[str, int], count: int) -> dict[str, int]:
    """Each unit (a spec's variant, with its number of items) to a shard 1..count: largest units
    first, each to the shard with the fewest items so far (ties: the lowest shard), units of equal
    size in name order. A pure function of the collected units: every shard computes the same plan."""
    load = [0] * count
    out = {}
    for unit, n in sorted(units.items(), key=lambda kv: (-kv[1], kv[0])):
        k = min(range(count), key=lambda j: (load[j], j))
        out[unit] = k + 1
        load[k] += n
    return out


def pytest_collection_modifyitems(session, config, items):
    """With a shard (I/N), keep the items of the (spec, variant) units planned for shard I."""
    text = config.getoption("deploycheck_shard", None) or os.environ.get(SHARD_ENV)
    if not text:
        return
    index, count = parse_shard(text)
    units: dict[str, int] = {}
    for it in items:
        u = variant_scope(it.nodeid)
        units[u] = units.get(u, 0) + 1
    plan = assign_shards(units, count)
    keep = [it for it in items if plan[variant_scope(it.nodeid)] == index]
    drop = [it for it in items if plan[variant_scope(it.nodeid)] != index]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    config.stash[_SHARD] = {"index": index, "count": count, "units": plan}


def shard_of(config) -> dict | None:
    """This session's shard and the whole plan (written into its report), or None. An xdist
    controller collects nothing, so it knows its shard but not the other shards' units."""
    got = config.stash.get(_SHARD, None)
    if got is not None:
        return got
    text = config.getoption("deploycheck_shard", None) or os.environ.get(SHARD_ENV)
    if not text:
        return None
    index, count = parse_shard(text)
    return {"index": index, "count": count, "units": {}}


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
        session.config.stash[_REPORTS].take_folder()


def pytest_collection_finish(session):
    # an unusable report folder is named before the first test runs, not after every test ran
    items = [i for i in session.items if isinstance(i, CheckItem)]
    if items and not _is_worker(session.config):
        check_report_dir(session.config)
        reports = session.config.stash[_REPORTS]
        reports.take_folder()
        reports.plan({i.nodeid: _unit(i) for i in items})


def _unit(item: CheckItem) -> dict:
    return {
        "file": item.display_path,
        "spec": item.spec.name,
        "variant": item.variant.name,
        "format": item.fspec.name if item.fspec else None,
        "check": item.check.name,
        "recipe": item.variant.recipe,
    }


def pytest_report_collectionfinish(config, start_path, items):
    # said once, before the first test runs: a first run's new snapshots fail their items (syrupy's
    # rule: a gate never passes unchecked), and would bury the real failures without this note
    if _is_worker(config):
        return None
    note = new_snapshots_note([i for i in items if isinstance(i, CheckItem)])
    return [note] if note else None


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
        try:
            rundir.start_session(_run_base(config))
        except UnsafeFolder as e:
            raise pytest.UsageError(str(e)) from None


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


def pytest_runtest_teardown(item, nextitem):
    """After the last item of a variant, the session lets go of that variant's models and
    outputs; after the last item of a spec, of everything the spec held (its baseline too)."""
    t = getattr(item, "target", None)
    runner = item.config.stash.get(_RUNNER, None)
    if t is None or runner is None:
        return
    nt = getattr(nextitem, "target", None)
    # an xdist worker does not know its next unit yet (nextitem None): it may be this spec's again,
    # whose baseline it would then restore or rebuild, so only the variant is let go there
    last_known = nextitem is not None or "PYTEST_XDIST_WORKER" not in os.environ
    if last_known and (nt is None or nt.spec.path != t.spec.path):
        runner.release(t.spec.path)
    elif (nt is None or nt.vname != t.vname or nt.spec.path != t.spec.path) and not t.is_baseline:
        runner.release(t.spec.path, t.vname)


def _progress(config):
    """A line on the terminal for a long stage (None under an xdist worker, whose output is not shown)."""
    if hasattr(config, "workerinput"):
        return None

    def say(line: str) -> None:
        tr = config.pluginmanager.get_plugin("terminalreporter")  # looked up when needed: the runner
        capman = config.pluginmanager.get_plugin("capturemanager")  # may be made before they are registered
        if tr is not None:
            # said while an item runs, when pytest captures the process's output: past the capture
            # (as pytest-timeout does), or it would surface only in a failing item's captured output
            with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
                tr.write_line(line)
        log.info(line)

    return say


def get_runner(config):
    if _RUNNER not in config.stash:
        _share_cores(config)
        cache = Cache(cache_dir(config), level=config.getoption("deploycheck_cache"))  # warns once when unusable
        from .hf import use_cache

        use_cache(cache)  # a GGUF model's float conversion is kept there between runs
        config.stash[_RUNNER] = Runner(run_dir=run_dir(config), log=log.info, cache=cache, progress=_progress(config))
    return config.stash[_RUNNER]


class ReportCollector:
    """Gathers the records items attach to their reports (xdist workers' too) and writes the reports.

    It also keeps the session's state: the report folder's lock, the units collection planned
    and which of them finished, and why the session did not finish (Ctrl-C, SIGTERM, a crashed
    xdist worker, -x). At the start it writes a report set marked incomplete, listing every
    planned unit as not run, so a session that dies before its end leaves reports that say so."""

    def __init__(self, config):
        self.config = config
        self.records: list[Record] = []
        self.paths: list[str] = []
        self.error: str | None = None
        self.writes = not (_is_worker(config) or config.getoption("deploycheck_no_report"))
        self.journal = Journal(report_dir(config)) if self.writes else None
        self.lock: ReportLock | None = None
        self.planned: dict[str, dict] = {}  # nodeid -> unit (file, spec, variant, format, check, recipe)
        self.finished: set[str] = set()
        self.crashed: list[str] = []
        self.interrupted: str | None = None
        self.incomplete: str | None = None
        self.termination = Termination()
        if self.writes:
            self.termination.install()

    # -- the report folder ------------------------------------------------------------------
    def take_folder(self) -> None:
        """Own the report folder for this session (a clear usage error while another has it)."""
        if not self.writes or self.lock is not None or self.config.option.collectonly:
            return
        lock = ReportLock(report_dir(self.config))
        try:
            lock.acquire()
        except ReportFolderBusy as e:
            raise pytest.UsageError(str(e)) from None
        except OSError:
            return  # an unusable folder is check_report_dir's to report
        self.lock = lock

    def plan(self, units: dict[str, dict]) -> None:
        """The units this session is going to run; writes the report set that says it has not finished."""
        if self.planned or not units:
            return
        self.planned = units
        if self.lock is None:  # no reports (--deploycheck-no-report, --collect-only): the summary still says
            return
        import datetime as _dt

        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        try:
            write_reports(
                [not_run(u) for u in units.values()],
                report_dir(self.config),
                rootdir=str(self.config.rootpath),
                exitstatus=int(pytest.ExitCode.INTERRUPTED),
                incomplete=STARTED.format(pid=os.getpid(), created=created),
                draw=False,  # nothing to plot yet: the final set draws them
                shard=shard_of(self.config),
            )
        except OSError:
            pass  # the final write says what is wrong with the folder

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        self.plan({i: u for i in ids if (u := unit_of(i)) is not None})

    def pytest_keyboard_interrupt(self, excinfo):
        if not self.termination.received:
            e = excinfo.value
            self.interrupted = "Ctrl-C" if type(e) is KeyboardInterrupt else f"{type(e).__name__}: {e}".rstrip(": ")

    # -- results ----------------------------------------------------------------------------
    def pytest_runtest_logreport(self, report):
        if report.when == "???":  # xdist: the worker running this item died
            self.crashed.append(report.nodeid)
            return
        if report.when == "setup" and not report.passed:
            self.finished.add(report.nodeid)  # skipped or failed before it ran: done, as pytest shows it
            self._record_cadence_skip(report)
        if report.when != "call":  # setup/teardown reports carry the same properties
            return
        self.finished.add(report.nodeid)
        recorded = False
        for name, value in getattr(report, "user_properties", ()):
            if name == "deploycheck":
                recorded = True
                self.records.append(Record.from_json(json.loads(value)))
                if self.journal is not None:
                    self.journal.add(value)
        unit = self.planned.get(report.nodeid)
        if report.failed and not recorded and unit is not None:
            # an unforeseen error: the check did not pass, and its row must not read as if it had
            why = str(getattr(report, "longreprtext", "") or "").strip().splitlines()
            rec = not_run(unit)
            rec.status, rec.message = "error", f"the check raised: {why[-1] if why else 'an error'}"
            self.records.append(rec)
            if self.journal is not None:
                self.journal.add(rec.dumps())

    def _record_cadence_skip(self, report) -> None:
        """A unit left out of this run's cadence tier is in the reports as skipped, with the reason
        (absent, the reports would read as if it did not exist)."""
        unit = self.planned.get(report.nodeid)
        longrepr = report.longrepr
        reason = longrepr[2] if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
        reason = str(reason).removeprefix("Skipped: ")
        if unit is None or not reason.startswith("cadence "):
            return
        rec = not_run(unit)
        rec.status, rec.message = "skipped", reason
        self.records.append(rec)
        if self.journal is not None:
            self.journal.add(rec.dumps())

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        # the machine the workers ran on, for the reports: the controller imports no torch for it
        adopt_machine(getattr(node, "workeroutput", {}).get("deploycheck_machine"))

    def pytest_sessionfinish(self, session, exitstatus):
        # Also runs after -x, Ctrl-C or SIGTERM, so a run cut short still writes what ran, marked incomplete.
        if _is_worker(self.config) and "torch" in sys.modules:
            # plain JSON types: execnet sends nothing else (torch.__version__ is a str subclass)
            self.config.workeroutput["deploycheck_machine"] = json.loads(json.dumps(machine_fingerprint(), default=str))
        missing = [i for i in self.planned if i not in self.finished]
        self.incomplete = incomplete_reason(
            exitstatus=int(exitstatus),
            terminated=self.termination.received,
            interrupted=self.interrupted,
            crashed=self.crashed,
            stopped=next((s for s in (session.shouldfail, session.shouldstop) if isinstance(s, str) and s), None),
            missing=len(missing),
        )
        if self.incomplete is not None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a crashed worker's items did not pass
        if not self.writes or not (self.records or self.planned):
            return
        records = self.records + [not_run(self.planned[i]) for i in missing]
        out = report_dir(self.config)
        try:
            self.paths = call_safely(
                lambda: write_reports(
                    records,
                    out,
                    rootdir=str(self.config.rootpath),
                    exitstatus=int(session.exitstatus),
                    incomplete=self.incomplete,
                    shard=shard_of(self.config),
                )
            )
        except OSError as e:  # the disk filled during the run: say so, and do not pass
            self.error = f"deploycheck: the reports could not be written to {out}: {_os_why(e)}; {REPORT_DIR_HINT}"
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return  # the journal keeps the records
        if self.journal is not None:
            self.journal.close()

    def pytest_terminal_summary(self, terminalreporter):
        if _is_worker(self.config) or not (self.records or self.planned):
            return
        tr = terminalreporter
        tr.section("deploycheck summary")
        if self.incomplete is not None:
            n = len([i for i in self.planned if i not in self.finished])
            tr.write_line(
                f"deploycheck: session INCOMPLETE: {self.incomplete}; {n} check{'s' * (n != 1)} not run "
                "(never counted as passed)",
                red=True,
                bold=True,
            )
        else:
            n = len(self.planned)
            tr.write_line(f"deploycheck: session complete ({n} check{'s' * (n != 1)} collected, every one ran)")
        rows = summary_rows(self.records + [not_run(u) for i, u in self.planned.items() if i not in self.finished])
        for line in terminal_table(rows).splitlines():
            tr.write_line(line)
        split = failures_split(self.records)
        if split:
            tr.write_line(split, yellow=True, bold=True)
        tr.write_line(machine_summary())
        runner = self.config.stash.get(_RUNNER, None)
        if runner is not None and runner.cache.enabled:
            h = runner.cache.hits
            tr.write_line(
                f"deploycheck cache: reused {h['built']} built variants, {h['artifact']} artifacts, "
                f"{h['result']} fresh-process results"
                + (f", {h['converted']} GGUF models converted to float" if h.get("converted") else "")
                + f" ({runner.cache.root})"
            )
            tr.write_line(
                f"deploycheck cache: reused {h.get('value', 0)} in-memory evaluations "
                "(semantic, batch-invariance and dynamic-size inputs, bootstrap intervals, token ids, "
                f"greedy generations), {h.get('dataset', 0)} prepared datasets, "
                f"{h.get('evaluation', 0)} fresh-process evaluations whose latency was measured again, "
                f"{h.get('unsupported', 0)} formats known not to hold their variant"
            )
        evicted = evict_now(self.config)
        if evicted:
            tr.write_line(evicted, yellow=True)
        for p in self.paths:
            tr.write_line(f"report written: {p}")
        if self.error:
            tr.write_line(self.error, red=True, bold=True)

    def close(self) -> None:
        self.termination.uninstall()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def failures_split(records: list[Record]) -> str | None:
    """How many failed items are new snapshots and how many are real failures, when some are new."""
    new = sum(r.missing_snapshot for r in records)
    if not new:
        return None
    failed = sum(r.status in ("error", "failed") for r in records)
    other = failed - new
    return (
        f"deploycheck: {failed} item{'s' * (failed != 1)} failed: {new} new snapshot{'s' * (new != 1)} "
        f"awaiting approval, {other} other failure{'s' * (other != 1)}"
    )


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


_EVICTED = pytest.StashKey[bool]()


def evict_now(config) -> str | None:
    """Trim the cache to its size cap (least recently used entries first), once per session; the
    line saying what went, when something did (the next run rebuilds it: raise the cap to keep it)."""
    if _is_worker(config) or config.stash.get(_EVICTED, False):
        return None
    config.stash[_EVICTED] = True
    root = cache_dir(config)
    if not root or not os.path.isdir(root):
        return None
    try:
        cap = cache_size(config)
        gone = evict(root, cap)
    except (UnsafeFolder, pytest.UsageError):
        return None  # refused or mis-set: said when the session started
    if not gone:
        return None
    n = sum(e["bytes"] for e in gone)
    return (
        f"deploycheck cache: evicted {len(gone)} least recently used entries ({fmt_size(n)}) to stay under "
        f"the {fmt_size(cap)} cap; the next run builds them again (--deploycheck-cache-size or ini "
        "deploycheck_cache_size raises the cap; docs/cache-and-security.md says what a model needs)"
    )


def pytest_unconfigure(config):
    reports = config.stash.get(_REPORTS, None)
    if reports is not None:
        reports.close()
    r = config.stash.get(_RUNNER, None)
    if r is not None:
        r.close()
    evict_now(config)  # a session that printed no summary (-p no:terminal) is trimmed too
