"""Tracker core through the Python API (memray.Tracker), for every interpreter.

Each test runs a small script under the interpreter being tested; the script
allocates through tests/helpers/alloc_helper.c (via ctypes, on a marked line)
so the size, allocator and Python line of the allocation are known exactly.
The capture is then read with Memray 1.20's FileReader (the `reader` fixture)
and the records are checked.
"""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from support import (
    ALIGNED_ALLOC,
    CALLOC,
    FORMAT_VERSION,
    FREE,
    LZ4_MAGIC,
    MALLOC,
    MEMALIGN,
    MEMRAY_MAGIC,
    MMAP,
    MUNMAP,
    POSIX_MEMALIGN,
    PVALLOC,
    PYMALLOC_MALLOC,
    REALLOC,
    VALLOC,
    assert_no_crash,
    assert_ok,
    c_compiler,
    frames,
    run,
    sigkill_once_started,
    top,
)

PRELUDE = """
import json, os, sys, threading
import memray
import allochelper
H = allochelper.load()
OUT = sys.argv[1]
"""


def last_json(result):
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    assert lines, "script printed no JSON\n" + result.describe()
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- attribution


def test_function_allocation_attributed(interp, script, run_py, reader, workdir):
    s = script(
        "attrib.py",
        PRELUDE,
        """
        def allocate_three():
            for _ in range(3):
                H.helper_malloc(123457)  # @alloc

        with memray.Tracker(OUT):
            allocate_three()  # @call
        H.helper_malloc(765433)  # @after
        print(json.dumps({"pid": os.getpid()}))
        """,
    )
    out = workdir / "attrib.bin"
    t0 = time.time()
    res = assert_ok(run_py(s, out))
    t1 = time.time()
    info = last_json(res)
    cap = reader.read(out, "all", "hwm")

    recs = cap.find(size=123457, allocator=MALLOC)
    assert len(recs) == 3, f"expected 3 malloc(123457) records, got {recs}"
    expected_stack = [
        ("allocate_three", str(s.path), s.line("alloc")),
        ("<module>", str(s.path), s.line("call")),
    ]
    for rec in recs:
        assert frames(rec) == expected_stack
        assert rec["n_allocations"] == 1
        assert rec["tid"] == cap.metadata["main_thread_id"]

    # Memray's high-water-mark aggregation over our records: one location, 3 allocations.
    hwm = [r for r in cap.hwm if r["allocator"] == MALLOC and r["stack"] and frames(r) == expected_stack]
    assert len(hwm) == 1, hwm
    assert hwm[0]["n_allocations"] == 3
    assert hwm[0]["size"] == 3 * 123457

    # Nothing after the with block.
    assert cap.find(size=765433) == []

    md = cap.metadata
    assert md["pid"] == info["pid"]
    assert md["file_format"] == 0
    assert md["has_native_traces"] is False
    assert md["trace_python_allocators"] is False
    assert md["python_allocator"] == "pymalloc"
    assert "attrib.py" in md["command_line"]
    assert md["total_allocations"] >= 3
    assert t0 - 2 <= md["start_time"] <= md["end_time"] <= t1 + 2, md
    assert md["peak_memory"] >= 3 * 123457


def test_an_empty_tracked_block_records_nothing(interp, script, run_py, reader, workdir):
    """What memray itself does while a Tracker starts is not the program's: an empty block
    gives a capture with no record and total_allocations 0, as Memray 1.20's does (ours
    recorded the FREE of its own start arguments)."""
    s = script("empty.py", PRELUDE, """
        with memray.Tracker(OUT):
            pass
        """)
    out = workdir / "empty.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "all")
    assert cap.metadata["total_allocations"] == 0, cap.metadata
    assert cap.records == [], cap.records


