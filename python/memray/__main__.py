"""`python -m memray ...`: runs the memray binary with this interpreter as the default."""

import os
import shutil
import sys


def _binary():
    env = os.environ.get("MEMRAY_BIN")
    if env:
        return env
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "memray")
    if os.path.exists(bundled):
        return bundled
    found = shutil.which("memray")
    if found:
        return found
    sys.stderr.write("memray: error: the memray binary was not found (set MEMRAY_BIN or reinstall)\n")
    sys.exit(1)


def main():
    os.environ.setdefault("MEMRAY_PYTHON", sys.executable)
    binary = _binary()
    os.execv(binary, [binary] + sys.argv[1:])


if __name__ == "__main__":
    main()
