//! Data structures of the reading pass: the live-block address map, the integer hasher
//! of the per-record maps, and live `mmap` ranges.

pub(crate) mod addrmap;
pub(crate) mod fasthash;
pub(crate) mod ranges;
