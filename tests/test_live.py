"""Live mode: `memray run --live`, `run --live-remote` + `memray live PORT`, `memray attach
PID` without -o, and `memray.Tracker(destination=SocketDestination(...))`.

The view is driven in tmux (a real terminal): keys go in with send-keys, the screen comes
back with capture-pane. The tracked programs are real CPython processes under every
interpreter; the protocol faults (a viewer SIGKILLed, the tracked process SIGKILLed,
garbage sent to the port, a foreign server, a port in use) use real sockets on 127.0.0.1.

The program below holds memory at known sites: `leaf_big` (one 20 MB block, reached
through `holder`, which owns nothing itself), `many_blocks` (300 blocks of 20 kB) and, on
a thread named `worker-thread`, `worker_site` (20 blocks of 100 kB). Sorting by total,
own memory and allocation count orders these three ways. It keeps allocating until a
`stop` file appears, and writes `untracked` once memray's tracker is no longer active.
"""
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support import assert_clean_error, assert_ok, run

pytestmark = [
    pytest.mark.ours_only,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/setup-test-env installs it)"),
]

PROGRAM = """
import os, signal, sys, threading, time
WORK = sys.argv[1]
if "--sigpipe-default" in sys.argv:
    # A program that restores SIGPIPE's default: a write to a gone viewer must not kill it.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

def touch(name, text=""):
    path = os.path.join(WORK, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)

def flag(name):
    return os.path.exists(os.path.join(WORK, name))

def tracking_active():
    for name in ("_memray_run", "_memray_attach"):
        m = sys.modules.get(name)
        if m is not None and getattr(m, "_lib", None) is not None:
            return bool(m._lib.memray_tracker_is_active())
    return None

def leaf_big():
    return bytearray(20000000)

def holder():
    return leaf_big()

def many_blocks():
    out = []  # a loop, not a comprehension: before 3.12 that is a frame of its own
    for _ in range(300):
        out.append(bytearray(20000))
    return out

def worker_site(stop):
    # Renewed now and then, so that a view attached later sees it too.
    held = None
    while not stop.is_set():
        fresh = []
        for _ in range(20):
            fresh.append(bytearray(100000))
        held = fresh  # the old blocks go only once the new ones exist
        stop.wait(0.3)
    return held

def worker_main(stop):
    worker_site(stop)

def main():
    print("program says hello", flush=True)
    big = holder()
    blocks = many_blocks()
    stop = threading.Event()
    t = threading.Thread(target=worker_main, args=(stop,), name="worker-thread")
    t.start()
    touch("pid", str(os.getpid()))
    seen_untracked = False
    renewed = time.time()
    while not flag("stop"):
        if time.time() - renewed > 0.3:
            fresh = (holder(), many_blocks())
            big, blocks = fresh  # the old blocks go only once the new ones exist
            fresh = None
            renewed = time.time()
        churn = [bytearray(1000) for _ in range(20)]
        if not seen_untracked and tracking_active() is False:
            seen_untracked = True
            touch("untracked")
        time.sleep(0.005)
    stop.set()
    t.join()
    print("program says goodbye", flush=True)

main()
"""

_sessions = itertools.count()


