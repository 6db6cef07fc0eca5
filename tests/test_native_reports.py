"""Native stacks in the reporter: symbolization and hybrid stacks, against Memray 1.20.

Captures are made with `--native` by Memray 1.20 itself (the oracle venvs), on a script
that calls the `nativeext` C/C++ extension (tests/helpers/native_ext, built -O0 -g for
the interpreter under test), so each report must show the extension's functions at the
lines tagged in its sources. On the same capture:
* `FileReader(...).get_allocation_records()`: `native_stack_trace()` and
  `hybrid_stack_trace()` of every allocation equal Memray's (function, file, line), but
  for a bounded number of frames libbacktrace cannot symbolize and we can;
* the C extension's frames, and a `std::vector` growth's `operator new` callers, appear
  where they ran, between the Python frames that called them;
* `memray tree`, `summary`, `flamegraph` and `table` show the hybrid stacks, native
  frames marked;
* a capture whose extension file has gone still renders, with one warning line naming
  it and the frames as addresses.

This project's own `memray run --native` captures are checked on every interpreter
(3.8 and Debian's static 3.11 included): extension frames, lines and hybrid order.
Comparisons with Memray run on 3.9-3.14 (Memray 1.20 supports no older one and has no
3.15 wheel; its `_memray` module is built for the shared interpreters, not for the
static ones).
"""
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from native_build import marker_line
import support  # noqa: E402
from support import REPO, VENVS, assert_ok, run

pytestmark = pytest.mark.ours_only

SCRIPT = """
import nativeext

def inner():
    return nativeext.alloc(123457)

def callback():
    nativeext.alloc(99991)

def outer():
    a = inner()
    nativeext.call(callback, 77773)
    nativeext.vector(5000)
    return a

outer()
"""

DUMP = """
import json, sys
import memray

out = []
with memray.FileReader(sys.argv[1]) as reader:
    for r in reader.get_allocation_records():
        if r.allocator in (memray.AllocatorType.FREE, memray.AllocatorType.MUNMAP):
            continue
        out.append({
            "size": r.size,
            "python": [list(f) for f in r.stack_trace()],
            "native": [list(f) for f in r.native_stack_trace()],
            "native3": [list(f) for f in r.native_stack_trace(max_stacks=3)],
            "hybrid": [list(f) for f in r.hybrid_stack_trace()],
            "hybrid2": [list(f) for f in r.hybrid_stack_trace(max_stacks=2)],
        })
json.dump(out, open(sys.argv[2], "w"))
"""

SIZES = {"inner": 123457, "callback": 99991, "call": 77773}


def _oracle_python(interp):
    if interp.static or interp.minor not in support.ORACLE_MINORS:
        pytest.skip(f"{interp.id}: no Memray 1.20 --native capture for this interpreter "
                    "(needs this project's own --native capture)")
    py = VENVS / f"oracle-3.{interp.minor}" / "bin" / "python"
    if not py.exists():
        pytest.fail(f"{py} missing: run scripts/setup-test-env")
    return py


@pytest.fixture
def memray_capture(interp, native_ext, workdir):
    """A --native capture of SCRIPT written by Memray 1.20 under `interp`'s version."""
    py = _oracle_python(interp)
    script = workdir / "native_script.py"
    script.write_text(SCRIPT)
    out = workdir / "native.bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MEMRAY_"))}
    env["PYTHONPATH"] = str(native_ext)
    res = run([py, "-m", "memray", "run", "--native", "-f", "-o", out, script], cwd=workdir, env=env, timeout=300)
    assert_ok(res)
    return out


def _dump(python, capture, workdir, name, env_extra):
    dump = workdir / "dump_native.py"
    dump.write_text(DUMP)
    out = workdir / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MEMRAY_"))}
    env.update(env_extra)
    res = run([python, dump, capture, out], cwd=workdir, env=env, timeout=300)
    assert_ok(res)
    return json.loads(out.read_text())


def _ours(build, capture, workdir):
    env = {"PYTHONPATH": str(REPO / "python"), "MEMRAY_BIN": str(build.binary)}
    return _dump(sys.executable, capture, workdir, "ours", env)


def _by_size(records, size):
    found = [r for r in records if r["size"] == size]
    assert len(found) == 1, f"expected one record of {size} bytes, got {len(found)}"
    return found[0]


