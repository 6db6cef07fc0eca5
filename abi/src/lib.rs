//! The attach ABI: the control block the payload exports as `memray_attach_control`, which
//! `memray attach` and `memray detach` read and write from outside the process
//! (process_vm_readv/writev, no stop). Both sides use this one definition: the payload
//! defines its static with it, the attaching side takes its offsets from it.

use std::cell::UnsafeCell;
use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64};

/// The exported symbol.
pub const CONTROL_SYMBOL: &str = "memray_attach_control";
/// The payload's attach entry, called with the request (`key\x1fvalue` pairs joined by
/// `\x1e`).
pub const ENTRY_SYMBOL: &str = "memray_attach_entry";
/// What the block starts with.
pub const MAGIC: [u8; 8] = *b"MEMRAYAT";
/// Changes whenever the layout does.
pub const LAYOUT: u32 = 1;
pub const MESSAGE_LEN: usize = 1024;
/// Ends the message of a stopped session whose capture the payload could not compress
/// (it may not make files beside a capture `memray attach` made as another user):
/// `memray detach` compresses it on the attaching side.
pub const COMPRESSION_LEFT: &str = "\ncompression left to the attaching side";

pub const STATE_IDLE: u32 = 0;
pub const STATE_STARTING: u32 = 1;
pub const STATE_ACTIVE: u32 = 2;
pub const STATE_FAILED: u32 = 3;
pub const STATE_STOPPING: u32 = 4;
pub const STATE_STOPPED: u32 = 5;

#[repr(C)]
pub struct AttachControl {
    pub magic: [u8; 8],
    pub layout: u32,
    /// One of the STATE_* values.
    pub state: AtomicU32,
    /// The process that wrote `state` (a forked child inherits a copy of this block).
    pub pid: AtomicI32,
    /// While the payload waits for descriptors from the attaching side (the capture file
    /// and its directory, or the live view's socket): 1 + the number of the socket the
    /// attaching side takes with pidfd_getfd and sends them over. 0 otherwise (also in
    /// payloads older than this field, where it was padding).
    pub handoff: AtomicI32,
    /// The attaching side's nonce for the attach that `state` describes.
    pub session: AtomicU64,
    /// Written by `memray detach`: a nonce; the payload stops tracking and echoes it in
    /// `ack`.
    pub request: AtomicU64,
    pub ack: AtomicU64,
    /// Points at the tracker's ACTIVE flag (whoever started the tracker).
    pub tracker_active: *const AtomicBool,
    /// The output path while active or stopped, the error text when failed;
    /// NUL-terminated.
    pub message: UnsafeCell<[u8; MESSAGE_LEN]>,
}

// SAFETY: the atomics are Sync; `message` is written only under the payload's control
// lock and never read inside the process (the attaching side reads it from outside,
// trusting it only once `state`/`ack` say it is final); `tracker_active` points at a
// static that is only read.
unsafe impl Sync for AttachControl {}

impl AttachControl {
    /// An idle block whose `tracker_active` points at `active`.
    pub const fn new(active: &'static AtomicBool) -> AttachControl {
        AttachControl {
            magic: MAGIC,
            layout: LAYOUT,
            state: AtomicU32::new(STATE_IDLE),
            pid: AtomicI32::new(0),
            handoff: AtomicI32::new(0),
            session: AtomicU64::new(0),
            request: AtomicU64::new(0),
            ack: AtomicU64::new(0),
            tracker_active: active as *const AtomicBool,
            message: UnsafeCell::new([0; MESSAGE_LEN]),
        }
    }
}

/// Byte offsets of the fields, for the side that reads the block out of another process.
pub mod offsets {
    use super::*;
    pub const MAGIC: usize = offset_of!(AttachControl, magic);
    pub const STATE: usize = offset_of!(AttachControl, state);
    pub const PID: usize = offset_of!(AttachControl, pid);
    pub const HANDOFF: usize = offset_of!(AttachControl, handoff);
    pub const SESSION: usize = offset_of!(AttachControl, session);
    pub const REQUEST: usize = offset_of!(AttachControl, request);
    pub const ACK: usize = offset_of!(AttachControl, ack);
    pub const TRACKER_ACTIVE: usize = offset_of!(AttachControl, tracker_active);
    pub const MESSAGE: usize = offset_of!(AttachControl, message);
    pub const LEN: usize = std::mem::size_of::<AttachControl>();
}

// The layout is x86-64's, as both sides assume (the reader takes 8-byte little-endian
// words): a change here must bump LAYOUT.
const _: () = {
    assert!(offsets::STATE == 12 && offsets::PID == 16 && offsets::HANDOFF == 20 && offsets::SESSION == 24);
    assert!(offsets::REQUEST == 32 && offsets::ACK == 40 && offsets::TRACKER_ACTIVE == 48);
    assert!(offsets::MESSAGE == 56 && offsets::LEN == 56 + MESSAGE_LEN);
};
