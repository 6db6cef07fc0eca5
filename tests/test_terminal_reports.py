"""`memray tree`, `memray summary` and `memray transform` against Memray 1.20.

On the same capture (this project's `memray run` on every interpreter, and captures
written by Memray 1.20 itself, aggregated ones included), with stdout not a terminal:
* `summary` prints exactly what Memray prints (its rich table; Memray's progress bars
  leave two blank lines first, which are ignored), for several sort columns, row
  limits, widths and temporary-allocation thresholds;
* `transform` writes the same CSV and gprof2dot files byte for byte, and the same
  speedscope JSON (but for the exporter's name and version);
* `tree` prints Memray's tree (its `TreeReporter` and the default view of its
  interactive tree: uninteresting frames hidden, children by size), fully expanded;
* the temporary-allocation threshold means what it means in Memray;
* bad input is a one-line error with a non-zero exit.
"""
import csv
import io
import json
import os
import re

import pytest

from support import SELF_CHECK, TESTS, Result, assert_clean_error, assert_ok, run

HELPERS = TESTS / "helpers"

WORKLOAD = """
import threading
import allochelper
H = allochelper.load()

def leaf(n):
    return [H.helper_malloc(30000 + i) for i in range(n)]  # @leaf

def middle(n):
    out = leaf(n)
    out.append(H.helper_calloc(100, 501))  # @calloc
    return out

def temp(n, gap):
    for _ in range(n):
        p = H.helper_malloc(70001)  # @temp
        others = [H.helper_malloc(64) for _ in range(gap)]
        H.helper_free(p)
        for q in others:
            H.helper_free(q)

def mapped():
    m = H.helper_mmap(4096 * 16)  # @mmap
    H.helper_munmap(m, 4096 * 4)
    return m

kept = middle(6)
temp(4, 0)
temp(2, 3)
grown = H.helper_realloc(H.helper_malloc(10), 120001)  # @grow
m = mapped()
t = threading.Thread(target=middle, args=(3,), name="worker")
t.start()
t.join()
data = [bytes(3000 + i % 40) for i in range(200)]
"""

# Memray 1.20's tree, printed fully expanded with the labels of its interactive view.
ORACLE_TREE = r'''
import json, sys
import memray
from memray._memray import size_fmt
from memray.reporters import tui
from memray.reporters.tree import TreeReporter

path, biggest, threshold, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
sys.path[:] = dirs  # where _filename_to_module_name looks
reader = memray.FileReader(path)
if threshold >= 0:
    snapshot = reader.get_temporary_allocation_records(threshold=threshold, merge_threads=False)
else:
    snapshot = reader.get_high_watermark_allocation_records(merge_threads=False)
rep = TreeReporter.from_snapshot(snapshot, biggest_allocs=biggest, native_traces=reader.metadata.has_native_traces)
root, elided = rep.data, rep.elided_locations

def label(node):
    if node.value == 0:
        return "<No allocations>"
    text = f" {size_fmt(node.value)} ({100 * node.value / root.value:.2f} %) "
    function, file, lineno = node.location
    position = f"{tui._filename_to_module_name(file)}:{lineno}" if lineno != 0 else file
    return text + function + (f"  {position}" if position else "")

lines = []
def add(children, depth):  # TreeScreen.add_children with "hide uninteresting" on
    for child in sorted(children, key=lambda c: c.value, reverse=True):
        if child.interesting:
            lines.append([depth, label(child), False])
            at, before = len(lines) - 1, len(lines)
            add(child.children.values(), depth + 1)
            lines[at][2] = len(lines) > before
        else:
            add(child.children.values(), depth)

out = ["<No allocations>" if root.value == 0 else "\N{open file folder}" + label(root)]
add(root.children.values(), 0)
if elided.n_locations:
    pct = 100 * elided.n_bytes / root.value
    lines.append([0, f"\N{black question mark ornament} {size_fmt(elided.n_bytes)} ({pct:.2f} %) "
                     f"{elided.n_allocations} allocations from {elided.n_locations} locations below "
                     "the configured threshold", False])
more = []
for i, (depth, text, has_children) in enumerate(lines):
    following = False
    for d, _, _ in lines[i + 1:]:
        if d < depth:
            break
        if d == depth:
            following = True
            break
    del more[depth:]
    icon = "" if text.startswith("\N{black question mark ornament}") or text == "<No allocations>" else (
        "\N{open file folder}" if has_children else "\N{page facing up}")
    out.append("".join("│   " if m else "    " for m in more) + ("├── " if following else "└── ") + icon + text)
    more.append(following)
print("\n".join(out))
'''


