"""The pytest plugin (memray.pytest_plugin), run as pytest itself in a subprocess.

Each test writes a small test file into a fresh directory and runs
`<test runner python> -m pytest -p memray.pytest_plugin` on it with this
checkout's package on PYTHONPATH (plugin autoload is off, so only what the test
asks for is loaded). The installed route, through the `pytest11` entry point,
is covered by test_packaging.py on every interpreter.

Where pytest-memray 1.11 decides or prints something, the expected text is what it
prints; test_same_as_pytest_memray runs pytest-memray itself (.venvs/pytest-memray)
on the same files and compares.
"""
import hashlib
import importlib.util
import json
import os
import re
import sys
import textwrap

import pytest

from support import REPO, Result, run

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

    def runner(files, *args, plugins=("memray.pytest_plugin",), ini="", timeout=120, cache=False):
        (tmp_path / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(textwrap.dedent(text))
        cmd = [sys.executable, "-m", "pytest"] + ([] if cache else ["-p", "no:cacheprovider"])
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
    rest = out[m.end():].lstrip("\n")
    end = re.search(r"^(_+ \S+ _+|=+ .* =+)$", rest, re.M)
    return rest[: end.start()] if end else rest


def report_section(block, title):
    """The text of the report section `title` (`---- memray-max-memory ----`) of a failure block, or None."""
    m = re.search(r"^-+ %s -+$" % re.escape(title), block, re.M)
    if not m:
        return None
    rest = block[m.end():].lstrip("\n")
    end = re.search(r"^-+ \S+ -+$", rest, re.M)
    return rest[: end.start()] if end else rest


def entries(section):
    """[(size, [frame, ...]), ...] of a `List of allocations:` section."""
    found = []
    for line in section.splitlines():
        m = re.match(r"^    - (\S+) allocated here:$", line)
        if m:
            found.append((m.group(1), []))
        elif line.startswith("        ") and found:
            found[-1][1].append(line.strip())
    return found



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
    # pytest-memray's texts: the summary first, the allocations in a section of their own.
    assert block.splitlines()[0] == "Test was limited to 2.0MiB but allocated 6.0MiB", block
    section = report_section(block, "memray-max-memory")
    assert section is not None and section.startswith("List of allocations:\n"), block
    # One frame per allocation by default, then "..." for the rest of its stack.
    assert entries(section) == [("6.0MiB", [f"allocate:{pytest_run.dir}/test_alloc.py:7", "..."])], section
    # The peak, not the sum of everything allocated: 5 MiB at most at once.
    assert failure_block(res, "test_peak_counts_not_the_end").startswith(
        "Test was limited to 2.0MiB but allocated 5.0MiB\n")


def test_stacks_end_where_the_tracker_was_entered(pytest_run):
    res = pytest_run({"test_alloc.py": ALLOCATING}, "--stacks", "10", "-k", "test_over_limit")
    section = report_section(failure_block(res, "test_over_limit"), "memray-max-memory")
    (size, frames), = entries(section)
    # As in pytest-memray: the allocation, the test, and the plugin's wrapper that entered the
    # Tracker; no pytest frames below it, and no "..." since the stack has no more frames.
    assert [f.split(":")[0] for f in frames] == ["allocate", "test_over_limit", "wrapper"], section
    assert frames[2].startswith("wrapper:%s:" % (REPO / "python" / "memray" / "pytest_plugin.py")), section


def test_limits_are_reached_at_equality(pytest_run):
    """pytest-memray fails a test whose peak (or a location's leak) equals its limit."""
    res = pytest_run({"test_edge.py": """
        import pytest

        KEPT = []

        @pytest.mark.limit_memory("2KB")
        def test_exactly_at_the_limit():
            data = bytearray(2047)  # 2048 bytes with its terminating NUL

        @pytest.mark.limit_memory("2KB")
        def test_one_byte_under():
            data = bytearray(2046)

        @pytest.mark.limit_leaks("2KB")
        def test_leaks_exactly_the_limit():
            KEPT.append(bytearray(2047))

        @pytest.mark.limit_leaks("2KB")
        def test_leaks_one_byte_under():
            KEPT.append(bytearray(2046))
    """})
    assert outcomes(res) == {
        "test_edge.py::test_exactly_at_the_limit": "MEMORY PROBLEMS",
        "test_edge.py::test_one_byte_under": "PASSED",
        "test_edge.py::test_leaks_exactly_the_limit": "MEMORY PROBLEMS",
        "test_edge.py::test_leaks_one_byte_under": "PASSED",
    }, res.describe()
    assert failure_block(res, "test_exactly_at_the_limit").startswith(
        "Test was limited to 2.0KiB but allocated 2.0KiB\n"), res.describe()


MANY_SITES = """
    import pytest

    def make(n):
        return bytearray(n)

    SITES = {}
    for i in range(12):
        exec("def site_%d(): return make(%d)" % (i, 100_000 + i * 1000), {"make": make}, SITES)

    @pytest.mark.limit_memory("100 KB")
    def test_many_sites():
        kept = [f() for f in SITES.values()]
"""


@pytest.mark.parametrize("args, ini, listed", [
    ((), "", 10),                                   # pytest-memray: the top 10, then "...and N more"
    (("-vv",), "", 12),                             # every one from verbosity 2
    (("-q",), "", None),                            # the summary line only
    (("-vv",), "verbosity_memray = -1\n", None),    # the ini option overrides -v/-q
    (("-q",), "verbosity_memray = 2\n", 12),
])
def test_verbosity_of_the_allocation_list(pytest_run, args, ini, listed):
    res = pytest_run({"test_many.py": MANY_SITES}, *args, ini=ini)
    assert outcomes(res) == {"test_many.py::test_many_sites": "MEMORY PROBLEMS"}, res.describe()
    block = failure_block(res, "test_many_sites")
    assert re.match(r"Test was limited to 100\.0KiB but allocated 1\.\dMiB\n", block), block
    section = report_section(block, "memray-max-memory")
    if listed is None:
        assert section is None and "allocated here" not in block, block
        return
    got = entries(section)
    assert len(got) == listed, section
    # Biggest first: site_11 allocated the most.
    assert got[0][1][0].startswith("make:") and got[0][0] == "108.4KiB", section
    if listed < 12:
        assert section.rstrip().endswith("    ...and 2 more"), section
    else:
        assert "more" not in section, section


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
    res = pytest_run({"test_leaky.py": LEAKY}, "-q")
    got = outcomes(res)
    assert got["test_leaky.py::test_leaks"] == "MEMORY PROBLEMS", res.describe()
    assert got["test_leaky.py::test_frees_everything"] == "PASSED", res.describe()
    assert got["test_leaky.py::test_leak_under_the_limit"] == "PASSED", res.describe()
    assert got["test_leaky.py::test_filtered_leak"] == "PASSED", res.describe()
    # 800 KiB from one line, under 1 MiB per location.
    assert got["test_leaky.py::test_many_small_leaks_per_site_under_limit"] == "PASSED", res.describe()
    block = failure_block(res, "test_leaks")
    assert block.splitlines()[0] == \
        "Test was allowed to leak 1.0MiB per location but at least one location leaked more", block
    # Its own section, shown even with -q (verbosity applies to limit_memory only), with the
    # native stack leak checks record: at least 5 frames, the allocator's innermost.
    section = report_section(block, "memray-leaked-memory")
    assert section is not None and section.startswith("List of leaked allocations:\n"), block
    (size, frames), = entries(section)
    assert size == "3.0MiB" and len(frames) == 6 and frames[-1] == "...", section
    assert any("bytearray" in f.lower() for f in frames), section

    # More frames asked for: the Python frames follow the native ones.
    res = pytest_run({"test_leaky.py": LEAKY}, "--stacks", "40", "-k", "test_leaks")
    (size, frames), = entries(report_section(failure_block(res, "test_leaks"), "memray-leaked-memory"))
    python_frames = [f.split(":")[0] for f in frames if "test_leaky.py" in f]
    assert python_frames[:2] == ["keep", "test_leaks"], frames


def test_native_frames_in_the_failure_list(pytest_run):
    res = pytest_run({"test_alloc.py": ALLOCATING}, "--native", "--stacks", "60", "-k", "test_over_limit")
    (size, frames), = entries(report_section(failure_block(res, "test_over_limit"), "memray-max-memory"))
    functions = [f.split(":")[0] for f in frames]
    # Native frames first (the allocator, then CPython's bytearray code), then the Python ones.
    assert "allocate" in functions and functions.index("allocate") > 0, frames
    assert any("bytearray" in f.lower() for f in functions[: functions.index("allocate")]), frames
    assert functions.index("allocate") < functions.index("test_over_limit"), frames


def test_marker_arguments(pytest_run):
    res = pytest_run({"test_sizes.py": """
        import pytest

        @pytest.mark.limit_memory("1.5 GB")
        def test_gb():
            bytearray(1024)

        @pytest.mark.limit_memory(limit="512KB")
        def test_kb_by_keyword():
            bytearray(1024 * 1024)

        @pytest.mark.limit_memory("lots")
        def test_bad_size():
            raise AssertionError("the test ran")

        @pytest.mark.limit_memory("2 MiB")
        def test_binary_suffix_is_not_pytest_memrays():
            pass

        @pytest.mark.limit_memory()
        def test_missing_size():
            pass

        @pytest.mark.limit_leaks("1 MB", filter=None)
        def test_unknown_argument():
            pass
    """})
    got = outcomes(res)
    assert got["test_sizes.py::test_gb"] == "PASSED", res.describe()
    assert got["test_sizes.py::test_kb_by_keyword"] == "MEMORY PROBLEMS", res.describe()
    assert "limited to 512.0KiB but allocated 1.0MiB" in failure_block(res, "test_kb_by_keyword")
    # Refused before the test runs, with pytest-memray's message.
    block = failure_block(res, "test_bad_size")
    assert "ValueError: Invalid memory size format: lots" in block and "the test ran" not in block, block
    assert "Invalid memory size format: 2 MiB" in failure_block(res, "test_binary_suffix_is_not_pytest_memrays")
    assert "missing a required argument: 'limit'" in failure_block(res, "test_missing_size")
    assert "unexpected keyword argument 'filter'" in failure_block(res, "test_unknown_argument")


def test_size_strings_as_pytest_memray_reads_them():
    """Every string is read as pytest-memray reads it: the same bytes, or refused."""
    sys.path.insert(0, str(REPO / "python"))
    try:
        from memray._pytest_limits import parse_memory_string
    finally:
        sys.path.pop(0)
    expected = {
        "2KB": 2048, "2 KB": 2048, "2kb": 2048, "2 kB": 2048, "2  KB": 2048, "2\tKB": 2048, "+2KB": 2048,
        "02KB": 2048, ".5KB": 512, "2.5MB": 2.5 * 1024**2, "2 B": 2, "2B": 2, "0.0B": 0, "1GB": 1024**3,
        "2TB": 2 * 1024**4, "2PB": 2 * 1024**5,
        "2KiB": None, "2K": None, "2": None, "1e3KB": None, "-1KB": None, "2EB": None, " 2KB ": None,
        "2.KB": None, "1.5.KB": None, "abc": None, "": None, "2 XB": None, 2048: None,
    }
    for text, size in expected.items():
        if size is None:
            with pytest.raises(ValueError, match="^Invalid memory size format: %s$" % re.escape(str(text))):
                parse_memory_string(text)
        else:
            assert parse_memory_string(text) == size, text


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

        @pytest.mark.limit_leaks("16 MB")
        def test_big_with_a_leak_limit():
            bytearray(8 * 1024 * 1024)
    """}
    res = pytest_run(files, "--memray-default-limit", "4 MB")
    got = outcomes(res)
    # The default applies to tests without a memray marker (one marker per test at most).
    assert got == {
        "test_default.py::test_small": "PASSED",
        "test_default.py::test_big": "MEMORY PROBLEMS",
        "test_default.py::test_big_with_its_own_limit": "PASSED",
        "test_default.py::test_big_with_a_leak_limit": "PASSED",
    }, res.describe()
    assert "limited to 4.0MiB but allocated 8.0MiB" in failure_block(res, "test_big")
    assert "MEMRAY REPORT" not in res.stdout

    # The same from the ini file.
    res = pytest_run(files, ini="memray_default_limit = 4 MB\n")
    assert outcomes(res)["test_default.py::test_big"] == "MEMORY PROBLEMS", res.describe()

    res = pytest_run(files, "--memray-default-limit", "four")
    assert res.returncode == 4, res.describe()
    assert "--memray-default-limit: Invalid memory size format: four" in res.stderr


def test_one_memray_marker_per_test(pytest_run):
    res = pytest_run({"test_two.py": """
        import pytest

        pytestmark = pytest.mark.limit_memory("1 MB")

        @pytest.mark.limit_leaks("1 MB")
        def test_memory_and_leaks():
            pass

        @pytest.mark.limit_memory("2 MB")
        def test_two_limit_memory_markers_the_closest_wins():
            bytearray(1536 * 1024)
    """})
    assert outcomes(res) == {
        "test_two.py::test_memory_and_leaks": "FAILED",
        "test_two.py::test_two_limit_memory_markers_the_closest_wins": "PASSED",
    }, res.describe()
    assert "ValueError: Only one Memray marker can be applied to each test" in \
        failure_block(res, "test_memory_and_leaks")


@pytest.mark.skipif(sys.version_info >= (3, 13, 3), reason="the test runner's Python has object lifetime tracking")
def test_limit_leaked_objects_is_a_usage_error(pytest_run):
    res = pytest_run({"test_objects.py": """
        import pytest

        @pytest.mark.limit_leaked_objects(3)
        def test_objects():
            pass

        def test_other():
            pass
    """})
    assert res.returncode == 4 and "passed" not in res.stdout, res.describe()
    expected = ("ERROR: The limit_leaked_objects marker requires Python 3.13.3 or later. Current version: %s"
                % ".".join(map(str, sys.version_info[:3])))
    assert expected in res.stderr, res.describe()


def test_fail_on_increase(pytest_run):
    def files(size, limit="10 MB"):
        return {"test_inc.py": f"""
            import pytest

            @pytest.mark.limit_memory("{limit}")
            def test_limited():
                data = bytearray({size})

            def test_unlimited():
                data = bytearray({size})
        """}

    res = pytest_run(files(100_000), "--fail-on-increase", cache=True)
    assert res.returncode == 0, res.describe()
    # Each passing limit_memory test leaves its peak in pytest's cache, with or without the flag.
    cached = pytest_run.dir / ".pytest_cache" / "v" / "memray"
    assert [p.name for p in cached.iterdir()] == ["test_inc.py::test_limited"]
    assert json.loads((cached / "test_inc.py::test_limited").read_text()) == {"total_allocated_memory": 100_001}

    res = pytest_run(files(100_000), "--fail-on-increase", cache=True)
    assert res.returncode == 0, "the same peak is no increase\n" + res.describe()

    # More than last time: fails even under its limit, and the increase is what is reported
    # when the limit is passed as well.
    for limit in ("10 MB", "150 KB"):
        res = pytest_run(files(200_000, limit), "--fail-on-increase", cache=True)
        assert outcomes(res) == {"test_inc.py::test_limited": "MEMORY PROBLEMS",
                                 "test_inc.py::test_unlimited": "PASSED"}, res.describe()
        block = failure_block(res, "test_limited")
        assert block.splitlines()[0] == "Test previously used 97.7KiB but now uses 195.3KiB", block
        assert report_section(block, "memray-max-memory").strip() == "Test uses more memory than previous run"
    # A failing run leaves the last successful one as the reference...
    assert json.loads((cached / "test_inc.py::test_limited").read_text()) == {"total_allocated_memory": 100_001}
    # ...and without the flag the increase is not checked, but the new peak is kept.
    res = pytest_run(files(200_000), cache=True)
    assert res.returncode == 0, res.describe()
    assert json.loads((cached / "test_inc.py::test_limited").read_text()) == {"total_allocated_memory": 200_001}

    # Without pytest's cache there is nothing to compare with: said, and the suite runs on.
    res = pytest_run(files(300_000), ini="fail-on-increase = true\n")
    assert res.returncode == 0, res.describe()
    assert "--fail-on-increase has no effect" in res.stdout and "-p no:cacheprovider" in res.stdout, res.describe()


SUMMARY = """
    import pytest

    def allocate(n):
        return bytearray(n)

    def test_small():
        data = [allocate(1000) for _ in range(100)]

    def test_big():
        data = allocate(20 * 1024 * 1024)

    def test_medium():
        data = allocate(5 * 1024 * 1024)
        more = [allocate(64 * 1024) for _ in range(10)]

    def test_raises():
        data = allocate(30 * 1024 * 1024)
        raise RuntimeError("no report for a test that did not finish")

    def test_allocates_nothing():
        pass
"""


def test_summary(pytest_run):
    res = pytest_run({"test_sum.py": SUMMARY}, "--memray")
    assert res.returncode == 1, res.describe()
    out = res.stdout
    assert "MEMRAY REPORT" in out
    # The tests that allocated most, biggest first; one that raised is left out, as in
    # pytest-memray, and so is one with nothing allocated at its peak.
    table = re.findall(r"^\s+(\S+)\s+(\d+)\s+(test_sum\.py::\w+)$", out, re.M)
    assert [t[2] for t in table] == ["test_sum.py::test_big", "test_sum.py::test_medium", "test_sum.py::test_small"], out
    assert table[0][0] == "20.0MiB"
    sections = re.split(r"^Allocation results for ", out, flags=re.M)[1:]
    assert [s.split()[0] for s in sections] == [t[2] for t in table]
    big = sections[0]
    assert "📦 Total memory allocated: 20.0MiB" in big
    assert "📏 Total allocations: 1\n" in big, big
    assert "📊 Histogram of allocation sizes: |█|" in big, big
    assert "🥇 Biggest allocating functions:" in big
    assert re.search(r"- allocate:\S*test_sum\.py:5 -> 20\.0MiB\n\n\n", big), big
    # One line per allocation site at the peak, biggest first, its innermost frame only.
    medium = sections[1]
    lines = re.findall(r"^\t\t- (\S+) -> (\S+)$", medium, re.M)
    assert lines[0] == (f"allocate:{pytest_run.dir}/test_sum.py:5", "5.0MiB"), medium
    assert lines[1] == (f"allocate:{pytest_run.dir}/test_sum.py:5", "640.0KiB"), medium
    assert re.search(r"Histogram of allocation sizes: \|[ ▁▂▃▄▅▆▇█]{2}\|", medium), medium
    # No closing line about kept captures: they were in a temporary directory.
    assert "binary dumps" not in out


def test_summary_options(pytest_run):
    files = {"test_sum.py": SUMMARY}
    res = pytest_run(files, "--memray", "--most-allocations", "1")
    out = res.stdout
    assert out.count("Allocation results for ") == 1, out
    assert "1 of 5 tracked" in out, out

    res = pytest_run(files, "--memray", "--hide-memray-summary")
    assert "MEMRAY REPORT" not in res.stdout, res.describe()

    res = pytest_run(files, ini="memray = true\nhide_memray_summary = false\nmost_allocations = 2\n")
    assert res.stdout.count("Allocation results for ") == 2, res.describe()


def test_bin_path_and_prefix_keep_the_captures(pytest_run, build):
    keep = pytest_run.dir / "captures"
    files = {"test_sum.py": SUMMARY, "sub/test_ids.py": """
        import pytest

        @pytest.mark.parametrize("x", [1, 2, 3], ids=["a/b", "c::d", "z" * 300])
        def test_ids(x):
            pass
    """}
    res = pytest_run(files, "--memray", "--memray-bin-path", keep, "--memray-bin-prefix", "run1")
    assert res.returncode == 1, res.describe()
    long_name = "run1-sub-test_ids.py-test_ids[" + "z" * 300 + "]"
    digest = hashlib.sha256((long_name + ".bin").encode()).hexdigest()[:16]
    long_name = long_name[:229] + "-" + digest
    names = ["run1-test_sum.py-test_small", "run1-test_sum.py-test_big", "run1-test_sum.py-test_medium",
             "run1-test_sum.py-test_raises", "run1-test_sum.py-test_allocates_nothing",
             "run1-sub-test_ids.py-test_ids[a-b]", "run1-sub-test_ids.py-test_ids[c-d]", long_name]
    assert sorted(p.name for p in keep.iterdir()) == sorted([n + ".bin" for n in names] + ["metadata"])
    # Metadata for the tests that ran to their end, as pytest-memray writes it.
    assert sorted(p.name for p in (keep / "metadata").iterdir()) == sorted(
        n + ".metadata" for n in names if not n.endswith("test_raises"))
    assert max(len(n + ".metadata") for n in names) == 255
    assert json.loads((keep / "metadata" / "run1-test_sum.py-test_big.metadata").read_text()) == {
        "test_id": "test_sum.py::test_big", "peak_memory": 20 * 1024 * 1024 + 1,
        "result_file": str(keep / "run1-test_sum.py-test_big.bin")}
    # Counted as pytest-memray counts them: without the test that raised.
    assert f"\nCreated 7 binary dumps at {keep} with prefix run1\n" in res.stdout, res.describe()
    flamegraph = run([build.binary, "flamegraph", "-o", pytest_run.dir / "big.html",
                      keep / "run1-test_sum.py-test_big.bin"])
    assert flamegraph.returncode == 0, flamegraph.describe()

    # Run again into the same directory: the captures are replaced.
    res = pytest_run(files, "--memray", "--memray-bin-path", keep, "--memray-bin-prefix", "run1")
    assert res.returncode == 1 and "Created 7 binary dumps" in res.stdout, res.describe()


def test_bin_path_that_cannot_hold_captures_is_a_usage_error(pytest_run):
    (pytest_run.dir / "a_file").write_text("")
    res = pytest_run({"test_sum.py": SUMMARY}, "--memray", "--memray-bin-path", pytest_run.dir / "a_file")
    assert res.returncode == 4, res.describe()
    assert f"{pytest_run.dir / 'a_file'} must be a directory" in res.stderr, res.describe()
    assert "test_sum.py" not in res.stdout

    res = pytest_run({"test_sum.py": SUMMARY}, "--memray", "--memray-bin-path", pytest_run.dir / "a_file" / "sub")
    assert res.returncode == 4 and "cannot create the directory" in res.stderr, res.describe()


@pytest.mark.parametrize("args, marker, native, python_allocators", [
    (["--memray"], "", False, False),
    (["--memray", "--native"], "", True, False),
    (["--memray", "--trace-python-allocators"], "", False, True),
    ([], "@pytest.mark.limit_memory('1 GB')", False, False),
    # Leak checks record native stacks and pymalloc's allocations, as pytest-memray's do.
    ([], "@pytest.mark.limit_leaks('1 GB')", True, True),
])
def test_capture_options_are_pytest_memrays(pytest_run, build, args, marker, native, python_allocators):
    keep = pytest_run.dir / "captures"
    res = pytest_run({"test_one.py": f"""
        import pytest

        {marker}
        def test_one():
            data = bytearray(100_000)
    """}, *args, "--memray-bin-path", keep, "--memray-bin-prefix", "p")
    assert res.returncode == 0, res.describe()
    probe = run([sys.executable, "-c", textwrap.dedent("""
        import memray, sys
        m = memray.FileReader(sys.argv[1]).metadata
        print(m.file_format.name, m.has_native_traces, m.trace_python_allocators)
    """), keep / "p-test_one.py-test_one.bin"],
        env=dict(os.environ, PYTHONPATH=str(REPO / "python"), MEMRAY_BIN=str(build.binary)))
    assert probe.stdout.split() == ["AGGREGATED_ALLOCATIONS", str(native), str(python_allocators)], probe.describe()


def test_help_texts_are_pytest_memrays(pytest_run):
    res = pytest_run({}, "--help")
    text = " ".join(res.stdout.split())
    for expected in (
        "--memray Activate memray tracking",
        "Path where to write the memray binary dumps (by default a temporary folder)",
        "Prefix to use for the binary dump (by default a random UUID4 hex)",
        "--hide-memray-summary Hide the memray summary at the end of the execution",
        "Show the N tests that allocate most memory (N=0 for all)",
        "Show the N stack entries when showing tracebacks of memory allocations",
        "--native Show native frames when showing tracebacks of memory allocations (will be slower)",
        "Record allocations made by the Pymalloc allocator (will be slower)",
        "--fail-on-increase Fail a test with the limit_memory marker if it uses more memory than its last "
        "successful run",
        "verbosity_memray (string): Verbosity level for limit_memory failure reports.",
        "--memray-default-limit=SIZE",
    ):
        assert expected in text, expected + "\n" + res.stdout


@pytest.mark.parametrize("how", ["-p pytest_memray", "-p pytest_memray.plugin", "-p memray._pytest_entry",
                                 "conftest", "twice"])
def test_pytest_memrays_import_names(pytest_run, how):
    """Suites written for pytest-memray load the plugin by its names; it is registered once
    however many of them are used."""
    files = {"test_alloc.py": ALLOCATING, "conftest.py": textwrap.dedent("""
        from pytest_memray import LeaksFilterFunction, Stack, StackFrame
        from pytest_memray.plugin import LeakedObjectsFilterFunction
    """)}
    plugins = how.split()[1:]
    if how == "conftest":
        files["conftest.py"] += 'pytest_plugins = ["pytest_memray"]\n'
    if how == "twice":
        files["conftest.py"] += 'pytest_plugins = ["pytest_memray"]\n'
        plugins = ["memray._pytest_entry", "pytest_memray.plugin", "memray.pytest_plugin"]
    res = pytest_run(files, "--memray", plugins=plugins)
    assert outcomes(res).get("test_alloc.py::test_over_limit") == "MEMORY PROBLEMS", res.describe()
    assert res.stdout.count("MEMRAY REPORT") == 1, res.describe()
    assert res.stdout.count("Allocation results for test_alloc.py::test_over_limit ") == 1, res.describe()


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
    # The controller's report covers the tests of every worker, and leaves out those that raised.
    assert "MEMRAY REPORT" in res.stdout
    reported = set(re.findall(r"^Allocation results for (\S+) ", res.stdout, re.M))
    assert {"test_sum.py::test_big", "test_sum.py::test_small", "test_alloc.py::test_over_limit"} <= reported, res.stdout
    assert "test_sum.py::test_raises" not in reported, res.stdout


PYTEST_MEMRAY = REPO / ".venvs" / "pytest-memray" / "bin" / "python"

SIDE_BY_SIDE = """
    import pytest

    MiB = 1024 * 1024
    KEPT = []

    def allocate(n):
        return bytearray(n)

    @pytest.mark.limit_memory("1 MB")
    def test_over():
        data = allocate(3 * MiB)

    @pytest.mark.limit_memory("10 MB")
    def test_under():
        data = allocate(2 * MiB)

    @pytest.mark.limit_memory("2KB")
    def test_at_the_limit():
        data = bytearray(2047)

    @pytest.mark.limit_memory("100 KB")
    def test_many():
        kept = [allocate(100_000 + i * 4096) for i in range(12)]

    @pytest.mark.limit_leaks("1 MB")
    def test_leaks():
        KEPT.append(allocate(7 * MiB))

    @pytest.mark.limit_leaks("8 MB")
    def test_leaks_under():
        KEPT.append(allocate(5 * MiB))

    @pytest.mark.limit_memory("1 MB")
    @pytest.mark.limit_leaks("1 MB")
    def test_two_markers():
        pass

    @pytest.mark.limit_memory("100 MB")
    def test_raises():
        data = allocate(9 * MiB)
        raise RuntimeError("raised")

    @pytest.mark.parametrize("n", [1, 2], ids=["a/b", "x" * 300])
    def test_ids(n):
        data = allocate(n * MiB + 4 * MiB)
"""


def _side(res, run_dir):
    """What pytest-memray's users and tools read from a run, with the run's directory and the
    plugin's own wrapper frame (another file in each plugin) made comparable."""
    out = res.stdout.replace(str(run_dir), "<dir>")
    out = re.sub(r"wrapper:\S+:\d+", "wrapper", out)
    got = {"outcomes": outcomes(res), "failures": {}, "sections": {}}
    for test in re.findall(r"^_+ (test_\w+(?:\[[^\]]*\])?) _+$", out, re.M):
        block = failure_block(Result(res.cmd, res.returncode, out, res.stderr), test)
        raised = re.search(r"^E +(.*)$", block, re.M)
        got["failures"][test] = raised.group(1) if raised else block.splitlines()[0]
        for title in ("memray-max-memory", "memray-leaked-memory"):
            section = report_section(block, title)
            if section is not None:
                first = section.splitlines()[0]
                listed = entries(section)
                if title == "memray-max-memory":
                    # The Python frames' sites; their order among equal sizes is the reader's.
                    listed = sorted((size, frames[0]) for size, frames in listed)
                else:
                    # Native frames: the interpreter's, named alike by both; the sizes must agree.
                    listed = sorted(size for size, _ in listed)
                got["sections"][test] = (title, first, listed, "...and 2 more" in section)
    report = out[out.index("MEMRAY REPORT"):] if "MEMRAY REPORT" in out else ""
    got["report"] = [
        (test, total, re.search(r"^\t\t- (.+)$", body, re.M).group(1))
        for test, body in re.findall(r"^Allocation results for (\S+) at the high watermark\n(.*?)\n\n\n", report,
                                     re.M | re.S)
        for total in re.findall(r"Total memory allocated: (\S+)", body)
    ]
    got["created"] = re.findall(r"^Created \d+ binary dumps at .*$", out, re.M)
    captures = run_dir / "caps"
    got["files"] = sorted(str(p.relative_to(captures)) for p in captures.rglob("*")) if captures.exists() else []
    return got


def run_both(tmp_path, build, python, test_file, text, *args, site=None):
    """pytest-memray (installed for `python`, or in the directory `site`) and this plugin, each
    on `text` in a directory of its own, plugin autoload off: {"pytest-memray": Result, "ours": Result}."""
    results = {}
    for side in ("pytest-memray", "ours"):
        run_dir = tmp_path / side
        run_dir.mkdir()
        (run_dir / "pytest.ini").write_text("[pytest]\n")
        (run_dir / test_file).write_text(textwrap.dedent(text))
        env = {k: v for k, v in os.environ.items()
               if not re.match(r"^(PYTHON\w*|MEMRAY_\w+|PYTEST_\w+|LD_PRELOAD|COLUMNS|VIRTUAL_ENV)$", k)}
        env.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONDONTWRITEBYTECODE="1")
        path = [str(site)] if site else []
        if side == "ours":
            # Ours first on the path: `pytest_memray` and `memray` are this checkout's.
            path.insert(0, str(REPO / "python"))
            env.update(MEMRAY_BIN=str(build.binary), MEMRAY_PAYLOAD=str(build.payload))
        if path:
            env["PYTHONPATH"] = os.pathsep.join(path)
        results[side] = run([python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "pytest_memray.plugin", "-rA",
                             *args], cwd=run_dir, env=env, timeout=180)
    return results


