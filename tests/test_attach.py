"""`memray attach` / `memray detach` on live processes, for every interpreter.

Each test starts a target program (under the interpreter being tested) that allocates
through tests/helpers/alloc_helper.c on marked lines, several calls deep, in the main
thread and in worker threads. It signals readiness and is steered through marker files
in the work directory (`ready`, `phase2`, `stop`, `done`). The tests attach and detach
with this project's CLI and read the captures with Memray 1.20 (the `reader` fixture).

Tests that need ptrace skip (with the reason) where the kernel refuses it.
"""
import ctypes
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import support
from support import MALLOC, assert_clean_error, assert_ok

pytestmark = pytest.mark.ours_only

MAIN_SIZE = 31337
WORKER_SIZE = 52111  # + worker index
PHASE2_MAIN = 61001
PHASE2_WORKER = 71003

TARGET = """
import os, sys, threading, time
sys.path.insert(0, os.environ.get("HELPERS_DIR", ""))
import allochelper
H = allochelper.load()
WORK = sys.argv[1]
N_WORKERS = int(sys.argv[2])

def flag(name):
    return os.path.exists(os.path.join(WORK, name))

def touch(name):
    with open(os.path.join(WORK, name), "w") as f:
        f.write(str(os.getpid()))

started = []

def worker_inner(i):
    phase2 = 0
    while not flag("stop"):
        if flag("phase2"):
            H.helper_free(H.helper_malloc(%(PHASE2_WORKER)d + i))  # @worker_phase2
            phase2 += 1
            if phase2 == 200:
                touch("phase2-worker-%%d" %% i)
        else:
            H.helper_free(H.helper_malloc(%(WORKER_SIZE)d + i))  # @worker_alloc
        time.sleep(0.001)

def worker_middle(i):
    started.append(i)
    worker_inner(i)  # @worker_call_inner

def worker_outer(i):
    worker_middle(i)  # @worker_call_middle

def main_inner():
    phase2 = 0
    while not flag("stop"):
        if flag("phase2"):
            H.helper_free(H.helper_malloc(%(PHASE2_MAIN)d))  # @main_phase2
            phase2 += 1
            if phase2 == 200:
                touch("phase2-main")
        else:
            H.helper_free(H.helper_malloc(%(MAIN_SIZE)d))  # @main_alloc
        if not flag("ready") and len(started) == N_WORKERS:
            touch("ready")
        time.sleep(0.001)

def main_middle():
    main_inner()  # @main_call_inner

def main():
    threads = [threading.Thread(target=worker_outer, args=(i,), name="worker-%%d" %% i) for i in range(N_WORKERS)]
    for t in threads:
        t.start()
    main_middle()  # @main_call_middle
    for t in threads:
        t.join()
    touch("done")

main()  # @module_call
""" % dict(PHASE2_WORKER=PHASE2_WORKER, WORKER_SIZE=WORKER_SIZE, PHASE2_MAIN=PHASE2_MAIN, MAIN_SIZE=MAIN_SIZE)


# --------------------------------------------------------------------------- helpers


def _ptrace_refusal():
    """None if this process may PTRACE_SEIZE a child of its own, else the reason."""
    if sys.platform != "linux":
        return "ptrace attach is Linux-only"
    libc = ctypes.CDLL(None, use_errno=True)
    child = subprocess.Popen(["sleep", "10"])
    try:
        libc.ptrace.restype = ctypes.c_long
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        PTRACE_SEIZE = 0x4206
        if libc.ptrace(PTRACE_SEIZE, child.pid, None, None) != 0:
            return "ptrace is not permitted here: %s" % os.strerror(ctypes.get_errno())
        return None
    finally:
        child.kill()
        child.wait()


_REFUSAL = _ptrace_refusal()
needs_ptrace = pytest.mark.skipif(_REFUSAL is not None, reason=str(_REFUSAL))


class Target:
    """A target program running under the tested interpreter."""

    def __init__(self, interp, env, workdir, script_text, *args, name="target.py", stdin=None, extra_env=None,
                 interp_args=(), broken_stderr=False):
        self.workdir = Path(workdir)
        self.path = self.workdir / name
        self.path.write_text(script_text)
        env = dict(env, **(extra_env or {}))
        env["HELPERS_DIR"] = str(Path(__file__).resolve().parent / "helpers")
        self.stdout_path = self.workdir / (name + ".out")
        self._out = open(self.stdout_path, "wb")
        stderr = subprocess.STDOUT
        if broken_stderr:
            # A pipe nobody reads any more (a log collector that died): writes get EPIPE.
            reader, stderr = os.pipe()
            os.close(reader)
        self.proc = subprocess.Popen(
            [interp.executable, *interp_args, str(self.path), str(self.workdir), *map(str, args)],
            cwd=self.workdir,
            env=env,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=self._out,
            stderr=stderr,
            start_new_session=True,
        )
        if broken_stderr:
            os.close(stderr)
        self.pid = self.proc.pid

    def wait_for(self, name, timeout=30):
        self._wait_until(lambda: (self.workdir / name).exists(), "create %s" % name, timeout)

    def _wait_until(self, done, what, timeout):
        deadline = time.time() + timeout
        while not done():
            if self.proc.poll() is not None:
                raise AssertionError("target exited early (%s)\n%s" % (self.proc.returncode, self.output()))
            if time.time() > deadline:
                raise AssertionError("target did not %s in %ss\n%s" % (what, timeout, self.output()))
            time.sleep(0.02)

    def touch(self, name):
        (self.workdir / name).write_text("")

    def run_phase2(self, n_workers):
        """Switches TARGET to its second phase and waits until every thread has made
        200 allocations of it."""
        self.touch("phase2")
        for name in ["phase2-main", *("phase2-worker-%d" % i for i in range(n_workers))]:
            self.wait_for(name)

    def wait_output(self, text, timeout=30):
        self._wait_until(lambda: text in self.output(), "print %r" % text, timeout)

    def alive(self):
        return self.proc.poll() is None

    def rss_kb(self):
        for line in Path("/proc/%d/status" % self.pid).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def output(self):
        self._out.flush()
        return self.stdout_path.read_text(errors="replace")

    def finish(self, timeout=30):
        """Lets the program end normally; returns its exit code."""
        self.touch("stop")
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("target did not finish after `stop`\n" + self.output())
        return code

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._out.close()


