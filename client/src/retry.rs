//! When to send a failed request again, and after how long: `429`, `408` and the `5xx` a
//! proxy or an overloaded registry answers, and connections that failed or broke; exponential
//! backoff with jitter, or the server's `Retry-After` (seconds or an HTTP date) when it sends
//! one.
//!
//! [`crate::registry`] (requests), [`crate::api`] (bodies that break off) and migrate's blob
//! copies call it.

use std::time::{Duration, SystemTime};

use rand::Rng as _;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How often and how patiently to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (the first one included).
    pub attempts: u32,
    /// The first backoff; each further one doubles, up to `max`.
    pub base: Duration,
    /// The longest backoff.
    pub max: Duration,
    /// The longest `Retry-After` obeyed; a server asking for more fails the request.
    pub max_retry_after: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 6,
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl Retry {
    /// A status worth asking again for.
    pub fn retryable_status(s: StatusCode) -> bool {
        matches!(s.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
    }

    /// A transport failure worth retrying: no connection, a timeout, a connection that broke
    /// while sending or reading.
    pub fn retryable_error(e: &reqwest::Error) -> bool {
        e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
    }

    /// The pause before attempt `attempt + 1`, or `None` when attempts are used up.
    pub fn backoff(&self, attempt: u32) -> Option<Duration> {
        if attempt + 1 >= self.attempts {
            return None;
        }
        let exp = self.base.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        // Up to a quarter more, so that many transfers refused at once do not return at once.
        let jitter = rand::rng().random_range(0..=exp.as_millis() as u64 / 4);
        Some(exp + Duration::from_millis(jitter))
    }

    /// The pause before retrying a response with `headers`: its `Retry-After` when it has one
    /// (and it is not longer than `max_retry_after`), else the backoff.
    pub fn wait_for(&self, attempt: u32, headers: &HeaderMap) -> Option<Duration> {
        let backoff = self.backoff(attempt)?;
        match retry_after(headers, SystemTime::now()) {
            Some(d) if d > self.max_retry_after => None,
            Some(d) => Some(d),
            None => Some(backoff),
        }
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, value.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(retry_after(&with("7"), now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&with(&later), now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&with(&earlier), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&with("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_limit_and_stops_after_the_last_attempt() {
        let r = Retry {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
            max_retry_after: Duration::from_secs(60),
        };
        let within = |a, lo: u64, hi: u64| {
            let d = r.backoff(a).unwrap().as_millis() as u64;
            assert!((lo..=hi).contains(&d), "attempt {a}: {d} ms");
        };
        within(0, 100, 125);
        within(1, 200, 250);
        within(2, 350, 437);
        within(3, 350, 437);
        assert_eq!(r.backoff(4), None);
        assert_eq!(r.wait_for(0, &with("2")), Some(Duration::from_secs(2)));
        assert_eq!(r.wait_for(0, &with("61")), None, "longer than max_retry_after");
        assert_eq!(r.wait_for(4, &with("1")), None, "attempts used up");
    }

    #[test]
    fn what_is_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(Retry::retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 201, 202, 400, 401, 403, 404, 416, 501] {
            assert!(!Retry::retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
