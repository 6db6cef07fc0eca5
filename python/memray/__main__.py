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


def _isolation_flags():
    """This interpreter's isolation options, for `memray run` to start the program with."""
    flags = sys.flags
    if flags.isolated:
        return ["-I"]
    out = []
    if flags.ignore_environment:
        out.append("-E")
    if flags.no_user_site:
        out.append("-s")
    if getattr(flags, "safe_path", False):  # -P, 3.11+
        out.append("-P")
    return out


def main():
    if "MEMRAY_PYTHON" not in os.environ:
        os.environ["MEMRAY_PYTHON"] = sys.executable
        # `python -I -m memray run app.py` runs app.py isolated, as `python -I app.py` would.
        os.environ["MEMRAY_PYTHON_FLAGS"] = " ".join(_isolation_flags())
    binary = _binary()
    os.execv(binary, [binary] + sys.argv[1:])


if __name__ == "__main__":
    main()