@pytest.fixture
def target(interp, tracked_env, workdir):
    started = []

    def start(script_text=TARGET, *args, **kw):
        t = Target(interp, tracked_env, workdir, script_text, *args, **kw)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()


@pytest.fixture
def cli(build, tracked_env, tmp_path):
    """This project's CLI, for the tests that do not depend on the interpreter."""
    from support import run

    def call(*args, timeout=None):
        return run([build.binary, *map(str, args)], cwd=tmp_path, env=tracked_env, timeout=timeout)

    return call


def assert_no_crash_output(text):
    for needle in ("Segmentation fault", "Fatal Python error", "core dumped", "Trace/breakpoint trap",
                   "Traceback (most recent call last)", "Exception ignored", "panicked"):
        assert needle not in text, "target printed %r:\n%s" % (needle, text)


def line_of(text, marker):
    for number, line in enumerate(text.splitlines(), start=1):
        if re.search(r"#\s*@%s\s*$" % marker, line):
            return number
    raise KeyError(marker)


def names(rec):
    return [f for f, _, _ in rec["stack"]]


# --------------------------------------------------------------------------- attach


def skip_redundant_method(interp, method):
    if method == "ptrace" and interp.minor < 14:
        pytest.skip("before 3.14, auto is ptrace")


def assert_route(interp, method, verbose_stderr):
    """Which way the attach went, from `attach -v`: PEP 768 by default from 3.14 on (the
    process never stopped), ptrace otherwise."""
    if method == "auto" and interp.minor >= 14:
        assert "loaded through PEP 768: the process was not stopped" in verbose_stderr, verbose_stderr
        assert "seized" not in verbose_stderr, verbose_stderr
    else:
        assert "seized" in verbose_stderr and "PEP 768" not in verbose_stderr, verbose_stderr


@needs_ptrace
@pytest.mark.parametrize("method", ["auto", "ptrace"])
def test_attach_sees_full_stacks_of_running_threads(interp, target, memray_cli, reader, workdir, method):
    skip_redundant_method(interp, method)
    t = target(TARGET, 2)
    t.wait_for("ready")
    out = workdir / "attach.bin"
    res = assert_ok(memray_cli("attach", "-v", "--method", method, "-o", "attach.bin", str(t.pid)))
    assert "memray detach %d" % t.pid in res.stderr
    assert_route(interp, method, res.stderr)
    time.sleep(0.5)
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.finish() == 0
    assert_no_crash_output(t.output())

    sizes = [MAIN_SIZE, WORKER_SIZE, WORKER_SIZE + 1]
    cap = reader.read(out, "all", "sizes=" + ",".join(map(str, sizes)))
    assert cap.metadata["pid"] == t.pid
    assert "target.py" in cap.metadata["command_line"]
    script = TARGET
    main = [r for r in cap.records if r["size"] == MAIN_SIZE and r["allocator"] == MALLOC]
    assert main, "no allocation of the main thread recorded"
    for rec in main:
        stack = [(f, os.path.basename(fn), ln) for f, fn, ln in rec["stack"]]
        # Every frame from <module> down, though all were entered before the attach.
        assert stack == [
            ("main_inner", "target.py", line_of(script, "main_alloc")),
            ("main_middle", "target.py", line_of(script, "main_call_inner")),
            ("main", "target.py", line_of(script, "main_call_middle")),
            ("<module>", "target.py", line_of(script, "module_call")),
        ], stack
    worker_tids = set()
    for i in range(2):
        recs = [r for r in cap.records if r["size"] == WORKER_SIZE + i and r["allocator"] == MALLOC]
        assert recs, "no allocation of worker %d recorded" % i
        for rec in recs:
            stack = [(f, os.path.basename(fn), ln) for f, fn, ln in rec["stack"]]
            assert stack[:3] == [
                ("worker_inner", "target.py", line_of(script, "worker_alloc")),
                ("worker_middle", "target.py", line_of(script, "worker_call_inner")),
                ("worker_outer", "target.py", line_of(script, "worker_call_middle")),
            ], stack
            # ...down to threading's bootstrap, the bottom of a Python thread.
            assert names(rec)[-1] == "_bootstrap", stack
            worker_tids.add(rec["tid"])
        # Threads running at the attach are named moments after tracking starts: on a busy
        # machine their first few records can come before the name, none after it.
        named = [r["thread_name"] for r in recs]
        assert "worker-%d" % i in named and set(named[named.index("worker-%d" % i):]) == {"worker-%d" % i}, named
    assert len(worker_tids) == 2
    assert main[0]["tid"] not in worker_tids


@needs_ptrace
def test_attach_duration_stops_by_itself(interp, target, memray_cli, reader, workdir):
    t = target(TARGET, 1)
    t.wait_for("ready")
    out = workdir / "duration.bin"
    attached_at = time.time()
    res = assert_ok(memray_cli("attach", "--duration", "2", "-o", str(out), str(t.pid)))
    assert "for 2" in res.stderr
    # The session ends by itself, with Memray's line on the target's stderr (written as it
    # starts stopping, which takes milliseconds); detach then finds nothing to stop.
    t.wait_output("memray: Deactivating tracking: 2 seconds have elapsed\n")
    time.sleep(1.0)
    assert_clean_error(memray_cli("detach", str(t.pid)), "no previous `memray attach` call detected")
    assert t.alive(), t.output()
    t.run_phase2(1)  # allocations after the end of the session
    assert t.finish() == 0
    assert_no_crash_output(t.output())
    cap = reader.read(out, "all", "sizes=%d,%d" % (MAIN_SIZE, PHASE2_MAIN))
    assert cap.find(size=MAIN_SIZE), "nothing recorded during the session"
    assert not cap.find(size=PHASE2_MAIN), "recorded after --duration ended"
    assert attached_at + 1.5 <= cap.metadata["end_time"] <= attached_at + 3.5, (attached_at, cap.metadata)


