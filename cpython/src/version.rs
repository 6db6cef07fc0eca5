//! Which CPython a process runs, and whether we support it.

use std::fmt;

/// The oldest supported minor version of CPython 3.
pub const OLDEST_MINOR: u8 = 8;
/// The newest minor version with a layout table row. Newer ones are accepted when their
/// `_Py_DebugOffsets` describe everything the table would (see `debug_offsets`).
pub const NEWEST_TABLE_MINOR: u8 = 15;

/// The first release with PEP 768's remote-debugging safe point.
pub const REMOTE_DEBUGGING_SINCE: Version = Version::new(3, 14, 0);

/// The range named in messages.
pub const SUPPORTED: &str = "CPython 3.8 to 3.15";

/// A CPython version, from `PY_VERSION_HEX` or `Py_GetVersion()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub micro: u8,
}

impl Version {
    pub const fn new(major: u8, minor: u8, micro: u8) -> Version {
        Version { major, minor, micro }
    }

    /// From a `PY_VERSION_HEX` value (`0x030E0AF0` is 3.14.10 final).
    pub const fn from_hex(hex: u64) -> Version {
        Version { major: (hex >> 24) as u8, minor: (hex >> 16) as u8, micro: (hex >> 8) as u8 }
    }

    /// As a `PY_VERSION_HEX` of a final release, the form Memray's capture header holds.
    pub const fn hex(self) -> u32 {
        ((self.major as u32) << 24) | ((self.minor as u32) << 16) | ((self.micro as u32) << 8) | 0xF0
    }

    /// From the text `Py_GetVersion()` returns: `"3.10.13 (main, …)"`, `"3.9.0rc1 (…)"`.
    pub fn parse(text: &[u8]) -> Option<Version> {
        let head = text.split(|&b| b == b' ').next()?;
        let mut parts = head.split(|&b| b == b'.').map(|p| {
            let digits = p.iter().take_while(|b| b.is_ascii_digit()).count();
            std::str::from_utf8(&p[..digits]).ok()?.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next()??;
        let micro = parts.next().flatten().unwrap_or(0);
        Some(Version::new(u8::try_from(major).ok()?, u8::try_from(minor).ok()?, micro.min(255) as u8))
    }

    /// Whether this version is in the supported range at all (the layout may still be
    /// refused later, for a version newer than the table without usable debug offsets).
    pub fn is_supported(self) -> bool {
        self.major == 3 && self.minor >= OLDEST_MINOR
    }

    /// Whether the interpreter describes itself with `_Py_DebugOffsets` (3.13+).
    pub fn has_debug_offsets(self) -> bool {
        (self.major, self.minor) >= (3, 13)
    }

    /// Whether the interpreter offers PEP 768's remote-debugging safe point.
    pub fn has_remote_debugging(self) -> bool {
        (self.major, self.minor) >= (REMOTE_DEBUGGING_SINCE.major, REMOTE_DEBUGGING_SINCE.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Symbols a free-threaded (`--disable-gil`) build exports and a GIL build does not.
pub const FREE_THREADED_SYMBOLS: &[&str] = &["_Py_DecRefShared"];

/// The symbol holding `PY_VERSION_HEX` (`const unsigned long Py_Version`, 3.11+).
pub const VERSION_SYMBOL: &str = "Py_Version";

/// For interpreters without [`VERSION_SYMBOL`] (before 3.11), read from the outside: the
/// first symbol of this list that the interpreter exports names its version (each was
/// added to the C API in that release).
pub const VERSION_BY_SYMBOL: &[(&str, Version)] = &[
    ("Py_IsNone", Version::new(3, 10, 0)),
    ("PyFrame_GetCode", Version::new(3, 9, 0)),
    ("PyCode_NewWithPosOnlyArgs", Version::new(3, 8, 0)),
];

/// The version [`VERSION_BY_SYMBOL`] gives for an interpreter that exports the symbols
/// `exports` says it does; None for one older than the supported range.
pub fn version_from_symbols(exports: impl Fn(&str) -> bool) -> Option<Version> {
    VERSION_BY_SYMBOL.iter().find(|(name, _)| exports(name)).map(|&(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_py_getversion() {
        assert_eq!(Version::parse(b"3.10.13 (main, Jan 1 2024, 00:00:00) [GCC 12]").map(Version::hex), Some(0x030A0DF0));
        assert_eq!(Version::parse(b"3.8.18").map(Version::hex), Some(0x030812F0));
        assert_eq!(Version::parse(b"3.9.0rc1 (default)").map(Version::hex), Some(0x030900F0));
        assert_eq!(Version::parse(b"garbage"), None);
        assert_eq!(Version::parse(b"3.999.1"), None);
    }

    #[test]
    fn hex_round_trips_and_ranges() {
        let v = Version::from_hex(0x030E0AF0);
        assert_eq!((v.major, v.minor, v.micro), (3, 14, 10));
        assert_eq!(v.hex(), 0x030E0AF0);
        assert_eq!(v.to_string(), "3.14");
        assert!(v.is_supported() && v.has_debug_offsets() && v.has_remote_debugging());
        assert!(!Version::new(3, 7, 0).is_supported());
        assert!(!Version::new(2, 7, 18).is_supported());
        assert!(Version::new(3, 16, 0).is_supported());
        assert!(!Version::new(3, 12, 1).has_debug_offsets());
        assert!(Version::new(3, 13, 0).has_debug_offsets() && !Version::new(3, 13, 0).has_remote_debugging());
    }
}
