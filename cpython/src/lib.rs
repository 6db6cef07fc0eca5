//! What memray knows about CPython, in one place: which versions exist and are supported
//! (`version`), how their structs are laid out (`layout`, as data), what the interpreter
//! says about itself from 3.13 on (`debug_offsets`), and how line tables encode line
//! numbers (`linetable`). The payload, the injector and the reporter use it; nothing
//! outside this crate names a CPython version or an offset.
//!
//! The crate reads no memory itself: callers hand it bytes and versions.
#![forbid(unsafe_code)]

pub mod debug_offsets;
pub mod layout;
pub mod linetable;
pub mod version;

pub use debug_offsets::DebugOffsets;
pub use layout::{layout_for, EntryRule, FrameRoot, InstrPos, Layout};
pub use version::{Version, SUPPORTED};

/// Why an interpreter cannot be read. Each message is one line for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("CPython {version} is not supported ({SUPPORTED} are)")]
    Unsupported { version: Version },
    #[error("free-threaded CPython {version} (built with --disable-gil) is not supported yet; use the default build")]
    FreeThreaded { version: Version },
    #[error("CPython's debug offsets cannot be read: {detail}")]
    BadDebugOffsets { detail: String },
    #[error(
        "this CPython {version} puts {field} at offset {runtime}, where CPython {version} has it at {table}: \
         a patched or unusual build, not read to avoid misreading its memory"
    )]
    Mismatch { version: Version, field: &'static str, table: usize, runtime: usize },
    #[error("CPython {version} is newer than this memray, and its debug offsets do not describe {field}")]
    MissingField { version: Version, field: String },
}

/// The layout to read an interpreter with: its debug offsets when it has them (checked
/// against the table, or replacing it for a version newer than the table), else its
/// table row.
pub fn resolve(version: Version, debug_block: Option<&[u8]>) -> Result<Layout, Error> {
    if !version.is_supported() {
        return Err(Error::Unsupported { version });
    }
    let row = layout_for(version.major, version.minor);
    match (debug_block, row) {
        (Some(bytes), _) if version.has_debug_offsets() => {
            let offsets = DebugOffsets::parse(bytes)?;
            if (offsets.version.major, offsets.version.minor) != (version.major, version.minor) {
                return Err(Error::BadDebugOffsets { detail: format!("they describe CPython {}, not {version}", offsets.version) });
            }
            offsets.layout()
        }
        (_, Some(row)) => Ok(*row),
        (None, None) => Err(Error::Unsupported { version }),
        (Some(_), None) => Err(Error::Unsupported { version }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_by_table_or_block() {
        assert_eq!(resolve(Version::new(3, 9, 18), None).unwrap(), *layout_for(3, 9).unwrap());
        assert_eq!(resolve(Version::new(3, 14, 10), None).unwrap(), *layout_for(3, 14).unwrap());
        let block = debug_offsets::tests::block_for(15, 2);
        assert_eq!(resolve(Version::new(3, 15, 2), Some(&block)).unwrap(), *layout_for(3, 15).unwrap());
        let err = resolve(Version::new(3, 14, 0), Some(&block)).unwrap_err();
        assert!(err.to_string().contains("not 3.14"), "{err}");
        let err = resolve(Version::new(3, 7, 17), None).unwrap_err();
        assert_eq!(err.to_string(), "CPython 3.7 is not supported (CPython 3.8 to 3.15 are)");
        assert!(matches!(resolve(Version::new(3, 16, 0), None), Err(Error::Unsupported { .. })));
        assert_eq!(resolve(Version::new(3, 16, 0), Some(&debug_offsets::tests::block_for(16, 0))).unwrap().minor, 16);
    }
}
