"""`memray attach` on hosts whose /tmp cannot hold code: mounted noexec, or read-only.

Each test runs the target and the CLI together in a private mount namespace of their own
(`unshare -m`), where /tmp (and, for one test, every other candidate) is re-mounted with
the flag under test. Root only (mount needs it), like the ptrace tests need their rights.
"""
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ours_only

TARGET = """
import os, sys, time
work = sys.argv[1]
open(os.path.join(work, "ready"), "w").close()
while not os.path.exists(os.path.join(work, "stop")):
    x = [bytes(1000) for _ in range(20)]
    time.sleep(0.002)
"""

SCRIPT = """
set -e
# The checkout (and so the memray binary) may itself live under /tmp: run a copy from a
# private tmpfs, which none of the mounts below touches.
mount -t tmpfs tmpfs /mnt
cp "$MEMRAY" /mnt/memray
MEMRAY=/mnt/memray
{mounts}
# Likewise an interpreter kept in a checkout under /tmp (Debian sid's 3.14/3.15): its tree
# becomes a mount of its own, executable again.
if [ -n "$KEEP_EXEC" ]; then mount --bind "$KEEP_EXEC" "$KEEP_EXEC" && mount -o remount,bind,exec "$KEEP_EXEC"; fi
"$PY" "$WORK/target.py" "$WORK" &
T=$!
for i in $(seq 500); do [ -e "$WORK/ready" ] && break; sleep 0.01; done
set +e
"$MEMRAY" attach -o "$WORK/cap.bin" $T; echo "attach=$?"
grep -o '[^ ]*libmemray_payload[^ ]*' /proc/$T/maps | sort -u | sed 's/^/mapped=/'
sleep 0.2
"$MEMRAY" detach $T; echo "detach=$?"
touch "$WORK/stop"; wait $T; echo "target=$?"
"""


def _run(build, interp, workdir, mounts):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a private /tmp")
    (workdir / "target.py").write_text(TARGET)
    # The interpreter's whole tree (loader and libraries included) for one under a
    # directory the mounts make noexec.
    root = Path(interp.executable).resolve().parents[2]
    keep = str(root) if str(root).startswith(("/tmp/", "/var/tmp/", "/dev/shm/")) else ""
    env = dict(os.environ, PY=interp.executable, WORK=str(workdir), MEMRAY=str(build.binary),
               MEMRAY_PAYLOAD=str(build.payload), KEEP_EXEC=keep)
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c",
                          SCRIPT.format(mounts=textwrap.dedent(mounts))],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    facts = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    return res, facts


# The test's own work directory is under /tmp: a bind mount over itself keeps its files
# and adds the flag.
NOEXEC_TMP = "mount --bind /tmp /tmp && mount -o remount,bind,noexec /tmp"


@pytest.mark.parametrize("flag", ["noexec", "ro"])
def test_attach_when_tmp_cannot_hold_code(interp, build, workdir, flag):
    mounts = "mount --bind /tmp /tmp && mount -o remount,bind,%s /tmp" % flag
    if flag == "ro":
        # The capture goes to the work directory, which must stay writable.
        mounts += "\nmount --bind \"$WORK\" \"$WORK\" && mount -o remount,bind,rw \"$WORK\""
    res, facts = _run(build, interp, workdir, mounts)
    assert facts.get("attach") == "0", res.stdout + res.stderr
    assert facts.get("detach") == "0", res.stdout + res.stderr
    assert facts.get("target") == "0", res.stdout + res.stderr
    assert not facts["mapped"].startswith("/tmp/"), facts
    assert (workdir / "cap.bin").stat().st_size > 0


def test_attach_when_no_directory_can_hold_code_is_a_clean_error(interp, build, workdir):
    mounts = "\n".join("mount --bind {0} {0} && mount -o remount,bind,noexec {0}".format(d)
                       for d in ("/tmp", "/dev/shm", "/var/tmp"))
    res, facts = _run(build, interp, workdir, mounts)
    assert facts.get("attach") not in (None, "0"), res.stdout + res.stderr
    assert "noexec" in res.stderr and "Traceback" not in res.stderr and "panicked" not in res.stderr, res.stderr
    # Nothing was left in the target: it ran on and ended normally.
    assert facts.get("target") == "0", res.stdout + res.stderr


def test_older_payload_copies_are_removed(interp, build, workdir):
    uid = os.geteuid()
    d = "/tmp/memray-%d" % uid
    os.makedirs(d, mode=0o755, exist_ok=True)
    old = os.path.join(d, "libmemray_payload-00000000deadbeef.so")
    with open(old, "w") as f:
        f.write("an older build's copy")
    os.utime(old, (0, 1_000_000_000))
    res, facts = _run(build, interp, workdir, "")
    assert facts.get("attach") == "0", res.stdout + res.stderr
    assert not os.path.exists(old), "an older payload copy was left behind"
    assert facts["mapped"].startswith(d + "/"), facts