class Tmux:
    """One tmux server (own socket) running one command in a 160x45 pane."""

    def __init__(self, workdir: Path, env: dict):
        self.workdir = Path(workdir)
        self.env = dict(env)
        self.env.pop("TMUX", None)
        self.socket = "memray-test-%d-%d" % (os.getpid(), next(_sessions))
        self.started = False

    def _tmux(self, *args, check=True):
        res = subprocess.run(["tmux", "-u", "-L", self.socket, "-f", "/dev/null", *args],
                             env=self.env, capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise AssertionError("tmux %s failed: %s" % (args, res.stderr))
        return res

    def start(self, *argv, env=None):
        script = self.workdir / ("tmux-%s.sh" % self.socket)
        exports = "".join("export %s=%s\n" % (k, shlex.quote(v)) for k, v in (env or self.env).items()
                          if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k))
        script.write_text("%scd %s\n%s\necho \"EXIT=$?\"\nsleep 600\n"
                          % (exports, shlex.quote(str(self.workdir)), " ".join(shlex.quote(str(a)) for a in argv)))
        self._tmux("new-session", "-d", "-x", "160", "-y", "45", "sh", str(script))
        self.started = True

    def screen(self):
        return self._tmux("capture-pane", "-p").stdout

    def send(self, *keys):
        self._tmux("send-keys", *keys)

    def wait_for(self, what, timeout=30):
        """Waits until `what` (a string, or a predicate on the screen) shows; returns the screen."""
        test = what if callable(what) else (lambda s: what in s)
        deadline = time.time() + timeout
        screen = ""
        while time.time() < deadline:
            screen = self.screen()
            if test(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError("timed out waiting for %r; the screen shows:\n%s" % (what, screen))

    def command_pid(self):
        """The pid of the command the pane's shell runs."""
        shell = int(self._tmux("display-message", "-p", "#{pane_pid}").stdout.strip())
        children = Path("/proc/%d/task/%d/children" % (shell, shell)).read_text().split()
        return int(children[0])

    def close(self):
        if self.started:
            self._tmux("kill-server", check=False)


@pytest.fixture
def tmux(workdir, tracked_env):
    sessions = []

    def make():
        t = Tmux(workdir, tracked_env)
        sessions.append(t)
        return t

    yield make
    for t in sessions:
        t.close()


def table(screen):
    """Function names of the table's rows, top to bottom."""
    lines = screen.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("Location"))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("q quit"):
            break
        rows.append(line.split()[0])
    return rows


def above(screen, first, second):
    rows = table(screen)
    return first in rows and second in rows and rows.index(first) < rows.index(second)


