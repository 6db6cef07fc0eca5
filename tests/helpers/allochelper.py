"""ctypes bindings for alloc_helper.c, imported by the scripts the tests run.

Call the returned functions directly on a known line: a ctypes call adds no
Python frame, so the allocation's innermost Python frame is the caller's line.
The library path comes from the environment variable ALLOC_HELPER_LIB (set by
the test fixtures) unless given explicitly.
"""
import ctypes
import os

CALLBACK = ctypes.CFUNCTYPE(None)

_VP = ctypes.c_void_p
_SZ = ctypes.c_size_t

_PROTOTYPES = {
    "helper_malloc": (_VP, [_SZ]),
    "helper_calloc": (_VP, [_SZ, _SZ]),
    "helper_realloc": (_VP, [_VP, _SZ]),
    "helper_free": (None, [_VP]),
    "helper_posix_memalign": (_VP, [_SZ, _SZ]),
    "helper_aligned_alloc": (_VP, [_SZ, _SZ]),
    "helper_memalign": (_VP, [_SZ, _SZ]),
    "helper_valloc": (_VP, [_SZ]),
    "helper_pvalloc": (_VP, [_SZ]),
    "helper_mmap": (_VP, [_SZ]),
    "helper_mmap64": (_VP, [_SZ]),
    "helper_munmap": (ctypes.c_int, [_VP, _SZ]),
    "helper_malloc_in_pthread": (_VP, [_SZ]),
    "helper_malloc_in_named_pthread": (_VP, [_SZ, ctypes.c_char_p]),
    "helper_call_in_pthread": (ctypes.c_int, [CALLBACK]),
}


def load(path=None):
    lib = ctypes.CDLL(path or os.environ["ALLOC_HELPER_LIB"])
    for name, (restype, argtypes) in _PROTOTYPES.items():
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes
    return lib
