"""Every stack the payload writes is the one a full walk of the frame chain gives, however
it was obtained (issue #17's property test).

tests/helpers/stack_chaos.py runs random calls, returns, yields, exceptions (unwinding up
to 30 frames at once), generators and coroutines resumed from other depths, calls under a
Python trace function that itself calls and allocates, and straight chains up to 150 frames
deep, on two threads, allocating everywhere; tracking starts 20 frames down, and a second
tracker follows the first. With MEMRAY_CHECK_STACKS=1 the payload walks the whole chain
again at every allocation it records, compares it with what it wrote, and prints the counts
when each tracker stops.

With --trace-python-allocators on 3.9+ most stacks are read only down to an anchor frame
(payload/src/stack.rs: sys.monitoring reports frame exits on 3.12+, a profile function given
to deep threads before), so the test also requires that this path was taken; on 3.8 and in
default mode every stack is a full walk.
"""
import re

import pytest

from support import HELPERS, assert_ok, run

pytestmark = pytest.mark.ours_only

CHECK_LINE = re.compile(r"memray: stack check: (\d+) stacks, (\d+) read from an anchor, (\d+) differed from a full walk")


@pytest.mark.parametrize(
    "seed,trace_python_allocators",
    [(1, True), (2, True), (3, True), (4, False)],
    ids=["pyalloc-seed1", "pyalloc-seed2", "pyalloc-seed3", "malloc-seed4"],
)
def test_written_stacks_equal_a_full_walk(interp, tracked_env, workdir, seed, trace_python_allocators):
    env = dict(tracked_env, MEMRAY_CHECK_STACKS="1")
    output = workdir / "chaos.bin"
    res = assert_ok(
        run(
            [interp.executable, HELPERS / "stack_chaos.py", output, str(seed), str(int(trace_python_allocators)), "20", "20000"],
            cwd=workdir,
            env=env,
            timeout=240,
        )
    )
    counts = [tuple(map(int, m.groups())) for m in CHECK_LINE.finditer(res.stderr)]
    assert len(counts) == 2, "expected one stack check line per tracker\n" + res.describe()
    for checked, anchored, differed in counts:
        assert differed == 0, f"{differed} of {checked} written stacks differ from a full walk\n" + res.describe()
        assert checked >= 1000, res.describe()
        if trace_python_allocators and interp.minor >= 9:
            # 3.9-3.11: once a thread's profile function is installed (after 64 deep walks).
            assert anchored >= checked // 2, f"only {anchored} of {checked} stacks were read from an anchor"
        else:
            assert anchored == 0, "anchors need --trace-python-allocators and CPython 3.9+"
