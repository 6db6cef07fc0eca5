//! Finds the payload library (the .so loaded into the tracked interpreter).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

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
        match write_into(&dir, uid, bytes, hash) {
            Ok(p) => return Ok(p),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("cannot write the embedded payload to a cache directory: {}", errors.join("; "))
}

/// Writes `libmemray_payload-<hash>.so` (0644, ours) into `dir`, which must be a directory
/// owned by us that nobody else can write into; an existing identical file is reused.
pub fn write_into(dir: &Path, uid: u32, bytes: &[u8], hash: &str) -> Result<PathBuf> {
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        bail!("{} is not a directory owned by uid {uid} and closed to others", dir.display());
    }
    let dest = dir.join(format!("libmemray_payload-{hash}.so"));
    if let Ok(m) = std::fs::symlink_metadata(&dest) {
        if m.is_file()
            && m.uid() == uid
            && m.mode() & 0o7777 == 0o644
            && m.len() == bytes.len() as u64
            && std::fs::read(&dest).map(|b| b == bytes).unwrap_or(false)
        {
            // Fresh again: older copies are cleaned up by age, and this one is in use.
            let _ = std::fs::OpenOptions::new().write(true).open(&dest).and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(dest);
        }
    }
    // Write a private temporary file, then rename: a concurrent reader never sees a
    // partial library.
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(".payload-{}-{nonce:x}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &dest)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", dest.display()));
    }
    Ok(dest)
}
