"""Sampled tracking (`--sampling-interval`) against plain Python, full tracing and Memray
1.20, in one run: the bars of issue #16.

Run through `scripts/bench sampling`, which prepares the interpreter, Memray and the build.

1. Overhead of `memray run --sampling-interval` on every bench workload (best of N), with
   full tracing (ours and Memray's) beside it.
2. Overhead while attached: a workload run round after round in one process; the median
   round time while a sampled `memray attach` is on, over the median before it (the
   attach itself is not counted).
3. Accuracy: per site holding at least 1% of the bytes at the peak or of the leaked bytes,
   the sampled estimate's error against the full capture of the same run, over many
   sampler seeds (sampling_accuracy.py, read by Memray 1.20's FileReader).
4. Capture growth: bytes written per second of a steady workload, full and sampled.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sampling_accuracy  # noqa: E402
from bench import WORKLOADS, best_of, timed  # noqa: E402

DEFAULT_INTERVAL = "64KiB"

STEADY = r"""
import runpy, sys, time
script, rounds = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
for i in range(rounds):
    start = time.perf_counter()
    sys.argv = [script]  # the workload's own arguments: none, its defaults
    runpy.run_path(script, run_name="__main__")
    print("%f %f" % (time.time(), time.perf_counter() - start), flush=True)
