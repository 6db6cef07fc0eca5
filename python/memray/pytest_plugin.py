"""pytest plugin: memory limits for tests and a report of the tests that allocate most.

It behaves as pytest-memray 1.11 (options, markers, failure texts, capture files), so a
test suite switches by changing nothing; docs/compatibility.md lists what it adds.
Registered through the `pytest11` entry point `memray` (`-p no:memray` turns it off);
`-p pytest_memray`, `-p pytest_memray.plugin` and `pytest_plugins = ["pytest_memray"]`
load this same module once.

    pytest --memray                         track every test; end with a MEMRAY REPORT
    @pytest.mark.limit_memory("24 MB")      fail a test whose peak memory reaches 24 MiB
    @pytest.mark.limit_leaks("1 MB", filter_fn=None)
                                            fail a test leaving 1 MiB or more allocated
                                            from one call stack when it ends
    --memray-default-limit SIZE             limit_memory(SIZE) for tests without a marker
    --fail-on-increase                      fail a limit_memory test using more memory than
                                            in its last successful run (pytest's cache)

Markers work without `--memray` (only the marked tests are tracked then). Sizes are
binary, as in pytest-memray: "1 KB" is 1024 bytes, "24 MB" 24 MiB.

Each test's call (not its fixtures) runs under a `memray.Tracker` writing an aggregated
capture `<bin path>/<prefix>-<test id>.bin` (a temporary directory unless
--memray-bin-path), and `<bin path>/metadata/<same name>.metadata`. With pytest-xdist,
the controller hands its directory to the workers and collects their results, so the
report covers every worker.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import json
import math
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import pytest

from ._pytest_limits import (
    LeakedObjectsFilterFunction,
    LeaksFilterFunction,
    Stack,
    StackFrame,
    check_leaked_objects,
    check_limit_leaks,
    check_limit_memory,
    check_memory_increase,
    is_plugin_overhead,
    parse_memory_string,
    peak_of,
    sizeof_fmt,
)

__all__ = ["LeakedObjectsFilterFunction", "LeaksFilterFunction", "Stack", "StackFrame", "parse_memory_string",
           "sizeof_fmt"]

N_TOP_SITES = 5
N_HISTOGRAM_BINS = 5
MARKERS = ("limit_memory", "limit_leaks", "limit_leaked_objects")
# A file name holds at most 255 bytes; the longest one written is NAME.metadata.
_MAX_NAME = 255 - len(".metadata")
_DIGEST_CHARS = 16


# --------------------------------------------------------------------------- results


@dataclass
class TrackedTest:
    nodeid: str
    path: str
    peak_memory: int
    total_allocations: int
    error: Optional[str] = None
    raised: bool = False  # the test did not run to its end: left out of the report

    def to_json(self):
        return [self.nodeid, self.path, self.peak_memory, self.total_allocations, self.error, self.raised]

    @classmethod
    def from_json(cls, data):
        return cls(*data)


def histogram(values: Iterable[float], low: float, high: float, bins: int) -> List[int]:
    step = ((high - low) / bins) or 1.0
    counts = collections.Counter(min(int((x - low) // step), bins - 1) for x in values)
    return [counts[b] for b in range(bins)]


def cli_hist(data: List[int], bins: int) -> str:
    bars = " ▁▂▃▄▅▆▇█"
    data = [math.log(x) for x in data if x > 0]
    if not data:
        return ""
    bins = max(1, min(bins, len(data)))
    counts = histogram(data, min(data), max(data), bins)
    top = max(counts) or 1
    return "".join(bars[int(c * (len(bars) - 1) / top)] for c in counts)


def capture_name(prefix: str, nodeid: str) -> str:
    """pytest-memray's file name for a test's capture, without its extension: the test id with
    '::' and path separators made '-', cut to fit 255 bytes with a digest of the whole name."""
    name = "%s-%s" % (prefix, nodeid.replace("::", "-").replace(os.sep, "-"))
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= _MAX_NAME:
        return name
    digest = hashlib.sha256((name + ".bin").encode("utf-8", "surrogateescape")).hexdigest()[:_DIGEST_CHARS]
    kept = encoded[: _MAX_NAME - _DIGEST_CHARS - 1].decode("utf-8", "ignore")
    return "%s-%s" % (kept, digest)


# --------------------------------------------------------------------------- options


def _bool(config, name):
    return bool(config.getoption(name) or config.getini(name))


def pytest_addoption(parser):
    # The help texts are pytest-memray's, where the option is one of its own.
    group = parser.getgroup("memray")
    group.addoption("--memray", action="store_true", default=False, help="Activate memray tracking")
    group.addoption("--memray-bin-path", metavar="MEMRAY_BIN_PATH", default=None,
                    help="Path where to write the memray binary dumps (by default a temporary folder)")
    group.addoption("--memray-bin-prefix", metavar="MEMRAY_BIN_PREFIX", default=None,
                    help="Prefix to use for the binary dump (by default a random UUID4 hex)")
    group.addoption("--hide-memray-summary", action="store_true", default=False,
                    help="Hide the memray summary at the end of the execution")
    group.addoption("--most-allocations", type=int, default=None, metavar="MOST_ALLOCATIONS",
                    help="Show the N tests that allocate most memory (N=0 for all)")
    group.addoption("--stacks", type=int, default=None, metavar="STACKS",
                    help="Show the N stack entries when showing tracebacks of memory allocations")
    group.addoption("--native", action="store_true", default=False,
                    help="Show native frames when showing tracebacks of memory allocations (will be slower)")
    group.addoption("--trace-python-allocators", action="store_true", default=False,
                    help="Record allocations made by the Pymalloc allocator (will be slower)")
    group.addoption("--fail-on-increase", action="store_true", default=False,
                    help="Fail a test with the limit_memory marker if it uses more memory than its last "
                         "successful run")
    group.addoption("--memray-default-limit", metavar="SIZE", default=None,
                    help="Apply limit_memory(SIZE) to every test that has no memray marker (this plugin's own)")

    parser.addini("memray", "Activate pytest.ini setting", type="bool")
    parser.addini("hide_memray_summary", "Hide the memray summary at the end of the execution", type="bool")
    parser.addini("stacks", "Show the N stack entries when showing tracebacks of memory allocations")
    parser.addini("native", "Show native frames when showing tracebacks of memory allocations (will be slower)",
                  type="bool")
    parser.addini("trace_python_allocators", "Record allocations made by the Pymalloc allocator (will be slower)",
                  type="bool")
    parser.addini("fail-on-increase", "Fail a test with the limit_memory marker if it uses more memory than its "
                  "last successful run", type="bool")
    parser.addini("verbosity_memray", "Verbosity level for limit_memory failure reports. At negative levels the "
                  "limit_memory marker only reports a summary, at level 0 or 1 it shows the top 10 allocations by "
                  "size, from level 2 up it shows all allocations. The default follows pytest's -v / -q flags "
                  "(with 0 as the default if neither are given).")
    parser.addini("most_allocations", "Show the N tests that allocate most memory (N=0 for all)")
    parser.addini("memray_default_limit", "limit_memory for tests without a memray marker (this plugin's own)")


def _int_setting(config, name, default: int) -> int:
    """An integer from the command line, else the ini file, else `default`."""
    value = config.getoption(name, None)
    if value is None:
        value = config.getini(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError("%s must be an integer, not %r" % (name, value))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "limit_memory(limit: str, *, current_thread_only: bool = False): fail the execution of the test "
        "if the test allocates more peak memory than allowed (e.g. '24 MB')",
    )
    config.addinivalue_line(
        "markers",
        "limit_leaks(location_limit: str, *, filter_fn: LeaksFilterFunction | None = None, "
        "current_thread_only: bool = False): fail the execution of the test if any call stack in the test "
        "leaks more memory than allowed",
    )
    config.addinivalue_line(
        "markers",
        "limit_leaked_objects(*, filter_fn: LeakedObjectsFilterFunction | None = None): fail the execution of "
        "the test if Python objects it created survive it (filter_fn(obj) False leaves one out; Python 3.13.3+)",
    )
    manager = Manager(config)
    config.pluginmanager.register(manager, "memray_manager")
    # optionalhook: harmless without pytest-xdist, whatever the order plugins load in.
    config.pluginmanager.register(_XdistHooks(manager), "memray_xdist")


def _usable_directory(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise pytest.UsageError("%s must be a directory" % path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise pytest.UsageError("cannot create the directory %s: %s" % (path, e.strerror or e))
    if not os.access(path, os.W_OK | os.X_OK):
        raise pytest.UsageError("%s is not writable" % path)
    return path


# --------------------------------------------------------------------------- the manager


class Manager:
    def __init__(self, config):
        self.config = config
        self.enabled = _bool(config, "memray")
        self.results: Dict[str, TrackedTest] = {}
        # limit_leaked_objects: the objects each test left alive, until its check.
        self._survivors: Dict[str, tuple] = {}
        self.native = _bool(config, "native")
        self.trace_python_allocators = _bool(config, "trace_python_allocators")
        self.fail_on_increase = config.getoption("fail_on_increase") or config.getini("fail-on-increase")
        self.cache = getattr(config, "cache", None)
        if self.fail_on_increase and self.cache is None:
            # pytest-memray ignores the option then; a suite that ran with it keeps running.
            config.issue_config_time_warning(pytest.PytestConfigWarning(
                "--fail-on-increase has no effect: it compares with the last run kept in pytest's cache, "
                "which is turned off (-p no:cacheprovider)"), stacklevel=2)
            self.fail_on_increase = False
        self.stacks = _int_setting(config, "stacks", 1)
        if self.stacks < 1:
            raise pytest.UsageError("--stacks must be at least 1")
        self.most_allocations = _int_setting(config, "most_allocations", 5)
        verbosity = config.getini("verbosity_memray")
        try:
            self.verbosity = int(verbosity) if verbosity not in (None, "") else config.getoption("verbose")
        except ValueError:
            raise pytest.UsageError("verbosity_memray must be an integer, not %r" % verbosity)
        default_limit = config.getoption("memray_default_limit") or config.getini("memray_default_limit") or None
        if default_limit is not None:
            try:
                parse_memory_string(default_limit)
            except ValueError as e:
                raise pytest.UsageError("--memray-default-limit: %s" % e)
        self.default_limit = default_limit

        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self._tmpdir = None
        self._bin_path = None
        self.keep_captures = False
        if self.is_worker and workerinput.get("memray_bin_path"):
            self._bin_path = workerinput["memray_bin_path"]
            self.prefix = workerinput["memray_bin_prefix"]
        else:
            path = config.getoption("memray_bin_path")
            if path:
                self._bin_path = _usable_directory(path)
                self.keep_captures = True
            self.prefix = config.getoption("memray_bin_prefix") or uuid.uuid4().hex

    @property
    def bin_path(self) -> str:
        """Created on first use: a session tracking nothing leaves nothing behind."""
        if self._bin_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="memray-pytest-")
            self._bin_path = self._tmpdir.name
        os.makedirs(os.path.join(self._bin_path, "metadata"), exist_ok=True)
        return self._bin_path

    # -- which tests, how

    def _limits(self, item) -> Dict[str, object]:
        """The memray markers applying to the test, by name (the closest of each name)."""
        markers = {}
        for marker in item.iter_markers():
            if marker.name in MARKERS and marker.name not in markers:
                markers[marker.name] = marker
        if not markers and self.default_limit is not None:
            markers["limit_memory"] = pytest.mark.limit_memory(self.default_limit).mark
        return markers

    def pytest_collection_modifyitems(self, items):
        # Object lifetime tracking needs CPython's reference tracer, complete from 3.13.3.
        if sys.version_info < (3, 13, 3) and any(item.get_closest_marker("limit_leaked_objects") for item in items):
            raise pytest.UsageError(
                "The limit_leaked_objects marker requires Python 3.13.3 or later. Current version: %s"
                % ".".join(map(str, sys.version_info[:3])))

    # -- hooks

    @pytest.hookimpl(hookwrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        limits = self._limits(pyfuncitem)
        if not limits and not self.enabled:
            yield
            return
        if len(limits) > 1:
            raise ValueError("Only one Memray marker can be applied to each test")
        from . import FileFormat, FileReader, Tracker

        testfunction = pyfuncitem.obj
        name = capture_name(self.prefix, pyfuncitem.nodeid)
        result_file = os.path.join(self.bin_path, name + ".bin")
        leaks = "limit_leaks" in limits
        for marker in limits.values():
            _marker_arguments(marker)
        options = dict(
            native_traces=self.native or leaks,
            trace_python_allocators=self.trace_python_allocators or leaks,
            track_object_lifetimes="limit_leaked_objects" in limits,
            file_format=FileFormat.AGGREGATED_ALLOCATIONS,
        )
        manager = self
        nodeid = pyfuncitem.nodeid

        def record(tracker):
            if tracker.track_object_lifetimes:
                try:
                    manager._survivors[nodeid] = tracker.get_surviving_objects()
                except RuntimeError:  # tracking never started
                    pass
            try:
                with FileReader(result_file) as reader:
                    metadata = reader.metadata
            except (OSError, ValueError) as e:
                manager.results[nodeid] = TrackedTest(nodeid, result_file, 0, 0, str(e))
                return
            manager.results[nodeid] = TrackedTest(nodeid, result_file, metadata.peak_memory,
                                                  metadata.total_allocations)

        # The Tracker is entered in a frame named `wrapper` (_pytest_limits.WRAPPER_NAME), as
        # pytest-memray's is: stacks end there.
        if inspect.iscoroutinefunction(testfunction):
            @functools.wraps(testfunction)
            async def wrapper(*args, **kwargs):
                tracker = Tracker(destination=_file_destination(result_file), **options)
                try:
                    with tracker:
                        return await testfunction(*args, **kwargs)
                finally:
                    record(tracker)
        else:
            @functools.wraps(testfunction)
            def wrapper(*args, **kwargs):
                tracker = Tracker(destination=_file_destination(result_file), **options)
                try:
                    with tracker:
                        return testfunction(*args, **kwargs)
                finally:
                    record(tracker)

        pyfuncitem.obj = wrapper
        try:
            yield
        finally:
            pyfuncitem.obj = testfunction

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        if call.when != "call":
            return
        report = outcome.get_result()
        survivors = self._survivors.pop(item.nodeid, ())
        result = self.results.get(item.nodeid)
        if result is None:
            return
        if report.outcome != "passed":
            result.raised = True
            return
        self._write_metadata(result)
        limits = self._limits(item)
        if result.error is not None:
            if limits:
                report.outcome = "failed"
                report.longrepr = "memray could not read this test's capture %s: %s" % (result.path, result.error)
            return
        failure, peak = self._check(item.nodeid, limits, result, survivors)
        if failure is not None:
            report.outcome = "failed"
            report.longrepr = failure.summary
            if failure.section is not None:
                report.sections.append(failure.section)
            report.memray_failure = True
        elif peak is not None and self.cache is not None:
            self.cache.set(_cache_key(item.nodeid), {"total_allocated_memory": peak})

    def _write_metadata(self, result):
        """pytest-memray's record of a test that ran to its end, beside its capture."""
        name = os.path.splitext(os.path.basename(result.path))[0]
        with open(os.path.join(os.path.dirname(result.path), "metadata", name + ".metadata"), "w") as f:
            json.dump({"test_id": result.nodeid, "peak_memory": result.peak_memory, "result_file": result.path}, f)

    def _check(self, nodeid, limits, result, survivors):
        """(the failure or None, the test's peak where it has a limit_memory marker)."""
        from . import FileReader

        marker = limits.get("limit_leaked_objects")
        if marker is not None:
            return check_leaked_objects(survivors, **_marker_arguments(marker)), None
        with FileReader(result.path) as reader:
            marker = limits.get("limit_memory")
            if marker is not None:
                arguments = _marker_arguments(marker)
                peak, records = peak_of(reader, current_thread_only=arguments["current_thread_only"])
                previous = self.cache.get(_cache_key(nodeid), None) if self.fail_on_increase else None
                if previous is not None:
                    failure = check_memory_increase(previous["total_allocated_memory"], peak)
                    if failure is not None:
                        return failure, peak
                return check_limit_memory(peak, records, arguments["limit"], native=self.native,
                                          verbosity=self.verbosity, n_frames=self.stacks), peak
            marker = limits.get("limit_leaks")
            if marker is not None:
                return check_limit_leaks(reader, **_marker_arguments(marker), n_frames=self.stacks), None
        return None, None

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_report_teststatus(self, report):
        outcome = yield
        if report.when == "call" and report.outcome == "failed" and getattr(report, "memray_failure", False):
            outcome.force_result(("failed", "M", "MEMORY PROBLEMS"))

    def pytest_sessionfinish(self, session):
        if self.is_worker:
            session.config.workeroutput["memray_results"] = json.dumps(
                [r.to_json() for r in self.results.values()]
            )

    def pytest_unconfigure(self, config):
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def pytest_terminal_summary(self, terminalreporter):
        if not self.enabled or self.is_worker:
            return
        if _bool(self.config, "hide_memray_summary"):
            return
        self.write_report(terminalreporter)

    # -- the report

    def write_report(self, tr):
        from . import FileReader

        tr.write_sep("=", "MEMRAY REPORT")
        unreadable = [r for r in self.results.values() if r.error is not None]
        results = [r for r in self.results.values()
                   if r.error is None and not r.raised and r.peak_memory > 0 and os.path.exists(r.path)]
        for r in unreadable[:3]:
            tr.write_line("could not read the capture of %s: %s" % (r.nodeid, r.error))
        if len(unreadable) > 3:
            tr.write_line("... and %d more unreadable captures" % (len(unreadable) - 3))
        results.sort(key=lambda r: r.peak_memory, reverse=True)
        shown = results if self.most_allocations <= 0 else results[: self.most_allocations]
        if shown:
            # Not in pytest-memray: the ranking at a glance.
            tr.write_line("Tests that allocated most (peak memory, allocations), %d of %d tracked:"
                          % (len(shown), len(self.results)))
            for r in shown:
                tr.write_line("    %10s  %9d  %s" % (sizeof_fmt(r.peak_memory), r.total_allocations, r.nodeid))
            tr.write_line("")
        for r in shown:
            try:
                with FileReader(r.path) as reader:
                    records = [rec for rec in reader.get_high_watermark_allocation_records()
                               if not is_plugin_overhead(rec)]
            except OSError as e:
                tr.write_line("Allocation results for %s: cannot read %s: %s" % (r.nodeid, r.path, e))
                continue
            records.sort(key=lambda rec: rec.size, reverse=True)
            tr.write_line("Allocation results for %s at the high watermark" % r.nodeid)
            tr.write_line("")
            tr.write_line("\t 📦 Total memory allocated: %s" % sizeof_fmt(r.peak_memory))
            tr.write_line("\t 📏 Total allocations: %d" % r.total_allocations)
            tr.write_line("\t 📊 Histogram of allocation sizes: |%s|"
                          % cli_hist([rec.size for rec in records], N_HISTOGRAM_BINS))
            tr.write_line("\t 🥇 Biggest allocating functions:")
            for rec in records[:N_TOP_SITES]:
                frames = rec.stack_trace()
                where = "%s:%s:%s" % frames[0] if frames else "(no Python frames)"
                tr.write_line("\t\t- %s -> %s" % (where, sizeof_fmt(rec.size)))
            tr.write_line("\n")
        if self.keep_captures:
            # Counted as pytest-memray counts them: the tests that ran to their end.
            tr.write_line("Created %d binary dumps at %s with prefix %s"
                          % (sum(not r.raised for r in self.results.values()), self.bin_path, self.prefix))


