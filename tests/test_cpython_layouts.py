"""The cpython crate's knowledge of each interpreter, checked against the interpreter.

- The layout the payload resolves inside a real process (table row, or from 3.13 on the
  interpreter's `_Py_DebugOffsets` checked against the row) equals what that
  interpreter's own headers say: tests/helpers/layout_probe.c, compiled against them.
- The version the payload sees and the refusal of an interpreter it cannot read.
"""
import os
import subprocess
from pathlib import Path

import pytest

from support import HELPERS, assert_ok, c_compiler, run

pytestmark = pytest.mark.ours_only

READ_LAYOUT = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
buf = ctypes.create_string_buffer(1 << 16)
n = lib.memray_debug_layout(buf, len(buf))
sys.stdout.write(buf.raw[:n].decode())
"""


def _pairs(text):
    out = {}
    for line in text.splitlines():
        name, value = line.split()
        out[name] = int(value)
    return out


def _include_dir(interp, env):
    res = assert_ok(run([interp.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"], env=env))
    return Path(res.stdout.strip())


def test_resolved_layout_matches_the_interpreters_headers(interp, build, tracked_env, workdir):
    include = _include_dir(interp, tracked_env)
    if not (include / "internal").is_dir():
        pytest.skip(f"{interp.id}: no internal headers at {include} (its -dev package is not installed)")
    cc = c_compiler()
    probe = workdir / "layout_probe"
    # -idirafter the parent: Debian's pyconfig.h includes <x86_64-linux-gnu/python3.X/pyconfig.h>.
    assert_ok(run([cc, f"-I{include}", f"-I{include / 'internal'}", f"-idirafter{include.parent}", "-o", probe,
                   HELPERS / "layout_probe.c"], timeout=120))
    headers = _pairs(assert_ok(run([probe])).stdout)

    script = workdir / "read_layout.py"
    script.write_text(READ_LAYOUT)
    text = assert_ok(run([interp.executable, script, build.payload], env=tracked_env)).stdout
    assert not text.startswith("error:"), text
    ours = _pairs(text)
    assert ours == headers, "payload's layout differs from %s's headers" % interp.id
    # The probe covers every field, so a field added to the table without a probe line
    # (or the reverse) fails here too.
    assert len(ours) >= 17


# Where `code_object.filename` sits in `_Py_DebugOffsets`, in u64 slots after the
# 24-byte preamble (counted from each version's declaration in cpython/src/debug_offsets.rs).
FILENAME_SLOT = {14: 3 + 16 + 9 + 8 + 1, 15: 3 + 16 + 16 + 1 + 8 + 1}


def _patched_interpreter(interp, workdir, free_threaded=False):
    """A copy of a static interpreter whose `_Py_DebugOffsets` (initialised data in the
    executable) put `code_object.filename` elsewhere: a build that disagrees with its
    version's layout, as a patched distribution build would. With `free_threaded`, the
    block's `free_threaded` flag (after cookie and version) is set instead: the block of
    a --disable-gil build. CPython does not read its own debug offsets, so the copy runs
    normally."""
    if not interp.static or interp.minor not in FILENAME_SLOT:
        pytest.skip("needs a static CPython 3.14+ executable to patch")
    data = bytearray(Path(interp.executable).read_bytes())
    start = 0
    while True:
        at = data.find(b"xdebugpy", start)
        assert at >= 0, "no _Py_DebugOffsets block in the executable"
        version = int.from_bytes(data[at + 8:at + 16], "little")
        if version >> 16 == (3 << 8 | interp.minor):
            break
        start = at + 1
    if free_threaded:
        assert int.from_bytes(data[at + 16:at + 24], "little") == 0, "a GIL build's free_threaded flag is 0"
        data[at + 16:at + 24] = (1).to_bytes(8, "little")
    else:
        slot = at + 24 + 8 * FILENAME_SLOT[interp.minor]
        assert int.from_bytes(data[slot:slot + 8], "little") == 112, "slot is not code_object.filename"
        data[slot:slot + 8] = (120).to_bytes(8, "little")
    patched = workdir / f"python3.{interp.minor}-{'ft' if free_threaded else 'patched'}"
    patched.write_bytes(bytes(data))
    patched.chmod(0o755)
    return patched


def _refused_by_run_and_attach(interp, patched, tracked_env, workdir, memray_cli, *reason):
    """The copy runs programs like the original, and both ways in refuse it with one line
    naming `reason`: `memray run` before tracking, attach before stopping the process."""
    # Its standard library is where the original's is.
    env = dict(tracked_env, PYTHONHOME=str(Path(interp.executable).resolve().parent.parent))
    prog = workdir / "prog.py"
    prog.write_text("x = [bytearray(1000) for _ in range(100)]\nprint('ran', len(x))\n")
    assert "ran 100" in assert_ok(run([patched, prog], env=env)).stdout

    res = run([patched, "-m", "memray", "run", "-q", "-o", workdir / "out.bin", prog], env=env, timeout=120)
    assert res.returncode != 0, res.describe()
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and all(r in err[0] for r in reason), res.describe()

    target = subprocess.Popen([str(patched), "-c", "import time\nwhile True: time.sleep(0.05)"], env=env)
    try:
        res = memray_cli("attach", "-o", workdir / "att.bin", str(target.pid), timeout=120)
        assert res.returncode != 0, res.describe()
        assert len(res.stderr.strip().splitlines()) == 1 and all(r in res.stderr for r in reason), res.describe()
        assert target.poll() is None, "the target died"
        assert not (workdir / "att.bin").exists()
    finally:
        target.kill()
        target.wait()


def test_a_build_that_disagrees_with_its_version_is_refused(interp, build, tracked_env, workdir, memray_cli):
    patched = _patched_interpreter(interp, workdir)
    _refused_by_run_and_attach(interp, patched, tracked_env, workdir, memray_cli, "code_object.filename", "patched")


def test_a_free_threaded_build_is_refused_in_one_line(interp, build, tracked_env, workdir, memray_cli):
    """No free-threaded build can be had here: a static interpreter whose debug offsets
    say free-threaded stands in for one (the payload and the injector both read the flag
    before anything else of the process)."""
    ft = _patched_interpreter(interp, workdir, free_threaded=True)
    _refused_by_run_and_attach(interp, ft, tracked_env, workdir, memray_cli, "free-threaded CPython 3.%d" % interp.minor)
