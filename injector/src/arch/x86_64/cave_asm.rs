//! The cave's code for x86-64 (see [`crate::cave`] for what each piece does), assembled
//! into our own read-only data (we never run it) for the tracer to copy into the target.
//!
//! The call sequence is entered with `rbx` pointing at its block (offsets in [`block`]);
//! both tails restore the registers from the area `regs::saved_area` lays out.

use crate::arch::Label;

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

/// Pops what `regs::saved_area` lays out: 15 general registers and rflags (the rsp to
/// load comes next, popped by the caller of this macro).
macro_rules! restore_registers {
    () => {
        "pop r15\npop r14\npop r13\npop r12\npop r11\npop r10\npop r9\npop r8\n\
         pop rdi\npop rsi\npop rbp\npop rbx\npop rdx\npop rcx\npop rax\npopfq"
    };
}

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
pub fn cave_label(label: Label) -> u64 {
    // SAFETY: taking the address of an assembled label (no read).
    let label: &'static u8 = unsafe {
        match label {
            Label::Call => &memray_cave_call,
            Label::CallDone => &memray_cave_call_done,
            Label::Syscall => &memray_cave_syscall,
            Label::SyscallDone => &memray_cave_syscall_done,
            Label::Handler => &memray_cave_handler,
            Label::Restorer => &memray_cave_restorer,
            Label::ResumePc => &memray_cave_resume_rip,
            Label::OldAct => &memray_cave_old_act,
            Label::BpCount => &memray_cave_bp_count,
            Label::BpTable => &memray_cave_bp_table,
        }
    };
    // Only the addresses of the assembled labels are taken, never their contents.
    let begin = std::ptr::addr_of!(memray_cave_begin) as u64;
    label as *const u8 as u64 - begin
}

/// The assembled image, as it goes into the target (data fields zero).
pub fn cave_image() -> &'static [u8] {
    // SAFETY: `memray_cave_begin..memray_cave_end` is one contiguous run of bytes in our
    // read-only data, emitted by the global_asm! block above.
    unsafe {
        let begin = std::ptr::addr_of!(memray_cave_begin);
        let end = std::ptr::addr_of!(memray_cave_end);
        std::slice::from_raw_parts(begin, end as usize - begin as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syscall_instruction_ends_right_before_each_done_label() {
        // `getpid; syscall` right before the done labels: a live tracer's marker.
        let img = cave_image();
        let done = cave_label(Label::CallDone) as usize;
        assert_eq!(&img[done - 2..done], &[0x0f, 0x05]);
        let done = cave_label(Label::SyscallDone) as usize;
        assert_eq!(&img[done - 2..done], &[0x0f, 0x05]);
    }
}
