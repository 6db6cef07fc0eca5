"""Helpers shared by the end-to-end tests (imported by the test modules)."""
import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
HELPERS = TESTS / "helpers"
VENVS = REPO / ".venvs"

#: Which implementation is under test. "ours" (default) is this project.
#: "memray" runs the same tests against Memray 1.20 from the oracle venvs
#: (a self-check of the test suite: every test should pass there too, except
#: those marked as about this project's extensions).
IMPL = os.environ.get("MEMRAY_TESTS_IMPL", "ours")
SELF_CHECK = IMPL == "memray"

#: CPython minor versions Memray 1.20 has wheels for: .venvs/oracle-3.X exist for these.
ORACLE_MINORS = range(9, 15)


def oracle_python(minor: int) -> Path:
    return VENVS / f"oracle-3.{minor}" / "bin" / "python"


def nearest_oracle(minor: int) -> Optional[Path]:
    """The oracle venv's python of `minor`, else of the nearest version that has one:
    Memray's reader decodes line tables by the capture's version, so any of its builds
    reads captures of any version."""
    for m in sorted(ORACLE_MINORS, key=lambda m: abs(m - minor)):
        if oracle_python(m).exists():
            return oracle_python(m)
    return None


def hybrid_unavailable(interp) -> Optional[str]:
    """Why hybrid (Python + native) stacks cannot be checked on `interp`, or None.

    Debian sid's static python3.14/3.15 are stripped, and GCC's function splitting puts
    most of the eval loop outside the 1 KiB that the exported `_PyEval_EvalFrameDefault`
    symbol covers: the loop's return addresses have no name for any reader (Memray's
    included), so nothing can tell where Python frames go among native ones."""
    if interp.static and interp.minor >= 14:
        return (f"{interp.id}: the stripped static interpreter's eval loop lies outside any symbol, "
                "so no reader can place Python frames among native ones (native frames were checked)")
    return None


SUBPROCESS_TIMEOUT = float(os.environ.get("MEMRAY_TESTS_SUBPROCESS_TIMEOUT", "90"))

def children_of(pid: int) -> List[int]:
    """The processes whose parent is `pid`, as /proc lists them now, by PID."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces and parentheses: the fields follow the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


def c_compiler() -> str:
    """The C compiler the tests build helpers with: $CC, else cc or gcc on PATH."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise AssertionError("no C compiler (cc) found; run scripts/setup-test-env")
    return cc


# Memray's AllocatorType numbering (PYMALLOC_FREE = 1 ... MUNMAP = 15), as the package
# defines it: python/memray/_allocators.py, itself checked against the capture crate's
# `Allocator` by a Rust test. Read from the file, not imported, so that the self-check
# against Memray 1.20 uses the same numbers.
def allocator_numbers():
    namespace = {}
    exec((REPO / "python" / "memray" / "_allocators.py").read_text(), namespace)
    return {member.name: int(member) for member in namespace["AllocatorType"]}


_ALLOCATORS = allocator_numbers()
globals().update(_ALLOCATORS)

LZ4_MAGIC = b"\x04\x22\x4d\x18"
MEMRAY_MAGIC = b"memray\x00"
FORMAT_VERSION = 13


# --------------------------------------------------------------------------- processes