def test_allocator_kinds(interp, script, run_py, reader, workdir):
    s = script(
        "kinds.py",
        PRELUDE,
        """
        with memray.Tracker(OUT):
            p = H.helper_malloc(100003)  # @malloc
            H.helper_free(p)  # @free
            c = H.helper_calloc(7, 14293)  # @calloc
            r = H.helper_realloc(c, 200003)  # @realloc
            H.helper_free(r)
            a = H.helper_posix_memalign(64, 300032)  # @posix_memalign
            b = H.helper_aligned_alloc(64, 400000)  # @aligned_alloc
            m = H.helper_memalign(64, 500032)  # @memalign
            v = H.helper_valloc(600001)  # @valloc
            pv = H.helper_pvalloc(4096 * 170)  # @pvalloc
            mm = H.helper_mmap(4096 * 41)  # @mmap
            H.helper_munmap(mm, 4096 * 41)  # @munmap
            m64 = H.helper_mmap64(4096 * 43)  # @mmap64
            H.helper_munmap(m64 + 4096, 4096 * 2)  # @partial_munmap
        print(json.dumps(dict(p=p, c=c, r=r, a=a, b=b, m=m, v=v, pv=pv, mm=mm, m64=m64)))
        """,
    )
    out = workdir / "kinds.bin"
    addr = last_json(assert_ok(run_py(s, out)))
    assert all(addr.values()), f"an allocation failed in the script: {addr}"
    cap = reader.read(out, "all")
    records = cap.records

    expected = [
        # (marker, allocator, size, address key)
        ("malloc", MALLOC, 100003, "p"),
        ("calloc", CALLOC, 7 * 14293, "c"),
        ("realloc", REALLOC, 200003, "r"),
        ("posix_memalign", POSIX_MEMALIGN, 300032, "a"),
        ("aligned_alloc", ALIGNED_ALLOC, 400000, "b"),
        ("memalign", MEMALIGN, 500032, "m"),
        ("valloc", VALLOC, 600001, "v"),
        ("pvalloc", PVALLOC, 4096 * 170, "pv"),
        ("mmap", MMAP, 4096 * 41, "mm"),
        ("mmap64", MMAP, 4096 * 43, "m64"),
    ]
    index = {}
    for marker, allocator, size, key in expected:
        found = [i for i, r in enumerate(records) if r["allocator"] == allocator and r["size"] == size]
        assert len(found) == 1, f"{marker}: expected one record allocator={allocator} size={size}, got {[records[i] for i in found]}"
        rec = records[found[0]]
        assert rec["address"] == addr[key], f"{marker}: address {rec['address']:#x} != {addr[key]:#x}"
        assert top(rec) == [("<module>", s.path.name, s.line(marker))], marker
        assert rec["tid"] == cap.metadata["main_thread_id"]
        index[marker] = found[0]
    order = [index[m] for m, *_ in expected]
    assert order == sorted(order), "records are not in program order"

    def dealloc_between(allocator, address, lo, hi, size=None):
        hits = [
            r
            for r in records[lo + 1 : hi]
            if r["allocator"] == allocator and r["address"] == address and (size is None or r["size"] == size)
        ]
        assert hits, f"no allocator={allocator} record for {address:#x} between records {lo} and {hi}"
        assert hits[0]["stack"] is None

    dealloc_between(FREE, addr["p"], index["malloc"], index["calloc"])
    # a successful realloc is a FREE of the old pointer followed by REALLOC
    dealloc_between(FREE, addr["c"], index["calloc"], index["realloc"])
    dealloc_between(MUNMAP, addr["mm"], index["mmap"], index["mmap64"], size=4096 * 41)
    dealloc_between(MUNMAP, addr["m64"] + 4096, index["mmap64"], len(records), size=4096 * 2)


def test_second_thread_attributed(interp, script, run_py, reader, workdir):
    s = script(
        "threads.py",
        PRELUDE,
        """
        def worker():
            H.helper_malloc(234571)  # @worker

        def main_work():
            H.helper_malloc(345679)  # @main

        with memray.Tracker(OUT):
            t = threading.Thread(target=worker, name="alloc-worker")
            t.start()
            t.join()
            main_work()  # @call_main
        """,
    )
    out = workdir / "threads.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "all")
    main_tid = cap.metadata["main_thread_id"]

    w = cap.one(size=234571, allocator=MALLOC)
    assert top(w) == [("worker", s.path.name, s.line("worker"))]
    assert top(w, 2)[1][:2] == ("run", "threading.py"), w["stack"]
    assert w["tid"] != main_tid

    m = cap.one(size=345679, allocator=MALLOC)
    assert m["tid"] == main_tid
    assert frames(m) == [
        ("main_work", str(s.path), s.line("main")),
        ("<module>", str(s.path), s.line("call_main")),
    ]
    assert w["thread_name"] == "alloc-worker", "the Python thread's name should be recorded"


def test_thread_started_before_tracking(interp, script, run_py, reader, workdir):
    s = script(
        "prethread.py",
        PRELUDE,
        """
        go = threading.Event()

        def pre_existing():
            go.wait(60)
            H.helper_malloc(456791)  # @pre

        t = threading.Thread(target=pre_existing, daemon=True)
        t.start()
        with memray.Tracker(OUT):
            go.set()
            t.join(60)
        """,
    )
    out = workdir / "pre.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "all")
    rec = cap.one(size=456791, allocator=MALLOC)
    assert top(rec) == [("pre_existing", s.path.name, s.line("pre"))]
    assert rec["tid"] != cap.metadata["main_thread_id"]


def test_stacks_start_at_the_frame_that_entered_the_tracker(interp, script, run_py, reader, workdir):
    """As in Memray: inside outer() -> inner() -> `with Tracker`, an allocation in leaf()
    is [leaf, inner]; other threads keep their whole stacks."""
    s = script(
        "roots.py",
        PRELUDE,
        """
        def leaf():
            H.helper_malloc(123457)  # @leaf

        def other_thread():
            H.helper_malloc(223457)  # @other

        def inner():
            with memray.Tracker(OUT):  # @enter
                leaf()  # @call_leaf
                t = threading.Thread(target=other_thread)
                t.start()
                t.join()

        def outer():
            inner()

        outer()
        """,
    )
    out = workdir / "roots.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "all")
    rec = cap.one(size=123457, allocator=MALLOC)
    assert frames(rec) == [("leaf", str(s.path), s.line("leaf")), ("inner", str(s.path), s.line("call_leaf"))]
    other = cap.one(size=223457, allocator=MALLOC)
    assert [f[0] for f in other["stack"]][:2] == ["other_thread", "run"], other["stack"]
    assert [f[0] for f in other["stack"]][-1] == "_bootstrap", other["stack"]


RENAMES = """
import threading, time
go = threading.Event()
started = threading.Event()

def work():
    H.helper_malloc(111119)
    threading.current_thread().name = "renamed-self"
    H.helper_malloc(222229)
    started.set()
    go.wait(60)
    H.helper_malloc(333339)

def main():
    pre = threading.Thread(target=lambda: (started.wait(60), H.helper_malloc(555559)), name="pre-started")
    pre.start()
    with memray.Tracker(OUT):
        H.helper_malloc(666669)
        t = threading.Thread(target=work, name="first")
        t.start()
        started.wait(60)
        t.name = "renamed-by-main"
        go.set()
        t.join()
        pre.join()
        threading.current_thread().name = "main-renamed"
        H.helper_malloc(444449)
"""

