//! Token buckets: the rates a verdict grants, enforced per session.

use std::time::Instant;

/// A token bucket: holds up to `burst` tokens, refilled at `rate_per_sec`; each message
/// takes one. Pure: the caller passes the time, so it is tested without clocks.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: u32,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A rate that is negative or not finite is taken as zero (the bucket
    /// never refills); a burst of zero is taken as one.
    pub fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Self {
        let rate_per_sec = if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
            rate_per_sec
        } else {
            0.0
        };
        let burst = burst.max(1);
        Self {
            rate_per_sec,
            burst,
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one. A `now` earlier than a previous call adds nothing.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(f64::from(self.burst));
            self.last = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The refill rate, tokens per second.
    pub fn rate_per_sec(&self) -> f64 {
        self.rate_per_sec
    }

    /// The capacity.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}
