"""Builds the Python package around the Rust parts (metadata lives in pyproject.toml).

`pip install .` (or `pip wheel .`) runs `cargo build --release -p memray-cli -p memray-payload`
and puts the results inside the package:

    memray/_bin/memray                       the CLI (run by the `memray` console script
                                             and `python -m memray`)
    memray/_payload/libmemray_payload.so     the library memray.Tracker loads

Neither is a CPython extension module (the payload finds CPython's symbols at run time),
so one wheel, tagged py3-none-<platform>, serves every CPython 3.8+ of the machine.

CARGO_TARGET_DIR is honoured; CARGO (default: `cargo` on PATH) picks the cargo binary.
"""

import os
import shutil
import subprocess
import sys

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info

try:  # setuptools >= 70.1 ships bdist_wheel itself
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # older setuptools: the wheel package's (absent: no wheels, sdist still works)
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

ROOT = os.path.dirname(os.path.abspath(__file__))
ARTIFACTS = [
    # (file cargo builds, where it goes inside the package)
    ("memray", os.path.join("_bin", "memray")),
    ("libmemray_payload.so", os.path.join("_payload", "libmemray_payload.so")),
]


def _target_dir():
    env = os.environ.get("CARGO_TARGET_DIR")
    if env:
        return os.path.abspath(env)
    return os.path.join(ROOT, "target")


def _cargo_build():
    cargo = os.environ.get("CARGO") or shutil.which("cargo")
    if not cargo:
        sys.exit("error: building memray needs a Rust toolchain: `cargo` was not found on PATH (https://rustup.rs)")
    cmd = [cargo, "build", "--release", "-p", "memray-cli", "-p", "memray-payload"]
    print("running " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        sys.exit("error: `%s` failed with exit code %d" % (" ".join(cmd), result.returncode))
    release = os.path.join(_target_dir(), "release")
    built = []
    for name, dest in ARTIFACTS:
        src = os.path.join(release, name)
        if not os.path.isfile(src):
            sys.exit("error: cargo did not produce %s" % src)
        built.append((src, dest))
    return built


def _install(src, dest):
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".tmp.%d" % os.getpid()
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


class BuildPyWithRust(build_py):
    """build_py, then the Rust binaries copied into the built package."""

    def run(self):
        super().run()
        built = _cargo_build()
        # An editable install imports the package from the source tree: stage there.
        base = os.path.join(ROOT, "python") if getattr(self, "editable_mode", False) else self.build_lib
        for src, dest in built:
            _install(src, os.path.join(base, "memray", dest))

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs += [os.path.join(self.build_lib, "memray", dest) for _, dest in ARTIFACTS]
        return outputs


class EggInfoInBuild(egg_info):
    """Metadata under build/, not python/: an egg-info next to the package would register
    the pytest plugin's entry point for anything run with PYTHONPATH=python."""

    def initialize_options(self):
        super().initialize_options()
        base = os.path.join(ROOT, "build")
        os.makedirs(base, exist_ok=True)
        self.egg_base = os.path.relpath(base, os.getcwd())


class BinaryDistribution(Distribution):
    """Platform-specific (installed into platlib), though without extension modules."""

    def has_ext_modules(self):
        return True


CMDCLASS = {"build_py": BuildPyWithRust, "egg_info": EggInfoInBuild}

if bdist_wheel is not None:

    class PlatformWheel(bdist_wheel):
        """py3-none-<platform>: native code, but no CPython ABI dependence."""

        def get_tag(self):
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    CMDCLASS["bdist_wheel"] = PlatformWheel


setup(distclass=BinaryDistribution, cmdclass=CMDCLASS)