@needs_ptrace
def test_the_payloads_messages_never_harm_a_target_whose_stderr_is_gone(interp, target, memray_cli, workdir):
    """The deactivation line of --duration goes to a stderr whose reader has gone: the write
    fails (EPIPE) and the target runs on (a panic there would abort it)."""
    t = target(TARGET, 1, broken_stderr=True)
    t.wait_for("ready")
    assert_ok(memray_cli("attach", "--duration", "1", "-o", str(workdir / "gone.bin"), str(t.pid)))
    time.sleep(2.5)
    assert t.alive(), t.output()
    assert t.finish() == 0, t.output()
    assert_no_crash_output(t.output())


@needs_ptrace
def test_detach_stops_recording_and_process_runs_on(interp, target, memray_cli, reader, workdir):
    t = target(TARGET, 2)
    t.wait_for("ready")
    out = workdir / "detach.bin"
    assert_ok(memray_cli("attach", "-o", str(out), str(t.pid)))
    time.sleep(0.3)
    res = assert_ok(memray_cli("detach", str(t.pid)))
    assert str(out) in res.stderr
    # Detaching twice: nothing left to stop.
    assert_clean_error(memray_cli("detach", str(t.pid)), "not being tracked")
    t.run_phase2(2)  # allocations in every thread, none of them hooked
    assert t.alive(), t.output()
    assert t.finish() == 0
    assert_no_crash_output(t.output())
    cap = reader.read(out, "all", "sizes=%d,%d,%d" % (MAIN_SIZE, PHASE2_MAIN, PHASE2_WORKER))
    assert cap.find(size=MAIN_SIZE)
    assert not cap.find(size=PHASE2_MAIN) and not cap.find(size=PHASE2_WORKER), "recorded after detach"


@needs_ptrace
@pytest.mark.parametrize("method", ["auto", "ptrace"])
def test_many_attach_detach_cycles(interp, target, memray_cli, reader, workdir, method):
    skip_redundant_method(interp, method)
    t = target(TARGET, 4)
    t.wait_for("ready")
    cycles = 50
    rss = []
    for i in range(cycles):
        out = workdir / "cycle.bin"
        res = assert_ok(memray_cli("attach", "-v", "--method", method, "-f", "-o", str(out), str(t.pid)))
        assert_route(interp, method, res.stderr)
        time.sleep(0.05)
        assert_ok(memray_cli("detach", str(t.pid)))
        assert t.alive(), "target died at cycle %d\n%s" % (i, t.output())
        rss.append(t.rss_kb())
    # The last capture is complete and readable.
    cap = reader.read(workdir / "cycle.bin", "all", "sizes=%d" % MAIN_SIZE)
    assert cap.find(size=MAIN_SIZE)
    assert t.finish() == 0
    assert_no_crash_output(t.output())
    # RSS does not grow with the cycles (after the first few, which load the payload).
    growth = rss[-1] - rss[4]
    assert growth < 8 * 1024, "RSS grew by %d KiB over %d cycles: %s" % (growth, cycles - 5, rss)


@needs_ptrace
def test_attach_options_reach_the_tracker(interp, target, memray_cli, reader, workdir):
    t = target(TARGET, 1)
    t.wait_for("ready")
    out = workdir / "opts.bin"
    assert_ok(memray_cli("attach", "--trace-python-allocators", "--aggregate", "--no-compress", "-o", str(out), str(t.pid)))
    time.sleep(0.3)
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.finish() == 0
    assert out.read_bytes()[:7] == b"memray\x00"  # not compressed
    cap = reader.read(out, "hwm")
    assert cap.metadata["trace_python_allocators"] is True
    assert cap.metadata["file_format"] == 1
    assert isinstance(cap.hwm, list)


@needs_ptrace
def test_attach_with_sampling(interp, target, memray_cli, reader, workdir):
    """`attach --sampling-interval`: the capture is sampled (its interval in the header's
    n_frames, which Memray reads as total_frames), the sampled blocks weigh size / p, and
    only their frees are recorded."""
    t = target(TARGET, 1)
    t.wait_for("ready")
    out = workdir / "sampled.bin"
    interval = 16 * 1024
    assert_ok(memray_cli("attach", "--sampling-interval", "16KiB", "-o", str(out), str(t.pid)))
    t.run_phase2(1)
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.finish() == 0
    cap = reader.read(out, "all")
    assert cap.metadata["total_frames"] == interval
    weight = round(PHASE2_MAIN / -math.expm1(-PHASE2_MAIN / interval))
    main = [r for r in cap.records if r["size"] == weight and r["allocator"] == MALLOC]
    # 200 or more allocations, each sampled with p = 1 - exp(-61001/16384) = 98%.
    assert len(main) >= 150, len(main)
    assert main[0]["stack"][0][0] == "main_inner"
    support.assert_frees_only_of_recorded_blocks(cap.records)


SLEEPER = """
import os, sys, time
sys.path.insert(0, os.environ.get("HELPERS_DIR", ""))
import allochelper
H = allochelper.load()
WORK = sys.argv[1]
SECONDS = float(sys.argv[2])
def sleeper():
    open(os.path.join(WORK, "ready"), "w").close()
    start = time.monotonic()
    time.sleep(SECONDS)  # @sleep
    print("slept %.2f" % (time.monotonic() - start))
sleeper()
"""

READER = """
import os, sys, time
sys.path.insert(0, os.environ.get("HELPERS_DIR", ""))
import allochelper
H = allochelper.load()
WORK = sys.argv[1]
def read_all():
    open(os.path.join(WORK, "ready"), "w").close()
    data = sys.stdin.buffer.read()  # @read
    H.helper_free(H.helper_malloc(%d))  # @after_read
    open(os.path.join(WORK, "done"), "w").close()
    while not os.path.exists(os.path.join(WORK, "stop")):
        time.sleep(0.01)
    return data
print(len(read_all()))
""" % MAIN_SIZE


@needs_ptrace
def test_attach_to_process_in_long_sleep(interp, target, memray_cli, workdir):
    # This program never imports threading: the attach must not make it complain at exit.
    t = target(SLEEPER, 4)
    t.wait_for("ready")
    time.sleep(0.3)
    res = assert_ok(memray_cli("attach", "-v", "--timeout", "5", "-o", str(workdir / "sleep.bin"), str(t.pid)))
    assert "woken" in res.stderr, res.stderr
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.alive(), t.output()  # still in its sleep, which Python resumed
    assert t.proc.wait(timeout=30) == 0
    out = t.output()
    assert_no_crash_output(out)
    slept = float(re.search(r"slept ([0-9.]+)", out).group(1))
    assert slept >= 3.9, "the sleep was cut short: %s" % out


