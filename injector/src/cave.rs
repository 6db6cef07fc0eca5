//! The code the target runs on our behalf, placed where it can run without us.
//!
//! The attacher may die at any instant (SIGKILL, OOM, a closed terminal). When a tracer
//! dies the kernel detaches its tracees and lets them run exactly as they are, so nothing
//! we leave in the target may need us to be undone. This module provides the three pieces
//! of code that make that true; they live in a *code cave*: the unused tail of the last
//! page of an executable segment the target already maps (bytes past the segment's end,
//! part of no section, never executed or read by the program). Writing there with
//! `/proc/PID/mem` gives the target a private copy of that one page; nothing else changes.
//!
//! - **The call sequence** (`call`): entered at a function entry (the safe point) with
//!   `rbx` pointing at a block on the thread's own stack, it calls `dlopen`, `dlsym` and
//!   the entry, stores the results in the block, makes a `getpid` system call (where a
//!   live tracer takes the thread back, under `PTRACE_SYSCALL`) and then restores every
//!   general register from the block and returns to the interrupted function's entry. A
//!   tracer that dies anywhere in between leaves a thread that finishes the attach and
//!   carries on by itself.
//! - **The system-call stub** (`syscall`): one system call at an arbitrary point of a
//!   thread (here, `rt_sigaction`), then the same self-restoring tail, ending with a jump
//!   through `resume_rip`.
//! - **The SIGTRAP handler** (`handler`), installed while our int3s are armed: a thread
//!   that runs into one after the tracer died gets a SIGTRAP the kernel now delivers. The
//!   handler writes every original byte back (through `/proc/self/mem`), moves the thread
//!   back onto the restored instruction (unless the tracer already had: rip is then on a
//!   breakpoint rather than just past one) and returns; a single step left armed is
//!   cleared; any other SIGTRAP gets the program's own disposition back and is raised
//!   again, so the program sees it as it would have. A live tracer sees every SIGTRAP
//!   first and suppresses ours, so the handler runs only after the tracer's death. The
//!   tracer puts the program's disposition back before it detaches.
//!
//! The code is assembled here, into our own read-only data (we never run it), and copied.

use crate::error::{Error, Result};
use crate::memory;
use crate::proc::{self, Mapping};

/// At most this many breakpoints are known to the handler.
pub const MAX_BREAKPOINTS: usize = 32;

/// Offsets in the call-sequence block (`rbx`), shared with the assembly below.
pub mod block {
    pub const DLOPEN: usize = 0x00;
    pub const DLSYM: usize = 0x08;
    pub const DLERROR: usize = 0x10;
    pub const PATH: usize = 0x18;
    pub const FLAGS: usize = 0x20;
    pub const ARG: usize = 0x28;
    pub const HANDLE: usize = 0x30;
    pub const ENTRY: usize = 0x38;
    pub const RESULT: usize = 0x40;
    pub const ERROR: usize = 0x48;
    pub const SAVED: usize = 0x60;
    pub const SYMBOL: usize = 0xf0;
    pub const SYMBOL_MAX: usize = 0x40;
    pub const STRINGS: usize = 0x130;
}

/// The saved-register area both tails pop: 15 general registers, rflags, rsp.
pub const SAVED_LEN: usize = 17 * 8;

