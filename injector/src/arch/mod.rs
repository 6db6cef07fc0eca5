//! What the injector knows about the processor: one module per architecture, selected at
//! build time, each offering the same small interface to the tracer and the cave.
//!
//! - registers: [`Regs`] and the few fields the tracer reads or sets ([`pc`],
//!   [`set_pc`], [`sp`], [`return_value`], [`syscall_nr`]), how a thread is set up to
//!   run a piece of the cave ([`set_call`], [`set_syscall`]), where a function's return
//!   address is at its entry ([`entry_return_address`], [`call_return_slot`]), the red
//!   zone ([`below_red_zone`]) and the saved-register area the cave restores
//!   ([`saved_area`], [`SAVED_LEN`]), and the FP/vector state saved around the cave's
//!   code ([`save_fp`], [`restore_fp`], [`FpState`]);
//! - system calls: how a thread stopped in one carries on ([`resume_point`]);
//! - breakpoints: the instruction ([`BREAKPOINT`]), how far past it a trapped thread's
//!   pc is ([`BREAKPOINT_LEN`]) and the `si_code` of its SIGTRAP
//!   ([`BREAKPOINT_SI_CODE`]);
//! - signals: the kernel's `sigaction` that installs the cave's SIGTRAP handler
//!   ([`trap_action`]);
//! - the cave: the assembled image ([`cave_image`]), where each of its pieces
//!   ([`Label`]) is ([`cave_label`]) and the layout of the call sequence's block
//!   ([`block`]).
//!
//! Only x86-64 exists: on any other architecture the crate does not build, with a message
//! saying so.

/// The pieces of the cave image whose addresses the tracer needs. Every architecture's
/// image has them all.
#[derive(Debug, Clone, Copy)]
pub enum Label {
    /// The call sequence.
    Call,
    /// Right after the call sequence's marker system call.
    CallDone,
    /// The one-system-call stub.
    Syscall,
    /// Right after the stub's system call.
    SyscallDone,
    /// The SIGTRAP handler.
    Handler,
    /// The handler's signal-return trampoline (`sa_restorer`).
    Restorer,
    /// Data: where the stub jumps once it has restored the registers.
    ResumePc,
    /// Data: the program's own SIGTRAP disposition.
    OldAct,
    /// Data: how many entries of the breakpoint table are valid.
    BpCount,
    /// Data: the breakpoint table, (address, original byte) pairs of 16 bytes.
    BpTable,
}

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("memray-injector (memray attach) supports x86-64 only: injector/src/arch/ has no module for this architecture");
