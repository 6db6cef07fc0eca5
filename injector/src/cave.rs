//! The code the target runs on our behalf, placed where it can run without us.
//!
//! The attacher may die at any instant (SIGKILL, OOM, a closed terminal). When a tracer
//! dies the kernel detaches its tracees and lets them run exactly as they are, so nothing
//! we leave in the target may need us to be undone. This module provides the three pieces
//! of code that make that true; they live in a *code cave*: the unused tail of the last
//! page of an executable segment the target already maps (bytes past the segment's end,
//! part of no section, never executed or read by the program). Writing there with
//! `/proc/PID/mem` gives the target a private copy of that one page; nothing else changes.
//!
//! - **The call sequence** (`call`): entered at a function entry (the safe point) with
//!   a register (`rbx` on x86-64) pointing at a block on the thread's own stack, it
//!   calls `dlopen`, `dlsym` and the entry, stores the results in the block, makes a
//!   `getpid` system call (where a live tracer takes the thread back, under
//!   `PTRACE_SYSCALL`) and then restores every general register from the block and
//!   returns to the interrupted function's entry. A tracer that dies anywhere in between
//!   leaves a thread that finishes the attach and carries on by itself.
//! - **The system-call stub** (`syscall`): one system call at an arbitrary point of a
//!   thread (here, `rt_sigaction`), then the same self-restoring tail, ending with a jump
//!   through `resume_pc`.
//! - **The SIGTRAP handler** (`handler`), installed while our int3s are armed: a thread
//!   that runs into one after the tracer died gets a SIGTRAP the kernel now delivers. The
//!   handler writes every original byte back (through `/proc/self/mem`), moves the thread
//!   back onto the restored instruction (unless the tracer already had: its pc is then on a
//!   breakpoint rather than just past one) and returns; a single step left armed is
//!   cleared; any other SIGTRAP gets the program's own disposition back and is raised
//!   again, so the program sees it as it would have. A live tracer sees every SIGTRAP
//!   first and suppresses ours, so the handler runs only after the tracer's death. The
//!   tracer puts the program's disposition back before it detaches.
//!
//! The code is assembled for each architecture in [`crate::arch`] (x86-64:
//! `arch/x86_64/cave_asm.rs`), into our own read-only data (we never run it), and copied;
//! this module finds the place for it and reads and writes its data.

use crate::arch::{self, Label};
use crate::error::{Error, Result};
use crate::memory;
use crate::proc::{self, Mapping};

/// At most this many breakpoints are known to the handler (its table has room for them).
pub const MAX_BREAKPOINTS: usize = 32;

/// The image placed at `addr` in the target: where each piece is.
#[derive(Debug, Clone, Copy)]
pub struct Cave {
    pub addr: u64,
}

macro_rules! at {
    ($name:ident, $label:ident) => {
        pub fn $name(&self) -> u64 {
            self.addr + arch::cave_label(Label::$label)
        }
    };
}

impl Cave {
    at!(call, Call);
    at!(call_done, CallDone);
    at!(syscall, Syscall);
    at!(syscall_done, SyscallDone);
    at!(handler, Handler);
    at!(restorer, Restorer);
    at!(resume_pc, ResumePc);
    at!(old_act, OldAct);
    at!(bp_count, BpCount);
    at!(bp_table, BpTable);

    pub fn len() -> u64 {
        image().len() as u64
    }

    pub fn contains(&self, addr: u64) -> bool {
        (self.addr..self.addr + Cave::len()).contains(&addr)
    }

    pub fn write(&self, pid: i32, addr: u64, bytes: &[u8]) -> Result<()> {
        memory::write_forced(pid, addr, bytes)
    }

    /// Tells the handler which int3s are ours: entries first, then the count, so the
    /// handler never reads an entry that is not written yet.
    pub fn set_breakpoints(&self, pid: i32, bps: &[(u64, u8)]) -> Result<()> {
        let n = bps.len().min(MAX_BREAKPOINTS);
        let mut table = Vec::with_capacity(n * 16);
        for &(addr, original) in &bps[..n] {
            table.extend_from_slice(&addr.to_le_bytes());
            table.extend_from_slice(&(original as u64).to_le_bytes());
        }
        self.write(pid, self.bp_table(), &table)?;
        self.write(pid, self.bp_count(), &(n as u64).to_le_bytes())
    }
}

/// What an earlier attacher left in the cave's data.
pub struct EarlierData {
    pub program_act: [u8; 32],
    pub breakpoints: Vec<(u64, u8)>,
}

/// The assembled image, as it goes into the target (data fields zero).
pub fn image() -> &'static [u8] {
    arch::cave_image()
}

/// The data of `bytes` read from the cave, if they hold our code (an earlier attach of
/// this same build).
pub fn earlier_data(bytes: &[u8]) -> Option<EarlierData> {
    let c = Cave { addr: 0 };
    let code = c.resume_pc() as usize;
    let img = image();
    if bytes.len() != img.len() || bytes[..code] != img[..code] {
        return None;
    }
    let word = |at: u64| u64::from_le_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap_or_default());
    let mut program_act = [0u8; 32];
    program_act.copy_from_slice(&bytes[c.old_act() as usize..c.old_act() as usize + 32]);
    let n = (word(c.bp_count()) as usize).min(MAX_BREAKPOINTS);
    let breakpoints = (0..n as u64).map(|i| (word(c.bp_table() + 16 * i), word(c.bp_table() + 16 * i + 8) as u8)).collect();
    Some(EarlierData { program_act, breakpoints })
}

