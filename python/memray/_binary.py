"""Where the memray binary is: $MEMRAY_BIN, the copy bundled in this package, or PATH."""

import os
import shutil


def find_binary():
    env = os.environ.get("MEMRAY_BIN")
    if env:
        return env
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "memray")
    if os.path.exists(bundled):
        return bundled
    return shutil.which("memray")
