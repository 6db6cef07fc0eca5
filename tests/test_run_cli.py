"""`memray run` (as `python -m memray run`), for every interpreter."""
import json
import os
import re
from pathlib import Path

import pytest

from support import (
    LZ4_MAGIC,
    MALLOC,
    MEMRAY_MAGIC,
    PYMALLOC_CALLOC,
    PYMALLOC_MALLOC,
    assert_clean_error,
    assert_no_crash,
    assert_ok,
    run,
    top,
)

PROG = """
import json, os, sys
import allochelper
H = allochelper.load()

def work():
    H.helper_malloc(271829)  # @alloc

work()  # @call
print("program line 1")
print(json.dumps({"pid": os.getpid(), "argv": sys.argv, "name": __name__,
                  "path0": sys.path[0], "version": list(sys.version_info[:2])}))
print("program line 3")
"""


def prog_info(result):
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError("program output missing\n" + result.describe())


def capture_files(directory: Path):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".bin") or ".bin." in p.name)


def assert_work_recorded(cap, script):
    rec = cap.one(size=271829, allocator=MALLOC)
    # The whole stack: the script's <module> is the root.
    assert top(rec, 3) == [
        ("work", script.path.name, script.line("alloc")),
        ("<module>", script.path.name, script.line("call")),
    ]


def test_default_output_next_to_script(interp, script, memray_run, reader, workdir):
    sub = workdir / "sub"
    s = script("prog.py", PROG, directory=sub)
    res = assert_ok(memray_run("sub/prog.py", cwd=workdir))
    info = prog_info(res)
    names = capture_files(sub)
    assert len(names) == 1, f"expected one capture next to the script, found {names}\n{res.describe()}"
    m = re.fullmatch(r"memray-prog\.py\.(\d+)\.bin", names[0])
    assert m, names
    assert int(m.group(1)) == info["pid"], "the pid in the name is the tracked process's"
    assert capture_files(workdir) == [], "nothing written in the current directory"
    assert names[0] in res.output, "memray run should say where it writes"
    cap = reader.read(sub / names[0], "all")
    assert_work_recorded(cap, s)
    assert cap.metadata["pid"] == info["pid"]
    assert "prog.py" in cap.metadata["command_line"]


def test_output_option(interp, script, memray_run, reader, workdir):
    s = script("prog.py", PROG)
    out = workdir / "chosen" / "out.bin"
    out.parent.mkdir()
    res = assert_ok(memray_run("-o", out, s.path))
    assert str(out) in res.output or "out.bin" in res.output
    assert capture_files(workdir) == [], "no default-named file when -o is given"
    assert_work_recorded(reader.read(out, "all"), s)


def test_existing_output_refused_without_force(interp, script, memray_run, workdir):
    s = script("prog.py", PROG)
    out = workdir / "exists.bin"
    out.write_bytes(b"precious")
    res = memray_run("-o", out, s.path)
    assert_clean_error(res, "exists.bin")
    assert "program line 1" not in res.stdout, "the program must not run"
    assert out.read_bytes() == b"precious"


def test_existing_output_replaced_with_force(interp, script, memray_run, reader, workdir):
    s = script("prog.py", PROG)
    out = workdir / "exists.bin"
    out.write_bytes(b"precious")
    res = assert_ok(memray_run("-f", "-o", out, s.path))
    info = prog_info(res)
    cap = reader.read(out, "all")
    assert cap.metadata["pid"] == info["pid"]
    assert_work_recorded(cap, s)


def test_run_command_string(interp, memray_run, reader, workdir):
    code = "import allochelper\nH = allochelper.load()\nH.helper_malloc(161803)\nimport os; print('pid', os.getpid())\n"
    res = assert_ok(memray_run("-c", code, cwd=workdir))
    pid = int(re.search(r"^pid (\d+)$", res.stdout, re.M).group(1))
    names = capture_files(workdir)
    assert names == [f"memray-string.{pid}.bin"], names
    cap = reader.read(workdir / names[0], "all")
    rec = cap.one(size=161803, allocator=MALLOC)
    assert top(rec) == [("<module>", "<string>", 3)]


