"""Attach latency for a process tree: examples/service.py with 4 workers (5 processes).

Ours: `memray attach --children -o OUT MASTER` and `memray detach --children MASTER`,
one command each. Memray 1.20 has no tree attach: the same tree is attached the way a
Memray user must, one `memray attach` (gdb) per process, then one `memray detach` each.
Wall time of the commands, best of --repeat, the service running throughout.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_service(python, workers, log):
    proc = subprocess.Popen([python, str(ROOT / "examples" / "service.py"), str(workers)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while "workers" not in Path(log).read_text():
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit("the service did not start: " + Path(log).read_text())
        time.sleep(0.02)
    pids = [int(p) for p in Path(log).read_text().split("workers", 1)[1].split()]
    return proc, pids


def timed(cmd):
    started = time.perf_counter()
    cmd = [str(c) for c in cmd]
    res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - started
    if res.returncode != 0:
        raise SystemExit("%s failed: %s" % (" ".join(map(str, cmd)), res.stderr.decode(errors="replace")))
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--memray-rs", required=True)
    ap.add_argument("--python", required=True, help="an interpreter with memray==1.20.0 installed")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    memray_py = [args.python, "-m", "memray"]
    with_gdb = shutil.which("gdb") is not None
    work = Path(tempfile.mkdtemp(prefix="memray-bench-tree-"))
    proc, workers = start_service(args.python, args.workers, work / "service.log")
    tree = [proc.pid] + workers
    best = {}
    try:
        for i in range(args.repeat):
            out = work / ("ours-%d.bin" % i)
            a = timed([args.memray_rs, "attach", "--children", "-o", out, proc.pid])
            time.sleep(0.5)
            d = timed([args.memray_rs, "detach", "--children", proc.pid])
            best["ours attach"] = min(best.get("ours attach", a), a)
            best["ours detach"] = min(best.get("ours detach", d), d)
            if with_gdb:
                a = sum(timed(memray_py + ["attach", "--method", "gdb", "-o", work / ("m-%d-%d.bin" % (i, p)), p])
                        for p in tree)
                time.sleep(0.5)
                d = sum(timed(memray_py + ["detach", "--method", "gdb", p]) for p in tree)
                best["memray attach"] = min(best.get("memray attach", a), a)
                best["memray detach"] = min(best.get("memray detach", d), d)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    print("tree of %d processes (examples/service.py %d), CPython %s, best of %d" % (
        len(tree), args.workers, version, args.repeat))
    print("%-8s %14s %16s %8s" % ("", "memray-rs", "Memray 1.20", "ratio"))
    for step in ("attach", "detach"):
        ours = best["ours " + step]
        theirs = best.get("memray " + step)
        print("%-8s %12.0f ms %14s %8s" % (
            step, ours * 1e3, "%.0f ms" % (theirs * 1e3) if theirs else "(no gdb)",
            "%.3f" % (ours / theirs) if theirs else "-"))
    if not with_gdb:
        print("Memray's attach needs gdb or lldb: not found, so it was not measured")


if __name__ == "__main__":
    sys.exit(main())
