//! Reading and writing the target's memory without stopping it (process_vm_readv/writev,
//! which need the same permission as ptrace).

use std::io::{IoSlice, IoSliceMut};

use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

use crate::error::{Error, Result};

pub fn read(pid: i32, addr: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut local = [IoSliceMut::new(&mut buf)];
    let remote = [RemoteIoVec { base: addr as usize, len }];
    match process_vm_readv(Pid::from_raw(pid), &mut local, &remote) {
        Ok(n) if n == len => Ok(buf),
        Ok(_) => Err(Error::Memory { pid, addr, errno: nix::errno::Errno::EFAULT }),
        Err(errno) => Err(Error::Memory { pid, addr, errno }),
    }
}

/// Reads a NUL-terminated string of at most `max` bytes.
pub fn read_cstr(pid: i32, addr: u64, max: usize) -> Result<String> {
    // Read page by page: the string may end right before an unmapped page.
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        let chunk = (4096 - (at % 4096) as usize).min(max - out.len());
        let bytes = read(pid, at, chunk)?;
        if let Some(end) = bytes.iter().position(|&b| b == 0) {
            out.extend_from_slice(&bytes[..end]);
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&bytes);
        at += chunk as u64;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

pub fn write(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    crate::death_points::before_change("process_vm_writev", pid);
    let local = [IoSlice::new(data)];
    let remote = [RemoteIoVec { base: addr as usize, len: data.len() }];
    match process_vm_writev(Pid::from_raw(pid), &local, &remote) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(_) => Err(Error::Memory { pid, addr, errno: nix::errno::Errno::EFAULT }),
        Err(errno) => Err(Error::Memory { pid, addr, errno }),
    }
}

/// Writes through /proc/PID/mem, which (for a tracer) also reaches read-only mappings such
/// as code pages, the way PTRACE_POKEDATA does, in one call.
pub fn write_forced(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    crate::death_points::before_change("write /proc/PID/mem", pid);
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/mem")).map_err(|e| Error::Memory {
        pid,
        addr,
        errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    file.write_all_at(data, addr).map_err(|e| Error::Memory {
        pid,
        addr,
        errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}
