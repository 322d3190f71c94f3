//! The broker-wide memory budget for messages waiting in session queues and inflight
//! windows.
//!
//! Every delivery a session holds (queued, or sent and awaiting its acknowledgement) is
//! charged here at its size when it is taken in and released when it leaves, so the
//! bytes that slow or absent subscribers make the broker hold have one ceiling whatever
//! their number. A message queued for n sessions is charged n times: the count is an
//! upper bound on what the queues hold, never an underestimate.
//!
//! What happens as the budget fills is a pure function of the bytes in use
//! ([`MemoryBudget::admits`]): QoS 0 deliveries are taken only while three quarters of
//! the budget are free enough for them, so at-least-once traffic keeps the last quarter;
//! QoS 1 and 2 deliveries are taken up to the whole budget; and a QoS 1 or 2 PUBLISH that
//! would not fit is refused before it is routed (MQTT 5: 0x97, quota exceeded).

use gatehouse_mqtt::QoS;
use prometheus_client::metrics::gauge::Gauge;

/// The bytes of messages held by every session together, and their ceiling.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    /// Bytes charged now; also the `gatehouse_message_memory_used_bytes` gauge.
    used: Gauge,
    limit: usize,
}

/// The share of the budget QoS 0 deliveries may use, as a fraction `NUM / DEN`.
const QOS0_SHARE: (usize, usize) = (3, 4);

// === impl MemoryBudget ===

impl MemoryBudget {
    /// A budget of `limit` bytes whose use is shown on `used`.
    pub fn new(limit: usize, used: Gauge) -> Self {
        used.set(0);
        Self { used, limit }
    }

    /// The most bytes in use after which a delivery of this QoS is still taken.
    pub fn ceiling(&self, qos: QoS) -> usize {
        match qos {
            QoS::AtMostOnce => self.limit / QOS0_SHARE.1 * QOS0_SHARE.0,
            QoS::AtLeastOnce | QoS::ExactlyOnce => self.limit,
        }
    }

    /// Whether `cost` more bytes of this QoS fit with `used` bytes in use.
    pub fn admits(&self, used: usize, cost: usize, qos: QoS) -> bool {
        used.saturating_add(cost) <= self.ceiling(qos)
    }

    /// Charges `cost` bytes if they fit under this QoS's ceiling.
    pub fn try_charge(&self, cost: usize, qos: QoS) -> bool {
        let before = self.used.inc_by(as_i64(cost));
        if self.admits(as_usize(before), cost, qos) {
            true
        } else {
            self.used.dec_by(as_i64(cost));
            false
        }
    }

    /// Charges `cost` bytes whatever the use: for a delivery moving from the queue to the
    /// inflight window, or one restored from saved state.
    pub fn charge(&self, cost: usize) {
        self.used.inc_by(as_i64(cost));
    }

    /// Gives back `cost` bytes.
    pub fn release(&self, cost: usize) {
        if cost > 0 {
            self.used.dec_by(as_i64(cost));
        }
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        as_usize(self.used.get())
    }

    /// Whether a new QoS 1 or 2 message may enter the broker now: whether one delivery
    /// of it, `cost` bytes, would still be taken.
    pub fn admits_publish(&self, cost: usize) -> bool {
        self.admits(self.used(), cost, QoS::AtLeastOnce)
    }
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn as_usize(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos0_stops_at_three_quarters_and_the_rest_at_the_limit() {
        let b = MemoryBudget::new(1000, Gauge::default());
        assert!(b.try_charge(700, QoS::AtMostOnce));
        assert!(
            b.try_charge(50, QoS::AtMostOnce),
            "750 is the QoS 0 ceiling"
        );
        assert!(!b.try_charge(1, QoS::AtMostOnce));
        assert!(
            b.try_charge(250, QoS::AtLeastOnce),
            "QoS 1 may fill the budget"
        );
        assert!(!b.try_charge(1, QoS::ExactlyOnce));
        assert!(!b.admits_publish(1));
        assert_eq!(b.used(), 1000);
        b.release(300);
        assert!(b.admits_publish(300));
        assert!(!b.admits_publish(301));
        assert!(b.try_charge(50, QoS::AtMostOnce));
    }

    #[test]
    fn a_refused_charge_leaves_nothing_behind() {
        let b = MemoryBudget::new(100, Gauge::default());
        assert!(!b.try_charge(101, QoS::AtLeastOnce));
        assert_eq!(b.used(), 0);
        b.charge(150);
        assert_eq!(b.used(), 150, "forced charges may pass the limit");
        assert!(!b.try_charge(1, QoS::AtLeastOnce));
    }
}
