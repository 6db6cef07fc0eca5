"""Builds tests/helpers/native_ext (the `nativeext` extension module) for one interpreter.

The module is compiled with the system compilers against the interpreter's own
headers, with -O0 -g and frame pointers, so native stacks and their symbolization
can be checked against known functions and lines (see `marker_line`).
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

from support import HELPERS, c_compiler

SOURCE_DIR = HELPERS / "native_ext"
C_SOURCE = SOURCE_DIR / "nativeext.c"
CPP_SOURCE = SOURCE_DIR / "nativeext_vector.cpp"

_FLAGS = ["-O0", "-g", "-fno-omit-frame-pointer", "-fPIC", "-fno-builtin"]


def _config(executable: str) -> dict:
    code = (
        "import json, sysconfig; "
        "print(json.dumps({'include': sysconfig.get_paths()['include'], "
        "'suffix': sysconfig.get_config_var('EXT_SUFFIX')}))"
    )
    out = subprocess.run([executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def build_native_ext(executable: str, outdir: Path) -> Path:
    """Compile nativeext for `executable` into `outdir`; returns the directory to put on
    PYTHONPATH. Raises RuntimeError with the compiler's output on failure."""
    cc = c_compiler()
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C/C++ compiler (gcc, g++) found; run scripts/setup-test-env")
    cfg = _config(executable)
    outdir.mkdir(parents=True, exist_ok=True)
    objs = []
    for compiler, src in ((cc, C_SOURCE), (cxx, CPP_SOURCE)):
        obj = outdir / (src.name + ".o")
        # -idirafter the parent: Debian's pyconfig.h includes <x86_64-linux-gnu/python3.X/pyconfig.h>.
        cmd = [compiler, *_FLAGS, "-I", cfg["include"], "-idirafter", str(Path(cfg["include"]).parent),
               "-c", str(src), "-o", str(obj)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError("%s failed:\n%s%s" % (" ".join(cmd), res.stdout, res.stderr))
        objs.append(str(obj))
    target = outdir / ("nativeext" + cfg["suffix"])
    cmd = [cxx, "-shared", "-g", *objs, "-o", str(target)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError("%s failed:\n%s%s" % (" ".join(cmd), res.stdout, res.stderr))
    return outdir


def marker_line(name: str, kind: str = "ALLOC-LINE") -> int:
    """The 1-based line in the nativeext sources tagged `<kind>: <name>`."""
    for src in (C_SOURCE, CPP_SOURCE):
        for n, line in enumerate(src.read_text().splitlines(), 1):
            if line.rstrip().endswith("%s: %s */" % (kind, name)) or line.rstrip().endswith("%s: %s" % (kind, name)):
                return n
    raise KeyError("no %s marker for %s" % (kind, name))