/// Pops what `tracer::saved_area` lays out: 15 general registers and rflags (the rsp to
/// load comes next, popped by the caller of this macro).
macro_rules! restore_registers {
    () => {
        "pop r15\npop r14\npop r13\npop r12\npop r11\npop r10\npop r9\npop r8\n\
         pop rdi\npop rsi\npop rbp\npop rbx\npop rdx\npop rcx\npop rax\npopfq"
    };
}

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .rodata.memray_cave,\"a\",@progbits",
    ".balign 16",
    ".globl memray_cave_begin",
    ".hidden memray_cave_begin",
    "memray_cave_begin:",
    // ---- the call sequence ----
    ".globl memray_cave_call",
    ".hidden memray_cave_call",
    "memray_cave_call:",
    "mov rdi, qword ptr [rbx + 0x18]",
    "mov esi, dword ptr [rbx + 0x20]",
    "call qword ptr [rbx + 0x00]",
    "mov qword ptr [rbx + 0x30], rax",
    "test rax, rax",
    "jz memray_cave_call_failed",
    "mov rdi, rax",
    "lea rsi, [rbx + 0xf0]",
    "call qword ptr [rbx + 0x08]",
    "mov qword ptr [rbx + 0x38], rax",
    "test rax, rax",
    "jz memray_cave_call_report",
    "mov rdi, qword ptr [rbx + 0x28]",
    "call rax",
    "mov qword ptr [rbx + 0x40], rax",
    "jmp memray_cave_call_report",
    "memray_cave_call_failed:",
    "call qword ptr [rbx + 0x10]",
    "mov qword ptr [rbx + 0x48], rax",
    "memray_cave_call_report:",
    "mov eax, 39",
    "syscall",
    ".globl memray_cave_call_done",
    ".hidden memray_cave_call_done",
    "memray_cave_call_done:",
    "lea rsp, [rbx + 0x60]",
    restore_registers!(),
    // rsp = the entry's rsp - 8, where the entry's own address was stored: ret lands there
    // with rsp exactly as it was.
    "pop rsp",
    "ret",
    // ---- one system call anywhere ----
    ".globl memray_cave_syscall",
    ".hidden memray_cave_syscall",
    "memray_cave_syscall:",
    "syscall",
    ".globl memray_cave_syscall_done",
    ".hidden memray_cave_syscall_done",
    "memray_cave_syscall_done:",
    restore_registers!(),
    "pop rsp",
    "jmp qword ptr [rip + memray_cave_resume_rip]",
    // ---- SIGTRAP handler (rdi = signo, rsi = siginfo, rdx = ucontext) ----
    ".globl memray_cave_handler",
    ".hidden memray_cave_handler",
    "memray_cave_handler:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov r12, rdx",
    "mov eax, dword ptr [rsi + 8]",
    "cmp eax, 2", // TRAP_TRACE: a single step whose tracer is gone
    "je memray_cave_handler_step",
    "cmp eax, 0x80", // SI_KERNEL: an int3
    "jne memray_cave_handler_foreign",
    "mov rbx, qword ptr [r12 + 168]", // uc_mcontext.gregs[REG_RIP]
    "dec rbx",
    "lea r14, [rip + memray_cave_bp_table]",
    "mov r15, qword ptr [rip + memray_cave_bp_count]",
    "memray_cave_handler_search:",
    "test r15, r15",
    "jz memray_cave_handler_on_bp",
    "cmp qword ptr [r14], rbx",
    "je memray_cave_handler_ours",
    "add r14, 16",
    "dec r15",
    "jmp memray_cave_handler_search",
    // Not just past one of ours: maybe already on one (a tracer that moved the thread
    // back and died before consuming the stop). Then rip stays where it is.
    "memray_cave_handler_on_bp:",
    "cmp rbx, qword ptr [r12 + 168]",
    "je memray_cave_handler_foreign",
    "mov rbx, qword ptr [r12 + 168]",
    "lea r14, [rip + memray_cave_bp_table]",
    "mov r15, qword ptr [rip + memray_cave_bp_count]",
    "jmp memray_cave_handler_search",
    "memray_cave_handler_ours:",
    "mov eax, 2", // open("/proc/self/mem", O_RDWR)
    "lea rdi, [rip + memray_cave_mem_path]",
    "mov esi, 2",
    "xor edx, edx",
    "syscall",
    "test rax, rax",
    "js memray_cave_handler_foreign",
    "mov r13, rax",
    "lea r14, [rip + memray_cave_bp_table]",
    "mov r15, qword ptr [rip + memray_cave_bp_count]",
    "memray_cave_handler_restore:",
    "test r15, r15",
    "jz memray_cave_handler_restored",
    "mov eax, 18", // pwrite64(fd, &original, 1, addr)
    "mov rdi, r13",
    "lea rsi, [r14 + 8]",
    "mov edx, 1",
    "mov r10, qword ptr [r14]",
    "syscall",
    "add r14, 16",
    "dec r15",
    "jmp memray_cave_handler_restore",
    "memray_cave_handler_restored:",
    "mov eax, 3", // close(fd)
    "mov rdi, r13",
    "syscall",
    "mov qword ptr [r12 + 168], rbx",
    "jmp memray_cave_handler_out",
    "memray_cave_handler_step:",
    "and qword ptr [r12 + 176], -257", // gregs[REG_EFL] &= ~TF
    "jmp memray_cave_handler_out",
    "memray_cave_handler_foreign:",
    "mov eax, 13", // rt_sigaction(SIGTRAP, &old, NULL, 8)
    "mov edi, 5",
    "lea rsi, [rip + memray_cave_old_act]",
    "xor edx, edx",
    "mov r10d, 8",
    "syscall",
    "mov eax, 39", // tgkill(getpid(), gettid(), SIGTRAP): pending until we return
    "syscall",
    "mov r13, rax",
    "mov eax, 186",
    "syscall",
    "mov rsi, rax",
    "mov rdi, r13",
    "mov edx, 5",
    "mov eax, 234",
    "syscall",
    "memray_cave_handler_out:",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    ".globl memray_cave_restorer",
    ".hidden memray_cave_restorer",
    "memray_cave_restorer:",
    "mov eax, 15", // rt_sigreturn
    "syscall",
    // ---- data (read-only for the target: the tracer writes it through /proc/PID/mem) ----
    ".balign 8",
    ".globl memray_cave_resume_rip",
    ".hidden memray_cave_resume_rip",
    "memray_cave_resume_rip:",
    ".quad 0",
    ".globl memray_cave_old_act",
    ".hidden memray_cave_old_act",
    "memray_cave_old_act:",
    ".quad 0, 0, 0, 0",
    ".globl memray_cave_bp_count",
    ".hidden memray_cave_bp_count",
    "memray_cave_bp_count:",
    ".quad 0",
    ".globl memray_cave_bp_table",
    ".hidden memray_cave_bp_table",
    "memray_cave_bp_table:",
    ".zero 512",
    "memray_cave_mem_path:",
    ".asciz \"/proc/self/mem\"",
    ".balign 8",
    ".globl memray_cave_end",
    ".hidden memray_cave_end",
    "memray_cave_end:",
    ".popsection",
);

