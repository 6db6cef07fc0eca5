"""Installing like a Python tool: one wheel, every interpreter.

Once per session a wheel is built with `pip wheel` from a clean copy of the
repository (the files git knows about: tracked plus untracked-but-not-ignored,
so nothing staged or built in this checkout leaks in), at tests/.artifacts/packaging/src.
cargo builds it in this checkout's own target directory (CARGO_TARGET_DIR, else
target/): cargo names a workspace crate's artefacts by its path relative to the
workspace root, so the copy reuses what `scripts/test` just built instead of a second
release build from scratch. MEMRAY_PACKAGING_TARGET=DIR builds elsewhere (an empty DIR:
the full build a user's `pip install .` does).

The wheel is then installed into a fresh virtualenv per interpreter (pip
installs pytest there too, from the package index or pip's cache), where
`memray run`, `python -m memray`, `import memray` (Tracker and FileReader) and
`pytest --memray` (the plugin found through its entry point) must work with no
help from this checkout.
"""
import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from support import REPO, TESTS, run

# The session fixtures build (cargo, pip): minutes on a busy machine, counted against the
# first test that needs them.
pytestmark = [pytest.mark.ours_only, pytest.mark.timeout(1800)]

ARTIFACTS = TESTS / ".artifacts" / "packaging"
BUILD_TIMEOUT = float(os.environ.get("MEMRAY_PACKAGING_BUILD_TIMEOUT", "3600"))
INSTALL_TIMEOUT = 900


