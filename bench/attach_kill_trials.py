"""SIGKILL `memray attach` at random instants; count the targets that did not survive.

For each interpreter, two long-lived targets: a busy one (four threads allocating) and a
waiting one (its main thread blocked in threading.Event().wait, the only other thread
idle), so that the attacher dies both while its breakpoints wait for a safe point and
during the remote calls. Each trial starts `memray attach -o FILE PID`, kills it with
SIGKILL after a delay drawn uniformly from [0, 2 x the attach latency], then checks that
the target is alive and not stopped, and detaches any session that had started. After
the trials a normal attach and detach must still work and the target must exit 0.

    python bench/attach_kill_trials.py --memray target/release/memray --trials 200 \
        --python "$(pyenv root)/versions/3.12.1/bin/python3" [--python ...]
(`scripts/bench attach-kill` finds every interpreter itself.)
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = r"""
import sys, threading, time, os
stop = os.path.join(sys.argv[1], "stop")
def work():
    while not os.path.exists(stop):
        x = [str(i) for i in range(200)]
        time.sleep(0.0005)
for _ in range(3):
    threading.Thread(target=work, daemon=True).start()
open(os.path.join(sys.argv[1], "ready"), "w").close()
while not os.path.exists(stop):
    x = [bytes(100) for i in range(50)]
    time.sleep(0.0005)
"""

WAITING = r"""
import sys, threading, time, os
stop = os.path.join(sys.argv[1], "stop")
threading.Thread(target=lambda: threading.Event().wait(3600), daemon=True).start()
open(os.path.join(sys.argv[1], "ready"), "w").close()
while not os.path.exists(stop):
    threading.Event().wait(0.4)
    x = [bytes(100) for i in range(50)]
"""


def state(pid):
    try:
        for line in Path("/proc/%d/status" % pid).read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        return "gone"
    return "?"


def run(cmd, timeout=30):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


def trials(memray, python, kind, n, work, rng):
    d = Path(tempfile.mkdtemp(dir=work))
    script = d / "target.py"
    script.write_text(BUSY if kind == "busy" else WAITING)
    target = subprocess.Popen([python, str(script), str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (d / "ready").exists():
        if target.poll() is not None:
            raise SystemExit("target did not start: %s" % target.stderr.read().decode())
        time.sleep(0.01)
    out = d / "cap.bin"
    # The attach latency of this target (the fastest of three, after a first attach that
    # loads the payload), to spread the kills over the whole attach.
    latencies = []
    for _ in range(4):
        started = time.perf_counter()
        r = run([memray, "attach", "-f", "-o", str(out), str(target.pid)])
        latencies.append(time.perf_counter() - started)
        if r.returncode != 0:
            raise SystemExit("attach failed: %s" % r.stderr.decode())
        run([memray, "detach", str(target.pid)])
    latency = min(latencies[1:])
    tally = dict(trials=0, died=0, stopped=0, completed=0)
    for _ in range(n):
        delay = rng.uniform(0, 2 * latency)
        a = subprocess.Popen([memray, "attach", "-f", "-o", str(out), str(target.pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        a.send_signal(signal.SIGKILL)
        a.wait()
        if a.returncode == 0:
            tally["completed"] += 1
        tally["trials"] += 1
        time.sleep(0.05)
        if target.poll() is not None:
            tally["died"] += 1
            print("  target died: exit %s after a kill at %.1f ms" % (target.returncode, delay * 1e3), file=sys.stderr)
            break
        if state(target.pid) in ("t", "T"):
            tally["stopped"] += 1
            os.kill(target.pid, signal.SIGCONT)
        # A session the dead attacher's code finished starting by itself: stop it.
        for _ in range(20):
            r = run([memray, "detach", "--timeout", "5", str(target.pid)])
            if r.returncode == 0 or b"not being tracked" in r.stderr:
                break
            time.sleep(0.05)
    # Still attachable, and it ends normally.
    ok = target.poll() is None and run([memray, "attach", "-f", "-o", str(out), str(target.pid)]).returncode == 0
    ok = ok and run([memray, "detach", str(target.pid)]).returncode == 0
    (d / "stop").write_text("")
    try:
        code = target.wait(timeout=30)
    except subprocess.TimeoutExpired:
        target.kill()
        code = "hung"
    tally["later_attach_ok"] = ok
    tally["exit"] = code
    tally["latency_ms"] = round(latency * 1e3, 1)
    return tally


def pyenv_root():
    """Where pyenv keeps its interpreters, so the tally can tell them from the system's."""
    try:
        return subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip() or "/nonexistent"
    except OSError:
        return "/nonexistent"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memray", required=True)
    ap.add_argument("--python", action="append", required=True)
    ap.add_argument("--trials", type=int, default=200, help="per interpreter and target kind")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print("seed %d, %d trials per interpreter and target" % (seed, args.trials))
    total = dict(trials=0, died=0, stopped=0, bad_end=0)
    with tempfile.TemporaryDirectory() as work:
        for python in args.python:
            version = run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.decode().strip()
            for kind in ("busy", "waiting"):
                t = trials(args.memray, python, kind, args.trials, work, rng)
                bad_end = not t["later_attach_ok"] or t["exit"] != 0
                print("%-14s %-8s trials %4d  died %d  left stopped %d  attach finished first %3d  later attach %s  exit %s  (attach %.0f ms)" % (
                    "%s%s" % (version, "" if python.startswith(pyenv_root()) else " (system)"), kind, t["trials"], t["died"], t["stopped"], t["completed"],
                    "ok" if t["later_attach_ok"] else "FAILED", t["exit"], t["latency_ms"]), flush=True)
                total["trials"] += t["trials"]
                total["died"] += t["died"]
                total["stopped"] += t["stopped"]
                total["bad_end"] += bad_end
    print("total: %(trials)d trials, %(died)d target deaths, %(stopped)d left stopped, %(bad_end)d targets not attachable or not ending cleanly" % total)
    sys.exit(1 if total["died"] or total["stopped"] or total["bad_end"] else 0)


if __name__ == "__main__":
    main()
