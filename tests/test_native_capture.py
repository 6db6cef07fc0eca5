"""`--native` capture: native stacks recorded by our payload, read by Memray 1.20.

Each test runs a program that allocates through `nativeext` (tests/helpers/native_ext,
built per interpreter with -O0 -g) on lines tagged `ALLOC-LINE: <function>`, under known
Python frames. Memray 1.20's reader (the oracle) symbolizes the capture's native stacks
from its memory maps and merges them with the Python stacks (hybrid stacks): the C
function, file and line must appear, under the Python function that called it, and no
frame of our own hooks may.

Memray has no 3.8 build: there the capture is checked with our own `memray parse` (every
native id refers to an earlier node of the frame tree, and the allocation's innermost
frame lies inside nativeext's mapped segments).
"""
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from native_build import marker_line
import support  # noqa: E402
from support import run

pytestmark = pytest.mark.ours_only

ALLOC_SIZE = 123457
CALLBACK_SIZE = 98765
VECTOR_N = 5000

PROGRAM = """
import os, sys
import nativeext

def inner():
    return nativeext.alloc(%(ALLOC_SIZE)d)  # @inner

def outer():
    return inner()  # @outer

def callback():
    nativeext.alloc(%(CALLBACK_SIZE)d)  # @callback

def via_c():
    nativeext.call(callback, 64)  # @via_c

kept = [outer()]  # @module
via_c()
nativeext.vector(%(VECTOR_N)d)
""" % dict(ALLOC_SIZE=ALLOC_SIZE, CALLBACK_SIZE=CALLBACK_SIZE, VECTOR_N=VECTOR_N)

# Run with an oracle venv's python: native and hybrid stacks of the leaked records (the
# record kind both capture formats support), plus whether Memray calls the file native.
DUMP = r"""
import json, sys
import memray
out = {"records": []}
with memray.FileReader(sys.argv[1]) as reader:
    out["has_native_traces"] = reader.metadata.has_native_traces
    for rec in reader.get_leaked_allocation_records(merge_threads=False):
        out["records"].append({
            "size": rec.size,
            "allocator": int(rec.allocator),
            "native": [list(f) for f in rec.native_stack_trace()],
            "hybrid": [list(f) for f in rec.hybrid_stack_trace()],
            "python": [list(f) for f in rec.stack_trace()],
        })
json.dump(out, sys.stdout)
"""


def _line(text, marker):
    for n, line in enumerate(text.splitlines(), 1):
        if line.rstrip().endswith("# @" + marker):
            return n
    raise KeyError(marker)


@pytest.fixture
def native_env(tracked_env, native_ext):
    env = dict(tracked_env)
    env["PYTHONPATH"] = os.pathsep.join([str(native_ext), env["PYTHONPATH"]])
    return env


def _oracle_dump(interp, capture, workdir):
    py = support.nearest_oracle(interp.minor)
    if py is None:
        pytest.fail("no oracle venv: run scripts/setup-test-env")
    script = workdir / "native_dump.py"
    script.write_text(DUMP)
    res = run([py, script, capture], timeout=300)
    assert res.returncode == 0, "Memray 1.20 could not read %s\n%s" % (capture, res.describe())
    return json.loads(res.stdout)


def _one(dump, size):
    found = [r for r in dump["records"] if r["size"] == size]
    assert len(found) == 1, "expected one leaked record of %d bytes, got %s" % (size, found)
    return found[0]


def _names(frames):
    return [f[0] for f in frames]


def _where(frames, function):
    """(basename, line) of the first frame of `function`."""
    for f, filename, line in frames:
        if f == function:
            return os.path.basename(filename), line
    raise AssertionError("no frame %s in %s" % (function, frames))


def _assert_no_hook_frames(dump):
    for rec in dump["records"]:
        for f, filename, _ in rec["native"]:
            assert "memray_payload" not in f and "libmemray_payload" not in filename, (
                "a frame of our own hooks was recorded: %s" % rec["native"][:4])


