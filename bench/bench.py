"""Side-by-side benchmark driver: plain Python, Memray 1.20 and this project, one run.

Run through scripts/bench, which prepares the interpreter, Memray and the build.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ["small_objects", "large_buffers", "threads", "deep_recursion", "numpy_arrays"]
MODES = {
    "default": [],
    "trace-python-allocators": ["--trace-python-allocators"],
    "aggregate": ["--aggregate"],
}


def timed(cmd, env=None):
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), proc.returncode, proc.stderr.decode()[-500:]))
    return elapsed


def best_of(n, fn):
    return min(fn() for _ in range(n))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memray-rs", required=True)
    p.add_argument("--memray-ref", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workload", action="append", choices=WORKLOADS)
    p.add_argument("--mode", action="append", choices=list(MODES))
    args = p.parse_args()
    workloads = args.workload or WORKLOADS
    modes = args.mode or list(MODES)
    tmp = tempfile.mkdtemp(prefix="memray-bench-")
    print("interpreter: %s" % subprocess.check_output([args.python, "-VV"]).decode().strip())
    print("best of %d runs; ratio = tool time / plain python time; rs/ref = ours / Memray 1.20\n" % args.repeat)
    header = "%-16s %-24s %8s %9s %9s %7s %7s %7s %11s %11s" % (
        "workload", "mode", "python", "memray", "ours", "x ref", "x ours", "rs/ref", "ref bytes", "our bytes")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for w in workloads:
        script = os.path.join(HERE, "workloads", w + ".py")
        plain = best_of(args.repeat, lambda: timed([args.python, script]))
        for m in modes:
            flags = MODES[m]
            ref_out = os.path.join(tmp, "ref-%s-%s.bin" % (w, m))
            rs_out = os.path.join(tmp, "rs-%s-%s.bin" % (w, m))
            ref = best_of(args.repeat, lambda: timed([args.memray_ref, "run", "-q", "-f", "-o", ref_out] + flags + [script]))
            ours = best_of(args.repeat, lambda: timed(
                [args.memray_rs, "run", "-q", "-f", "--python", args.python, "-o", rs_out] + flags + [script]))
            ratio = ours / ref
            worst = max(worst, ratio)
            print("%-16s %-24s %7.2fs %8.2fs %8.2fs %6.2fx %6.2fx %7.2f %11d %11d" % (
                w, m, plain, ref, ours, ref / plain, ours / plain, ratio,
                os.path.getsize(ref_out), os.path.getsize(rs_out)))
            sys.stdout.flush()
    print("\nworst rs/ref ratio: %.2f (below 1.00 means faster than Memray 1.20 everywhere)" % worst)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
