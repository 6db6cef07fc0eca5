"""The pytest plugin (memray.pytest_plugin), run as pytest itself in a subprocess.

Each test writes a small test file into a fresh directory and runs
`<test runner python> -m pytest -p memray.pytest_plugin` on it with this
checkout's package on PYTHONPATH (plugin autoload is off, so only what the test
asks for is loaded). The installed route, through the `pytest11` entry point,
is covered by test_packaging.py on every interpreter.
"""
import importlib.util
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

from support import REPO, run

pytestmark = pytest.mark.ours_only

HAS_XDIST = importlib.util.find_spec("xdist") is not None


@pytest.fixture
def pytest_run(build, tmp_path):
    """pytest_run({"test_x.py": "..."}, *args) -> support.Result of pytest on those files."""
    env = {k: v for k, v in os.environ.items()
           if not re.match(r"^(PYTHON\w*|MEMRAY_\w+|PYTEST_\w+|LD_PRELOAD|COLUMNS)$", k)}
    env.update(
        PYTHONPATH=str(REPO / "python"),
        MEMRAY_BIN=str(build.binary),
        MEMRAY_PAYLOAD=str(build.payload),
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTHONDONTWRITEBYTECODE="1",
    )

    def runner(files, *args, plugins=("memray.pytest_plugin",), ini="", timeout=120):
        (tmp_path / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
        for name, text in files.items():
            (tmp_path / name).write_text(textwrap.dedent(text))
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
        for p in plugins:
            cmd += ["-p", p]
        cmd += ["-rA", *map(str, args)]
        return run(cmd, cwd=tmp_path, env=env, timeout=timeout)

    runner.dir = tmp_path
    return runner


def outcomes(result):
    """{'test_x.py::test_a': 'PASSED' | 'FAILED' | 'MEMORY PROBLEMS' | ...} from -rA's summary."""
    found = {}
    for line in result.stdout.splitlines():
        m = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|MEMORY PROBLEMS) (\S+::\S+)", line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


def failure_block(result, test_name):
    """The text of one test's entry in the FAILURES section."""
    out = result.stdout
    m = re.search(r"^_+ %s _+$" % re.escape(test_name), out, re.M)
    assert m, "no failure block for %s\n%s" % (test_name, result.describe())
    rest = out[m.end():]
    end = re.search(r"^(_+ \S+ _+|=+ .* =+)$", rest, re.M)
    return rest[: end.start()] if end else rest


ALLOCATING = """
    import pytest

    MiB = 1024 * 1024

    def allocate(n):
        return bytearray(n)

    @pytest.mark.limit_memory("2 MB")
    def test_under_limit():
        data = allocate(1 * MiB)
        del data

    @pytest.mark.limit_memory("2 MB")
    def test_over_limit():
        data = allocate(6 * MiB)
        del data

    @pytest.mark.limit_memory("2 MB")
    def test_peak_counts_not_the_end():
        for _ in range(3):
            data = allocate(5 * MiB)
            del data

    @pytest.mark.limit_memory("100 MB")
    def test_fails_on_its_own():
        assert 1 + 1 == 3
"""


def test_limit_memory(pytest_run):
    res = pytest_run({"test_alloc.py": ALLOCATING})
    got = outcomes(res)
    assert got["test_alloc.py::test_under_limit"] == "PASSED", res.describe()
    assert got["test_alloc.py::test_over_limit"] == "MEMORY PROBLEMS", res.describe()
    assert got["test_alloc.py::test_peak_counts_not_the_end"] == "MEMORY PROBLEMS", res.describe()
    # A test failing by itself is an ordinary failure, not a memory problem.
    assert got["test_alloc.py::test_fails_on_its_own"] == "FAILED", res.describe()
    assert res.returncode == 1

    block = failure_block(res, "test_over_limit")
    assert "Test was limited to 2.0MiB but allocated 6.0MiB at its peak" in block, block
    # The biggest site, with its stack (innermost first), cut at the test function.
    assert re.search(r"- 6\.0MiB allocated here:\n\s+allocate:\S*test_alloc\.py:7\n\s+test_over_limit:\S*test_alloc\.py:16", block), block
    # Short: a handful of lines, not every allocation.
    assert len([l for l in block.splitlines() if l.strip()]) <= 15, block
    # The peak, not the sum of everything allocated: 5 MiB at most at once.
    assert "allocated 5.0MiB at its peak" in failure_block(res, "test_peak_counts_not_the_end")