def _check_stacks(dump, program_text, aggregated, hybrid=True):
    assert dump["has_native_traces"] is True
    _assert_no_hook_frames(dump)

    # nativeext.alloc: two C frames deep, on the marked lines, called from inner().
    rec = _one(dump, ALLOC_SIZE)
    native = rec["native"]
    assert _names(native)[:3] == ["nativeext_leaf_malloc", "nativeext_middle", "nativeext_alloc"], native[:6]
    assert _where(native, "nativeext_leaf_malloc") == ("nativeext.c", marker_line("nativeext_leaf_malloc"))
    assert _where(native, "nativeext_middle") == ("nativeext.c", marker_line("nativeext_middle", "CALL-LINE"))
    if hybrid:
        hybrid = rec["hybrid"]
        names = _names(hybrid)
        assert names[:3] == ["nativeext_leaf_malloc", "nativeext_middle", "nativeext_alloc"], hybrid[:8]
        # The Python frames replace the interpreter's eval loops, in order, under the C ones.
        py = [(f, line) for f, filename, line in hybrid if filename.endswith("prog.py")]
        assert py[:3] == [("inner", _line(program_text, "inner")), ("outer", _line(program_text, "outer")),
                          ("<module>", _line(program_text, "module"))], hybrid
        assert names.index("inner") > names.index("nativeext_alloc")
        assert not any("_PyEval_EvalFrameDefault" in n for n in names[: names.index("inner")]), hybrid

        # nativeext.call(callback): Python -> C -> Python -> C. The hybrid stack interleaves them.
        rec = _one(dump, CALLBACK_SIZE)
        names = _names(rec["hybrid"])
        order = [names.index(n) for n in ("nativeext_alloc", "callback", "nativeext_call", "via_c")]
        assert order == sorted(order), rec["hybrid"]

    # C++: std::vector growth goes through operator new, called from the marked line.
    vec = [r for r in dump["records"] if "nativeext_vector_grow" in _names(r["native"])]
    assert vec, "no allocation under nativeext_vector_grow"
    grow = max(vec, key=lambda r: r["size"])
    assert any(n.startswith("operator new") for n in _names(grow["native"])), grow["native"][:8]
    assert _where(grow["native"], "nativeext_vector_grow") == ("nativeext_vector.cpp", marker_line("nativeext_vector_grow"))


def _parse_native(memray_cli, capture, skip_mmap=False):
    """(frame tree nodes [(ip, parent)], memory maps [[file, load addr, [(vaddr, memsz)]]],
    allocations [(size, native id)], without mmap's if `skip_mmap`) of a capture, read
    with our `memray parse`."""
    res = memray_cli("parse", capture)
    assert res.returncode == 0, res.describe()
    nodes, maps, allocs = [], [], []
    for line in res.stdout.splitlines():
        if line.startswith("NATIVE_FRAME_ID"):
            m = re.search(r"ip=(0x[0-9a-f]+) index=(\d+)", line)
            nodes.append((int(m.group(1), 16), int(m.group(2))))
        elif line.startswith("SEGMENT_HEADER"):
            m = re.search(r"filename=(.*) num_segments=(\d+) addr=(0x[0-9a-f]+|\(nil\))", line)
            maps.append([m.group(1), 0 if m.group(3) == "(nil)" else int(m.group(3), 16), []])
        elif line.startswith("SEGMENT "):
            _, vaddr, memsz = line.split()  # "SEGMENT 0x1000 155" (hex; "(nil)" for 0)
            maps[-1][2].append((0 if vaddr == "(nil)" else int(vaddr, 16), int(memsz, 16)))
        elif line.startswith("ALLOCATION") and "native_frame_id=" in line:
            if skip_mmap and "allocator=mmap" in line:
                continue
            size = int(re.search(r"size=(\d+)", line).group(1))
            allocs.append((size, int(re.search(r"native_frame_id=(\d+)", line).group(1))))
    return nodes, maps, allocs


def _parse_check_38(memray_cli, capture):
    """Without Memray (3.8): the frame tree is consistent and the leaf is in nativeext."""
    nodes, maps, allocs = _parse_native(memray_cli, capture)
    assert nodes, "no NATIVE_TRACE_INDEX records"
    for i, (_, parent) in enumerate(nodes, 1):
        assert parent < i, "node %d has parent %d, not an earlier node" % (i, parent)
    for size, nid in allocs:
        assert nid <= len(nodes)
    leaf = [nid for size, nid in allocs if size == ALLOC_SIZE]
    assert len(leaf) == 1 and leaf[0] > 0
    ip = nodes[leaf[0] - 1][0]
    ext = [m for m in maps if "nativeext" in m[0]]
    assert ext, "nativeext is not in any memory map"
    assert any(m[1] + v <= ip < m[1] + v + s for m in ext for v, s in m[2]), "leaf ip %#x not in nativeext" % ip


