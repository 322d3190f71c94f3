//! Properties of the verdict's topic relations and of token buckets, against naive
//! references.

use std::time::{Duration, Instant};

use gatehouse_trust::policy::{TokenBucket, covers, intersects};
use gatehouse_types::matches;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// 512 cases each; failures are kept in `proptest-regressions/policy_props.txt` (relative
/// to the crate, where cargo runs integration tests) and replayed first on every run.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/policy_props.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// Levels filters and patterns are drawn from.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just(String::new()),
        Just("$x".to_owned()),
        Just("+".to_owned()),
    ]
}

/// A valid, unshared filter of 1 to 4 levels, maybe ending in `#`.
fn filter() -> impl Strategy<Value = String> {
    (proptest::collection::vec(level(), 0..4), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
        .prop_filter("a filter is at least one byte", |f| !f.is_empty())
}

/// Every topic of 1 to `max` levels over the filters' literals plus one they never use
/// (`c`): enough to tell any two filters of fewer than `max` levels apart.
fn universe(max: usize) -> Vec<String> {
    let alphabet = ["a", "b", "", "$x", "c"];
    let mut all: Vec<Vec<&str>> = alphabet.iter().map(|l| vec![*l]).collect();
    let mut frontier = all.clone();
    for _ in 1..max {
        let mut next = Vec::new();
        for t in &frontier {
            for l in alphabet {
                let mut longer = t.clone();
                longer.push(l);
                next.push(longer);
            }
        }
        all.extend(next.iter().cloned());
        frontier = next;
    }
    all.into_iter()
        .map(|levels| levels.join("/"))
        .filter(|t| !t.is_empty())
        .collect()
}

fn levels(f: &str) -> usize {
    f.split('/').count()
}

proptest! {
    #![proptest_config(config())]

    /// `covers(p, f)` holds exactly when every topic `f` matches is matched by `p`.
    #[test]
    fn coverage_agrees_with_enumeration(p in filter(), f in filter()) {
        let topics = universe(levels(&p).max(levels(&f)) + 1);
        let reference = topics.iter().all(|t| !matches(&f, t) || matches(&p, t));
        let covered = covers(&p, &f);
        if covered {
            for t in &topics {
                prop_assert!(!matches(&f, t) || matches(&p, t), "{p} covers {f} but not {t}");
            }
        }
        prop_assert_eq!(covered, reference, "pattern {} filter {}", p, f);
    }

    /// `intersects(a, b)` holds exactly when some topic is matched by both.
    #[test]
    fn intersection_agrees_with_enumeration(a in filter(), b in filter()) {
        let topics = universe(levels(&a).max(levels(&b)) + 1);
        let reference = topics.iter().any(|t| matches(&a, t) && matches(&b, t));
        prop_assert_eq!(intersects(&a, &b), reference, "{} and {}", a, b);
        prop_assert_eq!(intersects(&a, &b), intersects(&b, &a));
    }

    /// A bucket never grants more than its burst plus what its rate refilled, whatever the
    /// order of the times it is asked at.
    #[test]
    fn bucket_never_exceeds_burst_plus_refill(
        rate in 0.1f64..100.0,
        burst in 1u32..50,
        offsets in proptest::collection::vec(0u64..5_000, 1..300),
    ) {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, burst, t0);
        let mut granted = 0u32;
        for ms in &offsets {
            if bucket.try_take(t0 + Duration::from_millis(*ms)) {
                granted += 1;
            }
        }
        let latest = offsets.iter().copied().max().unwrap_or(0) as f64 / 1000.0;
        let bound = f64::from(burst) + rate * latest;
        prop_assert!(f64::from(granted) <= bound + 1e-9, "{granted} > {bound}");
    }

    /// A full bucket grants its burst at once, then nothing until time passes.
    #[test]
    fn bucket_grants_its_burst_then_waits(rate in 0.1f64..100.0, burst in 1u32..50) {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, burst, t0);
        for _ in 0..burst {
            prop_assert!(bucket.try_take(t0));
        }
        prop_assert!(!bucket.try_take(t0));
        prop_assert!(bucket.try_take(t0 + Duration::from_secs_f64(1.001 / rate)));
    }

    /// Messages spaced at the rate are never refused.
    #[test]
    fn bucket_admits_traffic_at_its_rate(rate in 0.1f64..100.0, burst in 1u32..5, n in 1usize..200) {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, burst, t0);
        let step = Duration::from_secs_f64(1.0 / rate * 1.001);
        let mut now = t0;
        for _ in 0..n {
            prop_assert!(bucket.try_take(now));
            now += step;
        }
    }
}

#[test]
fn degenerate_buckets_are_safe() {
    let t0 = Instant::now();
    let mut never = TokenBucket::new(f64::NAN, 0, t0);
    assert_eq!((never.rate_per_sec(), never.burst()), (0.0, 1));
    assert!(never.try_take(t0));
    assert!(!never.try_take(t0 + Duration::from_secs(3600)));
    let mut negative = TokenBucket::new(-5.0, 2, t0);
    assert!(negative.try_take(t0) && negative.try_take(t0));
    assert!(!negative.try_take(t0 + Duration::from_secs(10)));
}

mod posture {
    use gatehouse_trust::posture::{CredentialState, PostureReport, SignedPosture};
    use proptest::prelude::*;

    fn report() -> impl Strategy<Value = PostureReport> {
        (
            proptest::option::of("[0-9]{1,2}\\.[0-9]{1,2}(\\.[0-9]{1,2})?"),
            proptest::option::of(proptest::collection::btree_set("[a-z]{1,8}", 0..5)),
            proptest::option::of(prop_oneof![
                Just(CredentialState::Changed),
                Just(CredentialState::Unchanged),
                Just(CredentialState::NotApplicable)
            ]),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(
                |(firmware, services, default_credentials, time)| PostureReport {
                    firmware,
                    services,
                    default_credentials,
                    time,
                },
            )
    }

    proptest! {
        /// Any report survives the envelope: what a device signs is what the server reads.
        #[test]
        fn reports_round_trip_through_the_envelope(r in report(), sig in proptest::collection::vec(any::<u8>(), 1..80)) {
            let bytes = r.to_bytes();
            let env = SignedPosture::encode(&bytes, &sig);
            let parsed = SignedPosture::parse(&env).expect("own envelope parses");
            prop_assert_eq!(&parsed.report, &bytes);
            prop_assert_eq!(&parsed.signature, &sig);
            prop_assert_eq!(PostureReport::parse(&parsed.report).expect("own report parses"), r);
        }

        /// Arbitrary bytes are refused or parsed, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SignedPosture::parse(&data);
            let _ = PostureReport::parse(&data);
        }
    }
}
