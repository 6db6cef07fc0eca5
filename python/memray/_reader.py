"""Reading captures from Python: `FileReader` and the records it yields, as in Memray.

The package stays pure Python: a `FileReader` runs the `memray` binary's hidden
`export-records` subcommand, which reads the capture and writes what a query asks
for as JSON lines (frames and stack nodes once, then records that refer to them).
Queries are generators reading that output as it comes, so memory grows with the
records asked for and the distinct stacks, not with the capture.
"""

import collections
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ._allocators import AllocatorType
from ._api import FileFormat
from ._binary import find_binary

__all__ = ["AllocationRecord", "FileReader", "Interval", "MemorySnapshot", "Metadata", "TemporalAllocationRecord"]

MemorySnapshot = collections.namedtuple("MemorySnapshot", "time rss heap")

StackFrame = Tuple[str, str, int]

_DEALLOCATORS = (AllocatorType.FREE, AllocatorType.MUNMAP)


@dataclass
class Metadata:
    start_time: datetime
    end_time: datetime
    total_allocations: int
    total_frames: int
    peak_memory: int
    command_line: str
    pid: int
    main_thread_id: int
    python_allocator: str
    has_native_traces: bool
    trace_python_allocators: bool
    file_format: FileFormat

    @property
    def sampling_interval(self) -> int:
        """Not Memray's: bytes between recorded allocations on average in a sampled
        capture (its sizes and counts are estimates), 0 when every allocation was
        recorded. A property, not a field, so the fields stay Memray's: the interval
        travels in the header field Memray reads as total_frames (docs/format.md)."""
        return self.total_frames


def size_fmt(num, suffix="B"):
    """Memray's human-readable size (decimal units, three decimals)."""
    for unit in ["", "k", "M", "G", "T", "P", "E", "Z"]:
        if abs(num) < 1000.0:
            return f"{num:5.3f}{unit}{suffix}"
        num /= 1000.0
    return f"{num:.1f}Y{suffix}"