def test_limit_memory_sizes_and_bad_markers(pytest_run):
    res = pytest_run({"test_sizes.py": """
        import pytest

        @pytest.mark.limit_memory("1.5 GiB")
        def test_gib():
            bytearray(1024)

        @pytest.mark.limit_memory("512KB")
        def test_kb():
            bytearray(1024 * 1024)

        @pytest.mark.limit_memory("lots")
        def test_bad_size():
            pass

        @pytest.mark.limit_memory()
        def test_missing_size():
            pass
    """})
    got = outcomes(res)
    assert got["test_sizes.py::test_gib"] == "PASSED", res.describe()
    assert got["test_sizes.py::test_kb"] == "MEMORY PROBLEMS", res.describe()
    assert "limited to 512.0KiB but allocated 1.0MiB" in failure_block(res, "test_kb")
    assert "Invalid limit_memory marker" in failure_block(res, "test_bad_size")
    assert "Invalid memory size format: 'lots'" in failure_block(res, "test_bad_size")
    assert "Invalid limit_memory marker" in failure_block(res, "test_missing_size")


LEAKY = """
    import pytest

    MiB = 1024 * 1024
    KEPT = []

    def keep(n):
        KEPT.append(bytearray(n))

    def fill_cache():
        keep(3 * MiB)

    def not_the_cache(stack):
        return not any(frame.function == "fill_cache" for frame in stack.frames)

    @pytest.mark.limit_leaks("1 MB")
    def test_leaks():
        keep(3 * MiB)

    @pytest.mark.limit_leaks("1 MB")
    def test_frees_everything():
        for _ in range(5):
            data = bytearray(3 * MiB)
            del data

    @pytest.mark.limit_leaks("4 MB")
    def test_leak_under_the_limit():
        keep(3 * MiB)

    @pytest.mark.limit_leaks("1 MB", filter_fn=not_the_cache)
    def test_filtered_leak():
        fill_cache()

    @pytest.mark.limit_leaks("1 MB")
    def test_many_small_leaks_per_site_under_limit():
        for _ in range(100):
            keep(8 * 1024)
"""


def test_limit_leaks(pytest_run):
    res = pytest_run({"test_leaky.py": LEAKY})
    got = outcomes(res)
    assert got["test_leaky.py::test_leaks"] == "MEMORY PROBLEMS", res.describe()
    assert got["test_leaky.py::test_frees_everything"] == "PASSED", res.describe()
    assert got["test_leaky.py::test_leak_under_the_limit"] == "PASSED", res.describe()
    assert got["test_leaky.py::test_filtered_leak"] == "PASSED", res.describe()
    # 800 KiB from one line, under 1 MiB per location.
    assert got["test_leaky.py::test_many_small_leaks_per_site_under_limit"] == "PASSED", res.describe()
    block = failure_block(res, "test_leaks")
    assert "Test was allowed to leak 1.0MiB per location but 1 location leaked more" in block, block
    assert re.search(r"- 3\.0MiB leaked here:\n\s+keep:\S*test_leaky\.py:8\n\s+test_leaks:\S*test_leaky\.py:18", block), block
    assert len([l for l in block.splitlines() if l.strip()]) <= 15, block


def test_markers_work_without_memray_flag_and_print_no_report(pytest_run):
    res = pytest_run({"test_alloc.py": ALLOCATING, "test_leaky.py": LEAKY})
    got = outcomes(res)
    assert got["test_alloc.py::test_over_limit"] == "MEMORY PROBLEMS"
    assert got["test_leaky.py::test_leaks"] == "MEMORY PROBLEMS"
    assert "MEMRAY REPORT" not in res.stdout


