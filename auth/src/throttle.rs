//! Slowing down repeated failed logins, without affecting anyone else.
//!
//! A [`Throttle`] counts failures per key. After `free` failures, each further attempt with
//! that key waits (asynchronously: no thread is held) twice as long as the one before, up to
//! [`MAX_DELAY`]. A success for the key, or [`FORGET`] of quiet, clears it. The table is
//! bounded: when full, quiet entries go first, and a flood of new keys cannot grow memory.
//!
//! `Auth` keeps two: per address and user ([`FREE`] failures), so guessing one user's password
//! is slowed whatever other logins from the same address succeed; and per address alone
//! ([`FREE_PER_ADDRESS`] failures, not cleared by successes), so trying a few passwords for
//! each of many users is slowed too.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures for one user from one address before its attempts are slowed down.
pub const FREE: u32 = 5;
/// Failures from one address, whatever the users, before its attempts are slowed down.
pub const FREE_PER_ADDRESS: u32 = 50;
/// The longest wait.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// Quiet time after which an address's failures are forgotten.
pub const FORGET: Duration = Duration::from_secs(600);
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_ENTRIES: usize = 65_536;

/// Failure counts per key.
pub struct Throttle<K> {
    free: u32,
    failures: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K: Hash + Eq> Throttle<K> {
    /// A throttle letting `free` failures per key through unslowed.
    pub fn new(free: u32) -> Throttle<K> {
        Throttle {
            free,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long an attempt with `key` waits before its credentials are checked.
    pub fn delay(&self, key: &K) -> Duration {
        let map = self.failures.lock().expect("throttle lock");
        match map.get(key) {
            Some((n, at)) if *n >= self.free && at.elapsed() < FORGET => {
                let doublings = (n - self.free).min(16);
                (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    /// Record a failed attempt.
    pub fn failed(&self, key: K) {
        let mut map = self.failures.lock().expect("throttle lock");
        if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
            map.retain(|_, (_, at)| at.elapsed() < FORGET);
            if map.len() >= MAX_ENTRIES {
                return;
            }
        }
        let e = map.entry(key).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FORGET {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = Instant::now();
    }

    /// Record a successful attempt.
    pub fn succeeded(&self, key: &K) {
        self.failures.lock().expect("throttle lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_down_only_their_key() {
        let t = Throttle::new(FREE);
        let (a, b) = ("10.0.0.1", "10.0.0.2");
        for _ in 0..FREE {
            assert_eq!(t.delay(&a), Duration::ZERO);
            t.failed(a);
        }
        assert_eq!(t.delay(&a), FIRST_DELAY);
        t.failed(a);
        assert_eq!(t.delay(&a), FIRST_DELAY * 2);
        for _ in 0..40 {
            t.failed(a);
        }
        assert_eq!(t.delay(&a), MAX_DELAY);
        assert_eq!(t.delay(&b), Duration::ZERO, "another key is not slowed");
        t.succeeded(&a);
        assert_eq!(t.delay(&a), Duration::ZERO);
    }
}
