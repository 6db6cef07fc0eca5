"""What the pytest plugin's markers decide and how their failures read, as in pytest-memray 1.11.

The failure texts are matched line for line because CI tools grep junit XML for them:
the first line is the failure's summary, the allocations go in a report section of their
own (`memray-max-memory`, `memray-leaked-memory`).
"""

from __future__ import annotations

import collections
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Tuple

MAX_MEMORY_SECTION = "memray-max-memory"
LEAKS_SECTION = "memray-leaked-memory"
LEAKED_OBJECTS_SECTION = "memray-tracked-objects"
# limit_leaked_objects shows this many of the objects, each's repr cut to REPR_CHARS ("..." included).
SAMPLE_OBJECTS = 10
REPR_CHARS = 100
# limit_memory lists this many allocations below verbosity 2, then "...and N more".
MAX_LISTED_ALLOCATIONS = 10
# limit_leaks shows at least this many frames per location: its stacks are native ones,
# whose innermost frames are the allocator's.
MIN_LEAK_FRAMES = 5

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_PLUGIN_FILE = os.path.join(_PACKAGE_DIR, "pytest_plugin.py")
WRAPPER_NAME = "wrapper"

# pytest-memray's size strings: a number (no exponent, no sign but '+') and a unit that
# ends in B, binary multiples. Anything else is refused with its message.
_SIZE_RE = re.compile(r"^\+?(\d*\.?\d+)\s*([KMGTP]?B)$", re.IGNORECASE)
_MULTIPLIERS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}


def parse_memory_string(text) -> float:
    """'24 MB' -> 25165824.0."""
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError("Invalid memory size format: %s" % (text,))
    return float(match.group(1)) * _MULTIPLIERS[match.group(2).upper()]


def sizeof_fmt(num, suffix="B") -> str:
    for unit in ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi"]:
        if abs(num) < 1024.0:
            return "%3.1f%s%s" % (num, unit, suffix)
        num /= 1024.0
    return "%.1fYi%s" % (num, suffix)


# --------------------------------------------------------------------------- stacks for filter_fn


@dataclass
class StackFrame:
    """One frame of a call stack."""

    function: str
    filename: str
    lineno: int


@dataclass
class Stack:
    """The call stack of an allocation; `frames` are innermost first."""

    frames: Tuple[StackFrame, ...]


LeaksFilterFunction = Callable[[Stack], bool]
# Called with each surviving object; False leaves it out.
LeakedObjectsFilterFunction = Callable[[object], bool]


# --------------------------------------------------------------------------- records


def is_plugin_overhead(record) -> bool:
    """An allocation made by the tracking itself, not by the test: on the thread that entered
    the Tracker, with no frame of the test's above the plugin's wrapper (the wrapper's own line,
    or a call from it into the memray package)."""
    try:
        frames = record.stack_trace()
    except NotImplementedError:
        return False
    for i, (function, filename, _) in enumerate(frames):
        if function == WRAPPER_NAME and os.path.abspath(filename) == _PLUGIN_FILE:
            return i == 0 or os.path.abspath(frames[i - 1][1]).startswith(_PACKAGE_DIR + os.sep)
    return False


def _frames(record, native: bool) -> List[tuple]:
    try:
        return list(record.hybrid_stack_trace() if native else record.stack_trace())
    except NotImplementedError:
        return []


def _entries(records, *, native: bool, n_frames: int) -> List[str]:
    lines = []
    for record in records:
        lines.append("    - %s allocated here:" % sizeof_fmt(record.size))
        frames = _frames(record, native)
        for function, filename, lineno in frames[:n_frames]:
            lines.append("        %s:%s:%s" % (function, filename, lineno))
        if len(frames) > n_frames:
            lines.append("        ...")
    return lines


# --------------------------------------------------------------------------- decisions


@dataclass
class MemoryFailure:
    """A test the markers fail: `summary` is the failure's text, `section` the (title, text)
    report section listing the allocations, None where verbosity hides it."""

    summary: str
    section: Optional[Tuple[str, str]]


def _by_size(records: Iterable) -> list:
    return sorted(records, key=lambda r: r.size, reverse=True)


