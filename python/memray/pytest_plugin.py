"""pytest plugin: memory limits for tests and a report of the tests that allocate most.

Registered through the `pytest11` entry point of this package, so it is active in any
environment where memray is installed (`-p no:memray` turns it off).

    pytest --memray                         track every test; end with a MEMRAY REPORT
    @pytest.mark.limit_memory("24 MB")      fail a test whose peak memory exceeds 24 MiB
    @pytest.mark.limit_leaks("1 MB", filter_fn=None)
                                            fail a test leaving more than 1 MiB allocated
                                            from one call stack when it ends
    --memray-default-limit SIZE             limit_memory(SIZE) for tests without one

Markers work without `--memray` (only the marked tests are tracked then). Sizes are
binary, as in pytest-memray: "1 KB" is 1024 bytes, "24 MB" 24 MiB (KiB/MiB/GiB too).

Each test's call (not its fixtures) runs under a `memray.Tracker` writing
`<bin path>/<prefix>-<test id>.bin` (a temporary directory unless --memray-bin-path).
With pytest-xdist, the controller hands its directory to the workers and collects their
results, so the report covers every worker.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import json
import math
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import pytest

N_TOP_SITES = 5
N_HISTOGRAM_BINS = 5
DEFAULT_FAILURE_STACKS = 5
_WRAPPER_NAME = "_memray_tracked_call"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_THIS_FILE = os.path.abspath(__file__)

# --------------------------------------------------------------------------- sizes

_UNIT_RE = re.compile(r"^\s*(?P<quantity>\+?\d*\.\d+|\+?\d+)\s*(?P<unit>[KMGTP]i?B|[KMGTP]|B)?\s*$", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_memory_string(text) -> float:
    """'24 MB' -> 25165824.0 (binary units, as pytest-memray reads them)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = _UNIT_RE.match(str(text))
    if not match:
        raise ValueError("Invalid memory size format: %r (expected e.g. '24 MB', '512 KB', '1.5 GiB')" % (text,))
    unit = (match.group("unit") or "").upper()
    return float(match.group("quantity")) * _MULTIPLIERS[unit[:1] if unit not in ("", "B") else unit]


def sizeof_fmt(num, suffix="B") -> str:
    for unit in ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi"]:
        if abs(num) < 1024.0:
            return "%3.1f%s%s" % (num, unit, suffix)
        num /= 1024.0
    return "%.1fYi%s" % (num, suffix)


# --------------------------------------------------------------------------- stacks for filter_fn


@dataclass
class StackFrame:
    """One frame of a call stack."""

    function: str
    filename: str
    lineno: int


@dataclass
class Stack:
    """The call stack of an allocation; `frames` are innermost first."""

    frames: Tuple[StackFrame, ...]


LeaksFilterFunction = Callable[[Stack], bool]


def _is_wrapper(frame) -> bool:
    function, filename, _ = frame
    return function == _WRAPPER_NAME and os.path.abspath(filename) == _THIS_FILE


def _test_frames(frames) -> Tuple[List[tuple], bool]:
    """The frames below this plugin's wrapper (the test's own), and whether the wrapper
    was found at all (it is not for allocations made on other threads)."""
    for i, frame in enumerate(frames):
        if _is_wrapper(frame):
            return list(frames[:i]), True
    return list(frames), False


def _is_memray_overhead(frames) -> bool:
    """An allocation made by the tracking itself: under the wrapper, but in a call into the
    memray package (Tracker.__enter__/__exit__) rather than into the test."""
    own, found = _test_frames(frames)
    if not found:
        return False
    return not own or os.path.abspath(own[-1][1]).startswith(_PACKAGE_DIR + os.sep)


# --------------------------------------------------------------------------- results


@dataclass
class TrackedTest:
    nodeid: str
    path: str
    peak_memory: int
    total_allocations: int
    error: Optional[str] = None

    def to_json(self):
        return [self.nodeid, self.path, self.peak_memory, self.total_allocations, self.error]

    @classmethod
    def from_json(cls, data):
        return cls(*data)


