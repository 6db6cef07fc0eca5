"""Cost per recorded allocation by stack depth, ours beside Memray 1.20 (issue #17).

Run through `scripts/bench depth`, which prepares the interpreter, Memray, matplotlib and
the build.

The workload (handler_depth.py by default) makes the same allocations at the bottom of a
chain of distinct functions whose depth is swept. For each depth and mode, what tracking
adds is divided by what it recorded:

    cost per record = ((tool(N) - tool(0)) - (plain(N) - plain(0))) / (records(N) - records(0))

with N requests, and none: the runs without requests take out the fixed costs (start-up,
imports, opening and closing the capture), which are no allocation's. The records are the
allocation records in each tool's own capture (frees excluded: they carry no stack),
counted with Memray 1.20's FileReader, which reads both tools' captures. The cost is
measured
1. in wall time, best of a few runs of `memray run` (on a shared 2-core machine wall times
   wander by 20-30%), and
2. in instructions under `valgrind --tool=callgrind --trace-children=yes`, stable to a
   fraction of a percent, with fewer requests.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import best_of, timed  # noqa: E402

sys.path.insert(0, os.path.join(HERE, "workloads"))
from handler_depth import ROWS_PER_REQUEST  # noqa: E402

DEPTHS = [10, 50, 100, 200, 400]
MODES = {"default": [], "trace-python-allocators": ["--trace-python-allocators"]}
TOOLS = ["memray", "ours"]
# Fixed instructions from `valgrind` runs: deterministic string hashing.
VALGRIND_ENV = dict(os.environ, PYTHONHASHSEED="0")


def allocation_records(capture):
    """Allocation records in a capture (deallocations excluded), read by Memray 1.20."""
    from memray import AllocatorType, FileReader

    frees = {AllocatorType.FREE, AllocatorType.MUNMAP, AllocatorType.PYMALLOC_FREE}
    reader = FileReader(capture)
    try:
        return sum(1 for r in reader.get_allocation_records() if r.allocator not in frees)
    finally:
        reader.close()


def commands(args, tool, mode, out, script, requests, depth):
    """The command line of one run; tool None is plain Python."""
    workload = [script, str(requests), str(depth)]
    if tool is None:
        return [args.python] + workload
    if tool == "memray":
        return [args.memray_ref, "run", "-q", "-f", "-o", out] + MODES[mode] + workload
    return [args.memray_rs, "run", "-q", "-f", "--python", args.python, "-o", out] + MODES[mode] + workload


def callgrind_instructions(cmd, tmp):
    """Instructions executed by `cmd` and every process it starts or execs."""
    outdir = tempfile.mkdtemp(prefix="cg-", dir=tmp)
    subprocess.run(["valgrind", "--tool=callgrind", "--trace-children=yes",
                    "--callgrind-out-file=%s/callgrind.%%p" % outdir] + cmd,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=VALGRIND_ENV)
    total = 0
    for path in glob.glob(os.path.join(outdir, "callgrind.*")):
        with open(path) as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("totals:"))
    shutil.rmtree(outdir)
    return total


def sweep(args, tmp, script, requests, measure, unit, scale):
    """{(depth, mode, tool): (measure at `requests`, records added, cost per record, cost
    added in all)}; prints the table as it goes."""
    header = "%6s %-24s %9s %9s %9s %9s %9s %10s %10s %7s %7s" % (
        "depth", "mode", "python", "memray", "ours", "ref recs", "our recs",
        "ref " + unit, "our " + unit, "rs/ref", "all r/r")
    print(header)
    print("-" * len(header))
    results = {}
    for depth in args.depths:
        p0, p1 = (measure(commands(args, None, None, None, script, n, depth)) for n in (0, requests))
        for mode in args.modes:
            for tool in TOOLS:
                out = os.path.join(tmp, "%s.bin" % tool)
                (t0, r0), (t1, r1) = ((measure(commands(args, tool, mode, out, script, n, depth)),
                                       allocation_records(out)) for n in (0, requests))
                added = (t1 - t0) - (p1 - p0)
                results[depth, mode, tool] = (t1, r1 - r0, added / (r1 - r0) * scale, added)
            ref, ours = results[depth, mode, "memray"], results[depth, mode, "ours"]
            print("%6d %-24s %9.3g %9.3g %9.3g %9d %9d %10.0f %10.0f %6.2fx %6.2fx" % (
                depth, mode, p1, ref[0], ours[0], ref[1], ours[1], ref[2], ours[2], ours[2] / ref[2],
                ours[3] / ref[3]))
            sys.stdout.flush()
    print()
    return results


def plot(path, args, panels):
    """One row of panels per measure (wall time, instructions), one column per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), len(args.modes), figsize=(5.5 * len(args.modes), 4 * len(panels)),
                             squeeze=False)
    styles = {"memray": dict(color="tab:blue", marker="o", label="Memray 1.20"),
              "ours": dict(color="tab:red", marker="s", label="ours")}
    for row, (ylabel, results) in enumerate(panels):
        for col, mode in enumerate(args.modes):
            ax = axes[row][col]
            for tool in TOOLS:
                ax.plot(args.depths, [results[d, mode, tool][2] for d in args.depths], **styles[tool])
            ax.set_title("%s, %s" % (args.workload, mode))
            ax.set_xlabel("stack depth (frames of the handler chain)")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    print("plot: %s" % path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memray-rs", required=True)
    p.add_argument("--memray-ref", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--workload", default="handler_depth", choices=["handler_depth", "asyncio_handler"])
    p.add_argument("--depth", type=int, action="append", dest="depths", help="repeatable; default %s" % DEPTHS)
    p.add_argument("--mode", action="append", dest="modes", choices=list(MODES))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--requests", type=int, default=12_000, help="requests of a wall-time run")
    p.add_argument("--callgrind-requests", type=int, default=200, help="requests of a callgrind run; 0 skips it")
    p.add_argument("--plot", default="docs/depth-sweep.png")
    args = p.parse_args()
    args.depths = args.depths or DEPTHS
    args.modes = args.modes or list(MODES)
    script = os.path.join(HERE, "workloads", args.workload + ".py")
    tmp = tempfile.mkdtemp(prefix="memray-depth-")
    print("interpreter: %s" % subprocess.check_output([args.python, "-VV"]).decode().strip())
    print("workload: %s, %d rows per request" % (args.workload, ROWS_PER_REQUEST))
    print("recs: allocation records the requests added to the capture; ns/r, instr/r: cost per record")
    print("rs/ref: ours / Memray 1.20 per record; all r/r: ours / Memray 1.20 in all that the requests added\n")
    try:
        print("1. wall time (seconds), best of %d, %d requests\n" % (args.repeat, args.requests))
        panels = [("ns per recorded allocation (wall, best of %d)" % args.repeat, sweep(
            args, tmp, script, args.requests, lambda cmd: best_of(args.repeat, lambda: timed(cmd)), "ns/r", 1e9))]
        if args.callgrind_requests > 0:
            print("2. instructions (callgrind, all processes), %d requests\n" % args.callgrind_requests)
            panels.append(("instructions per recorded allocation (callgrind)", sweep(
                args, tmp, script, args.callgrind_requests, lambda cmd: callgrind_instructions(cmd, tmp), "instr/r", 1)))
        plot(args.plot, args, panels)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
