"""Memory profiler for Python: a Memray-compatible Tracker API backed by a Rust payload."""

from ._api import (
    Destination,
    FileDestination,
    FileFormat,
    SocketDestination,
    Tracker,
)
from ._allocators import AllocatorType

__version__ = "0.1.0"

__all__ = [
    "AllocatorType",
    "Destination",
    "FileDestination",
    "FileFormat",
    "SocketDestination",
    "Tracker",
    "__version__",
]