@dataclass
class Site:
    size: int
    n_allocations: int
    frames: List[tuple]


def _sites(records, stacks: Optional[int]) -> List[Site]:
    """Records (already merged per stack by the reader) without memray's own, grouped by
    their innermost `stacks` frames of test code (all of them when None)."""
    grouped: Dict[tuple, Site] = {}
    for record in records:
        try:
            frames = record.stack_trace()
        except NotImplementedError:
            continue
        if _is_memray_overhead(frames):
            continue
        own, _ = _test_frames(frames)
        key = tuple(own[:stacks] if stacks else own)
        site = grouped.get(key)
        if site is None:
            grouped[key] = Site(record.size, record.n_allocations, list(key))
        else:
            site.size += record.size
            site.n_allocations += record.n_allocations
    return sorted(grouped.values(), key=lambda s: s.size, reverse=True)


def _format_sites(sites: List[Site], n_frames: int, verb: str) -> List[str]:
    lines = []
    for site in sites[:N_TOP_SITES]:
        lines.append("    - %s %s here:" % (sizeof_fmt(site.size), verb))
        if not site.frames:
            lines.append("        (no Python frames: a thread without Python code, or the interpreter itself)")
        for function, filename, lineno in site.frames[:n_frames]:
            lines.append("        %s:%s:%s" % (function, filename, lineno))
        if len(site.frames) > n_frames:
            lines.append("        ...")
    if len(sites) > N_TOP_SITES:
        rest = sites[N_TOP_SITES:]
        lines.append("    ... and %d more site%s (%s)" % (len(rest), "" if len(rest) == 1 else "s",
                                                          sizeof_fmt(sum(s.size for s in rest))))
    return lines


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
    return " ".join(bars[int(c * (len(bars) - 1) / top)] for c in counts)


# --------------------------------------------------------------------------- markers


class _Failure:
    def __init__(self, text: str):
        self.text = text


def _check_limit_memory(reader, limit_text, *, n_frames, current_thread_only=False):
    limit = parse_memory_string(limit_text)
    if not current_thread_only and reader.metadata.peak_memory <= limit:
        return None
    records = [
        r for r in reader.get_high_watermark_allocation_records(merge_threads=not current_thread_only)
        if not current_thread_only or r.tid == reader.metadata.main_thread_id
    ]
    sites = _sites(records, None)
    peak = sum(s.size for s in sites)
    if peak <= limit:
        return None
    lines = ["Test was limited to %s but allocated %s at its peak" % (sizeof_fmt(limit), sizeof_fmt(peak)),
             "Biggest allocation sites at the peak:"]
    lines += _format_sites(sites, n_frames, "allocated")
    return _Failure("\n".join(lines))


def _check_limit_leaks(reader, location_limit, *, n_frames, filter_fn=None, current_thread_only=False):
    limit = parse_memory_string(location_limit)
    records = [
        r for r in reader.get_leaked_allocation_records(merge_threads=not current_thread_only)
        if not current_thread_only or r.tid == reader.metadata.main_thread_id
    ]
    if filter_fn is not None:
        # filter_fn sees each leaking stack whole, as in pytest-memray; False suppresses it.
        records = [r for r in records
                   if filter_fn(Stack(tuple(StackFrame(*f) for f in r.hybrid_stack_trace())))]
    leaks = [site for site in _sites(records, None) if site.size > limit]
    if not leaks:
        return None
    lines = ["Test was allowed to leak %s per location but %d location%s leaked more"
             % (sizeof_fmt(limit), len(leaks), "" if len(leaks) == 1 else "s"),
             "Leaking allocation sites:"]
    lines += _format_sites(leaks, n_frames, "leaked")
    return _Failure("\n".join(lines))


# --------------------------------------------------------------------------- options


