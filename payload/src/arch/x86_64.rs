//! x86-64: the `dlopen` trampoline, the GOT's relocation types, framehop's x86-64 unwinder.

use std::ffi::{c_char, c_int, c_void};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};

/// What the GOT's `dlopen` slots point at: calls `hooks::dlopen_hook(filename, flags,
/// return address)`. A tail jump, so the hook returns straight to the caller and the
/// stack is as the caller left it.
#[unsafe(naked)]
pub unsafe extern "C" fn dlopen_entry(filename: *const c_char, flags: c_int) -> *mut c_void {
    // At entry the return address is at [rsp]; it becomes the third argument.
    std::arch::naked_asm!("mov rdx, [rsp]", "jmp {hook}", hook = sym crate::hooks::dlopen_hook)
}

/// The thread pointer: on x86-64, `fs:0` holds the thread control block's own address.
/// Initial-exec TLS lies at a fixed offset from it, the same in every thread.
#[inline(always)]
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reads one word through the fs segment, which the C library points at the
    // calling thread's control block for the thread's whole life; no other effect.
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags, pure)) };
    tp
}

/// The relocation types of a GOT slot that holds a function's address.
pub const RELOC_TYPES: [u32; 3] = [1 /* R_X86_64_64 */, 6 /* GLOB_DAT */, 7 /* JUMP_SLOT */];

pub type Unwinder<D, P> = UnwinderX86_64<D, P>;
pub type UnwindRegs = UnwindRegsX86_64;
pub type Cache<P> = CacheX86_64<P>;

/// The program counter and stack pointer of the caller at this point, and the registers
/// an unwind starts from (with the frame pointer).
#[inline(always)]
pub fn current_regs() -> (u64, u64, UnwindRegs) {
    let (pc, sp, bp): (u64, u64, u64);
    // SAFETY: reads rip (through a rip-relative lea), rsp and rbp into registers; no
    // memory access, no stack change, flags untouched.
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    (pc, sp, UnwindRegsX86_64::new(pc, sp, bp))
}