"""


def run_overhead(args, tmp, interval):
    print("1. memray run: time over plain Python's (best of %d)\n" % args.repeat)
    header = "%-16s %8s %10s %10s %12s %14s %14s" % (
        "workload", "python", "memray", "ours full", "ours " + interval, "full bytes", "sampled bytes")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for w in args.workloads:
        script = os.path.join(HERE, "workloads", w + ".py")
        plain = best_of(args.repeat, lambda: timed([args.python, script]))
        out_ref, out_full, out_s = (os.path.join(tmp, "%s-%s.bin" % (w, k)) for k in ("ref", "full", "sampled"))
        ref = best_of(args.repeat, lambda: timed([args.memray_ref, "run", "-q", "-f", "-o", out_ref, script]))
        full = best_of(args.repeat, lambda: timed(
            [args.memray_rs, "run", "-q", "-f", "--python", args.python, "-o", out_full, script]))
        sampled = best_of(args.repeat, lambda: timed(
            [args.memray_rs, "run", "-q", "-f", "--python", args.python, "--sampling-interval", interval,
             "-o", out_s, script]))
        worst = max(worst, sampled / plain)
        print("%-16s %7.2fs %9.2fx %9.2fx %11.3fx %14d %14d" % (
            w, plain, ref / plain, full / plain, sampled / plain, os.path.getsize(out_full), os.path.getsize(out_s)))
        sys.stdout.flush()
    print("\nworst sampled overhead: %.3fx plain Python (bar: 1.03x)\n" % worst)


def steady_rounds(args, tmp, workload, interval, attach):
    """Median round time before and during a sampled attach, in one process."""
    driver = os.path.join(tmp, "steady.py")
    with open(driver, "w") as f:
        f.write(STEADY)
    script = os.path.join(HERE, "workloads", workload + ".py")
    rounds = args.rounds
    proc = subprocess.Popen([args.python, driver, script, str(rounds)], stdout=subprocess.PIPE, text=True)
    lines = []
    attached_at = None
    try:
        assert proc.stdout.readline().strip() == "ready"
        for i in range(rounds):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(tuple(map(float, line.split())))
            if attach and i == rounds // 3 - 1:
                out = os.path.join(tmp, "steady-%s.bin" % workload)
                subprocess.run([args.memray_rs, "attach", "-f", "--sampling-interval", interval, "-o", out,
                                str(proc.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                attached_at = time.time()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The first round imports what the workload needs: not a steady state.
    before = [d for end, d in lines[1: rounds // 3]]
    # Rounds that started after the attach returned.
    during = [d for end, d in lines if attached_at is not None and end - d > attached_at]
    return statistics.median(before), (statistics.median(during) if during else float("nan")), len(during)


def run_attached(args, tmp, interval):
    print("2. attached: median round time while a sampled attach is on, over the median before it")
    print("   (%d rounds of each workload in one process; attach after a third of them)\n" % args.rounds)
    header = "%-16s %12s %12s %8s %8s" % ("workload", "before", "attached", "rounds", "ratio")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for w in args.workloads:
        before, during, n = steady_rounds(args, tmp, w, interval, attach=True)
        ratio = during / before
        worst = max(worst, ratio)
        print("%-16s %11.3fs %11.3fs %8d %7.3fx" % (w, before, during, n, ratio))
        sys.stdout.flush()
    print("\nworst attached overhead: %.3fx (bar: 1.03x)\n" % worst)


def run_accuracy(args, tmp, interval):
    print("3. accuracy at %s: relative error of the estimate, per site with at least 1%% of" % interval)
    print("   the bytes at the peak or of the leaked bytes, over %d sampler seeds\n" % args.seeds)
    header = "%-16s %-7s %6s %13s %8s %8s %8s %8s %10s" % (
        "workload", "bytes", "sites", "smallest site", "median", "p90", "p99", "max", "within 10%")
    print(header)
    print("-" * len(header))
    for w in ["sampling_sites"] + list(args.workloads):
        script = os.path.join(HERE, "workloads", w + ".py")
        full = os.path.join(tmp, "acc-%s-full.bin" % w)
        # The same run each time: string hashing fixed too (dict layouts change what
        # pymalloc maps).
        fixed = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run([args.memray_rs, "run", "-q", "-f", "--python", args.python, "-o", full, script],
                       check=True, stdout=subprocess.DEVNULL, env=fixed)
        errs = {"peak": [], "leaked": []}
        sites = {"peak": 0, "leaked": 0}
        # The error of a site of B bytes of small blocks is about sqrt(interval / B).
        smallest = {"peak": 0, "leaked": 0}
        for seed in range(1, args.seeds + 1):
            sampled = os.path.join(tmp, "acc-%s-%d.bin" % (w, seed))
            env = dict(fixed, MEMRAY_SAMPLING_SEED=str(seed))
            subprocess.run([args.memray_rs, "run", "-q", "-f", "--python", args.python, "--sampling-interval",
                            interval, "-o", sampled, script], check=True, stdout=subprocess.DEVNULL, env=env)
            result = sampling_accuracy.errors(full, sampled)
            for name in errs:
                rows = result[name]["sites"]
                sites[name] = len(rows)
                smallest[name] = min((r["full"] for r in rows), default=0)
                errs[name].extend(abs(r["error"]) for r in rows)
            os.unlink(sampled)
        for name, e in errs.items():
            if not e:
                print("%-16s %-7s %6d %8s" % (w, name, 0, "-"))
                continue
            e.sort()
            q = lambda p: e[min(len(e) - 1, int(p * len(e)))]
            print("%-16s %-7s %6d %13d %7.1f%% %7.1f%% %7.1f%% %7.1f%% %9.1f%%" % (
                w, name, sites[name], smallest[name], 100 * statistics.median(e), 100 * q(0.9), 100 * q(0.99),
                100 * e[-1], 100 * sum(x <= 0.10 for x in e) / len(e)))
        sys.stdout.flush()
    print()


def run_growth(args, tmp, interval):
    print("4. capture growth: bytes written per second of tracking, uncompressed\n")
    header = "%-16s %14s %14s %8s" % ("workload", "full B/s", "sampled B/s", "ratio")
    print(header)
    print("-" * len(header))
    for w in args.workloads:
        script = os.path.join(HERE, "workloads", w + ".py")
        rates = []
        for extra in ([], ["--sampling-interval", interval]):
            out = os.path.join(tmp, "growth-%s.bin" % w)
            seconds = timed([args.memray_rs, "run", "-q", "-f", "--no-compress", "--python", args.python] + extra
                            + ["-o", out, script])
            rates.append(os.path.getsize(out) / seconds)
        print("%-16s %14.0f %14.0f %7.1fx" % (w, rates[0], rates[1], rates[0] / max(rates[1], 1)))
        sys.stdout.flush()
    print()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memray-rs", required=True)
    p.add_argument("--memray-ref", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--interval", default=DEFAULT_INTERVAL)
    p.add_argument("--workload", action="append", choices=WORKLOADS)
    p.add_argument("--part", action="append", choices=["run", "attach", "accuracy", "growth"])
    args = p.parse_args()
    args.workloads = args.workload or WORKLOADS
    parts = args.part or ["run", "attach", "accuracy", "growth"]
    tmp = tempfile.mkdtemp(prefix="memray-sampling-")
    print("interpreter: %s" % subprocess.check_output([args.python, "-VV"]).decode().strip())
    print("sampling interval: %s\n" % args.interval)
    try:
        if "run" in parts:
            run_overhead(args, tmp, args.interval)
        if "attach" in parts:
            run_attached(args, tmp, args.interval)
        if "accuracy" in parts:
            run_accuracy(args, tmp, args.interval)
        if "growth" in parts:
            run_growth(args, tmp, args.interval)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
