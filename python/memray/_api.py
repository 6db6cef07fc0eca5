"""The public tracking API, as Memray documents it."""

import enum
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Optional, Union

from . import _tracking


class FileFormat(enum.IntEnum):
    ALL_ALLOCATIONS = 0
    AGGREGATED_ALLOCATIONS = 1


class Destination:
    """Base class of where a Tracker writes."""


@dataclass(frozen=True)
class FileDestination(Destination):
    path: Union[str, "os.PathLike[str]"]
    overwrite: bool = False
    compress_on_exit: bool = True
    buffered: bool = False


@dataclass(frozen=True)
class SocketDestination(Destination):
    server_port: int
    address: str = "127.0.0.1"


_active_tracker: Optional["Tracker"] = None


class Tracker:
    """Context manager that records every allocation made while it is active.

    >>> with Tracker("output.bin"):
    ...     do_something()

    With ``sampling_interval=N`` (bytes; this project's extension) only a sample is
    recorded, about one allocation per N bytes allocated, and readers show estimates
    (docs/sampling.md); 0, the default, records every allocation.
    """

    def __init__(self, file_name=None, *, destination=None, native_traces=False, memory_interval_ms=10,
                 follow_fork=False, trace_python_allocators=False, track_object_lifetimes=False,
                 file_format=FileFormat.ALL_ALLOCATIONS, sampling_interval=0):
        if (file_name is None) == (destination is None):
            raise TypeError("Exactly one of 'file_name' or 'destination' argument must be specified")
        if file_name is not None:
            destination = FileDestination(path=file_name)
        if not isinstance(destination, (FileDestination, SocketDestination)):
            raise TypeError("destination must be a FileDestination or a SocketDestination, not %r"
                            % type(destination).__name__)
        file_format = FileFormat(file_format)
        if isinstance(destination, SocketDestination):
            if follow_fork:
                raise RuntimeError("follow_fork requires an output file")
            if file_format == FileFormat.AGGREGATED_ALLOCATIONS:
                raise RuntimeError("AGGREGATED_ALLOCATIONS requires an output file")
        if memory_interval_ms < 1:
            raise ValueError("memory_interval_ms must be at least 1")
        if isinstance(sampling_interval, bool) or not isinstance(sampling_interval, int) or sampling_interval < 0:
            raise ValueError("sampling_interval must be a number of bytes (0 records every allocation), not %r"
                             % (sampling_interval,))
        if track_object_lifetimes and sys.version_info < (3, 13, 3):
            raise RuntimeError("track_object_lifetimes requires Python 3.13.3 or later (this is %s)"
                               % ".".join(map(str, sys.version_info[:3])))
        self.destination = destination
        self.native_traces = bool(native_traces)
        self.memory_interval_ms = int(memory_interval_ms)
        self.follow_fork = bool(follow_fork)
        self.trace_python_allocators = bool(trace_python_allocators)
        self.track_object_lifetimes = bool(track_object_lifetimes)
        self.file_format = file_format
        self.sampling_interval = sampling_interval
        self._session = None
        self._used = False
        self._surviving_objects = None

    def __enter__(self):
        global _active_tracker
        if self._used:
            raise RuntimeError("This Tracker has already been used: a Tracker cannot be entered twice; "
                               "create a new one")
        if _active_tracker is not None or _tracking.is_active():
            raise RuntimeError("No more than one Tracker instance can be active at the same time")
        dest = self.destination
        # As in Memray, stacks on this thread start at the frame that entered the Tracker:
        # readers hide the frames outside it (the header's skipped_frames_on_main_tid).
        options = dict(self._options(), skipped_frames=_frames_outside(sys._getframe(1)))
        if isinstance(dest, FileDestination):
            path = os.fspath(dest.path)
            fd = _tracking.open_file_destination(path, dest.overwrite)
            session = _tracking.Session(fd, path, True, dest.compress_on_exit, buffered=dest.buffered, **options)
        else:
            fd = _tracking.open_socket_destination(dest.server_port, dest.address)
            session = _tracking.Session(fd, None, False, False, **options)
        self._used = True
        try:
            session.start()
        except BaseException:
            os.close(fd)
            raise
        self._session = session
        _active_tracker = self
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        # Named parameters, not *exc: that tuple would outlive the end of tracking and be
        # counted among the survivors of track_object_lifetimes.
        global _active_tracker
        session, self._session = self._session, None
        if _active_tracker is self:
            _active_tracker = None
        if session is not None:
            stopped = session.stop()
            if stopped and self.track_object_lifetimes:
                self._surviving_objects = session.take_surviving_objects()
        return False

    def get_surviving_objects(self):
        """The objects created while tracking that were still alive when it ended
        (track_object_lifetimes=True; after the `with` block)."""
        if not self.track_object_lifetimes:
            raise RuntimeError("track_object_lifetimes=True was not provided at Tracker construction")
        if self._surviving_objects is None:
            raise RuntimeError("Tracking was never started or has not finished yet or failed.")
        return tuple(self._surviving_objects)

    def _options(self):
        return dict(
            native_traces=self.native_traces,
            trace_python_allocators=self.trace_python_allocators,
            track_object_lifetimes=self.track_object_lifetimes,
            follow_fork=self.follow_fork,
            memory_interval_ms=self.memory_interval_ms,
            aggregated=self.file_format == FileFormat.AGGREGATED_ALLOCATIONS,
            sampling_interval=self.sampling_interval,
        )


def _frames_outside(frame):
    """How many frames call `frame`, up to the outermost."""
    n = 0
    frame = frame.f_back
    while frame is not None:
        n += 1
        frame = frame.f_back
    return n


def set_log_level(level: int) -> None:
    """Configure which of memray's own messages are printed to stderr.

    By default only those of severity `logging.WARNING` or higher are; messages below
    `level` are dropped. Applies to the payload's messages (a capture that cannot be
    written, a live viewer that went away) and to the Python package's.
    """
    _tracking.set_log_level(level)


def dump_all_records(file_name) -> None:
    """Print every record of a capture file to stdout, as `memray parse` does."""
    from ._binary import find_binary

    path = os.fspath(file_name)
    if not os.path.exists(path):
        raise OSError("No such file: %s" % path)
    binary = find_binary()
    if binary is None:
        raise RuntimeError("the memray binary was not found (set MEMRAY_BIN or reinstall)")
    sys.stdout.flush()
    res = subprocess.run([binary, "parse", path], stderr=subprocess.PIPE)
    if res.returncode != 0:
        raise OSError(res.stderr.decode("utf-8", "replace").strip() or "memray parse failed on %s" % path)


def start_thread_trace(frame, event, arg):
    """A profile function for `threading.setprofile`: names the new thread in the capture
    while tracking (Memray installs its own tracing with it; stacks here are read from
    the frames, so naming is all that is left to do), then removes itself."""
    sys.setprofile(None)
    try:
        lib = _tracking._load()
        if lib.memray_tracker_is_active():
            _tracking.name_thread(lib, threading.current_thread())
    except Exception:
        pass
    return None
