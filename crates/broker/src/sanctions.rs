//! Sanctions the respond stage puts on the data plane: source addresses banned for a
//! while (refused at accept, before any TLS work) and devices throttled to a rate for a
//! while (publishes beyond it refused). Both expire by themselves and can be lifted.
//!
//! The hot path pays one atomic load when nothing is sanctioned.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gatehouse_types::DeviceRef;
use parking_lot::{Mutex, RwLock};

/// A ban in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanInfo {
    /// The address.
    pub addr: IpAddr,
    /// Time left.
    pub remaining: Duration,
}

/// A throttle in force.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleInfo {
    /// The device.
    pub device: DeviceRef,
    /// Publishes allowed per second.
    pub rate: f64,
    /// Time left.
    pub remaining: Duration,
}

#[derive(Debug)]
struct Throttle {
    rate: f64,
    until: Instant,
    bucket: Mutex<(f64, Instant)>,
}

#[derive(Debug, Default)]
pub(crate) struct Sanctions {
    bans: RwLock<HashMap<IpAddr, Instant>>,
    ban_count: AtomicUsize,
    throttles: RwLock<HashMap<DeviceRef, Throttle>>,
    throttle_count: AtomicUsize,
}

// === impl Sanctions ===

impl Sanctions {
    pub fn ban(&self, addr: IpAddr, until: Instant) {
        let mut b = self.bans.write();
        b.insert(addr, until);
        self.ban_count.store(b.len(), Ordering::Release);
    }

    pub fn unban(&self, addr: IpAddr) -> bool {
        let mut b = self.bans.write();
        let had = b.remove(&addr).is_some();
        self.ban_count.store(b.len(), Ordering::Release);
        had
    }

    pub fn is_banned(&self, addr: IpAddr, now: Instant) -> bool {
        if self.ban_count.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.bans
            .read()
            .get(&addr)
            .is_some_and(|until| *until > now)
    }

    pub fn bans(&self, now: Instant) -> Vec<BanInfo> {
        let mut v: Vec<BanInfo> = self
            .bans
            .read()
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(addr, until)| BanInfo {
                addr: *addr,
                remaining: until.duration_since(now),
            })
            .collect();
        v.sort_by_key(|b| b.addr);
        v
    }

    pub fn throttle(&self, device: DeviceRef, rate: f64, until: Instant, now: Instant) {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            0.0
        };
        let mut t = self.throttles.write();
        t.insert(
            device,
            Throttle {
                rate,
                until,
                // Start with one second's worth: a throttled device is not cut off at once
                // beyond its rate.
                bucket: Mutex::new((rate.max(1.0), now)),
            },
        );
        self.throttle_count.store(t.len(), Ordering::Release);
    }

    pub fn unthrottle(&self, device: &DeviceRef) -> bool {
        let mut t = self.throttles.write();
        let had = t.remove(device).is_some();
        self.throttle_count.store(t.len(), Ordering::Release);
        had
    }

    pub fn throttles(&self, now: Instant) -> Vec<ThrottleInfo> {
        let mut v: Vec<ThrottleInfo> = self
            .throttles
            .read()
            .iter()
            .filter(|(_, t)| t.until > now)
            .map(|(d, t)| ThrottleInfo {
                device: d.clone(),
                rate: t.rate,
                remaining: t.until.duration_since(now),
            })
            .collect();
        v.sort_by_key(|t| t.device.to_string());
        v
    }

    /// Whether a publish of `device` fits its throttle (always, when it has none).
    pub fn admit_publish(&self, device: &DeviceRef, now: Instant) -> bool {
        if self.throttle_count.load(Ordering::Acquire) == 0 {
            return true;
        }
        let t = self.throttles.read();
        let Some(th) = t.get(device) else {
            return true;
        };
        if th.until <= now {
            return true;
        }
        let burst = th.rate.max(1.0);
        let mut b = th.bucket.lock();
        let elapsed = now.saturating_duration_since(b.1).as_secs_f64();
        b.0 = (b.0 + elapsed * th.rate).min(burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops what has expired.
    pub fn expire(&self, now: Instant) {
        if self.ban_count.load(Ordering::Acquire) > 0 {
            let mut b = self.bans.write();
            b.retain(|_, until| *until > now);
            self.ban_count.store(b.len(), Ordering::Release);
        }
        if self.throttle_count.load(Ordering::Acquire) > 0 {
            let mut t = self.throttles.write();
            t.retain(|_, th| th.until > now);
            self.throttle_count.store(t.len(), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(d: &str) -> DeviceRef {
        DeviceRef::new("t".parse().unwrap(), d.parse().unwrap())
    }

    #[test]
    fn a_ban_holds_until_it_expires_or_is_lifted() {
        let s = Sanctions::default();
        let now = Instant::now();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(!s.is_banned(a, now));
        s.ban(a, now + Duration::from_secs(10));
        assert!(s.is_banned(a, now));
        assert!(!s.is_banned(other, now));
        assert!(!s.is_banned(a, now + Duration::from_secs(11)));
        assert_eq!(s.bans(now).len(), 1);
        s.expire(now + Duration::from_secs(11));
        assert!(s.bans(now).is_empty());
        s.ban(a, now + Duration::from_secs(10));
        assert!(s.unban(a));
        assert!(!s.is_banned(a, now));
        assert!(!s.unban(a));
    }

    #[test]
    fn a_throttle_caps_the_rate_of_one_device_only() {
        let s = Sanctions::default();
        let now = Instant::now();
        s.throttle(dev("a"), 2.0, now + Duration::from_secs(60), now);
        let admitted = (0..10).filter(|_| s.admit_publish(&dev("a"), now)).count();
        assert_eq!(admitted, 2, "burst is one second's worth");
        assert!((0..10).all(|_| s.admit_publish(&dev("b"), now)));
        // Half a second later: one more token.
        let later = now + Duration::from_millis(500);
        assert!(s.admit_publish(&dev("a"), later));
        assert!(!s.admit_publish(&dev("a"), later));
        // Expired: free again.
        let after = now + Duration::from_secs(61);
        assert!((0..10).all(|_| s.admit_publish(&dev("a"), after)));
        assert!(s.unthrottle(&dev("a")));
    }
}