def wait_file(path: Path, timeout=30, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            return path.read_text()
        if proc is not None and proc.poll() is not None:
            raise AssertionError("process exited (%s) before %s appeared" % (proc.returncode, path.name))
        time.sleep(0.02)
    raise AssertionError("%s did not appear within %ss" % (path, timeout))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _showing(screen):
    """The label of the "Showing:" line: `thread N of M (name)`, or without a name."""
    for line in screen.splitlines():
        if "Showing:" in line:
            return line.split("Showing:", 1)[1].strip().split("   ")[0]
    return ""


def select_thread(view, name):
    """Right arrow until the view shows thread `name`, or with `name=None` the first
    unnamed thread (threads are numbered in the order they first allocate)."""
    def shown(screen):
        label = _showing(screen)
        return label.startswith("thread") and (("(%s)" % name in label) if name else "(" not in label)

    view.wait_for(lambda s: "Showing: thread" in s)
    for _ in range(4):
        if shown(view.screen()):
            return
        view.send("Right")
        time.sleep(0.3)
    view.wait_for(shown, timeout=5)


def drive_view(view, pid, threads=True, main_name=None):
    """Checks the header, the sites, every sort key, thread switching and pause. The main
    thread is unnamed (as Memray leaves a thread that ran before tracking) except where
    `memray attach` named it (`main_name`)."""
    view.wait_for("PID: %d" % pid)
    select_thread(view, main_name)
    view.wait_for(lambda s: "many_blocks" in s and "leaf_big" in s)
    # Total: holder (20 MB, owns nothing) over many_blocks (6 MB).
    view.wait_for(lambda s: "Total Memory \u25bc" in s and above(s, "holder", "many_blocks"))
    view.send("o")  # own: leaf_big (20 MB) over many_blocks (6 MB) over holder (0)
    view.wait_for(lambda s: "Own Memory \u25bc" in s and above(s, "leaf_big", "many_blocks")
                  and above(s, "many_blocks", "holder"))
    view.send("a")  # count: many_blocks (301) over leaf_big (1)
    view.wait_for(lambda s: "Allocations \u25bc" in s and above(s, "many_blocks", "leaf_big"))
    view.send("t")
    view.wait_for(lambda s: "Total Memory \u25bc" in s and above(s, "leaf_big", "many_blocks"))
    if threads:
        select_thread(view, "worker-thread")
        screen = view.wait_for(lambda s: "(worker-thread)" in s and "worker_site" in s)
        assert "leaf_big" not in table(screen), screen
        view.send("m")
        view.wait_for(lambda s: "threads merged" in s and "worker_site" in table(s) and "leaf_big" in table(s))
    view.send("Space")
    view.wait_for("PAUSED")
    view.send("Space")
    view.wait_for(lambda s: "PAUSED" not in s and "streaming" in s)


# --------------------------------------------------------------------------- run --live


def test_run_live_view(interp, build, tracked_env, workdir, tmux):
    prog = workdir / "prog.py"
    prog.write_text(PROGRAM)
    env = dict(tracked_env, MEMRAY_PYTHON=interp.executable)
    view = tmux()
    view.start(build.binary, "run", "--live", prog, workdir, env=env)
    pid = int(wait_file(workdir / "pid"))
    drive_view(view, pid)
    assert "program says hello" not in view.screen(), "the program's output reached the view"

    view.send("q")
    screen = view.wait_for("waiting for the program")
    log = re.search(r"the program's output is in (\S+)", screen).group(1)
    assert "program says hello" in Path(log).read_text()
    # Tracking stopped in the program, which runs on.
    wait_file(workdir / "untracked", timeout=15)
    os.kill(pid, 0)
    (workdir / "stop").write_text("")
    view.wait_for("EXIT=0")
    text = Path(log).read_text()
    assert "program says goodbye" in text and "no longer streams" in text, text
    for bad in ("Traceback", "Segmentation", "Fatal Python error"):
        assert bad not in text, text


# --------------------------------------------------------------------------- without a terminal

SHORT_PROGRAM = """
import sys
def holder():
    return [bytearray(100000) for _ in range(30)]
kept = holder()
print("short program done")
sys.exit(3)
"""


def view_text(stdout):
    """The view printed as text: its lines, without the blank ones at the end."""
    assert "\x1b[" not in stdout, "escape sequences in the text view:\n" + stdout
    return stdout.rstrip("\n").splitlines()


def test_run_live_without_a_terminal_prints_the_view_when_the_program_ends(interp, build, tracked_env, workdir):
    """A script or CI drives `run --live` with stdout redirected: the program runs, the view is
    printed once as plain text when its stream ends, and memray exits with its status."""
    prog = workdir / "short.py"
    prog.write_text(SHORT_PROGRAM)
    env = dict(tracked_env, MEMRAY_PYTHON=interp.executable, COLUMNS="120", LINES="30")
    res = run([build.binary, "run", "--live", prog], cwd=workdir, env=env, timeout=60)
    assert res.returncode == 3, res.describe()
    lines = view_text(res.stdout)
    assert len(lines) <= 30 and max(len(l) for l in lines) <= 120, res.stdout
    assert lines[1].startswith("PID: ") and "tracking ended" in res.stdout, res.stdout
    row = next(l for l in lines if l.startswith("holder"))
    # 30 blocks of 100,001 bytes (and, on some versions, the list holding them).
    assert re.search(r"\b3\.00\dMB\b", row) and re.search(r"\s3[01]\s", row), row
    assert "short program done" not in res.stdout  # the program's output went to its log
    log = re.search(r"the program's output is in (\S+)", res.stderr).group(1)
    assert "short program done" in Path(log).read_text()


def test_run_live_sampled_says_the_figures_are_estimates(interp, build, tracked_env, workdir):
    """`run --live --sampling-interval`: the view says once that it shows estimates."""
    prog = workdir / "short.py"
    prog.write_text(SHORT_PROGRAM)
    env = dict(tracked_env, MEMRAY_PYTHON=interp.executable, COLUMNS="120", LINES="30")
    res = run([build.binary, "run", "--live", "--sampling-interval", "64KiB", prog], cwd=workdir, env=env, timeout=60)
    assert res.returncode == 3, res.describe()
    text = "\n".join(view_text(res.stdout))
    assert text.count("bytes and counts are estimates") == 1 and "per 64.0KiB" in text, res.stdout
    # 30 blocks of 100 kB, each sampled with p = 78% and weighing 128 kB.
    row = next(l for l in text.splitlines() if l.startswith("holder"))
    assert re.search(r"\b[1-4]\.\d{3}MB\b", row), row


def test_live_without_a_terminal_ends_on_a_signal(interp, build, tracked_env, workdir):
    """`memray live PORT` with stdout redirected, ended by SIGINT (as a script's timeout would):
    the view as text, and the program runs on untracked."""
    proc, port = start_remote(build, tracked_env, workdir)
    try:
        out = open(workdir / "viewer.out", "wb")
        viewer = subprocess.Popen([str(build.binary), "live", str(port)], cwd=workdir, env=tracked_env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
        wait_file(workdir / "pid", timeout=30)
        time.sleep(1.0)  # a few snapshots
        viewer.send_signal(signal.SIGINT)
        assert viewer.wait(timeout=30) == 0, viewer.stderr.read()
        lines = view_text((workdir / "viewer.out").read_text())
        assert any(l.startswith("holder") or l.startswith("leaf_big") for l in lines), lines
        assert "viewer closed" in viewer.stderr.read().decode()
        wait_file(workdir / "untracked", timeout=15)
        assert stop_remote(proc, workdir) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- --live-remote


def start_remote(build, env, workdir, *prog_args, port=None):
    prog = workdir / "prog.py"
    prog.write_text(PROGRAM)
    err = open(workdir / "remote.err", "wb")
    args = [build.binary, "run", "--live-remote"]
    if port:
        args += ["--live-port", str(port)]
    proc = subprocess.Popen([*map(str, args), str(prog), str(workdir), *prog_args], cwd=workdir, env=env,
                            stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        m = re.search(r"Run `memray live (\d+)`", (workdir / "remote.err").read_text())
        if m:
            return proc, int(m.group(1))
        assert proc.poll() is None, (workdir / "remote.err").read_text()
        time.sleep(0.02)
    raise AssertionError("no port announced:\n" + (workdir / "remote.err").read_text())


def stop_remote(proc, workdir):
    (workdir / "stop").write_text("")
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the program did not finish:\n" + (workdir / "remote.err").read_text())


def test_live_remote_viewer_killed(interp, build, tracked_env, workdir, tmux):
    """`memray live PORT` is the viewer; SIGKILLed, it leaves the program running untracked
    (even with SIGPIPE at its default), and the port says clearly that it no longer serves."""
    env = dict(tracked_env, MEMRAY_PYTHON=interp.executable)
    proc, port = start_remote(build, env, workdir, "--sigpipe-default")
    try:
        assert "127.0.0.1:%d" % port in (workdir / "remote.err").read_text()
        view = tmux()
        view.start(build.binary, "live", port)
        pid = int(wait_file(workdir / "pid", proc=proc))
        drive_view(view, pid, threads=False)
        os.kill(view.command_pid(), signal.SIGKILL)
        wait_file(workdir / "untracked", timeout=15, proc=proc)
        err = (workdir / "remote.err").read_text()
        assert "live viewer disconnected" in err and "no longer streams" in err, err

        again = tmux()
        again.start(build.binary, "live", "--timeout", "1", port)
        screen = again.wait_for("EXIT=")
        assert "nothing is listening on 127.0.0.1:%d" % port in screen and "EXIT=1" in screen, screen
        assert stop_remote(proc, workdir) == 0, (workdir / "remote.err").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_tracked_process_killed_mid_stream(build, tracked_env, workdir, tmux):
    env = dict(tracked_env, MEMRAY_PYTHON=sys.executable)
    proc, port = start_remote(build, env, workdir)
    try:
        view = tmux()
        view.start(build.binary, "live", port)
        pid = int(wait_file(workdir / "pid", proc=proc))
        view.wait_for("PID: %d" % pid)
        os.kill(pid, signal.SIGKILL)
        screen = view.wait_for("connection lost")
        assert "was the process killed?" in screen, screen
        view.send("o")  # still responsive
        view.wait_for("Own Memory \u25bc")
        view.send("q")
        screen = view.wait_for("EXIT=")
        assert "EXIT=0" in screen and "lost process %d" % pid in screen, screen
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_garbage_sent_to_the_port(build, tracked_env, workdir, tmux):
    env = dict(tracked_env, MEMRAY_PYTHON=sys.executable)
    proc, port = start_remote(build, env, workdir)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(10)
            try:
                got = s.recv(100)
            except ConnectionResetError:  # closed with our request unread
                got = b""
            assert got == b"", "a foreign client got data"
        with socket.create_connection(("127.0.0.1", port)):
            pass  # a port probe: connects and closes
        deadline = time.time() + 10
        while (workdir / "remote.err").read_text().count("turned away") < 2 and time.time() < deadline:
            time.sleep(0.05)
        err = (workdir / "remote.err").read_text()
        assert "not a memray viewer" in err and "it closed the connection" in err, err
        assert proc.poll() is None and not (workdir / "pid").exists(), "the program should still wait"
        # A real viewer is still served.
        view = tmux()
        view.start(build.binary, "live", port)
        pid = int(wait_file(workdir / "pid", proc=proc))
        view.wait_for(lambda s: "PID: %d" % pid in s and "leaf_big" in s)
        view.send("q")
        view.wait_for("EXIT=0")
        assert stop_remote(proc, workdir) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_viewer_against_a_foreign_server(build, tracked_env, workdir, tmux):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def answer():
        conn, _ = server.accept()
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        time.sleep(1)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        view = tmux()
        view.start(build.binary, "live", port)
        screen = view.wait_for("EXIT=")
        assert "is not a memray live stream" in screen and "EXIT=1" in screen, screen
        assert "panicked" not in screen
    finally:
        server.close()


def test_port_already_in_use(build, tracked_env, workdir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = dict(tracked_env, MEMRAY_PYTHON=sys.executable)
        res = run([build.binary, "run", "--live-remote", "--live-port", port, "-c", "print('ran')"],
                  cwd=workdir, env=env, timeout=60)
        assert_clean_error(res, "cannot listen on 127.0.0.1:%d" % port)
        assert "ran" not in res.stdout


def test_live_flags_are_checked(build, tracked_env, workdir):
    env = dict(tracked_env, MEMRAY_PYTHON=sys.executable)
    for args in (["--live-port", "1234", "-c", "pass"], ["--live-remote", "-o", "x.bin", "-c", "pass"],
                 ["--live-remote", "--aggregate", "-c", "pass"]):
        res = run([build.binary, "run", *args], cwd=workdir, env=env, timeout=30)
        assert res.returncode != 0 and "error" in res.stderr, res.describe()
    # Memray's "Invalid port": a usage error before anything starts (0 would listen on a
    # port nobody was told about).
    for args in (["run", "--live-remote", "--live-port", "0", "-c", "pass"],
                 ["run", "--live-remote", "--live-port", "65536", "-c", "pass"],
                 ["live", "0"], ["live", "65536"]):
        res = run([build.binary, *args], cwd=workdir, env=env, timeout=30)
        assert res.returncode == 2 and ("--live-port" in res.stderr or "PORT" in res.stderr), res.describe()


# --------------------------------------------------------------------------- Python API


def test_socket_destination_streams_to_the_view(interp, build, tracked_env, workdir, tmux):
    port = free_port()
    prog = workdir / "api.py"
    prog.write_text("""
import os, sys, time
import memray
WORK = sys.argv[1]
def api_site():
    return bytearray(12000000)
with memray.Tracker(destination=memray.SocketDestination(server_port=%d)):
    held = api_site()
    with open(os.path.join(WORK, "pid.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.rename(os.path.join(WORK, "pid.tmp"), os.path.join(WORK, "pid"))
    while not os.path.exists(os.path.join(WORK, "stop")):
        time.sleep(0.01)
print("api done")
""" % port)
    proc = subprocess.Popen([interp.executable, str(prog), str(workdir)], cwd=workdir, env=tracked_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        view = tmux()
        view.start(build.binary, "live", port)
        pid = int(wait_file(workdir / "pid", proc=proc))
        view.wait_for(lambda s: "PID: %d" % pid in s and "api_site" in s)
        (workdir / "stop").write_text("")
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and b"api done" in out, out
        view.wait_for("tracking ended")
        view.send("q")
        screen = view.wait_for("EXIT=0")
        assert "finished tracking" in screen, screen
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- attach


def _ptrace_allowed():
    try:
        from test_attach import _REFUSAL
    except Exception as e:  # pragma: no cover
        return str(e)
    return _REFUSAL


def start_attach_target(interp, tracked_env, workdir):
    """PROGRAM started directly (not by memray), its output in prog.out, for attach tests."""
    refusal = _ptrace_allowed()
    if refusal:
        pytest.skip(refusal)
    prog = workdir / "prog.py"
    prog.write_text(PROGRAM)
    out = open(workdir / "prog.out", "wb")
    return subprocess.Popen([interp.executable, str(prog), str(workdir)], cwd=workdir, env=tracked_env,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)


def test_attach_live_view(interp, build, tracked_env, workdir, tmux):
    proc = start_attach_target(interp, tracked_env, workdir)
    try:
        pid = int(wait_file(workdir / "pid", proc=proc))
        assert pid == proc.pid
        view = tmux()
        view.start(build.binary, "attach", pid)
        drive_view(view, pid, main_name="MainThread")
        view.send("q")
        screen = view.wait_for("EXIT=")
        assert "EXIT=0" in screen and "stopped tracking process %d" % pid in screen, screen
        # As after `memray detach`: nothing tracks it any more, and it can be attached again.
        res = run([build.binary, "detach", pid], cwd=workdir, env=tracked_env, timeout=30)
        assert_clean_error(res, "not being tracked")
        cap = workdir / "after.bin"
        assert_ok(run([build.binary, "attach", "-o", cap, pid], cwd=workdir, env=tracked_env, timeout=60))
        time.sleep(0.3)
        assert_ok(run([build.binary, "detach", pid], cwd=workdir, env=tracked_env, timeout=60))
        stats = assert_ok(run([build.binary, "stats", cap], cwd=workdir, env=tracked_env, timeout=60))
        assert "Total allocations" in stats.stdout
        assert proc.poll() is None
        (workdir / "stop").write_text("")
        assert proc.wait(timeout=30) == 0
        text = (workdir / "prog.out").read_text()
        assert "program says goodbye" in text and "Traceback" not in text, text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_attach_live_without_a_terminal(interp, build, tracked_env, workdir):
    """`memray attach PID` (no -o) with stdout redirected follows the process until SIGTERM,
    prints the view as text, and leaves the process running untracked."""
    proc = start_attach_target(interp, tracked_env, workdir)
    try:
        pid = int(wait_file(workdir / "pid", proc=proc))
        view_out = open(workdir / "view.out", "wb")
        viewer = subprocess.Popen([str(build.binary), "attach", str(pid)], cwd=workdir, env=tracked_env,
                                  stdin=subprocess.DEVNULL, stdout=view_out, stderr=subprocess.PIPE)
        # Attached once the payload is in the process; then a few snapshots.
        deadline = time.time() + 60
        while "memray_payload" not in Path("/proc/%d/maps" % pid).read_text():
            assert viewer.poll() is None and time.time() < deadline, viewer.stderr.read()
            time.sleep(0.05)
        time.sleep(1.0)
        viewer.send_signal(signal.SIGTERM)
        assert viewer.wait(timeout=60) == 0, viewer.stderr.read()
        lines = view_text((workdir / "view.out").read_text())
        assert lines[1].startswith("PID: %d" % pid), lines
        assert any(l.startswith("leaf_big") or l.startswith("holder") for l in lines), lines
        wait_file(workdir / "untracked", timeout=15)
        res = run([build.binary, "detach", pid], cwd=workdir, env=tracked_env, timeout=30)
        assert_clean_error(res, "not being tracked")
        (workdir / "stop").write_text("")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
