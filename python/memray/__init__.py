"""Memory profiler for Python: a Memray-compatible Tracker API backed by a Rust payload."""

from ._api import (
    Destination,
    FileDestination,
    FileFormat,
    SocketDestination,
    Tracker,
    dump_all_records,
    set_log_level,
    start_thread_trace,
)
from ._allocators import AllocatorType
from ._ipython import load_ipython_extension
# Interval and TemporalAllocationRecord are importable but, as in Memray, not in __all__.
from ._reader import (
    AllocationRecord,
    FileReader,
    Interval,
    MemorySnapshot,
    Metadata,
    SocketReader,
    TemporalAllocationRecord,
)

__version__ = "0.1.0"

__all__ = [
    "AllocationRecord",
    "AllocatorType",
    "Destination",
    "FileDestination",
    "FileFormat",
    "FileReader",
    "MemorySnapshot",
    "Metadata",
    "SocketDestination",
    "SocketReader",
    "Tracker",
    "__version__",
    "dump_all_records",
    "load_ipython_extension",
    "set_log_level",
    "start_thread_trace",
]
