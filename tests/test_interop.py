"""Interoperability with Memray 1.20 (the oracle), for every interpreter it supports.

Memray 1.20's own tools read this project's captures and must report the same
numbers as this project's reader. Memray 1.20 has no Python 3.8 build, so
these tests skip there (the `oracle` fixture).
"""
import json
import re

import pytest

from support import MALLOC, MMAP, REALLOC, SELF_CHECK, assert_clean_error, assert_ok, top

WORKLOAD = """
import threading
import allochelper
H = allochelper.load()

def keep():
    kept = []
    for _ in range(4):
        kept.append(H.helper_malloc(50021))  # @keep
    return kept

def temp():
    for _ in range(6):
        p = H.helper_malloc(70001)  # @temp
        H.helper_free(p)

def grow():
    p = H.helper_malloc(1000)
    return H.helper_realloc(p, 90001)  # @grow

def mapped():
    m = H.helper_mmap(4096 * 64)  # @mmap
    H.helper_munmap(m, 4096 * 64)

kept = keep()
temp()
grown = grow()
mapped()
t = threading.Thread(target=keep, name="keeper")
t.start()
t.join()
data = [bytes(1000 + i % 100) for i in range(3000)]
"""

KNOWN = {
    # marker: (allocator, size of one allocation)
    "keep": (MALLOC, 50021),
    "temp": (MALLOC, 70001),
    "grow": (REALLOC, 90001),
    "mmap": (MMAP, 4096 * 64),
}


def _capture(script, memray_run, workdir, *flags, name="w.bin"):
    s = script("workload.py", WORKLOAD)
    out = workdir / name
    assert_ok(memray_run(*flags, "-q", "-o", out, s.path))
    return s, out


def _ours_stats(memray_cli, capture, out_json):
    res = memray_cli("stats", "--json", "-f", "-o", out_json, capture)
    assert res.returncode == 0, "our memray stats failed\n" + res.describe()
    return json.loads(out_json.read_text())


@pytest.mark.parametrize("flags", [(), ("--no-compress",)], ids=["lz4", "uncompressed"])
def test_stats_totals_agree(interp, script, memray_run, memray_cli, oracle, workdir, flags):
    s, out = _capture(script, memray_run, workdir, *flags)
    theirs = oracle.stats_json(out, workdir / "theirs.json")
    ours = _ours_stats(memray_cli, out, workdir / "ours.json")
    for key in ("total_num_allocations", "total_bytes_allocated"):
        assert ours[key] == theirs[key], f"{key}: ours {ours[key]} != Memray {theirs[key]}"
    assert ours["metadata"]["peak_memory"] == theirs["metadata"]["peak_memory"]
    assert ours["metadata"]["total_allocations"] == theirs["metadata"]["total_allocations"]
    known_bytes = 8 * 50021 + 6 * 70001 + 1000 + 90001 + 4096 * 64
    assert theirs["total_num_allocations"] >= 8 + 6 + 2 + 1
    assert theirs["total_bytes_allocated"] >= known_bytes
    assert theirs["metadata"]["peak_memory"] >= 8 * 50021 + 90001


def test_stats_distributions_agree(interp, script, memray_run, memray_cli, oracle, workdir):
    s, out = _capture(script, memray_run, workdir)
    theirs = oracle.stats_json(out, workdir / "theirs.json")
    ours = _ours_stats(memray_cli, out, workdir / "ours.json")
    assert ours["allocator_type_distribution"] == theirs["allocator_type_distribution"]
    assert ours["allocation_size_histogram"] == theirs["allocation_size_histogram"]
    assert theirs["allocator_type_distribution"].get("MMAP", 0) >= 1
    assert theirs["allocator_type_distribution"].get("REALLOC", 0) >= 1


_ALLOC_LINE = re.compile(r"^ALLOCATION\b.*?\baddress=(0x[0-9a-fA-F]+)\b.*?\bsize=(\d+)")


def _parse_allocations(text):
    return [(int(a, 16), int(s)) for a, s in (m.groups() for m in map(_ALLOC_LINE.match, text.splitlines()) if m)]


def test_parse_agrees(interp, script, memray_run, memray_cli, oracle, workdir):
    s, out = _capture(script, memray_run, workdir, "--no-compress")
    theirs = oracle.cli("parse", out)
    assert theirs.returncode == 0, theirs.describe()
    ours = memray_cli("parse", out)
    assert ours.returncode == 0, ours.describe()
    expected = _parse_allocations(theirs.stdout)
    assert len(expected) > 20
    assert _parse_allocations(ours.stdout) == expected


def _known_records(cap, section, script):
    """{(marker, tid): (n_allocations, size)} for the workload's known call sites."""
    out = {}
    for rec in getattr(cap, section):
        if not rec["stack"]:
            continue
        for marker, (allocator, _) in KNOWN.items():
            if rec["allocator"] == allocator and top(rec) == [(marker if marker != "mmap" else "mapped", "workload.py", script.line(marker))]:
                key = (marker, rec["tid"])
                assert key not in out, f"two {section} records for {key}"
                out[key] = (rec["n_allocations"], rec["size"])
    return out