@pytest.mark.skipif(not PYTEST_MEMRAY.exists(), reason="no .venvs/pytest-memray (scripts/setup-test-env makes it)")
def test_same_as_pytest_memray(tmp_path, build):
    """pytest-memray 1.11 itself and this plugin on the same test file, in the same interpreter:
    the same outcomes, failure texts, allocation lists, report and capture files."""
    results = run_both(tmp_path, build, PYTEST_MEMRAY, "test_side.py", SIDE_BY_SIDE, "--memray", "--most-allocations",
                       "0", "--memray-bin-path", "caps", "--memray-bin-prefix", "cmp")
    sides = {}
    for side, res in results.items():
        assert res.returncode == 1, res.describe()
        plugin_dir = "site-packages/pytest_memray" if side == "pytest-memray" else str(REPO / "python" / "memray")
        assert plugin_dir in res.stdout, "the run did not use %s's plugin\n%s" % (side, res.describe())
        sides[side] = _side(res, tmp_path / side)
    theirs, ours = sides["pytest-memray"], sides["ours"]
    for key in ("outcomes", "failures", "sections", "created", "files"):
        assert ours[key] == theirs[key], "%s differ:\nours:          %r\npytest-memray: %r" % (key, ours[key], theirs[key])
    # The report: the same tests in the same order, their peaks, and their biggest allocation.
    assert ours["report"] == theirs["report"], "report differs:\nours:          %r\npytest-memray: %r" % (
        ours["report"], theirs["report"])
    assert len(theirs["report"]) == 8 and len(theirs["sections"]) == 4, theirs


