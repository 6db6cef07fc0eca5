"""Talks to the payload library: builds a tracker's configuration and starts/stops it.

This file uses only the standard library and is self-contained on purpose: the `memray`
binary embeds its text to bootstrap `memray run` in an interpreter that does not have
this package installed, and `memray.Tracker` imports it as a module.
"""

import ctypes
import os
import site
import sys
import sysconfig
import threading

_PAYLOAD_NAME = "libmemray_payload.so"
_lib = None

# The capture header's codes for the interpreter's allocator (Memray's numbering).
_ALLOCATOR_CODES = {
    "pymalloc": 1,
    "pymalloc_debug": 2,
    "malloc": 3,
    "mimalloc": 5,
    "mimalloc_debug": 6,
}


def payload_path():
    env = os.environ.get("MEMRAY_PAYLOAD")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "_payload", _PAYLOAD_NAME)


# True where the payload is known to be mapped already (inside `memray attach`'s
# bootstrap, whose copy of the library file is gone once loaded): dlopen finds it by name.
_payload_mapped = False


def _load():
    global _lib
    if _lib is None:
        path = payload_path()
        if not _payload_mapped and not os.path.exists(path):
            raise ImportError(
                "memray's payload library is missing at %s (build it with `cargo build --release` "
                "or set MEMRAY_PAYLOAD)" % path
            )
        # PyDLL keeps the GIL held during calls: start/stop touch the PyMem allocators.
        lib = ctypes.PyDLL(path)
        lib.memray_tracker_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.memray_tracker_start.restype = ctypes.c_int
        lib.memray_tracker_stop.argtypes = []
        lib.memray_tracker_stop.restype = ctypes.c_int
        lib.memray_tracker_is_active.argtypes = []
        lib.memray_tracker_is_active.restype = ctypes.c_int
        lib.memray_set_thread_name.argtypes = [ctypes.c_uint64, ctypes.c_char_p]
        lib.memray_set_thread_name.restype = None
        lib.memray_surviving_objects.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.memray_surviving_objects.restype = ctypes.c_size_t
        lib.memray_release_surviving_objects.argtypes = []
        lib.memray_release_surviving_objects.restype = None
        lib.memray_greenlet_switch.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int]
        lib.memray_greenlet_switch.restype = None
        lib.memray_frame_exit_callback.argtypes = []
        lib.memray_frame_exit_callback.restype = ctypes.py_object
        lib.memray_watch_frame_exits.argtypes = [ctypes.c_int]
        lib.memray_watch_frame_exits.restype = None
        lib.memray_profile_deep_threads.argtypes = [ctypes.c_int]
        lib.memray_profile_deep_threads.restype = ctypes.c_int
        _lib = lib
        _apply_log_level(lib)
    return _lib


# memray.set_log_level: the lowest `logging` severity memray's own messages on stderr may
# have to be printed (WARNING by default, as in Memray).
LOG_LEVEL = 30


def set_log_level(level):
    global LOG_LEVEL
    LOG_LEVEL = int(level)
    if _lib is not None:
        _apply_log_level(_lib)


def _apply_log_level(lib):
    try:
        setter = lib.memray_set_log_level
    except AttributeError:  # a payload from an older build, mapped already
        return
    setter.argtypes = [ctypes.c_int]
    setter.restype = None
    setter(LOG_LEVEL)


def _warn(message):
    if LOG_LEVEL <= 30:
        sys.stderr.write("memray: %s\n" % message)
        sys.stderr.flush()


def _python_allocator():
    try:
        fn = ctypes.pythonapi._PyMem_GetCurrentAllocatorName
        fn.restype = ctypes.c_char_p
        fn.argtypes = []
        name = fn()
        if name:
            return _ALLOCATOR_CODES.get(name.decode(), 4)
    except (AttributeError, OSError):
        pass
    env = os.environ.get("PYTHONMALLOC", "")
    return _ALLOCATOR_CODES.get(env, 1 if not env else 4)


def _site_packages():
    paths = []
    try:
        paths.extend(site.getsitepackages())
    except AttributeError:  # virtualenv's old site module
        pass
    try:
        paths.append(site.getusersitepackages())
    except AttributeError:
        pass
    return paths