def test_run_module(interp, script, memray_run, reader, workdir):
    moddir = workdir / "mods"
    s = script(
        "mymod.py",
        """
        import json, sys
        import allochelper
        H = allochelper.load()

        def work():
            H.helper_malloc(141421)  # @alloc

        work()
        print(json.dumps({"argv": sys.argv, "name": __name__}))
        """,
        directory=moddir,
    )
    out = workdir / "mod.bin"
    res = assert_ok(memray_run("-o", out, "-m", "mymod", "a1", "--flag", cwd=moddir))
    info = prog_info(res)
    assert info["name"] == "__main__"
    assert info["argv"][1:] == ["a1", "--flag"]
    assert info["argv"][0].endswith("mymod.py")
    rec = reader.read(out, "all").one(size=141421, allocator=MALLOC)
    assert top(rec) == [("work", "mymod.py", s.line("alloc"))]
    # The root is the module's <module>: neither runpy's frames nor the bootstrap's.
    assert [f[0] for f in rec["stack"]] == ["work", "<module>"], rec["stack"]


def test_script_arguments_and_sys_path(interp, script, memray_run, workdir):
    s = script("prog.py", PROG, directory=workdir / "scripts")
    res = assert_ok(memray_run("-q", "-o", workdir / "a.bin", s.path, "x", "y z", "-o", cwd=workdir))
    info = prog_info(res)
    assert info["argv"] == [str(s.path), "x", "y z", "-o"]
    assert info["name"] == "__main__"
    assert os.path.realpath(info["path0"]) == os.path.realpath(s.path.parent)
    assert info["version"] == [3, interp.minor]


def test_quiet_leaves_program_output_alone(interp, script, memray_run, workdir):
    s = script("prog.py", PROG)
    res = assert_ok(memray_run("-q", "-o", workdir / "q.bin", s.path))
    info = prog_info(res)
    expected = "program line 1\n" + json.dumps(
        {"pid": info["pid"], "argv": info["argv"], "name": "__main__", "path0": info["path0"], "version": info["version"]}
    ) + "\nprogram line 3\n"
    assert res.stdout == expected
    assert res.stderr == "", "-q: memray prints nothing of its own"


def test_program_output_untouched(interp, script, memray_run, workdir):
    s = script("prog.py", PROG)
    out = workdir / "loud.bin"
    res = assert_ok(memray_run("-o", out, s.path))
    lines = res.stdout.splitlines()
    start = lines.index("program line 1")
    assert lines[start + 1].startswith("{") and lines[start + 2] == "program line 3", res.describe()
    # Memray's status lines, on stdout as Memray prints them: the first before the
    # program's output, the rest after it; nothing of memray's on stderr.
    assert lines[0] == "Writing profile results into %s" % out, res.describe()
    assert "[memray] Successfully generated profile results." in lines[start + 3:], res.describe()
    assert "memray flamegraph %s" % out in lines, res.describe()
    assert res.stderr == "", res.describe()


def test_a_file_that_is_not_python_is_refused_before_anything_is_written(interp, script, memray_run, workdir):
    binary = workdir / "prog.bin"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(64))
    res = memray_run("-o", workdir / "out.bin", binary, cwd=workdir)
    assert_clean_error(res, "prog.bin")
    assert "Writing profile results" not in res.output and "(line None)" not in res.output, res.describe()
    assert not (workdir / "out.bin").exists()


