"""The IPython extension: `%load_ext memray` and the `%%memray_flamegraph` cell magic, run
in a real IPython shell (from PyPI, in the test venv) that executes the cells as a notebook's
kernel does, with what it displays captured.

As Memray's: the cell runs in the notebook's namespace, the flame graph is written to
`memray-results/<random>/flamegraph.html` (relative, for the notebook server) and shown in
an IFrame 100% wide and 600 pixels high; the capture itself is removed.
"""
import json
import os
import sys
import textwrap

import pytest

from support import REPO, run

pytest.importorskip("IPython", reason="IPython is not installed in the test venv (scripts/setup-test-env)")

SHELL = textwrap.dedent("""
    import json, sys
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shown = []
    shell.display_pub.publish = lambda data, metadata=None, **kw: shown.append(data)
    results = []
    for cell in json.load(open(sys.argv[1])):
        print("=== cell", flush=True)
        result = shell.run_cell(cell)
        results.append(result.success)
    print("=== end")
    print(json.dumps({"results": results, "shown": shown, "data": len(shell.user_ns.get("data", ()))}))
""")


@pytest.fixture
def ipython(build, tmp_path):
    def cells(*texts):
        (tmp_path / "cells.json").write_text(json.dumps([textwrap.dedent(t).strip() + "\n" for t in texts]))
        (tmp_path / "shell.py").write_text(SHELL)
        env = dict(os.environ, PYTHONPATH=str(REPO / "python"), MEMRAY_BIN=str(build.binary),
                   MEMRAY_PAYLOAD=str(build.payload))
        res = run([sys.executable, tmp_path / "shell.py", tmp_path / "cells.json"], cwd=tmp_path, env=env, timeout=120)
        assert res.returncode == 0, res.describe()
        outputs = res.stdout.split("=== cell\n")[1:]
        outputs[-1], summary = outputs[-1].split("=== end\n")
        return outputs, json.loads(summary), res

    return cells


CELL = """
    %%memray_flamegraph{options}
    def make_blocks(n):
        return [bytearray(100_000) for _ in range(n)]

    data = make_blocks(30)
    print("cell ran", len(data))
"""


def saved_graph(output, tmp_path):
    lines = [l for l in output.splitlines() if l.startswith("Results saved to ")]
    assert len(lines) == 1, output
    path = lines[0][len("Results saved to "):]
    assert path.startswith("memray-results/") and path.endswith("/flamegraph.html"), path
    return path


def test_flamegraph_cell_magic(ipython, tmp_path):
    outputs, summary, res = ipython("%load_ext memray", CELL.format(options=""), "print(len(data))")
    assert summary["results"] == [True, True, True], res.describe()
    # The cell ran in the notebook's namespace.
    assert "cell ran 30" in outputs[1] and outputs[2].strip() == "30" and summary["data"] == 30
    path = saved_graph(outputs[1], tmp_path)
    # The graph is shown inline, the file is there, and the capture is gone.
    (frame,) = summary["shown"]
    html = frame["text/html"]
    assert 'width="100%"' in html and 'height="600"' in html and 'src="%s"' % path in html, html
    directory = (tmp_path / path).parent
    assert sorted(p.name for p in directory.iterdir()) == ["flamegraph.html"]
    graph = (tmp_path / path).read_text()
    assert "make_blocks" in graph and "<html" in graph.lower()


def test_flamegraph_options_and_usage_errors(ipython, tmp_path):
    outputs, summary, res = ipython(
        "%load_ext memray",
        CELL.format(options=" --leaks --native --split-threads"),
        CELL.format(options=" --temporary-allocations --leaks"),
        "%%memray_flamegraph --no-such-option\ndata = None\n",
        "%%memray_flamegraph?",
    )
    # Options reach the tracker and the report: a leaks graph, of a native capture.
    graph = (tmp_path / saved_graph(outputs[1], tmp_path)).read_text()
    assert "make_blocks" in graph
    # Mutually exclusive report kinds, and unknown options: argparse's usage error, and the
    # cell does not run.
    assert "not allowed with argument" in res.stderr + outputs[2], res.describe()
    assert "unrecognized arguments: --no-such-option" in res.stderr + outputs[3], res.describe()
    assert summary["data"] == 30
    assert "Results saved to" not in outputs[2] + outputs[3]
    # The magic's help is Memray's usage line.
    assert "%%memray_flamegraph [-h] [--native] [--follow-fork]" in outputs[4], outputs[4]
