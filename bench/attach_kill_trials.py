"""SIGKILL `memray attach` at random instants; count the targets that did not survive.

For each interpreter, two long-lived targets: a busy one (four threads allocating) and a
waiting one (its main thread blocked in threading.Event().wait, the only other thread
idle), so that the attacher dies both while its breakpoints wait for a safe point and
during the remote calls. Each trial starts `memray attach -o FILE PID`, kills it with
SIGKILL after a delay drawn uniformly from [0, 2 x the attach latency], then checks that
the target is alive and not stopped, and detaches any session that had started. After
the trials a normal attach and detach must still work and the target must exit 0.
Each sweep kills the attacher before its 1st, 2nd, ... operation that changes the target
(MEMRAY_ATTACH_TEST_KILL_AT), up to an attach with fewer operations.

    python bench/attach_kill_trials.py --memray target/release/memray --trials 200 \
        --python "$(pyenv root)/versions/3.12.1/bin/python3" [--python ...]
(`scripts/bench attach-kill` finds every interpreter itself.)
"""
import argparse
import contextlib
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
    threading.Event().wait(0.15)
    x = [bytes(100) for i in range(50)]
"""


def thread_states(pid):
    """(tid, state letter) of every thread of `pid`."""
    out = []
    for task in Path("/proc/%d/task" % pid).glob("*"):
        try:
            out.append((int(task.name), (task / "stat").read_text().rsplit(") ", 1)[1][:1]))
        except (OSError, IndexError):
            pass
    return out


def threads_of(pid):
    """Each thread's state, kernel wait channel and system call: what a hung target waits on."""
    out = []
    for task in sorted(Path("/proc/%d/task" % pid).glob("*")):
        def read(name):
            try:
                return (task / name).read_text().strip()
            except OSError:
                return "?"
        out.append("%s %s wchan=%s syscall=%s" % (task.name, read("stat").split(") ")[-1][:1], read("wchan"), read("syscall").split(" ")[0]))
    return "; ".join(out)


def run(cmd, timeout=30):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


