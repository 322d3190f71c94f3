//! Feeds arbitrary bytes to the replay's telemetry CSV reader.
//!
//! Beyond "no panic": a file that reads gives one unit and one `Publish` per row, after one
//! `Connect`; rows in time order; every payload a JSON object whose keys are the header's
//! reading columns; the per-label row counts adding up to the rows.

#![no_main]

use gatehouse_replay::{TelemetryOptions, telemetry_trace};
use gatehouse_types::Observation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut opts = TelemetryOptions::new("fuzz");
    opts.max_rows = 10_000;
    let Ok(trace) = telemetry_trace(data, &opts) else {
        return;
    };
    let x = &trace.extraction;
    assert_eq!(x.rows, trace.units.len() as u64);
    assert_eq!(x.publishes, x.rows);
    assert_eq!(x.rows_by_label.values().sum::<u64>(), x.rows);
    assert!(trace.units.windows(2).all(|w| w[0].first <= w[1].first));
    if x.rows == 0 {
        assert!(trace.events.is_empty());
        return;
    }
    assert!(matches!(trace.events[0].obs, Observation::Connect(_)));
    let mut keys: Option<Vec<String>> = None;
    for e in &trace.events[1..] {
        let Observation::Publish(p) = &e.obs else {
            panic!("only publishes after the connect");
        };
        if p.payload.len() < p.size as usize {
            continue; // cut at the tap's limit: not a whole object
        }
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON payload");
        let obj = v.as_object().expect("a JSON object");
        let k: Vec<String> = obj.keys().cloned().collect();
        match &keys {
            Some(first) => assert_eq!(first, &k, "every row has the same readings"),
            None => keys = Some(k),
        }
    }
});
