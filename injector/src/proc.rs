//! The few /proc files the injector reads (no procfs crate: these are a handful of lines).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One line of /proc/PID/maps.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// "r-xp" and the like.
    pub perms: String,
    pub inode: u64,
    /// The file as the target sees it (empty for anonymous mappings). A trailing
    /// " (deleted)" is kept.
    pub path: String,
}

impl Mapping {
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
}

pub const NOT_DUMPABLE: &str = "it is not dumpable (it called prctl(PR_SET_DUMPABLE, 0), or it changed user or runs a setuid program): \
     only root (CAP_SYS_PTRACE) can attach to it";

pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Who traces a process, for a message: another `memray attach`, or a debugger.
pub fn describe_tracer(tracer: i32) -> String {
    let name = status(tracer).map(|s| s.name).unwrap_or_default();
    if name == "memray" {
        format!("another `memray attach` (process {tracer}) is attaching to it right now; try again when it is done")
    } else {
        format!("it is already being traced by process {tracer} ({name}); detach that debugger first")
    }
}

/// False when the kernel hides the process's memory from its own user: a process that
/// is not dumpable (its /proc/PID/mem and maps are root's then).
pub fn dumpable_by_us(pid: i32) -> bool {
    match std::fs::File::open(format!("/proc/{pid}/maps")) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::PermissionDenied,
    }
}

fn not_found_or(pid: i32, what: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchProcess(pid),
        std::io::ErrorKind::PermissionDenied => {
            let ours = status(pid).is_ok_and(|s| s.uid == euid());
            let cause = if ours {
                NOT_DUMPABLE.to_string()
            } else {
                format!("cannot read /proc/{pid}/{what} (run as root or as the process's user)")
            };
            Error::PermissionDenied { pid, cause }
        }
        _ => Error::io(format!("cannot read /proc/{pid}/{what}"), e),
    }
}

pub fn read_text(pid: i32, what: &str) -> Result<String> {
    std::fs::read(format!("/proc/{pid}/{what}")).map(|b| String::from_utf8_lossy(&b).into_owned()).map_err(|e| not_found_or(pid, what, e))
}

pub fn exists(pid: i32) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

pub fn maps(pid: i32) -> Result<Vec<Mapping>> {
    let text = read_text(pid, "maps")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(offset), Some(_dev), Some(inode)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = fields.next().unwrap_or("").trim_start().to_string();
        let Some((s, e)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end), Ok(offset)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16), u64::from_str_radix(offset, 16))
        else {
            continue;
        };
        out.push(Mapping { start, end, offset, perms: perms.to_string(), inode: inode.parse().unwrap_or(0), path });
    }
    Ok(out)
}

/// The fields of /proc/PID/status the checks need.
#[derive(Debug, Default, Clone)]
pub struct Status {
    pub name: String,
    pub state: char,
    pub tracer_pid: i32,
    pub uid: u32,
    /// Signals with a handler (`SigCgt`), bit N-1 for signal N.
    pub caught: u64,
    /// The id in the innermost PID namespace (`NSpid`'s last field).
    pub ns_pid: Option<i32>,
}

pub fn status(pid: i32) -> Result<Status> {
    parse_status(&read_text(pid, "status")?)
}

pub fn task_status(pid: i32, tid: i32) -> Result<Status> {
    parse_status(&read_text(pid, &format!("task/{tid}/status"))?)
}

fn parse_status(text: &str) -> Result<Status> {
    let mut st = Status::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        match k {
            "Name" => st.name = v.to_string(),
            "State" => st.state = v.chars().next().unwrap_or('?'),
            "TracerPid" => st.tracer_pid = v.parse().unwrap_or(0),
            // Real, effective, saved, filesystem: the effective uid decides.
            "Uid" => st.uid = v.split_whitespace().nth(1).and_then(|u| u.parse().ok()).unwrap_or(0),
            "SigCgt" => st.caught = u64::from_str_radix(v, 16).unwrap_or(0),
            "NSpid" => st.ns_pid = v.split_whitespace().last().and_then(|p| p.parse().ok()),
            _ => {}
        }
    }
    Ok(st)
}

/// Thread ids of the process, as listed now.
pub fn tasks(pid: i32) -> Result<Vec<i32>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| not_found_or(pid, "task", e))?;
    let mut out: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    out.sort_unstable();
    Ok(out)
}

/// The parent's id, from /proc/PID/stat (after the command name, which may hold spaces
/// and parentheses: the last ')' ends it).
pub fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}

/// True when the process sees the same mount namespace as we do (paths mean the same).
pub fn same_mount_namespace(pid: i32) -> bool {
    match (std::fs::read_link("/proc/self/ns/mnt"), std::fs::read_link(format!("/proc/{pid}/ns/mnt"))) {
        (Ok(a), Ok(b)) => a == b,
        // Cannot tell (old kernel, or no permission yet): assume the same.
        _ => true,
    }
}

/// A path of the target's, opened from here: through /proc/PID/root so that a chroot
/// is followed.
pub fn target_path(pid: i32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

/// The kernel's Yama setting, if the module is present.
pub fn ptrace_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok()?.trim().parse().ok()
}

/// This process's seccomp mode (/proc/self/status: 0 none, 1 strict, 2 filter).
pub fn own_seccomp_mode() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|l| l.strip_prefix("Seccomp:")).and_then(|v| v.trim().parse().ok())
}

/// Whether this process has CAP_SYS_PTRACE in its effective set.
pub fn have_cap_sys_ptrace() -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else { return false };
    text.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 19) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let st = parse_status("Name:\tpython3\nState:\tS (sleeping)\nTracerPid:\t42\nUid:\t1000\t1001\t1000\t1000\nNSpid:\t4321\t7\n")
            .expect("parse");
        assert_eq!(st.ns_pid, Some(7));
        assert_eq!(st.name, "python3");
        assert_eq!(st.state, 'S');
        assert_eq!(st.tracer_pid, 42);
        assert_eq!(st.uid, 1001);
    }

    #[test]
    fn reads_own_maps_and_tasks() {
        let pid = std::process::id() as i32;
        let maps = maps(pid).expect("maps");
        assert!(maps.iter().any(|m| m.is_file()));
        assert!(tasks(pid).expect("tasks").contains(&pid));
        assert!(exists(pid));
        assert!(same_mount_namespace(pid));
        assert_eq!(parent(pid), Some(std::os::unix::process::parent_id() as i32));
    }
}
