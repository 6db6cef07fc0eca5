//! The running CPython processes, for `memray attach` without a PID (its picker and its
//! error message).

/// A running CPython process.
pub struct PythonProcess {
    pub pid: i32,
    pub user: String,
    /// "3.12", or "?" when neither the executable nor a libpython names it.
    pub version: String,
    pub rss_mb: f64,
    pub command: String,
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// "3.12" from names like libpython3.12.so.1.0 or python3.12.
fn version_in(name: &str) -> Option<String> {
    let i = name.find("python")? + 6;
    let v: String = name[i..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let v = v.trim_end_matches('.');
    (v.contains('.')).then(|| v.to_string())
}

/// Every process (but this one) whose executable is called python* or that maps a
/// libpython, by PID.
pub fn python_processes() -> Vec<PythonProcess> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let base = exe.rsplit('/').next().unwrap_or("").to_string();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let lib = maps.lines().filter_map(|l| l.rsplit('/').next()).find(|n| n.starts_with("libpython")).map(str::to_string);
        if !base.starts_with("python") && lib.is_none() {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string()).unwrap_or_default();
        let uid = field("Uid:").split_whitespace().nth(1).and_then(|u| u.parse().ok()).unwrap_or(0);
        let rss_kb: f64 = field("VmRSS:").split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        out.push(PythonProcess {
            pid,
            user: user_name(uid),
            version: lib.as_deref().and_then(version_in).or_else(|| version_in(&base)).unwrap_or_else(|| "?".into()),
            rss_mb: rss_kb / 1024.0,
            command: crate::command_line(pid),
        });
    }
    out.sort_by_key(|c| c.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_executable_and_library_names() {
        assert_eq!(version_in("libpython3.12.so.1.0").as_deref(), Some("3.12"));
        assert_eq!(version_in("python3.8").as_deref(), Some("3.8"));
        assert_eq!(version_in("libpython3.so"), None);
        assert_eq!(version_in("python"), None);
    }

    #[test]
    fn finds_a_running_interpreter_with_its_user() {
        let _turn = crate::children_turn();
        let Ok(mut child) = std::process::Command::new("python3").args(["-c", "import time; time.sleep(30)"]).spawn() else {
            eprintln!("skipped: no python3 on PATH");
            return;
        };
        let pid = child.id() as i32;
        // The executable is python3.x (a link) once exec is done.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let all = python_processes();
            if let Some(p) = all.into_iter().find(|p| p.pid == pid) {
                break Some(p);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        let found = found.expect("the child interpreter is listed");
        assert_eq!(found.user, user_name(rustix::process::geteuid().as_raw()));
        assert!(found.version.starts_with("3."), "{}", found.version);
        assert!(found.command.contains("time.sleep(30)"), "{}", found.command);
    }
}