@pytest.mark.parametrize(
    "ending, code",
    [
        ("sys.exit(7)", 7),
        ("raise ZeroDivisionError('x')", 1),
        # os._exit skips every exit handler: the capture is readable up to its last
        # flush (the periodic RSS sample flushes, so sleep past a few of them)
        ("import time; time.sleep(0.3); os._exit(3)", 3),
    ],
    ids=["sys_exit", "exception", "os_exit"],
)
def test_exit_code_propagates(interp, script, memray_run, reader, workdir, ending, code):
    s = script(
        "exiting.py",
        """
        import os, sys
        import allochelper
        H = allochelper.load()
        H.helper_malloc(112358)  # @alloc
        """,
        ending + "\n",
    )
    out = workdir / "exit.bin"
    res = memray_run("-q", "--no-compress", "-o", out, s.path)
    assert_no_crash(res)
    assert res.returncode == code, res.describe()
    if code == 1:
        assert "ZeroDivisionError" in res.stderr, "the program's own traceback is shown"
    cap = reader.read(out, "all")
    assert top(cap.one(size=112358, allocator=MALLOC)) == [("<module>", "exiting.py", s.line("alloc"))]


def test_missing_script(interp, memray_run, workdir):
    res = memray_run("nope.py", cwd=workdir)
    assert_clean_error(res, "nope.py")
    assert capture_files(workdir) == []


def test_syntax_error_in_script(interp, script, memray_run, workdir):
    s = script("broken.py", "def broken(:\n    pass\n")
    out = workdir / "broken.bin"
    res = memray_run("-o", out, s.path)
    assert_clean_error(res)
    assert not out.exists()


@pytest.mark.ours_only  # Memray leaves an empty capture behind
def test_unknown_option_before_the_script_is_a_usage_error(interp, script, memray_run, workdir):
    """As Memray: `memray run --no-such-flag app.py` names the unknown option (exit 2),
    never "no such script: --no-such-flag"; options after the script are the program's."""
    s = script("app.py", PROG)
    res = memray_run("--no-such-flag", s.path, cwd=workdir)
    assert res.returncode == 2, res.describe()
    assert "--no-such-flag" in res.stderr and "no such script" not in res.stderr, res.describe()
    assert not capture_files(workdir), "nothing may be written"
    res = assert_ok(memray_run("-q", "-o", workdir / "ok.bin", s.path, "--no-such-flag", "-x", cwd=workdir))
    assert prog_info(res)["argv"][1:] == ["--no-such-flag", "-x"]


def test_missing_module_is_one_line(interp, memray_run, workdir):
    res = memray_run("-m", "no_such_module_here", cwd=workdir)
    assert_clean_error(res, "No module named no_such_module_here")
    assert "Successfully generated" not in res.output and "Writing profile results" not in res.output
    assert capture_files(workdir) == []


def test_binary_file_as_script_is_one_line(interp, memray_run, workdir):
    binary = workdir / "binary.py"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    res = memray_run("-o", workdir / "b.bin", binary, cwd=workdir)
    assert_clean_error(res)
    assert "line None" not in res.stderr
    assert not (workdir / "b.bin").exists()


@pytest.mark.parametrize("where", ["missing_dir", "under_a_file"])
def test_unwritable_output(interp, script, memray_run, workdir, where):
    s = script("prog.py", PROG)
    if where == "missing_dir":
        out = workdir / "no" / "such" / "dir" / "x.bin"
    else:
        (workdir / "afile").write_text("")
        out = workdir / "afile" / "x.bin"
    res = memray_run("-o", out, s.path)
    assert_clean_error(res, "x.bin")
    assert "program line 1" not in res.stdout, "the program must not run"


@pytest.mark.parametrize("flag, magic", [(None, LZ4_MAGIC), ("--no-compress", MEMRAY_MAGIC)], ids=["lz4", "no-compress"])
def test_compression(interp, script, memray_run, reader, workdir, flag, magic):
    s = script("prog.py", PROG)
    out = workdir / "c.bin"
    assert_ok(memray_run(*([flag] if flag else []), "-q", "-o", out, s.path))
    assert out.read_bytes()[:7].startswith(magic)
    assert_work_recorded(reader.read(out, "all"), s)


