//! aarch64: the `dlopen` trampoline and the GOT's relocation types. The native unwinder's
//! part (`Unwinder`, `UnwindRegs`, `Cache`, `current_regs`) is not written for aarch64
//! yet, so the payload does not build here.

use std::ffi::{c_char, c_int, c_void};

compile_error!("memray-payload: the native unwinder has no aarch64 implementation yet (payload/src/arch/aarch64.rs)");

/// What the GOT's `dlopen` slots point at: calls `hooks::dlopen_hook(filename, flags,
/// return address)`. A tail jump, so the hook returns straight to the caller and the
/// stack is as the caller left it.
#[unsafe(naked)]
pub unsafe extern "C" fn dlopen_entry(filename: *const c_char, flags: c_int) -> *mut c_void {
    // The return address is in the link register.
    std::arch::naked_asm!("mov x2, x30", "b {hook}", hook = sym crate::hooks::dlopen_hook)
}

/// The thread pointer (`tpidr_el0`). Initial-exec TLS lies at a fixed offset from it,
/// the same in every thread.
#[inline(always)]
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reads a system register the C library sets per thread; no other effect.
    unsafe { std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags, pure)) };
    tp
}

/// The relocation types of a GOT slot that holds a function's address.
pub const RELOC_TYPES: [u32; 3] = [257 /* R_AARCH64_ABS64 */, 1025 /* GLOB_DAT */, 1026 /* JUMP_SLOT */];
