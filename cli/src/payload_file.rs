//! Finds the payload library (the .so loaded into the tracked interpreter).

use std::path::PathBuf;

use anyhow::{bail, Result};

const NAME: &str = "libmemray_payload.so";

/// In order: $MEMRAY_PAYLOAD; next to this executable (a cargo build, or `_bin/` inside
/// the installed Python package, whose payload sits in `../_payload/`).
pub fn locate() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MEMRAY_PAYLOAD") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("MEMRAY_PAYLOAD points to {}, which does not exist", p.display());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [dir.join(NAME), dir.join("../_payload").join(NAME), dir.join("../lib/memray").join(NAME)];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize().unwrap_or_else(|_| c.clone()));
        }
    }
    bail!("cannot find {NAME} next to {} (build it with `cargo build --release`, or set MEMRAY_PAYLOAD)", exe.display())
}
