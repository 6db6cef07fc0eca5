"""Reporter benchmark: the same capture read by Memray 1.20's reporters and by ours, in
one run. The capture is written by Memray 1.20 itself (its own format on its own turf),
once compressed (Memray's default) and once with --no-compress.

Prints, per report: wall time (best of N), peak RSS, and ours/Memray ratios.
Run through `scripts/bench reporters`.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (arguments after the subcommand, whether it writes a file with -o)
REPORTS = {
    "stats": (["stats"], False),
    "stats --json": (["stats", "--json", "-f"], True),
    "flamegraph": (["flamegraph", "-f"], True),
    "flamegraph --leaks": (["flamegraph", "-f", "--leaks"], True),
    "table": (["table", "-f"], True),
    "summary": (["summary"], False),
    # Opt-in (--report tree): Memray 1.20's tree took over 10 minutes on a 300,000-record
    # capture of this workload, which would dominate the run.
    "tree": (["tree"], False),
}
DEFAULT_REPORTS = [name for name in REPORTS if name != "tree"]


def run_measured(cmd):
    """Wall seconds and peak RSS (KB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), code, err[-500:]))
    return elapsed, usage.ru_maxrss


def count_records(memray_rs, capture):
    out = subprocess.run([memray_rs, "stats", "--json", "-f", "-o", capture + ".json", capture],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    import json
    with open(capture + ".json") as f:
        return json.load(f)["metadata"]["total_allocations"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memray-rs", required=True)
    p.add_argument("--memray-ref", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--allocations", type=int, default=5_000_000,
                   help="allocations in the capture (each also has a free: twice as many records)")
    p.add_argument("--report", action="append", choices=list(REPORTS))
    args = p.parse_args()
    reports = args.report or DEFAULT_REPORTS
    tmp = tempfile.mkdtemp(prefix="memray-bench-reporters-")
    try:
        workload = os.path.join(HERE, "workloads", "many_records.py")
        captures = {}
        for label, flags in (("lz4", []), ("plain", ["--no-compress"])):
            path = os.path.join(tmp, "capture-%s.bin" % label)
            subprocess.run([args.memray_ref, "run", "-q", "-f", "-o", path] + flags + [workload, str(args.allocations)],
                           check=True, stdout=subprocess.DEVNULL)
            captures[label] = path
        n = count_records(args.memray_rs, captures["plain"])
        print("capture: written by Memray 1.20, %d allocation records (frees included); "
              "%.1f MB compressed, %.1f MB plain" % (
                  n, os.path.getsize(captures["lz4"]) / 1e6, os.path.getsize(captures["plain"]) / 1e6))
        print("best of %d runs; peak RSS of the reporter process; rs/ref = ours / Memray 1.20\n" % args.repeat)
        header = "%-20s %-6s %9s %9s %8s %10s %10s %8s" % (
            "report", "file", "memray", "ours", "rs/ref", "ref RSS", "our RSS", "RSS r/r")
        print(header)
        print("-" * len(header))
        worst = 0.0
        for name in reports:
            sub, writes = REPORTS[name]
            for label, path in captures.items():
                def cmd(tool, tag):
                    extra = ["-o", os.path.join(tmp, "%s-%s.out" % (tag, name.replace(" ", "")))] if writes else []
                    return [tool] + sub + extra + [path]
                ref = min((run_measured(cmd(args.memray_ref, "ref")) for _ in range(args.repeat)), key=lambda r: r[0])
                ours = min((run_measured(cmd(args.memray_rs, "rs")) for _ in range(args.repeat)), key=lambda r: r[0])
                ratio = ours[0] / ref[0]
                worst = max(worst, ratio)
                print("%-20s %-6s %8.2fs %8.2fs %8.3f %8.1fMB %8.1fMB %8.2f" % (
                    name, label, ref[0], ours[0], ratio, ref[1] / 1024, ours[1] / 1024, ours[1] / ref[1]))
                sys.stdout.flush()
        print("\nworst rs/ref time ratio: %.3f (0.100 or less is 10x faster than Memray 1.20)" % worst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
