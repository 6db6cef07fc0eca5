//! The payload's control block (memray-abi's `AttachControl`), read and written from
//! outside the process with process_vm_readv/writev: no stop is needed.

use memray_abi::{offsets, CONTROL_SYMBOL, STATE_ACTIVE, STATE_STARTING, STATE_STOPPING};

use crate::error::{Error, Result};
use crate::memory;

/// The file name of every copy of the payload contains this.
pub(crate) const PAYLOAD_MATCH: &str = "memray_payload";

/// One read of a control block.
pub(crate) struct Control {
    pub addr: u64,
    pub state: u32,
    pub pid: i32,
    /// 1 + the payload's socket awaiting descriptors, 0 when none.
    pub handoff: i32,
    pub session: u64,
    pub ack: u64,
    pub tracker_active: bool,
    pub message: String,
}

impl Control {
    /// Whether this block holds a session of `memray attach` in the process that calls
    /// itself `own_pid` (a forked child's copy of its parent's block does not count).
    pub fn attached_in(&self, own_pid: i32) -> bool {
        self.pid == own_pid && matches!(self.state, STATE_STARTING | STATE_ACTIVE | STATE_STOPPING)
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
}

pub(crate) fn read(pid: i32, addr: u64) -> Result<Control> {
    let b = memory::read(pid, addr, offsets::LEN)?;
    if b[offsets::MAGIC..offsets::MAGIC + 8] != memray_abi::MAGIC {
        return Err(Error::UnknownPayloadLayout(pid));
    }
    let flag = u64_at(&b, offsets::TRACKER_ACTIVE);
    let tracker_active = flag != 0 && memory::read(pid, flag, 1).map(|v| v[0] != 0).unwrap_or(false);
    let msg = &b[offsets::MESSAGE..];
    let end = msg.iter().position(|&c| c == 0).unwrap_or(msg.len());
    Ok(Control {
        addr,
        state: u32_at(&b, offsets::STATE),
        pid: u32_at(&b, offsets::PID) as i32,
        handoff: u32_at(&b, offsets::HANDOFF) as i32,
        session: u64_at(&b, offsets::SESSION),
        ack: u64_at(&b, offsets::ACK),
        tracker_active,
        message: String::from_utf8_lossy(&msg[..end]).into_owned(),
    })
}

/// Asks the session in the block at `addr` to stop: the payload echoes `nonce` in `ack`
/// once it has.
pub(crate) fn request_stop(pid: i32, addr: u64, nonce: u64) -> Result<()> {
    memory::write(pid, addr + offsets::REQUEST as u64, &nonce.to_le_bytes())
}

/// Every payload instance mapped in the process, with its control block.
pub(crate) fn payload_controls(pid: i32) -> Result<Vec<(String, Control)>> {
    let mut out = Vec::new();
    for obj in crate::find_mapped(pid, PAYLOAD_MATCH, &[CONTROL_SYMBOL])? {
        if let Some(&addr) = obj.symbols.get(CONTROL_SYMBOL) {
            // A copy that is mapped but not loaded (what a failed dlopen can leave behind)
            // has no control block to read: it is no session, and no reason to refuse.
            if let Ok(control) = read(pid, addr) {
                out.push((obj.path.clone(), control));
            }
        }
    }
    Ok(out)
}

/// A number for one attach or one stop request, unlikely to repeat.
pub(crate) fn new_nonce() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mixed = (t ^ ((std::process::id() as u64) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    mixed.max(1)
}