@pytest.mark.parametrize("flags", [(), ("--aggregate",)], ids=["all", "aggregate"])
def test_run_native_stacks(interp, script, memray_run, memray_cli, native_env, workdir, flags):
    s = script("prog.py", PROGRAM)
    out = workdir / "out.bin"
    res = run(memray_run.cmd("--native", "-q", *flags, "-o", out, s.path), cwd=workdir, env=native_env, timeout=300)
    assert res.returncode == 0, res.describe()
    if interp.minor < 9:
        if flags:
            pytest.skip("3.8: no Memray reader to check an aggregated capture with (the stream form is checked)")
        _parse_check_38(memray_cli, out)
        return
    dump = _oracle_dump(interp, out, workdir)
    no_hybrid = support.hybrid_unavailable(interp)
    _check_stacks(dump, s.text, aggregated=bool(flags), hybrid=no_hybrid is None)
    if not flags:
        # `memray stats` of a native capture: ours agrees with Memray's.
        ours = memray_cli("stats", "--json", "-f", "-o", workdir / "ours.json", out)
        assert ours.returncode == 0, ours.describe()
        py = support.nearest_oracle(interp.minor)
        theirs = run([py, "-m", "memray", "stats", "--json", "-f", "-o", workdir / "theirs.json", out], timeout=300)
        assert theirs.returncode == 0, theirs.describe()
        a = json.loads((workdir / "ours.json").read_text())
        b = json.loads((workdir / "theirs.json").read_text())
        for key in ("total_num_allocations", "total_bytes_allocated", "allocator_type_distribution",
                    "allocation_size_histogram", "top_allocations_by_size"):
            assert a[key] == b[key], "%s: ours %s != Memray %s" % (key, a[key], b[key])
        assert a["metadata"]["peak_memory"] == b["metadata"]["peak_memory"]
    if no_hybrid:
        pytest.skip(no_hybrid)



def _nativeext_offsets(memray_cli, capture):
    """The recorded addresses in nativeext on the native stacks of the capture's
    malloc-family allocations, relative to its load address. mmap records are left out:
    pymalloc maps an arena on whichever allocation finds the last one full (it can be the
    module object PyInit_nativeext makes), and each tool's start-up shifts that."""
    nodes, maps, allocs = _parse_native(memray_cli, capture, skip_mmap=True)
    ext = [m for m in maps if "nativeext" in m[0]]
    assert ext, "nativeext is not in any memory map of %s" % capture
    on_stacks = set()
    for _, nid in allocs:
        while nid and nid not in on_stacks:
            on_stacks.add(nid)
            nid = nodes[nid - 1][1]
    ips = {nodes[nid - 1][0] for nid in on_stacks}
    return {ip - m[1] for ip in ips for m in ext if any(m[1] + v <= ip < m[1] + v + sz for v, sz in m[2])}


def test_recorded_addresses_are_memrays(interp, script, memray_run, memray_cli, native_env, workdir):
    """The same program under Memray 1.20 and under ours records the same addresses in
    nativeext (return addresses minus one, as Memray stores them): same bytes, same
    symbolization by any reader."""
    if interp.minor not in support.ORACLE_MINORS:
        pytest.skip(f"3.{interp.minor}: Memray 1.20 cannot record the reference capture")
    s = script("prog.py", PROGRAM)
    ours, theirs = workdir / "ours.bin", workdir / "theirs.bin"
    res = run(memray_run.cmd("--native", "-q", "-o", ours, s.path), cwd=workdir, env=native_env, timeout=300)
    assert res.returncode == 0, res.describe()
    py = support.oracle_python(interp.minor)
    env = dict(native_env)
    env["PYTHONPATH"] = env["PYTHONPATH"].split(os.pathsep)[0]  # nativeext only, not our memray package
    res = run([py, "-m", "memray", "run", "--native", "-q", "-o", theirs, s.path], cwd=workdir, env=env, timeout=300)
    assert res.returncode == 0, res.describe()
    a, b = _nativeext_offsets(memray_cli, ours), _nativeext_offsets(memray_cli, theirs)
    assert a and a == b, "ours %s != Memray %s" % (sorted(map(hex, a)), sorted(map(hex, b)))

TRACKER_PROGRAM = """
import os, sys, time
import memray, nativeext

def child_work():
    nativeext.alloc(%(CHILD)d)  # @child

def main(out):
    with memray.Tracker(out, native_traces=True, follow_fork=True, trace_python_allocators=True):
        keep = nativeext.alloc(%(PARENT)d)  # @parent
        objs = [object() for _ in range(1000)]
        pid = os.fork()
        if pid == 0:
            child_work()
            time.sleep(0.2)  # os._exit skips the tracker's stop: let the sampler flush
            os._exit(0)
        os.waitpid(pid, 0)
    print(pid)

main(sys.argv[1])
""" % dict(CHILD=77777, PARENT=66666)


