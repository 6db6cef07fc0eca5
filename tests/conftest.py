"""Fixtures for the end-to-end suite.

Interpreters: every pyenv CPython 3.8-3.13 found via `pyenv root` (newest patch
release of each minor), Debian's statically linked /usr/bin/python3.11, and
CPython 3.14 and 3.15 from Debian sid's packages (scripts/setup-sid-python, into
.venvs/sid), each as Debian's static interpreter and as a launcher over the shared
libpython. Tests taking the `interp` fixture run once per interpreter (ids `py3.8`
... `py3.15`, `static-py3.11`, `static-py3.14`, `static-py3.15`); absent ones are
skipped with the reason, and the list is printed at the end of the session.

Fixtures:
  interp       the interpreter under test (Interpreter: id, minor, executable, static)
  workdir      a fresh temporary directory (tmp_path)
  helper_lib   tests/helpers/alloc_helper.c compiled once per session (cc -shared -fPIC -O0)
  build        paths of this project's memray binary and payload library
  tracked_env  environment for processes under test (PYTHONPATH=<repo>/python:tests/helpers,
               MEMRAY_BIN, MEMRAY_PAYLOAD, ALLOC_HELPER_LIB)
  script       factory: script("name.py", text) -> support.Script in workdir
  run_py       run_py(script, *args, cwd=None) -> Result: run a script with interp
  memray_run   memray_run(*args, cwd=None) -> Result: `interp -m memray run *args`
  memray_cli   memray_cli(*args) -> Result: this project's CLI binary (stats, parse, ...)
  oracle       support.Reader over .venvs/oracle-3.X (Memray 1.20) of interp's version;
               skipped for 3.8, which Memray 1.20 does not support, and 3.15, for
               which it has no wheel
  reader       like oracle, but for 3.8 falls back to the oldest oracle available
               (Memray's reader decodes line tables by the capture's Python version)

Set MEMRAY_TESTS_IMPL=memray to run the suite against Memray 1.20 itself (a
self-check of the tests): the tracked interpreters are then the oracle venvs.
"""
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import support  # noqa: E402
from support import HELPERS, REPO, SELF_CHECK, VENVS, Reader, Script, run  # noqa: E402

MINORS = range(8, 14)
STATIC_PYTHON = Path("/usr/bin/python3.11")
#: CPython 3.14 and 3.15 from Debian sid (scripts/setup-sid-python)
SID_MINORS = (14, 15)
SID_BIN = VENVS / "sid" / "root" / "usr" / "bin"
ORACLE_MIN_MINOR = 9
#: Memray 1.20 publishes wheels up to 3.14
ORACLE_MAX_MINOR = 14


@dataclass(frozen=True)
class Interpreter:
    id: str
    minor: int
    executable: Optional[str]
    static: bool = False
    missing: Optional[str] = None

    @property
    def version(self):
        return (3, self.minor)

    def __str__(self):
        return self.id


