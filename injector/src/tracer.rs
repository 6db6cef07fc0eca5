//! The ptrace session: seize every thread, stop one at a safe point, call functions in it,
//! put everything back, let go.
//!
//! Invariants, on every path (errors, timeouts, Ctrl-C, the process exiting):
//! - from the first int3 to the detach, the process has a SIGTRAP handler of ours (see
//!   [`crate::cave`]) that undoes whatever a dead tracer left behind; the program's own
//!   disposition is back once every thread is stopped and none can still trap;
//! - code runs in the target only from the cave, and puts the thread back by itself;
//! - every int3 we wrote is replaced by its original byte before we detach, in the
//!   process and in any child it forked meanwhile;
//! - a thread that ran into one of our int3s gets its pc moved back onto the
//!   instruction *before* its stop is consumed (see `next_status`), and the SIGTRAP is
//!   never delivered;
//! - the hijacked thread gets all its registers back (general, FP and vector state);
//! - a signal is never held by us alone: it is delivered as it comes, or, for a thread
//!   parked to detach, made pending again at once (the kernel forgets the signal of a
//!   consumed stop, so a signal we held would be lost if we died);
//! - every thread we seized is detached.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::arch::FpState;
use crate::arch::{self, Regs};
use crate::cave::{self, Cave};
use crate::error::{Error, Result};
use crate::inspect::Symbols;
use crate::memory;
use crate::proc;
use crate::sys::{self, Wait};
use crate::InjectOptions;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Running,
    /// In a ptrace-stop that we have not resumed.
    Stopped,
}

#[derive(Debug)]
struct Thread {
    state: State,
    interrupt_pending: bool,
}

struct Breakpoint {
    addr: u64,
    original: u8,
}

/// What a phase of the session may be waiting for.
#[derive(Debug)]
enum Ev {
    /// A thread stopped on one of our int3s (left stopped, pc = addr + BREAKPOINT_LEN).
    Trap { tid: i32, addr: u64 },
    /// The focus thread got a signal (left stopped).
    Signal { tid: i32, sig: i32 },
    /// A thread we interrupted is stopped.
    Interrupted { tid: i32 },
    /// The single step we asked for is done (left stopped).
    Stepped { tid: i32 },
    /// The thread we run under PTRACE_SYSCALL is at a system-call entry or exit.
    Syscall { tid: i32 },
    /// A thread exited.
    Gone,
    /// The process called exec: its memory is new, our breakpoints are gone with it.
    Exec,
}

/// A consumed wait status, or a stop on one of our int3s (already moved back onto it).
enum Status {
    Wait(Wait),
    Breakpoint { tid: i32, addr: u64 },
}

/// The result of a successful injection.
#[derive(Debug)]
pub struct Injected {
    /// What the entry function returned.
    pub entry_return: u64,
    /// Where the safe point was reached, e.g. "malloc".
    pub safe_point: String,
    /// The thread that ran the calls.
    pub thread: i32,
    /// How long the process waited for us in each phase.
    pub to_safe_point: Duration,
    /// How long the process was held (zero by PEP 768: never stopped).
    pub total: Duration,
    /// The route that worked.
    pub method: crate::Method,
    /// The PEP 768 script, when the caller must remove it: the library was loaded before,
    /// so only the entry's effect shows that the interpreter has read the file. It stays
    /// locked (the script's sign that we still wait for it) until removed or dropped.
    pub script: Option<crate::remote_exec::Script>,
}

pub struct Tracer<'a> {
    pid: i32,
    opts: &'a InjectOptions<'a>,
    syms: Symbols,
    threads: BTreeMap<i32, Thread>,
    /// Forked children (not threads): (pid, whether it is a vfork child).
    children: BTreeMap<i32, bool>,
    /// Children already let go (their first stop can come before the parent's event).
    released: BTreeSet<i32>,
    bps: Vec<Breakpoint>,
    /// Every address we ever put an int3 at, with its original byte.
    known: BTreeMap<u64, u8>,
    bps_wanted: bool,
    suspended_for_vfork: BTreeSet<i32>,
    focus: Option<i32>,
    stepping: Option<i32>,
    /// Registers of the hijacked thread, while it is ours.
    saved: Option<(i32, Regs, FpState)>,
    exited: bool,
    execed: bool,
    started: Instant,
    cave: Option<Cave>,
    /// The thread resumed with PTRACE_SYSCALL rather than PTRACE_CONT.
    syscall_mode: Option<i32>,
    /// Our SIGTRAP handler is installed; `program_act` is the disposition it replaced.
    handler_installed: bool,
    program_act: [u8; 32],
}