def _encode(pairs):
    out = []
    for key, value in pairs:
        text = str(value)
        if "\x1e" in text or "\x1f" in text:
            text = text.replace("\x1e", " ").replace("\x1f", " ")
        out.append("%s\x1f%s" % (key, text))
    return ("\x1e".join(out)).encode("utf-8", "surrogateescape")


def open_file_destination(path, overwrite):
    """Opens the capture file; an existing one is an error unless overwrite is true.

    A capture file is always a new one, created exclusively and never through a link
    (O_EXCL|O_NOFOLLOW). With overwrite, a regular file or a link that has the name is
    removed first (a planted link goes, what it points to is never touched); a device
    or a pipe (/dev/null, /dev/full, a FIFO) is opened as it is."""
    import stat

    nofollow = getattr(os, "O_NOFOLLOW", 0)
    cloexec = getattr(os, "O_CLOEXEC", 0)
    # Read and write: the payload writes a file through shared mappings of it, whose
    # pages outlive the process if it dies.
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | cloexec | nofollow
    for _ in range(3):
        if overwrite:
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
                return os.open(path, os.O_WRONLY | cloexec | nofollow)
            if mode is not None and not stat.S_ISDIR(mode):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        try:
            return os.open(path, flags, 0o644)
        except FileExistsError:
            if not overwrite:
                break
    raise FileExistsError(
        17, "Output file %s already exists (use overwrite=True or --force to replace it)" % path, path
    ) from None


# What `memray live` sends first. A connection that sends anything else is not a viewer
# and is turned away; one that sends nothing within VIEWER_GREETING_WAIT seconds is taken
# as a plain reader of the stream (Memray's own `memray live` sends nothing).
VIEWER_GREETING = b"memray-live-viewer 1\n"
VIEWER_GREETING_WAIT = 1.0


def _check_viewer(conn):
    """None if `conn` may receive the stream, else why it was turned away."""
    conn.settimeout(VIEWER_GREETING_WAIT)
    got = b""
    try:
        while len(got) < len(VIEWER_GREETING):
            chunk = conn.recv(len(VIEWER_GREETING) - len(got))
            if not chunk:
                return "it closed the connection" if not got else "it sent %r" % got
            got += chunk
            if not VIEWER_GREETING.startswith(got):
                return "it sent %r, not a memray viewer's greeting" % got[:32]
    except OSError:  # timeout (a silent reader) or a reset
        if got:
            return "it sent %r and stopped" % got
    return None


def open_socket_destination(port, address="127.0.0.1", timeout=None, announce=None):
    """The tracked process is the server: wait for one viewer to connect and return its
    descriptor (blocking). `announce(port)` is called once listening (port 0 picks a
    free one); `timeout` bounds the wait in seconds."""
    import socket
    import time

    port = int(port)
    if not 0 <= port <= 65535:
        raise ValueError("port %d is out of range (0-65535)" % port)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((address, port))
        except OSError as e:
            raise OSError(e.errno, "cannot listen on %s:%d for a live viewer: %s"
                          % (address, port, e.strerror or e)) from None
        server.listen(1)
        port = server.getsockname()[1]
        if announce is not None:
            announce(address, port)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no live viewer connected to %s:%d within %g s" % (address, port, timeout))
                server.settimeout(left)
            try:
                conn, peer = server.accept()
            except socket.timeout:
                continue
            refused = _check_viewer(conn)
            if refused is None:
                break
            conn.close()
            _warn("turned away a connection to %s:%d from %s: %s; still waiting for a memray viewer"
                  % (address, port, peer[0], refused))
    finally:
        server.close()
    conn.setblocking(True)
    return conn.detach()


def _announce_live(address, port):
    where = str(port) if address == "127.0.0.1" else "--address %s %d" % (address, port)
    sys.stderr.write("memray: waiting for a live viewer on %s:%d. Run `memray live %s` in another shell "
                     "to see the results.\n" % (address, port, where))
    sys.stderr.flush()


