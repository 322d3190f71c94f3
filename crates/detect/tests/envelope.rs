//! The profile is the benign envelope (threat 18): a value inside the range the model's
//! profile declares never yields more than a low finding, however the cohort looks — also
//! when most of the fleet reports the same value and the cohort's spread collapses.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use gatehouse_detect::DetectConfig;
use gatehouse_types::Severity;
use proptest::prelude::*;

/// The profile's ranges (see `common::profile`).
const TEMP: (f64, f64) = (-40.0, 85.0);
const HUM: (f64, f64) = (0.0, 100.0);

/// A device publishing `values` (temperature, humidity) once a second from `start`.
fn steady(trace: &mut Trace, name: &str, addr: u8, start: f64, values: &[(f64, f64)]) {
    trace.push(connect(start, name, ip(2, addr), 60));
    for (i, (temp, hum)) in values.iter().enumerate() {
        trace.push(publish(
            start + 0.2 + i as f64,
            name,
            &format!("devices/{name}/telemetry"),
            &format!(r#"{{"temp":{temp},"env":{{"hum":{hum}}}}}"#),
        ));
    }
}

fn worst_for(findings: &[gatehouse_types::Finding], device: &str) -> Option<Severity> {
    findings
        .iter()
        .filter(|f| {
            f.device
                .as_ref()
                .is_some_and(|d| d.device.as_str() == device)
        })
        .map(|f| f.severity)
        .max()
}

fn in_range((lo, hi): (f64, f64)) -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => lo..=hi,
        1 => Just(lo),
        1 => Just(hi),
        // Values on the 0.1 grid a real sensor reports.
        2 => ((lo * 10.0) as i64..=(hi * 10.0) as i64).prop_map(|v| v as f64 / 10.0),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn values_inside_the_profile_never_restrict_a_device(
        cohort_temp in in_range(TEMP),
        cohort_hum in in_range(HUM),
        odd_members in proptest::collection::vec((in_range(TEMP), in_range(HUM)), 0..3),
        device in proptest::collection::vec((in_range(TEMP), in_range(HUM)), 1..8),
        repeat in 1usize..40,
    ) {
        // A cohort of eight, most reporting exactly the same value (its MAD is zero), a
        // few others anywhere in the range, for three minutes.
        let secs = 180;
        let mut trace = Trace::default();
        for i in 0..8u8 {
            let v = odd_members
                .get(usize::from(i))
                .copied()
                .unwrap_or((cohort_temp, cohort_hum));
            steady(&mut trace, &format!("s{i}"), i, 0.1 * f64::from(i), &vec![v; secs]);
        }
        // The device under test: any sequence of in-range readings, each held a while.
        let values: Vec<(f64, f64)> = device
            .iter()
            .flat_map(|v| std::iter::repeat_n(*v, repeat))
            .cycle()
            .take(secs)
            .collect();
        steady(&mut trace, "dut", 99, 0.5, &values);
        let mut e = engine_for(DetectConfig::default(), 8, &["dut"]);
        let findings = run(&mut e, trace);
        let worst = worst_for(&findings, "dut");
        prop_assert!(
            worst.is_none_or(|s| s <= Severity::Low),
            "worst {:?}:\n{}",
            worst,
            show(&findings)
        );
    }
}

#[test]
fn a_fleet_reporting_one_value_does_not_frame_the_device_one_step_away() {
    // The infusion pumps of the demo: 30 of 40 devices report exactly the same value, the
    // others a step or a few away. The MAD is zero; nobody is an outlier.
    let mut trace = Trace::default();
    for i in 0..40u8 {
        let temp = if i < 30 {
            21.0
        } else {
            21.0 + 0.1 * f64::from(i - 29)
        };
        steady(
            &mut trace,
            &format!("s{i}"),
            i,
            0.1 * f64::from(i),
            &vec![(temp, 45.0); 300],
        );
    }
    let mut e = engine_for(DetectConfig::default(), 40, &[]);
    let findings = run(&mut e, trace);
    assert!(findings.is_empty(), "{}", show(&findings));
}

#[test]
fn outside_the_range_severity_grows_with_the_distance() {
    // A cohort at 21 °C; one device slowly drifting past the top of the range (85) and one
    // far beyond it: cohort deviations outside the range are at least medium, and high
    // beyond the range's own width.
    let mut trace = Trace::default();
    for i in 0..8u8 {
        steady(
            &mut trace,
            &format!("s{i}"),
            i,
            0.1 * f64::from(i),
            &vec![(21.0, 45.0); 240],
        );
    }
    steady(&mut trace, "near", 50, 0.5, &vec![(90.0, 45.0); 240]);
    steady(&mut trace, "far", 51, 0.5, &vec![(300.0, 45.0); 240]);
    let mut e = engine_for(DetectConfig::default(), 8, &["near", "far"]);
    let findings = run(&mut e, trace);
    let sev = |d: &str| {
        of_kind(&findings, "cohort_deviation")
            .into_iter()
            .filter(|f| f.device.as_ref().is_some_and(|x| x.device.as_str() == d))
            .map(|f| f.severity)
            .max()
    };
    assert_eq!(sev("near"), Some(Severity::Medium), "{}", show(&findings));
    assert_eq!(sev("far"), Some(Severity::High), "{}", show(&findings));
    for i in 0..8 {
        assert!(
            worst_for(&findings, &format!("s{i}")).is_none(),
            "{}",
            show(&findings)
        );
    }
}
