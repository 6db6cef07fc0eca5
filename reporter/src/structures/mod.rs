//! Data structures of the reading pass: the live-block address map (the integer hasher
//! of the per-record maps is `memray_capture::fasthash` and live `mmap` ranges are
//! `memray_capture::ranges`, both shared with the payload).

pub(crate) mod addrmap;
