//! Per-caller rate limit: a token bucket per `city/org`, refilled continuously.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A caller over its rate: when it may try again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("caller {caller} exceeded its rate limit of {rate} calls/s (burst {burst})")]
pub struct RateLimited {
    pub caller: String,
    pub rate: f64,
    pub burst: f64,
    /// Until the next token is there.
    pub retry_after: Duration,
}

/// Most callers tracked; beyond it idle buckets (full again) are forgotten.
const MAX_CALLERS: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_s: u64, burst: u64) -> Self {
        RateLimiter {
            rate: rate_per_s as f64,
            burst: burst as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `caller`, or says when one will be there.
    pub fn check(&self, caller: &str) -> Result<(), RateLimited> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_CALLERS && !buckets.contains_key(caller) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(caller.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(RateLimited {
                caller: caller.to_string(),
                rate: self.rate,
                burst: self.burst,
                retry_after: Duration::from_secs_f64(((1.0 - b.tokens) / self.rate).max(0.0)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_per_caller() {
        let r = RateLimiter::new(1, 3);
        for _ in 0..3 {
            r.check("jinan/hrss").unwrap();
        }
        assert!(r.check("jinan/hrss").is_err());
        r.check("jinan/ybj").unwrap();
    }
}
