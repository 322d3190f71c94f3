//! When to renew: a pure function of the certificate's validity.

use std::time::Duration;

use time::OffsetDateTime;

/// The moment to renew a certificate valid from `not_before` to `not_after`: two thirds
/// into its lifetime, leaving a third to retry in if the server is unreachable. A
/// certificate whose validity is empty or reversed is due at `not_before`.
pub fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    let lifetime = not_after - not_before;
    if lifetime.is_negative() || lifetime.is_zero() {
        return not_before;
    }
    not_before + (lifetime / 3) * 2
}

/// How long from `now` until `at`; zero if `at` has passed.
pub fn until(at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;

    #[test]
    fn thirty_day_certificate_renews_after_twenty_days() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(
            renew_at(nb, nb + time::Duration::days(30)),
            nb + time::Duration::days(20)
        );
    }

    #[test]
    fn reversed_validity_is_due_at_once() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(renew_at(nb, nb - time::Duration::days(1)), nb);
        assert_eq!(renew_at(nb, nb), nb);
    }

    #[test]
    fn until_is_zero_in_the_past() {
        let t = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(until(t, t + time::Duration::SECOND), Duration::ZERO);
        assert_eq!(until(t + time::Duration::SECOND, t), Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn renewal_is_inside_the_validity_at_two_thirds(
            start in 0i64..4_000_000_000,
            secs in 1i64..(200 * 365 * 86_400),
        ) {
            let nb = OffsetDateTime::from_unix_timestamp(start).expect("in range");
            let na = nb + time::Duration::seconds(secs);
            let at = renew_at(nb, na);
            prop_assert!(at > nb || secs < 2);
            prop_assert!(at < na);
            let expected: OffsetDateTime = nb + time::Duration::seconds(secs * 2 / 3);
            prop_assert!((at - expected).abs() <= time::Duration::SECOND);
        }
    }
}