class Session:
    """One tracker run inside this process."""

    def __init__(self, fd, path, seekable, compress, native_traces=False, trace_python_allocators=False,
                 follow_fork=False, memory_interval_ms=10, aggregated=False, skipped_frames=0, dir_fd=None,
                 buffered=False, track_object_lifetimes=False, sampling_interval=0):
        self.fd = fd
        self.path = path
        # With dir_fd (a directory descriptor `memray attach` handed over), `path` is a
        # name in that directory, which this process may not be able to reach by path.
        self.dir_fd = dir_fd
        self.seekable = seekable
        self.compress = compress
        # Plain write(2) from a buffer instead of shared mappings of the file (Memray's
        # --buffered-file-io): records still in the buffer are lost if the process dies.
        self.buffered = buffered
        self.native_traces = native_traces
        self.trace_python_allocators = trace_python_allocators
        self.track_object_lifetimes = track_object_lifetimes
        self.follow_fork = follow_fork
        self.memory_interval_ms = memory_interval_ms
        # Mean bytes between recorded allocations (0: record every one).
        self.sampling_interval = int(sampling_interval or 0)
        self.aggregated = aggregated
        # Frames of the starting thread that belong to memray itself (the `run` bootstrap);
        # readers hide them.
        self.skipped_frames = skipped_frames
        self._saved_profile = None
        self._saved_name_property = None
        self._greenlets = None
        self._frame_exits = None
        self._start_args = None

    def _config(self):
        pairs = [
            ("fd", self.fd),
            ("seekable", int(self.seekable)),
            ("compress", int(self.compress)),
            ("buffered_file_io", int(self.buffered)),
            ("native_traces", int(self.native_traces)),
            ("trace_python_allocators", int(self.trace_python_allocators)),
            ("track_object_lifetimes", int(self.track_object_lifetimes)),
            ("follow_fork", int(self.follow_fork)),
            ("memory_interval_ms", int(self.memory_interval_ms)),
            ("file_format", 1 if self.aggregated else 0),
            ("python_version", sys.hexversion),
            ("command_line", " ".join(sys.argv)),
            ("pid", os.getpid()),
            ("python_allocator", _python_allocator()),
            ("libdest", sysconfig.get_path("stdlib") or ""),
            ("skipped_frames_on_main_tid", self.skipped_frames),
            ("sampling_interval", self.sampling_interval),
        ]
        if os.environ.get("MEMRAY_CHECK_STACKS"):
            # Tests: every stack the payload writes is compared with a full walk.
            pairs.append(("check_stacks", 1))
        seed = os.environ.get("MEMRAY_SAMPLING_SEED")
        if seed and self.sampling_interval:
            # Reproducible sampling (tests): the sampler's random streams start from it.
            pairs.append(("sampling_seed", int(seed)))
        if self.dir_fd is not None:
            pairs.append(("dir_fd", self.dir_fd))
            pairs.append(("path", self.path))
        elif self.path:
            pairs.append(("path", os.path.abspath(self.path)))
        pairs.extend(("site_packages", p) for p in _site_packages())
        pairs.extend(("sys_path", p) for p in sys.path)
        return _encode(pairs)

    def start(self):
        lib = _load()
        # Both stay referenced until stop(): freed once tracking has started, they would be
        # the capture's first records (a FREE in an empty `with Tracker(...): pass`).
        self._start_args = (self._config(), ctypes.create_string_buffer(512))
        config, err = self._start_args
        # Patched before tracking starts: the patches are objects of ours, which object
        # lifetime tracking would otherwise count as the program's survivors.
        self._name_threads(lib)
        self._greenlets = GreenletFollower(lib)
        if self.trace_python_allocators:
            # Worth its cost per return only where nearly every line allocates.
            self._frame_exits = FrameExits(lib)
        rc = lib.memray_tracker_start(config, err, len(err))
        if rc != 0:
            self._unpatch_threading()
            message = err.value.decode("utf-8", "replace")
            if rc == 1:
                raise RuntimeError("No more than one Tracker instance can be active at the same time")
            raise RuntimeError("Cannot start tracking: %s" % message)

    def stop(self):
        lib = _load()
        stopped = lib.memray_tracker_stop() == 0
        self._unpatch_threading()
        self._start_args = None
        return stopped

    def take_surviving_objects(self):
        """The objects created while tracking that were alive when it stopped (the payload
        holds them until they are taken)."""
        lib = _load()
        n = lib.memray_surviving_objects(None, 0)
        addresses = (ctypes.c_size_t * n)()
        n = min(n, lib.memray_surviving_objects(addresses, n))
        try:
            return [ctypes.cast(address, ctypes.py_object).value for address in addresses[:n]]
        finally:
            lib.memray_release_surviving_objects()

    # Thread names come from Python's threading module, as in Memray: a thread that starts
    # while tracking names itself before run() (threading's profile hook runs on the new
    # thread first thing, once, then hands the slot back to whatever profiler was set), and
    # a rename (`thread.name = ...`, `setName`) is recorded when it happens. Threads that
    # were running already stay unnamed, as Memray leaves them, unless `memray attach`
    # names them (`name_existing_threads`): every thread of an attached process is one.
    def _name_threads(self, lib):
        previous = getattr(threading, "_profile_hook", None)
        self._saved_profile = (True, previous)

        def name_this_thread(frame, event, arg):
            sys.setprofile(previous)
            try:
                name_thread(lib, threading.current_thread())
            except Exception:
                pass
            if previous is not None:
                return previous(frame, event, arg)
            return None

        threading.setprofile(name_this_thread)

        # (Inside `memray attach` in a program that never imported threading, `threading`
        # is a stand-in without Thread: nothing can be renamed there.)
        thread_class = getattr(threading, "Thread", None)
        prop = thread_class.__dict__.get("name") if thread_class is not None else None
        if isinstance(prop, property) and prop.fset is not None:
            def set_name(thread, name, _set=prop.fset):
                _set(thread, name)
                try:
                    name_thread(lib, thread)
                except Exception:
                    pass

            renaming = property(prop.fget, set_name, prop.fdel, prop.__doc__)
            thread_class.name = renaming
            self._saved_name_property = (thread_class, prop, renaming)

    def name_existing_threads(self):
        lib = _load()
        for thread in threading.enumerate():
            name_thread(lib, thread)

    def _unpatch_threading(self):
        if self._frame_exits is not None:
            self._frame_exits.stop()
            self._frame_exits = None
        if self._greenlets is not None:
            self._greenlets.stop()
            self._greenlets = None
        if self._saved_profile is not None:
            threading.setprofile(self._saved_profile[1])
            self._saved_profile = None
        if self._saved_name_property is not None:
            thread_class, original, ours = self._saved_name_property
            # Only if nobody replaced it after us.
            if thread_class.__dict__.get("name") is ours:
                thread_class.name = original
            self._saved_name_property = None


