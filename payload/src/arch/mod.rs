//! What the payload knows about the processor: one module per architecture, selected at
//! build time, each offering the same names to the rest of the payload:
//!
//! - `dlopen_entry`: the trampoline the GOT's `dlopen` slots point at (`dlopen.rs`);
//! - `RELOC_TYPES`: the relocation types of a GOT slot (`got.rs`);
//! - `thread_pointer`: the base initial-exec TLS is a fixed offset from (`thread_state.rs`);
//! - `Unwinder`, `UnwindRegs`, `Cache`, `current_regs`: framehop's unwinder for this
//!   architecture and the registers a walk starts from (`native/`).

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("memray-payload supports x86-64 (and, in part, aarch64) only: payload/src/arch/ has no module for this architecture");