# What Memray 1.20 records (seen with its own tracker on 3.10-3.13): names of threads that
# start while tracking and every rename, none for threads that were running already.
EXPECTED_NAMES = {
    111119: "first",
    222229: "renamed-self",
    333339: "renamed-by-main",
    444449: "main-renamed",
    555559: "",
    666669: "",
}


def _thread_name_records(memray_cli, capture):
    res = memray_cli("parse", capture)
    assert res.returncode == 0, res.describe()
    return [line.split(" ", 1)[1] for line in res.stdout.splitlines() if line.startswith("THREAD ")]


def test_thread_names_follow_renames_as_in_memray(interp, script, run_py, reader, memray_cli, workdir):
    s = script("renames.py", PRELUDE, RENAMES, "main()\n")
    out = workdir / "renames.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "all")
    got = {size: cap.one(size=size, allocator=MALLOC)["thread_name"] for size in EXPECTED_NAMES}
    assert got == EXPECTED_NAMES
    names = _thread_name_records(memray_cli, out)
    assert "MainThread" not in names and "pre-started" not in names, names
    # The rename is undone at stop: a later rename is the program's own business.
    check = run_py(script("after.py", PRELUDE, RENAMES, """
        main()
        assert threading.Thread.__dict__["name"].fset.__name__ == "name", "name setter left patched"
        """), workdir / "after.bin")
    assert_ok(check)


def test_memray_run_records_no_name_for_the_main_thread(interp, script, memray_run, memray_cli, workdir):
    s = script("plain.py", """
        import threading
        x = [bytes(5000) for _ in range(10)]
        t = threading.Thread(target=lambda: bytes(7000), name="worker")
        t.start()
        t.join()
        """)
    out = workdir / "plain.bin"
    assert_ok(memray_run("-q", "--no-compress", "-o", out, s.path))
    assert _thread_name_records(memray_cli, out) == ["worker"]


def test_pthread_created_in_c(interp, script, run_py, reader, workdir):
    s = script(
        "cthread.py",
        PRELUDE,
        """
        with memray.Tracker(OUT):
            H.helper_malloc(567899)  # @main
            p = H.helper_malloc_in_pthread(678901)  # @c_thread
        assert p
        """,
    )
    out = workdir / "cthread.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "all")
    main = cap.one(size=567899, allocator=MALLOC)
    rec = cap.one(size=678901, allocator=MALLOC)
    assert main["tid"] == cap.metadata["main_thread_id"]
    assert rec["tid"] != main["tid"]
    assert rec["stack"] == [], "a C thread that never ran Python code has an empty Python stack"


def test_pthread_name_from_prctl(interp, script, run_py, reader, workdir):
    s = script(
        "cname.py",
        PRELUDE,
        """
        with memray.Tracker(OUT):
            p = H.helper_malloc_in_named_pthread(789019, b"c-named")  # @c_thread
        assert p
        """,
    )
    out = workdir / "cname.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "all")
    rec = cap.one(size=789019, allocator=MALLOC)
    assert rec["tid"] != cap.metadata["main_thread_id"]
    assert rec["thread_name"] == "c-named"


def test_c_thread_calling_python(interp, script, run_py, reader, workdir):
    s = script(
        "ccallback.py",
        PRELUDE,
        """
        def callback():
            H.helper_malloc(890129)  # @cb

        cb = allochelper.CALLBACK(callback)
        with memray.Tracker(OUT):
            rc = H.helper_call_in_pthread(cb)
        assert rc == 0
        """,
    )
    out = workdir / "ccallback.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "all")
    rec = cap.one(size=890129, allocator=MALLOC)
    assert top(rec) == [("callback", s.path.name, s.line("cb"))]
    assert rec["tid"] != cap.metadata["main_thread_id"]


def test_library_loaded_after_tracking_started(interp, script, run_py, reader, workdir):
    s = script(
        "late.py",
        PRELUDE,
        """
        import shutil
        late = os.path.join(os.path.dirname(os.path.abspath(OUT)), "late_helper.so")
        shutil.copy(os.environ["ALLOC_HELPER_LIB"], late)
        with memray.Tracker(OUT):
            L = allochelper.load(late)
            L.helper_malloc(901241)  # @late
            L.helper_calloc(3, 100003)  # @late_calloc
        """,
    )
    out = workdir / "late.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "all")
    rec = cap.one(size=901241, allocator=MALLOC)
    assert top(rec) == [("<module>", s.path.name, s.line("late"))]
    rec = cap.one(size=300009, allocator=CALLOC)
    assert top(rec) == [("<module>", s.path.name, s.line("late_calloc"))]


NEIGHBOUR_C = "int neighbour_value(void) { return 42; }\n"
CALLER_C = r"""
#include <dlfcn.h>
#include <stddef.h>
/* Found only through this library's run path (deps/ beside it). */
int open_neighbour(void) {
    void *h = dlopen("libmemraytest_neighbour.so", RTLD_NOW);
    if (h == NULL) return -1;
    int (*f)(void) = (int (*)(void))dlsym(h, "neighbour_value");
    return f ? f() : -2;
}
int open_missing(void) { return dlopen("libmemraytest_missing.so", RTLD_NOW) != NULL; }
const char *last_error(void) { const char *e = dlerror(); return e ? e : ""; }
"""


