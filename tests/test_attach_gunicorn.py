"""`memray attach --children` on gunicorn from PyPI: the pre-fork server most Python web
services run under. A master and four sync workers serve a WSGI app on 127.0.0.1 while a
client keeps sending requests; the attach, a worker the master forks afterwards (TTIN) and
the detach all happen under load. Every request is answered, every worker's capture holds
its own requests, and gunicorn shuts down cleanly afterwards.

gunicorn is pure Python: scripts/setup-test-env installs it into .venvs/gunicorn, put on
PYTHONPATH. Run on one shared and one static interpreter (the tree logic does not depend
on the version; tests/test_attach_tree.py covers every interpreter with a hand-made
pre-fork server).
"""
import http.client
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

import support
from conftest import INTERPRETERS
from support import assert_ok
from test_attach import needs_ptrace

pytestmark = pytest.mark.ours_only

GUNICORN = support.VENVS / "gunicorn"
REQUEST_SIZE = 45678
WORKERS = 4
CHOSEN = ("py3.12", "static-py3.11")

APP = """
import os

def handle_request():
    return bytearray(%d)

def app(environ, start_response):
    body = handle_request()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok %%d %%d\\n" %% (os.getpid(), len(body))]
""" % REQUEST_SIZE


def _params():
    out = []
    for it in INTERPRETERS:
        if it.id in CHOSEN:
            marks = [pytest.mark.skip(reason=f"{it.id}: {it.missing}")] if it.missing else []
            out.append(pytest.param(it, id=it.id, marks=marks))
    return out or [pytest.param(None, marks=pytest.mark.skip(reason="none of %s found" % ", ".join(CHOSEN)))]


class Client(threading.Thread):
    """GETs / one request after another until stopped; counts answers and failures."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.answered = 0
        self.by_worker = {}
        self.failed = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                reply = conn.getresponse().read()
                conn.close()
                if reply.startswith(b"ok "):
                    self.answered += 1
                    pid = int(reply.split()[1])
                    self.by_worker[pid] = self.by_worker.get(pid, 0) + 1
                else:
                    self.failed.append(reply)
            except OSError as e:
                self.failed.append(repr(e))
            time.sleep(0.002)


def _until(what, check, timeout=60):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


@needs_ptrace
@pytest.mark.parametrize("it", _params())
def test_attach_children_of_gunicorn_under_load(it, build, tracked_env, workdir):
    if not (GUNICORN / "gunicorn").is_dir():
        pytest.skip("gunicorn is not installed in .venvs/gunicorn (scripts/setup-test-env)")
    (workdir / "app.py").write_text(APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(tracked_env, PYTHONPATH=os.pathsep.join([str(GUNICORN), str(workdir)]))
    master = subprocess.Popen([it.executable, "-m", "gunicorn", "-w", str(WORKERS), "-b", "127.0.0.1:%d" % port,
                               "--graceful-timeout", "10", "app:app"], cwd=workdir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    memray = lambda *args: support.run([build.binary, *map(str, args)], env=tracked_env)  # noqa: E731
    try:
        workers = _until("%d workers" % WORKERS, lambda: len(support.children_of(master.pid)) == WORKERS and support.children_of(master.pid))
        client = Client(port)
        client.start()
        _until("a first answer", lambda: client.answered > 0 or client.failed)
        out = workdir / "gunicorn.bin"
        res = assert_ok(memray("attach", "--children", "-o", out, master.pid))
        at_attach = dict(client.by_worker)
        for pid in [master.pid] + workers:
            assert "attached to %d " % pid in res.stderr, res.stderr
        # A worker forked after the attach is followed.
        os.kill(master.pid, signal.SIGTTIN)
        late = _until("the fifth worker", lambda: [p for p in support.children_of(master.pid) if p not in workers])[0]
        before = client.answered
        _until("more answers", lambda: client.answered > before + 50)
        # Answers counted now were all served before the detach (a worker that only
        # answers after it, as the late one may, has nothing to show in its capture).
        while_attached = dict(client.by_worker)
        res = assert_ok(memray("detach", "--children", master.pid))
        for pid in [master.pid] + workers + [late]:
            assert "stopped tracking process %d;" % pid in res.stderr, res.stderr
        during = client.answered
        _until("answers after the detach", lambda: client.answered > during + 20)
        client.done.set()
        client.join(timeout=30)
        assert client.failed == [], client.failed[:5]
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=60) == 0, master.stdout.read().decode(errors="replace")
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()

    reader = support.Reader(support.nearest_oracle(it.minor), "Memray 1.20")
    served = {}
    for pid in [master.pid] + workers + [late]:
        cap = reader.read(workdir / ("gunicorn.bin.%d" % pid), "all")
        assert cap.metadata["pid"] == pid
        served[pid] = sum(1 for r in cap.records if r["stack"] and r["stack"][0][0] == "handle_request"
                          and r["size"] >= REQUEST_SIZE)
    assert served[master.pid] == 0, "the master serves no request"
    # Workers that answered several requests before the detach (one answered request might
    # have been served just before its own attach, the tree being attached in turn).
    busy = [pid for pid in workers + [late] if while_attached.get(pid, 0) - at_attach.get(pid, 0) >= 3]
    assert len(busy) >= 2, while_attached
    for pid in busy:
        assert served[pid] > 0, "worker %d answered requests but its capture has none (%s)" % (pid, served)