def test_tracker_native_follow_fork_and_python_allocators(interp, script, native_env, workdir):
    s = script("tracked.py", TRACKER_PROGRAM)
    out = workdir / "t.bin"
    res = run([interp.executable, s.path, out], cwd=workdir, env=native_env, timeout=300)
    assert res.returncode == 0, res.describe()
    child = Path("%s.%s" % (out, res.stdout.strip().splitlines()[-1]))
    assert child.exists(), "follow_fork wrote no child capture"
    if interp.minor < 9:
        pytest.skip("3.8: Memray 1.20 has no reader for it (the run itself succeeded, parent and child files exist)")
    parent_dump = _oracle_dump(interp, out, workdir)
    _assert_no_hook_frames(parent_dump)
    rec = _one(parent_dump, 66666)
    assert _where(rec["native"], "nativeext_leaf_malloc") == ("nativeext.c", marker_line("nativeext_leaf_malloc"))
    assert ("main", s.line("parent")) in [(f, ln) for f, fn, ln in rec["hybrid"] if fn.endswith("tracked.py")]
    pymalloc = [r for r in parent_dump["records"] if r["allocator"] in (2, 3, 4)]
    assert pymalloc, "no PYMALLOC records with trace_python_allocators"
    assert all(r["native"] for r in pymalloc), "a pymalloc allocation has no native stack"
    child_dump = _oracle_dump(interp, child, workdir)
    rec = _one(child_dump, 77777)
    assert _names(rec["native"])[:2] == ["nativeext_leaf_malloc", "nativeext_middle"]
    assert "child_work" in _names(rec["hybrid"])


ATTACH_TARGET = """
import os, sys, time
import nativeext
WORK = sys.argv[1]

def loop():
    while not os.path.exists(os.path.join(WORK, "stop")):
        nativeext.free(nativeext.alloc(%(SIZE)d))  # @loop
        time.sleep(0.002)

open(os.path.join(WORK, "ready"), "w").close()
loop()
""" % dict(SIZE=54321)


def test_attach_native(interp, script, memray_cli, native_env, workdir):
    s = script("target.py", ATTACH_TARGET)
    proc = subprocess.Popen([interp.executable, str(s.path), str(workdir)], cwd=workdir, env=native_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        while not (workdir / "ready").exists():
            assert proc.poll() is None and time.time() < deadline, "target did not start"
            time.sleep(0.02)
        out = workdir / "a.bin"
        res = memray_cli("attach", "--native", "-o", out, str(proc.pid), timeout=120)
        if res.returncode != 0 and "ptrace" in res.output.lower() and "permit" in res.output.lower():
            pytest.skip("ptrace is not permitted here: " + res.output.strip().splitlines()[-1])
        assert res.returncode == 0, res.describe()
        time.sleep(0.5)
        res = memray_cli("detach", str(proc.pid), timeout=120)
        assert res.returncode == 0, res.describe()
    finally:
        (workdir / "stop").write_text("")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, "the target did not survive the attach"
    if interp.minor < 9:
        _parse_check_38_attach(memray_cli, out)
        return
    py = support.nearest_oracle(interp.minor)
    code = ("import memray,sys,json\n"
            "r=memray.FileReader(sys.argv[1])\n"
            "recs=[x for x in r.get_allocation_records() if x.size==54321]\n"
            "print(json.dumps([[list(f) for f in x.%s()] for x in recs[:3]]))\n")
    no_hybrid = support.hybrid_unavailable(interp)
    res = run([py, "-c", code % ("native_stack_trace" if no_hybrid else "hybrid_stack_trace"), out], timeout=300)
    assert res.returncode == 0, res.describe()
    stacks = json.loads(res.stdout)
    assert stacks, "no allocation of the target recorded"
    if no_hybrid:
        for native in stacks:
            assert _names(native)[:3] == ["nativeext_leaf_malloc", "nativeext_middle", "nativeext_alloc"], native[:6]
        pytest.skip(no_hybrid)
    for hybrid in stacks:
        assert _names(hybrid)[:3] == ["nativeext_leaf_malloc", "nativeext_middle", "nativeext_alloc"], hybrid[:6]
        assert ("loop", s.line("loop")) in [(f, ln) for f, fn, ln in hybrid if fn.endswith("target.py")]


def _parse_check_38_attach(memray_cli, out):
    res = memray_cli("parse", out)
    assert res.returncode == 0, res.describe()
    assert "native_traces=true" in res.stdout
    assert re.search(r"ALLOCATION .*size=54321 .*native_frame_id=[1-9]", res.stdout), "no native id on the target's allocation"