def _build_dlopen_callers(workdir):
    """libcaller_runpath.so (DT_RUNPATH) and libcaller_rpath.so (DT_RPATH), each finding
    deps/libmemraytest_neighbour.so only through its own run path ($ORIGIN/deps)."""
    import shutil
    import subprocess

    cc = c_compiler()
    src = workdir / "dlsrc"
    (src / "deps").mkdir(parents=True, exist_ok=True)
    (src / "neighbour.c").write_text(NEIGHBOUR_C)
    (src / "caller.c").write_text(CALLER_C)
    builds = [
        [cc, "-shared", "-fPIC", "-o", str(src / "deps" / "libmemraytest_neighbour.so"), str(src / "neighbour.c")],
        [cc, "-shared", "-fPIC", "-o", str(src / "libcaller_runpath.so"), str(src / "caller.c"),
         "-Wl,-rpath,$ORIGIN/deps", "-Wl,--enable-new-dtags", "-ldl"],
        [cc, "-shared", "-fPIC", "-o", str(src / "libcaller_rpath.so"), str(src / "caller.c"),
         "-Wl,-rpath,$ORIGIN/deps", "-Wl,--disable-new-dtags", "-ldl"],
    ]
    for cmd in builds:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, " ".join(cmd) + "\n" + res.stderr
    return src


def test_dlopen_by_name_searches_the_callers_run_path(interp, script, run_py, reader, workdir):
    """A library that dlopens a bare name found through its own RUNPATH/RPATH still finds
    it while tracked, although the GOT sends its dlopen through the payload (glibc
    searches the caller's run path, and the caller is then the payload)."""
    src = _build_dlopen_callers(workdir)
    s = script(
        "dlopen_runpath.py",
        PRELUDE,
        """
        import ctypes
        SRC = %r
        result = {}
        with memray.Tracker(OUT):
            for kind in ("runpath", "rpath"):
                lib = ctypes.CDLL(os.path.join(SRC, "libcaller_%%s.so" %% kind))
                result[kind] = lib.open_neighbour()
            lib.last_error.restype = ctypes.c_char_p
            result["missing"] = lib.open_missing()
            result["error"] = lib.last_error().decode()
            H.helper_malloc(770077)  # @after_dlopen
        print(json.dumps(result))
        """ % str(src),
    )
    out = workdir / "dlopen_runpath.bin"
    result = last_json(assert_ok(run_py(s, out)))
    assert result["runpath"] == 42, result
    assert result["rpath"] == 42, result
    # A name found nowhere still fails, and dlerror() names it, not a path we tried.
    assert result["missing"] == 0
    assert "libmemraytest_missing.so" in result["error"] and "/" not in result["error"].split(":")[0], result
    cap = reader.read(out, "all")
    rec = cap.one(size=770077, allocator=MALLOC)
    assert top(rec) == [("<module>", s.path.name, s.line("after_dlopen"))]


def test_trace_python_allocators(interp, script, run_py, reader, workdir):
    s = script(
        "pymalloc.py",
        PRELUDE,
        """
        n = 300007
        with memray.Tracker(OUT, trace_python_allocators=True):
            data = b"x" * n  # @pyalloc
        after = b"y" * n  # @after
        print(json.dumps({"size": sys.getsizeof(data)}))
        """,
    )
    out = workdir / "pymalloc.bin"
    size = last_json(assert_ok(run_py(s, out)))["size"]
    cap = reader.read(out, "all")
    assert cap.metadata["trace_python_allocators"] is True
    rec = cap.one(size=size, allocator=PYMALLOC_MALLOC)
    assert top(rec) == [("<module>", s.path.name, s.line("pyalloc"))]
    # not also counted as a malloc (the underlying call is not double counted)
    assert cap.find(size=size, allocator=MALLOC) == []


def test_a_frame_not_yet_started_is_its_call_in_the_caller(interp, script, run_py, reader, workdir):
    """A profile function is given a frame object for each call (3.11+ make it lazily,
    while the new frame is at its first RESUME): that allocation is the call's, in the
    caller, as Memray shows it, not a line of a function that has not started."""
    s = script(
        "unstarted.py",
        PRELUDE,
        """
        def leaf():  # @def
            return 1

        def seen(frame, event, arg):
            pass

        with memray.Tracker(OUT, trace_python_allocators=True):
            sys.setprofile(seen)
            for _ in range(200):
                leaf()  # @call
            sys.setprofile(None)
        """,
    )
    out = workdir / "unstarted.bin"
    assert_ok(run_py(s, out))
    records = [r for r in reader.read(out, "all").records if r["stack"]]
    in_leaf = [r for r in records if top(r)[0][0] == "leaf"]
    assert in_leaf == [], f"{len(in_leaf)} allocations in leaf, which allocates nothing: {in_leaf[:3]}"
    at_call = [r for r in records if top(r) == [("<module>", s.path.name, s.line("call"))]]
    if interp.minor >= 11:
        assert len(at_call) >= 200, f"expected the 200 frame objects at the call, got {len(at_call)}"