def _cache_key(nodeid: str) -> str:
    return "memray/" + nodeid


def _file_destination(path):
    from . import FileDestination

    return FileDestination(path, overwrite=True)


def _limit_memory(limit, *, current_thread_only=False):
    """The signature of the limit_memory marker."""


def _limit_leaks(location_limit, *, filter_fn=None, current_thread_only=False):
    """The signature of the limit_leaks marker."""


def _limit_leaked_objects(*, filter_fn=None):
    """The signature of the limit_leaked_objects marker."""


_SIGNATURES = {"limit_memory": inspect.signature(_limit_memory), "limit_leaks": inspect.signature(_limit_leaks),
               "limit_leaked_objects": inspect.signature(_limit_leaked_objects)}


def _marker_arguments(marker) -> dict:
    """A marker's arguments by name, checked: raised before the test runs, a bad size or
    argument fails the test with pytest-memray's message instead of after running it."""
    bound = _SIGNATURES[marker.name].bind(*marker.args, **marker.kwargs)
    bound.apply_defaults()
    if marker.name != "limit_leaked_objects":
        parse_memory_string(next(iter(bound.arguments.values())))
    return dict(bound.arguments)


class _XdistHooks:
    """Controller side of pytest-xdist: one capture directory for all workers, and the
    workers' results gathered for the report."""

    def __init__(self, manager: Manager):
        self.manager = manager

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node):
        node.workerinput["memray_bin_path"] = self.manager.bin_path
        node.workerinput["memray_bin_prefix"] = self.manager.prefix

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        data = getattr(node, "workeroutput", {}).get("memray_results")
        if data:
            for item in json.loads(data):
                result = TrackedTest.from_json(item)
                self.manager.results[result.nodeid] = result
