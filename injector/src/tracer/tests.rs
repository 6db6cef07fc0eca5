//! The tracer's invariants on a process that is not Python: a small C program (built here
//! with the system's C compiler) whose threads sit where a real target's do, one in a
//! blocking `read`, one calling `malloc` in a loop with its state in callee-saved
//! registers. The Python suite covers CPython targets; these hold the tracer alone to
//! its promises.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::Tracer;
use crate::{elf, inspect, memory, proc, InjectOptions};

const CHILD: &str = r#"
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile int stop;

/* x and y live in registers across malloc/free (callee-saved: the calls may not touch
   them); mx and my are the same sums kept in memory. Any register the tracer failed to
   put back shows up as a difference. */
static void *spinner(void *unused) {
    uint64_t x = 1, y = 0;
    volatile uint64_t mx = 1, my = 0;
    (void)unused;
    while (!stop) {
        void *block = malloc(64);
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        y += x >> 7;
        mx = mx * 6364136223846793005ULL + 1442695040888963407ULL;
        my += mx >> 7;
        free(block);
        if (x != mx || y != my) {
            write(2, "registers changed\n", 18);
            _exit(3);
        }
    }
    return NULL;
}

int main(void) {
    pthread_t t;
    char buf[64];
    ssize_t n;
    pthread_create(&t, NULL, spinner, NULL);
    printf("ready\n");
    fflush(stdout);
    n = read(0, buf, sizeof buf);  /* blocked here while the tracer works */
    if (n <= 0) {
        fprintf(stderr, "read returned %zd\n", n);
        return 4;
    }
    write(1, buf, n);
    stop = 1;
    pthread_join(t, NULL);
    return 0;
}
"#;

const LIBRARY: &str = r#"
#include <fcntl.h>
#include <unistd.h>

int tracer_test_entry(const char *path) {
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) return -1;
    write(fd, "called", 6);
    close(fd);
    return 42;
}
"#;

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memray-tracer-test-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compile(dir: &Path, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc).args(["-O2", "-pthread", "-o"]).arg(&out).arg(&src).args(args).status();
    assert!(status.is_ok_and(|s| s.success()), "{cc} failed on {}: these tests need a C compiler", src.display());
    out
}

/// The child process, killed if a test fails before it ends.
struct Target(Child);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child, started and past its `ready` line (its spinner thread running).
fn start_child(exe: &Path) -> (Target, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(exe).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (Target(child), out)
}

fn state_and_tracer(pid: i32) -> (String, i32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("").trim().to_string();
    (field("State:"), field("TracerPid:").parse().unwrap_or(-1))
}

/// A started child with everything an injection into it needs.
struct Setup {
    dir: PathBuf,
    lib: PathBuf,
    target: Target,
    out: BufReader<std::process::ChildStdout>,
    pid: i32,
    syms: inspect::Symbols,
}

fn setup(test: &str) -> Setup {
    let dir = scratch_dir(test);
    let exe = compile(&dir, "child", CHILD, &[]);
    let lib = compile(&dir, "libentry.so", LIBRARY, &["-shared", "-fPIC"]);
    let (target, out) = start_child(&exe);
    let pid = target.0.id() as i32;
    let maps = proc::maps(pid).unwrap();
    let (syms, _) = inspect::native_symbols(pid, &maps, &elf::object_paths(&maps)).unwrap();
    assert!(syms.safe_points.iter().any(|(_, name)| name == "malloc"), "{:?}", syms.safe_points);
    Setup { dir, lib, target, out, pid, syms }
}

impl Setup {
    /// One injection of LIBRARY's entry, which writes `marker`. The main thread stays in
    /// its read (not woken): the spinner reaches malloc.
    fn inject(&self, marker: &Path) -> super::Injected {
        let opts = InjectOptions { wake_main_thread: false, timeout: Duration::from_secs(20), ..InjectOptions::default() };
        Tracer::new(self.pid, self.syms.clone(), &opts)
            .inject(self.lib.to_str().unwrap(), "tracer_test_entry", marker.to_str().unwrap().as_bytes())
            .unwrap()
    }

    /// Sends `text` to the child's read; returns what it echoed once it exited, and its
    /// exit status and stderr.
    fn finish(mut self, text: &[u8]) -> (Vec<u8>, std::process::ExitStatus, String) {
        let child = &mut self.target.0;
        child.stdin.as_mut().unwrap().write_all(text).unwrap();
        let mut echoed = Vec::new();
        self.out.read_to_end(&mut echoed).unwrap();
        let status = child.wait().unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
        (echoed, status, err)
    }
}

#[test]
fn inject_into_a_native_process_leaves_it_as_it_was() {
    let _turn = crate::children_turn();
    let s = setup("once");
    let pid = s.pid;
    let marker = s.dir.join("called");
    let original: Vec<Vec<u8>> = s.syms.safe_points.iter().map(|(addr, _)| memory::read(pid, *addr, 16).unwrap()).collect();

    let injected = s.inject(&marker);
    assert_eq!(injected.entry_return, 42);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "called");
    assert_ne!(injected.thread, pid, "the spinner, not the thread blocked in read, reached a safe point");

    // No int3 (or any other byte of ours) left at a safe point; every thread let go.
    let after: Vec<Vec<u8>> = s.syms.safe_points.iter().map(|(addr, _)| memory::read(pid, *addr, 16).unwrap()).collect();
    assert_eq!(original, after);
    for tid in proc::tasks(pid).unwrap() {
        let (state, tracer) = state_and_tracer(tid);
        assert_eq!(tracer, 0, "thread {tid} still traced");
        assert!(!state.starts_with('t') && !state.starts_with('T'), "thread {tid} left stopped: {state}");
    }
    assert!(std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap().contains("libentry.so"));

    // The spinner keeps its registers across many more calls; the read interrupted by the
    // seize resumes and gets what we send (not EINTR).
    std::thread::sleep(Duration::from_millis(200));
    let (echoed, status, err) = s.finish(b"echo me");
    assert!(status.success(), "child failed after the injection: {status}, stderr: {err}");
    assert_eq!(echoed, b"echo me");
}

#[test]
fn many_injections_in_a_row() {
    // Each leaves the process fit for the next: handler, cave and breakpoints all undone.
    let _turn = crate::children_turn();
    let s = setup("many");
    for i in 0..10 {
        let marker = s.dir.join(format!("called-{i}"));
        assert_eq!(s.inject(&marker).entry_return, 42, "injection {i}");
        assert!(marker.exists(), "injection {i}");
    }
    let (echoed, status, err) = s.finish(b"done");
    assert!(status.success(), "child failed after the injections: {status}, stderr: {err}");
    assert_eq!(echoed, b"done");
}
