//! x86-64: the registers (`regs`, and the FP/vector state in `fpstate`), system-call
//! restarts (`syscall_restart`), the int3 breakpoint and the kernel's `sigaction` (here)
//! and the cave's assembly (`cave_asm`).

mod cave_asm;
mod fpstate;
mod regs;
mod syscall_restart;

pub use self::cave_asm::{block, cave_image, cave_label, SAVED_LEN};
pub use self::fpstate::{restore_fp, save_fp, FpState};
pub use self::regs::{
    below_red_zone, call_return_slot, entry_return_address, pc, return_value, saved_area, set_call, set_pc, set_syscall, sp, syscall_nr,
    Regs,
};
pub use self::syscall_restart::resume_point;

/// The breakpoint instruction: int3.
pub const BREAKPOINT: u8 = 0xCC;

/// How far past the breakpoint a thread stopped by it has its pc (int3 traps after it
/// has run).
pub const BREAKPOINT_LEN: u64 = 1;

/// The `si_code` of the SIGTRAP an int3 raises.
pub const BREAKPOINT_SI_CODE: i32 = 0x80; // SI_KERNEL

/// The kernel's `struct sigaction` for rt_sigaction (not glibc's): handler, flags,
/// restorer, mask. The cave's handler returns through `restorer` (SA_RESTORER, as the C
/// library's own handlers do), with SA_SIGINFO and SA_RESTART.
pub fn trap_action(handler: u64, restorer: u64) -> [u8; 32] {
    const SA_RESTORER: u64 = 0x0400_0000;
    let mut act = [0u8; 32];
    act[0..8].copy_from_slice(&handler.to_le_bytes());
    let flags = (libc::SA_SIGINFO | libc::SA_RESTART) as u64 | SA_RESTORER;
    act[8..16].copy_from_slice(&flags.to_le_bytes());
    act[16..24].copy_from_slice(&restorer.to_le_bytes());
    act
}
