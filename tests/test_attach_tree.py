"""`memray attach --children` and `memray detach --children` on a pre-fork server: a
master and 4 workers (os.fork, as gunicorn does) serving requests on 127.0.0.1 while the
tree is attached and detached, and a worker forked after the attach.

Every process gets its own capture (OUTPUT.<pid>), every request is answered throughout
(counted by a client running during attach and detach), the late worker is followed and
detached like the others, and the tree ends normally.
"""
import os
import socket
import threading
import time

import pytest

import support
from conftest import INTERPRETERS
from support import assert_ok
from test_attach import needs_ptrace

pytestmark = pytest.mark.ours_only

TICK_SIZE = 23456
LZ4_MAGIC = b"\x04\x22\x4d\x18"
REQUEST_SIZE = 34567

SERVER = """
import os, select, signal, socket, sys, time
WORK = sys.argv[1]

def flag(name):
    return os.path.exists(os.path.join(WORK, name))

def write(name, text):
    with open(os.path.join(WORK, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(WORK, name + ".tmp"), os.path.join(WORK, name))

def tick():
    return bytearray(%(TICK)d)

def handle_request(conn):
    conn.recv(100)
    body = bytearray(%(REQUEST)d)
    conn.sendall(b"ok %%d %%d\\n" %% (os.getpid(), len(body)))

def worker(listener):
    while not flag("stop"):
        tick()
        ready, _, _ = select.select([listener], [], [], 0.01)
        if not ready:
            continue
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue   # another worker took it
        with conn:
            conn.setblocking(True)
            handle_request(conn)
    os._exit(0)

def spawn(listener):
    pid = os.fork()
    if pid == 0:
        worker(listener)
    return pid

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
listener.setblocking(False)
workers = [spawn(listener) for _ in range(4)]
write("ready", "%%d %%s" %% (listener.getsockname()[1], " ".join(map(str, workers))))
late_done = False
while not flag("stop"):
    tick()
    if flag("spawn") and not late_done:
        late = spawn(listener)
        workers.append(late)
        write("late", str(late))
        late_done = True
    time.sleep(0.01)
codes = [os.waitpid(w, 0)[1] for w in workers]
sys.exit(1 if any(codes) else 0)
""" % dict(TICK=TICK_SIZE, REQUEST=REQUEST_SIZE)


