"""`memray.SocketReader`: a live `SocketDestination` stream read from Python, as in Memray:
`pid`, `command_line`, `has_native_traces`, `is_active` and `get_current_snapshot()`.

The tracked program (tests/helpers/socket_follow.py) runs under each interpreter and steps
through phases on files the reader creates; the reader runs in the test's own process.
Memray 1.20 reads our stream and we read Memray's (oracle-3.12).
"""
import json
import os
import sys

import pytest

from support import HELPERS, REPO, oracle_python, run

sys.path.insert(0, str(HELPERS))
import socket_follow  # noqa: E402

sys.path.pop(0)

FOLLOW = (
    "import json, pathlib, sys\n"
    "sys.path.insert(0, sys.argv[4])\n"
    "import memray, socket_follow\n"
    "socket_follow.follow(memray, sys.argv[1], json.load(open(sys.argv[2])), pathlib.Path(sys.argv[3]))\n"
    "print('followed')\n"
)


def our_memray():
    sys.path.insert(0, str(REPO / "python"))
    try:
        import memray
    finally:
        sys.path.pop(0)
    return memray


def test_socket_reader_follows_a_tracked_process(interp, tracked_env, workdir, monkeypatch):
    monkeypatch.setenv("MEMRAY_BIN", tracked_env["MEMRAY_BIN"])
    socket_follow.follow(our_memray(), interp.executable, tracked_env, workdir)


@pytest.mark.parametrize("side", ["memray-reads-ours", "ours-reads-memray"])
def test_socket_reader_and_memrays_stream(side, tracked_env, tmp_path):
    """The stream and the reader work with Memray 1.20's, both ways (CPython 3.12)."""
    oracle = oracle_python(12)
    if not oracle.exists():
        pytest.skip("no .venvs/oracle-3.12 (Memray 1.20)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MEMRAY_", "VIRTUAL_ENV"))}
    if side == "memray-reads-ours":
        reader_python, reader_env = oracle, clean
        program_python, program_env = sys.executable, dict(tracked_env)
    else:
        reader_python, reader_env = sys.executable, dict(tracked_env)
        program_python, program_env = oracle, clean
    (tmp_path / "env.json").write_text(json.dumps(program_env))
    workdir = tmp_path / "run"
    workdir.mkdir()
    res = run([reader_python, "-c", FOLLOW, program_python, tmp_path / "env.json", workdir, HELPERS],
              env=reader_env, timeout=90)
    assert res.returncode == 0 and "followed" in res.stdout, res.describe()
