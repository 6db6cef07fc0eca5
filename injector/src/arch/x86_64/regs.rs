//! The general registers as ptrace gives them, and what the tracer does with them.

use crate::error::Result;
use crate::sys;

pub use libc::user_regs_struct as Regs;

/// The System V ABI's red zone: the bytes below rsp a function may use without moving rsp.
const RED_ZONE: u64 = 128;

/// The instruction pointer (rip).
pub fn pc(regs: &Regs) -> u64 {
    regs.rip
}

pub fn set_pc(regs: &mut Regs, pc: u64) {
    regs.rip = pc;
}

/// The stack pointer (rsp).
pub fn sp(regs: &Regs) -> u64 {
    regs.rsp
}

/// What a function or a system call returned (rax).
pub fn return_value(regs: &Regs) -> u64 {
    regs.rax
}

/// The system call the thread is stopped in (orig_rax); negative when it is in none.
pub fn syscall_nr(regs: &Regs) -> i64 {
    regs.orig_rax as i64
}

/// The 16-aligned start of `len` bytes below the red zone under `top`.
pub fn below_red_zone(top: u64, len: u64) -> u64 {
    (top - RED_ZONE - len) & !15
}

/// The return address of a thread stopped at a function's entry: on top of its stack.
pub fn entry_return_address(tid: i32, regs: &Regs) -> Result<u64> {
    sys::peek(tid, regs.rsp)
}

/// For a thread stopped at a function's entry (`regs`): where the call sequence's `ret`
/// finds the address it returns to, the rsp it loads before that, just below what the
/// function may use (at its entry nothing below rsp is in use).
pub fn call_return_slot(regs: &Regs) -> u64 {
    regs.rsp - 8
}

/// Sets `regs` to run the cave's call sequence at `pc` with the block at `block`
/// (pointed at by rbx), which is also the stack.
pub fn set_call(regs: &mut Regs, pc: u64, block: u64) {
    regs.rip = pc;
    regs.rsp = block;
    regs.rbx = block;
    // Not in a system call: no restart logic may touch rip/rax on resume.
    regs.orig_rax = u64::MAX;
    // Direction flag and trap flag clear, as the ABI requires at a call.
    regs.eflags &= !((1 << 10) | (1 << 8));
}

/// Sets `regs` to run the cave's system-call stub at `pc` with the stack at `stack` (the
/// saved-register area the stub pops): system call `nr` with `args`.
pub fn set_syscall(regs: &mut Regs, pc: u64, stack: u64, nr: i64, args: [u64; 4]) {
    regs.rax = nr as u64;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.rip = pc;
    regs.rsp = stack;
    // As for a call: no restart logic on resume, direction and trap flags clear.
    regs.orig_rax = u64::MAX;
    regs.eflags &= !((1 << 10) | (1 << 8));
}

/// The registers as the cave's tails pop them: r15..rax, rflags, then the rsp to load.
pub fn saved_area(regs: &Regs, rsp: u64) -> Vec<u8> {
    let words = [
        regs.r15,
        regs.r14,
        regs.r13,
        regs.r12,
        regs.r11,
        regs.r10,
        regs.r9,
        regs.r8,
        regs.rdi,
        regs.rsi,
        regs.rbp,
        regs.rbx,
        regs.rdx,
        regs.rcx,
        regs.rax,
        regs.eflags & !(1 << 8),
        rsp,
    ];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}
