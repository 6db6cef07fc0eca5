"""`memray attach` into a container, built here without a container engine.

The container is what Docker makes, by hand: `unshare --pid --mount --fork` (and, for
`userns`, `--user` run by uid 100000, so that the container's root is nobody on the host),
a root file system of its own entered with `chroot`, /proc and /dev mounted inside. Its
root is Debian sid's interpreter tree (scripts/setup-sid-python): its own glibc (2.43
against the host's 2.36), its own libpython, paths that do not exist on the host.

The tests attach from the host by the host's PID, and from a sidecar that shares only the
container's PID namespace (`kubectl debug --target` style) by the container's PID; they
check the capture (stacks and sizes), that it is a file of the attaching user in a
directory the container cannot see, that nothing of ours is left in the container's files,
and that the target runs on and ends normally.
"""
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import support

pytestmark = pytest.mark.ours_only

SID_ROOT = support.VENVS / "sid" / "root"
SIZE = 31337
# Inside the container's own root (not a path of this machine): where its program lives,
# as a Docker image's WORKDIR would.
APP = "app"
APP_SCRIPT = "/%s/target.py" % APP
LZ4_MAGIC = b"\x04\x22\x4d\x18"

TARGET = """
import os, sys, time

def alloc_in_container():
    return bytearray(%(SIZE)d)

work = "/%(APP)s"
with open(work + "/pid.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(work + "/pid.tmp", work + "/pid")
n = 0
while not os.path.exists(work + "/stop"):
    block = alloc_in_container()
    del block
    n += 1
    time.sleep(0.002)
with open(work + "/done", "w") as f:
    f.write("%%d %%s" %% (n, sys.version.split()[0]))
""" % dict(SIZE=SIZE, APP=APP)

# A pre-fork service as many images run it: the master forks two workers (after which it
# says it is ready) and all three allocate in their loop until told to stop.
TREE_TARGET = """
import os, sys, time

def alloc_in_container():
    return bytearray(%(SIZE)d)

work = "/%(APP)s"

def loop():
    n = 0
    while not os.path.exists(work + "/stop"):
        block = alloc_in_container()
        del block
        n += 1
        time.sleep(0.002)
    return n

workers = []
for i in range(2):
    pid = os.fork()
    if pid == 0:
        os._exit(0 if loop() > 10 else 1)
    workers.append(pid)
with open(work + "/pid.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(work + "/pid.tmp", work + "/pid")
n = loop()
codes = [os.waitstatus_to_exitcode(os.waitpid(w, 0)[1]) for w in workers]
with open(work + "/done", "w") as f:
    f.write("%%d %%s %%s" %% (n, sys.version.split()[0], ",".join(map(str, codes))))
""" % dict(SIZE=SIZE, APP=APP)

# Runs in the new namespaces: the container's mounts, then its Python: not as PID 1 (an
# init stays, as tini or dumb-init would), or, with `exec`, as PID 1 itself (an image
# whose CMD is the interpreter).
CONTAINER = """
set -e
mount --rbind /dev "$R/dev"
mount --bind "$SID/usr" "$R/usr"
mount --bind "$SID/etc" "$R/etc"
mount -t proc proc "$R/proc"
$EXEC chroot "$R" /opt/python %s
""" % APP_SCRIPT


