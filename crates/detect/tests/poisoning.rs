//! Cohort baselines resist poisoning: a fifth of a model's fleet lying together neither
//! hides the liars nor makes the honest devices look odd.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use gatehouse_detect::DetectConfig;

#[test]
fn twenty_percent_poisoned_devices_neither_hide_nor_frame() {
    const N: usize = 50;
    const POISONED: usize = 10;
    let end = 400.0;
    let mut trace = Trace::default();
    let mut rng = Rng::new(41);
    // Honest devices s0…s39.
    for i in 0..N - POISONED {
        let name = format!("s{i}");
        benign_device(
            &mut trace,
            &name,
            ip(1, u8::try_from(i).unwrap()),
            rng.range(0.0, 3.0),
            end,
            &mut rng,
        );
    }
    // Poisoned devices s40…s49: in range, in profile, at the profile's rate, but all
    // reporting 55 degrees and three times the honest rate, to drag the baseline.
    for i in N - POISONED..N {
        let name = format!("s{i}");
        let mut t = rng.range(0.0, 3.0);
        trace.push(connect(t, &name, ip(1, u8::try_from(i).unwrap()), 60));
        while t < end {
            t += rng.range(0.3, 0.36);
            trace.push(publish(
                t,
                &name,
                &format!("devices/{name}/telemetry"),
                &format!(
                    r#"{{"temp":{:.2},"env":{{"hum":45}}}}"#,
                    55.0 + rng.range(-0.5, 0.5)
                ),
            ));
        }
    }
    let mut e = engine_for(DetectConfig::default(), N, &[]);
    let findings = run(&mut e, trace);

    let baseline = e.baseline(MODEL).unwrap();
    let temp = baseline.metrics[3].unwrap();
    assert!(
        (18.0..25.0).contains(&temp.median),
        "the poisoned fifth moved the temperature median to {temp:?}"
    );
    let rate = baseline.metrics[0].unwrap();
    assert!(
        (0.8..1.4).contains(&rate.median),
        "the poisoned fifth moved the rate median to {rate:?}"
    );
    for i in 0..N {
        let name = format!("s{i}");
        let flagged = fired_for(&findings, "cohort_deviation", &name);
        if i >= N - POISONED {
            assert!(
                flagged,
                "poisoned {name} hid in the cohort:\n{}",
                show(&findings)
            );
        } else {
            assert!(!flagged, "honest {name} was flagged:\n{}", show(&findings));
        }
    }
}

#[test]
fn poisoned_minority_does_not_move_baseline() {
    // A fleet whose honest devices all report the same temperature (a collapsed spread) and
    // a fifth that report the top of the range together, to drag the median up and widen
    // the spread so that a later lie would look normal.
    const N: usize = 40;
    const POISONED: usize = 8;
    let end = 300.0;
    let mut trace = Trace::default();
    for i in 0..N {
        let name = format!("s{i}");
        let temp = if i >= N - POISONED { 84.0 } else { 21.0 };
        let mut t = 0.05 * i as f64;
        trace.push(connect(t, &name, ip(1, u8::try_from(i).unwrap()), 60));
        while t < end {
            t += 1.0;
            trace.push(publish(
                t,
                &name,
                &format!("devices/{name}/telemetry"),
                &format!(r#"{{"temp":{temp},"env":{{"hum":45}}}}"#),
            ));
        }
    }
    let mut e = engine_for(DetectConfig::default(), N, &[]);
    let findings = run(&mut e, trace);
    let temp = e.baseline(MODEL).unwrap().metrics[3].unwrap();
    assert!(
        (temp.median - 21.0).abs() < 1e-9,
        "the poisoned fifth moved the median: {temp:?}"
    );
    assert!(
        temp.z(84.0) > 8.0,
        "the poisoned fifth widened the spread until they look normal: {temp:?}"
    );
    for i in 0..N {
        let name = format!("s{i}");
        let flagged = fired_for(&findings, "cohort_deviation", &name);
        if i >= N - POISONED {
            assert!(flagged, "poisoned {name} hid:\n{}", show(&findings));
        } else {
            assert!(
                !findings
                    .iter()
                    .any(|f| f.device.as_ref().is_some_and(|d| d.device.as_str() == name)),
                "honest {name} was flagged:\n{}",
                show(&findings)
            );
        }
    }
}
