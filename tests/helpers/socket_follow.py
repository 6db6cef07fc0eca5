"""Follows a program streaming to a SocketDestination with a SocketReader (ours or Memray's:
the module is passed in), checking what the reader sees at each of the program's phases.
Used by tests/test_socket_reader.py, in the test's process or in an oracle venv's."""
import socket
import subprocess
import time

PROGRAM = """
import os, sys, time
import memray

port, workdir = int(sys.argv[1]), sys.argv[2]

def wait_for(name):
    while not os.path.exists(os.path.join(workdir, name)):
        time.sleep(0.01)

def keep(n, size):
    return [bytearray(size) for _ in range(n)]  # @keep

with memray.Tracker(destination=memray.SocketDestination(server_port=port)):
    first = keep(20, 100_000)
    open(os.path.join(workdir, "phase1"), "w").close()
    wait_for("go")
    del first
    second = keep(7, 300_000)
    open(os.path.join(workdir, "phase2"), "w").close()
    wait_for("end")
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(path, proc, timeout=30):
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError("the tracked program ended early:\n" + proc.stdout.read().decode(errors="replace"))
        if time.time() > deadline:
            raise AssertionError(f"{path.name} never appeared")
        time.sleep(0.02)


def start(python, program, port, workdir, env):
    return subprocess.Popen([str(python), str(program), str(port), str(workdir)], env=env, cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def big_records(snapshot, size, below=float("inf")):
    """The records (one per location) whose allocations are of `size` bytes or more on
    average, and under `below`."""
    return [r for r in snapshot if r.n_allocations and size <= r.size / r.n_allocations < below]


def poll_snapshot(reader, predicate, timeout=10):
    """Snapshots until `predicate` holds (the stream reaches the reader a little after the
    program passes a phase)."""
    deadline = time.time() + timeout
    while True:
        snapshot = list(reader.get_current_snapshot(merge_threads=True))  # an iterator in Memray
        if predicate(snapshot) or time.time() > deadline:
            return snapshot
        time.sleep(0.05)


def follow(memray_module, python, env, workdir):
    """Runs PROGRAM under `python` with `env` and follows it with `memray_module.SocketReader`."""
    program = workdir / "streamed.py"
    program.write_text(PROGRAM)
    port = free_port()
    proc = start(python, program, port, workdir, env)
    try:
        with memray_module.SocketReader(port=port) as reader:
            assert reader.pid == proc.pid
            assert reader.command_line.endswith("streamed.py %d %s" % (port, workdir))
            assert reader.has_native_traces is False
            assert reader.is_active
            wait_for(workdir / "phase1", proc)
            snap = poll_snapshot(reader, lambda s: sum(r.n_allocations for r in big_records(s, 100_000)) >= 20)
            first = big_records(snap, 100_000)
            assert sum(r.n_allocations for r in first) == 20, first
            # (Below 3.12 the list comprehension is a frame of its own, inside keep.)
            assert all("keep" in [f[0] for f in r.stack_trace()[:2]] for r in first), [r.stack_trace() for r in first]
            (workdir / "go").write_text("")
            wait_for(workdir / "phase2", proc)
            # The first blocks were freed: only the second ones are live now (the frees
            # reach the reader a little after the program passes the phase).
            snap = poll_snapshot(reader, lambda s: sum(r.n_allocations for r in big_records(s, 300_000)) >= 7
                                 and not big_records(s, 100_000, below=300_000))
            second = big_records(snap, 300_000)
            assert sum(r.n_allocations for r in second) == 7 and sum(r.size for r in second) >= 7 * 300_000, (
                [(r.size, r.n_allocations, r.stack_trace()) for r in second])
            assert not big_records(snap, 100_000, below=300_000), [(r.size, r.n_allocations) for r in snap]
            split = list(reader.get_current_snapshot(merge_threads=False))
            assert sum(r.n_allocations for r in big_records(split, 300_000)) == 7
            (workdir / "end").write_text("")
            assert proc.wait(timeout=30) == 0
            deadline = time.time() + 10
            while reader.is_active and time.time() < deadline:
                time.sleep(0.05)
            assert not reader.is_active
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
