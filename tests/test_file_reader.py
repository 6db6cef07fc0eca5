"""`memray.FileReader` and the records it yields, against Memray 1.20's.

The same dump script runs with this project's package (the interpreter under test,
PYTHONPATH=python) and with Memray 1.20 (an oracle venv) over the same capture;
everything it prints must be equal: metadata, memory snapshots, every record,
high-water-mark, leaked and temporary records (threads merged and split, several
thresholds), in Memray's order, with their stacks, thread names and the records'
addresses and allocators. Captures come from this project (`memray run`,
`memray.Tracker`, `--aggregate`) on every interpreter, and from Memray 1.20.
"""
import json
import os
import pytest

import support  # noqa: E402
from support import VENVS, assert_ok, run

WORKLOAD = """
import mmap, threading
import allochelper
H = allochelper.load()

def keep(n):
    return [H.helper_malloc(40000 + i) for i in range(n)]  # @keep

def temp(n, gap):
    for _ in range(n):
        p = H.helper_malloc(70001)  # @temp
        others = [H.helper_malloc(64) for _ in range(gap)]  # @gap
        H.helper_free(p)
        for q in others:
            H.helper_free(q)

def grow():
    p = H.helper_malloc(1000)
    return H.helper_realloc(p, 90001)  # @grow

def mapped():
    m = H.helper_mmap(4096 * 16)  # @mmap
    H.helper_munmap(m + 4096 * 4, 4096 * 4)
    return m

kept = keep(5)
temp(3, 0)
temp(3, 2)
grown = grow()
m = mapped()
t = threading.Thread(target=keep, args=(3,), name="keeper")
t.start()
t.join()
H.helper_free(kept.pop())
data = [bytes(2000 + i % 50) for i in range(300)]
"""

TRACKER = """
import sys
import memray
import allochelper
H = allochelper.load()
fmt = memray.FileFormat.AGGREGATED_ALLOCATIONS if sys.argv[2] == "agg" else memray.FileFormat.ALL_ALLOCATIONS

def inner():
    return [H.helper_malloc(30000) for _ in range(4)]  # @inner

with memray.Tracker(sys.argv[1], file_format=fmt):
    kept = inner()
    q = H.helper_malloc(5000)
    H.helper_free(q)
    r = H.helper_calloc(10, 1000)
"""

# Prints everything a FileReader says about a capture, as JSON.
DUMP = r'''
import json, sys
import memray

def frames(get):
    try:
        return [list(f) for f in get()]
    except NotImplementedError as e:
        return "NotImplementedError: %s" % e

def rec(r):
    return [r.tid, r.thread_name, r.address, r.size, int(r.allocator), r.n_allocations, r.stack_id,
            r.native_stack_id, r.native_segment_generation, frames(r.stack_trace),
            frames(r.hybrid_stack_trace), frames(lambda: r.stack_trace(max_stacks=2)),
            frames(r.native_stack_trace)]

out = {}
with memray.FileReader(sys.argv[1], max_memory_records=int(sys.argv[2])) as rd:
    md = rd.metadata
    out["metadata"] = [md.start_time.isoformat(), md.end_time.isoformat(), md.total_allocations,
                       md.total_frames, md.peak_memory, md.command_line, md.pid, md.main_thread_id,
                       md.python_allocator, md.has_native_traces, md.trace_python_allocators,
                       md.file_format.name]
    out["snapshots"] = [list(s) for s in rd.get_memory_snapshots()]

    def query(name, get):
        try:
            out[name] = [rec(r) for r in get()]
        except Exception as e:
            out[name] = "%s: %s" % (type(e).__name__, e)

    query("all", rd.get_allocation_records)
    for merge in (True, False):
        query("hwm-%s" % merge, lambda: rd.get_high_watermark_allocation_records(merge_threads=merge))
        query("leaks-%s" % merge, lambda: rd.get_leaked_allocation_records(merge_threads=merge))
        for threshold in (0, 1, 3):
            query("temporary-%s-%s" % (merge, threshold),
                  lambda: rd.get_temporary_allocation_records(merge_threads=merge, threshold=threshold))
json.dump(out, sys.stdout)
'''


def _oracle_python(interp):
    py = support.nearest_oracle(interp.minor)
    if py is None:
        pytest.skip("no Memray 1.20 oracle venv")
    return py