def _millis_to_dt(millis: int) -> datetime:
    return datetime.fromtimestamp(millis // 1000).replace(microsecond=millis % 1000 * 1000).astimezone()


def _binary() -> str:
    found = find_binary()
    if not found:
        raise OSError("the memray binary was not found (set MEMRAY_BIN or reinstall)")
    return found


def _is_eval_frame(function: str) -> bool:
    """Whether a native function is one of the interpreter's eval loops."""
    return "_PyEval_EvalFrameDefault" in function or function.startswith("_TAIL_CALL_")


class _Tables:
    """What one query's records refer to: Python frames and stack nodes, symbolized
    native frames and native stack nodes (per memory-map generation), thread names."""

    def __init__(self, main_tid: int, skipped_frames: int):
        self.main_tid = main_tid
        self.skipped_frames = skipped_frames
        self.frames: Dict[int, StackFrame] = {}
        self.entry: Dict[int, bool] = {}
        self.nodes: Dict[int, Tuple[int, int]] = {}
        self.native_frames: Dict[int, StackFrame] = {}
        self.native_nodes: Dict[Tuple[int, int], Tuple[int, List[int]]] = {}
        self.thread_names: Dict[int, str] = {}

    def _python(self, stack_id: int) -> List[Tuple[StackFrame, bool]]:
        out = []
        seen = 0
        while stack_id and stack_id in self.nodes and seen <= len(self.nodes):
            parent, frame = self.nodes[stack_id]
            out.append((self.frames.get(frame, ("", "", 0)), self.entry.get(frame, True)))
            stack_id = parent
            seen += 1
        return out

    def frames_of(self, stack_id: int) -> List[StackFrame]:
        return [frame for frame, _ in self._python(stack_id)]

    def native_of(self, node: int, generation: int, max_ips=None) -> List[StackFrame]:
        """Native frames, innermost first; `max_ips` limits the addresses walked."""
        out: List[StackFrame] = []
        walked = 0
        while node and (node, generation) in self.native_nodes:
            if max_ips is not None and walked >= max_ips:
                break
            parent, ids = self.native_nodes[(node, generation)]
            out.extend(self.native_frames[i] for i in ids)
            walked += 1
            node = parent if parent < node else 0
        return out

    def hybrid_of(self, tid: int, stack_id: int, node: int, generation: int) -> List[StackFrame]:
        """The native stack with each eval-loop frame replaced by the Python frames it
        ran (see reporter/src/native/hybrid.rs), innermost first."""
        python = self._python(stack_id)
        native = self.native_of(node, generation)
        skip = self.skipped_frames if tid == self.main_tid else 0
        out: List[StackFrame] = []
        n_py = len(python)
        nxt = 0  # outermost-first index of the next Python frame to place
        for frame in reversed(native):
            if nxt < n_py and _is_eval_frame(frame[0]):
                while True:
                    if skip and nxt == skip:
                        out.clear()
                    out.append(python[n_py - 1 - nxt][0])
                    nxt += 1
                    if nxt >= n_py or python[n_py - 1 - nxt][1]:
                        break
            else:
                out.append(frame)
        if nxt < n_py:
            return [frame for frame, _ in python]
        out.reverse()
        return out


class AllocationRecord:
    """An allocation (or a group of them, merged per location) from a capture."""

    __slots__ = ("_tuple", "_tables", "_cache")

    def __init__(self, record, tables: Optional[_Tables] = None):
        self._tuple = tuple(record)
        self._tables = tables
        self._cache: Dict[Any, list] = {}

    def __eq__(self, other):
        if isinstance(other, AllocationRecord):
            return self._tuple == other._tuple
        return NotImplemented

    def __hash__(self):
        return hash(self._tuple)

    @property
    def tid(self) -> int:
        return self._tuple[0]

    @property
    def address(self) -> int:
        return self._tuple[1]

    @property
    def size(self) -> int:
        return self._tuple[2]

    @property
    def allocator(self) -> int:
        return self._tuple[3]

    @property
    def stack_id(self) -> int:
        return self._tuple[4]

    @property
    def n_allocations(self) -> int:
        return self._tuple[5]

    @property
    def native_stack_id(self) -> int:
        return self._tuple[6]

    @property
    def native_segment_generation(self) -> int:
        return self._tuple[7]

    @property
    def thread_name(self) -> str:
        if self.tid == -1:
            return "merged thread"
        assert self._tables is not None, "Cannot get thread name without reader."
        return self._tables.thread_names.get(self.tid, "")

    def _check_not_deallocation(self):
        if self.allocator in _DEALLOCATORS:
            raise NotImplementedError("Stack traces for deallocations aren't captured.")

    def stack_trace(self, max_stacks=None) -> List[StackFrame]:
        """Python frames, innermost first, as (function, file, line). Without
        `max_stacks`, the frames above the one that started tracking are hidden."""
        key = ("python", max_stacks)
        if key not in self._cache:
            self._check_not_deallocation()
            assert self._tables is not None, "Cannot get stack trace without reader."
            frames = self._tables.frames_of(self.stack_id)
            if max_stacks is not None:
                frames = frames[:max_stacks]
            elif self.tid == self._tables.main_tid:
                del frames[max(len(frames) - self._tables.skipped_frames, 0):]
            self._cache[key] = frames
        return self._cache[key]

    def native_stack_trace(self, max_stacks=None) -> List[StackFrame]:
        """Native frames (captures made with native traces), innermost first, inlined
        calls included, as (function, file, line); `max_stacks` counts addresses."""
        key = ("native", max_stacks)
        if key not in self._cache:
            self._check_not_deallocation()
            assert self._tables is not None, "Cannot get stack trace without reader."
            self._cache[key] = self._tables.native_of(
                self.native_stack_id, self.native_segment_generation, max_stacks
            )
        return self._cache[key]

    def hybrid_stack_trace(self, max_stacks=None) -> List[StackFrame]:
        """Python and native frames merged in the order they ran: each interpreter
        eval-loop frame is replaced by the Python frames it was running. Without native
        frames to pair them with, the whole Python stack (nothing hidden)."""
        key = ("hybrid", max_stacks)
        if key not in self._cache:
            self._check_not_deallocation()
            assert self._tables is not None, "Cannot get stack trace without reader."
            frames = self._tables.hybrid_of(
                self.tid, self.stack_id, self.native_stack_id, self.native_segment_generation
            )
            self._cache[key] = frames if max_stacks is None else frames[:max_stacks]
        return self._cache[key]

    def __repr__(self):
        return (
            f"AllocationRecord<tid={hex(self.tid)}, address={hex(self.address)}, "
            f"size={'N/A' if not self.size else size_fmt(self.size)}, allocator={self.allocator!r}, "
            f"allocations={self.n_allocations}>"
        )


class TrackedObjectRecord(AllocationRecord):
    """A Python object's creation or destruction (captures made with
    `track_object_lifetimes=True`). Creations carry the stack that created the object."""

    __slots__ = ("is_created",)

    def __init__(self, item, tables: Optional[_Tables] = None):
        tid, address, is_created, stack, native_id, generation = item
        super().__init__((tid, address, 0, 0, stack, 1, native_id, generation), tables)
        self.is_created = bool(is_created)

    def __eq__(self, other):
        if isinstance(other, TrackedObjectRecord):
            return self._tuple == other._tuple and self.is_created == other.is_created
        return NotImplemented

    def __hash__(self):
        return hash((self._tuple, self.is_created))

    def _check_not_deallocation(self):
        if not self.is_created:
            raise NotImplementedError("Stack traces for deallocations aren't captured.")

    def __repr__(self):
        return (f"TrackedObjectRecord<tid={hex(self.tid)}, address={hex(self.address)}, "
                f"is_created={self.is_created}, stack_id={self.stack_id}>")


class Interval:
    """Blocks of a location live (or part of a high-water mark) from snapshot
    `allocated_before_snapshot` until `deallocated_before_snapshot` (None: the end)."""

    __slots__ = ("allocated_before_snapshot", "deallocated_before_snapshot", "n_allocations", "n_bytes")

    def __init__(self, allocated_before_snapshot, deallocated_before_snapshot, n_allocations, n_bytes):
        self.allocated_before_snapshot = allocated_before_snapshot
        self.deallocated_before_snapshot = deallocated_before_snapshot
        self.n_allocations = n_allocations
        self.n_bytes = n_bytes

    def _astuple(self):
        return (self.allocated_before_snapshot, self.deallocated_before_snapshot, self.n_allocations, self.n_bytes)

    def __eq__(self, other):
        if type(other) is not Interval:
            return NotImplemented
        return self._astuple() == other._astuple()

    __hash__ = None  # mutable, like Memray's

    def __repr__(self):
        return (
            f"Interval(allocated_before_snapshot={self.allocated_before_snapshot},"
            f" deallocated_before_snapshot={self.deallocated_before_snapshot},"
            f" n_allocations={self.n_allocations},"
            f" n_bytes={self.n_bytes})"
        )


class TemporalAllocationRecord:
    """A location's allocations over time: `intervals` of memory snapshots."""

    __slots__ = ("_record", "intervals")

    def __init__(self, key, tables: Optional[_Tables] = None, intervals=None):
        tid, allocator, stack_id, native_id, generation = key
        # Stack traces and thread names come from an AllocationRecord at the location.
        self._record = AllocationRecord((tid, 0, 0, allocator, stack_id, 0, native_id, generation), tables)
        self.intervals: List[Interval] = list(intervals or [])

    def _key(self):
        r = self._record
        return (r.tid, r.allocator, r.stack_id, r.native_stack_id, r.native_segment_generation)

    def __eq__(self, other):
        if type(other) is not TemporalAllocationRecord:
            return NotImplemented
        return self._key() == other._key() and self.intervals == other.intervals

    def __hash__(self):
        return hash(self._key())

    tid = property(lambda self: self._record.tid)
    allocator = property(lambda self: self._record.allocator)
    stack_id = property(lambda self: self._record.stack_id)
    native_stack_id = property(lambda self: self._record.native_stack_id)
    native_segment_generation = property(lambda self: self._record.native_segment_generation)

    @property
    def thread_name(self) -> str:
        # Merged threads are thread 0 here, which Memray leaves unnamed.
        assert self._record._tables is not None, "Cannot get thread name without reader."
        return self._record._tables.thread_names.get(self.tid, "")

    def stack_trace(self, max_stacks=None) -> List[StackFrame]:
        return self._record.stack_trace(max_stacks)

    def native_stack_trace(self, max_stacks=None) -> List[StackFrame]:
        return self._record.native_stack_trace(max_stacks)

    def hybrid_stack_trace(self, max_stacks=None) -> List[StackFrame]:
        return self._record.hybrid_stack_trace(max_stacks)


def _decode(item, tables: _Tables):
    """One line of `memray export-records` (or `memray socket-reader`): a record
    (AllocationRecord "A", TrackedObjectRecord "O", TemporalAllocationRecord "R"), None for
    what it adds to `tables` (frames, stacks, native frames, thread names), else the line."""
    tag = item[0]
    if tag == "A":
        return AllocationRecord(item[1:], tables)
    if tag == "O":
        return TrackedObjectRecord(item[1:], tables)
    if tag == "R":
        return TemporalAllocationRecord(item[1:6], tables, (Interval(*i) for i in item[6]))
    if tag == "N":
        tables.nodes[item[1]] = (item[2], item[3])
    elif tag == "F":
        tables.frames[item[1]] = (item[2], item[3], item[4])
        tables.entry[item[1]] = bool(item[5]) if len(item) > 5 else True
    elif tag == "f":
        tables.native_frames[item[1]] = (item[2], item[3], item[4])
    elif tag == "X":
        tables.native_nodes[(item[1], item[2])] = (item[3], item[4])
    elif tag == "T":
        tables.thread_names[item[1]] = item[2]
    else:
        return item
    return None


def _error_text(stderr: bytes) -> str:
    lines = [l.strip() for l in stderr.decode(errors="replace").splitlines() if l.strip()]
    text = lines[0] if lines else "the memray binary failed"
    for prefix in ("memray: error: ", "error: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


class FileReader:
    """Reads a capture file written by `memray run` or `memray.Tracker` (this project's
    or Memray 1.20's).

    The constructor reads the file once for its metadata, its peak and its memory
    snapshots; each query reads it again.
    """

    def __init__(self, file_name, *, report_progress: bool = False, max_memory_records: int = 10000):
        path = os.fspath(file_name)
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise OSError(f"Could not open file {path}: {exc.strerror}") from None
        self._name = path
        self._report_progress = report_progress
        # Queries read the file this object opened, even if it is later renamed.
        self._path = f"/proc/self/fd/{self._file.fileno()}" if sys.platform.startswith("linux") else path
        try:
            lines = self._export("metadata", "--max-memory-records", str(int(max_memory_records)))
            first = next(lines, None)
            if not isinstance(first, dict) or "metadata" not in first:
                raise OSError(f"{path}: the memray binary gave no metadata")
            self._snapshots = [MemorySnapshot(t, rss, heap) for _tag, t, rss, heap in lines]
        except BaseException:
            self.close()
            raise
        md = first["metadata"]
        self._peak_index = md["peak_index"]
        self._snapshot_stride = md.get("snapshot_stride", 0)
        self._skipped_frames = md["skipped_frames_on_main_tid"]
        self._metadata = Metadata(
            start_time=_millis_to_dt(md["start_time"]),
            end_time=_millis_to_dt(md["end_time"]),
            total_allocations=md["total_allocations"],
            total_frames=md["total_frames"],
            peak_memory=md["peak_memory"],
            command_line=md["command_line"],
            pid=md["pid"],
            main_thread_id=md["main_thread_id"],
            python_allocator=md["python_allocator"],
            has_native_traces=md["has_native_traces"],
            trace_python_allocators=md["trace_python_allocators"],
            file_format=FileFormat.AGGREGATED_ALLOCATIONS if md["file_format"] == 1 else FileFormat.ALL_ALLOCATIONS,
        )

    # -- plumbing

    def _export(self, query: str, *args: str) -> Iterator[Any]:
        """Runs `memray export-records` and yields its lines, decoded."""
        cmd = [_binary(), "export-records", self._path, query, *args]
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(self._file.fileno(),) if self._file is not None else (),
            )
        except OSError as exc:
            raise OSError(f"could not run {cmd[0]}: {exc.strerror}") from None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                yield json.loads(line)
            stderr = proc.stderr.read() if proc.stderr is not None else b""
            if proc.wait() != 0:
                raise OSError(_error_text(stderr).replace(self._path, self._name))
            for line in stderr.decode(errors="replace").splitlines():
                # e.g. object files named in the memory maps that could not be read
                if line.startswith("memray: warning: "):
                    warnings.warn(line[len("memray: warning: "):], RuntimeWarning, stacklevel=3)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def _records(self, query: str, *args: str) -> Iterator[Any]:
        """The query's records: AllocationRecord ("A" lines), TemporalAllocationRecord
        ("R"), and any other line not about frames, stacks or threads, as it is."""
        tables = _Tables(self._metadata.main_thread_id, self._skipped_frames)
        for item in self._export(query, *args):
            record = _decode(item, tables)
            if record is not None:
                yield record

    def _ensure_not_closed(self):
        if self._file is None:
            raise ValueError("Operation on a closed FileReader")

    def _is_aggregated(self) -> bool:
        return self._metadata.file_format == FileFormat.AGGREGATED_ALLOCATIONS

    @staticmethod
    def _threads(merge_threads) -> Tuple[str, ...]:
        return () if merge_threads else ("--split-threads",)

    # -- public API

    @property
    def metadata(self) -> Metadata:
        return self._metadata

    @property
    def closed(self) -> bool:
        return self._file is None

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            f, self._file = self._file, None
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_traceback):
        self.close()

    def __del__(self):
        self.close()

    def get_allocation_records(self) -> Iterator[AllocationRecord]:
        """Every allocation and deallocation record, in capture order."""
        self._ensure_not_closed()
        if self._is_aggregated():
            raise NotImplementedError("Can't get all allocations from a pre-aggregated capture file.")
        yield from self._records("all")

    def get_high_watermark_allocation_records(self, merge_threads=True) -> Iterator[AllocationRecord]:
        """What was live when the heap peaked, merged per location."""
        self._ensure_not_closed()
        yield from self._records("hwm", "--peak-index", str(self._peak_index), *self._threads(merge_threads))

    def get_leaked_allocation_records(self, merge_threads=True) -> Iterator[AllocationRecord]:
        """What was live at the end of tracking, merged per location."""
        self._ensure_not_closed()
        yield from self._records("leaks", *self._threads(merge_threads))

    def get_temporary_allocation_records(self, merge_threads=True, threshold=1) -> Iterator[AllocationRecord]:
        """Allocations freed before `threshold` other allocations happened on their
        thread, merged per location."""
        self._ensure_not_closed()
        if self._is_aggregated():
            raise NotImplementedError("Can't find temporary allocations using a pre-aggregated capture file.")
        threshold = int(threshold)
        if threshold == -1:
            # Memray's buffer of threshold + 1 allocations is then empty, which makes
            # it fall back to the plain snapshot of what is left at the end.
            yield from self._records("leaks", *self._threads(merge_threads))
            return
        if threshold < 0:
            raise OverflowError("can't convert negative value to size_t")
        yield from self._records("temporary", "--threshold", str(threshold), *self._threads(merge_threads))

    def _temporal_args(self, merge_threads) -> Tuple[str, ...]:
        return ("--snapshot-stride", str(self._snapshot_stride), *self._threads(merge_threads))

    def get_temporal_allocation_records(self, merge_threads=True) -> Iterator[TemporalAllocationRecord]:
        """Per location, when its blocks were allocated and freed, in memory snapshots
        (see `get_memory_snapshots`). Threads merged: thread 0."""
        self._ensure_not_closed()
        if self._is_aggregated():
            raise NotImplementedError("Can't get allocation history using a pre-aggregated capture file.")
        yield from self._records("temporal", *self._temporal_args(merge_threads))

    def get_temporal_high_water_mark_allocation_records(
        self, merge_threads=True
    ) -> Tuple[Iterator[TemporalAllocationRecord], List[int]]:
        """(records, the high-water mark of each snapshot's window): each record's
        intervals say what it contributed to the high-water marks of which snapshots,
        and last to what was left at the end."""
        self._ensure_not_closed()
        if self._is_aggregated():
            raise NotImplementedError("Can't get allocation history using a pre-aggregated capture file.")
        records = self._records("temporal-hwm", *self._temporal_args(merge_threads))
        first = next(records, None)
        if not (isinstance(first, list) and first[:1] == ["H"]):
            records.close()
            raise OSError(f"{self._name}: the memray binary gave no high-water marks")
        return records, first[1]

    def get_object_lifetime_events(self, included_objects=None) -> Iterator[TrackedObjectRecord]:
        """Every object creation and destruction recorded (captures made with
        `track_object_lifetimes=True`), in order; with `included_objects`, only the events of
        those objects (matched by address, so only meaningful in the process that made the
        capture, while they are alive)."""
        self._ensure_not_closed()
        wanted = None if included_objects is None else {id(o) for o in included_objects}
        for record in self._records("objects"):
            if wanted is None or record.address in wanted:
                yield record

    def get_memory_snapshots(self) -> Iterator[MemorySnapshot]:
        """(time in ms since the epoch, RSS, heap) samples taken while tracking."""
        yield from self._snapshots


