"""Greenlets: each is a thread of its own in the capture, with its own stack, as in Memray,
whether greenlet was imported before tracking started or while it runs (the tracker then
sees the import and follows from there). The captures are read with Memray 1.20's reader.

greenlet's wheel for each CPython is in .venvs/greenlet/3.X (scripts/setup-test-env).
"""
import os

import pytest

from support import VENVS, assert_ok, run, top

PROGRAM = """
import sys
import memray
import allochelper
H = allochelper.load()
{import_before}
def alloc_in_a(n):
    return H.helper_malloc(n)  # @a

def alloc_in_b(n):
    return H.helper_malloc(n)  # @b

def body_a():
    alloc_in_a(111_111)
    gb.switch()
    alloc_in_a(222_222)  # @a2
    gb.switch()

def body_b():
    alloc_in_b(333_333)
    ga.switch()
    alloc_in_b(444_444)  # @b2
    main.switch()

def finished():
    H.helper_malloc(666_666)  # @finished

with memray.Tracker(sys.argv[1]):
    {import_during}
    main = greenlet.getcurrent()
    ga = greenlet.greenlet(body_a)
    gb = greenlet.greenlet(body_b)
    ga.switch()
    greenlet.greenlet(finished).switch()
    H.helper_malloc(555_555)  # @main
"""


@pytest.mark.parametrize("when", ["imported-before", "imported-during"])
def test_each_greenlet_is_a_thread_with_its_own_stack(interp, script, tracked_env, reader, workdir, when):
    site = VENVS / "greenlet" / ("3.%d" % interp.minor)
    if not site.exists():
        pytest.skip("no greenlet for %s (scripts/setup-test-env installs its wheel)" % interp.id)
    before = when == "imported-before"
    s = script("greenlets.py", PROGRAM.format(import_before="import greenlet" if before else "",
                                              import_during="" if before else "import greenlet"))
    env = dict(tracked_env, PYTHONPATH=tracked_env["PYTHONPATH"] + os.pathsep + str(site))
    out = workdir / "greenlets.bin"
    assert_ok(run([interp.executable, s.path, out], cwd=workdir, env=env))
    cap = reader.read(out, "all")
    rec = {size: cap.one(size=size) for size in (111_111, 222_222, 333_333, 444_444, 555_555, 666_666)}
    tid = {size: r["tid"] for size, r in rec.items()}
    # The main greenlet is the thread that started tracking; each other greenlet a thread of
    # its own, the same one each time it runs again.
    assert tid[111_111] == tid[222_222] and tid[333_333] == tid[444_444], tid
    assert len({tid[555_555], tid[111_111], tid[333_333], tid[666_666]}) == 4, tid
    # Each with its own stack, not the stack of the greenlet that ran before it.
    assert top(rec[222_222], 2) == [("alloc_in_a", "greenlets.py", s.line("a")),
                                    ("body_a", "greenlets.py", s.line("a2"))], rec[222_222]
    assert top(rec[444_444], 2) == [("alloc_in_b", "greenlets.py", s.line("b")),
                                    ("body_b", "greenlets.py", s.line("b2"))], rec[444_444]
    assert top(rec[555_555]) == [("<module>", "greenlets.py", s.line("main"))]
    assert top(rec[666_666]) == [("finished", "greenlets.py", s.line("finished"))]