def test_default_limit(pytest_run):
    files = {"test_default.py": """
        import pytest

        def test_small():
            bytearray(1024 * 1024)

        def test_big():
            bytearray(8 * 1024 * 1024)

        @pytest.mark.limit_memory("16 MB")
        def test_big_with_its_own_limit():
            bytearray(8 * 1024 * 1024)
    """}
    res = pytest_run(files, "--memray-default-limit", "4 MB")
    got = outcomes(res)
    assert got == {
        "test_default.py::test_small": "PASSED",
        "test_default.py::test_big": "MEMORY PROBLEMS",
        "test_default.py::test_big_with_its_own_limit": "PASSED",
    }, res.describe()
    assert "limited to 4.0MiB but allocated 8.0MiB" in failure_block(res, "test_big")
    assert "MEMRAY REPORT" not in res.stdout

    # The same from the ini file.
    res = pytest_run(files, ini="memray_default_limit = 4 MB\n")
    assert outcomes(res)["test_default.py::test_big"] == "MEMORY PROBLEMS", res.describe()

    res = pytest_run(files, "--memray-default-limit", "four")
    assert res.returncode == 4, res.describe()
    assert "--memray-default-limit: Invalid memory size format: 'four'" in res.stderr


SUMMARY = """
    def allocate(n):
        return bytearray(n)

    def test_small():
        data = [allocate(1000) for _ in range(100)]

    def test_big():
        data = allocate(20 * 1024 * 1024)

    def test_medium():
        data = allocate(5 * 1024 * 1024)
        more = [allocate(64 * 1024) for _ in range(10)]
"""


def test_summary(pytest_run):
    res = pytest_run({"test_sum.py": SUMMARY}, "--memray")
    assert res.returncode == 0, res.describe()
    out = res.stdout
    assert "MEMRAY REPORT" in out
    # The tests that allocated most, biggest first.
    table = re.findall(r"^\s+(\S+)\s+(\d+)\s+(test_sum\.py::\w+)$", out, re.M)
    assert [t[2] for t in table] == ["test_sum.py::test_big", "test_sum.py::test_medium", "test_sum.py::test_small"], out
    assert table[0][0] == "20.0MiB"
    sections = re.split(r"^Allocation results for ", out, flags=re.M)[1:]
    assert [s.split()[0] for s in sections] == [t[2] for t in table]
    big = sections[0]
    assert "📦 Total memory allocated: 20.0MiB" in big
    assert re.search(r"📏 Total allocations: \d+", big)
    assert re.search(r"📊 Histogram of allocation sizes: \|.+\|", big)
    assert "🥇 Biggest allocating functions:" in big
    assert re.search(r"- allocate:\S*test_sum\.py:3 -> 20\.0MiB", big), big
    medium = sections[1]
    assert re.search(r"- allocate:\S*test_sum\.py:3 -> 5\.6MiB", medium), medium


def test_summary_options(pytest_run):
    files = {"test_sum.py": SUMMARY}
    res = pytest_run(files, "--memray", "--most-allocations", "1", "--stacks", "2")
    out = res.stdout
    assert out.count("Allocation results for ") == 1, out
    assert "1 of 3 tracked" in out
    # Two frames per site: the allocation and its caller.
    assert re.search(r"- allocate:\S*test_sum\.py:3 -> 20\.0MiB\n\s+test_big:\S*test_sum\.py:9", out), out

    res = pytest_run(files, "--memray", "--hide-memray-summary")
    assert res.returncode == 0 and "MEMRAY REPORT" not in res.stdout, res.describe()

    res = pytest_run(files, ini="memray = true\nhide_memray_summary = false\n")
    assert "MEMRAY REPORT" in res.stdout, res.describe()