@needs_ptrace
def test_attach_to_process_in_blocking_read(interp, target, memray_cli, reader, workdir):
    t = target(READER, stdin=subprocess.PIPE)
    t.wait_for("ready")
    time.sleep(0.2)
    out = workdir / "read.bin"
    assert_ok(memray_cli("attach", "--timeout", "5", "-o", str(out), str(t.pid)))
    t.proc.stdin.write(b"x" * 1000)
    t.proc.stdin.close()
    t.wait_for("done")
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.finish() == 0
    assert t.output().strip().endswith("1000"), t.output()
    cap = reader.read(out, "all", "sizes=%d" % MAIN_SIZE)
    (rec,) = cap.find(size=MAIN_SIZE, allocator=MALLOC)
    assert names(rec) == ["read_all", "<module>"]


# --------------------------------------------------------------------------- errors

BLOCKED = """
import os, sys, threading, time
sys.path.insert(0, os.environ.get("HELPERS_DIR", ""))
import allochelper
H = allochelper.load()
WORK = sys.argv[1]
SECONDS = float(sys.argv[2])
EXIT = sys.argv[3] == "exit"
lock = threading.Lock()
lock.acquire()
open(os.path.join(WORK, "ready"), "w").close()
lock.acquire(timeout=SECONDS)   # blocked in a lock: no Python code, no allocation
if EXIT:
    os._exit(3)
for i in range(200):
    H.helper_free(H.helper_malloc(1000 + i))
open(os.path.join(WORK, "done"), "w").close()
"""


@needs_ptrace
def test_error_timeout_leaves_process_intact(interp, target, memray_cli, workdir):
    t = target(BLOCKED, 4, "run")
    t.wait_for("ready")
    time.sleep(0.2)
    started = time.time()
    res = memray_cli("attach", "--timeout", "1", "-o", str(workdir / "t.bin"), str(t.pid))
    assert_clean_error(res, "timed out")
    assert time.time() - started < 4
    # No breakpoint left behind: the program allocates and ends normally.
    assert t.proc.wait(timeout=30) == 0, t.output()
    assert (workdir / "done").exists()
    assert not (workdir / "t.bin").exists()
    assert_no_crash_output(t.output())


@needs_ptrace
def test_error_ctrl_c_leaves_process_intact(interp, target, build, tracked_env, workdir):
    t = target(BLOCKED, 4, "run")
    t.wait_for("ready")
    cli = subprocess.Popen(
        [str(build.binary), "attach", "-o", str(workdir / "c.bin"), str(t.pid)],
        env=tracked_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    time.sleep(1)
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=20)
    assert cli.returncode not in (0, None) and cli.returncode < 128, (cli.returncode, err)
    assert b"interrupted" in err, err
    assert t.proc.wait(timeout=30) == 0, t.output()
    assert (workdir / "done").exists()
    assert_no_crash_output(t.output())


@needs_ptrace
def test_error_process_exits_during_attach(interp, target, memray_cli, workdir):
    t = target(BLOCKED, 1, "exit")
    t.wait_for("ready")
    res = memray_cli("attach", "--timeout", "20", "-o", str(workdir / "x.bin"), str(t.pid))
    assert_clean_error(res, "exited")
    assert t.proc.wait(timeout=10) == 3


@needs_ptrace
def test_error_already_tracked(interp, target, memray_cli, workdir):
    t = target(TARGET, 1)
    t.wait_for("ready")
    assert_ok(memray_cli("attach", "-o", str(workdir / "a.bin"), str(t.pid)))
    res = memray_cli("attach", "-o", str(workdir / "b.bin"), str(t.pid))
    assert_clean_error(res, "already being tracked", "memray detach %d" % t.pid)
    assert not (workdir / "b.bin").exists()
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.finish() == 0