def test_two_trackers_one_after_another(interp, script, run_py, reader, workdir):
    s = script(
        "twice.py",
        PRELUDE,
        """
        with memray.Tracker(OUT + ".1"):
            H.helper_malloc(111119)  # @first
        H.helper_malloc(222229)  # @between
        with memray.Tracker(OUT + ".2"):
            H.helper_malloc(333331)  # @second
        """,
    )
    out = workdir / "twice.bin"
    assert_ok(run_py(s, out))
    first = reader.read(f"{out}.1", "all")
    second = reader.read(f"{out}.2", "all")
    assert top(first.one(size=111119, allocator=MALLOC)) == [("<module>", s.path.name, s.line("first"))]
    assert top(second.one(size=333331, allocator=MALLOC)) == [("<module>", s.path.name, s.line("second"))]
    for cap in (first, second):
        assert cap.find(size=222229) == []
    assert first.find(size=333331) == []
    assert second.find(size=111119) == []


def test_memory_snapshots_sampled(interp, script, run_py, reader, workdir):
    s = script(
        "rss.py",
        PRELUDE,
        """
        import time
        with memray.Tracker(OUT, memory_interval_ms=10):
            H.helper_malloc(444443)
            deadline = time.time() + 0.6
            while time.time() < deadline:
                time.sleep(0.01)
        """,
    )
    out = workdir / "rss.bin"
    assert_ok(run_py(s, out))
    cap = reader.read(out, "snapshots")
    snaps = cap.snapshots
    assert len(snaps) >= 5, f"RSS should be sampled about every 10 ms over 0.6 s, got {len(snaps)} samples"
    assert all(rss > 1024 * 1024 for _, rss, _ in snaps), snaps


# --------------------------------------------------------------------------- file lifecycle


def test_file_closed_and_complete_after_block(interp, script, run_py, reader, workdir):
    s = script(
        "closed.py",
        PRELUDE,
        """
        import shutil
        with memray.Tracker(OUT):
            H.helper_malloc(135797)  # @inside
        with open(OUT, "rb") as f:
            head = f.read(8)
        target = os.path.realpath(OUT)
        still_open = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink("/proc/self/fd/" + fd)
            except OSError:
                continue
            if link.startswith(target):
                still_open.append(link)
        shutil.copy(OUT, OUT + ".copy")
        H.helper_malloc(246803)  # @after
        print(json.dumps({"head": head.hex(), "open": still_open}))
        sys.stdout.flush()
        os._exit(0)
        """,
    )
    out = workdir / "closed.bin"
    info = last_json(assert_ok(run_py(s, out)))
    assert bytes.fromhex(info["head"]).startswith(LZ4_MAGIC), "compress_on_exit=True: LZ4 frame expected when the block ends"
    assert info["open"] == [], f"capture still open after the block: {info['open']}"
    cap = reader.read(f"{out}.copy", "all")
    assert top(cap.one(size=135797, allocator=MALLOC)) == [("<module>", s.path.name, s.line("inside"))]
    assert cap.find(size=246803) == []


def test_uncompressed_destination(interp, script, run_py, reader, workdir):
    s = script(
        "raw.py",
        PRELUDE,
        """
        dest = memray.FileDestination(OUT, overwrite=False, compress_on_exit=False)
        with memray.Tracker(destination=dest):
            H.helper_malloc(97531)  # @inside
        """,
    )
    out = workdir / "raw.bin"
    assert_ok(run_py(s, out))
    head = out.read_bytes()[:16]
    assert head.startswith(MEMRAY_MAGIC)
    assert int.from_bytes(head[7:11], "little") == FORMAT_VERSION
    assert int.from_bytes(head[11:15], "little") >> 16 == (3 << 8) | interp.minor, "header python_version"
    cap = reader.read(out, "all")
    assert top(cap.one(size=97531, allocator=MALLOC)) == [("<module>", s.path.name, s.line("inside"))]


def test_buffered_file_destination(interp, script, run_py, reader, workdir):
    """FileDestination(buffered=True): plain writes, the file never mapped into the process."""
    s = script(
        "buffered.py",
        PRELUDE,
        """
        dest = memray.FileDestination(OUT, buffered=True)
        with memray.Tracker(destination=dest):
            H.helper_malloc(97531)  # @inside
            print("mapped:", OUT in open("/proc/self/maps").read())
        """,
    )
    out = workdir / "buffered.bin"
    res = assert_ok(run_py(s, out))
    assert "mapped: False" in res.stdout, res.describe()
    assert out.read_bytes()[:4] == LZ4_MAGIC
    cap = reader.read(out, "all")
    assert top(cap.one(size=97531, allocator=MALLOC)) == [("<module>", s.path.name, s.line("inside"))]