class Client(threading.Thread):
    """Sends requests one after another until stopped; counts answers and failures."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.answered = 0
        self.failed = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(b"GET\n")
                    reply = s.recv(100)
                if reply.startswith(b"ok "):
                    self.answered += 1
                else:
                    self.failed.append(reply)
            except OSError as e:
                self.failed.append(repr(e))
            time.sleep(0.002)


def _wait(path, timeout=30):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, "%s never appeared" % path
        time.sleep(0.01)
    return path.read_text()


@needs_ptrace
def test_attach_children_of_a_prefork_server(interp, memray_cli, reader, workdir, tracked_env):
    import subprocess
    (workdir / "server.py").write_text(SERVER)
    master = subprocess.Popen([interp.executable, str(workdir / "server.py"), str(workdir)], env=tracked_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port, *workers = map(int, _wait(workdir / "ready").split())
        client = Client(port)
        client.start()
        time.sleep(0.2)
        out = workdir / "tree.bin"
        res = assert_ok(memray_cli("attach", "--children", "-o", str(out), str(master.pid)))
        for pid in [master.pid] + workers:
            assert "attached to %d " % pid in res.stderr, res.stderr
        (workdir / "spawn").write_text("")
        late = int(_wait(workdir / "late"))
        time.sleep(1.0)
        res = assert_ok(memray_cli("detach", "--children", str(master.pid)))
        for pid in [master.pid] + workers + [late]:
            assert "stopped tracking process %d;" % pid in res.stderr, res.stderr
        answered_during = client.answered
        time.sleep(0.3)
        client.done.set()
        client.join(timeout=30)
        assert client.failed == [], client.failed[:5]
        assert answered_during > 20 and client.answered > answered_during
        (workdir / "stop").write_text("")
        assert master.wait(timeout=30) == 0, master.stdout.read().decode(errors="replace")
    finally:
        # Workers stop on the flag, whatever happened (killing the master alone would
        # leave them running).
        (workdir / "stop").write_text("")
        if master.poll() is None:
            master.kill()
            master.wait()
    served = 0
    for pid in [master.pid] + workers + [late]:
        cap = reader.read(workdir / ("tree.bin.%d" % pid), "all")
        assert cap.metadata["pid"] == pid
        ticks = [r for r in cap.records if r["stack"] and r["stack"][0][0] == "tick" and r["size"] >= TICK_SIZE]
        assert ticks, "process %d: no allocation of its own loop in its capture" % pid
        served += sum(1 for r in cap.records if r["stack"] and r["stack"][0][0] == "handle_request"
                      and r["size"] >= REQUEST_SIZE)
    assert served > 0, "no request's allocation in any worker's capture"

    # One report over the tree: `memray stats` merges the captures, summing each figure.
    import json
    paths = [str(workdir / ("tree.bin.%d" % pid)) for pid in [master.pid] + workers + [late]]
    singles = []
    for i, path in enumerate(paths):
        assert_ok(memray_cli("stats", "--json", "-n", "1000", "-o", str(workdir / ("s%d.json" % i)), path))
        singles.append(json.loads((workdir / ("s%d.json" % i)).read_text()))
    assert_ok(memray_cli("stats", "--json", "-n", "1000", "-o", str(workdir / "merged.json"), *paths))
    merged = json.loads((workdir / "merged.json").read_text())
    assert merged["merged_pids"] == [master.pid] + workers + [late]
    for key in ("total_num_allocations", "total_bytes_allocated"):
        assert merged[key] == sum(s[key] for s in singles), key
    assert merged["metadata"]["peak_memory"] == sum(s["metadata"]["peak_memory"] for s in singles)

    def counts(doc):
        out = {}
        for entry in doc["top_allocations_by_count"]:
            out[entry["location"]] = out.get(entry["location"], 0) + entry["count"]
        return out

    expected = {}
    for s in singles:
        for location, n in counts(s).items():
            expected[location] = expected.get(location, 0) + n
    assert counts(merged) == expected
    text = assert_ok(memray_cli("stats", *paths)).stdout
    assert "%d captures merged" % len(paths) in text and "sum of each process's own peak" in text

    # `memray summary` too: one table whose allocation counts per location are the sums of
    # each process's own table (a location's figures are summed over the processes).
    tracked_env["COLUMNS"] = "1000"  # one line per row

    def summary(*caps):
        res = assert_ok(memray_cli("summary", "-r", "100000", *caps))
        rows = {}
        for line in res.stdout.splitlines():
            cells = [c.strip() for c in line.split("│")[1:-1]]
            if len(cells) == 6 and cells[5].isdigit():
                rows[cells[0]] = int(cells[5])
        return rows, res.stdout

    expected = {}
    for path in paths:
        for location, n in summary(path)[0].items():
            expected[location] = expected.get(location, 0) + n
    rows, text = summary(*paths)
    assert rows and rows == expected, text
    assert text.startswith("%d captures merged (processes %s)" % (len(paths), ", ".join(
        str(p) for p in [master.pid] + workers + [late]))), text

    # And the HTML flame graph: one tree over the processes, its statistics summed.
    import re
    def flamegraph(name, *caps):
        out = workdir / name
        assert_ok(memray_cli("flamegraph", "-f", "-o", str(out), *caps))
        found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', out.read_text(), re.S)
        return json.loads(found.group(1))

    data = flamegraph("tree.html", *paths)
    assert data["stats"]["processes"] == [master.pid] + workers + [late]
    assert data["stats"]["peak_memory"] == sum(s["metadata"]["peak_memory"] for s in singles)
    roots = [flamegraph("one%d.html" % i, path)["tree"]["value"][0] for i, path in enumerate(paths)]
    assert data["tree"]["value"][0] == sum(roots)


@needs_ptrace
@pytest.mark.parametrize("it", [pytest.param(it, id=it.id) for it in INTERPRETERS
                                if it.id in ("py3.12", "static-py3.11") and not it.missing])
def test_duration_ends_the_sessions_of_workers_forked_later(it, build, workdir, tracked_env):
    """`attach --children --duration`: a worker forked after the attach follows the fork
    and stops with its parent's session, not later. (Sampled: the late worker's capture is
    sampled at the tree's interval too.)"""
    import subprocess
    memray = lambda *args: support.run([build.binary, *map(str, args)], env=tracked_env)  # noqa: E731
    (workdir / "server.py").write_text(SERVER)
    master = subprocess.Popen([it.executable, str(workdir / "server.py"), str(workdir)], env=tracked_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port, *workers = map(int, _wait(workdir / "ready").split())
        out = workdir / "tree.bin"
        started = time.monotonic()
        assert_ok(memray("attach", "--children", "--duration", "4", "--sampling-interval", "4KiB", "-o", out,
                         master.pid))
        (workdir / "spawn").write_text("")
        late = int(_wait(workdir / "late"))
        assert time.monotonic() - started < 4, "too slow to fork the late worker before the end"
        # The session's end compresses its capture: without a detach, the late worker's
        # is compressed when the parent's 4 s are over, not before and not never.
        late_capture = workdir / ("tree.bin.%d" % late)
        deadline = time.monotonic() + 30
        while not (late_capture.exists() and late_capture.read_bytes()[:4] == LZ4_MAGIC):
            assert time.monotonic() < deadline, "the late worker still tracks 30 s after a 4 s duration"
            time.sleep(0.05)
        assert time.monotonic() - started > 3.9
        # The others (attached one after another, each for 4 s of its own) end too.
        for pid in [master.pid] + workers:
            capture = workdir / ("tree.bin.%d" % pid)
            while capture.read_bytes()[:4] != LZ4_MAGIC:
                assert time.monotonic() < deadline, "process %d still tracks" % pid
                time.sleep(0.05)
        res = memray("detach", "--children", master.pid)
        assert res.returncode != 0 and "no process of the tree" in res.stderr, res.describe()
        # Ended by the duration, not by the process: the late worker runs on, untracked.
        assert master.poll() is None and late in support.children_of(master.pid)
        (workdir / "stop").write_text("")
        assert master.wait(timeout=30) == 0, master.stdout.read().decode(errors="replace")
    finally:
        # Workers stop on the flag, whatever happened (killing the master alone would
        # leave them running).
        (workdir / "stop").write_text("")
        if master.poll() is None:
            master.kill()
            master.wait()
    reader = support.Reader(support.nearest_oracle(it.minor), "Memray 1.20")
    cap = reader.read(workdir / ("tree.bin.%d" % late), "all")
    assert cap.metadata["pid"] == late
    assert cap.metadata["total_frames"] == 4096, "the late worker's capture is not sampled at the tree's interval"