@needs_ptrace
def test_error_tracked_by_memray_run(interp, tracked_env, memray_run, memray_cli, workdir):
    (workdir / "ready").unlink(missing_ok=True)
    script = workdir / "run_target.py"
    script.write_text(TARGET)
    env = dict(tracked_env, HELPERS_DIR=str(Path(__file__).resolve().parent / "helpers"))
    proc = subprocess.Popen(memray_run.cmd("-o", workdir / "run.bin", script, workdir, 1), cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        # The file is created before the pid is written into it.
        while not ((workdir / "ready").exists() and (workdir / "ready").read_text().strip()) and time.time() < deadline:
            time.sleep(0.05)
        pid = int((workdir / "ready").read_text())
        assert_clean_error(memray_cli("attach", "-o", str(workdir / "b.bin"), str(pid)), "already being tracked")
        assert_clean_error(memray_cli("detach", str(pid)), "memray run")
        (workdir / "stop").write_text("")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_error_no_such_process(cli):
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert_clean_error(cli("attach", "-o", "x.bin", str(dead.pid)), "no such process")
    assert_clean_error(cli("detach", str(dead.pid)), "no such process")


def test_error_not_python(cli, workdir):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        res = cli("attach", "-o", str(workdir / "n.bin"), str(proc.pid))
        assert_clean_error(res, "not a CPython process")
        assert_clean_error(cli("detach", str(proc.pid)), "not being tracked")
    finally:
        proc.kill()
        proc.wait()


def _old_python():
    root = Path(os.path.expanduser("~/.pyenv/versions"))
    try:
        res = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
        if res.returncode == 0:
            root = Path(res.stdout.strip()) / "versions"
    except (OSError, subprocess.SubprocessError):
        pass
    for v in ("3.7", "3.6", "2.7"):
        for d in sorted(root.glob(v + ".*")):
            exe = d / "bin" / ("python" + v)
            if exe.exists():
                return exe, v
    return None, None


@needs_ptrace
def test_error_unsupported_version(cli, workdir):
    exe, version = _old_python()
    if exe is None:
        pytest.skip("no CPython older than 3.8 installed under pyenv")
    proc = subprocess.Popen([str(exe), "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        res = cli("attach", "-o", str(workdir / "o.bin"), str(proc.pid))
        assert_clean_error(res, "not supported", version)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


@needs_ptrace
def test_error_already_traced_by_another_tracer(interp, target, memray_cli, workdir):
    strace = subprocess.run(["which", "strace"], capture_output=True, text=True).stdout.strip()
    if not strace:
        pytest.skip("strace is not installed")
    t = target(TARGET, 1)
    t.wait_for("ready")
    tracer = subprocess.Popen([strace, "-qq", "-e", "trace=none", "-p", str(t.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            status = Path("/proc/%d/status" % t.pid).read_text()
            if re.search(r"TracerPid:\s*[1-9]", status):
                break
            time.sleep(0.05)
        res = memray_cli("attach", "-o", str(workdir / "s.bin"), str(t.pid))
        assert_clean_error(res, "permission denied", "already being traced")
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=10)
    assert t.finish() == 0


@needs_ptrace
def test_error_permission_other_user(interp, target, build, tracked_env, workdir):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as another user")
    setpriv = subprocess.run(["which", "setpriv"], capture_output=True, text=True).stdout.strip()
    if not setpriv:
        pytest.skip("setpriv is not installed")
    t = target(TARGET, 1)
    t.wait_for("ready")
    res = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(build.binary),
         "attach", "-o", "/tmp/never.bin", str(t.pid)],
        env=tracked_env, capture_output=True, text=True, timeout=60,
    )
    if "Permission denied" in res.stderr and "memray" not in res.stderr:
        pytest.skip("the CLI binary is not executable by uid 65534: " + res.stderr.strip())
    assert res.returncode == 1, res
    assert "permission denied" in res.stderr and "uid 0" in res.stderr, res.stderr
    assert t.finish() == 0


@needs_ptrace
def test_capture_belongs_to_the_attaching_user(tracked_env, build, cli, workdir):
    """The capture is made by memray attach and handed to the target as a descriptor: a
    file of the attaching user, in a directory the target's user cannot even enter; the
    target cannot make its compressed copy there, so memray detach does. Without the
    handover (MEMRAY_ATTACH_NO_HANDOFF, as on kernels before 5.6) the target opens the
    path itself, as its own user, and its failure comes back as one line."""
    python = Path("/usr/bin/python3.11")
    setpriv = subprocess.run(["which", "setpriv"], capture_output=True, text=True).stdout.strip()
    if os.geteuid() != 0 or not setpriv or not python.exists():
        pytest.skip("needs root, setpriv and /usr/bin/python3.11 to run a target as another user")
    private = workdir / "private"
    private.mkdir(mode=0o700)
    proc = subprocess.Popen([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(python), "-c",
                             "import time\nwhile True: time.sleep(0.01); x = [bytearray(100) for i in range(10)]"],
                            cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = private / "cap.bin"
        assert_ok(cli("attach", "-o", str(out), str(proc.pid)))
        assert out.stat().st_uid == os.geteuid()
        time.sleep(0.3)
        assert_ok(cli("detach", str(proc.pid)))
        assert out.read_bytes()[:4] == b"\x04\x22\x4d\x18", "not compressed"
        assert out.stat().st_uid == os.geteuid()
        assert sorted(p.name for p in private.iterdir()) == ["cap.bin"]
        assert proc.poll() is None
        # The old way: the target's own open fails, cleanly, and leaves nothing behind.
        env = dict(tracked_env, MEMRAY_ATTACH_NO_HANDOFF="1")
        res = support.run([build.binary, "attach", "-o", str(private / "other.bin"), str(proc.pid)], env=env)
        assert_clean_error(res, "could not start", "Permission denied")
        assert proc.poll() is None
        assert_ok(cli("attach", "-f", "-o", str(out), str(proc.pid)))
        assert_ok(cli("detach", str(proc.pid)))
    finally:
        proc.kill()
        proc.wait()


SECCOMP_RUNNER = r"""
/* seccomp-run NR PROGRAM ARGS...: runs PROGRAM under a seccomp filter that makes system
   call NR fail with EPERM, as Docker's default profile does for ptrace without
   CAP_SYS_PTRACE. */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    unsigned nr = (unsigned)atoi(argv[1]);
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof(code) / sizeof(code[0]), code };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("seccomp");
        return 3;
    }
    execv(argv[2], argv + 2);
    perror("execv");
    return 4;
}
"""

# x86-64 system call numbers.
SYSCALL_NUMBERS = {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311}


@pytest.mark.parametrize("call", sorted(SYSCALL_NUMBERS))
def test_error_seccomp_names_the_refused_call(call, tracked_env, build, workdir):
    """A container's seccomp profile that refuses what attaching needs: one line naming the
    call and what to change; the target runs on untouched."""
    python = Path("/usr/bin/python3.11")
    if not python.exists():
        pytest.skip("needs /usr/bin/python3.11")
    runner = workdir / "seccomp-run"
    (workdir / "seccomp-run.c").write_text(SECCOMP_RUNNER)
    subprocess.run([support.c_compiler(), "-O1", "-o", str(runner), str(workdir / "seccomp-run.c")], check=True)
    ready = workdir / "ready"
    proc = subprocess.Popen([str(python), "-c", "import time, pathlib\npathlib.Path(%r).touch()\n"
                             "while True: time.sleep(0.01); x = [bytearray(100) for i in range(10)]" % str(ready)],
                            cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.01)
        out = workdir / "cap.bin"
        res = support.run([str(runner), str(SYSCALL_NUMBERS[call]), build.binary, "attach", "--method", "ptrace",
                           "-o", str(out), str(proc.pid)], env=tracked_env)
        assert_clean_error(res, "seccomp", call, "SYS_PTRACE")
        assert not out.exists()
        assert proc.poll() is None
        # Nothing was changed: an attach without the filter works.
        assert_ok(support.run([build.binary, "attach", "-o", str(out), str(proc.pid)], env=tracked_env))
        assert_ok(support.run([build.binary, "detach", str(proc.pid)], env=tracked_env))
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_error_target_on_musl_libc(cli, workdir):
    """A process of an Alpine image runs on musl, where the glibc-built payload cannot
    load: one line saying so, before the process is touched."""
    musl_gcc = shutil.which("musl-gcc")
    if musl_gcc is None:
        pytest.skip("needs musl-gcc (scripts/setup-test-env installs musl-tools)")
    (workdir / "wait.c").write_text("#include <unistd.h>\nint main(void) { for (;;) pause(); }\n")
    subprocess.run([musl_gcc, "-o", str(workdir / "wait"), str(workdir / "wait.c")], check=True)
    proc = subprocess.Popen([str(workdir / "wait")])
    try:
        deadline = time.time() + 10
        while "musl" not in Path(f"/proc/{proc.pid}/maps").read_text():
            assert time.time() < deadline
            time.sleep(0.01)
        res = cli("attach", "-o", str(workdir / "cap.bin"), str(proc.pid))
        assert_clean_error(res, "musl", "glibc", str(proc.pid))
        assert proc.poll() is None
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "TracerPid:\t0" in status
    finally:
        proc.kill()
        proc.wait()


def test_error_output_exists(cli, workdir):
    existing = workdir / "exists.bin"
    existing.write_text("keep me")
    res = cli("attach", "-o", str(existing), str(os.getpid()))
    assert_clean_error(res, "already exists", "--force")
    assert existing.read_text() == "keep me"


def test_error_no_pid_without_terminal(cli):
    assert_clean_error(cli("attach", "-o", "x.bin"), "PID")


@pytest.mark.parametrize("flag", ["--aggregate", "--follow-fork", "--children"])
def test_error_output_needed_is_a_usage_error(cli, flag):
    """As Memray's argparse: exit 2, before anything touches the process."""
    res = cli("attach", flag, str(os.getpid()))
    assert res.returncode == 2, res.describe()
    assert "output file" in res.stderr and "-o" in res.stderr, res.describe()


def test_error_detach_not_tracked(interp, target, memray_cli):
    t = target(TARGET, 1)
    t.wait_for("ready")
    assert_clean_error(memray_cli("detach", str(t.pid)), "not being tracked")
    assert t.finish() == 0


# --------------------------------------------------------------------------- the attacher's death
#
# When `memray attach` dies (SIGKILL, OOM, a closed terminal) the kernel lets the target's
# threads run on exactly as they are. Each phase of the injection is reached on purpose
# (MEMRAY_ATTACH_TEST_PAUSE makes the injector stop there for a minute) and the attacher
# is killed there; the target must run on unharmed, not be left stopped, and take a later
# attach and detach. Every instant between two of the attacher's operations is covered by
# test_attacher_killed_before_every_operation, random ones by bench/attach_kill_trials.py.

WAITER = """
import os, sys, threading, time
sys.path.insert(0, os.environ.get("HELPERS_DIR", ""))
import allochelper
H = allochelper.load()
WORK = sys.argv[1]
open(os.path.join(WORK, "ready"), "w").close()
threading.Event().wait(float(sys.argv[2]))   # blocked: no Python code, no allocation
for i in range(200):
    H.helper_free(H.helper_malloc(1000 + i))
open(os.path.join(WORK, "woke"), "w").close()
while not os.path.exists(os.path.join(WORK, "stop")):
    time.sleep(0.01)
open(os.path.join(WORK, "done"), "w").close()
"""

# phase -> the target kind that reaches it: the busy one passes a safe point at once, the
# waiting one keeps our int3s armed until its wait ends, long after the attacher died.
KILL_PHASES = [("armed", "waiting"), ("sigaction", "busy"), ("call", "busy"), ("restore", "busy"), ("sigaction", "waiting")]


def _state(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    return "?"


def _sigtrap_caught(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTRAP - 1)))
    return False


@needs_ptrace
@pytest.mark.parametrize("phase,kind", KILL_PHASES, ids=["%s-%s" % p for p in KILL_PHASES])
def test_attacher_killed_mid_attach_leaves_target_unharmed(interp, target, build, tracked_env, memray_cli, reader, workdir, phase, kind):
    t = target(TARGET, 2) if kind == "busy" else target(WAITER, 3)
    t.wait_for("ready")
    env = dict(tracked_env, MEMRAY_ATTACH_TEST_PAUSE=phase)
    err_path = workdir / "attacher.err"
    with open(err_path, "wb") as err:
        # The phases are the ptrace route's (3.14+ would take PEP 768 by default).
        attacher = subprocess.Popen([str(build.binary), "attach", "--method", "ptrace", "-o", str(workdir / "killed.bin"), str(t.pid)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 30
    while b"test pause at " + phase.encode() not in err_path.read_bytes():
        assert attacher.poll() is None, err_path.read_text()
        assert time.time() < deadline, "the attacher never reached %s\n%s" % (phase, err_path.read_text())
        time.sleep(0.01)
    attacher.kill()
    attacher.wait()
    time.sleep(0.2)
    assert t.alive(), t.output()
    assert _state(t.pid) not in ("t", "T"), "target left stopped"
    if kind == "waiting":
        # Its wait ends now: it runs into whatever the dead attacher left.
        t.wait_for("woke")
        assert t.alive(), "target died after its wait (%s)\n%s" % (t.proc.returncode, t.output())
    # A later attach works and puts the program's SIGTRAP disposition back.
    # Where the dead attacher's call sequence finished by itself, tracking had started.
    memray_cli("detach", str(t.pid))
    res = memray_cli("attach", "-o", str(workdir / "later.bin"), str(t.pid))
    assert_ok(res)
    if kind == "busy":
        # Tracked allocations of the main loop, waited for (detaching at once left a window
        # with none in it on a busy machine).
        t.run_phase2(2)
    assert_ok(memray_cli("detach", str(t.pid)))
    assert not _sigtrap_caught(t.pid), "our SIGTRAP handler was left installed"
    assert t.finish() == 0, t.output()
    assert_no_crash_output(t.output())
    if kind == "busy":
        assert reader.read(workdir / "later.bin", "all", "sizes=%d" % PHASE2_MAIN).find(size=PHASE2_MAIN)


@needs_ptrace
@pytest.mark.parametrize("option,values", [
    ("--duration", ["0", "-1", "nan", "inf", "1e30", "1e19", "18446744073709551616"]),
    ("--timeout", ["0", "-1", "nan", "inf", "1e30", "18446744073709551616"]),
])
def test_attach_numeric_options_are_checked_before_the_target_is_touched(interp, target, memray_cli, workdir, option, values):
    t = target(TARGET, 1)
    t.wait_for("ready")
    for value in values:
        res = memray_cli("attach", "%s=%s" % (option, value), "-o", str(workdir / "n.bin"), str(t.pid))
        assert_clean_error(res, value)
        assert not (workdir / "n.bin").exists()
    for value in ["0", "-1", "nan", "inf", "1e30"]:
        assert_clean_error(memray_cli("detach", "--timeout=" + value, str(t.pid)), value)
    # The longest duration allowed is a duration like any other.
    assert_ok(memray_cli("attach", "--duration", "1e9", "-o", str(workdir / "long.bin"), str(t.pid)))
    time.sleep(0.3)
    assert t.alive()
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.finish() == 0, t.output()
    assert_no_crash_output(t.output())


def _kill_trials_module():
    import importlib.util
    path = Path(__file__).resolve().parent.parent / "bench" / "attach_kill_trials.py"
    spec = importlib.util.spec_from_file_location("attach_kill_trials", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_ptrace
@pytest.mark.parametrize("kind,n", [("busy", 15), ("waiting", 5)])
def test_attacher_killed_at_random_instants(interp, build, workdir, kind, n):
    """A sample of scripts/bench attach-kill (which runs hundreds): SIGKILL at a random
    instant of the attach, the target survives every time and ends normally."""
    import random
    trials = _kill_trials_module().trials
    seed = random.randrange(1 << 30)
    tally = trials(str(build.binary), interp.executable, kind, n, str(workdir), random.Random(seed))
    assert tally["died"] == 0 and tally["stopped"] == 0, (seed, tally)
    assert tally["later_attach_ok"] and tally["exit"] == 0, (seed, tally)


@needs_ptrace
@pytest.mark.parametrize("kind", ["busy", "waiting"])
def test_attacher_killed_before_every_operation(interp, build, workdir, kind):
    """The attacher kills itself before its 1st, 2nd, ... operation that changes the target
    (MEMRAY_ATTACH_TEST_KILL_AT), up to an attach that has fewer: every state it can leave
    the target in. The target survives each, is never left stopped, and ends normally."""
    tally = _kill_trials_module().sweep(str(build.binary), interp.executable, kind, str(workdir))
    assert tally["died"] == 0 and tally["stopped"] == 0, tally
    # The sweep ran to its end: an attach with fewer operations than the kill point.
    assert tally["completed"] == 1 and "attach_error" not in tally, tally
    assert tally["trials"] >= 40, tally
    assert tally["later_attach_ok"] and tally["exit"] == 0, tally


FORKER = """
import os, sys, time
sys.path.insert(0, os.environ.get("HELPERS_DIR", ""))
import allochelper
H = allochelper.load()
WORK = sys.argv[1]

def flag(name):
    return os.path.exists(os.path.join(WORK, name))

def loop(tag):
    H.helper_free(H.helper_malloc(%(MAIN_SIZE)d))
    open(os.path.join(WORK, tag + "-allocated"), "w").close()
    while not flag("stop"):
        H.helper_free(H.helper_malloc(%(MAIN_SIZE)d))
        time.sleep(0.002)

open(os.path.join(WORK, "ready"), "w").close()
while not flag("fork"):
    time.sleep(0.005)
pid = os.fork()
if pid == 0:
    with open(os.path.join(WORK, "child"), "w") as f:
        f.write(str(os.getpid()))
    loop("child")
    os._exit(0)
loop("parent")
os.waitpid(pid, 0)
""" % dict(MAIN_SIZE=MAIN_SIZE)


@needs_ptrace
def test_child_forked_after_an_attach_can_be_attached(interp, target, memray_cli, reader, workdir):
    t = target(FORKER)
    t.wait_for("ready")
    assert_ok(memray_cli("attach", "-o", str(workdir / "parent.bin"), str(t.pid)))
    t.touch("fork")
    t.wait_for("child")
    deadline = time.time() + 10
    while not (workdir / "child").read_text().strip() and time.time() < deadline:
        time.sleep(0.01)  # created before the pid is written into it
    child = int((workdir / "child").read_text())
    time.sleep(0.1)
    # The child came out of the fork untracked: attachable and detachable like any process.
    assert_ok(memray_cli("attach", "-o", str(workdir / "child.bin"), str(child)))
    time.sleep(0.2)
    # The parent may still be printing fork's DeprecationWarning about its threads (which
    # imports linecache, tokenize, re...; slow where the standard library has no .pyc).
    t.wait_for("parent-allocated")
    assert_ok(memray_cli("detach", str(child)))
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.finish() == 0, t.output()
    assert_no_crash_output(t.output())
    for name in ("parent.bin", "child.bin"):
        cap = reader.read(workdir / name, "all", "sizes=%d" % MAIN_SIZE)
        assert cap.find(size=MAIN_SIZE), name


# --------------------------------------------------------------------------- PEP 768

def needs_pep768(interp):
    if interp.minor < 14:
        pytest.skip("PEP 768 remote debugging is CPython 3.14+")


@needs_ptrace
@pytest.mark.parametrize("how", ["env", "xoption"])
def test_pep768_disabled_in_the_target_falls_back_to_ptrace(interp, target, memray_cli, reader, workdir, how):
    needs_pep768(interp)
    if how == "env":
        t = target(TARGET, 1, extra_env={"PYTHON_DISABLE_REMOTE_DEBUG": "1"})
    else:
        t = target(TARGET, 1, interp_args=["-X", "disable-remote-debug"])
    t.wait_for("ready")
    # Asked for PEP 768 only: one line naming why, and the process untouched.
    res = memray_cli("attach", "--method", "sys.remote_exec", "-o", str(workdir / "r.bin"), str(t.pid))
    assert_clean_error(res, "remote debugging is disabled")
    assert not (workdir / "r.bin").exists()
    # auto takes ptrace instead.
    out = workdir / "fallback.bin"
    res = assert_ok(memray_cli("attach", "-v", "-o", str(out), str(t.pid)))
    assert "PEP 768 not available" in res.stderr and "seized" in res.stderr, res.stderr
    time.sleep(0.3)
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.finish() == 0
    assert_no_crash_output(t.output())
    assert reader.read(out, "all", "sizes=%d" % MAIN_SIZE).find(size=MAIN_SIZE)


MAIN_BLOCKED = """
import os, sys, threading, time
sys.path.insert(0, os.environ.get("HELPERS_DIR", ""))
import allochelper
H = allochelper.load()
WORK = sys.argv[1]

def worker():
    # Ready once the main thread is inside join (it still runs a few bytecodes there
    # before blocking in C: a moment more for those).
    main = threading.main_thread().ident
    while sys._current_frames()[main].f_code.co_name != "join":
        time.sleep(0.001)
    time.sleep(0.05)
    open(os.path.join(WORK, "ready"), "w").close()
    while not os.path.exists(os.path.join(WORK, "stop")):
        H.helper_free(H.helper_malloc(%(WORKER_SIZE)d))  # @worker_alloc
        time.sleep(0.001)

t = threading.Thread(target=worker)
t.start()
t.join()   # the main thread runs no Python code until the worker ends
print("main thread done")
""" % dict(WORKER_SIZE=WORKER_SIZE)


@needs_ptrace
def test_pep768_request_not_taken_is_withdrawn(interp, target, memray_cli, reader, workdir):
    """The main thread sits in C (joining a thread): the interpreter never reaches its
    safe point. `sys.remote_exec` gives up with one line; auto withdraws the request after
    its grace period and takes ptrace. Either way no script runs later, when the main
    thread wakes up."""
    needs_pep768(interp)
    t = target(MAIN_BLOCKED)
    t.wait_for("ready")
    res = memray_cli("attach", "--method", "sys.remote_exec", "--timeout", "1", "-o", str(workdir / "r.bin"), str(t.pid))
    assert_clean_error(res, "timed out", "--method ptrace")
    out = workdir / "fallback.bin"
    started = time.time()
    res = assert_ok(memray_cli("attach", "-v", "-o", str(out), str(t.pid)))
    assert "ran no Python code within 1.0 s; using ptrace" in res.stderr and "seized" in res.stderr, res.stderr
    assert time.time() - started < 5
    time.sleep(0.3)
    assert_ok(memray_cli("detach", str(t.pid)))
    assert t.finish() == 0
    # The withdrawn requests ran nothing once the main thread woke: no second session
    # (which would have written r.bin), nothing on the program's output.
    time.sleep(0.2)
    assert not (workdir / "r.bin").exists()
    assert t.output().strip() == "main thread done", t.output()
    cap = reader.read(out, "all", "sizes=%d" % WORKER_SIZE)
    assert cap.find(size=WORKER_SIZE)


def test_pep768_request_of_a_killed_attach_does_nothing(interp, target, build, tracked_env, memray_cli, workdir):
    """`memray attach` is SIGKILLed while its request waits for the main thread: when the
    thread gets to it, the script finds nobody waiting (the CLI's lock on it died with the
    CLI) and starts nothing. Before, the request started a session nobody would stop."""
    needs_pep768(interp)
    # After the join, half a second of Python: the request, were it acted on, starts then.
    t = target(MAIN_BLOCKED.replace('print("main thread done")',
                                    'for _ in range(50):\n    time.sleep(0.01)\nprint("main thread done")'))
    t.wait_for("ready")
    out = workdir / "killed.bin"
    attach = subprocess.Popen([str(build.binary), "attach", "--method", "sys.remote_exec", "--timeout", "60",
                               "-o", str(out), str(t.pid)], env=tracked_env, cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    assert attach.poll() is None, "the attach ended although the main thread cannot take its request"
    attach.kill()
    attach.wait()
    assert t.finish() == 0, t.output()   # the worker ends, the main thread runs Python again
    assert t.output().strip() == "main thread done", t.output()
    assert not out.exists(), "the killed attach's request started a session"


@needs_ptrace
def test_pep768_attach_leaves_no_script_and_reuses_a_loaded_payload(interp, target, memray_cli, reader, workdir):
    needs_pep768(interp)
    t = target(TARGET, 1)
    t.wait_for("ready")
    for i in range(2):
        out = workdir / ("p%d.bin" % i)
        res = assert_ok(memray_cli("attach", "-v", "--method", "sys.remote_exec", "-o", str(out), str(t.pid)))
        assert "not stopped" in res.stderr, res.stderr
        script = re.search(r"run (\S+\.py) at its next", res.stderr).group(1)
        assert not os.path.exists(script), "the PEP 768 script was left behind"
        if i == 1:
            assert "payload already loaded" in res.stderr, res.stderr
        time.sleep(0.3)
        assert_ok(memray_cli("detach", str(t.pid)))
        assert reader.read(out, "all", "sizes=%d" % MAIN_SIZE).find(size=MAIN_SIZE)
    assert t.finish() == 0
    assert_no_crash_output(t.output())


def test_pep768_method_refused_before_3_14_and_debugger_methods_explained(interp, target, memray_cli, workdir):
    t = target(TARGET, 1)
    t.wait_for("ready")
    if interp.minor < 14:
        res = memray_cli("attach", "--method", "sys.remote_exec", "-o", str(workdir / "r.bin"), str(t.pid))
        assert_clean_error(res, "PEP 768 came with CPython 3.14")
    res = memray_cli("attach", "--method", "gdb", "-o", str(workdir / "g.bin"), str(t.pid))
    assert_ok(res)
    assert "without a debugger" in res.stderr
    assert_ok(memray_cli("detach", "--method", "lldb", str(t.pid)))
    assert t.finish() == 0


NO_CTYPES = """
import os, sys, time
sys.modules["ctypes"] = None   # `import ctypes` now fails, as in a build without it
WORK = sys.argv[1]
open(os.path.join(WORK, "ready"), "w").close()
while not os.path.exists(os.path.join(WORK, "stop")):
    x = [bytearray(100) for _ in range(10)]
    time.sleep(0.005)
print("done")
"""


@needs_ptrace
def test_pep768_script_that_cannot_load_the_payload_is_reported(interp, target, memray_cli, workdir):
    """The script runs (the main thread takes the request) but cannot load the payload:
    one line naming the likely cause, nothing printed by the program, which runs on."""
    needs_pep768(interp)
    t = target(NO_CTYPES)
    t.wait_for("ready")
    res = memray_cli("attach", "--method", "sys.remote_exec", "--timeout", "2", "-o", str(workdir / "r.bin"), str(t.pid))
    assert_clean_error(res, "did not load the payload", "ctypes")
    assert t.alive()
    assert t.finish() == 0
    assert t.output().strip() == "done", t.output()