class FrameExits:
    """Has the interpreter report every frame exit (return, yield, unwind) to the payload,
    so that a deep stack is read only down to a frame known not to have exited since the
    last read (payload/src/stack.rs): sys.monitoring on CPython 3.12+; on 3.9-3.11 a C
    profile function, which the payload gives only to threads whose stacks are deep
    (payload/src/python/profile_hook.rs). Without it (3.8, no free tool id) every
    allocation reads the whole stack: slower on deep stacks, the same records.

    Used with `trace_python_allocators` only: each return then costs a call (about 80 ns
    on 3.12), which pays off when nearly every line allocates, and not when only mallocs
    are recorded (docs/performance.md)."""

    # sys.monitoring tool ids 0-5 are for tools; 0-2 and 5 have well-known owners
    # (debugger, coverage, profiler, optimizer), so the unnamed ones are tried.
    TOOL_IDS = (4, 3)

    def __init__(self, lib):
        self._lib = lib
        self._tool = None
        self._profiling = False
        monitoring = getattr(sys, "monitoring", None)
        if monitoring is None:
            # 3.9-3.11: a profile function, given only to threads whose stacks are deep.
            self._profiling = lib.memray_profile_deep_threads(1) == 1
            return
        try:
            callback = lib.memray_frame_exit_callback()
        except ValueError:  # NULL: the payload cannot make it here
            return
        for tool in self.TOOL_IDS:
            try:
                monitoring.use_tool_id(tool, "memray")
            except ValueError:
                continue
            self._tool = tool
            break
        else:
            return
        events = monitoring.events
        self._events = (events.PY_RETURN, events.PY_YIELD, events.PY_UNWIND)
        for event in self._events:
            monitoring.register_callback(self._tool, event, callback)
        monitoring.set_events(self._tool, events.PY_RETURN | events.PY_YIELD | events.PY_UNWIND)
        lib.memray_watch_frame_exits(1)

    def stop(self):
        if self._profiling:
            self._lib.memray_profile_deep_threads(0)
            self._profiling = False
        if self._tool is None:
            return
        self._lib.memray_watch_frame_exits(0)
        monitoring = sys.monitoring
        monitoring.set_events(self._tool, 0)
        for event in self._events:
            monitoring.register_callback(self._tool, event, None)
        monitoring.free_tool_id(self._tool)
        self._tool = None


