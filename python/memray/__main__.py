"""`python -m memray ...`: runs the memray binary with this interpreter as the default."""

import os
import sys

from memray._binary import find_binary


def _binary():
    found = find_binary()
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