def test_socket_destination_streams_to_a_reader(interp, script, tracked_env, reader, workdir):
    """SocketDestination: the tracked process listens on 127.0.0.1 and streams the capture
    to the one reader that connects; what the reader receives is a readable capture."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s = script(
        "sock.py",
        PRELUDE,
        """
        port = int(sys.argv[2])
        with memray.Tracker(destination=memray.SocketDestination(server_port=port)):
            H.helper_malloc(86421)  # @inside
        """,
    )
    proc = subprocess.Popen([interp.executable, str(s.path), "unused", str(port)], cwd=workdir,
                            env=tracked_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received = bytearray()
    try:
        deadline = time.time() + 30
        conn = None
        while conn is None:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=30)
            except ConnectionRefusedError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert received.startswith(MEMRAY_MAGIC), bytes(received[:16])
    out = workdir / "from-socket.bin"
    out.write_bytes(bytes(received))
    cap = reader.read(out, "all")
    assert top(cap.one(size=86421, allocator=MALLOC)) == [("<module>", s.path.name, s.line("inside"))]


def test_full_disk_stops_tracking_with_one_line(interp, script, run_py, workdir):
    """A write error (here ENOSPC from /dev/full) stops tracking with one line on stderr;
    the program itself runs on and exits normally."""
    s = script(
        "full.py",
        PRELUDE,
        """
        import time
        dest = memray.FileDestination("/dev/full", overwrite=True, compress_on_exit=False)
        with memray.Tracker(destination=dest):
            keep = [H.helper_malloc(100000) for _ in range(300)]
            time.sleep(0.3)
            keep += [H.helper_malloc(100000) for _ in range(300)]
        print("program finished", len(keep))
        """,
    )
    res = run_py(s, workdir / "unused.bin")
    assert res.returncode == 0, res.describe()
    assert "program finished 600" in res.stdout
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.describe()
    assert "No space left on device" in lines[0] and "tracking stopped" in lines[0]
    # overwrite=True replaces files and links, never a device.
    import stat
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode), "/dev/full was replaced"


@pytest.mark.parametrize("level, shown", [("logging.WARNING", True), ("logging.ERROR", True),
                                           ("logging.CRITICAL", False)])
def test_set_log_level_filters_memrays_messages(interp, script, run_py, workdir, level, shown):
    """memray.set_log_level: the payload's "cannot write the capture" (an ERROR) is printed
    at WARNING and ERROR, dropped at CRITICAL; the program is the same either way."""
    s = script(
        "quiet.py",
        PRELUDE,
        """
        import logging, time
        memray.set_log_level(%s)
        dest = memray.FileDestination("/dev/full", overwrite=True, compress_on_exit=False)
        with memray.Tracker(destination=dest):
            keep = [H.helper_malloc(100000) for _ in range(300)]
            time.sleep(0.3)
        print("program finished", len(keep))
        """ % level,
    )
    res = run_py(s, workdir / "unused.bin")
    assert res.returncode == 0 and "program finished 300" in res.stdout, res.describe()
    assert ("No space left on device" in res.stderr) == shown, res.describe()
    if not shown:
        assert res.stderr.strip() == "", res.describe()


def test_dump_all_records_prints_what_memray_parse_prints(interp, script, run_py, memray_cli, workdir):
    s = script(
        "dump.py",
        PRELUDE,
        """
        with memray.Tracker(OUT, file_format=memray.FileFormat.ALL_ALLOCATIONS):
            H.helper_malloc(98765)
        sys.stdout.write("BEFORE\\n")
        memray.dump_all_records(OUT)
        try:
            memray.dump_all_records(OUT + ".missing")
        except OSError as e:
            print("OSError", e)
        """,
    )
    out = workdir / "dump.bin"
    res = assert_ok(run_py(s, out))
    parse = memray_cli("parse", out)
    assert parse.returncode == 0, parse.describe()
    before, dumped = res.stdout.split("BEFORE\n", 1)
    dumped, _, error = dumped.rpartition("OSError ")
    assert dumped == parse.stdout and "size=98765" in dumped, res.describe()
    assert "No such file" in error, res.describe()


def test_start_thread_trace_names_a_thread(interp, script, run_py, reader, workdir):
    """Memray's start_thread_trace, set as a thread's profile function, names it."""
    s = script(
        "trace.py",
        PRELUDE,
        """
        import threading
        def work():
            H.helper_malloc(87654)
        with memray.Tracker(OUT):
            threading.setprofile(None)  # only start_thread_trace names this thread
            t = threading.Thread(target=lambda: (sys.setprofile(memray.start_thread_trace), work()), name="traced")
            t.start()
            t.join()
        assert sys.getprofile() is None
        """,
    )
    out = workdir / "trace.bin"
    assert_ok(run_py(s, out))
    assert reader.read(out, "all").one(size=87654, allocator=MALLOC)["thread_name"] == "traced"


# --------------------------------------------------------------------------- API errors

ERRORS_SCRIPT = (
    PRELUDE
    + """
case = sys.argv[2]
other = OUT + ".other"
result = {}

def attempt(fn):
    try:
        fn()
    except BaseException as exc:
        result.update(exc=type(exc).__name__, msg=str(exc), oserror=isinstance(exc, OSError))
        return exc
    result.update(exc=None)

if case == "no_args":
    attempt(lambda: memray.Tracker())
elif case == "both":
    attempt(lambda: memray.Tracker(OUT, destination=memray.FileDestination(other)))
elif case == "two_positional":
    attempt(lambda: memray.Tracker(OUT, True))
elif case == "bad_destination":
    attempt(lambda: memray.Tracker(destination=OUT))
elif case in ("existing_file", "existing_destination"):
    with open(OUT, "wb") as f:
        f.write(b"keep me")
    def go():
        if case == "existing_file":
            t = memray.Tracker(OUT)
        else:
            t = memray.Tracker(destination=memray.FileDestination(OUT))
        with t:
            H.helper_malloc(1000003)
    attempt(go)
    result["content"] = open(OUT, "rb").read().decode("latin-1")
    # tracking must not have started: a new tracker works
    with memray.Tracker(other):
        H.helper_malloc(1000033)  # @after_error
elif case == "overwrite":
    with open(OUT, "wb") as f:
        f.write(b"replace me")
    def go():
        with memray.Tracker(destination=memray.FileDestination(OUT, overwrite=True)):
            H.helper_malloc(1000037)  # @overwritten
    attempt(go)
elif case == "nested":
    with memray.Tracker(OUT):
        attempt(lambda: memray.Tracker(other).__enter__())
        H.helper_malloc(1000039)  # @after_nested
