//! For tests of the attacher's death at every instant. With `MEMRAY_ATTACH_TEST_KILL_AT=N`
//! the attacher kills itself (SIGKILL, as the OOM killer would) just before the N-th
//! operation that changes the target: a ptrace request that resumes, stops or writes to a
//! thread, or a write to its memory. Between two such operations the target's state only
//! moves by its own doing, so N = 1, 2, ... walks every state we can leave it in. An
//! attach that ends without dying had fewer operations than N.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static DONE: AtomicU64 = AtomicU64::new(0);

fn kill_at() -> Option<u64> {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    *AT.get_or_init(|| std::env::var("MEMRAY_ATTACH_TEST_KILL_AT").ok().and_then(|v| v.parse().ok()))
}

/// Called right before each operation that changes the target (`op`, on thread or
/// process `tid`). Each is listed on stderr, so a test shows which one it died before.
pub fn before_change(op: &str, tid: i32) {
    if let Some(n) = kill_at() {
        let k = DONE.fetch_add(1, Ordering::Relaxed) + 1;
        eprintln!("memray attach: operation {k}: {op} {tid}");
        if k == n {
            // SAFETY: kill/getpid on ourselves; SIGKILL does not return.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}