def test_aggregated_capture_read_by_memray(interp, script, memray_run, memray_cli, oracle, workdir):
    s, agg = _capture(script, memray_run, workdir, "--aggregate", name="agg.bin")
    cap = oracle.read(agg, "all", "hwm", "leaks")
    assert cap.metadata["file_format"] == 1
    assert cap.error("all") and "NotImplementedError" in cap.error("all"), (
        "Memray refuses per-allocation queries on aggregated captures"
    )
    main_tid = cap.metadata["main_thread_id"]

    hwm = _known_records(cap, "hwm", s)
    keep = {tid: v for (m, tid), v in hwm.items() if m == "keep"}
    assert keep.get(main_tid) == (4, 4 * 50021), hwm
    others = [v for tid, v in keep.items() if tid != main_tid]
    assert others == [(4, 4 * 50021)], f"the second thread's allocations: {hwm}"
    assert hwm.get(("grow", main_tid)) == (1, 90001), hwm

    leaks = _known_records(cap, "leaks", s)
    assert leaks.get(("keep", main_tid)) == (4, 4 * 50021), leaks
    assert leaks.get(("grow", main_tid)) == (1, 90001), leaks
    assert ("temp", main_tid) not in leaks and ("mmap", main_tid) not in leaks, leaks

    assert cap.metadata["peak_memory"] == sum(r["size"] for r in cap.hwm)


def test_aggregated_matches_all_allocations(interp, script, memray_run, oracle, workdir):
    s, agg = _capture(script, memray_run, workdir, "--aggregate", name="agg.bin")
    s, full = _capture(script, memray_run, workdir, name="full.bin")
    a = oracle.read(agg, "hwm", "leaks")
    f = oracle.read(full, "hwm", "leaks")

    def by_marker(records):
        # thread ids differ between runs: compare per marker, sorted over threads
        grouped = {}
        for (marker, _tid), value in records.items():
            grouped.setdefault(marker, []).append(value)
        return {k: sorted(v) for k, v in grouped.items()}

    assert by_marker(_known_records(a, "leaks", s)) == by_marker(_known_records(f, "leaks", s))
    assert by_marker(_known_records(a, "hwm", s)) == by_marker(_known_records(f, "hwm", s))
    assert f.metadata["peak_memory"] == sum(r["size"] for r in f.hwm)


def test_our_stats_on_aggregated_capture(interp, script, memray_run, memray_cli, oracle, workdir):
    """Memray's `stats` refuses aggregated captures; ours must either refuse
    cleanly or report the same peak as Memray's reader."""
    s, agg = _capture(script, memray_run, workdir, "--aggregate", name="agg.bin")
    peak = oracle.read(agg, "hwm").metadata["peak_memory"]
    out_json = workdir / "ours.json"
    res = memray_cli("stats", "--json", "-f", "-o", out_json, agg)
    assert "panicked" not in res.output
    if res.returncode == 0:
        assert json.loads(out_json.read_text())["metadata"]["peak_memory"] == peak
    else:
        assert res.returncode < 128, res.describe()
        if not SELF_CHECK:  # Memray itself answers with a NotImplementedError traceback
            assert_clean_error(res)


SPIKES = """
import random, sys
import allochelper
H = allochelper.load()
live = {}

def at_depth(depth, size):
    if depth:
        return at_depth(depth - 1, size)
    return H.helper_malloc(size)

rng = random.Random(int(sys.argv[1]))
for step in range(int(sys.argv[2])):
    if live and (len(live) >= 4 or rng.random() < 0.5):
        H.helper_free(live.pop(rng.choice(sorted(live))))
    else:
        live[step] = at_depth(rng.randrange(6), 1000000 * rng.randrange(1, 4) + 7)
"""


def _spike_records(cap):
    """[(depth, n_allocations, size)] of the high-water-mark records of `at_depth`'s mallocs."""
    out = []
    for rec in cap.hwm:
        # Function and file only: Memray 1.20 reads 3.15's line tables with an older decoder.
        if rec["allocator"] == MALLOC and rec["stack"] and top(rec)[0][:2] == ("at_depth", "spikes.py"):
            depth = sum(1 for f in rec["stack"] if f[0] == "at_depth") - 1
            out.append((depth, rec["n_allocations"], rec["size"]))
    return sorted(out)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_aggregated_peak_equals_the_full_captures_peak(interp, script, memray_run, reader, workdir, seed):
    """Property: on a random allocate/free sequence over sites at several recursion
    depths, the aggregating writer's high-water-mark records are exactly what the
    reader computes from the full capture of the same run (the sequence is seeded,
    so both runs make the same allocations at the same sites)."""
    s = script("spikes.py", SPIKES)
    steps = str(200 + 20 * seed)
    full, agg = workdir / "full.bin", workdir / "agg.bin"
    assert_ok(memray_run("-q", "-o", full, s.path, str(seed), steps))
    assert_ok(memray_run("--aggregate", "-q", "-o", agg, s.path, str(seed), steps))
    expected = _spike_records(reader.read(full, "hwm"))
    assert expected, "the peak should hold some of the workload's blocks"
    assert _spike_records(reader.read(agg, "hwm")) == expected