def pytest_addoption(parser):
    group = parser.getgroup("memray")
    group.addoption("--memray", action="store_true", default=False,
                    help="Track the memory of every test and report the tests that allocate most")
    group.addoption("--memray-bin-path", metavar="DIR", default=None,
                    help="Keep the capture of each test in DIR (default: a temporary directory, removed)")
    group.addoption("--memray-bin-prefix", metavar="PREFIX", default=None,
                    help="Prefix of the capture files' names (default: a random hex string)")
    group.addoption("--hide-memray-summary", action="store_true", default=None,
                    help="Do not print the MEMRAY REPORT at the end of the session")
    group.addoption("--most-allocations", type=int, default=None, metavar="N",
                    help="Report on the N tests with the highest peak memory (0 for all; default 5)")
    group.addoption("--stacks", type=int, default=None, metavar="N",
                    help="Frames shown per allocation site (default: 1 in the report, 5 in failures)")
    group.addoption("--native", action="store_true", default=None,
                    help="Record native (C/C++) stacks too")
    group.addoption("--trace-python-allocators", action="store_true", default=None,
                    help="Record pymalloc's allocations individually (slower, more precise)")
    group.addoption("--memray-default-limit", metavar="SIZE", default=None,
                    help="Apply limit_memory(SIZE) to every test that has no limit_memory marker")

    parser.addini("memray", "Activate memray tracking (as --memray)", type="bool", default=False)
    parser.addini("hide_memray_summary", "Hide the memray summary", type="bool", default=False)
    parser.addini("most_allocations", "Report on the N tests that allocate most (0 for all)", default="5")
    parser.addini("stacks", "Frames shown per allocation site", default="")
    parser.addini("native", "Record native stacks", type="bool", default=False)
    parser.addini("trace_python_allocators", "Record pymalloc's allocations", type="bool", default=False)
    parser.addini("memray_default_limit", "limit_memory for tests without the marker", default="")


_INI_NAMES = {"memray", "hide_memray_summary", "most_allocations", "stacks", "native", "trace_python_allocators",
              "memray_default_limit"}


def _option(config, name):
    """The command line's value, else the ini file's."""
    value = config.getoption(name)
    if (value is None or value is False) and name in _INI_NAMES:
        ini = config.getini(name)
        if ini not in (None, "", False):
            return ini
    return value


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "limit_memory(limit, *, current_thread_only=False): fail the test if its peak memory exceeds limit "
        "(e.g. '24 MB')",
    )
    config.addinivalue_line(
        "markers",
        "limit_leaks(location_limit, *, filter_fn=None, current_thread_only=False): fail the test if memory "
        "allocated from one call stack is still alive at its end beyond location_limit",
    )
    manager = Manager(config)
    config.pluginmanager.register(manager, "memray_manager")
    # optionalhook: harmless without pytest-xdist, whatever the order plugins load in.
    config.pluginmanager.register(_XdistHooks(manager), "memray_xdist")


# --------------------------------------------------------------------------- the manager


