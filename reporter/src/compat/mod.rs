//! Byte-exact reproductions of what Memray 1.20 and CPython print, which reports must
//! match: libstdc++'s `unordered_map` order (`stdorder`, `stdhash`), Python's `json.dump`
//! (`pyjson`), `datetime`'s local times (`localtime`) and Memray's module names
//! (`modules`). Each says whose behaviour it reproduces; none depends on the rest of the
//! crate.

pub mod localtime;
pub mod modules;
pub mod pyjson;
pub(crate) mod stdhash;
pub(crate) mod stdorder;