@dataclass
class Result:
    cmd: List[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return (
            f"command: {' '.join(map(str, self.cmd))}\n"
            f"exit code: {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n"
            f"--- stderr ---\n{self.stderr[-6000:]}"
        )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd, *, cwd=None, env=None, timeout=None, input=None) -> Result:
    """Run a command in its own process group; kill the whole group on timeout."""
    cmd = [str(c) for c in cmd]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(
            input=input.encode() if input is not None else None,
            timeout=timeout or SUBPROCESS_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(
            "timed out (hang or deadlock?) after %ss\n%s"
            % (
                timeout or SUBPROCESS_TIMEOUT,
                Result(cmd, -9, out.decode(errors="replace"), err.decode(errors="replace")).describe(),
            )
        )
    return Result(cmd, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def assert_ok(result: Result) -> Result:
    assert result.returncode == 0, "command failed\n" + result.describe()
    return result


def assert_clean_error(result: Result, *mentions: str) -> None:
    """A tool error: non-zero exit, a short message, no traceback, no panic."""
    assert result.returncode != 0, "expected a failure\n" + result.describe()
    out = result.output
    assert "Traceback (most recent call last)" not in out, "Python traceback from the tool\n" + result.describe()
    assert "panicked" not in out and "RUST_BACKTRACE" not in out, "Rust panic\n" + result.describe()
    assert result.returncode < 128 and result.returncode > 0, "killed by a signal?\n" + result.describe()
    err_lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert err_lines, "no error message on stderr\n" + result.describe()
    assert len(err_lines) <= 3, "error message should be short (one line)\n" + result.describe()
    for m in mentions:
        assert m in out, f"error message should mention {m!r}\n" + result.describe()


def sigkill_once_started(cmd, *, cwd, env, settle=1.0) -> int:
    """Starts `cmd` (a program that prints its PID once it has done its work, then
    waits), SIGKILLs that PID `settle` seconds later and returns it, once `cmd` ended."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        line = proc.stdout.readline().decode().strip()
        assert line.isdigit(), f"script did not start: {line!r} {proc.stderr.read(4000) if proc.poll() is not None else ''}"
        time.sleep(settle)
        os.kill(int(line), signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode != 0, "the killed program's runner exited 0"
    return int(line)


def assert_frees_only_of_recorded_blocks(records: List[dict]) -> None:
    """A sampled capture records the free of a block only if it recorded the block."""
    live = set()
    for r in records:
        if r["allocator"] == _ALLOCATORS["FREE"]:
            assert r["address"] in live, f"free of a block that was not sampled: {r}"
            live.discard(r["address"])
        else:
            live.add(r["address"])


def assert_no_crash(result: Result) -> None:
    assert result.returncode >= 0, "killed by signal %d\n%s" % (-result.returncode, result.describe())
    for needle in ("Segmentation fault", "Fatal Python error", "core dumped", "panicked", "Aborted"):
        assert needle not in result.output, needle + "\n" + result.describe()


# --------------------------------------------------------------------------- scripts

_MARKER = re.compile(r"#\s*@(\w+)\s*$")


class Script:
    """A Python script written to disk; `# @name` comments mark lines."""

    def __init__(self, path: Path, *parts: str):
        self.path = Path(path)
        self.text = "".join(textwrap.dedent(p).lstrip("\n") for p in parts)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.text)
        self.lines: Dict[str, int] = {}
        for number, line in enumerate(self.text.splitlines(), start=1):
            m = _MARKER.search(line)
            if m:
                assert m.group(1) not in self.lines, "duplicate marker " + m.group(1)
                self.lines[m.group(1)] = number

    def line(self, marker: str) -> int:
        return self.lines[marker]

    def __fspath__(self):
        return str(self.path)

    def __str__(self):
        return str(self.path)


# --------------------------------------------------------------------------- captures


class Capture:
    """What a reader (Memray 1.20's FileReader) saw in a capture file."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data
        self.metadata = data["metadata"]

    def _section(self, name):
        section = self.data.get(name)
        assert section is not None, f"section {name} was not requested"
        assert not isinstance(section, dict), f"reader failed on {name}: {section.get('error')}"
        return section

    @property
    def records(self) -> List[dict]:
        return self._section("all")

    @property
    def hwm(self) -> List[dict]:
        return self._section("hwm")

    @property
    def leaks(self) -> List[dict]:
        return self._section("leaks")

    @property
    def snapshots(self) -> List[list]:
        return self._section("snapshots")

    def error(self, name) -> Optional[str]:
        section = self.data.get(name)
        return section.get("error") if isinstance(section, dict) else None

    def find(self, section="all", *, size=None, allocator=None, address=None) -> List[dict]:
        out = []
        for rec in self._section(section):
            if size is not None and rec["size"] != size:
                continue
            if allocator is not None and rec["allocator"] != allocator:
                continue
            if address is not None and rec["address"] != address:
                continue
            out.append(rec)
        return out

    def one(self, section="all", **kw) -> dict:
        found = self.find(section, **kw)
        assert len(found) == 1, f"expected exactly one {section} record matching {kw}, got {found}"
        return found[0]


def top(rec: dict, n: int = 1) -> List[tuple]:
    """The innermost n frames of a record as (function, basename, line)."""
    stack = rec["stack"]
    assert stack is not None, f"record has no stack: {rec}"
    return [(f, os.path.basename(fn), ln) for f, fn, ln in stack[:n]]


def frames(rec: dict) -> List[tuple]:
    return [(f, fn, ln) for f, fn, ln in rec["stack"]]


class Reader:
    """Reads captures with Memray 1.20 (an oracle venv's python)."""

    def __init__(self, python: Path, label: str):
        self.python = Path(python)
        self.label = label

    def read(self, path, *modes: str, timeout=None) -> Capture:
        path = Path(path)
        assert path.exists(), f"capture {path} does not exist"
        res = run(
            [self.python, HELPERS / "oracle_dump.py", path, *(modes or ("all",))],
            timeout=timeout,
        )
        assert res.returncode == 0, f"{self.label} could not read {path}\n" + res.describe()
        return Capture(path, json.loads(res.stdout))

    def cli(self, *args, cwd=None, timeout=None) -> Result:
        return run([self.python, "-m", "memray", *args], cwd=cwd, timeout=timeout)

    def run_script(self, path, *args, timeout=None) -> Result:
        """Runs a script under this reader's Python (which has Memray 1.20)."""
        return run([self.python, path, *args], timeout=timeout)

    def stats_json(self, capture, out_json) -> dict:
        res = self.cli("stats", "--json", "-f", "-o", out_json, capture)
        assert res.returncode == 0, f"{self.label} memray stats failed\n" + res.describe()
        return json.loads(Path(out_json).read_text())
