//! The writer's lock: a futex mutex that never allocates and that fork handlers can take
//! in the parent and release in both parent and child (std's Mutex cannot be force-released).

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

pub struct FutexMutex<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `state`, as for any mutex.
unsafe impl<T: Send> Sync for FutexMutex<T> {}
// SAFETY: the mutex owns its value; moving it moves a `T: Send`.
unsafe impl<T: Send> Send for FutexMutex<T> {}

pub struct FutexGuard<'a, T> {
    lock: &'a FutexMutex<T>,
}

impl<T> FutexMutex<T> {
    pub const fn new(value: T) -> Self {
        FutexMutex { state: AtomicU32::new(UNLOCKED), value: UnsafeCell::new(value) }
    }

    #[inline]
    pub fn lock(&self) -> FutexGuard<'_, T> {
        self.raw_lock();
        FutexGuard { lock: self }
    }

    #[inline]
    pub fn raw_lock(&self) {
        if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return;
        }
        self.lock_slow();
    }

    #[cold]
    fn lock_slow(&self) {
        for _ in 0..100 {
            std::hint::spin_loop();
            if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return;
            }
        }
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED, None);
        }
    }

    /// Releases the lock. Also used by the fork handlers, where the lock was taken by
    /// `raw_lock` in the prepare handler and no guard exists.
    #[inline]
    pub fn raw_unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_wake(&self.state, 1);
        }
    }

    /// In a fork child only one thread exists: whatever the state says, nobody holds it.
    pub fn reset_after_fork(&self) {
        self.state.store(UNLOCKED, Ordering::Relaxed);
    }
}

impl<T> Deref for FutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for FutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while the lock is held, and is not Clone.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for FutexGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.raw_unlock();
    }
}

/// Sleeps while `word` holds `expected`, for at most `timeout` (None: until woken). May
/// return early (a wake, a signal, a spurious wakeup): callers check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<std::time::Duration>) {
    let ts = timeout.map(|d| libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 that outlives the call; the timeout, if
    // any, is a relative timespec on our stack, read during the call only.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, expected, ts_ptr);
    }
}

/// Wakes up to `n` threads sleeping in `futex_wait` on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_exactly_under_contention() {
        let m = Arc::new(FutexMutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*m.lock(), 200_000);
    }
}