class GreenletFollower:
    """Tells the payload about greenlet switches, so that each greenlet is a thread of its
    own in the capture with its own stack (as in Memray), whether greenlet was imported
    before tracking started or is imported while it runs."""

    def __init__(self, lib):
        self._lib = lib
        self._module = None
        self._previous = None
        self._finder = None
        module = sys.modules.get("greenlet")
        if module is not None:
            self._follow(module)
        else:
            self._finder = _ImportWatcher("greenlet", self._follow)
            sys.meta_path.insert(0, self._finder)

    def _follow(self, module):
        settrace = getattr(module, "settrace", None)
        if settrace is None or self._module is not None:
            return
        switch = self._lib.memray_greenlet_switch
        previous = None

        def trace(event, args):
            if event in ("switch", "throw"):
                origin, target = args
                switch(id(origin), id(target), 1 if getattr(origin, "dead", False) else 0)
            if previous is not None:
                previous(event, args)

        previous = settrace(trace)
        self._module, self._previous, self._trace = module, previous, trace

    def stop(self):
        if self._finder is not None:
            try:
                sys.meta_path.remove(self._finder)
            except ValueError:
                pass
            self._finder = None
        if self._module is not None:
            # Put the previous trace back only if nobody replaced ours since.
            if self._module.gettrace() is self._trace:
                self._module.settrace(self._previous)
            self._module = None


class _ImportWatcher:
    """A meta path finder that calls `on_import(module)` once `name` has been imported."""

    def __init__(self, name, on_import):
        self._name = name
        self._on_import = on_import
        self._looking = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self._name or self._looking:
            return None
        import importlib.util

        self._looking = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._looking = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _NotifyingLoader(spec.loader, self._on_import)
        return spec


class _NotifyingLoader:
    """`loader`, which then calls `on_import(module)` once the module has run."""

    def __init__(self, loader, on_import):
        self._loader = loader
        self._on_import = on_import

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._on_import(module)

    def __getattr__(self, name):  # everything else (resources, is_package...) is the loader's
        return getattr(self._loader, name)


def name_thread(lib, thread):
    """Gives `thread` (a started threading.Thread) its current name in the capture."""
    if thread.ident is not None:
        lib.memray_set_thread_name(thread.ident, thread.name.encode("utf-8", "replace"))


def is_active():
    try:
        return bool(_load().memray_tracker_is_active())
    except ImportError:
        return False


# ---- `memray run` bootstrap ----------------------------------------------------------
# The CLI starts `python -c BOOTSTRAP` with this file's text and the run's spec in the
# environment; BOOTSTRAP loads the text as module `_memray_run` (not `__main__`, which
# belongs to the program) and calls run_from_cli().


def _fail(message):
    sys.stderr.write("memray: error: %s\n" % message)
    sys.stderr.flush()
    os._exit(1)


def _syntax_problem(e):
    msg = getattr(e, "msg", None) or str(e)
    line = getattr(e, "lineno", None)
    return "%s (line %d)" % (msg, line) if line else msg