elif case == "reenter":
    t = memray.Tracker(OUT)
    with t:
        attempt(lambda: t.__enter__())
        H.helper_malloc(1000081)  # @after_reenter
elif case == "reuse":
    t = memray.Tracker(OUT)
    with t:
        pass
    def go():
        with t:
            pass
    attempt(go)
elif case == "follow_fork_socket":
    attempt(lambda: memray.Tracker(destination=memray.SocketDestination(server_port=1), follow_fork=True))
elif case == "aggregated_socket":
    attempt(lambda: memray.Tracker(
        destination=memray.SocketDestination(server_port=1),
        file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS,
    ))
else:
    raise SystemExit("unknown case")
print(json.dumps(result))
"""
)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_args", "TypeError"),
        ("both", "TypeError"),
        ("two_positional", "TypeError"),
        ("bad_destination", "TypeError"),
        ("existing_file", "OSError"),
        ("existing_destination", "OSError"),
        ("overwrite", None),
        ("nested", "RuntimeError"),
        ("reenter", "RuntimeError"),
        ("reuse", "RuntimeError"),
        ("follow_fork_socket", "RuntimeError"),
        ("aggregated_socket", "RuntimeError"),
    ],
)
def test_tracker_api_errors(interp, script, run_py, reader, workdir, case, expected):
    s = script("errors.py", ERRORS_SCRIPT)
    out = workdir / "err.bin"
    res = run_py(s, out, case, timeout=60)
    assert_no_crash(res)
    assert_ok(res)
    result = last_json(res)
    if expected == "OSError":
        assert result["exc"] is not None and result["oserror"], f"expected an OSError subclass, got {result}"
        assert result["content"] == "keep me", "the existing file must be left alone"
        cap = reader.read(f"{out}.other", "all")
        assert top(cap.one(size=1000033, allocator=MALLOC)) == [("<module>", s.path.name, s.line("after_error"))]
        assert cap.find(size=1000003) == []
        return
    assert result["exc"] == expected, f"{case}: expected {expected}, got {result}"
    if case == "overwrite":
        cap = reader.read(out, "all")
        assert top(cap.one(size=1000037, allocator=MALLOC)) == [("go", s.path.name, s.line("overwritten"))]
    elif case in ("nested", "reenter"):
        msg = result["msg"].lower()
        assert any(w in msg for w in ("active", "already", "one", "twice", "re-enter", "reenter")), result["msg"]
        cap = reader.read(out, "all")
        marker = "after_nested" if case == "nested" else "after_reenter"
        size = 1000039 if case == "nested" else 1000081
        assert top(cap.one(size=size, allocator=MALLOC)) == [("<module>", s.path.name, s.line(marker))], (
            "the active tracker must keep working after the refused attempt"
        )


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("how", ["sys_exit", "exception", "daemon_thread", "never_exited"])
def test_exit_inside_tracked_block(interp, script, run_py, reader, workdir, how):
    s = script(
        "shutdown.py",
        PRELUDE,
        """
        import time
        how = sys.argv[2]

        def churn():
            while True:
                p = H.helper_malloc(4099)
                H.helper_free(p)
                [str(i) for i in range(50)]

        if how == "never_exited":
            tracker = memray.Tracker(OUT)
            tracker.__enter__()
            threading.Thread(target=churn, daemon=True).start()
            H.helper_malloc(555557)  # @never_exited
            time.sleep(0.1)
            # the interpreter finalizes with the tracker still active
        else:
            with memray.Tracker(OUT):
                H.helper_malloc(555557)  # @inside
                if how == "sys_exit":
                    sys.exit(5)
                elif how == "exception":
                    raise ValueError("boom")
                elif how == "daemon_thread":
                    threading.Thread(target=churn, daemon=True).start()
                    time.sleep(0.2)
            time.sleep(0.05)
        """,
    )
    out = workdir / "shutdown.bin"
    res = run_py(s, out, how)
    assert_no_crash(res)
    expected_rc = {"sys_exit": 5, "exception": 1}.get(how, 0)
    assert res.returncode == expected_rc, res.describe()
    if how == "exception":
        assert "ValueError: boom" in res.stderr
    cap = reader.read(out, "all", "sizes=555557")  # the churn makes big captures: filter
    marker = "never_exited" if how == "never_exited" else "inside"
    assert top(cap.one(size=555557, allocator=MALLOC)) == [("<module>", s.path.name, s.line(marker))]


def test_sigkill_leaves_readable_capture(interp, script, memray_run, reader, workdir):
    s = script(
        "killed.py",
        """
        import os, sys, time
        import allochelper
        H = allochelper.load()

        def before_kill():
            for _ in range(5):
                H.helper_malloc(654323)  # @alloc

        before_kill()  # @call
        print(os.getpid(), flush=True)
        time.sleep(120)
        """,
    )
    out = workdir / "killed.bin"
    pid = sigkill_once_started(memray_run.cmd("--no-compress", "-q", "-o", out, s.path), cwd=workdir, env=memray_run.env)
    cap = reader.read(out, "all")
    recs = cap.find(size=654323, allocator=MALLOC)
    assert len(recs) == 5, recs
    for rec in recs:
        assert top(rec, 2) == [
            ("before_kill", s.path.name, s.line("alloc")),
            ("<module>", s.path.name, s.line("call")),
        ]
    assert cap.metadata["pid"] == pid


# --------------------------------------------------------------------------- fork

FORK_SCRIPT = (
    PRELUDE
    + """