def start_target(python, kind, work):
    d = Path(tempfile.mkdtemp(dir=work))
    script = d / "target.py"
    script.write_text(BUSY if kind == "busy" else WAITING)
    target = subprocess.Popen([python, str(script), str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (d / "ready").exists():
        if target.poll() is not None:
            raise SystemExit("target did not start: %s" % target.stderr.read().decode())
        time.sleep(0.01)
    return d, target


def attach_latency(memray, target, out):
    """The attach latency of this target (the fastest of three, after a first attach that
    loads the payload), to spread the kills over the whole attach."""
    latencies = []
    for _ in range(4):
        started = time.perf_counter()
        r = run([memray, "attach", "-f", "-o", str(out), str(target.pid)])
        latencies.append(time.perf_counter() - started)
        if r.returncode != 0:
            raise SystemExit("attach failed: %s" % r.stderr.decode())
        r = run([memray, "detach", str(target.pid)])
        if r.returncode != 0:
            raise SystemExit("detach failed: %s" % r.stderr.decode())
    return min(latencies[1:])


def after_kill(memray, target, tally, what):
    """Checks the target after one killed attach: alive, no thread left stopped, and any
    session the dead attacher's code finished starting is stopped. False if it died."""
    time.sleep(0.05)
    if target.poll() is not None:
        tally["died"] += 1
        print("  target died: exit %s after %s" % (target.returncode, what), file=sys.stderr)
        return False
    stopped = [t for t, st in thread_states(target.pid) if st in ("t", "T")]
    if stopped:
        tally["stopped"] += 1
        print("  threads %s left stopped after %s" % (stopped, what), file=sys.stderr)
        os.kill(target.pid, signal.SIGCONT)
    for _ in range(20):
        r = run([memray, "detach", "--timeout", "5", str(target.pid)])
        if r.returncode == 0 or b"not being tracked" in r.stderr:
            break
        time.sleep(0.05)
    return True


def finish(memray, target, d, out, tally):
    """Still attachable, and it ends normally."""
    ok = target.poll() is None and run([memray, "attach", "-f", "-o", str(out), str(target.pid)]).returncode == 0
    ok = ok and run([memray, "detach", str(target.pid)]).returncode == 0
    (d / "stop").write_text("")
    try:
        code = target.wait(timeout=30)
    except subprocess.TimeoutExpired:
        tally["hang_detail"] = threads_of(target.pid)
        # SIGABRT: a core dump to read, where core dumps are enabled.
        target.send_signal(signal.SIGABRT)
        try:
            target.wait(timeout=10)
        except subprocess.TimeoutExpired:
            target.kill()
        code = "hung"
    tally["later_attach_ok"] = ok
    tally["exit"] = code
    return tally


@contextlib.contextmanager
def killed_on_error(target):
    """A trial that fails midway (an attach refused, an assertion) does not leave its
    target running."""
    try:
        yield
    except BaseException:
        if target.poll() is None:
            target.kill()
            target.wait()
        raise


def trials(memray, python, kind, n, work, rng):
    d, target = start_target(python, kind, work)
    with killed_on_error(target):
        out = d / "cap.bin"
        latency = attach_latency(memray, target, out)
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
            if not after_kill(memray, target, tally, "a kill at %.1f ms" % (delay * 1e3)):
                break
        tally["latency_ms"] = round(latency * 1e3, 1)
        return finish(memray, target, d, out, tally)


def sweep(memray, python, kind, work, method="ptrace"):
    """Kills the attacher before its 1st, 2nd, ... operation that changes the target
    (MEMRAY_ATTACH_TEST_KILL_AT), until an attach has fewer operations: every state the
    attacher can leave the target in, each met once."""
    d, target = start_target(python, kind, work)
    with killed_on_error(target):
        out = d / "cap.bin"
        attach_latency(memray, target, out)
        tally = dict(trials=0, died=0, stopped=0, completed=0)
        at = 1
        while True:
            env = dict(os.environ, MEMRAY_ATTACH_TEST_KILL_AT=str(at))
            a = subprocess.run([memray, "attach", "--method", method, "-f", "-o", str(out), str(target.pid)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
            if a.returncode != -signal.SIGKILL:
                tally["completed"] += 1
                if a.returncode != 0:
                    tally["attach_error"] = a.stderr.decode(errors="replace").strip()
                run([memray, "detach", str(target.pid)])
                break
            tally["trials"] += 1
            if not after_kill(memray, target, tally, "a kill before operation %d" % at):
                break
            at += 1
        return finish(memray, target, d, out, tally)


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
    ap.add_argument("--sweeps", type=int, default=1,
                    help="per interpreter and target kind: kills before every operation of the attacher (0: none)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print("seed %d, %d trials and %d sweeps per interpreter and target" % (seed, args.trials, args.sweeps))
    total = dict(trials=0, died=0, stopped=0, bad_end=0)

    def count(t):
        bad_end = not t["later_attach_ok"] or t["exit"] != 0 or "attach_error" in t
        total["trials"] += t["trials"]
        total["died"] += t["died"]
        total["stopped"] += t["stopped"]
        total["bad_end"] += bad_end
        return "died %d  left stopped %d  later attach %s  exit %s" % (
            t["died"], t["stopped"], "ok" if t["later_attach_ok"] else "FAILED", t["exit"])

    with tempfile.TemporaryDirectory() as work:
        for python in args.python:
            version = run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.decode().strip()
            name = version if python.startswith(pyenv_root()) else "%s (%s)" % (version, os.path.basename(python))
            for kind in ("busy", "waiting"):
                if args.trials:
                    t = trials(args.memray, python, kind, args.trials, work, rng)
                    print("%-26s %-8s random  trials %4d  %s  attach finished first %3d  (attach %.0f ms)" % (
                        name, kind, t["trials"], count(t), t["completed"], t["latency_ms"]), flush=True)
                for _ in range(args.sweeps):
                    t = sweep(args.memray, python, kind, work)
                    print("%-26s %-8s sweep   kills %4d  %s%s" % (
                        name, kind, t["trials"], count(t), "  " + t["attach_error"] if "attach_error" in t else ""), flush=True)
    print("total: %(trials)d kills, %(died)d target deaths, %(stopped)d left stopped, %(bad_end)d targets not attachable or not ending cleanly" % total)
    sys.exit(1 if total["died"] or total["stopped"] or total["bad_end"] else 0)


if __name__ == "__main__":
    main()
