"""Sampled tracking (`--sampling-interval`, `Tracker(sampling_interval=...)`).

A sampled capture is read here by Memray 1.20's FileReader (the `reader` fixture): it
must read it as an ordinary capture whose sizes are estimates. The accuracy check runs
bench/sampling_accuracy.py, the harness `scripts/bench sampling` uses, under Memray 1.20.
"""
import json
import math
from pathlib import Path

import pytest

from support import (
    FREE,
    MALLOC,
    MMAP,
    MUNMAP,
    REPO,
    SELF_CHECK,
    assert_clean_error,
    assert_frees_only_of_recorded_blocks,
    assert_ok,
    sigkill_once_started,
    top,
)

pytestmark = pytest.mark.skipif(SELF_CHECK, reason="sampling is this project's extension; Memray 1.20 has none")

#: The interval docs/performance.md measures and recommends.
DEFAULT_INTERVAL = 64 * 1024

PRELUDE = """
import json, os, sys
import memray
import allochelper
H = allochelper.load()
OUT = sys.argv[1]
INTERVAL = int(sys.argv[2])
"""

#: For the tests that bound estimates: a fixed seed makes the sampler's choices the same
#: every run, so a bound either always holds or never does (the bounds are 4 or more
#: standard deviations wide, so any seed passes them; the seed only rules out flakiness).
SEEDED = """
os.environ["MEMRAY_SAMPLING_SEED"] = "20261204"
"""


def test_a_sampled_capture_estimates_what_it_did_not_record(interp, script, run_py, reader, workdir):
    """Small blocks are recorded now and then with their weight; a block far above the
    interval always is, at its size; only the frees of recorded blocks are recorded."""
    s = script("sampled.py", PRELUDE, SEEDED, """
        def small():
            out = []
            for _ in range(20000):
                out.append(H.helper_malloc(1000))  # @small
            return out

        def big():
            return H.helper_malloc(50 << 20)  # @big

        with memray.Tracker(OUT, sampling_interval=INTERVAL):
            blocks = small()
            huge = big()
            for p in blocks[::2]:
                H.helper_free(p)
            H.helper_free(huge)
        """)
    out = workdir / "sampled.bin"
    interval = 16 * 1024
    assert_ok(run_py(s, out, interval))
    cap = reader.read(out, "all", "leaks")
    # Memray reads the header's n_frames, where the interval travels, as total_frames.
    assert cap.metadata["total_frames"] == interval

    big = [r for r in cap.records if r["allocator"] == MALLOC and r["size"] == 50 << 20]
    assert len(big) == 1 and top(big[0]) == [("big", s.path.name, s.line("big"))], big
    # The weight of a 1000-byte block: 1000 / p, p = 1 - exp(-1000 / interval).
    weight = round(1000 / -math.expm1(-1000 / interval))
    small = cap.find(allocator=MALLOC, size=weight)
    assert all(top(r) == [("small", s.path.name, s.line("small"))] for r in small)
    # p = 1 - exp(-1000/16384) = 5.9%: about 1190 of the 20000 blocks, each weighing
    # 1000/p bytes; the estimate of the 20 MB is within 4 standard deviations (6%).
    assert 900 < len(small) < 1500, len(small)
    estimate = sum(r["size"] for r in small)
    assert abs(estimate - 20_000_000) < 0.12 * 20_000_000, estimate

    assert_frees_only_of_recorded_blocks(cap.records)
    frees = [r for r in cap.records if r["allocator"] == FREE]
    # Half the recorded small blocks and the big one were freed.
    assert abs(len(frees) - (len(small) / 2 + 1)) < 0.15 * len(small), (len(frees), len(small))
    # Only this site's: the interpreter's own leaks (pymalloc arenas among them) vary with
    # the run's hash seed.
    leaked = sum(r["size"] for r in cap.leaks if top(r) == [("small", s.path.name, s.line("small"))])
    assert abs(leaked - 10_000_000) < 0.2 * 10_000_000, leaked