@pytest.mark.parametrize("buffered", [False, True], ids=["mapped", "buffered"])
def test_buffered_file_io(interp, script, memray_run, reader, workdir, buffered):
    """--buffered-file-io writes the capture with plain writes: the file is never mapped
    into the program (the default maps it, so that records survive a crash)."""
    s = script("prog.py", PROG + "\nprint('capture mapped:', sys.argv[1] in open('/proc/self/maps').read())\n")
    out = workdir / "buffered.bin"
    flags = ["--buffered-file-io"] if buffered else []
    res = assert_ok(memray_run(*flags, "-q", "-o", out, s.path, str(out)))
    assert "capture mapped: %s" % (not buffered) in res.stdout, res.describe()
    assert_work_recorded(reader.read(out, "all"), s)


def test_aggregate_flag(interp, script, memray_run, reader, workdir):
    # Big enough to be live at the peak whatever the interpreter allocates at start-up
    # (3.15 reallocs a 3.6 MB buffer while compiling a module, then frees it).
    s = script("prog.py", PROG.replace("271829", "27182818"))
    out = workdir / "agg.bin"
    assert_ok(memray_run("--aggregate", "-q", "-o", out, s.path))
    cap = reader.read(out, "hwm")
    assert cap.metadata["file_format"] == 1
    rec = cap.one("hwm", size=27182818, allocator=MALLOC)
    assert top(rec) == [("work", "prog.py", s.line("alloc"))]


def test_trace_python_allocators_flag(interp, script, memray_run, reader, workdir):
    s = script("prog.py", PROG)
    out = workdir / "pyalloc.bin"
    assert_ok(memray_run("--trace-python-allocators", "-q", "-o", out, s.path))
    cap = reader.read(out, "all", "sizes=271829")
    assert cap.metadata["trace_python_allocators"] is True
    assert cap.data["all_counts"].get(str(PYMALLOC_MALLOC), 0) > 100
    assert_work_recorded(cap, s)


@pytest.mark.parametrize("child_exit", ["sys_exit", "os_exit"])
def test_follow_fork_flag(interp, script, memray_run, reader, workdir, child_exit):
    s = script(
        "forker.py",
        """
        import json, os, sys, time
        import allochelper
        H = allochelper.load()

        def child_work():
            H.helper_malloc(173205)  # @child

        pid = os.fork()
        if pid == 0:
            child_work()
            if sys.argv[1] == "os_exit":
                time.sleep(0.5)
                os._exit(0)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        H.helper_malloc(223606)  # @parent
        print(json.dumps({"child": pid, "status": status}))
        """,
    )
    out = workdir / "ff.bin"
    res = memray_run("--follow-fork", "-q", "-o", out, s.path, child_exit)
    assert_no_crash(res)
    assert_ok(res)
    info = json.loads([l for l in res.stdout.splitlines() if l.startswith("{")][-1])
    assert info["status"] == 0
    parent = reader.read(out, "all")
    assert top(parent.one(size=223606, allocator=MALLOC)) == [("<module>", "forker.py", s.line("parent"))]
    assert parent.find(size=173205) == []
    child = reader.read(f"{out}.{info['child']}", "all")
    assert top(child.one(size=173205, allocator=MALLOC)) == [("child_work", "forker.py", s.line("child"))]
    assert child.metadata["pid"] == info["child"]


# --------------------------------------------------------------------------- this project's extensions


@pytest.mark.ours_only
def test_binary_with_python_option(interp, build, script, tracked_env, reader, workdir):
    s = script("prog.py", PROG)
    out = workdir / "bin.bin"
    res = assert_ok(
        run([build.binary, "run", "--python", interp.executable, "-q", "-o", out, s.path], cwd=workdir, env=tracked_env)
    )
    info = prog_info(res)
    assert info["version"] == [3, interp.minor]
    cap = reader.read(out, "all")
    assert cap.metadata["pid"] == info["pid"]
    assert_work_recorded(cap, s)