impl<'a> Tracer<'a> {
    pub fn new(pid: i32, syms: Symbols, opts: &'a InjectOptions<'a>) -> Tracer<'a> {
        Tracer {
            pid,
            opts,
            syms,
            threads: BTreeMap::new(),
            children: BTreeMap::new(),
            released: BTreeSet::new(),
            bps: Vec::new(),
            known: BTreeMap::new(),
            bps_wanted: false,
            suspended_for_vfork: BTreeSet::new(),
            focus: None,
            stepping: None,
            saved: None,
            exited: false,
            execed: false,
            started: Instant::now(),
            cave: None,
            syscall_mode: None,
            handler_installed: false,
            program_act: [0; 32],
        }
    }

    fn log(&self, msg: &str) {
        if let Some(log) = self.opts.log {
            log(msg);
        }
    }

    fn cancelled(&self) -> bool {
        self.opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn exited_error(&self) -> Error {
        let detail = if self.execed { " (it called exec)".to_string() } else { String::new() };
        Error::ProcessExited { pid: self.pid, detail }
    }

    /// Loads `library` into the process and calls `entry(arg)` in it.
    pub fn inject(&mut self, library: &str, entry: &str, arg: &[u8]) -> Result<Injected> {
        let result = self.inject_inner(library, entry, arg);
        let cleanup = self.cleanup();
        match (result, cleanup) {
            (Ok(r), Ok(())) => Ok(r),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
        }
    }

    fn inject_inner(&mut self, library: &str, entry: &str, arg: &[u8]) -> Result<Injected> {
        let deadline = self.started + self.opts.timeout;
        let cave = cave::find(self.pid)?;
        self.seize_all()?;
        self.log(&format!("seized {} threads of process {}", self.threads.len(), self.pid));

        // Breakpoints go in through one stopped thread; the main thread if it lives.
        let anchor = self.stop_any_thread(deadline)?;
        self.place_cave(cave)?;
        self.install_trap_handler(anchor)?;
        self.insert_breakpoints(anchor)?;
        self.bps_wanted = true;
        self.log(&format!("breakpoints set at {} function entries ({})", self.bps.len(), self.safe_point_names()));
        self.resume(anchor, 0)?;
        self.test_pause("armed");

        let (tid, addr) = self.wait_for_safe_point(deadline)?;
        let to_safe_point = self.started.elapsed();
        let name = name_of(&self.syms, addr);
        self.log(&format!("safe point: thread {tid} at the entry of {name} ({:.1} ms)", to_safe_point.as_secs_f64() * 1e3));
        self.focus = Some(tid);
        self.bps_wanted = false;
        self.remove_breakpoints(tid)?;

        let done = self.call_sequence(tid, addr, library, entry, arg)?;
        if done.handle == 0 {
            let reason = if done.error == 0 {
                "unknown error".to_string()
            } else {
                memory::read_cstr(self.pid, done.error, 1024).unwrap_or_default()
            };
            return Err(Error::DlopenFailed { path: library.into(), reason });
        }
        self.log(&format!("library mapped: dlopen(\"{library}\") = {:#x}", done.handle));
        if done.entry == 0 {
            return Err(Error::SymbolNotFound { pid: self.pid, symbol: entry.into(), detail: format!("not exported by {library}") });
        }
        self.log(&format!("{entry} returned {}", done.result));
        Ok(Injected {
            entry_return: done.result,
            safe_point: name,
            thread: tid,
            to_safe_point,
            total: self.started.elapsed(),
            method: crate::Method::Ptrace,
            script: None,
        })
    }

    /// For tests of the attacher's death: stops here for a minute when
    /// MEMRAY_ATTACH_TEST_PAUSE names this phase, so a test can kill us at that instant.
    fn test_pause(&self, phase: &str) {
        if std::env::var("MEMRAY_ATTACH_TEST_PAUSE").is_ok_and(|p| p == phase) {
            eprintln!("memray attach: test pause at {phase}");
            std::thread::sleep(Duration::from_secs(60));
        }
    }

    // ---- the cave ------------------------------------------------------------------

    /// Writes our code into the cave. An earlier attacher of ours may have died there
    /// with its handler installed and its int3s still armed: its data (the program's own
    /// disposition, the breakpoint table) is kept, byte for byte, and its armed int3s
    /// become ours to remove.
    fn place_cave(&mut self, cave: Cave) -> Result<()> {
        let mut image = cave::image().to_vec();
        if let Ok(earlier) = memory::read(self.pid, cave.addr, image.len()) {
            if let Some(data) = cave::earlier_data(&earlier) {
                image = earlier;
                self.program_act = data.program_act;
                for (addr, original) in data.breakpoints {
                    self.known.insert(addr, original);
                    if memory::read(self.pid, addr, 1).is_ok_and(|b| b[0] == arch::BREAKPOINT) {
                        self.bps.push(Breakpoint { addr, original });
                    }
                }
                self.log(&format!("an earlier attach's code is in place ({} of its int3s still armed)", self.bps.len()));
            }
        }
        cave.write(self.pid, cave.addr, &image)?;
        self.cave = Some(cave);
        self.log(&format!("attach code placed at {:#x} ({} bytes)", cave.addr, Cave::len()));
        Ok(())
    }

    fn cave(&self) -> Result<Cave> {
        self.cave.ok_or_else(|| Error::RemoteCall { pid: self.pid, function: "the attach code".into(), detail: "is not placed".into() })
    }

    /// Installs the cave's SIGTRAP handler, through `tid` stopped anywhere.
    fn install_trap_handler(&mut self, tid: i32) -> Result<()> {
        let cave = self.cave()?;
        let act = arch::trap_action(cave.handler(), cave.restorer());
        let wake = self.opts.wake_main_thread && tid == self.pid;
        let old = self.remote_sigaction(tid, &act, wake)?;
        let old_handler = u64::from_le_bytes(old[0..8].try_into().unwrap_or_default());
        if !cave.contains(old_handler) {
            self.program_act = old;
        } else if cave.contains(u64::from_le_bytes(self.program_act[0..8].try_into().unwrap_or_default())) {
            self.program_act = [0; 32];
        }
        cave.write(self.pid, cave.old_act(), &self.program_act)?;
        self.handler_installed = true;
        self.log("SIGTRAP handler installed (undoes the breakpoints if we die)");
        Ok(())
    }

    /// Runs `rt_sigaction(SIGTRAP, act, &old)` in stopped thread `tid` through the cave's
    /// self-restoring stub and puts the thread back (woken from a PEP 475 call if `wake`).
    /// Returns the previous action.
    fn remote_sigaction(&mut self, tid: i32, act: &[u8; 32], wake: bool) -> Result<[u8; 32]> {
        let cave = self.cave()?;
        let regs0 = sys::getregs(tid)?;
        let (back, woken) = arch::resume_point(regs0, wake);
        if let Some(nr) = woken {
            self.log(&format!("main thread was blocked in system call {nr}: woken with EINTR (Python retries it)"));
        }
        let fp = arch::save_fp(tid)?;
        // Below the red zone: [saved registers][act][old].
        let area = arch::below_red_zone(arch::sp(&regs0), 0x200);
        let mut block = arch::saved_area(&back, arch::sp(&back));
        block.extend_from_slice(act);
        block.extend_from_slice(&[0u8; 32]);
        self.write_mem(tid, area, &block)?;
        cave.write(self.pid, cave.resume_pc(), &arch::pc(&back).to_le_bytes())?;
        let mut regs = regs0;
        let args = [libc::SIGTRAP as u64, area + arch::SAVED_LEN as u64, area + arch::SAVED_LEN as u64 + 32, 8];
        arch::set_syscall(&mut regs, cave.syscall(), area, libc::SYS_rt_sigaction, args);
        self.saved = Some((tid, back, fp));
        sys::setregs(tid, regs)?;
        self.test_pause("sigaction");
        let mut stops = 0;
        let ret = self.run_until(tid, "rt_sigaction", |r| {
            if arch::pc(r) == cave.syscall_done() {
                stops += 1;
            }
            stops == 2
        })?;
        if (ret as i64) < 0 {
            return Err(Error::RemoteCall {
                pid: self.pid,
                function: "rt_sigaction".into(),
                detail: format!("failed with errno {}", -(ret as i64)),
            });
        }
        let old = memory::read(self.pid, area + arch::SAVED_LEN as u64 + 32, 32)?;
        self.restore_focus()?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&old);
        Ok(out)
    }

    /// Runs dlopen, dlsym and the entry in `tid`, stopped at the entry of a function
    /// (`addr`), through the cave's call sequence, and puts the thread back.
    fn call_sequence(&mut self, tid: i32, addr: u64, library: &str, entry: &str, arg: &[u8]) -> Result<CallResults> {
        use arch::block as b;
        let cave = self.cave()?;
        let mut regs0 = sys::getregs(tid)?;
        arch::set_pc(&mut regs0, addr);
        let fp = arch::save_fp(tid)?;
        let path = c_string(library.as_bytes());
        let arg = c_string(arg);
        let symbol = c_string(entry.as_bytes());
        if symbol.len() > b::SYMBOL_MAX {
            return Err(Error::SymbolNotFound { pid: self.pid, symbol: entry.into(), detail: "name too long".into() });
        }
        let len = b::STRINGS + path.len() + arg.len();
        // At a function's entry nothing below the stack pointer is in use: the return slot
        // for the cave's return goes just below it, the block below the red zone.
        let slot = arch::call_return_slot(&regs0);
        let base = arch::below_red_zone(slot, len as u64);
        let mut block = vec![0u8; len];
        let mut put = |at: usize, v: u64| block[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(b::DLOPEN, self.syms.dlopen);
        put(b::DLSYM, self.syms.dlsym);
        put(b::DLERROR, self.syms.dlerror);
        put(b::PATH, base + b::STRINGS as u64);
        put(b::FLAGS, libc::RTLD_NOW as u64);
        put(b::ARG, base + (b::STRINGS + path.len()) as u64);
        block[b::SAVED..b::SAVED + arch::SAVED_LEN].copy_from_slice(&arch::saved_area(&regs0, slot));
        block[b::SYMBOL..b::SYMBOL + symbol.len()].copy_from_slice(&symbol);
        block[b::STRINGS..b::STRINGS + path.len()].copy_from_slice(&path);
        block[b::STRINGS + path.len()..].copy_from_slice(&arg);
        self.write_mem(tid, base, &block)?;
        self.write_mem(tid, slot, &addr.to_le_bytes())?;
        let mut regs = regs0;
        arch::set_call(&mut regs, cave.call(), base);
        self.saved = Some((tid, regs0, fp));
        sys::setregs(tid, regs)?;
        self.test_pause("call");
        self.run_until(tid, "dlopen", |r| arch::pc(r) == cave.call_done() && arch::syscall_nr(r) == libc::SYS_getpid)?;
        let out = memory::read(self.pid, base, b::SAVED)?;
        let get = |at: usize| u64::from_le_bytes(out[at..at + 8].try_into().unwrap_or_default());
        let done = CallResults { handle: get(b::HANDLE), entry: get(b::ENTRY), result: get(b::RESULT), error: get(b::ERROR) };
        self.restore_focus()?;
        Ok(done)
    }

    /// Resumes `tid` under PTRACE_SYSCALL until `done` holds at one of its system-call
    /// stops (left stopped there); returns the return-value register at that stop
    /// ([`arch::return_value`]). Code running in the target cannot be abandoned (it may
    /// hold the loader lock): this waits for as long as it takes, telling the user after 5 s.
    fn run_until(&mut self, tid: i32, what: &str, mut done: impl FnMut(&Regs) -> bool) -> Result<u64> {
        self.syscall_mode = Some(tid);
        let result = self.run_until_inner(tid, what, &mut done);
        self.syscall_mode = None;
        result
    }

    fn run_until_inner(&mut self, tid: i32, what: &str, done: &mut dyn FnMut(&Regs) -> bool) -> Result<u64> {
        self.resume(tid, 0)?;
        let mut warned = false;
        let started = Instant::now();
        loop {
            match self.next(Some(Instant::now() + Duration::from_millis(500)), false)? {
                Some(Ev::Syscall { tid: t }) if t == tid => {
                    let regs = sys::getregs(tid)?;
                    if done(&regs) {
                        return Ok(arch::return_value(&regs));
                    }
                    self.resume(tid, 0)?;
                }
                Some(Ev::Signal { tid: t, sig }) if t == tid => {
                    // Asynchronous signals were delivered as they came (next_status).
                    let regs = sys::getregs(tid)?;
                    return Err(Error::RemoteCall {
                        pid: self.pid,
                        function: what.into(),
                        detail: format!("crashed with signal {sig} at {:#x}", arch::pc(&regs)),
                    });
                }
                Some(Ev::Interrupted { tid: t })
                | Some(Ev::Stepped { tid: t })
                | Some(Ev::Signal { tid: t, .. })
                | Some(Ev::Syscall { tid: t }) => self.resume(t, 0)?,
                Some(Ev::Trap { tid: t, .. }) => self.resume(t, 0)?,
                Some(Ev::Exec) => return Err(self.exited_error()),
                Some(Ev::Gone) => {}
                None => {
                    if !warned && started.elapsed() > Duration::from_secs(5) {
                        warned = true;
                        self.log(&format!("still waiting for {what} to return in the target"));
                    }
                }
            }
        }
    }

    fn safe_point_names(&self) -> String {
        let mut names: Vec<&str> = self.syms.safe_points.iter().map(|(_, n)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.join(", ")
    }

    // ---- threads -------------------------------------------------------------------

    fn seize_all(&mut self) -> Result<()> {
        loop {
            let tids = proc::tasks(self.pid)?;
            let mut new = false;
            for tid in tids {
                if self.threads.contains_key(&tid) {
                    continue;
                }
                match sys::seize(tid) {
                    Ok(()) => {
                        self.threads.insert(tid, Thread { state: State::Running, interrupt_pending: false });
                        new = true;
                    }
                    Err(Error::Ptrace { errno: nix::errno::Errno::ESRCH, .. }) => {}
                    Err(Error::Ptrace { errno: nix::errno::Errno::EPERM, .. }) if self.threads.is_empty() => {
                        let tracer = proc::status(self.pid).map(|s| s.tracer_pid).unwrap_or(0);
                        let cause = if tracer != 0 {
                            proc::describe_tracer(tracer)
                        } else if sys::refused_outright(sys::Needed::Ptrace) {
                            crate::inspect::refused_cause(sys::Needed::Ptrace)
                        } else if proc::status(self.pid).is_ok_and(|s| s.uid == proc::euid()) && !proc::dumpable_by_us(self.pid) {
                            proc::NOT_DUMPABLE.to_string()
                        } else {
                            "the kernel refused ptrace (no CAP_SYS_PTRACE in this container, a security module, \
                             or a non-dumpable process)"
                                .to_string()
                        };
                        return Err(Error::PermissionDenied { pid: self.pid, cause });
                    }
                    Err(Error::Ptrace { errno: nix::errno::Errno::EPERM, .. }) => {
                        self.log(&format!("thread {tid} cannot be seized (exiting?): skipped"));
                    }
                    Err(e) => return Err(e),
                }
            }
            if !new {
                break;
            }
        }
        if self.threads.is_empty() {
            return Err(Error::NoSuchProcess(self.pid));
        }
        Ok(())
    }

    /// Interrupts one thread (the main one if possible) and waits until it is stopped.
    fn stop_any_thread(&mut self, deadline: Instant) -> Result<i32> {
        if let Some((&tid, _)) = self.threads.iter().find(|(_, t)| t.state == State::Stopped) {
            return Ok(tid);
        }
        loop {
            let tid = if self.threads.contains_key(&self.pid) {
                self.pid
            } else {
                *self.threads.keys().next().ok_or_else(|| self.exited_error())?
            };
            let exited = self.exited_error();
            let t = self.threads.get_mut(&tid).ok_or(exited)?;
            if t.state == State::Stopped {
                return Ok(tid);
            }
            if !t.interrupt_pending {
                t.interrupt_pending = true;
                if sys::interrupt(tid).is_err() {
                    // Gone meanwhile; try another thread.
                    self.threads.remove(&tid);
                    if self.threads.is_empty() {
                        return Err(self.exited_error());
                    }
                    continue;
                }
            }
            loop {
                match self.next(Some(deadline), false)? {
                    Some(Ev::Interrupted { tid: t }) if t == tid => return Ok(tid),
                    Some(Ev::Interrupted { tid: other }) => self.resume(other, 0)?,
                    Some(Ev::Trap { tid: t, .. }) => {
                        // Only possible once breakpoints exist: not in this phase.
                        self.resume(t, 0)?;
                    }
                    Some(Ev::Gone) if !self.threads.contains_key(&tid) => break,
                    Some(Ev::Exec) => return Err(self.exited_error()),
                    Some(_) => {}
                    None => {
                        return Err(Error::Timeout {
                            secs: self.opts.timeout.as_secs_f64(),
                            what: format!("waiting for thread {tid} of process {} to stop", self.pid),
                        })
                    }
                }
            }
        }
    }

    fn resume(&mut self, tid: i32, sig: i32) -> Result<()> {
        let resumed = if self.syscall_mode == Some(tid) { sys::cont_syscall(tid, sig) } else { sys::cont(tid, sig) };
        match resumed {
            Ok(()) => {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.state = State::Running;
                }
                Ok(())
            }
            // Killed meanwhile: its exit status will tell.
            Err(Error::Ptrace { errno: nix::errno::Errno::ESRCH, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    // ---- breakpoints ---------------------------------------------------------------

    fn insert_breakpoints(&mut self, via: i32) -> Result<()> {
        let points: Vec<u64> = self.syms.safe_points.iter().map(|(a, _)| *a).collect();
        let mut arm = Vec::new();
        for addr in points {
            if self.bps.iter().any(|b| b.addr == addr) || arm.iter().any(|&(a, _)| a == addr) {
                continue;
            }
            let original = match self.known.get(&addr) {
                Some(&b) => b,
                None => sys::peek_byte(via, addr)?,
            };
            if original == arch::BREAKPOINT {
                // Someone else's breakpoint (or a function starting with int3): leave it.
                continue;
            }
            if !self.known.contains_key(&addr) && self.known.len() >= cave::MAX_BREAKPOINTS {
                // The handler knows only so many: an int3 it could not undo is never armed.
                continue;
            }
            self.known.insert(addr, original);
            arm.push((addr, original));
        }
        // The handler learns of every int3 before it exists.
        let table: Vec<(u64, u8)> = self.known.iter().map(|(&a, &b)| (a, b)).collect();
        self.cave()?.set_breakpoints(self.pid, &table)?;
        for (addr, original) in arm {
            // Record first, so a failure between the two leaves nothing unrecorded.
            self.bps.push(Breakpoint { addr, original });
            if let Err(e) = sys::poke_byte(via, addr, arch::BREAKPOINT) {
                self.bps.pop();
                return Err(e);
            }
        }
        Ok(())
    }

    fn remove_breakpoints(&mut self, via: i32) -> Result<()> {
        while let Some(bp) = self.bps.last() {
            sys::poke_byte(via, bp.addr, bp.original)?;
            self.bps.pop();
        }
        Ok(())
    }

    /// Puts the original bytes back in a forked child's copy of our memory.
    fn clean_child(&mut self, child: i32) {
        for (&addr, &original) in &self.known {
            if sys::peek_byte(child, addr).ok() == Some(arch::BREAKPOINT) {
                let _ = sys::poke_byte(child, addr, original);
            }
        }
    }

    // ---- events --------------------------------------------------------------------

    /// Waits for the next event a phase cares about; everything else (new threads, forks,
    /// signals for other threads, late traps) is handled here. None on timeout.
    fn next(&mut self, deadline: Option<Instant>, honour_cancel: bool) -> Result<Option<Ev>> {
        let mut pause = Duration::from_micros(20);
        loop {
            if honour_cancel && self.cancelled() {
                return Err(Error::Interrupted(self.pid));
            }
            match self.next_status(true) {
                Ok(Some(w)) => {
                    pause = Duration::from_micros(20);
                    if let Some(ev) = self.absorb(w)? {
                        return Ok(Some(ev));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(Error::Ptrace { errno: nix::errno::Errno::ECHILD, .. }) => {
                    self.exited = true;
                    self.threads.clear();
                    return Err(self.exited_error());
                }
                Err(e) => return Err(e),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    /// The next status of a traced thread, consumed, in an order that leaves nothing to
    /// us at any instant. The kernel forgets the signal of a stop once its status is
    /// consumed: a thread stopped on one of our int3s (pc just past it) whose status we
    /// had collected would, if we died then, run on from the middle of the instruction the
    /// int3 replaced. So its pc is moved back onto the breakpoint *before* the status is
    /// consumed: dying before that, the SIGTRAP is still due and the cave's handler
    /// rewinds it; dying after, the thread runs into the int3 again and the handler sees
    /// it then; dying in between, the handler finds pc already on a breakpoint. Likewise
    /// a signal for a thread we have no reason to hold is delivered by resuming the thread
    /// with it, never consumed first (`deliver`, except while parking threads to detach).
    /// Returns None when no status is pending, or when the status was handled here.
    fn next_status(&mut self, deliver: bool) -> Result<Option<Status>> {
        let Some(w) = sys::peek_any()? else { return Ok(None) };
        if let Wait::Stopped { tid, sig, event: 0 } = w {
            if sig == libc::SIGTRAP {
                if let Some(addr) = self.stopped_on_our_int3(tid) {
                    if let Ok(mut regs) = sys::getregs(tid) {
                        arch::set_pc(&mut regs, addr);
                        sys::setregs(tid, regs)?;
                        sys::reap(tid);
                        if let Some(t) = self.threads.get_mut(&tid) {
                            t.state = State::Stopped;
                        }
                        return Ok(Some(Status::Breakpoint { tid, addr }));
                    }
                }
            } else if deliver
                && sig != sys::SYSCALL_STOP
                && !(self.focus == Some(tid) && is_fault(sig))
                && (self.threads.contains_key(&tid) || self.children.contains_key(&tid))
            {
                // Resuming with the signal consumes the stop: nothing to reap.
                self.resume(tid, sig)?;
                return Ok(None);
            }
        }
        let tid = match w {
            Wait::Exited(tid) | Wait::Stopped { tid, .. } => tid,
        };
        sys::reap(tid);
        Ok(Some(Status::Wait(w)))
    }

    /// The breakpoint address, if `tid` is in a signal-delivery stop for one of our int3s.
    fn stopped_on_our_int3(&self, tid: i32) -> Option<u64> {
        let regs = sys::getregs(tid).ok()?;
        let addr = arch::pc(&regs).wrapping_sub(arch::BREAKPOINT_LEN);
        (self.known.contains_key(&addr) && sys::si_code(tid).ok() == Some(arch::BREAKPOINT_SI_CODE)).then_some(addr)
    }

    fn is_thread_of_target(&self, tid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{}/task/{tid}", self.pid)).exists()
    }

    fn absorb(&mut self, w: Status) -> Result<Option<Ev>> {
        let w = match w {
            Status::Breakpoint { tid, addr } => {
                if self.children.contains_key(&tid) {
                    // A forked child that ran into its copy of an int3 before we cleaned it.
                    self.clean_child(tid);
                    let _ = sys::cont(tid, 0);
                    return Ok(None);
                }
                if self.bps.iter().any(|b| b.addr == addr) && self.bps_wanted {
                    return Ok(Some(Ev::Trap { tid, addr }));
                }
                // An int3 that is already gone: run the real instruction.
                self.resume(tid, 0)?;
                return Ok(None);
            }
            Status::Wait(w) => w,
        };
        match w {
            Wait::Exited(tid) => {
                if self.children.remove(&tid).is_some() {
                    return Ok(None);
                }
                self.threads.remove(&tid);
                if tid == self.pid {
                    self.exited = true;
                }
                if self.stepping == Some(tid) {
                    self.stepping = None;
                }
                if self.threads.is_empty() || self.focus == Some(tid) {
                    self.exited = true;
                    return Err(self.exited_error());
                }
                Ok(Some(Ev::Gone))
            }
            Wait::Stopped { tid, sig, event } => {
                if let Some(&vfork) = self.children.get(&tid) {
                    return self.absorb_child(tid, sig, event, vfork);
                }
                if !self.threads.contains_key(&tid) {
                    if self.is_thread_of_target(tid) {
                        // A new thread whose first stop came before its parent's event.
                        self.threads.insert(tid, Thread { state: State::Stopped, interrupt_pending: false });
                    } else {
                        // A forked child whose first stop came before the parent's event.
                        self.children.insert(tid, false);
                        return self.absorb_child(tid, sig, event, false);
                    }
                }
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.state = State::Stopped;
                }
                self.absorb_thread(tid, sig, event)
            }
        }
    }

    fn absorb_child(&mut self, child: i32, sig: i32, event: i32, vfork: bool) -> Result<Option<Ev>> {
        if event == libc::PTRACE_EVENT_STOP {
            // Its first stop: a fork child has its own copy of our int3s; a vfork child
            // shares the parent's memory, where they were removed at the vfork.
            if !vfork {
                self.clean_child(child);
            }
            let _ = sys::detach(child, 0);
            self.children.remove(&child);
            self.released.insert(child);
            self.log(&format!("let go of forked child {child}"));
        } else {
            let deliver = if event == 0 { sig } else { 0 };
            let _ = sys::cont(child, deliver);
        }
        Ok(None)
    }

    fn absorb_thread(&mut self, tid: i32, sig: i32, event: i32) -> Result<Option<Ev>> {
        match event {
            0 => {
                if sig == sys::SYSCALL_STOP {
                    if self.syscall_mode == Some(tid) {
                        return Ok(Some(Ev::Syscall { tid }));
                    }
                    // A stop left over from a PTRACE_SYSCALL resume: nothing to deliver.
                    self.resume(tid, 0)?;
                    return Ok(None);
                }
                if sig == libc::SIGTRAP && self.stepping == Some(tid) && sys::si_code(tid)? != arch::BREAKPOINT_SI_CODE {
                    self.stepping = None;
                    return Ok(Some(Ev::Stepped { tid }));
                }
                if self.focus == Some(tid) {
                    return Ok(Some(Ev::Signal { tid, sig }));
                }
                // Someone else's signal: deliver it.
                self.resume(tid, sig)?;
                Ok(None)
            }
            libc::PTRACE_EVENT_CLONE => {
                let new = sys::event_msg(tid)? as i32;
                self.threads.entry(new).or_insert(Thread { state: State::Running, interrupt_pending: false });
                self.resume(tid, 0)?;
                Ok(None)
            }
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                let child = sys::event_msg(tid)? as i32;
                let vfork = event == libc::PTRACE_EVENT_VFORK;
                // (If its first stop came first, it was already handled as a fork child's.)
                if !self.released.contains(&child) {
                    self.children.entry(child).or_insert(vfork);
                }
                if vfork && !self.bps.is_empty() {
                    // The child runs in our memory until it execs: no int3 may be there.
                    self.remove_breakpoints(tid)?;
                    self.suspended_for_vfork.insert(tid);
                    self.log("breakpoints lifted while a vfork child runs");
                }
                self.resume(tid, 0)?;
                Ok(None)
            }
            libc::PTRACE_EVENT_VFORK_DONE => {
                if self.suspended_for_vfork.remove(&tid) && self.bps_wanted && self.suspended_for_vfork.is_empty() {
                    self.insert_breakpoints(tid)?;
                }
                self.resume(tid, 0)?;
                Ok(None)
            }
            libc::PTRACE_EVENT_EXEC => {
                // The old image (and every int3 in it) is gone; so are the other threads.
                self.execed = true;
                self.bps.clear();
                self.known.clear();
                let others: Vec<i32> = self.threads.keys().copied().filter(|&t| t != tid).collect();
                for t in others {
                    self.threads.remove(&t);
                }
                Ok(Some(Ev::Exec))
            }
            libc::PTRACE_EVENT_STOP => {
                let group_stop = matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU);
                let pending = self.threads.get(&tid).is_some_and(|t| t.interrupt_pending);
                if pending {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.interrupt_pending = false;
                    }
                    return Ok(Some(Ev::Interrupted { tid }));
                }
                if group_stop {
                    // Job control stopped the process: stay out of its way.
                    let _ = sys::listen(tid);
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.state = State::Running;
                    }
                    return Ok(None);
                }
                // A new thread's first stop.
                self.resume(tid, 0)?;
                Ok(None)
            }
            _ => {
                self.resume(tid, 0)?;
                Ok(None)
            }
        }
    }

    // ---- the safe point ------------------------------------------------------------

    fn wait_for_safe_point(&mut self, deadline: Instant) -> Result<(i32, u64)> {
        loop {
            match self.next(Some(deadline), true)? {
                Some(Ev::Trap { tid, addr }) => {
                    if self.called_from_loader(tid)? {
                        self.log(&format!("thread {tid} stopped inside the dynamic loader: stepping it past"));
                        self.step_past(tid, addr, deadline)?;
                        continue;
                    }
                    return Ok((tid, addr));
                }
                Some(Ev::Exec) => return Err(self.exited_error()),
                Some(Ev::Interrupted { tid }) | Some(Ev::Stepped { tid }) | Some(Ev::Signal { tid, .. }) | Some(Ev::Syscall { tid }) => {
                    self.resume(tid, 0)?;
                }
                Some(Ev::Gone) => {}
                None => {
                    return Err(Error::Timeout {
                        secs: self.opts.timeout.as_secs_f64(),
                        what: format!(
                            "waiting for process {} to reach a safe point: it ran no Python code and made no \
                             allocation (blocked in a lock or a long system call?); try again, or raise --timeout",
                            self.pid
                        ),
                    })
                }
            }
        }
    }

    /// True when the function was called from ld.so: the thread is inside dlopen (or
    /// similar) and holds the loader lock, so calling dlopen there is not safe.
    fn called_from_loader(&self, tid: i32) -> Result<bool> {
        let Some((lo, hi)) = self.syms.loader_range else { return Ok(false) };
        let regs = sys::getregs(tid)?;
        let ret = arch::entry_return_address(tid, &regs)?;
        Ok((lo..hi).contains(&ret))
    }

    /// Lets a thread run the instruction under one of our int3s, then puts them back.
    fn step_past(&mut self, tid: i32, addr: u64, deadline: Instant) -> Result<()> {
        self.remove_breakpoints(tid)?;
        let mut regs = sys::getregs(tid)?;
        arch::set_pc(&mut regs, addr);
        sys::setregs(tid, regs)?;
        self.stepping = Some(tid);
        sys::singlestep(tid)?;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.state = State::Running;
        }
        loop {
            match self.next(Some(deadline.max(Instant::now() + Duration::from_secs(1))), false)? {
                Some(Ev::Stepped { tid: t }) if t == tid => break,
                Some(Ev::Interrupted { tid: t }) | Some(Ev::Signal { tid: t, .. }) => self.resume(t, 0)?,
                Some(Ev::Trap { tid: t, .. }) => self.resume(t, 0)?,
                Some(Ev::Exec) => return Err(self.exited_error()),
                Some(_) => {}
                None => return Err(Error::Timeout { secs: 1.0, what: "single-stepping a thread".into() }),
            }
            if !self.threads.contains_key(&tid) {
                return Ok(());
            }
        }
        self.insert_breakpoints(tid)?;
        self.resume(tid, 0)
    }

    // ---- remote memory and registers -----------------------------------------------

    /// Writes into the stopped thread's stack: process_vm_writev, else word by word.
    fn write_mem(&self, tid: i32, addr: u64, data: &[u8]) -> Result<()> {
        if memory::write(self.pid, addr, data).is_ok() {
            return Ok(());
        }
        for (i, b) in data.iter().enumerate() {
            sys::poke_byte(tid, addr + i as u64, *b)?;
        }
        Ok(())
    }

    fn restore_focus(&mut self) -> Result<()> {
        if let Some((tid, regs, mut fp)) = self.saved.take() {
            sys::setregs(tid, regs)?;
            arch::restore_fp(tid, &mut fp)?;
        }
        Ok(())
    }

    // ---- letting go ----------------------------------------------------------------

    fn cleanup(&mut self) -> Result<()> {
        self.bps_wanted = false;
        let mut first_error: Option<Error> = None;
        let mut note = |e: Error| {
            if first_error.is_none() {
                first_error = Some(e);
            }
        };
        if !self.exited {
            if !self.bps.is_empty() {
                let deadline = Instant::now() + Duration::from_secs(5);
                match self.stop_any_thread(deadline) {
                    Ok(tid) => {
                        if let Err(e) = self.remove_breakpoints(tid) {
                            note(e);
                        }
                    }
                    Err(e) => note(e),
                }
            }
            if let Err(e) = self.restore_focus() {
                note(e);
            }
            if let Err(e) = self.detach_all() {
                note(e);
            }
        }
        match first_error {
            Some(e) if !self.exited => Err(e),
            _ => Ok(()),
        }
    }

    /// Stops every thread, puts the program's SIGTRAP disposition back once none of them
    /// can still run into an int3 of ours, then detaches them all.
    fn detach_all(&mut self) -> Result<()> {
        // Signals to deliver to each parked thread when it is let go.
        let mut parked: BTreeMap<i32, i32> = BTreeMap::new();
        let running: Vec<i32> =
            self.threads.iter().filter(|(_, t)| t.state == State::Running && !t.interrupt_pending).map(|(&k, _)| k).collect();
        for tid in running {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.interrupt_pending = true;
            }
            if sys::interrupt(tid).is_err() {
                self.threads.remove(&tid);
            }
        }
        for (&tid, t) in &self.threads {
            if t.state == State::Stopped {
                parked.insert(tid, 0);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut all_stopped = true;
        while self.threads.keys().any(|t| !parked.contains_key(t)) || !self.children.is_empty() {
            let w = match self.next_status(false) {
                Ok(Some(Status::Breakpoint { tid, .. })) => {
                    // Already moved back onto the restored instruction: nothing to deliver.
                    if self.children.remove(&tid).is_some() {
                        self.clean_child(tid);
                        let _ = sys::detach(tid, 0);
                        self.released.insert(tid);
                    } else {
                        parked.insert(tid, 0);
                    }
                    continue;
                }
                Ok(Some(Status::Wait(w))) => w,
                Ok(None) => {
                    if Instant::now() >= deadline {
                        // Threads in uninterruptible sleep: our exit detaches them.
                        all_stopped = false;
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                Err(_) => {
                    all_stopped = false;
                    break;
                }
            };
            match w {
                Wait::Exited(tid) => {
                    self.threads.remove(&tid);
                    self.children.remove(&tid);
                    parked.remove(&tid);
                }
                Wait::Stopped { tid, sig, event } => {
                    if let Some(&vfork) = self.children.get(&tid) {
                        if event == libc::PTRACE_EVENT_STOP {
                            if !vfork {
                                self.clean_child(tid);
                            }
                            let _ = sys::detach(tid, 0);
                            self.children.remove(&tid);
                            self.released.insert(tid);
                        } else {
                            let _ = sys::cont(tid, if event == 0 { sig } else { 0 });
                        }
                        continue;
                    }
                    if !self.threads.contains_key(&tid) {
                        if self.is_thread_of_target(tid) {
                            // A new thread whose first stop came before its parent's event.
                            self.threads.insert(tid, Thread { state: State::Stopped, interrupt_pending: false });
                            parked.insert(tid, 0);
                        } else {
                            // A child forked just now, first stop before its parent's event.
                            self.clean_child(tid);
                            let _ = sys::detach(tid, 0);
                            self.released.insert(tid);
                        }
                        continue;
                    }
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.state = State::Stopped;
                    }
                    match event {
                        libc::PTRACE_EVENT_CLONE => {
                            if let Ok(new) = sys::event_msg(tid) {
                                self.threads.entry(new as i32).or_insert(Thread { state: State::Running, interrupt_pending: true });
                            }
                        }
                        libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                            if let Ok(child) = sys::event_msg(tid) {
                                if !self.released.contains(&(child as i32)) {
                                    self.children.entry(child as i32).or_insert(event == libc::PTRACE_EVENT_VFORK);
                                }
                            }
                        }
                        0 if sig != sys::SYSCALL_STOP && !(sig == libc::SIGTRAP && self.stepping == Some(tid)) => {
                            // Its stop is consumed, so the kernel no longer holds the signal:
                            // make it pending again at once, to be delivered when the thread
                            // runs, whether we let it go or die first.
                            sys::tgkill(self.pid, tid, sig);
                        }
                        _ => {}
                    }
                    parked.insert(tid, 0);
                }
            }
        }
        if self.handler_installed && all_stopped {
            self.restore_trap_disposition(&parked);
        }
        for (tid, sig) in parked {
            self.detach_one(tid, sig);
        }
        for tid in self.threads.keys().copied().collect::<Vec<_>>() {
            self.detach_one(tid, 0);
        }
        Ok(())
    }

    /// Every thread is stopped and none has a trap of ours pending: the handler is no
    /// longer needed. Run in a thread that is not in a system call if there is one, so no
    /// restart needs emulating.
    fn restore_trap_disposition(&mut self, parked: &BTreeMap<i32, i32>) {
        let in_user_mode = |tid: &i32| sys::getregs(*tid).is_ok_and(|r| arch::syscall_nr(&r) < 0);
        let Some(tid) = parked.keys().copied().find(in_user_mode).or_else(|| parked.keys().copied().next()) else { return };
        self.test_pause("restore");
        let act = self.program_act;
        // Other threads are parked: only `tid` runs, and only the stub.
        match self.remote_sigaction(tid, &act, false) {
            Ok(_) => {
                self.handler_installed = false;
                self.log("SIGTRAP disposition put back");
            }
            Err(e) => self.log(&format!("could not put the SIGTRAP disposition back ({e}); our handler stays, harmless")),
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.state = State::Stopped;
        }
    }

    fn detach_one(&mut self, tid: i32, sig: i32) {
        let _ = sys::detach(tid, sig);
        self.threads.remove(&tid);
    }
}

/// A signal raised by the faulting instruction itself: in the thread running our code, it
/// means that code crashed. Any other signal is delivered as it comes, also while that
/// thread runs our code (the program's handler then runs on top of it, as it would on top
/// of any function): held back, it would be lost if we died.
fn is_fault(sig: i32) -> bool {
    matches!(sig, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGABRT | libc::SIGSYS)
}

fn c_string(bytes: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = bytes.iter().copied().take_while(|&b| b != 0).collect();
    v.push(0);
    v
}

fn name_of(syms: &Symbols, addr: u64) -> String {
    syms.safe_points.iter().find(|(a, _)| *a == addr).map(|(_, n)| n.clone()).unwrap_or_else(|| format!("{addr:#x}"))
}

/// What the call sequence left in its block.
struct CallResults {
    handle: u64,
    entry: u64,
    result: u64,
    /// dlerror()'s text, when dlopen failed.
    error: u64,
}

#[cfg(test)]
mod tests;
