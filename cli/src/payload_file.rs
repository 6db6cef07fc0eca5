//! Finds the payload library (the .so loaded into the tracked interpreter).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

const NAME: &str = "libmemray_payload.so";

// `EMBEDDED: Option<(&[u8], &str)>`: the payload's bytes and content hash, written by
// build.rs (None when the build did not embed it).
include!(concat!(env!("OUT_DIR"), "/embedded_payload.rs"));

/// In order: $MEMRAY_PAYLOAD; next to this executable (a cargo build, or `_bin/` inside
/// the installed Python package, whose payload sits in `../_payload/`); the copy embedded
/// in this binary, written once to a content-hashed file in a cache directory
/// (`cargo install`: a lone binary).
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
    if let Some((bytes, hash)) = EMBEDDED {
        return write_embedded(bytes, hash);
    }
    bail!("cannot find {NAME} next to {} (build it with `cargo build --release`, or set MEMRAY_PAYLOAD)", exe.display())
}

/// Cache directories to try, best first: $XDG_CACHE_HOME/memray, ~/.cache/memray,
/// /tmp/memray-<uid>.
fn cache_dirs(uid: u32) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| Path::new(x).is_absolute()) {
        dirs.push(PathBuf::from(x).join("memray"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| Path::new(h).is_absolute()) {
        dirs.push(PathBuf::from(h).join(".cache").join("memray"));
    }
    dirs.push(PathBuf::from(format!("/tmp/memray-{uid}")));
    dirs
}

fn write_embedded(bytes: &[u8], hash: &str) -> Result<PathBuf> {
    let uid = rustix::process::geteuid().as_raw();
    let mut errors = Vec::new();
    for dir in cache_dirs(uid) {
        match memray_injector::session::write_payload_copy(&dir, uid, bytes, hash) {
            Ok(p) => return Ok(p),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("cannot write the embedded payload to a cache directory: {}", errors.join("; "))
}