/// Whether an attacher of ours died with its SIGTRAP handler installed in `pid` (our code
/// is in the cave and the process has a SIGTRAP handler): only the ptrace route puts the
/// program's own disposition back.
pub fn handler_left_behind(pid: i32) -> bool {
    let catches_sigtrap = proc::status(pid).is_ok_and(|s| s.caught & (1 << (libc::SIGTRAP - 1)) != 0);
    catches_sigtrap && find(pid).is_ok_and(|c| memory::read(pid, c.addr, image().len()).is_ok_and(|b| earlier_data(&b).is_some()))
}

/// Finds room for the image: the tail of the last page of an executable segment, in the
/// C library if it has room (every target maps it), else the dynamic loader, else any
/// other object. The same target always gets the same place, so a later attach writes
/// over an earlier one's image rather than leaving a second one.
pub fn find(pid: i32) -> Result<Cave> {
    let maps = proc::maps(pid)?;
    let need = Cave::len() + 16;
    let mut best: Option<(u32, Cave)> = None;
    for path in crate::elf::object_paths(&maps) {
        let name = crate::elf::basename(&path);
        let rank = if name.starts_with("libc.so") || name.starts_with("libc-") {
            0
        } else if name.starts_with("ld-linux") || name.starts_with("ld-") {
            1
        } else {
            2
        };
        if best.as_ref().is_some_and(|(r, _)| *r <= rank) {
            continue;
        }
        let Ok(obj) = crate::elf::Object::open(pid, &path, &maps) else { continue };
        for &end in &obj.exec_ends {
            if let Some(addr) = room_after(&maps, &path, end, need) {
                best = Some((rank, Cave { addr }));
                break;
            }
        }
    }
    best.map(|(_, c)| c).ok_or_else(|| Error::RemoteCall {
        pid,
        function: "the attach trampoline".into(),
        detail: format!("cannot be placed: no executable mapping of the process has {need} unused bytes"),
    })
}

/// The 16-aligned start of at least `need` unused bytes after `end` in the same
/// executable mapping of `path`.
fn room_after(maps: &[Mapping], path: &str, end: u64, need: u64) -> Option<u64> {
    let start = (end + 15) & !15;
    let m = maps.iter().find(|m| m.path == path && m.start <= end && end <= m.end && m.perms.starts_with("r-x"))?;
    let page_end = (end + 4095) & !4095;
    let limit = page_end.min(m.end);
    (limit >= start + need).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_labels_are_in_order_and_fit_a_page() {
        let c = Cave { addr: 0x1000 };
        assert!(c.call() < c.call_done() && c.call_done() < c.syscall() && c.syscall() < c.syscall_done());
        assert!(c.syscall_done() < c.handler() && c.handler() < c.restorer() && c.restorer() < c.resume_pc());
        assert_eq!(c.resume_pc() % 8, 0);
        assert_eq!(c.bp_table() - c.bp_count(), 8);
        assert!(Cave::len() < 2048, "image is {} bytes", Cave::len());
        // The marker before the done labels is checked by each architecture's own test.
    }

    #[test]
    fn earlier_data_is_read_back_only_from_our_own_code() {
        let c = Cave { addr: 0 };
        let mut bytes = image().to_vec();
        let put = |bytes: &mut Vec<u8>, at: u64, v: u64| bytes[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut bytes, c.old_act(), 0x1234);
        put(&mut bytes, c.bp_count(), 2);
        put(&mut bytes, c.bp_table(), 0x7000);
        put(&mut bytes, c.bp_table() + 8, 0xf3);
        put(&mut bytes, c.bp_table() + 16, 0x7100);
        put(&mut bytes, c.bp_table() + 24, 0x55);
        let data = earlier_data(&bytes).expect("our image");
        assert_eq!(data.breakpoints, vec![(0x7000, 0xf3), (0x7100, 0x55)]);
        assert_eq!(u64::from_le_bytes(data.program_act[..8].try_into().unwrap()), 0x1234);
        // A count past the table's end is clamped, not trusted.
        put(&mut bytes, c.bp_count(), u64::MAX);
        assert_eq!(earlier_data(&bytes).expect("our image").breakpoints.len(), MAX_BREAKPOINTS);
        // Anything else in the cave (zeros, another build's code) is not ours.
        assert!(earlier_data(&vec![0u8; bytes.len()]).is_none());
        bytes[0] ^= 1;
        assert!(earlier_data(&bytes).is_none());
    }

    #[test]
    fn finds_room_in_our_own_libc() {
        let cave = find(std::process::id() as i32).expect("a cave in this process");
        let maps = proc::maps(std::process::id() as i32).unwrap();
        let m = maps.iter().find(|m| m.start <= cave.addr && cave.addr < m.end).expect("mapped");
        assert!(m.perms.starts_with("r-x"));
        assert!(cave.addr + Cave::len() <= m.end);
    }
}