def test_mappings_when_sampling(interp, script, run_py, reader, workdir):
    """Mappings as large as the interval are recorded in full at their addresses; smaller
    ones are sampled and recorded, with their weight, at synthetic addresses in the
    kernel's half of the address space (a weight at the real address would cover the
    neighbours), and unmapping the real mapping ends the synthetic range."""
    s = script("mapped.py", PRELUDE, SEEDED, """
        with memray.Tracker(OUT, sampling_interval=INTERVAL):
            big = [H.helper_mmap(65536) for _ in range(20)]
            small = [H.helper_mmap(4096) for _ in range(2000)]
            for p in big:
                H.helper_munmap(p, 65536)
            for p in small:
                H.helper_munmap(p, 4096)
        """)
    out = workdir / "mapped.bin"
    interval = 16384
    assert_ok(run_py(s, out, interval))
    cap = reader.read(out, "all", "leaks")
    synthetic = 0xFFFF_8000_0000_0000
    big = cap.find(allocator=MMAP, size=65536)
    assert len(big) == 20 and all(r["address"] < synthetic for r in big), big
    weight = round(4096 / -math.expm1(-4096 / interval))
    small = cap.find(allocator=MMAP, size=weight)
    # p = 1 - exp(-1/4) = 22%: about 442 of 2000; they stand for 8.2 MB (sd 4.5%).
    assert 300 < len(small) < 600 and all(r["address"] >= synthetic for r in small), len(small)
    assert abs(len(small) * weight - 2000 * 4096) < 0.2 * 2000 * 4096
    ended = {r["address"] for r in cap.find(allocator=MUNMAP) if r["address"] >= synthetic}
    assert ended == {r["address"] for r in small}, "every sampled small mapping's range ends with its munmap"
    assert not [r for r in cap.leaks if r["allocator"] == MMAP and r["size"] in (65536, weight)], cap.leaks


def test_estimates_match_the_full_trace(interp, memray_run, workdir, oracle):
    """The bar of issue #16 on a seeded workload: every site holding at least 1% of the
    bytes at the peak, or of the leaked bytes, is estimated within 10% at the default
    interval. The sampler's seed is fixed too, so the result is the same every run;
    `scripts/bench sampling` gives the distribution over many seeds."""
    if interp.id != "py3.12":
        pytest.skip("accuracy does not depend on the interpreter: checked on py3.12")
    workload = REPO / "bench" / "workloads" / "sampling_sites.py"
    full, sampled = workdir / "full.bin", workdir / "sampled.bin"
    memray_run.env["PYTHONHASHSEED"] = "0"
    assert_ok(memray_run("-q", "-o", full, workload))
    memray_run.env["MEMRAY_SAMPLING_SEED"] = "20261204"
    assert_ok(memray_run("-q", "--sampling-interval", "64KiB", "-o", sampled, workload))
    res = assert_ok(oracle.run_script(REPO / "bench" / "sampling_accuracy.py", full, sampled))
    result = json.loads(res.stdout)
    checked = 0
    for name in ("peak", "leaked"):
        sites = result[name]["sites"]
        assert sites, f"no site holds 1% of the {name} bytes: {result}"
        for site in sites:
            checked += 1
            assert abs(site["error"]) <= 0.10, f"{name}: {site}"
    assert checked >= 5
    # The sampled capture is far smaller.
    assert sampled.stat().st_size * 5 < full.stat().st_size


def test_sampled_capture_cut_by_sigkill_is_readable(interp, script, memray_run, reader, workdir):
    s = script("killed.py", """
        import os, time
        import allochelper
        H = allochelper.load()

        def before_kill():
            for _ in range(5):
                H.helper_malloc(64 << 20)  # @alloc

        before_kill()  # @call
        print(os.getpid(), flush=True)
        time.sleep(120)
        """)
    out = workdir / "killed.bin"
    cmd = memray_run.cmd("--no-compress", "-q", "--sampling-interval", "1MiB", "-o", out, s.path)
    pid = sigkill_once_started(cmd, cwd=workdir, env=memray_run.env)
    cap = reader.read(out, "all")
    assert cap.metadata["pid"] == pid
    recs = cap.find(size=64 << 20, allocator=MALLOC)
    assert len(recs) == 5, recs
    assert all(top(r, 2) == [("before_kill", s.path.name, s.line("alloc")), ("<module>", s.path.name, s.line("call"))]
               for r in recs)