def _on_thread(records, reader, current_thread_only: bool):
    return [r for r in records
            if not is_plugin_overhead(r) and (not current_thread_only or r.tid == reader.metadata.main_thread_id)]


def peak_of(reader, *, current_thread_only=False) -> Tuple[int, list]:
    """The test's own bytes at its peak, and the allocations making them up (biggest first)."""
    records = _by_size(_on_thread(
        reader.get_high_watermark_allocation_records(merge_threads=not current_thread_only),
        reader, current_thread_only))
    return sum(r.size for r in records), records


def check_limit_memory(peak: int, records: list, memory_limit, *, native: bool, verbosity: int,
                       n_frames: int) -> Optional[MemoryFailure]:
    """`peak` and `records` as peak_of gives them."""
    limit = parse_memory_string(memory_limit)
    if peak < limit:
        return None
    summary = "Test was limited to %s but allocated %s" % (sizeof_fmt(limit), sizeof_fmt(peak))
    if verbosity < 0:
        return MemoryFailure(summary, None)
    shown = records if verbosity >= 2 else records[:MAX_LISTED_ALLOCATIONS]
    lines = ["List of allocations:"] + _entries(shown, native=native, n_frames=n_frames)
    if len(records) > len(shown):
        lines.append("    ...and %d more" % (len(records) - len(shown)))
    return MemoryFailure(summary, (MAX_MEMORY_SECTION, "\n".join(lines)))


def check_memory_increase(previous: int, peak: int) -> Optional[MemoryFailure]:
    if peak <= previous:
        return None
    return MemoryFailure("Test previously used %s but now uses %s" % (sizeof_fmt(previous), sizeof_fmt(peak)),
                         (MAX_MEMORY_SECTION, "Test uses more memory than previous run"))


def check_limit_leaks(reader, location_limit, *, filter_fn: Optional[LeaksFilterFunction] = None,
                      current_thread_only=False, n_frames: int) -> Optional[MemoryFailure]:
    limit = parse_memory_string(location_limit)
    records = _on_thread(reader.get_leaked_allocation_records(merge_threads=not current_thread_only),
                         reader, current_thread_only)
    if filter_fn is not None:
        # filter_fn sees each leaking stack whole; False leaves the location out.
        records = [r for r in records
                   if filter_fn(Stack(tuple(StackFrame(*f) for f in _frames(r, native=True))))]
    leaks = _by_size(r for r in records if r.size >= limit)
    if not leaks:
        return None
    summary = ("Test was allowed to leak %s per location but at least one location leaked more"
               % sizeof_fmt(limit))
    lines = ["List of leaked allocations:"] + _entries(leaks, native=True, n_frames=max(n_frames, MIN_LEAK_FRAMES))
    return MemoryFailure(summary, (LEAKS_SECTION, "\n".join(lines)))


def _short_repr(obj) -> str:
    try:
        text = repr(obj)
    except Exception as e:  # a broken __repr__ must not hide the leak
        text = "<repr failed: %s>" % type(e).__name__
    return text if len(text) <= REPR_CHARS else text[: REPR_CHARS - 3] + "..."


def check_leaked_objects(survivors, *, filter_fn: Optional[LeakedObjectsFilterFunction] = None
                         ) -> Optional[MemoryFailure]:
    """`survivors`: the objects created by the test and alive at its end."""
    leaked = [obj for obj in survivors if filter_fn is None or filter_fn(obj)]
    if not leaked:
        return None
    lines = ["List of leaked objects:", "    Object types that leaked (total: %d objects):" % len(leaked)]
    for name, count in collections.Counter(type(obj).__name__ for obj in leaked).most_common():
        lines.append("        - %d %s instance(s)" % (count, name))
    lines += ["", "    Sample of leaked objects:"]
    lines += ["        - %s: %s" % (type(obj).__name__, _short_repr(obj)) for obj in leaked[:SAMPLE_OBJECTS]]
    if len(leaked) > SAMPLE_OBJECTS:
        lines.append("        ... and %d more" % (len(leaked) - SAMPLE_OBJECTS))
    return MemoryFailure("Test leaked %d objects" % len(leaked), (LEAKED_OBJECTS_SECTION, "\n".join(lines)))