def _requirements():
    if os.geteuid() != 0:
        return "needs root (namespaces, chroot, ptrace)"
    for tool in ("unshare", "setpriv", "nsenter", "patchelf"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not (SID_ROOT / "usr" / "lib" / "x86_64-linux-gnu" / "libc.so.6").exists():
        return "Debian sid's interpreters are missing: scripts/setup-test-env fetches them"
    return None


class Container:
    def __init__(self, minor, kind, userns, top, net=False, pid1=False, script=TARGET):
        self.root = Path(tempfile.mkdtemp(prefix="ctr-", dir=top))
        os.chmod(self.root, 0o755)
        for d in ("usr", "etc", "proc", "dev", "opt", "tmp", APP):
            (self.root / d).mkdir()
        for d in ("tmp", APP):
            os.chmod(self.root / d, 0o1777)
        for link in ("bin", "lib", "lib64", "sbin"):
            os.symlink("usr/" + link, self.root / link)
        python = self.root / "opt" / "python"
        if kind == "static":
            # Debian's own interpreter: libpython linked in, the standard loader path.
            os.symlink(f"/usr/bin/python3.{minor}", python)
        else:
            # The test suite's launcher over libpython3.X.so, with the container's loader.
            shutil.copy(SID_ROOT / "usr" / "bin" / f"python3.{minor}-shared", python)
            subprocess.run(["patchelf", "--set-interpreter", "/lib64/ld-linux-x86-64.so.2", "--remove-rpath", str(python)],
                           check=True)
        (self.root / APP / "target.py").write_text(script)
        env = dict(os.environ, R=str(self.root), SID=str(SID_ROOT), PYTHONHOME="/usr", EXEC="exec" if pid1 else "")
        cmd = ["unshare", "--pid", "--mount", "--fork", "--kill-child", "--propagation", "private"] + (["--net"] if net else []) \
            + ["bash", "-c", CONTAINER]
        if userns:
            cmd = ["setpriv", "--reuid=100000", "--regid=100000", "--clear-groups",
                   "unshare", "--user", "--map-root-user"] + cmd[1:]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.ns_pid = None
        self.host_pid = None

    def work(self, name):
        return self.root / APP / name

    def wait_started(self, timeout=30):
        deadline = time.time() + timeout
        while not self.work("pid").exists():
            assert self.proc.poll() is None, self.output()
            assert time.time() < deadline, "the container's Python did not start"
            time.sleep(0.02)
        self.ns_pid = int(self.work("pid").read_text())
        # The host's number for it: the process whose innermost NSpid is that one, under
        # our unshare.
        for _ in range(100):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    status = (entry / "status").read_text()
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                nspid = next((l.split()[1:] for l in status.splitlines() if l.startswith("NSpid:")), [])
                if len(nspid) == 2 and int(nspid[-1]) == self.ns_pid and APP_SCRIPT.encode() in cmdline \
                        and _root_of(entry) == self.root:
                    self.host_pid = int(entry.name)
                    return
            time.sleep(0.02)
        raise AssertionError("cannot find the container's Python among the host's processes")

    def output(self):
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stdout.read().decode(errors="replace")

    def stop(self, timeout=30):
        self.work("stop").write_text("")
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def leftovers(self):
        """Files of ours in the container's own file system."""
        return sorted(str(p.relative_to(self.root)) for p in (self.root / "tmp").rglob("*") if p.is_file())


def _root_of(proc_dir):
    try:
        return Path(os.readlink(proc_dir / "root"))
    except OSError:
        return None


@pytest.fixture
def container(tmp_path):
    why = _requirements()
    if why:
        pytest.skip(why)
    # Somewhere uid 100000 can reach (pytest's own tmp_path is root's alone).
    top = Path(tempfile.mkdtemp(prefix="memray-containers-"))
    os.chmod(top, 0o755)
    made = []

    def make(minor, kind, userns=False, net=False, pid1=False, script=TARGET):
        if not (SID_ROOT / "usr" / "bin" / f"python3.{minor}").exists():
            pytest.skip(f"no Debian sid python3.{minor}")
        c = Container(minor, kind, userns, top, net, pid1, script)
        made.append(c)
        c.wait_started()
        return c

    yield make
    for c in made:
        c.kill()
    shutil.rmtree(top, ignore_errors=True)


def _reader(minor):
    for m in [minor] + sorted(support.ORACLE_MINORS, key=lambda m: abs(m - minor)):
        py = support.oracle_python(m)
        if py.exists():
            return support.Reader(py, f"Memray 1.20 (oracle-3.{m})")
    pytest.skip("no oracle venv to read the capture")


def _check_capture(out, minor, pid=None):
    assert out.read_bytes()[:4] == LZ4_MAGIC, "the capture was not compressed"
    # A file of the attaching user (root here), whatever the target's user was.
    assert out.stat().st_uid == os.geteuid()
    cap = _reader(minor).read(out, "all")
    if pid is not None:
        assert cap.metadata["pid"] == pid
    ours = [r for r in cap.records if r["stack"] and r["stack"][0][0] == "alloc_in_container" and r["size"] >= SIZE]
    assert ours, "no allocation of the container's loop in the capture"
    assert ours[0]["stack"][0][1] == APP_SCRIPT, ours[0]["stack"]
    return cap


@pytest.mark.parametrize("minor", [14, 15])
@pytest.mark.parametrize("kind", ["shared", "static"])
@pytest.mark.parametrize("userns", [False, True], ids=["rootful", "userns"])
def test_attach_from_the_host_into_a_container(container, build, tracked_env, tmp_path, minor, kind, userns):
    c = container(minor, kind, userns)
    uid = next(int(l.split()[2]) for l in Path(f"/proc/{c.host_pid}/status").read_text().splitlines() if l.startswith("Uid:"))
    assert uid == (100000 if userns else 0)
    memray = str(build.binary)
    # A directory the container cannot see.
    out = tmp_path / "host-only" / "cap.bin"
    out.parent.mkdir()
    res = support.run([memray, "attach", "-v", "-o", str(out), str(c.host_pid)], env=tracked_env)
    assert res.returncode == 0, res.describe() + c.output()
    # Nothing of ours in the container's files once it is loaded.
    assert c.leftovers() == [], c.leftovers()
    maps = Path(f"/proc/{c.host_pid}/maps").read_text()
    assert "libmemray_payload" in maps
    time.sleep(0.5)
    res = support.run([memray, "detach", str(c.host_pid)], env=tracked_env)
    assert res.returncode == 0, res.describe()
    assert str(out) in res.stderr
    assert c.stop() == 0, c.output()
    n, version = c.work("done").read_text().split()
    assert version.startswith(f"3.{minor}.")
    assert int(n) > 10
    _check_capture(out, minor)
    assert c.leftovers() == []


@pytest.mark.parametrize("minor", [14])
def test_attach_from_a_sidecar_by_the_containers_pid(container, build, tracked_env, tmp_path, minor):
    """A sidecar sees the container's processes under their own numbers (it joined their
    PID namespace and mounted its own /proc) but keeps its own file system."""
    c = container(minor, "shared")
    assert c.ns_pid != c.host_pid
    out = tmp_path / "sidecar.bin"
    memray = str(build.binary)

    def sidecar(*args):
        return support.run(["nsenter", "--target", str(c.host_pid), "--pid", "--",
                            "unshare", "--mount", "--mount-proc", "--propagation", "private", memray, *args],
                           env=tracked_env)

    res = sidecar("attach", "-o", str(out), str(c.ns_pid))
    assert res.returncode == 0, res.describe() + c.output()
    time.sleep(0.5)
    res = sidecar("detach", str(c.ns_pid))
    assert res.returncode == 0, res.describe()
    assert c.stop() == 0, c.output()
    _check_capture(out, minor)


def test_live_view_of_a_container_with_its_own_network(container, build, tracked_env, workdir):
    """Live mode hands the view's socket over like the capture file: no port, so a
    container with a network namespace of its own (no route to our 127.0.0.1) works."""
    from test_live import Tmux
    if shutil.which("tmux") is None:
        pytest.skip("needs tmux")
    c = container(14, "shared", net=True)
    assert os.readlink(f"/proc/{c.host_pid}/ns/net") != os.readlink("/proc/self/ns/net")
    view = Tmux(workdir, tracked_env)
    try:
        view.start(build.binary, "attach", c.host_pid)
        view.wait_for("PID: %d" % c.ns_pid)
        # Records keep arriving (the loop's blocks are freed at once: none stays in the table).
        view.wait_for(lambda screen: re.search(r"Records: [1-9]\d{2,}", screen) is not None)
        view.send("q")
        screen = view.wait_for("EXIT=")
        assert "EXIT=0" in screen and "stopped tracking process %d" % c.host_pid in screen, screen
    finally:
        view.close()
    assert c.stop() == 0, c.output()


@pytest.mark.parametrize("kind", ["shared", "static"])
def test_attach_children_of_a_pid1_master_in_a_container(container, build, tracked_env, tmp_path, kind):
    """The master is the container's PID 1 (no init) and forks its workers: `attach
    --children` from the host tracks all three, each capture named by the process's own
    PID inside the container, and `detach --children` ends it; the service stops normally."""
    c = container(14, kind, pid1=True, script=TREE_TARGET)
    assert c.ns_pid == 1
    memray = str(build.binary)
    out = tmp_path / "host-only" / "tree.bin"
    out.parent.mkdir()
    res = support.run([memray, "attach", "--children", "-o", str(out), str(c.host_pid)], env=tracked_env)
    assert res.returncode == 0, res.describe() + c.output()
    assert res.stderr.count("memray: attached to ") == 3, res.stderr
    assert c.leftovers() == [], c.leftovers()
    time.sleep(0.5)
    res = support.run([memray, "detach", "--children", str(c.host_pid)], env=tracked_env)
    assert res.returncode == 0, res.describe()
    assert "stopped tracking 3 processes" in res.stderr, res.stderr
    assert c.stop() == 0, c.output()
    n, version, codes = c.work("done").read_text().split()
    assert int(n) > 10 and codes == "0,0", (n, codes)
    captures = sorted(out.parent.glob("tree.bin.*"), key=lambda p: int(p.suffix[1:]))
    pids = [int(p.suffix[1:]) for p in captures]
    assert len(pids) == 3 and pids[0] == 1, pids
    for path, pid in zip(captures, pids):
        _check_capture(path, 14, pid)