def test_bin_path_and_prefix_keep_the_captures(pytest_run, build):
    keep = pytest_run.dir / "captures"
    res = pytest_run({"test_sum.py": SUMMARY}, "--memray", "--memray-bin-path", keep, "--memray-bin-prefix", "run1")
    assert res.returncode == 0, res.describe()
    names = sorted(p.name for p in keep.iterdir())
    assert names == ["run1-test_sum.py-test_big.bin", "run1-test_sum.py-test_medium.bin",
                     "run1-test_sum.py-test_small.bin"], names
    assert str(keep) in res.stdout
    stats = run([build.binary, "stats", "--json", "-o", pytest_run.dir / "s.json", keep / names[0]])
    assert stats.returncode == 0, stats.describe()


@pytest.mark.parametrize("flag, attribute", [("--trace-python-allocators", "trace_python_allocators"),
                                             ("--native", "has_native_traces")])
def test_tracking_flags_pass_through(pytest_run, build, flag, attribute):
    keep = pytest_run.dir / "captures"
    probe = """
        import memray, sys
        for path in sys.argv[2:]:
            print(path.rsplit("-", 1)[-1], getattr(memray.FileReader(path).metadata, sys.argv[1]))
    """
    (pytest_run.dir / "probe.py").write_text(textwrap.dedent(probe))
    for given, expected in ((flag, "True"), (None, "False")):
        args = ["--memray", "--memray-bin-path", keep, "--memray-bin-prefix", "p"] + ([given] if given else [])
        res = pytest_run({"test_sum.py": SUMMARY}, *args)
        assert res.returncode == 0, res.describe()
        env = dict(os.environ, PYTHONPATH=str(REPO / "python"), MEMRAY_BIN=str(build.binary))
        probe_res = run([sys.executable, pytest_run.dir / "probe.py", attribute,
                         keep / "p-test_sum.py-test_big.bin"], env=env)
        assert probe_res.stdout.split() == ["test_big.bin", expected], probe_res.describe()


def test_async_test_functions_stay_async(pytest_run):
    """The wrapper keeps a coroutine function a coroutine function (async plugins see it)."""
    res = pytest_run({"conftest.py": """
        import asyncio, inspect, pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_pyfunc_call(pyfuncitem):
            if inspect.iscoroutinefunction(pyfuncitem.obj):
                funcargs = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
                asyncio.run(pyfuncitem.obj(**funcargs))
                return True
    """, "test_async.py": """
        import asyncio, pytest

        @pytest.mark.limit_memory("1 MB")
        async def test_async_over():
            await asyncio.sleep(0)
            data = bytearray(4 * 1024 * 1024)
            await asyncio.sleep(0)
    """})
    assert outcomes(res) == {"test_async.py::test_async_over": "MEMORY PROBLEMS"}, res.describe()


@pytest.mark.skipif(not HAS_XDIST, reason="pytest-xdist is not installed in the test runner's environment")
def test_xdist_workers(pytest_run):
    files = {"test_alloc.py": ALLOCATING, "test_sum.py": SUMMARY, "test_leaky.py": LEAKY}
    res = pytest_run(files, "--memray", "-n", "2", "--most-allocations", "0",
                     plugins=("memray.pytest_plugin", "xdist.plugin"))
    got = outcomes(res)
    assert got["test_alloc.py::test_over_limit"] == "MEMORY PROBLEMS", res.describe()
    assert got["test_leaky.py::test_leaks"] == "MEMORY PROBLEMS", res.describe()
    assert got["test_alloc.py::test_under_limit"] == "PASSED", res.describe()
    assert re.search(r"\b2 workers\b|gw1", res.stdout), res.describe()
    # The controller's report covers the tests of every worker.
    assert "MEMRAY REPORT" in res.stdout
    reported = set(re.findall(r"^Allocation results for (\S+) ", res.stdout, re.M))
    assert {"test_sum.py::test_big", "test_sum.py::test_small", "test_alloc.py::test_over_limit"} <= reported, res.stdout
