"""The README's main command, `scripts/demo`, as a newcomer runs it: it attaches to the
bundled service's whole tree and writes what it says it wrote."""
import re
import shutil
from pathlib import Path

import pytest

import support
from test_attach import needs_ptrace

pytestmark = pytest.mark.ours_only


@needs_ptrace
def test_demo_attaches_to_the_service_tree_and_writes_its_reports(tracked_env):
    python = shutil.which("python3")
    if python is None:
        pytest.skip("no python3 on PATH")
    env = dict(tracked_env, MEMRAY_PYTHON=python)
    res = support.run(["bash", str(support.REPO / "scripts" / "demo")], env=env, timeout=600)
    assert res.returncode == 0, res.describe()
    out = res.stdout
    assert "memray attach --children" in out and "memray detach --children" in out, out
    captures = re.search(r"captures, one per process: +(.*)", out).group(1).split()
    assert len(captures) == 3, out   # the master and its two workers
    leaks = Path(re.search(r"flame graph of the tree \(leaks\): +(\S+)", out).group(1))
    peak = Path(re.search(r"flame graph of the tree \(peak\): +(\S+)", out).group(1))
    # The workers' leak is the cache of load_user; their peak is dominated by render_page.
    assert "load_user" in leaks.read_text() and "render_page" in peak.read_text()
    # One page over the three processes.
    assert '"processes":[' in peak.read_text() and "3 processes merged" in peak.read_text()
    assert "render_page" in out   # the stats' top locations
    shutil.rmtree(leaks.parent, ignore_errors=True)