def test_follow_fork_child_samples_on_its_own(interp, script, run_py, reader, workdir):
    """The child of a sampled capture writes a sampled capture of its own, from a random
    stream that is not its parent's."""
    s = script("fork.py", PRELUDE, """
        def work():
            out = []
            for _ in range(5000):
                out.append(H.helper_malloc(2000))  # @work
            return out

        with memray.Tracker(OUT, follow_fork=True, sampling_interval=INTERVAL):
            pid = os.fork()
            blocks = work()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        print(json.dumps({"child": pid}))
        """)
    out = workdir / "fork.bin"
    res = assert_ok(run_py(s, out, 32 * 1024))
    child_pid = json.loads(res.stdout.strip().splitlines()[-1])["child"]
    parent = reader.read(out, "all")
    child = reader.read(Path(f"{out}.{child_pid}"), "all")
    assert child.metadata["total_frames"] == 32 * 1024
    offsets = []
    for cap in (parent, child):
        recs = [r for r in cap.records if r["allocator"] == MALLOC and top(r) == [("work", s.path.name, s.line("work"))]]
        # 5000 blocks, p = 5.9%: about 296 each.
        assert 150 < len(recs) < 450, len(recs)
        offsets.append([r["address"] - min(x["address"] for x in recs) for r in recs])
    assert offsets[0] != offsets[1], "the child sampled the same blocks as its parent"


def test_aggregated_sampled_capture(interp, script, run_py, reader, workdir):
    s = script("agg.py", PRELUDE, SEEDED, """
        from memray import FileFormat
        def keep():
            out = []
            for _ in range(20000):
                out.append(H.helper_malloc(1500))  # @keep
            return out
        with memray.Tracker(OUT, sampling_interval=INTERVAL, file_format=FileFormat.AGGREGATED_ALLOCATIONS):
            kept = keep()
        """)
    out = workdir / "agg.bin"
    assert_ok(run_py(s, out, 8192))
    cap = reader.read(out, "hwm")
    kept = [r for r in cap.hwm if r["allocator"] == MALLOC and top(r) == [("keep", s.path.name, s.line("keep"))]]
    assert len(kept) == 1, kept
    # 30 MB kept, estimated from about 3,500 samples (sd 1.7%); so is their number.
    assert abs(kept[0]["size"] - 30_000_000) < 0.1 * 30_000_000, kept
    assert abs(kept[0]["n_allocations"] - 20000) < 0.1 * 20000, kept


@pytest.mark.parametrize("value, problem", [("12parsecs", "unknown size unit"), ("KiB", "is not a size")])
def test_bad_sampling_interval_is_one_line(value, problem, interp, memray_run, workdir):
    if interp.id != "py3.12":
        pytest.skip("argument parsing does not depend on the interpreter: checked on py3.12")
    res = memray_run("--sampling-interval", value, "-o", workdir / "x.bin", "-c", "pass")
    assert_clean_error(res, problem)


def test_tracker_refuses_a_negative_interval(interp, script, run_py, workdir):
    s = script("neg.py", PRELUDE, """
        try:
            memray.Tracker(OUT, sampling_interval=INTERVAL)
        except ValueError as e:
            print("ValueError:", e)
        """)
    res = assert_ok(run_py(s, workdir / "neg.bin", -1))
    assert "ValueError: sampling_interval must be a number of bytes" in res.stdout


def test_reports_say_once_that_they_show_estimates(interp, script, run_py, memray_cli, workdir):
    """Every terminal report of a sampled capture says so once; counts are estimates
    (20,000 blocks from about 3,400 records), also in this project's FileReader."""
    if interp.id != "py3.12":
        pytest.skip("the reports do not depend on the interpreter: checked on py3.12")
    s = script("reports.py", PRELUDE, SEEDED, """
        def keep():
            out = []
            for _ in range(20000):
                out.append(H.helper_malloc(3000))  # @keep
            return out
        with memray.Tracker(OUT, sampling_interval=INTERVAL):
            kept = keep()
        with memray.FileReader(OUT) as reader:
            md = reader.metadata
            rows = [r for r in reader.get_high_watermark_allocation_records()
                    if r.stack_trace() and r.stack_trace()[0][0] == "keep"]
            print(json.dumps({"interval": md.sampling_interval, "size": rows[0].size, "count": rows[0].n_allocations}))
        """)
    out = workdir / "reports.bin"
    res = assert_ok(run_py(s, out, 16 * 1024))
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["interval"] == 16 * 1024
    assert abs(info["size"] - 60_000_000) < 0.1 * 60_000_000, info
    assert abs(info["count"] - 20000) < 0.1 * 20000, info
    notice = "Sampled capture: one allocation recorded per 16.0KiB on average; bytes and counts are estimates"
    for report in (["stats"], ["tree"], ["summary"]):
        text = assert_ok(memray_cli(*report, out)).stdout
        assert text.count(notice) == 1, f"memray {report[0]}:\n{text}"
    stats = workdir / "stats.json"
    assert_ok(memray_cli("stats", "--json", "-f", "-o", stats, out))
    assert json.loads(stats.read_text())["metadata"]["sampling_interval"] == 16 * 1024