class SocketReader:
    """Reads the stream of a process tracked with a `SocketDestination`, live.

    >>> with SocketReader(port=12345) as reader:
    ...     records = list(reader.get_current_snapshot(merge_threads=True))

    Entering connects to the tracked process (waiting for it to listen); from then on the
    stream is followed in the background, and `get_current_snapshot` gives the allocations
    live at that moment, merged per location.
    """

    def __init__(self, port: int):
        self._port = int(port)
        self._proc = None
        self._tables = None
        self._header = None
        self._active = False

    def __enter__(self):
        if self._proc is not None:
            raise ValueError("Can not enter the same SocketReader twice")
        proc = subprocess.Popen([_binary(), "socket-reader", str(self._port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = proc.stdout.readline() if proc.stdout is not None else b""
        if not line:
            stderr = proc.stderr.read() if proc.stderr is not None else b""
            proc.wait()
            raise OSError(_error_text(stderr))
        self._proc = proc
        self._header = json.loads(line)["header"]
        self._tables = _Tables(self._header["main_thread_id"], self._header["skipped_frames_on_main_tid"])
        self._active = True
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        proc, self._proc = self._proc, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            proc.kill()
            proc.wait()
        self._active = False

    def _ask(self, request: str):
        if self._proc is None:
            raise ValueError("Operation on a SocketReader that is not entered")
        try:
            self._proc.stdin.write(request.encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise OSError("the memray socket reader ended") from None
        while True:
            line = self._proc.stdout.readline()
            if not line:
                raise OSError("the memray socket reader ended")
            yield json.loads(line)

    @property
    def command_line(self) -> Optional[str]:
        return self._header["command_line"] if self._header else None

    @property
    def pid(self) -> Optional[int]:
        return self._header["pid"] if self._header else None

    @property
    def has_native_traces(self) -> bool:
        return bool(self._header and self._header["has_native_traces"])

    @property
    def is_active(self) -> bool:
        """Whether the tracked process is still streaming."""
        if self._proc is None:
            return False
        for item in self._ask("status"):
            if item[0] == "STATUS":
                self._active = bool(item[1])
                return self._active
        return self._active

    def get_current_snapshot(self, *, merge_threads: bool) -> Iterator[AllocationRecord]:
        """The allocations live now (as of the last record received), merged per location."""
        records = []
        for item in self._ask("snapshot" if merge_threads else "snapshot split"):
            if item[0] == "END":
                self._active = bool(item[1])
                return iter(records)
            record = _decode(item, self._tables)
            if isinstance(record, AllocationRecord):
                records.append(record)
