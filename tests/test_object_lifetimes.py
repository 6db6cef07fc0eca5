"""Object lifetime tracking: `Tracker(track_object_lifetimes=True)`,
`Tracker.get_surviving_objects()` and `FileReader.get_object_lifetime_events()`.

CPython's reference tracer is complete from 3.13.3: on every interpreter here that is at
least that (Debian sid's 3.14 and 3.15, shared and static) the objects are followed; on the
older ones the Tracker refuses the option. Memray 1.20's reader (oracle-3.14) reads the
captures and must see the same events as ours.
"""
import json
import sys

import pytest

from support import assert_ok, nearest_oracle, run

PROGRAM = """
import json, sys
import memray

class Thing:
    pass

KEPT = []

def make(n):
    for _ in range(n):
        KEPT.append(Thing())  # @kept

def churn():
    for _ in range(50):
        Thing()  # @churn

tracker = memray.Tracker(sys.argv[1], track_object_lifetimes=True, file_format=getattr(memray.FileFormat, sys.argv[2]))
errors = []
try:
    tracker.get_surviving_objects()
except RuntimeError as e:
    errors.append(str(e))
with tracker:
    make(5)  # @call
    churn()
    mapping = {"key": [1, 2, 3]}  # @mapping
    try:
        tracker.get_surviving_objects()
    except RuntimeError as e:
        errors.append(str(e))
survivors = tracker.get_surviving_objects()
empty = memray.Tracker(sys.argv[1] + ".empty", track_object_lifetimes=True)
with empty:
    pass
plain = memray.Tracker(sys.argv[1] + ".plain")
with plain:
    pass
try:
    plain.get_surviving_objects()
except RuntimeError as e:
    errors.append(str(e))
print(json.dumps({
    "survivors": sorted(type(o).__name__ for o in survivors),
    "kept_alive": sum(any(o is k for k in KEPT) for o in survivors),
    "mapping_found": any(o is mapping for o in survivors),
    "is_tuple": type(survivors).__name__,
    "empty": list(empty.get_surviving_objects()),
    "errors": errors,
    "addresses": {"kept": [id(k) for k in KEPT], "mapping": id(mapping)},
}))
"""

EVENTS = """
import collections, json, sys
import memray
reader = memray.FileReader(sys.argv[1])
events = []
for e in reader.get_object_lifetime_events():
    events.append([e.tid, e.address, e.is_created, [list(f) for f in e.stack_trace()] if e.is_created else None])
print(json.dumps(events))
"""


def has_reference_tracer(interp) -> bool:
    res = run([interp.executable, "-c", "import sys; print(sys.version_info >= (3, 13, 3))"])
    return res.stdout.strip() == "True"


def lifetimes_program(script, interp):
    if not has_reference_tracer(interp):
        pytest.skip(f"{interp.id}: CPython's reference tracer is complete from 3.13.3 only (the option's refusal "
                    "is tested there)")
    return script("lifetimes.py", PROGRAM)


def test_surviving_objects(interp, script, run_py, workdir):
    s = lifetimes_program(script, interp)
    info = json.loads(assert_ok(run_py(s, workdir / "objects.bin", "ALL_ALLOCATIONS")).stdout)
    # The five objects kept and the dict with its list: nothing churned, nothing of memray's.
    assert info["survivors"] == ["Thing"] * 5 + ["dict", "list"], info
    assert info["kept_alive"] == 5 and info["mapping_found"], info
    assert info["is_tuple"] == "tuple" and info["empty"] == [], info
    assert info["errors"] == [
        "Tracking was never started or has not finished yet or failed.",
        "Tracking was never started or has not finished yet or failed.",
        "track_object_lifetimes=True was not provided at Tracker construction",
    ], info


@pytest.mark.parametrize("file_format", ["ALL_ALLOCATIONS", "AGGREGATED_ALLOCATIONS"])
def test_object_lifetime_events_as_memray_reads_them(interp, script, run_py, workdir, tracked_env, file_format):
    s = lifetimes_program(script, interp)
    out = workdir / "objects.bin"
    info = json.loads(assert_ok(run_py(s, out, file_format)).stdout)
    events_py = workdir / "events.py"
    events_py.write_text(EVENTS)
    ours = json.loads(assert_ok(run([interp.executable, events_py, out], env=tracked_env)).stdout)
    created = [e for e in ours if e[2]]
    by_address = {e[1]: e for e in created}
    kept = [by_address.get(a) for a in info["addresses"]["kept"]]
    assert all(kept), (info, created[:10])
    if file_format == "ALL_ALLOCATIONS":
        # Each creation with the stack that made it; every churned object also ends.
        assert kept[0][3][:2] == [["make", str(s.path), s.line("kept")], ["<module>", str(s.path), s.line("call")]]
        assert by_address[info["addresses"]["mapping"]][3][0] == ["<module>", str(s.path), s.line("mapping")]
        churned = [e for e in created if e[3] and e[3][0] == ["churn", str(s.path), s.line("churn")]]
        assert len(churned) == 50, created
        ended = {e[1] for e in ours if not e[2]}
        assert all(e[1] in ended for e in churned)
    else:
        # An aggregated capture keeps the objects alive at the end (the survivors), with no stack.
        assert info["addresses"]["mapping"] in by_address, created
        assert len(ours) == len(created) == 7 and all(e[3] == [] for e in created), ours

    oracle = nearest_oracle(interp.minor)
    if oracle is None or interp.minor < 14:
        pytest.skip("no Memray 1.20 for Python 3.14+ here to read the capture with")
    theirs = json.loads(assert_ok(run([oracle, events_py, out])).stdout)
    assert theirs == ours


def test_track_object_lifetimes_needs_3_13_3(interp, script, run_py, workdir):
    if has_reference_tracer(interp):
        pytest.skip(f"{interp.id} has the reference tracer (its tracking is tested above)")
    s = script("refused.py", """
import sys, memray
try:
    memray.Tracker(sys.argv[1], track_object_lifetimes=True)
except RuntimeError as e:
    print("refused:", e)
""")
    res = assert_ok(run_py(s, workdir / "refused.bin"))
    assert "refused: track_object_lifetimes requires Python 3.13.3 or later" in res.stdout, res.describe()
    assert not (workdir / "refused.bin").exists()


def test_a_fork_child_of_a_lifetime_tracking_program_runs_on(interp, script, run_py, workdir):
    """A child forked while objects are followed (no follow_fork) stops following them and
    runs as the program would; the parent's survivors are its own."""
    s = lifetimes_program(script, interp)
    s = script("forks.py", """
import gc, json, os, sys
import memray

class Thing:
    pass

KEPT = []
tracker = memray.Tracker(sys.argv[1], track_object_lifetimes=True)
with tracker:
    KEPT.append(Thing())
    pid = os.fork()
    if pid == 0:
        objs = [Thing() for _ in range(1000)]
        del objs
        gc.collect()
        os._exit(7)
    _, status = os.waitpid(pid, 0)
survivors = tracker.get_surviving_objects()
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "things": sum(isinstance(o, Thing) for o in survivors)}))
""")
    info = json.loads(assert_ok(run_py(s, workdir / "fork.bin")).stdout)
    assert info == {"code": 7, "things": 1}, info