def _pyenv_root() -> Optional[Path]:
    try:
        res = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
        if res.returncode == 0 and res.stdout.strip():
            return Path(res.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    env_root = os.environ.get("PYENV_ROOT")
    return Path(env_root) if env_root else None


def _links_libpython(executable: Path) -> Optional[bool]:
    try:
        res = subprocess.run(["ldd", str(executable)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return "libpython" in res.stdout


def _discover() -> List[Interpreter]:
    found = []
    root = _pyenv_root()
    for minor in MINORS:
        best, best_patch = None, -1
        if root is not None:
            for d in (root / "versions").glob(f"3.{minor}.*"):
                m = re.fullmatch(rf"3\.{minor}\.(\d+)", d.name)
                exe = d / "bin" / f"python3.{minor}"
                if m and exe.exists() and int(m.group(1)) > best_patch:
                    best, best_patch = exe, int(m.group(1))
        if best is None:
            where = f"under {root}/versions" if root else "(pyenv not found)"
            found.append(Interpreter(f"py3.{minor}", minor, None, missing=f"CPython 3.{minor} not installed {where}"))
        else:
            found.append(Interpreter(f"py3.{minor}", minor, str(best)))

    sid = "static-py3.11"
    if not STATIC_PYTHON.exists():
        found.append(Interpreter(sid, 11, None, True, missing=f"{STATIC_PYTHON} does not exist"))
    else:
        linked = _links_libpython(STATIC_PYTHON)
        if linked is None:
            found.append(Interpreter(sid, 11, None, True, missing=f"could not inspect {STATIC_PYTHON} with ldd"))
        elif linked:
            found.append(Interpreter(sid, 11, None, True, missing=f"{STATIC_PYTHON} links libpython as a shared library"))
        else:
            found.append(Interpreter(sid, 11, str(STATIC_PYTHON), True))

    for minor in SID_MINORS:
        for kind, iid in (("shared", f"py3.{minor}"), ("static", f"static-py3.{minor}")):
            exe = SID_BIN / f"python3.{minor}-{kind}"
            if exe.exists():
                found.append(Interpreter(iid, minor, str(exe), kind == "static"))
            else:
                found.append(Interpreter(iid, minor, None, kind == "static",
                                         missing=f"{exe} missing: scripts/setup-test-env fetches it from Debian sid"))

    if SELF_CHECK:
        # Memray 1.20 itself is the implementation under test: use the oracle venvs.
        adjusted = []
        for it in found:
            venv_py = VENVS / f"oracle-3.{it.minor}" / "bin" / "python"
            if it.missing:
                adjusted.append(it)
            elif it.static or not ORACLE_MIN_MINOR <= it.minor <= ORACLE_MAX_MINOR:
                adjusted.append(Interpreter(it.id, it.minor, None, it.static, missing="self-check mode: no Memray 1.20 for this interpreter"))
            elif not venv_py.exists():
                adjusted.append(Interpreter(it.id, it.minor, None, it.static, missing=f"self-check mode: {venv_py} missing"))
            else:
                adjusted.append(Interpreter(it.id, it.minor, str(venv_py), it.static))
        found = adjusted
    return found


INTERPRETERS = _discover()
_NOTES: List[str] = []


def _note(text: str) -> None:
    if text not in _NOTES:
        _NOTES.append(text)


def pytest_generate_tests(metafunc):
    if "interp" in metafunc.fixturenames:
        params = []
        for it in INTERPRETERS:
            marks = [pytest.mark.skip(reason=f"{it.id}: {it.missing}")] if it.missing else []
            params.append(pytest.param(it, id=it.id, marks=marks))
        metafunc.parametrize("interp", params)


def pytest_configure(config):
    config.addinivalue_line("markers", "ours_only: tests of this project's own extensions (skipped in self-check mode)")


def pytest_collection_modifyitems(config, items):
    if SELF_CHECK:
        skip = pytest.mark.skip(reason="self-check mode: this project's own extension")
        for item in items:
            if item.get_closest_marker("ours_only"):
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    tr.section("memray interpreters")
    tr.write_line(f"implementation under test: {'Memray 1.20 (self-check)' if SELF_CHECK else 'this project'}")
    for it in INTERPRETERS:
        if it.missing:
            tr.write_line(f"SKIPPED {it.id}: {it.missing}")
        else:
            tr.write_line(f"tested  {it.id}: {it.executable}")
    for note in _NOTES:
        tr.write_line(f"note: {note}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def helper_lib(tmp_path_factory) -> Path:
    cc = support.c_compiler()
    out = tmp_path_factory.mktemp("helper") / "alloc_helper.so"
    res = run(
        [cc, "-shared", "-fPIC", "-O0", "-fno-builtin", "-D_GNU_SOURCE", "-pthread",
         "-o", out, HELPERS / "alloc_helper.c"],
        timeout=120,
    )
    if res.returncode != 0:
        pytest.fail("could not build the helper library\n" + res.describe())
    return out


@dataclass
class Build:
    binary: Path
    payload: Path


def _target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or (REPO / "target")).resolve()


@pytest.fixture(scope="session")
def build() -> Optional[Build]:
    if SELF_CHECK:
        return None
    pkg = REPO / "python" / "memray"
    candidates_bin = [os.environ.get("MEMRAY_BIN"), pkg / "_bin" / "memray", _target_dir() / "release" / "memray"]
    candidates_lib = [
        os.environ.get("MEMRAY_PAYLOAD"),
        pkg / "_payload" / "libmemray_payload.so",
        _target_dir() / "release" / "libmemray_payload.so",
    ]
    binary = next((Path(c) for c in candidates_bin if c and Path(c).is_file()), None)
    payload = next((Path(c) for c in candidates_lib if c and Path(c).is_file()), None)
    if binary is None or payload is None:
        pytest.fail(
            "memray is not built (looked for the CLI in %s and the payload in %s); run scripts/test"
            % ([str(c) for c in candidates_bin if c], [str(c) for c in candidates_lib if c])
        )
    return Build(binary.resolve(), payload.resolve())


_DROP_ENV = re.compile(r"^(PYTHON\w*|MEMRAY_\w+|LD_PRELOAD|VIRTUAL_ENV|PYENV_VERSION)$")


@pytest.fixture
def tracked_env(build, helper_lib) -> dict:
    env = {k: v for k, v in os.environ.items() if not _DROP_ENV.match(k)}
    paths = [str(HELPERS)]
    if build is not None:
        paths.insert(0, str(REPO / "python"))
        env["MEMRAY_BIN"] = str(build.binary)
        env["MEMRAY_PAYLOAD"] = str(build.payload)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["ALLOC_HELPER_LIB"] = str(helper_lib)
    env.pop("COLUMNS", None)
    return env


@pytest.fixture
def script(workdir):
    def make(name: str, *parts: str, directory: Optional[Path] = None) -> Script:
        return Script((directory or workdir) / name, *parts)

    return make


@pytest.fixture
def run_py(interp, tracked_env, workdir):
    def runner(script_path, *args, cwd=None, timeout=None) -> support.Result:
        return run([interp.executable, script_path, *args], cwd=cwd or workdir, env=tracked_env, timeout=timeout)

    return runner


class MemrayRun:
    """`<interp> -m memray run ...` (Memray's documented entry point)."""

    def __init__(self, interp, env, workdir):
        self.interp, self.env, self.workdir = interp, env, workdir

    def cmd(self, *args) -> List[str]:
        return [self.interp.executable, "-m", "memray", "run", *map(str, args)]

    def __call__(self, *args, cwd=None, timeout=None) -> support.Result:
        return run(self.cmd(*args), cwd=cwd or self.workdir, env=self.env, timeout=timeout)


@pytest.fixture
def memray_run(interp, tracked_env, workdir) -> MemrayRun:
    return MemrayRun(interp, tracked_env, workdir)


@pytest.fixture
def memray_cli(build, tracked_env, workdir, interp):
    """This project's CLI binary (in self-check mode: Memray's `python -m memray`)."""

    def cli(*args, cwd=None, timeout=None) -> support.Result:
        if build is None:
            cmd = [interp.executable, "-m", "memray", *args]
        else:
            cmd = [build.binary, *args]
        return run(cmd, cwd=cwd or workdir, env=tracked_env, timeout=timeout)

    return cli


def _oracle_python(minor: int) -> Path:
    return VENVS / f"oracle-3.{minor}" / "bin" / "python"


@pytest.fixture
def oracle(interp) -> Reader:
    if interp.minor < ORACLE_MIN_MINOR:
        pytest.skip(f"Memray 1.20 does not support Python 3.{interp.minor}: no oracle to compare with")
    if interp.minor > ORACLE_MAX_MINOR:
        pytest.skip(f"Memray 1.20 has no wheel for Python 3.{interp.minor}: no oracle to compare with")
    py = _oracle_python(interp.minor)
    if not py.exists():
        pytest.fail(f"oracle venv {py.parent.parent} missing: run scripts/setup-test-env")
    return Reader(py, f"Memray 1.20 (oracle-3.{interp.minor})")


@pytest.fixture
def reader(interp) -> Reader:
    py = _oracle_python(interp.minor)
    if ORACLE_MIN_MINOR <= interp.minor <= ORACLE_MAX_MINOR:
        if not py.exists():
            pytest.fail(f"oracle venv {py.parent.parent} missing: run scripts/setup-test-env")
        return Reader(py, f"Memray 1.20 (oracle-3.{interp.minor})")
    # Memray's reader decodes line tables by the capture's version, so any of its builds
    # reads any capture: the nearest one does.
    for minor in sorted(range(ORACLE_MIN_MINOR, ORACLE_MAX_MINOR + 1), key=lambda m: abs(m - interp.minor)):
        alt = _oracle_python(minor)
        if alt.exists():
            _note(
                f"{interp.id} captures are read with Memray 1.20 from oracle-3.{minor} "
                f"(Memray 1.20 has no 3.{interp.minor} build; its reader decodes line tables by the capture's version)"
            )
            return Reader(alt, f"Memray 1.20 (oracle-3.{minor}, reading a 3.{interp.minor} capture)")
    pytest.skip(f"no oracle venv available to read {interp.id} captures")


@pytest.fixture
def native_ext(interp, tmp_path_factory) -> Path:
    """tests/helpers/native_ext built for `interp` (once per interpreter per session):
    the directory to put on PYTHONPATH to `import nativeext`."""
    from native_build import build_native_ext

    cache = _NATIVE_EXT_BUILDS.get(interp.id)
    if cache is None:
        try:
            cache = build_native_ext(interp.executable, tmp_path_factory.mktemp("nativeext-" + interp.id))
        except RuntimeError as exc:
            pytest.fail("could not build the native test extension: %s" % exc)
        _NATIVE_EXT_BUILDS[interp.id] = cache
    return cache


_NATIVE_EXT_BUILDS = {}