class Manager:
    def __init__(self, config):
        self.config = config
        self.enabled = bool(_option(config, "memray"))
        self.results: Dict[str, TrackedTest] = {}
        self._bin_path = None
        self.native = bool(_option(config, "native"))
        self.trace_python_allocators = bool(_option(config, "trace_python_allocators"))
        stacks = _option(config, "stacks")
        self.stacks = int(stacks) if stacks not in (None, "") else None
        if self.stacks is not None and self.stacks < 1:
            raise pytest.UsageError("--stacks must be at least 1")
        most = _option(config, "most_allocations")
        self.most_allocations = int(most) if most not in (None, "") else 5
        default_limit = _option(config, "memray_default_limit") or None
        if default_limit is not None:
            try:
                parse_memory_string(default_limit)
            except ValueError as e:
                raise pytest.UsageError("--memray-default-limit: %s" % e)
        self.default_limit = default_limit

        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self._tmpdir = None
        if self.is_worker and workerinput.get("memray_bin_path"):
            self._bin_path = workerinput["memray_bin_path"]
            self.prefix = workerinput["memray_bin_prefix"]
        else:
            path = _option(config, "memray_bin_path")
            if path:
                self._bin_path = os.path.abspath(path)
            self.prefix = _option(config, "memray_bin_prefix") or uuid.uuid4().hex

    @property
    def bin_path(self) -> str:
        """Created on first use: a session tracking nothing leaves nothing behind."""
        if self._bin_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="memray-pytest-")
            self._bin_path = self._tmpdir.name
        os.makedirs(self._bin_path, exist_ok=True)
        return self._bin_path

    # -- which tests, how

    def _limit_memory_marker(self, item):
        marker = item.get_closest_marker("limit_memory")
        if marker is not None:
            return marker.args, marker.kwargs
        if self.default_limit is not None:
            return (self.default_limit,), {}
        return None

    def _wants_tracking(self, item) -> bool:
        return (self.enabled or self._limit_memory_marker(item) is not None
                or item.get_closest_marker("limit_leaks") is not None)

    def _result_file(self, nodeid: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid).strip("-")
        if len(name) > 150:
            name = name[:130] + "-" + hashlib.sha1(nodeid.encode()).hexdigest()[:16]
        return os.path.join(self.bin_path, "%s-%s.bin" % (self.prefix, name))

    # -- hooks

    @pytest.hookimpl(hookwrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        if not self._wants_tracking(pyfuncitem):
            yield
            return
        from . import FileReader, Tracker

        testfunction = pyfuncitem.obj
        result_file = self._result_file(pyfuncitem.nodeid)
        leaks = pyfuncitem.get_closest_marker("limit_leaks") is not None
        options = dict(
            native_traces=self.native,
            trace_python_allocators=self.trace_python_allocators or leaks,
        )
        manager = self

        def record():
            try:
                with FileReader(result_file) as reader:
                    metadata = reader.metadata
            except (OSError, ValueError) as e:
                manager.results[pyfuncitem.nodeid] = TrackedTest(pyfuncitem.nodeid, result_file, 0, 0, str(e))
                return
            manager.results[pyfuncitem.nodeid] = TrackedTest(
                pyfuncitem.nodeid, result_file, metadata.peak_memory, metadata.total_allocations
            )

        if inspect.iscoroutinefunction(testfunction):
            @functools.wraps(testfunction)
            async def _memray_tracked_call(*args, **kwargs):
                try:
                    with Tracker(destination=_file_destination(result_file), **options):
                        return await testfunction(*args, **kwargs)
                finally:
                    record()
        else:
            @functools.wraps(testfunction)
            def _memray_tracked_call(*args, **kwargs):
                try:
                    with Tracker(destination=_file_destination(result_file), **options):
                        return testfunction(*args, **kwargs)
                finally:
                    record()

        pyfuncitem.obj = _memray_tracked_call
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
        if report.outcome != "passed":
            return
        result = self.results.get(item.nodeid)
        if result is None:
            return
        if result.error is not None:
            if self._limit_memory_marker(item) is None and item.get_closest_marker("limit_leaks") is None:
                return
            failures = [_Failure("memray could not read this test's capture %s: %s" % (result.path, result.error))]
        else:
            failures = self._check_markers(item, result)
        if failures:
            report.outcome = "failed"
            report.longrepr = "\n\n".join(f.text for f in failures)
            report.sections.append(("memray", "Memray detected problems with test %s" % item.nodeid))
            outcome.force_result(report)

    def _check_markers(self, item, result) -> List[_Failure]:
        from . import FileReader

        failures = []
        n_frames = self.stacks or DEFAULT_FAILURE_STACKS
        with FileReader(result.path) as reader:
            limit = self._limit_memory_marker(item)
            if limit is not None:
                args, kwargs = limit
                failure = _call_marker(_check_limit_memory, "limit_memory", reader, n_frames, args, kwargs)
                if failure:
                    failures.append(failure)
            for marker in item.iter_markers("limit_leaks"):
                failure = _call_marker(_check_limit_leaks, "limit_leaks", reader, n_frames, marker.args, marker.kwargs)
                if failure:
                    failures.append(failure)
                break  # the closest one
        return failures

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_report_teststatus(self, report):
        outcome = yield
        if report.when == "call" and report.outcome == "failed" and any(
            name == "memray" for name, _ in getattr(report, "sections", [])
        ):
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
        if _option(self.config, "hide_memray_summary"):
            return
        self.write_report(terminalreporter)

    # -- the report

    def write_report(self, tr):
        from . import FileReader

        tr.write_line("")
        tr.write_sep("=", "MEMRAY REPORT")
        unreadable = [r for r in self.results.values() if r.error is not None]
        results = [r for r in self.results.values() if r.error is None and os.path.exists(r.path)]
        for r in unreadable[:3]:
            tr.write_line("could not read the capture of %s: %s" % (r.nodeid, r.error))
        if len(unreadable) > 3:
            tr.write_line("... and %d more unreadable captures" % (len(unreadable) - 3))
        if not results:
            tr.write_line("No test was tracked.")
            return
        results.sort(key=lambda r: r.peak_memory, reverse=True)
        shown = results if self.most_allocations <= 0 else results[: self.most_allocations]
        tr.write_line("Tests that allocated most (peak memory, allocations), %d of %d tracked:"
                      % (len(shown), len(results)))
        for r in shown:
            tr.write_line("    %10s  %9d  %s" % (sizeof_fmt(r.peak_memory), r.total_allocations, r.nodeid))
        tr.write_line("")
        n_frames = self.stacks or 1
        for r in shown:
            try:
                with FileReader(r.path) as reader:
                    records = list(reader.get_high_watermark_allocation_records())
            except OSError as e:
                tr.write_line("Allocation results for %s: cannot read %s: %s" % (r.nodeid, r.path, e))
                continue
            sites = _sites(records, n_frames)
            tr.write_line("Allocation results for %s at the high watermark" % r.nodeid)
            tr.write_line("")
            tr.write_line("\t 📦 Total memory allocated: %s" % sizeof_fmt(r.peak_memory))
            tr.write_line("\t 📏 Total allocations: %d" % r.total_allocations)
            sizes = [rec.size for rec in records]
            if sizes:
                tr.write_line("\t 📊 Histogram of allocation sizes: |%s|" % cli_hist(sizes, N_HISTOGRAM_BINS))
            tr.write_line("\t 🥇 Biggest allocating functions:")
            for site in sites[:N_TOP_SITES]:
                if not site.frames:
                    tr.write_line("\t\t- (no Python frames) -> %s" % sizeof_fmt(site.size))
                    continue
                function, filename, lineno = site.frames[0]
                tr.write_line("\t\t- %s:%s:%s -> %s" % (function, filename, lineno, sizeof_fmt(site.size)))
                for function, filename, lineno in site.frames[1:]:
                    tr.write_line("\t\t    %s:%s:%s" % (function, filename, lineno))
            tr.write_line("")
        if self._tmpdir is None and not self.is_worker:
            tr.write_line("Captures kept in %s (open them with `memray stats FILE`, `memray flamegraph FILE`...)"
                          % self.bin_path)


def _file_destination(path):
    from . import FileDestination

    return FileDestination(path, overwrite=True)


def _call_marker(check, name, reader, n_frames, args, kwargs):
    kwargs = dict(kwargs)
    try:
        return check(reader, *args, n_frames=n_frames, **kwargs)
    except TypeError as e:
        return _Failure("Invalid %s marker: %s" % (name, e))
    except ValueError as e:
        return _Failure("Invalid %s marker: %s" % (name, e))


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