def _clean_env(**extra):
    """No trace of this checkout: no PYTHONPATH, no MEMRAY_* pointing into it."""
    env = {k: v for k, v in os.environ.items()
           if not re.match(r"^(PYTHON\w*|MEMRAY_\w+|PYTEST_\w+|VIRTUAL_ENV|PYENV_VERSION|LD_PRELOAD|COLUMNS)$", k)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def _copy_sources(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    if dest.exists():
        shutil.rmtree(dest)
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.is_file():
            continue  # deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)  # mtimes kept: cargo's fingerprints stay valid between sessions


def _target_dir() -> Path:
    return Path(os.environ.get("MEMRAY_PACKAGING_TARGET") or os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


@contextlib.contextmanager
def _sources_locked():
    """Every pytest-xdist worker runs the session fixtures: one at a time copies the
    sources and builds from them."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    with _sources_locked():
        return _build_wheel(tmp_path_factory)


def _build_wheel(tmp_path_factory) -> Path:
    src = ARTIFACTS / "src"
    _copy_sources(src)
    for staged in ("python/memray/_bin", "python/memray/_payload", "target", "build"):
        assert not (src / staged).exists(), f"{staged} was copied: it must be ignored by git"
    dist = tmp_path_factory.mktemp("dist")
    res = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", dist, src],
        cwd=src,
        env=_clean_env(CARGO_TARGET_DIR=str(_target_dir())),
        timeout=BUILD_TIMEOUT,
    )
    assert res.returncode == 0, "pip wheel failed\n" + res.describe()
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


class Venv:
    def __init__(self, root: Path):
        self.root = root
        self.python = root / "bin" / "python"
        self.bin = root / "bin"


@pytest.fixture(scope="session")
def venvs(wheel, tmp_path_factory):
    made = {}

    def get(interp) -> Venv:
        if interp.id not in made:
            root = tmp_path_factory.mktemp("venv-" + interp.id)
            res = run([interp.executable, "-m", "venv", root], env=_clean_env(), timeout=300)
            pip = [root / "bin" / "python", "-m", "pip"]
            if res.returncode != 0 and "ensurepip is not" in res.stdout + res.stderr:
                # Debian's python3.X without python3.X-venv (sid's 3.14/3.15 here): a venv
                # without pip, installed into by the test runner's pip (`pip --python`).
                res = run([interp.executable, "-m", "venv", "--without-pip", root], env=_clean_env(), timeout=300)
                pip = [sys.executable, "-m", "pip", "--python", root / "bin" / "python"]
            assert res.returncode == 0, res.describe()
            venv = Venv(root)
            res = run(
                [*pip, "install", "-q", "--disable-pip-version-check", wheel, "pytest"],
                env=_clean_env(), timeout=INSTALL_TIMEOUT,
            )
            assert res.returncode == 0, "installing the wheel failed\n" + res.describe()
            made[interp.id] = venv
        return made[interp.id]

    return get


@pytest.fixture
def venv(venvs, interp) -> Venv:
    return venvs(interp)


def vrun(venv, *cmd, cwd, timeout=None):
    return run([str(c) for c in cmd], cwd=cwd, env=_clean_env(PATH=f"{venv.bin}{os.pathsep}{os.environ['PATH']}"),
               timeout=timeout)


# --------------------------------------------------------------------------- the wheel itself


def _content_hash(data: bytes) -> int:
    """cli/build.rs's content hash (FNV-1a over 8-byte words), which names the cached payload."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325 ^ len(data)
    end = len(data) - len(data) % 8
    for i in range(0, end, 8):
        h = ((h ^ int.from_bytes(data[i:i + 8], "little")) * 0x100000001B3) & mask
        h ^= h >> 29
    for b in data[end:]:
        h = ((h ^ b) * 0x100000001B3) & mask
    return h


def test_wheel_contents(wheel):
    assert wheel.name == "memray_rs-0.1.0-py3-none-linux_x86_64.whl", wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = {i.filename: i for i in zf.infolist()}
        entry_points = zf.read("memray_rs-0.1.0.dist-info/entry_points.txt").decode()
        wheel_meta = zf.read("memray_rs-0.1.0.dist-info/WHEEL").decode()
    for required in ("memray/__init__.py", "memray/__main__.py", "memray/_reader.py", "memray/pytest_plugin.py",
                     "pytest_memray/__init__.py", "pytest_memray/plugin.py",
                     "memray/_bin/memray", "memray/_payload/libmemray_payload.so"):
        assert required in names, f"{required} missing from the wheel: {sorted(names)}"
    mode = info["memray/_bin/memray"].external_attr >> 16
    assert mode & stat.S_IXUSR, oct(mode)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "Tag: py3-none-linux_x86_64" in wheel_meta
    assert "Root-Is-Purelib: false" in wheel_meta
    assert re.search(r"\[console_scripts\]\s*memray = memray.__main__:main", entry_points), entry_points
    assert re.search(r"\[pytest11\]\s*memray = memray._pytest_entry", entry_points), entry_points


def test_binary_alone_carries_its_payload(wheel, tmp_path):
    """The CLI with nothing next to it (as `cargo install` leaves it) writes its embedded
    payload to a content-hashed file in a cache directory and tracks with it."""
    lone = tmp_path / "bin" / "memray"
    lone.parent.mkdir()
    with zipfile.ZipFile(wheel) as zf, open(lone, "wb") as out:
        out.write(zf.read("memray/_bin/memray"))
    lone.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "alloc.py"
    script.write_text("data = bytearray(3 * 1024 * 1024)\nprint('done')\n")
    env = _clean_env(HOME=str(home))
    env.pop("XDG_CACHE_HOME", None)
    python = sys.executable
    res = run([lone, "run", "--python", python, "-o", tmp_path / "out.bin", script], cwd=tmp_path, env=env)
    assert res.returncode == 0 and "done" in res.stdout, res.describe()
    cached = list((home / ".cache" / "memray").glob("libmemray_payload-*.so"))
    assert len(cached) == 1, cached
    st = cached[0].stat()
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.geteuid()
    data = cached[0].read_bytes()
    assert data[:4] == b"\x7fELF" and b"memray_tracker_start" in data
    assert cached[0].name == "libmemray_payload-%016x.so" % _content_hash(data)
    res = run([lone, "stats", "--json", "-o", tmp_path / "s.json", tmp_path / "out.bin"], cwd=tmp_path, env=env)
    assert res.returncode == 0, res.describe()
    # A second run reuses the same file.
    res = run([lone, "run", "--python", python, "-f", "-o", tmp_path / "out.bin", script], cwd=tmp_path, env=env)
    assert res.returncode == 0, res.describe()
    assert list((home / ".cache" / "memray").iterdir()) == cached


@pytest.fixture(scope="session")
def cargo_installed(wheel, tmp_path_factory) -> Path:
    """`cargo install --path cli` of the same clean copy. --locked and the wheel's target
    directory make it reuse the wheel build's artefacts (a plain `cargo install` resolves
    the dependencies afresh and builds everything again: same binary, minutes slower)."""
    root = tmp_path_factory.mktemp("cargo-root")
    with _sources_locked():
        res = run(
            ["cargo", "install", "--locked", "--path", ARTIFACTS / "src" / "cli", "--root", root,
             "--target-dir", _target_dir()],
            env=_clean_env(), timeout=BUILD_TIMEOUT,
        )
    assert res.returncode == 0, "cargo install failed\n" + res.describe()
    binary = root / "bin" / "memray"
    assert binary.is_file() and sorted(p.name for p in binary.parent.iterdir()) == ["memray"]
    return binary


def test_cargo_install_alone_runs_and_attaches(cargo_installed, tmp_path):
    """The installed binary is alone in its bin/ directory, with no Python package
    anywhere: `memray run` and `memray attach` still work (embedded payload)."""
    home = tmp_path / "home"
    home.mkdir()
    env = _clean_env(HOME=str(home))
    env.pop("XDG_CACHE_HOME", None)
    script = tmp_path / "alloc.py"
    script.write_text("data = bytearray(3 * 1024 * 1024)\nprint('done')\n")
    res = run([cargo_installed, "run", "--python", sys.executable, "-o", tmp_path / "run.bin", script],
              cwd=tmp_path, env=env)
    assert res.returncode == 0 and "done" in res.stdout, res.describe()

    stop = tmp_path / "stop"
    target = tmp_path / "target.py"
    target.write_text(textwrap.dedent(f"""
        import os, sys, time
        keep = []
        print("ready", flush=True)
        deadline = time.time() + 60
        while not os.path.exists({str(stop)!r}) and time.time() < deadline:
            keep.append(bytearray(10000))
            time.sleep(0.01)
    """))
    proc = subprocess.Popen([sys.executable, target], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        res = run([cargo_installed, "attach", "-o", tmp_path / "attach.bin", "--duration", "1", proc.pid],
                  cwd=tmp_path, env=env)
        if res.returncode != 0 and re.search(r"ptrace|not permitted", res.stderr, re.I):
            pytest.skip("attach refused here: " + res.stderr.strip())
        assert res.returncode == 0, res.describe()
        time.sleep(1.5)  # --duration 1: tracking has stopped and the capture is complete
        deadline = time.time() + 30
        while time.time() < deadline:
            stats = run([cargo_installed, "stats", "--json", "-o", tmp_path / "s.json", "-f", tmp_path / "attach.bin"],
                        cwd=tmp_path, env=env)
            if stats.returncode == 0:
                break
            time.sleep(0.5)
        assert stats.returncode == 0, stats.describe()
    finally:
        stop.touch()
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert list((home / ".cache" / "memray").glob("libmemray_payload-*.so"))


# --------------------------------------------------------------------------- installed, per interpreter

ALLOC_SCRIPT = """
    def allocate():
        return bytearray(2 * 1024 * 1024)

    kept = allocate()
    print("tracked program ran")
"""


def test_import_memray(venv, tmp_path):
    code = textwrap.dedent("""
        import os, sys
        import memray
        pkg = os.path.dirname(memray.__file__)
        assert pkg.startswith(sys.prefix), (pkg, sys.prefix)
        assert os.path.isfile(os.path.join(pkg, "_payload", "libmemray_payload.so"))
        for name in ("Tracker", "FileReader", "FileDestination", "SocketDestination", "FileFormat",
                     "AllocatorType", "__version__"):
            assert hasattr(memray, name), name
        with memray.Tracker("api.bin"):
            data = bytearray(3 * 1024 * 1024)
            del data
        reader = memray.FileReader("api.bin")
        print("peak", reader.metadata.peak_memory)
        sizes = [r.size for r in reader.get_high_watermark_allocation_records()]
        assert max(sizes) >= 3 * 1024 * 1024, sizes
        print("ok")
    """)
    res = vrun(venv, venv.python, "-c", code, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.describe()


def test_memray_command_and_python_m(venv, tmp_path):
    (tmp_path / "prog.py").write_text(textwrap.dedent(ALLOC_SCRIPT))
    for i, launcher in enumerate(([venv.bin / "memray"], [venv.python, "-m", "memray"])):
        out = tmp_path / f"out{i}.bin"
        res = vrun(venv, *launcher, "run", "-o", out, "prog.py", cwd=tmp_path)
        assert res.returncode == 0 and "tracked program ran" in res.stdout, res.describe()
        res = vrun(venv, *launcher, "stats", "--json", "-o", tmp_path / f"s{i}.json", out, cwd=tmp_path)
        assert res.returncode == 0, res.describe()
    res = vrun(venv, venv.bin / "memray", "--version", cwd=tmp_path)
    assert res.returncode == 0 and "0.1.0" in res.stdout, res.describe()


@pytest.mark.parametrize("flag", ["-I", "-P"])
def test_python_m_memray_run_keeps_the_interpreters_isolation(venv, interp, tmp_path, flag):
    """`python -I -m memray run app.py` (or -P) gives the program the sys.path that
    `python -I app.py` gives it: neither its directory, the current one nor "" added."""
    if flag == "-P" and interp.minor < 11:
        pytest.skip("-P is new in Python 3.11")
    app = tmp_path / "scripts" / "app.py"
    app.parent.mkdir()
    app.write_text("import json, sys\nprint('PATH=' + json.dumps(sys.path))\n")

    def path_of(res):
        assert res.returncode == 0, res.describe()
        return [l for l in res.stdout.splitlines() if l.startswith("PATH=")][-1]

    plain = path_of(vrun(venv, venv.python, flag, app, cwd=tmp_path))
    tracked = path_of(vrun(venv, venv.python, flag, "-m", "memray", "run", "-q", "-o", tmp_path / "a.bin", app, cwd=tmp_path))
    assert tracked == plain
    assert str(app.parent) not in tracked and '""' not in tracked and str(tmp_path) + '"' not in tracked
    # And without the flag, the program's directory comes first, as with python app.py.
    assert json.loads(path_of(vrun(venv, venv.python, "-m", "memray", "run", "-q", "-o", tmp_path / "b.bin", app,
                                   cwd=tmp_path))[5:])[0] == str(app.parent)


def test_pytest_plugin_installed(venv, interp, tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_installed.py").write_text(textwrap.dedent("""
        import pytest

        def test_allocates():
            data = bytearray(5 * 1024 * 1024)

        @pytest.mark.limit_memory("1 MB")
        def test_over_limit():
            data = bytearray(4 * 1024 * 1024)
    """))
    # Through the entry point, and (on two interpreters, as it is pure Python) with
    # pytest-memray's names for it as well: registered once.
    routes = [[]]
    if interp.id in ("py3.8", "static-py3.15"):
        routes += [["-p", "pytest_memray"], ["-p", "pytest_memray.plugin"], ["-p", "memray"]]
    for names in routes:
        res = vrun(venv, venv.python, "-m", "pytest", "-p", "no:cacheprovider", *names, "--memray", "-rA",
                   cwd=tmp_path)
        assert res.returncode == 1, res.describe()
        assert "PASSED test_installed.py::test_allocates" in res.stdout, res.describe()
        assert "MEMORY PROBLEMS test_installed.py::test_over_limit" in res.stdout, res.describe()
        assert "Test was limited to 1.0MiB but allocated 4.0MiB\n" in res.stdout, res.describe()
        assert res.stdout.count("MEMRAY REPORT") == 1, res.describe()
        assert "📦 Total memory allocated: 5.0MiB" in res.stdout, res.describe()
    res = vrun(venv, venv.python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:memray", "--memray", cwd=tmp_path)
    assert res.returncode == 4 and "--memray" in res.stderr, "-p no:memray turns the plugin off\n" + res.describe()