def _dump_with(python, env, workdir, capture, max_memory_records=10000):
    dump = workdir / "dump_reader.py"
    dump.write_text(DUMP)
    res = run([python, dump, capture, max_memory_records], cwd=workdir, env=env, timeout=120)
    assert res.returncode == 0, res.describe()
    return json.loads(res.stdout)


def _oracle_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MEMRAY_"))}


def _memray_zero_lines(ours, theirs):
    """Up to 3.9, Memray 1.20 shows line 0 for a one-line code object (an empty
    co_lnotab); this project shows its real line. Take Memray's 0 there."""
    for key in theirs:
        a, b = ours.get(key), theirs[key]
        if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)):
            continue
        for x, y in zip(a, b):
            if not (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) == 13):
                continue
            for i in (9, 10, 11):
                if isinstance(x[i], list) and isinstance(y[i], list) and len(x[i]) == len(y[i]):
                    for fx, fy in zip(x[i], y[i]):
                        if fy[2] == 0 and fx[:2] == fy[:2]:
                            fx[2] = 0


def _assert_same(ours, theirs):
    assert ours.keys() == theirs.keys()
    for key in theirs:
        a, b = ours[key], theirs[key]
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            for i, (x, y) in enumerate(zip(a, b)):
                assert x == y, f"{key}[{i}] differs:\n ours   {x}\n Memray {y}"
            assert len(a) == len(b), f"{key}: {len(a)} records, Memray has {len(b)}"
        assert a == b, f"{key} differs:\n ours   {str(a)[:800]}\n Memray {str(b)[:800]}"


def _compare(interp, tracked_env, workdir, capture, max_memory_records=10000):
    ours = _dump_with(interp.executable, tracked_env, workdir, capture, max_memory_records)
    theirs = _dump_with(_oracle_python(interp), _oracle_env(), workdir, capture, max_memory_records)
    if interp.minor <= 9:
        _memray_zero_lines(ours, theirs)
    _assert_same(ours, theirs)
    return ours


def test_memray_run_capture_reads_like_memray(interp, script, memray_run, tracked_env, workdir):
    s = script("workload.py", WORKLOAD)
    out = workdir / "w.bin"
    assert_ok(memray_run("-q", "-o", out, s.path))
    dump = _compare(interp, tracked_env, workdir, out)
    # The figures are the workload's, not just equal to Memray's.
    names = {r[1] for r in dump["all"]}
    assert "keeper" in names
    main_tid = dump["metadata"][7]
    kept = [r for r in dump["leaks-False"]
            if r[0] == main_tid and any(f[0] == "keep" and f[2] == s.line("keep") for f in r[9] or [])]
    assert [(r[3], r[5]) for r in kept] == [(sum(40000 + i for i in range(4)), 4)]
    def temporaries(threshold):
        return sum(r[5] for r in dump[f"temporary-True-{threshold}"]
                   if r[9] and r[9][0][0] == "temp" and r[9][0][2] == s.line("temp"))

    # temp(3, 0) frees before any other allocation; temp(3, 2) after two others.
    assert [temporaries(0), temporaries(1), temporaries(3)] == [3, 3, 6]
    assert isinstance(dump["all"], list) and any(r[4] == 15 and r[9].startswith("NotImplementedError") for r in dump["all"])


@pytest.mark.parametrize("fmt", ["all", "agg"])
def test_tracker_capture_reads_like_memray(interp, script, run_py, tracked_env, workdir, fmt):
    s = script("tracked.py", TRACKER)
    out = workdir / f"t-{fmt}.bin"
    assert_ok(run_py(s.path, out, fmt))
    dump = _compare(interp, tracked_env, workdir, out, max_memory_records=3)
    assert len(dump["snapshots"]) <= 3
    if fmt == "agg":
        assert dump["metadata"][-1] == "AGGREGATED_ALLOCATIONS"
        assert dump["all"].startswith("NotImplementedError")
        assert dump["temporary-True-1"].startswith("NotImplementedError")
    inner = [r for r in dump["leaks-True"] if any(f[:2] == ["inner", str(s.path)] for f in r[9] or [])]
    assert [(r[3], r[5]) for r in inner] == [(4 * 30000, 4)]
    # The frames above the one that entered the Tracker are hidden (list
    # comprehensions have their own frame before 3.12).
    assert [f[0] for f in inner[0][9] if f[0] != "<listcomp>"] == ["inner", "<module>"]


@pytest.mark.parametrize("flags", [(), ("--aggregate",), ("--trace-python-allocators", "--no-compress")],
                         ids=["default", "aggregate", "pymalloc"])
