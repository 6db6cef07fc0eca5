"""The read progress bar: drawn on stderr while a report reads a capture, only when
stderr is a terminal (a pseudo-terminal here), and taken down at the end."""
import os
import subprocess

import pytest

from support import REPO, SELF_CHECK

FIXTURES = REPO / "capture" / "tests" / "fixtures"
CLEAR_LINE = b"\r\x1b[2K"

pytestmark = pytest.mark.skipif(SELF_CHECK, reason="about this project's progress bar")


def run_with_stderr(cmd, tty, cwd):
    """Runs cmd with stdout discarded and stderr on a pseudo-terminal or a pipe; returns
    (exit code, stderr bytes)."""
    if not tty:
        res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        return res.returncode, res.stderr
    master, slave = os.openpty()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=120), out


@pytest.mark.parametrize("report", [["stats"], ["flamegraph", "-f", "-o", "fg.html"], ["summary"], ["tree"]])
@pytest.mark.parametrize("capture", ["plain.bin", "compressed.bin"])
def test_bar_on_a_terminal_and_nothing_otherwise(build, tmp_path, report, capture):
    path = FIXTURES / capture
    code, err = run_with_stderr([build.binary, *report, path], tty=True, cwd=tmp_path)
    assert code == 0, err.decode(errors="replace")
    text = err.decode()
    assert ("Reading %s " % capture) in text, text
    # The last frame shows the whole file, then the line is cleared.
    size_mb = "%.1f/%.1f MB" % (path.stat().st_size / 1e6, path.stat().st_size / 1e6)
    assert "100%  " + size_mb in text, text
    assert err.endswith(CLEAR_LINE), err[-80:]

    code, err = run_with_stderr([build.binary, *report, path], tty=False, cwd=tmp_path)
    assert code == 0, err
    assert b"Reading" not in err and CLEAR_LINE not in err, err


def test_no_bar_for_a_bad_file_just_the_error(build, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a capture at all")
    code, err = run_with_stderr([build.binary, "stats", bad], tty=True, cwd=tmp_path)
    assert code != 0
    text = err.decode()
    assert "not a memray capture" in text.lower(), text
    assert "Reading" not in text, text
