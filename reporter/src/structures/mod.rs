//! Data structures of the reading pass: the live-block address map, the integer hasher
//! of the per-record maps (live `mmap` ranges are `memray_capture::ranges`, shared with
//! the payload's aggregating writer).

pub(crate) mod addrmap;
pub(crate) mod fasthash;