ORACLE_314 = REPO / ".venvs" / "oracle-3.14" / "bin" / "python"
PYTEST_MEMRAY_314 = REPO / ".venvs" / "pytest-memray-3.14"

LEAKED_OBJECTS = """
    import pytest

    LEAKED = []

    class Thing:
        def __repr__(self):
            return "T" * 300

    def make_things(n):
        for _ in range(n):
            LEAKED.append(Thing())

    @pytest.mark.limit_leaked_objects
    def test_leaks_one():
        make_things(1)

    @pytest.mark.limit_leaked_objects()
    def test_leaks_twelve():
        make_things(12)

    @pytest.mark.limit_leaked_objects
    def test_leaks_nothing():
        churned = [Thing() for _ in range(100)]
        del churned

    def not_things(obj):
        return not isinstance(obj, Thing)

    @pytest.mark.limit_leaked_objects(filter_fn=not_things)
    def test_filtered():
        make_things(5)

    @pytest.mark.limit_leaked_objects
    def test_dict():
        LEAKED.append({"a": [1, 2, 3]})

    @pytest.mark.limit_leaked_objects
    def test_raises():
        make_things(1)
        raise ValueError("raised")
"""


@pytest.mark.skipif(not (ORACLE_314.exists() and PYTEST_MEMRAY_314.exists()),
                    reason="no .venvs/oracle-3.14 with .venvs/pytest-memray-3.14 (scripts/setup-test-env makes them)")