extern "C" {
    static memray_cave_begin: u8;
    static memray_cave_call: u8;
    static memray_cave_call_done: u8;
    static memray_cave_syscall: u8;
    static memray_cave_syscall_done: u8;
    static memray_cave_handler: u8;
    static memray_cave_restorer: u8;
    static memray_cave_resume_rip: u8;
    static memray_cave_old_act: u8;
    static memray_cave_bp_count: u8;
    static memray_cave_bp_table: u8;
    static memray_cave_end: u8;
}

/// A label's offset from the start of the image.
fn offset(label: &'static u8) -> u64 {
    // Only the addresses of the assembled labels are taken, never their contents.
    let begin = std::ptr::addr_of!(memray_cave_begin) as u64;
    label as *const u8 as u64 - begin
}

/// The assembled image, as it goes into the target (data fields zero).
pub fn image() -> &'static [u8] {
    // SAFETY: `memray_cave_begin..memray_cave_end` is one contiguous run of bytes in our
    // read-only data, emitted by the global_asm! block above.
    unsafe {
        let begin = std::ptr::addr_of!(memray_cave_begin);
        let end = std::ptr::addr_of!(memray_cave_end);
        std::slice::from_raw_parts(begin, end as usize - begin as usize)
    }
}

/// The image placed at `addr` in the target: where each piece is.
#[derive(Debug, Clone, Copy)]
pub struct Cave {
    pub addr: u64,
}