def _names(stack):
    return [f[0] for f in stack]


def test_native_and_hybrid_stacks_match_memray(interp, build, memray_capture, workdir):
    theirs = _dump(_oracle_python(interp), memray_capture, workdir, "theirs", {})
    ours = _ours(build, memray_capture, workdir)
    assert [r["size"] for r in ours] == [r["size"] for r in theirs]
    assert all(r["native"] for r in ours), "every allocation has a native stack"
    total = differing = 0
    for o, t in zip(ours, theirs):
        assert o["python"] == t["python"]
        assert _names(o["native"]) == _names(t["native"]), "same native functions, same inlining"
        assert _names(o["hybrid"]) == _names(t["hybrid"]), "same hybrid interleaving"
        assert o["native3"] == o["native"][: len(o["native3"])] and _names(o["native3"]) == _names(t["native3"])
        assert o["hybrid2"] == o["hybrid"][:2]
        for a, b in zip(o["native"], t["native"]):
            total += 1
            differing += a != b
    # libbacktrace finds no line for a few interpreter addresses (it shows them as
    # "<unknown>", 0) where the DWARF has one; every other frame must be identical.
    assert total > 1000
    assert differing <= total // 100, f"{differing} of {total} native frames differ from Memray's"
    for size in SIZES.values():
        assert _by_size(ours, size)["native"] == _by_size(theirs, size)["native"]
        assert _by_size(ours, size)["hybrid"] == _by_size(theirs, size)["hybrid"]


def test_extension_frames_and_lines(interp, build, memray_capture, workdir):
    ours = _ours(build, memray_capture, workdir)
    rec = _by_size(ours, SIZES["inner"])
    leaf, middle, entry = rec["native"][:3]
    assert (leaf[0], os.path.basename(leaf[1]), leaf[2]) == (
        "nativeext_leaf_malloc", "nativeext.c", marker_line("nativeext_leaf_malloc"))
    assert (middle[0], middle[2]) == ("nativeext_middle", marker_line("nativeext_middle", "CALL-LINE"))
    assert entry[0] == "nativeext_alloc"
    hybrid = _names(rec["hybrid"])
    # C frames, then the Python frames that called them, in the order they ran.
    i = hybrid.index("nativeext_alloc")
    assert hybrid[:3] == ["nativeext_leaf_malloc", "nativeext_middle", "nativeext_alloc"]
    assert hybrid.index("inner") > i and hybrid.index("outer") > hybrid.index("inner")
    assert "_PyEval_EvalFrameDefault" not in hybrid[: hybrid.index("outer")]
    # A C frame between two Python frames: callback() ran inside nativeext.call().
    hybrid = _names(_by_size(ours, SIZES["callback"])["hybrid"])
    assert hybrid.index("nativeext_leaf_malloc") < hybrid.index("callback") < hybrid.index("nativeext_call") \
        < hybrid.index("outer")


def test_vector_growth_shows_operator_new_callers(interp, build, memray_capture, workdir):
    ours = _ours(build, memray_capture, workdir)
    grows = [r for r in ours if r["native"] and r["native"][0][0].startswith("operator new")]
    assert grows, "no allocation made by operator new"
    rec = max(grows, key=lambda r: r["size"])
    names = _names(rec["native"])
    assert any("push_back" in n for n in names), names
    grow = rec["native"][names.index("nativeext_vector_grow")]
    assert (os.path.basename(grow[1]), grow[2]) == (
        "nativeext_vector.cpp", marker_line("nativeext_vector_grow"))
    # Inlined/templated callers keep their headers' files and lines.
    push_back = rec["native"][next(i for i, n in enumerate(names) if "push_back" in n)]
    assert push_back[1].endswith("stl_vector.h") and push_back[2] > 0
    assert _names(rec["hybrid"]).index("nativeext_vector") < _names(rec["hybrid"]).index("outer")