def run_from_cli():
    import runpy

    env = os.environ
    mode = env.pop("MEMRAY_RUN_MODE", "script")
    target = env.pop("MEMRAY_RUN_TARGET", "")
    output = env.pop("MEMRAY_RUN_OUTPUT", "").replace("{pid}", str(os.getpid()))
    force = env.pop("MEMRAY_RUN_FORCE", "0") == "1"
    quiet = env.pop("MEMRAY_RUN_QUIET", "0") == "1"
    # Started with -I or -P (as `python -I -m memray run` passes them on), `python -c`
    # put nothing of its own first on sys.path, and the program's directory (or the
    # current one) must not be added: leave sys.path as the interpreter made it.
    isolated = bool(sys.flags.isolated or getattr(sys.flags, "safe_path", False))
    options = dict(
        compress=env.pop("MEMRAY_RUN_COMPRESS", "1") == "1",
        native_traces=env.pop("MEMRAY_RUN_NATIVE", "0") == "1",
        trace_python_allocators=env.pop("MEMRAY_RUN_PYALLOC", "0") == "1",
        follow_fork=env.pop("MEMRAY_RUN_FOLLOW_FORK", "0") == "1",
        memory_interval_ms=int(env.pop("MEMRAY_RUN_INTERVAL_MS", "10")),
        aggregated=env.pop("MEMRAY_RUN_AGGREGATE", "0") == "1",
        buffered=env.pop("MEMRAY_RUN_BUFFERED", "0") == "1",
        sampling_interval=int(env.pop("MEMRAY_RUN_SAMPLING_INTERVAL", "0")),
    )
    live_port = env.pop("MEMRAY_RUN_LIVE_PORT", "")
    live_address = env.pop("MEMRAY_RUN_LIVE_ADDRESS", "") or "127.0.0.1"
    live_announce = env.pop("MEMRAY_RUN_LIVE_ANNOUNCE", "0") == "1"
    args = sys.argv[1:]

    code = None
    if mode == "script":
        try:
            with open(target, "rb") as f:
                source = f.read()
            code = compile(source, target, "exec")
        except (SyntaxError, ValueError) as e:
            # ValueError: null bytes, before 3.12 (a binary, say).
            _fail("%s is not valid Python: %s" % (target, _syntax_problem(e)))
        except OSError as e:
            _fail("cannot read %s: %s" % (target, e.strerror))
        sys.argv = [target] + args
        if not isolated:
            sys.path[0] = os.path.dirname(os.path.abspath(target))
    elif mode == "module":
        sys.argv = [target] + args
        if not isolated:
            sys.path[0] = os.getcwd()
        # As Memray: a module that cannot be found is one line, not runpy's traceback.
        import importlib.util
        try:
            found = importlib.util.find_spec(target) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            sys.stderr.write("memray: No module named %s\n" % target)
            sys.stderr.flush()
            os._exit(1)
    else:
        try:
            code = compile(target, "<string>", "exec")
        except (SyntaxError, ValueError) as e:
            _fail("the code given with -c is not valid Python: %s" % _syntax_problem(e))
        sys.argv = ["-c"] + args
        if not isolated:
            sys.path[0] = ""

    try:
        if live_port:
            announce = _announce_live if live_announce else None
            fd, seekable = open_socket_destination(int(live_port), live_address, announce=announce), False
        else:
            fd, seekable = open_file_destination(output, force), True
    except KeyboardInterrupt:
        _fail("interrupted while waiting for a live viewer")
    except OSError as e:
        if live_port:
            _fail(e.strerror or str(e))
        _fail("cannot write %s: %s" % (output, e.strerror or e))

    # The frames above the program's <module>, which readers hide: the bootstrap's own
    # (`python -c`'s <module> and run_from_cli), and for -m runpy's run_module,
    # _run_module_code and _run_code (the same three on every CPython 3.8-3.15; the
    # tests check the root on each).
    skipped = 2 + (3 if mode == "module" else 0)
    session = Session(fd, output or None, seekable, options.pop("compress") and seekable,
                      skipped_frames=skipped, **options)
    try:
        session.start()
    except (RuntimeError, ImportError) as e:
        os.close(fd)
        _fail(str(e))

    if not quiet and not live_port:
        # Only now, with the program valid and its capture open, as Memray says it.
        sys.stdout.write("Writing profile results into %s\n" % output)
        sys.stdout.flush()

    exit_code = 0
    try:
        if mode == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            main = sys.modules["__main__"]
            globs = main.__dict__
            globs.clear()
            globs.update({"__name__": "__main__", "__file__": target if mode == "script" else "<string>",
                          "__builtins__": __builtins__, "__doc__": None, "__package__": None,
                          "__spec__": None, "__loader__": None, "__cached__": None})
            if mode != "script":
                del globs["__file__"]
            exec(code, globs)
    except SystemExit as e:
        if e.code is None:
            exit_code = 0
        elif isinstance(e.code, int):
            exit_code = e.code
        else:
            sys.stderr.write("%s\n" % (e.code,))
            exit_code = 1
    except BaseException:
        import traceback

        etype, value, tb = sys.exc_info()
        # Hide the bootstrap's own frame from the user's traceback.
        traceback.print_exception(etype, value, tb.tb_next if tb is not None else tb)
        exit_code = 1
    finally:
        # In a fork child that unwinds to here, this finishes the child's own capture
        # (follow_fork) or does nothing (the child stopped tracking at fork).
        session.stop()
    sys.stdout.flush()
    sys.exit(exit_code)
