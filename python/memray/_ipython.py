"""The IPython extension, as Memray's: `%load_ext memray`, then a cell starting with
`%%memray_flamegraph [options]` runs under a Tracker in the notebook's own namespace and its
flame graph is shown inline. The graph stays in `memray-results/<random>/flamegraph.html`
under the current directory; the capture is removed once the graph is written."""

import argparse
import glob
import os
import shlex
import subprocess
import tempfile

RESULTS_DIR = "memray-results"
DESCRIPTION = "Memory profile the code in the cell and display a flame graph."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="%%memray_flamegraph")
    parser.add_argument("--native", action="store_true", help="Track native (C/C++) stack frames as well")
    parser.add_argument("--follow-fork", action="store_true",
                        help="Record allocations in child processes forked from the tracked script")
    parser.add_argument("--trace-python-allocators", action="store_true",
                        help="Record allocations made by the pymalloc allocator")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--leaks", action="store_true", help="Show memory leaks, instead of peak memory usage")
    which.add_argument("--temporary-allocation-threshold", metavar="N", type=int, default=None,
                       help="Report temporary allocations, as opposed to leaked allocations or high watermark "
                            "allocations. An allocation is considered temporary if at most N other allocations "
                            "occur before it is deallocated. With N=0, an allocation is temporary only if it is "
                            "immediately deallocated before any other allocation occurs.")
    which.add_argument("--temporary-allocations", action="store_const", dest="temporary_allocation_threshold",
                       const=1, help="Equivalent to --temporary-allocation-threshold=1")
    parser.add_argument("--temporal", action="store_true",
                        help="Generate a dynamic flame graph that can analyze allocations in a user-selected time "
                             "range.")
    parser.add_argument("--split-threads", action="store_true", help="Do not merge allocations across threads")
    parser.add_argument("--inverted", action="store_true",
                        help="Invert the flame graph: use allocators as roots instead of thread entry points")
    parser.add_argument("--max-memory-records", type=int, default=None, help="Maximum number of memory records to "
                        "display")
    return parser


def _flamegraph_options(args) -> list:
    options = []
    if args.leaks:
        options.append("--leaks")
    if args.temporary_allocation_threshold is not None:
        options += ["--temporary-allocation-threshold", str(args.temporary_allocation_threshold)]
    for flag in ("temporal", "split_threads", "inverted"):
        if getattr(args, flag):
            options.append("--" + flag.replace("_", "-"))
    if args.max_memory_records is not None:
        options += ["--max-memory-records", str(args.max_memory_records)]
    return options


def load_ipython_extension(ipython) -> None:
    """`%load_ext memray`: registers the `%%memray_flamegraph` cell magic."""
    from IPython.core.magic import Magics, cell_magic, magics_class

    @magics_class
    class FlamegraphMagics(Magics):
        @cell_magic
        def memray_flamegraph(self, line, cell):
            run_cell_with_flamegraph(self.shell, line, cell)

    FlamegraphMagics.memray_flamegraph.__doc__ = DESCRIPTION + "\n\n" + _parser().format_help()
    ipython.register_magics(FlamegraphMagics)


def run_cell_with_flamegraph(shell, line: str, cell: str) -> None:
    from IPython.display import IFrame, display

    from ._api import Tracker
    from ._reader import _binary, _error_text

    try:
        args = _parser().parse_args(shlex.split(line))
    except SystemExit:  # argparse has printed the usage error or the help
        return
    os.makedirs(RESULTS_DIR, exist_ok=True)
    # Relative: the notebook's server serves files below its directory, not absolute paths.
    directory = os.path.relpath(tempfile.mkdtemp(dir=RESULTS_DIR))
    capture = os.path.join(directory, "memray.bin")
    html = os.path.join(directory, "flamegraph.html")
    try:
        with Tracker(capture, native_traces=args.native, follow_fork=args.follow_fork,
                     trace_python_allocators=args.trace_python_allocators):
            shell.ex(cell)
        res = subprocess.run([_binary(), "flamegraph", "-o", html, *_flamegraph_options(args), capture],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if res.returncode != 0:
            print("memray: no flame graph: %s" % _error_text(res.stderr))
            return
    finally:
        for path in [capture] + glob.glob(glob.escape(capture) + ".*"):
            try:
                os.unlink(path)
            except OSError:
                pass
    print("\n\nResults saved to %s" % html)
    display(IFrame(html, width="100%", height=600))