macro_rules! at {
    ($name:ident, $label:ident) => {
        pub fn $name(&self) -> u64 {
            // SAFETY: taking the address of an assembled label (no read).
            self.addr + offset(unsafe { &$label })
        }
    };
}

impl Cave {
    at!(call, memray_cave_call);
    at!(call_done, memray_cave_call_done);
    at!(syscall, memray_cave_syscall);
    at!(syscall_done, memray_cave_syscall_done);
    at!(handler, memray_cave_handler);
    at!(restorer, memray_cave_restorer);
    at!(resume_rip, memray_cave_resume_rip);
    at!(old_act, memray_cave_old_act);
    at!(bp_count, memray_cave_bp_count);
    at!(bp_table, memray_cave_bp_table);

    pub fn len() -> u64 {
        image().len() as u64
    }

    pub fn contains(&self, addr: u64) -> bool {
        (self.addr..self.addr + Cave::len()).contains(&addr)
    }

    pub fn write(&self, pid: i32, addr: u64, bytes: &[u8]) -> Result<()> {
        memory::write_forced(pid, addr, bytes)
    }

    /// Tells the handler which int3s are ours: entries first, then the count, so the
    /// handler never reads an entry that is not written yet.
    pub fn set_breakpoints(&self, pid: i32, bps: &[(u64, u8)]) -> Result<()> {
        let n = bps.len().min(MAX_BREAKPOINTS);
        let mut table = Vec::with_capacity(n * 16);
        for &(addr, original) in &bps[..n] {
            table.extend_from_slice(&addr.to_le_bytes());
            table.extend_from_slice(&(original as u64).to_le_bytes());
        }
        self.write(pid, self.bp_table(), &table)?;
        self.write(pid, self.bp_count(), &(n as u64).to_le_bytes())
    }
}

/// What an earlier attacher left in the cave's data.
pub struct EarlierData {
    pub program_act: [u8; 32],
    pub breakpoints: Vec<(u64, u8)>,
}

/// The data of `bytes` read from the cave, if they hold our code (an earlier attach of
/// this same build).
pub fn earlier_data(bytes: &[u8]) -> Option<EarlierData> {
    let c = Cave { addr: 0 };
    let code = c.resume_rip() as usize;
    let img = image();
    if bytes.len() != img.len() || bytes[..code] != img[..code] {
        return None;
    }
    let word = |at: u64| u64::from_le_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap_or_default());
    let mut program_act = [0u8; 32];
    program_act.copy_from_slice(&bytes[c.old_act() as usize..c.old_act() as usize + 32]);
    let n = (word(c.bp_count()) as usize).min(MAX_BREAKPOINTS);
    let breakpoints = (0..n as u64).map(|i| (word(c.bp_table() + 16 * i), word(c.bp_table() + 16 * i + 8) as u8)).collect();
    Some(EarlierData { program_act, breakpoints })
}

/// Whether an attacher of ours died with its SIGTRAP handler installed in `pid` (our code
/// is in the cave and the process has a SIGTRAP handler): only the ptrace route puts the
/// program's own disposition back.
pub fn handler_left_behind(pid: i32) -> bool {
    let catches_sigtrap = proc::status(pid).is_ok_and(|s| s.caught & (1 << (libc::SIGTRAP - 1)) != 0);
    catches_sigtrap && find(pid).is_ok_and(|c| memory::read(pid, c.addr, image().len()).is_ok_and(|b| earlier_data(&b).is_some()))
}