def test_reports_show_native_frames(interp, build, memray_capture, workdir):
    cli = lambda *a: run([build.binary, *map(str, a)], cwd=workdir, timeout=300)  # noqa: E731
    tree = assert_ok(cli("tree", memray_capture)).stdout
    line = next(l for l in tree.splitlines() if "nativeext_leaf_malloc" in l)
    assert f"nativeext.c:{marker_line('nativeext_leaf_malloc')}" in line and line.endswith("[native]")
    assert not any(l.rstrip().endswith("[native]") for l in tree.splitlines() if "native_script" in l)
    summary = assert_ok(cli("summary", memray_capture)).stdout
    assert "[native]" in summary
    html = workdir / "fg.html"
    assert_ok(cli("flamegraph", "-f", "-o", html, memray_capture))
    page = html.read_text()
    assert "nativeext_vector_grow" in page and "native-legend" in page
    data = json.loads(re.search(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S).group(1)
                      .replace("\\u003c", "<"))
    strings, tree_json = data["strings"], data["tree"]
    leaf = [i for i, f in enumerate(tree_json["fn"]) if strings[f] == "nativeext_leaf_malloc"]
    assert leaf and all(tree_json["flags"][i] & 32 for i in leaf), "native frames flagged"
    py = [i for i, f in enumerate(tree_json["fn"]) if strings[f] == "inner"]
    assert py and not any(tree_json["flags"][i] & 32 for i in py)
    table = workdir / "table.html"
    assert_ok(cli("table", "-f", "-o", table, memray_capture))
    data = json.loads(re.search(r'<script type="application/json"[^>]*>(.*?)</script>', table.read_text(), re.S)
                      .group(1).replace("\\u003c", "<"))
    native = {data["strings"][i] for i in data["native_locations"]}
    assert any(s.startswith("nativeext_leaf_malloc at ") for s in native)


def test_missing_library_warns_and_shows_addresses(interp, build, native_ext, workdir):
    py = _oracle_python(interp)
    moved = workdir / "gone"
    shutil.copytree(native_ext, moved)
    script = workdir / "native_script.py"
    script.write_text(SCRIPT)
    out = workdir / "gone.bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MEMRAY_"))}
    env["PYTHONPATH"] = str(moved)
    assert_ok(run([py, "-m", "memray", "run", "--native", "-f", "-o", out, script], cwd=workdir, env=env, timeout=300))
    so = next(moved.glob("nativeext*.so"))
    so.unlink()
    res = assert_ok(run([build.binary, "tree", out], cwd=workdir, timeout=300))
    warnings = [l for l in res.stderr.splitlines() if "could not read" in l]
    assert len(warnings) == 1 and str(so) in warnings[0], res.stderr
    assert re.search(r"0x[0-9a-f]+  " + re.escape(str(so)), res.stdout), res.stdout


def test_own_native_capture_is_symbolized(interp, build, native_ext, memray_run, tracked_env, workdir):
    script = workdir / "native_script.py"
    script.write_text(SCRIPT)
    out = workdir / "own.bin"
    memray_run.env = dict(tracked_env, PYTHONPATH=tracked_env["PYTHONPATH"] + os.pathsep + str(native_ext))
    assert_ok(memray_run("--native", "-f", "-o", out, script))
    ours = _ours(build, out, workdir)
    rec = _by_size(ours, SIZES["inner"])
    leaf = rec["native"][0]
    assert (leaf[0], os.path.basename(leaf[1]), leaf[2]) == (
        "nativeext_leaf_malloc", "nativeext.c", marker_line("nativeext_leaf_malloc"))
    no_hybrid = support.hybrid_unavailable(interp)
    if no_hybrid:
        assert _names(rec["native"])[:3] == ["nativeext_leaf_malloc", "nativeext_middle", "nativeext_alloc"]
        pytest.skip(no_hybrid)
    hybrid = _names(rec["hybrid"])
    assert hybrid[:3] == ["nativeext_leaf_malloc", "nativeext_middle", "nativeext_alloc"]
    assert hybrid.index("nativeext_alloc") < hybrid.index("inner") < hybrid.index("outer")
    hybrid = _names(_by_size(ours, SIZES["callback"])["hybrid"])
    assert hybrid.index("callback") < hybrid.index("nativeext_call") < hybrid.index("outer")
    tree = assert_ok(run([build.binary, "tree", out], cwd=workdir, timeout=300)).stdout
    assert any("nativeext_leaf_malloc" in l and l.endswith("[native]") for l in tree.splitlines())
