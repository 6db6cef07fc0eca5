//! x86-64: the registers (`regs`), system-call restarts (`syscall_restart`), the int3
//! breakpoint (here) and the cave's assembly (`cave_asm`).

mod cave_asm;
mod regs;
mod syscall_restart;

pub use self::cave_asm::{block, cave_image, cave_label, SAVED_LEN};
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