/// Finds room for the image: the tail of the last page of an executable segment, in the
/// C library if it has room (every target maps it), else the dynamic loader, else any
/// other object. The same target always gets the same place, so a later attach writes
/// over an earlier one's image rather than leaving a second one.
pub fn find(pid: i32) -> Result<Cave> {
    let maps = proc::maps(pid)?;
    let need = Cave::len() + 16;
    let mut best: Option<(u32, Cave)> = None;
    for path in crate::elf::object_paths(&maps) {
        let name = crate::elf::basename(&path);
        let rank = if name.starts_with("libc.so") || name.starts_with("libc-") {
            0
        } else if name.starts_with("ld-linux") || name.starts_with("ld-") {
            1
        } else {
            2
        };
        if best.as_ref().is_some_and(|(r, _)| *r <= rank) {
            continue;
        }
        let Ok(obj) = crate::elf::Object::open(pid, &path, &maps) else { continue };
        for &end in &obj.exec_ends {
            if let Some(addr) = room_after(&maps, &path, end, need) {
                best = Some((rank, Cave { addr }));
                break;
            }
        }
    }
    best.map(|(_, c)| c).ok_or_else(|| Error::RemoteCall {
        pid,
        function: "the attach trampoline".into(),
        detail: format!("cannot be placed: no executable mapping of the process has {need} unused bytes"),
    })
}

/// The 16-aligned start of at least `need` unused bytes after `end` in the same
/// executable mapping of `path`.
fn room_after(maps: &[Mapping], path: &str, end: u64, need: u64) -> Option<u64> {
    let start = (end + 15) & !15;
    let m = maps.iter().find(|m| m.path == path && m.start <= end && end <= m.end && m.perms.starts_with("r-x"))?;
    let page_end = (end + 4095) & !4095;
    let limit = page_end.min(m.end);
    (limit >= start + need).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_labels_are_in_order_and_fit_a_page() {
        let c = Cave { addr: 0x1000 };
        assert!(c.call() < c.call_done() && c.call_done() < c.syscall() && c.syscall() < c.syscall_done());
        assert!(c.syscall_done() < c.handler() && c.handler() < c.restorer() && c.restorer() < c.resume_rip());
        assert_eq!(c.resume_rip() % 8, 0);
        assert_eq!(c.bp_table() - c.bp_count(), 8);
        assert!(Cave::len() < 2048, "image is {} bytes", Cave::len());
        // `getpid; syscall` right before the done labels: a live tracer's marker.
        let img = image();
        let done = (c.call_done() - c.addr) as usize;
        assert_eq!(&img[done - 2..done], &[0x0f, 0x05]);
        let done = (c.syscall_done() - c.addr) as usize;
        assert_eq!(&img[done - 2..done], &[0x0f, 0x05]);
    }

    #[test]
    fn earlier_data_is_read_back_only_from_our_own_code() {
        let c = Cave { addr: 0 };
        let mut bytes = image().to_vec();
        let put = |bytes: &mut Vec<u8>, at: u64, v: u64| bytes[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut bytes, c.old_act(), 0x1234);
        put(&mut bytes, c.bp_count(), 2);
        put(&mut bytes, c.bp_table(), 0x7000);
        put(&mut bytes, c.bp_table() + 8, 0xf3);
        put(&mut bytes, c.bp_table() + 16, 0x7100);
        put(&mut bytes, c.bp_table() + 24, 0x55);
        let data = earlier_data(&bytes).expect("our image");
        assert_eq!(data.breakpoints, vec![(0x7000, 0xf3), (0x7100, 0x55)]);
        assert_eq!(u64::from_le_bytes(data.program_act[..8].try_into().unwrap()), 0x1234);
        // A count past the table's end is clamped, not trusted.
        put(&mut bytes, c.bp_count(), u64::MAX);
        assert_eq!(earlier_data(&bytes).expect("our image").breakpoints.len(), MAX_BREAKPOINTS);
        // Anything else in the cave (zeros, another build's code) is not ours.
        assert!(earlier_data(&vec![0u8; bytes.len()]).is_none());
        bytes[0] ^= 1;
        assert!(earlier_data(&bytes).is_none());
    }

    #[test]
    fn finds_room_in_our_own_libc() {
        let cave = find(std::process::id() as i32).expect("a cave in this process");
        let maps = proc::maps(std::process::id() as i32).unwrap();
        let m = maps.iter().find(|m| m.start <= cave.addr && cave.addr < m.end).expect("mapped");
        assert!(m.perms.starts_with("r-x"));
        assert!(cave.addr + Cave::len() <= m.end);
    }
}
