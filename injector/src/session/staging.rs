//! The payload's copy for one attach, in the target's own file system, and the private
//! copies it is made from.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::content_hash::content_hash;
use crate::error::{Error, Result};

/// Bases tried in order, as the target sees them.
const PAYLOAD_BASES: &[&str] = &["/tmp", "/dev/shm", "/var/tmp"];

/// A copy reached through /proc/PID/root (a container's /tmp when the target runs in one).
/// It goes once the target has loaded it: a mapped library needs no file, and nothing of
/// ours is left in the target's file system.
pub(crate) struct Staged {
    /// Our path to it.
    pub here: PathBuf,
    /// The target's path to it.
    pub there: String,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.here);
    }
}

/// Copies the payload to `<base>/memray-<uid>/libmemray_payload-<hash>-<nonce>.so` in the
/// target's file system: a directory of ours (0755, not writable by others) holding a
/// 0644 file, so any target user can map it and nobody else can change what it maps. The
/// base is the first of /tmp, /dev/shm and /var/tmp (as the target sees them) whose file
/// system lets the target map code from it: hardened hosts mount /tmp `noexec` (a library
/// there fails to load) or read-only. Copies that earlier attaches left (killed before
/// they could remove theirs) go once they are a minute old.
pub(crate) fn stage_payload(src: &Path, pid: i32, nonce: u64) -> Result<Staged> {
    let bytes = std::fs::read(src).map_err(|e| Error::io(format!("cannot read the payload {}", src.display()), e))?;
    let uid = rustix::process::geteuid().as_raw();
    let hash = format!("{:016x}-{nonce:x}", content_hash(&bytes));
    let mut refused = Vec::new();
    for base in PAYLOAD_BASES {
        let root = format!("/proc/{pid}/root");
        let here_base = format!("{root}{base}");
        match rustix::fs::statvfs(here_base.as_str()) {
            Ok(st) if st.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC) => {
                refused.push(format!("{base} is mounted noexec"));
                continue;
            }
            Ok(st) if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) => {
                refused.push(format!("{base} is read-only"));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                refused.push(format!("{base}: {e}"));
                continue;
            }
        }
        let dir = Path::new(&here_base).join(format!("memray-{uid}"));
        match write_into(&dir, uid, &bytes, &hash) {
            Ok(here) => {
                remove_older_copies(&dir, &here);
                let name = here.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                return Ok(Staged { there: format!("{base}/memray-{uid}/{name}"), here });
            }
            Err(e) => refused.push(e.to_string()),
        }
    }
    Err(Error::NoStagingDirectory(refused.join("; ")))
}

/// Removes copies of other builds of the payload, and PEP 768 scripts, left in `dir`,
/// unless written in the last minute (a concurrent attach of another build may be about
/// to map its copy; a withdrawn script may be about to be opened).
fn remove_older_copies(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = (name.starts_with("libmemray_payload-") && name.ends_with(".so"))
            || (name.starts_with("memray-attach-") && name.ends_with(".py"));
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if ours && old && path != keep {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Writes `libmemray_payload-<hash>.so` (0644, ours) into `dir`, which must be a directory
/// owned by us that nobody else can write into; an existing identical file is reused.
pub fn write_into(dir: &Path, uid: u32, bytes: &[u8], hash: &str) -> Result<PathBuf> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io(format!("cannot inspect {}", dir.display()), e))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(Error::OpenDirectory { dir: dir.to_path_buf(), uid });
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
        return Err(Error::io(format!("cannot write {}", dest.display()), e));
    }
    Ok(dest)
}
