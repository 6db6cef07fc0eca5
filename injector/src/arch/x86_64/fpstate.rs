//! The FP/vector registers, saved and restored around the code the tracer runs in a
//! thread (the cave's calls may use SSE/AVX registers the program had live).

use crate::error::Result;
use crate::sys::raw;

const NT_X86_XSTATE: usize = 0x202;

/// The thread's whole FP/vector state: XSAVE area (x87, SSE, AVX, AVX-512...) when the
/// kernel offers it, else the FXSAVE area of PTRACE_GETFPREGS.
pub enum FpState {
    Xstate(Vec<u8>),
    Fxsave(Box<libc::user_fpregs_struct>),
}

pub fn save_fp(tid: i32) -> Result<FpState> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    if raw("GETREGSET", libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec as usize).is_ok() {
        buf.truncate(iov.iov_len);
        return Ok(FpState::Xstate(buf));
    }
    // SAFETY: user_fpregs_struct is plain integers; all-zero is a valid value.
    let mut fx: Box<libc::user_fpregs_struct> = Box::new(unsafe { std::mem::zeroed() });
    raw("GETFPREGS", libc::PTRACE_GETFPREGS, tid, 0, &mut *fx as *mut libc::user_fpregs_struct as usize)?;
    Ok(FpState::Fxsave(fx))
}

pub fn restore_fp(tid: i32, state: &mut FpState) -> Result<()> {
    match state {
        FpState::Xstate(buf) => {
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
            raw("SETREGSET", libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec as usize).map(drop)
        }
        FpState::Fxsave(fx) => {
            raw("SETFPREGS", libc::PTRACE_SETFPREGS, tid, 0, &mut **fx as *mut libc::user_fpregs_struct as usize).map(drop)
        }
    }
}