def test_memray_made_capture_reads_like_memray(interp, script, tracked_env, helper_lib, workdir, flags):
    if interp.minor not in support.ORACLE_MINORS:
        pytest.skip(f"Memray 1.20 does not run on Python 3.{interp.minor}")
    py = _oracle_python(interp)
    s = script("workload.py", WORKLOAD)
    out = workdir / "m.bin"
    env = _oracle_env()
    env["PYTHONPATH"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
    env["ALLOC_HELPER_LIB"] = str(helper_lib)
    assert_ok(run([py, "-m", "memray", "run", *flags, "-q", "-o", out, s.path], cwd=workdir, env=env))
    _compare(interp, tracked_env, workdir, out)


# --------------------------------------------------------------------------- API behaviour

API = r'''
import gc, json, os, sys
import memray

path = sys.argv[1]
out = {}

def outcome(f):
    try:
        v = f()
        return ["ok", v]
    except Exception as e:
        return [type(e).__name__, str(e)]

with memray.FileReader(path) as r:
    out["closed_inside"] = r.closed
    recs = list(r.get_high_watermark_allocation_records())
    a = recs[0]
    out["repr"] = repr(a)
    out["eq"] = [a == recs[0], a != recs[-1] or len(recs) == 1, hash(a) == hash(recs[0])]
    out["types"] = [type(x).__name__ for x in (a.tid, a.address, a.size, a.allocator, a.n_allocations)]
    frees = [x for x in r.get_allocation_records() if x.allocator == memray.AllocatorType.FREE]
    out["free"] = [outcome(frees[0].stack_trace), outcome(frees[0].hybrid_stack_trace),
                   outcome(frees[0].native_stack_trace), frees[0].size, frees[0].stack_id]
    # Abandoning a query early must not hang or leave a reader running.
    g = r.get_allocation_records()
    next(g)
    g.close()
    out["snapshot_type"] = [type(s).__name__ for s in list(r.get_memory_snapshots())[:1]] + \
        [list(getattr(memray.MemorySnapshot, "_fields", []))]
    lazy = r.get_leaked_allocation_records()
out["closed_after"] = r.closed
out["query_after_close"] = outcome(lambda: list(r.get_leaked_allocation_records()))
out["lazy_after_close"] = outcome(lambda: list(lazy))
out["metadata_after_close"] = outcome(lambda: r.metadata.peak_memory > 0)
out["snapshots_after_close"] = outcome(lambda: len(list(r.get_memory_snapshots())) >= 0)
out["missing"] = outcome(lambda: memray.FileReader(path + ".missing"))
out["directory"] = outcome(lambda: memray.FileReader(os.path.dirname(path) or "."))
junk = path + ".junk"
open(junk, "w").write("not a capture at all\n")
out["junk"] = outcome(lambda: memray.FileReader(junk))
out["metadata_fields"] = sorted(vars(memray.FileReader(path).metadata))
json.dump(out, sys.stdout)
'''


def test_reader_api_behaves_like_memray(interp, script, memray_run, tracked_env, workdir):
    s = script("workload.py", WORKLOAD)
    out = workdir / "w.bin"
    assert_ok(memray_run("-q", "-o", out, s.path))
    api = workdir / "api.py"
    api.write_text(API)
    res = run([interp.executable, api, out], cwd=workdir, env=tracked_env)
    assert res.returncode == 0, res.describe()
    ours = json.loads(res.stdout)
    res = run([_oracle_python(interp), api, out], cwd=workdir, env=_oracle_env())
    assert res.returncode == 0, res.describe()
    theirs = json.loads(res.stdout)
    for key in ("closed_inside", "closed_after", "eq", "types", "free", "snapshot_type", "metadata_fields",
                "metadata_after_close", "snapshots_after_close", "repr"):
        assert ours[key] == theirs[key], f"{key}: ours {ours[key]} != Memray {theirs[key]}"
    for key in ("query_after_close", "lazy_after_close", "missing", "directory", "junk"):
        assert ours[key][0] == theirs[key][0], f"{key}: ours {ours[key]} != Memray {theirs[key]}"
    assert ours["missing"][1].startswith("Could not open file") and ours["directory"][1].startswith("Could not open file")
    assert ours["junk"][1] and "\n" not in ours["junk"][1]


@pytest.mark.ours_only
def test_reader_without_binary_is_a_clean_error(interp, script, memray_run, tracked_env, workdir):
    s = script("workload.py", "x = bytearray(100000)\n")
    out = workdir / "w.bin"
    assert_ok(memray_run("-q", "-o", out, s.path))
    env = dict(tracked_env, MEMRAY_BIN=str(workdir / "nowhere" / "memray"))
    code = "import memray, sys\ntry:\n    memray.FileReader(sys.argv[1])\nexcept OSError as e:\n    print('OSError', e)\n"
    res = run([interp.executable, "-c", code, out], cwd=workdir, env=env)
    assert res.returncode == 0 and res.stdout.startswith("OSError"), res.describe()


@pytest.mark.ours_only
def test_reader_memory_follows_records_not_file(interp, script, memray_run, tracked_env, workdir):
    """Streaming every record of a capture holds a few records at a time."""
    s = script("many.py", "import allochelper\nH = allochelper.load()\nfor _ in range(200000):\n    H.helper_free(H.helper_malloc(100))\n")
    out = workdir / "many.bin"
    assert_ok(memray_run("-q", "-o", out, s.path))
    code = (
        "import memray, sys\n"
        "n = 0\n"
        "with memray.FileReader(sys.argv[1]) as r:\n"
        "    for rec in r.get_allocation_records():\n"
        "        n += 1\n"
        "# VmHWM: this process image's peak (ru_maxrss may carry the parent's over exec)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(n, hwm)\n"
    )
    res = run([interp.executable, "-c", code, out], cwd=workdir, env=tracked_env, timeout=300)
    assert res.returncode == 0, res.describe()
    n, maxrss_kb = map(int, res.stdout.split())
    assert n >= 400000
    assert maxrss_kb < 100 * 1024, f"the reader held {maxrss_kb} kB for {n} records"


# --------------------------------------------------------------------------- temporal records

# Allocates and frees across several memory samples (every 5 ms; each step sleeps 30).
TEMPORAL = """
import sys, threading, time
import memray
import allochelper
H = allochelper.load()
fmt = memray.FileFormat.AGGREGATED_ALLOCATIONS if sys.argv[2] == "agg" else memray.FileFormat.ALL_ALLOCATIONS

def step():
    time.sleep(0.03)

def keep(n):
    return [H.helper_malloc(40000 + i) for i in range(n)]  # @keep

with memray.Tracker(sys.argv[1], file_format=fmt, memory_interval_ms=5):
    kept = keep(3)
    step()
    big = H.helper_malloc(500000)  # @big
    step()
    H.helper_free(big)
    H.helper_free(H.helper_malloc(300000))  # @brief
    c = H.helper_calloc(10, 1000)
    step()
    grown = H.helper_realloc(H.helper_malloc(100), 90001)
    m = H.helper_mmap(4096 * 16)  # @mmap
    step()
    H.helper_munmap(m + 4096 * 4, 4096 * 4)
    t = threading.Thread(target=keep, args=(2,), name="keeper")
    t.start()
    t.join()
    step()
    for p in kept[:2]:
        H.helper_free(p)
    step()
"""

# Prints what a FileReader says of a capture's history, as JSON.
TEMPORAL_DUMP = r'''
import json, sys
import memray

def outcome(f):
    try:
        return ["ok", f()]
    except Exception as e:
        return [type(e).__name__, str(e)]

def rec(r):
    return [type(r).__name__, r.tid, r.thread_name, int(r.allocator), r.stack_id, r.native_stack_id,
            r.native_segment_generation, [list(f) for f in r.stack_trace()], [list(f) for f in r.hybrid_stack_trace()],
            [[type(i).__name__, i.allocated_before_snapshot, i.deallocated_before_snapshot, i.n_allocations, i.n_bytes]
             for i in r.intervals]]

out = {}
with memray.FileReader(sys.argv[1], max_memory_records=int(sys.argv[2])) as rd:
    for merge in (True, False):
        lazy = rd.get_temporal_allocation_records(merge_threads=merge)
        out["temporal-%s" % merge] = outcome(lambda: [rec(r) for r in lazy])
        def hwm():
            result = rd.get_temporal_high_water_mark_allocation_records(merge_threads=merge)
            records, by_snapshot = result
            return [type(result).__name__, len(result), type(by_snapshot).__name__, by_snapshot,
                    [rec(r) for r in records]]
        out["hwm-%s" % merge] = outcome(hwm)
    out["interval"] = outcome(lambda: [repr(i) for r in rd.get_temporal_allocation_records() for i in r.intervals][:3])
json.dump(out, sys.stdout)
'''


def _memray_zero_frame_lines(ours, theirs):
    """As `_memray_zero_lines`, for the stacks of temporal records."""
    for key in theirs:
        a, b = ours.get(key), theirs[key]
        if key == "interval" or not (a and a[0] == b[0] == "ok"):
            continue
        recs_a, recs_b = (a[1], b[1]) if key.startswith("temporal") else (a[1][-1], b[1][-1])
        for x, y in zip(recs_a, recs_b):
            for i in (7, 8):
                for fx, fy in zip(x[i], y[i]):
                    if fy[2] == 0 and fx[:2] == fy[:2]:
                        fx[2] = 0


def _temporal_compare(interp, tracked_env, workdir, capture, max_memory_records):
    dump = workdir / "temporal_dump.py"
    dump.write_text(TEMPORAL_DUMP)
    outs = []
    for python, env in ((interp.executable, tracked_env), (_oracle_python(interp), _oracle_env())):
        res = run([python, dump, capture, max_memory_records], cwd=workdir, env=env, timeout=120)
        assert res.returncode == 0, res.describe()
        outs.append(json.loads(res.stdout))
    ours, theirs = outs
    if interp.minor <= 9:
        _memray_zero_frame_lines(ours, theirs)
    _assert_same(ours, theirs)
    return ours


@pytest.mark.parametrize("maker", ["ours", "memray"])
def test_temporal_records_read_like_memray(interp, script, run_py, tracked_env, helper_lib, workdir, maker):
    s = script("temporal.py", TEMPORAL)
    out = workdir / "temporal.bin"
    if maker == "ours":
        assert_ok(run_py(s.path, out, "all"))
    else:
        if interp.minor not in support.ORACLE_MINORS:
            pytest.skip(f"Memray 1.20 does not run on Python 3.{interp.minor}")
        helpers = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
        env = dict(_oracle_env(), PYTHONPATH=helpers, ALLOC_HELPER_LIB=str(helper_lib))
        assert_ok(run([_oracle_python(interp), s.path, out, "all"], cwd=workdir, env=env))
    dump = _temporal_compare(interp, tracked_env, workdir, out, 10000)
    # Strided memory records: snapshots are every n-th one, as Memray counts them.
    _temporal_compare(interp, tracked_env, workdir, out, 4)

    # The figures are the workload's, not just equal to Memray's.
    def at(key, marker):
        recs = dump[key][1] if key.startswith("temporal") else dump[key][1][-1]
        # Any frame: up to 3.9 Memray gives a list comprehension's frame line 0.
        return [r for r in recs if any(f[1] == str(s.path) and f[2] == s.line(marker) for f in r[7])]

    [big] = at("temporal-True", "big")
    assert [iv[3:] for iv in big[9]] == [[1, 500000]] and big[9][0][2] is not None
    assert big[9][0][1] < big[9][0][2], "allocated and freed in different snapshots"
    kept = at("temporal-False", "keep")
    assert len({r[1] for r in kept}) == 2 and "keeper" in {r[2] for r in kept}
    assert all(r[1] == 0 and r[2] == "" for r in dump["temporal-True"][1]), "merged: thread 0, unnamed"
    status, (kind, n, by_kind, by_snapshot, recs) = dump["hwm-True"]
    assert (kind, n, by_kind) == ("tuple", 2, "list") and len(by_snapshot) >= 4
    assert max(by_snapshot) >= 500000 + 40000 * 3
    [big_hwm] = at("hwm-True", "big")
    # Part of the high-water mark of the snapshots it was live in, then of none.
    assert [iv[3:] for iv in big_hwm[9]] == [[1, 500000], [0, 0]]
    # The mapping itself (3.14's ctypes also allocates on that line).
    [mapped] = [r for r in at("temporal-True", "mmap") if r[3] == support.MMAP]
    assert sum(iv[4] for iv in mapped[9]) == 4096 * 16 and sum(iv[3] for iv in mapped[9]) == 1


def test_temporal_records_of_aggregated_capture_are_refused(interp, script, run_py, tracked_env, workdir):
    s = script("temporal.py", TEMPORAL)
    out = workdir / "agg.bin"
    assert_ok(run_py(s.path, out, "agg"))
    dump = _temporal_compare(interp, tracked_env, workdir, out, 10000)
    assert dump["temporal-True"][0] == dump["hwm-False"][0] == "NotImplementedError"