def test_limit_leaked_objects_as_pytest_memray(tmp_path, build):
    """limit_leaked_objects on CPython 3.14 (object lifetime tracking): pytest-memray 1.11 and
    this plugin on the same file, with the same outcomes and failure texts."""
    sides = run_both(tmp_path, build, ORACLE_314, "test_objects.py", LEAKED_OBJECTS, site=PYTEST_MEMRAY_314)
    for res in sides.values():
        assert res.returncode == 1, res.describe()
    theirs, ours = sides["pytest-memray"], sides["ours"]
    assert outcomes(ours) == outcomes(theirs), ours.stdout + "\n---- pytest-memray ----\n" + theirs.stdout
    assert outcomes(ours) == {
        "test_objects.py::test_leaks_one": "MEMORY PROBLEMS",
        "test_objects.py::test_leaks_twelve": "MEMORY PROBLEMS",
        "test_objects.py::test_leaks_nothing": "PASSED",
        "test_objects.py::test_filtered": "PASSED",
        "test_objects.py::test_dict": "MEMORY PROBLEMS",
        "test_objects.py::test_raises": "FAILED",
    }, ours.stdout
    for test in ("test_leaks_one", "test_leaks_twelve", "test_dict"):
        block, their_block = failure_block(ours, test), failure_block(theirs, test)
        assert block.splitlines()[0] == their_block.splitlines()[0], (block, their_block)
        section = report_section(block, "memray-tracked-objects")
        their_section = report_section(their_block, "memray-tracked-objects")
        # The same lines; the sample's order is the order objects come out of a hash table.
        assert sorted(section.splitlines()) == sorted(their_section.splitlines()), (section, their_section)
    assert failure_block(ours, "test_leaks_one").splitlines()[0] == "Test leaked 1 objects"
    assert "        ... and 2 more" in failure_block(ours, "test_leaks_twelve")
