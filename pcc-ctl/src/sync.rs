//! One pattern for the controller's mutexes: `lock(&mutex)`, which recovers the value from a
//! poisoned mutex instead of panicking in turn.
//!
//! Why recover: every critical section here is short and writes whole values (a WAN view
//! replaced, a report stored, a map entry written), so the value a panicking holder leaves is
//! one a reader can use; and the dataplane forwards without the controller, so one panicked
//! task (a probe, an HTTP request) should not take the event loop, and with it the clean-up,
//! down with it. A panic is still reported where it happened.
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking its value over from a holder that panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let m = Mutex::new(1);
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let mut g = m.lock().unwrap();
                *g = 2;
                panic!("holder panics");
            })
            .join()
        });
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 2);
    }
}