follow = sys.argv[2] == "follow"

def child_work():
    H.helper_malloc(313133)  # @child

def parent_work():
    H.helper_malloc(424241)  # @parent

status = None
with memray.Tracker(OUT, follow_fork=follow):
    H.helper_malloc(212127)  # @before_fork
    pid = os.fork()
    if pid == 0:
        child_work()  # @child_call
    else:
        _, status = os.waitpid(pid, 0)
        parent_work()  # @parent_call
if pid == 0:
    os._exit(0)
print(json.dumps({"child": pid, "status": status}))
"""
)


def test_fork_without_follow_fork(interp, script, run_py, reader, workdir):
    s = script("fork.py", FORK_SCRIPT)
    out = workdir / "fork.bin"
    res = run_py(s, out, "nofollow")
    assert_no_crash(res)
    info = last_json(assert_ok(res))
    assert info["status"] == 0, f"child exited with wait status {info['status']}\n{res.describe()}"
    cap = reader.read(out, "all")
    assert top(cap.one(size=424241, allocator=MALLOC)) == [("parent_work", s.path.name, s.line("parent"))]
    assert top(cap.one(size=212127, allocator=MALLOC)) == [("<module>", s.path.name, s.line("before_fork"))]
    assert cap.find(size=313133) == [], "the child is not tracked without follow_fork"
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("fork.bin")) == ["fork.bin"]


def test_fork_with_follow_fork(interp, script, run_py, reader, workdir):
    s = script("fork.py", FORK_SCRIPT)
    out = workdir / "fork.bin"
    res = run_py(s, out, "follow")
    assert_no_crash(res)
    info = last_json(assert_ok(res))
    assert info["status"] == 0, f"child exited with wait status {info['status']}\n{res.describe()}"
    parent = reader.read(out, "all")
    child_file = Path(f"{out}.{info['child']}")
    assert child_file.exists(), f"expected {child_file.name}; found {sorted(p.name for p in workdir.iterdir())}"
    child = reader.read(child_file, "all")

    assert top(parent.one(size=424241, allocator=MALLOC)) == [("parent_work", s.path.name, s.line("parent"))]
    assert parent.find(size=313133) == []
    rec = child.one(size=313133, allocator=MALLOC)
    assert top(rec, 2) == [
        ("child_work", s.path.name, s.line("child")),
        ("<module>", s.path.name, s.line("child_call")),
    ]
    assert child.find(size=424241) == []
    assert child.metadata["pid"] == info["child"]
    assert parent.metadata["pid"] != info["child"]


SIZED_FREE_C = r"""
#include <stdlib.h>
/* C23, glibc 2.43+: declared here, as this machine's headers predate them. */
void free_sized(void *p, size_t size);
void free_aligned_sized(void *p, size_t align, size_t size);
void *sized_malloc(size_t n) { return malloc(n); }
void sized_free(void *p, size_t n) { free_sized(p, n); }
void *sized_aligned_alloc(size_t a, size_t n) { return aligned_alloc(a, n); }
void sized_aligned_free(void *p, size_t a, size_t n) { free_aligned_sized(p, a, n); }
"""


def test_frees_through_free_sized_are_recorded(interp, script, run_py, reader, workdir, tracked_env):
    """A block released with C23's free_sized or free_aligned_sized is freed in the
    capture exactly once: not leaked, not freed twice (both are hooked where the
    process's libc exports them, and glibc's own versions call free, hooked as well)."""
    probe = run([interp.executable, "-c", "import ctypes; ctypes.CDLL(None).free_sized"], env=tracked_env)
    if probe.returncode != 0:
        pytest.skip(f"{interp.id}: its C library has no free_sized (glibc 2.43+)")
    cc = c_compiler()
    (workdir / "sized.c").write_text(SIZED_FREE_C)
    lib = workdir / "libsized.so"
    assert_ok(run([cc, "-shared", "-fPIC", "-O0", "-fno-builtin", "-o", lib, workdir / "sized.c"], timeout=120))
    s = script("sized.py", PRELUDE, """
        import ctypes
        L = ctypes.CDLL(sys.argv[2])
        for name in ("sized_malloc", "sized_aligned_alloc"):
            getattr(L, name).restype = ctypes.c_void_p
        with memray.Tracker(OUT):
            # Both live at once, so the second cannot reuse the first one's address.
            p = L.sized_malloc(ctypes.c_size_t(424243))
            q = L.sized_aligned_alloc(ctypes.c_size_t(64), ctypes.c_size_t(424256))
            L.sized_free(ctypes.c_void_p(p), ctypes.c_size_t(424243))
            L.sized_aligned_free(ctypes.c_void_p(q), ctypes.c_size_t(64), ctypes.c_size_t(424256))
        print(json.dumps({"p": p, "q": q}))
        """)
    out = workdir / "sized.bin"
    info = last_json(assert_ok(run_py(s, out, lib)))
    cap = reader.read(out, "all", "leaks")
    for address, size in ((info["p"], 424243), (info["q"], 424256)):
        recs = [r for r in cap.records if r["address"] == address]
        assert [r["size"] for r in recs if r["allocator"] != FREE] == [size], recs
        # Exactly once: glibc's free_sized frees through free, which is hooked too.
        assert [r["allocator"] for r in recs].count(FREE) == 1, f"the free of {size} bytes: {recs}"
    assert not [r for r in cap.leaks if r["size"] in (424243, 424256)], cap.leaks
