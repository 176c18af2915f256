//! Slowing down repeated failed logins from one address, without affecting anyone else.
//!
//! After [`FREE`] failures in a row from an address, each further attempt from it waits
//! (asynchronously: no thread is held) twice as long as the one before, up to [`MAX_DELAY`].
//! A success or [`FORGET`] of quiet clears the address. The table is bounded: when full, the
//! oldest quiet entries go first, and a flood of new addresses cannot grow memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before attempts are slowed down.
pub const FREE: u32 = 5;
/// The longest wait.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// Quiet time after which an address's failures are forgotten.
pub const FORGET: Duration = Duration::from_secs(600);
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_ENTRIES: usize = 65_536;

/// Failure counts per address.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    /// How long an attempt from `ip` waits before its credentials are checked.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let map = self.failures.lock().expect("throttle lock");
        match map.get(&ip) {
            Some((n, at)) if *n >= FREE && at.elapsed() < FORGET => {
                let doublings = (n - FREE).min(16);
                (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    /// Record a failed attempt.
    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().expect("throttle lock");
        if map.len() >= MAX_ENTRIES && !map.contains_key(&ip) {
            map.retain(|_, (_, at)| at.elapsed() < FORGET);
            if map.len() >= MAX_ENTRIES {
                return;
            }
        }
        let e = map.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FORGET {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = Instant::now();
    }

    /// Record a successful attempt.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().expect("throttle lock").remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_down_only_their_address() {
        let t = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..FREE {
            assert_eq!(t.delay(a), Duration::ZERO);
            t.failed(a);
        }
        assert_eq!(t.delay(a), FIRST_DELAY);
        t.failed(a);
        assert_eq!(t.delay(a), FIRST_DELAY * 2);
        for _ in 0..40 {
            t.failed(a);
        }
        assert_eq!(t.delay(a), MAX_DELAY);
        assert_eq!(t.delay(b), Duration::ZERO, "another address is not slowed");
        t.succeeded(a);
        assert_eq!(t.delay(a), Duration::ZERO);
    }
}