def _ours(build, interp, env, *args, cwd=None):
    cmd = [build.binary] if build is not None else [interp.executable, "-m", "memray"]
    return run([*cmd, *map(str, args)], cwd=cwd, env=env)


def _env(tracked_env, columns=None):
    env = dict(tracked_env)
    env.pop("COLUMNS", None)
    if columns:
        env["COLUMNS"] = str(columns)
    return env


def _strip_progress(text):
    """Memray's progress bars leave blank lines on a non-terminal stdout."""
    return text.lstrip("\n")


def _capture(script, memray_run, workdir, *flags, name="w.bin"):
    s = script("workload.py", WORKLOAD)
    out = workdir / name
    assert_ok(memray_run(*flags, "-q", "-o", out, s.path))
    return s, out


def _memray_capture(reader, script, workdir, helper_lib, *flags, name="m.bin"):
    s = script("workload.py", WORKLOAD)
    out = workdir / name
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MEMRAY_"))}
    env["PYTHONPATH"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
    env["ALLOC_HELPER_LIB"] = str(helper_lib)
    assert_ok(run([reader.python, "-m", "memray", "run", *flags, "-q", "-o", out, s.path], cwd=workdir, env=env))
    return s, out


def _module_dirs(build, interp, tracked_env, capture):
    """The capture's sys.path minus its first entry, existing directories only (what
    our tree resolves module names against)."""
    res = assert_ok(_ours(build, interp, tracked_env, "parse", capture))
    m = re.search(r"sys\.path=\[(.*?)\]", res.stdout.splitlines()[0])
    paths = m.group(1).split(", ") if m and m.group(1) else []
    return [p for p in paths[1:] if os.path.isdir(p)]


class _MemrayBatch:
    """Memray's side of the comparisons of one capture: commands are queued, then run
    in one process of the oracle venv (tests/helpers/oracle_cli.py), because starting
    Memray's CLI costs about half a second and a capture is compared on some thirty
    reports. Each check queues its commands and returns a function that compares once
    the batch has run."""

    def __init__(self, reader, workdir):
        self.reader, self.workdir, self.jobs = reader, workdir, []

    def cli(self, *args, columns=None):
        return self._add({"argv": [str(a) for a in args], "columns": columns, "script": None})

    def script(self, path, *args):
        return self._add({"argv": [str(a) for a in args], "columns": None, "script": str(path)})

    def _add(self, job):
        self.jobs.append({**job, "cwd": str(self.workdir)})
        return len(self.jobs) - 1

    def run(self):
        jobs, results = self.workdir / "oracle-jobs.json", self.workdir / "oracle-results.json"
        jobs.write_text(json.dumps(self.jobs))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MEMRAY_")) and k != "COLUMNS"}
        assert_ok(run([self.reader.python, HELPERS / "oracle_cli.py", jobs, results], cwd=self.workdir, env=env))
        return [Result(cmd=["memray", *job["argv"]] if job["script"] is None else [job["script"], *job["argv"]], **r)
                for job, r in zip(self.jobs, json.loads(results.read_text()))]


def _check_reports(build, interp, tracked_env, reader, capture, workdir, aggregated=False):
    """summary, transform and tree of `capture`, ours against Memray's."""
    memray = _MemrayBatch(reader, workdir)
    checks = [
        *_summary_checks(build, interp, tracked_env, memray, capture, workdir, aggregated),
        *_transform_checks(build, interp, tracked_env, memray, capture, workdir, aggregated),
        *_tree_checks(build, interp, tracked_env, memray, capture, workdir, aggregated),
    ]
    theirs = memray.run()
    for check in checks:
        check(theirs)


SUMMARY_ARGS = [(), ("-s", "3"), ("-s", "5", "-r", "4"), ("-s", "4", "-r", "40"), ("--temporary-allocations",),
                ("--temporary-allocation-threshold", "0", "-s", "2")]


def _summary_checks(build, interp, tracked_env, memray, capture, workdir, aggregated):
    for args in SUMMARY_ARGS:
        if aggregated and any(a.startswith("--temporary") for a in args):
            continue
        for columns in (None, 131):
            ours = _ours(build, interp, _env(tracked_env, columns), "summary", *args, capture, cwd=workdir)
            job = memray.cli("summary", *args, capture, columns=columns)

            def check(results, ours=ours, job=job, args=args, columns=columns):
                theirs = results[job]
                assert ours.returncode == 0, ours.describe()
                assert theirs.returncode == 0, theirs.describe()
                assert "\x1b" not in ours.stdout, "plain text when stdout is not a terminal"
                assert ours.stdout == _strip_progress(theirs.stdout), (
                    f"summary {' '.join(args)} (COLUMNS={columns}) differs\n--- ours\n{ours.stdout}\n--- Memray\n{theirs.stdout}"
                )

            yield check


TRANSFORM_ARGS = [(), ("--leaks",), ("--temporary-allocations",), ("--temporary-allocation-threshold", "3")]


# Up to 3.9, Memray 1.20 shows line 0 for a one-line code object (empty co_lnotab);
# this project shows the real line. The helpers below take Memray's 0 there.


def _csv_rows(text, theirs=None):
    rows = list(csv.reader(io.StringIO(text)))
    if theirs is not None:
        for row, other in zip(rows, theirs):
            if len(row) == len(other) == 6:
                frames = [f.split(";") for f in row[5].split("|")]
                others = [f.split(";") for f in other[5].split("|")]
                if len(frames) == len(others):
                    for f, g in zip(frames, others):
                        if len(f) == len(g) == 3 and g[2] == "0" and f[:2] == g[:2]:
                            f[2] = "0"
                    row[5] = "|".join(";".join(f) for f in frames)
    return rows


def _speedscope_without_lines(doc):
    """The profiles as {stack of (name, file): weight}: frames Memray gives line 0
    merge there, so stacks are compared without lines."""
    frames = [(f["name"], f.get("file")) for f in doc["shared"]["frames"]]
    out = []
    for profile in doc["profiles"]:
        weights = {}
        for sample, weight in zip(profile["samples"], profile["weights"]):
            key = tuple(frames[i] for i in sample)
            weights[key] = weights.get(key, 0) + weight
        out.append((profile["name"], profile["unit"], profile["endValue"], weights))
    return out, doc["name"]


def _tree_lines_match(ours, theirs):
    """A line of ours matches Memray's, or differs only where Memray, having line 0,
    shows the bare file name instead of `module:line`."""
    if ours == theirs:
        return True
    head, _, pos = ours.rpartition("  ")
    their_head, _, their_pos = theirs.rpartition("  ")
    return head == their_head and re.search(r":\d+$", pos) is not None and re.search(r":\d+$", their_pos) is None


def _transform_checks(build, interp, tracked_env, memray, capture, workdir, aggregated):
    for fmt in ("csv", "gprof2dot", "speedscope"):
        for i, args in enumerate(TRANSFORM_ARGS):
            if aggregated and any(a.startswith("--temporary") for a in args):
                continue
            a, b = workdir / f"ours-{i}.{fmt}", workdir / f"theirs-{i}.{fmt}"
            assert_ok(_ours(build, interp, tracked_env, "transform", fmt, "-f", "-o", a, *args, capture, cwd=workdir))
            job = memray.cli("transform", fmt, "-f", "-o", b, *args, capture)

            def check(results, fmt=fmt, args=args, a=a, b=b, job=job):
                assert_ok(results[job])
                what = f"transform {fmt} {' '.join(args)}"
                if fmt == "speedscope":
                    ours, theirs = json.loads(a.read_text()), json.loads(b.read_text())
                    assert ours.pop("exporter").startswith("memray@") and theirs.pop("exporter") == "memray@1.20.0"
                    if interp.minor <= 9:
                        assert _speedscope_without_lines(ours) == _speedscope_without_lines(theirs), what
                    else:
                        assert ours == theirs, what
                elif fmt == "csv" and interp.minor <= 9:
                    theirs = _csv_rows(b.read_text())
                    assert _csv_rows(a.read_text(), theirs) == theirs, what
                    assert a.read_bytes().count(b"\r\n") == b.read_bytes().count(b"\r\n")
                else:
                    assert a.read_bytes() == b.read_bytes(), f"{what}:\n--- ours\n{a.read_text()[:3000]}\n--- Memray\n{b.read_text()[:3000]}"

            yield check


def _tree_checks(build, interp, tracked_env, memray, capture, workdir, aggregated):
    dirs = json.dumps(_module_dirs(build, interp, tracked_env, capture))
    script = workdir / "oracle_tree.py"
    script.write_text(ORACLE_TREE)
    for biggest in (200, 3):
        for threshold in ((-1,) if aggregated else (-1, 1)):
            extra = ("--temporary-allocation-threshold", threshold) if threshold >= 0 else ()
            ours = _ours(build, interp, tracked_env, "tree", "-b", biggest, *extra, capture, cwd=workdir)
            job = memray.script(script, capture, biggest, threshold, dirs)

            def check(results, ours=ours, job=job, biggest=biggest, extra=extra):
                assert ours.returncode == 0, ours.describe()
                assert "\x1b" not in ours.stdout
                expected = assert_ok(results[job])
                message = f"tree -b {biggest} {extra}\n--- ours\n{ours.stdout}\n--- Memray\n{expected.stdout}"
                if interp.minor <= 9:
                    a, b = ours.stdout.splitlines(), expected.stdout.splitlines()
                    assert len(a) == len(b) and all(map(_tree_lines_match, a, b)), message
                else:
                    assert ours.stdout == expected.stdout, message

            yield check


@pytest.mark.ours_only
def test_reports_of_our_captures_match_memray(interp, script, memray_run, build, tracked_env, reader, workdir):
    s, out = _capture(script, memray_run, workdir)
    _check_reports(build, interp, tracked_env, reader, out, workdir)
    tree = _ours(build, interp, tracked_env, "tree", out).stdout
    assert f"leaf  workload:{s.line('leaf')}" in tree or f"leaf  {s.path}:{s.line('leaf')}" in tree, tree


@pytest.mark.ours_only
def test_reports_of_our_aggregated_captures_match_memray(interp, script, memray_run, build, tracked_env, reader, workdir):
    s, out = _capture(script, memray_run, workdir, "--aggregate", name="agg.bin")
    _check_reports(build, interp, tracked_env, reader, out, workdir, aggregated=True)


@pytest.mark.ours_only
@pytest.mark.parametrize("flags", [(), ("--aggregate",), ("--trace-python-allocators",)],
                         ids=["default", "aggregate", "pymalloc"])
def test_reports_of_memray_captures_match_memray(interp, script, build, tracked_env, oracle, helper_lib, workdir, flags):
    s, out = _memray_capture(oracle, script, workdir, helper_lib, *flags)
    _check_reports(build, interp, tracked_env, oracle, out, workdir, aggregated="--aggregate" in flags)


THRESHOLD = """
# One call site per gap, so that each gets its own record.
import allochelper
H = allochelper.load()

def gap(k):
    p = H.helper_malloc(50000 + k)  # @alloc
    others = [H.helper_malloc(64) for _ in range(k)]
    H.helper_free(p)
    for q in others:
        H.helper_free(q)

gap(0)
gap(1)
gap(2)
gap(3)
"""


def _temporary_sizes(csv_text, script):
    sizes = set()
    for row in csv.DictReader(io.StringIO(csv_text)):
        top = row["stack_trace"].split("|")[0].split(";")
        if top[0] == "gap" and top[2] == str(script.line("alloc")):
            sizes.add(int(row["size"]))
    return sizes


def test_temporary_threshold_like_memray(interp, script, memray_run, memray_cli, reader, workdir):
    """An allocation followed by k other allocations before its free is temporary for
    thresholds N >= k only."""
    s = script("gaps.py", THRESHOLD)
    out = workdir / "gaps.bin"
    assert_ok(memray_run("-q", "-o", out, s.path))
    for n in range(4):
        a, b = workdir / f"ours{n}.csv", workdir / f"theirs{n}.csv"
        assert_ok(memray_cli("transform", "csv", "-f", "-o", a, "--temporary-allocation-threshold", n, out))
        assert_ok(reader.cli("transform", "csv", "-f", "-o", b, "--temporary-allocation-threshold", n, out))
        expected = {50000 + k for k in range(n + 1)}
        assert _temporary_sizes(a.read_text(), s) == expected, f"threshold {n}"
        assert _temporary_sizes(b.read_text(), s) == expected, f"threshold {n} (Memray)"
    # --temporary-allocations is --temporary-allocation-threshold=1.
    a = workdir / "default.csv"
    assert_ok(memray_cli("transform", "csv", "-f", "-o", a, "--temporary-allocations", out))
    assert _temporary_sizes(a.read_text(), s) == {50000, 50001}


def test_transform_default_output_and_messages(interp, script, memray_run, memray_cli, workdir):
    s, out = _capture(script, memray_run, workdir, name="memray-work.bin")
    res = assert_ok(memray_cli("transform", "csv", out, cwd=workdir))
    expected = workdir / "memray-csv-work.csv"
    assert expected.exists() and f"Wrote {expected}" in res.stdout
    head = expected.read_bytes().split(b"\r\n")[0]
    assert head == b"allocator,num_allocations,size,tid,thread_name,stack_trace"
    again = memray_cli("transform", "csv", out, cwd=workdir)
    assert again.returncode != 0 and "--force" in again.output
    res = assert_ok(memray_cli("transform", "gprof2dot", out, cwd=workdir))
    assert (workdir / "memray-gprof2dot-work.json").exists()
    assert "-f json" in res.stdout and "dot -Tpng -o output.png" in res.stdout
    assert_ok(memray_cli("transform", "speedscope", out, cwd=workdir))
    doc = json.loads((workdir / "memray-speedscope-work.speedscope.json").read_text())
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert [p["name"] for p in doc["profiles"]] == ["Memory", "Allocations"]


@pytest.mark.ours_only
@pytest.mark.parametrize("report", [("tree",), ("summary",), ("transform", "csv", "-f")])
def test_bad_input_is_a_one_line_error(interp, script, memray_run, memray_cli, workdir, report):
    missing = memray_cli(*report, workdir / "missing.bin")
    assert_clean_error(missing, "missing.bin")
    junk = workdir / "junk.bin"
    junk.write_bytes(b"this is not a capture\n" * 10)
    assert_clean_error(memray_cli(*report, junk), "junk.bin")
    s, out = _capture(script, memray_run, workdir, "--no-compress")
    cut = workdir / "cut.bin"
    data = out.read_bytes()
    cut.write_bytes(data[: len(data) // 2 + 1])
    res = memray_cli(*report, cut)
    assert "panicked" not in res.output and res.returncode < 128, res.describe()
    if res.returncode != 0:
        assert_clean_error(res, "cut.bin")
    s, agg = _capture(script, memray_run, workdir, "--aggregate", name="agg.bin")
    assert_clean_error(memray_cli(*report, "--temporary-allocations", agg), "aggregate")


@pytest.mark.ours_only
def test_option_errors(interp, script, memray_run, memray_cli, workdir):
    s, out = _capture(script, memray_run, workdir)
    assert_clean_error(memray_cli("summary", "-s", "6", out), "sort-column")
    assert_clean_error(memray_cli("transform", "dot", out), "dot")
    res = memray_cli("tree", "--temporary-allocations", "--temporary-allocation-threshold", "2", out)
    assert res.returncode != 0 and "cannot be used with" in res.output
    res = memray_cli("transform", "csv", "--leaks", "--temporary-allocations", out)
    assert res.returncode != 0 and "cannot be used with" in res.output


CUT_REPORTS = [("stats",), ("parse",), ("tree",), ("summary",), ("transform", "csv", "-f", "-o", "cut.csv"),
               ("flamegraph", "-f", "-o", "cut.html"), ("table", "-f", "-o", "cut-table.html")]


@pytest.mark.ours_only
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "lz4"])
def test_a_cut_capture_reads_to_the_cut_in_every_reporter(interp, script, memray_run, memray_cli, workdir, compressed):
    """A capture cut anywhere past its header (the process died mid-record, or the file
    was copied mid-write) reads up to its last complete record in every reporter, each
    saying once, in one line, where it was cut."""
    import random
    # Large enough that an LZ4 file has many blocks: a cut in the first one is a cut
    # header, which stays an error.
    s = script("many.py", "import os\ndef f(i):\n    return os.urandom(600 + i % 5000)\n\nkeep = [f(i) for i in range(60000)]\n")
    out = workdir / "many.bin"
    assert_ok(memray_run(*([] if compressed else ["--no-compress"]), "-q", "-o", out, s.path))
    data = out.read_bytes()
    cut = workdir / "cut.bin"
    rng = random.Random(len(data))
    cuts_inside = 0
    for n in sorted(rng.sample(range(len(data) // 4, len(data) - 1), 6)):
        cut.write_bytes(data[:n])
        for report in CUT_REPORTS:
            res = memray_cli(*report, cut)
            assert res.returncode == 0, res.describe()
            assert "panicked" not in res.output
            warnings = [l for l in res.stderr.splitlines() if "warning" in l]
            assert len(warnings) <= 1, res.describe()
            said_cut = [l for l in warnings if "cut inside" in l and "cut.bin" in l]
            cuts_inside += bool(said_cut)
            # Every reporter saw the same cut (or the same clean end).
            if report[0] == "stats":
                first = bool(said_cut)
            assert bool(said_cut) == first, (n, report, res.stderr)
    assert cuts_inside > 0, "no cut landed inside a record: the test checked nothing about cuts"


@pytest.mark.ours_only
@pytest.mark.parametrize("tz", ["EST5EDT,M3.2.0,M11.1.0", "Europe/Paris", "Asia/Kolkata", "UTC"])
def test_stats_times_in_the_local_zone_match_memray(tz, build, tmp_path):
    """`stats --json` writes local times as Python's datetime does (the C library's
    localtime): with TZ a zone name or a POSIX rule string."""
    import support
    oracle = support.nearest_oracle(12)
    if oracle is None:
        pytest.skip("no Memray 1.20 oracle venv")
    capture = support.REPO / "reporter" / "tests" / "fixtures" / "memray-py310.bin"
    env = dict(os.environ, TZ=tz)
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    assert_ok(run([build.binary, "stats", "--json", "-f", "-o", ours, capture], env=env))
    assert_ok(run([oracle, "-m", "memray", "stats", "--json", "-f", "-o", theirs, capture], env=env))
    a, b = json.loads(ours.read_text())["metadata"], json.loads(theirs.read_text())["metadata"]
    assert (a["start_time"], a["end_time"]) == (b["start_time"], b["end_time"])