@pytest.mark.ours_only
def test_memory_interval_option(interp, script, memray_run, reader, workdir):
    s = script(
        "sleepy.py",
        """
        import time
        deadline = time.time() + 0.6
        while time.time() < deadline:
            time.sleep(0.01)
        """,
    )
    out = workdir / "interval.bin"
    assert_ok(memray_run("--memory-interval-ms", "5", "-q", "-o", out, s.path))
    snaps = reader.read(out, "snapshots").snapshots
    assert len(snaps) >= 10, f"expected RSS samples every 5 ms over 0.6 s, got {len(snaps)}"


SUPERVISED = """
import os, signal, sys, time
import allochelper
H = allochelper.load()
got = []
def on_signal(sig, frame):
    got.append(sig)  # handlers only note the signal: printing here could re-enter print
def on_term():
    H.helper_malloc(424242)  # @on_term
    print("terminated by %d" % signal.SIGTERM, flush=True)
    sys.exit(7)
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, on_signal)
print("pid %d" % os.getpid(), flush=True)
while True:
    H.helper_free(H.helper_malloc(1234))
    time.sleep(0.005)
    while got:
        sig = got.pop(0)
        if sig == signal.SIGTERM:
            on_term()
        print("got %d" % sig, flush=True)
"""


@pytest.mark.ours_only
def test_supervisor_signals_reach_the_program(interp, build, script, tracked_env, reader, workdir):
    """systemd, `docker stop`, Kubernetes signal the PID they started: `memray run`'s. The
    program must get each signal (once) and `memray run` exit with the program's status,
    leaving a complete capture."""
    import signal
    import subprocess
    import time
    s = script("service.py", SUPERVISED)
    out = workdir / "service.bin"
    env = dict(tracked_env)
    proc = subprocess.Popen([str(build.binary), "run", "--python", interp.executable, "-o", str(out), str(s.path)],
                            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    def expect(prefix):
        deadline = time.time() + 30
        while time.time() < deadline:
            line = proc.stdout.readline()
            assert line, "program ended early: %s" % proc.stderr.read()
            lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError("no %r line in %s" % (prefix, lines))
    child_pid = int(expect("pid ").split()[1])
    assert child_pid != proc.pid
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        proc.send_signal(sig)
        assert expect("got ") == "got %d\n" % sig
    proc.send_signal(signal.SIGTERM)
    expect("terminated by %d" % signal.SIGTERM)
    assert proc.wait(timeout=30) == 7, proc.stderr.read()
    # The program, not just `memray run`, is gone: no orphan left tracking.
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
    # Its handler's allocation and the capture's end are there.
    cap = reader.read(out, "all", "sizes=424242")
    (rec,) = cap.find(size=424242, allocator=MALLOC)
    assert rec["stack"][0][0] == "on_term"


DEATHS = [
    ("segfault", "import ctypes; ctypes.string_at(0)", 128 + 11),
    ("os_exit", "os._exit(3)", 3),
    ("sigkill", "import signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9),
    ("abort", "os.abort()", 128 + 6),
]


@pytest.mark.ours_only
@pytest.mark.parametrize("ending,code", [d[1:] for d in DEATHS], ids=[d[0] for d in DEATHS])
def test_records_before_an_abrupt_death_are_kept(interp, script, memray_run, reader, workdir, ending, code):
    """Every record written before the instant the process died is in the capture: the
    file is written through shared mappings whose pages the kernel keeps."""
    s = script(
        "dying.py",
        """
        import os, sys
        import allochelper
        H = allochelper.load()
        for i in range(100):
            H.helper_malloc(77777)  # @alloc
        H.helper_malloc(88888)  # @last
        """,
        ending + "\n",
    )
    out = workdir / "death.bin"
    res = memray_run("-o", out, s.path)
    assert res.returncode == code, res.describe()
    # The end message tells the truth.
    assert "Successfully generated" not in res.output, res.describe()
    if code > 128:
        assert "killed by signal %d" % (code - 128) in res.stderr, res.describe()
    else:
        assert "without finishing the capture" in res.stderr, res.describe()
    cap = reader.read(out, "all", "sizes=77777,88888")
    assert len(cap.find(size=77777, allocator=MALLOC)) == 100
    assert top(cap.one(size=88888, allocator=MALLOC)) == [("<module>", "dying.py", s.line("last"))]


@pytest.mark.ours_only
@pytest.mark.parametrize("planted", ["symlink", "others_file"])
def test_capture_never_written_through_a_planted_file(interp, script, memray_run, reader, workdir, planted):
    """Every file we create is created exclusively and never through a link: a link (or
    another user's file) planted at the capture's name, or at the name the compressed copy
    used to have, is never written through."""
    s = script("plain.py", "import allochelper\nH = allochelper.load()\nH.helper_malloc(31415)  # @alloc\n")
    victim = workdir / "victim.txt"
    victim.write_text("precious")
    out = workdir / "planted.bin"
    tmp = workdir / "planted.bin.lz4.tmp"
    if planted == "symlink":
        out.symlink_to(victim)
        tmp.symlink_to(victim)
    else:
        out.write_text("someone else's")
        os.chown(out, 65534, 65534)
    res = memray_run("-q", "-o", out, s.path)
    assert_clean_error(res, "already exists")
    assert victim.read_text() == "precious"
    res = memray_run("-q", "-f", "-o", out, s.path)
    assert_ok(res)
    assert victim.read_text() == "precious"
    assert not out.is_symlink() and out.stat().st_uid == os.geteuid()
    assert reader.read(out, "all").one(size=31415, allocator=MALLOC)


@pytest.mark.ours_only
@pytest.mark.parametrize("pyalloc", [False, True], ids=["malloc", "pymalloc"])
def test_follow_fork_pool_workers_lose_nothing(interp, script, memray_run, reader, workdir, pyalloc):
    """multiprocessing.Pool workers are killed (SIGTERM) when the pool closes: every
    allocation they made is still in their captures, each with its `work` frame. With
    --trace-python-allocators, every pymalloc calloc too (Memray parity: the counts of a
    follow_fork capture are complete)."""
    s = script(
        "pool.py",
        """
        import ctypes, multiprocessing, os, sys
        import allochelper
        H = allochelper.load()
        api = ctypes.pythonapi
        api.PyMem_Calloc.restype = ctypes.c_void_p
        api.PyMem_Calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        api.PyMem_Free.argtypes = [ctypes.c_void_p]

        def work(i):
            for _ in range(50):
                H.helper_malloc(60606)  # @work
            for _ in range(10):
                api.PyMem_Free(api.PyMem_Calloc(3, 111))  # @calloc
            return os.getpid()

        if __name__ == "__main__":
            with multiprocessing.get_context("fork").Pool(4) as pool:
                pids = pool.map(work, range(40), chunksize=1)
            print("workers", " ".join(map(str, sorted(set(pids)))))
        """,
    )
    out = workdir / "pool.bin"
    flags = ("--trace-python-allocators",) if pyalloc else ()
    res = memray_run("--follow-fork", *flags, "-q", "-o", out, s.path)
    assert_ok(res)
    workers = [l for l in res.stdout.splitlines() if l.startswith("workers")][-1].split()[1:]
    total = callocs = 0
    for pid in workers:
        cap = reader.read("%s.%s" % (out, pid), "all", "sizes=60606,333")
        recs = cap.find(size=60606, allocator=MALLOC)
        assert recs, "worker %s has no work() allocation" % pid
        assert all(top(r) == [("work", "pool.py", s.line("work"))] for r in recs)
        total += len(recs)
        mine = [r for r in cap.find(size=333, allocator=PYMALLOC_CALLOC) if top(r) == [("work", "pool.py", s.line("calloc"))]]
        callocs += len(mine)
    assert total == 40 * 50
    assert callocs == (40 * 10 if pyalloc else 0)
