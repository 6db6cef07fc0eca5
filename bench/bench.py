"""Side-by-side benchmark driver: plain Python, Memray 1.20 and this project, one run.

Run through scripts/bench, which prepares the interpreter, Memray and the build.
"""

import argparse
import re
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = [
    "small_objects", "large_buffers", "threads", "deep_recursion", "numpy_arrays",
    # About 80 frames deep, as real services run (issue #17).
    "handler_depth", "asyncio_handler",
]
MODES = {
    "default": [],
    "trace-python-allocators": ["--trace-python-allocators"],
    "aggregate": ["--aggregate"],
    # Native stacks: every allocation unwinds the C stack too (Memray: libunwind).
    "native": ["--native"],
    "native-aggregate": ["--native", "--aggregate"],
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


ATTACH_TARGET = """
import threading, time
def busy():
    keep = []
    while True:
        keep.append(bytearray(1000))
        if len(keep) > 1000:
            keep.clear()
        time.sleep(0.0005)
for _ in range(2):
    threading.Thread(target=busy, daemon=True).start()
# The main thread runs Python between short sleeps: PEP 768 (both tools' default on 3.14)
# is served by the main thread at its next eval-breaker check.
while True:
    time.sleep(0.01)
"""


def attach_latency(tool, python, tmp, cycles, extra=(), verbose=False):
    """Median wall time of `attach -o` (until tracking is confirmed) and of `detach`,
    over `cycles` cycles on one running target; with `verbose` (ours), also the median
    time the process was held, from `attach -v` ("held X ms", 0 for PEP 768)."""
    script = os.path.join(tmp, "attach_target.py")
    with open(script, "w") as f:
        f.write(ATTACH_TARGET)
    target = subprocess.Popen([python, script])
    attach, detach, held = [], [], []
    try:
        time.sleep(1.0)
        for i in range(cycles):
            out = os.path.join(tmp, "attach-%d.bin" % i)
            cmd = [tool, "attach", *extra, *(["-v"] if verbose else []), "-f", "-o", out, str(target.pid)]
            start = time.perf_counter()
            res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            attach.append(time.perf_counter() - start)
            if res.returncode != 0:
                raise RuntimeError(res.stderr.strip() or "attach failed")
            if verbose:
                m = re.search(r"held ([0-9.]+) ms in total", res.stderr)
                held.append(float(m.group(1)) if m else 0.0 if "was not stopped" in res.stderr else float("nan"))
            time.sleep(0.2)
            detach.append(timed([tool, "detach", str(target.pid)]))
            time.sleep(0.2)
        if target.poll() is not None:
            raise RuntimeError("the attach target died")
    finally:
        target.kill()
        target.wait()
    med = lambda xs: sorted(xs)[len(xs) // 2] if xs else None
    return med(attach), med(detach), med(held)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memray-rs", required=True)
    p.add_argument("--memray-ref", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workload", action="append", choices=WORKLOADS)
    p.add_argument("--mode", action="append", choices=list(MODES))
    p.add_argument("--attach-cycles", type=int, default=5, help="0 skips the attach latency part")
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
    if args.attach_cycles > 0:
        print("\nattach / detach latency, median of %d cycles on one busy 3-thread process" % args.attach_cycles)
        print("(command start to tracking confirmed; to hooks restored and capture closed)")
        minor = int(subprocess.check_output([args.python, "-c", "import sys; print(sys.version_info[1])"]))
        rows = [("memray 1.20 (%s)" % ("sys.remote_exec" if minor >= 14 else "gdb"), args.memray_ref, (), False)]
        if minor >= 14:
            rows.append(("ours (PEP 768)", args.memray_rs, ("--method", "sys.remote_exec"), True))
        rows.append(("ours (ptrace)", args.memray_rs, ("--method", "ptrace"), True))
        for name, tool, extra, ours in rows:
            try:
                a, d, h = attach_latency(tool, args.python, tmp, args.attach_cycles, extra, verbose=ours)
                stopped = "   target held %6.1f ms" % h if h is not None else ""
                print("  %-24s attach %7.3fs   detach %7.3fs%s" % (name, a, d, stopped))
            except (RuntimeError, OSError) as e:
                print("  %-24s failed: %s" % (name, str(e).splitlines()[0] if str(e) else e))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
