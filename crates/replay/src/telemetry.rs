//! Device telemetry CSV → one device's publishes, one scored unit per row.
//!
//! The file is one device of one model (TON_IoT's per-device files: `ts`, `date`,
//! `time`, feature columns, `label`, `type`). Rows are replayed in time order as
//! `Publish` observations of a JSON object of the feature columns on
//! `devices/<model>-1/telemetry`, preceded by one `Connect`.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gatehouse_types::{
    ConnectObservation, DeviceId, DeviceRef, Identity, IdentitySource, Observation,
    PublishObservation, TenantId, TlsFacts,
};

use crate::trace::{Event, Extraction, Trace, Unit};

/// Columns that are not device readings.
const NOT_FEATURES: [&str; 5] = ["ts", "date", "time", "label", "type"];

/// How a telemetry file is read.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// The device model (`fridge`): the device is `<model>-1`.
    pub model: String,
    /// The class of every row, instead of the `type` / `label` columns.
    pub label: Option<String>,
    /// Tenant of the device.
    pub tenant: TenantId,
    /// Most rows read.
    pub max_rows: usize,
    /// How many payload bytes a `Publish` observation carries.
    pub payload_bytes: usize,
}

impl TelemetryOptions {
    /// Defaults for a file of `model`.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            label: None,
            tenant: TenantId::new("replay").unwrap_or_default(),
            max_rows: 10_000_000,
            payload_bytes: 1024,
        }
    }
}

/// Why a telemetry file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The CSV itself is broken (unequal row lengths, invalid UTF-8, I/O).
    #[error("CSV error at line {line}: {detail}")]
    Csv {
        /// 1-based line, 0 when unknown.
        line: u64,
        /// What the CSV reader said.
        detail: String,
    },
    /// A required column is missing from the header.
    #[error("no {0} column in the header")]
    MissingColumn(&'static str),
    /// The `ts` value of a row is not a Unix time in seconds.
    #[error("line {line}: ts {value:?} is not a Unix time in seconds")]
    BadTime {
        /// 1-based line.
        line: u64,
        /// The value.
        value: String,
    },
    /// The file has more rows than allowed.
    #[error("more than {0} rows")]
    TooManyRows(usize),
    /// The model name cannot make a device id.
    #[error("model {0:?} cannot name a device (letters, digits and . _ : - only)")]
    BadModel(String),
}

fn csv_error(e: &csv::Error) -> TelemetryError {
    TelemetryError::Csv {
        line: e.position().map_or(0, csv::Position::line),
        detail: e.to_string(),
    }
}

struct Row {
    at: SystemTime,
    label: String,
    payload: String,
}

/// The model a file name stands for: `Train_Test_IoT_Fridge.csv` → `fridge`, otherwise
/// the file stem, lower-cased, with characters a device id cannot hold made `_`.
pub fn model_from_file_name(name: &str) -> String {
    let stem = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let stem = stem.split('.').next().unwrap_or(stem).to_ascii_lowercase();
    let model = match stem.rfind("iot_") {
        Some(i) => &stem[i + 4..],
        None => &stem,
    };
    let clean: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if clean.is_empty() {
        "device".into()
    } else {
        clean
    }
}

fn parse_ts(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let secs: f64 = s.parse().ok()?;
    if !secs.is_finite() || !(0.0..=1e11).contains(&secs) {
        return None;
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs))
}

/// A JSON value for a CSV cell: a number when it reads as one, else the trimmed text.
fn json_value(cell: &str) -> String {
    let t = cell.trim();
    if let Ok(i) = t.parse::<i64>() {
        return i.to_string();
    }
    if let Ok(f) = t.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return n.to_string();
    }
    serde_json::Value::String(t.to_owned()).to_string()
}

/// Reads a telemetry CSV into a trace.
pub fn telemetry_trace<R: Read>(
    input: R,
    opts: &TelemetryOptions,
) -> Result<Trace, TelemetryError> {
    let device = DeviceId::new(format!("{}-1", opts.model))
        .map_err(|_| TelemetryError::BadModel(opts.model.clone()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(&e))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').trim().to_owned())
        .collect();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let ts_col = col("ts").ok_or(TelemetryError::MissingColumn("ts"))?;
    let type_col = col("type");
    let label_col = col("label");
    if opts.label.is_none() && type_col.is_none() && label_col.is_none() {
        return Err(TelemetryError::MissingColumn("type (or label)"));
    }
    let features: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| !NOT_FEATURES.iter().any(|n| h.eq_ignore_ascii_case(n)))
        .map(|(i, h)| (i, serde_json::Value::String(h.clone()).to_string()))
        .collect();

    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(&e)),
        }
        if rows.len() >= opts.max_rows {
            return Err(TelemetryError::TooManyRows(opts.max_rows));
        }
        let line = record.position().map_or(0, csv::Position::line);
        let cell = |i: usize| record.get(i).unwrap_or("");
        let at = parse_ts(cell(ts_col)).ok_or_else(|| TelemetryError::BadTime {
            line,
            value: cell(ts_col).chars().take(40).collect(),
        })?;
        let label = match (&opts.label, type_col, label_col) {
            (Some(l), _, _) => l.clone(),
            (None, Some(t), _) if !cell(t).trim().is_empty() => cell(t).trim().to_ascii_lowercase(),
            (None, _, Some(l)) => match cell(l).trim() {
                "0" => "normal".to_owned(),
                "1" => "attack".to_owned(),
                other => other.to_ascii_lowercase(),
            },
            _ => "unlabelled".to_owned(),
        };
        let mut payload = String::from("{");
        for (k, (i, key)) in features.iter().enumerate() {
            if k > 0 {
                payload.push(',');
            }
            payload.push_str(key);
            payload.push(':');
            payload.push_str(&json_value(cell(*i)));
        }
        payload.push('}');
        rows.push(Row { at, label, payload });
    }
    // Replay in time order; rows of the same second keep their file order.
    rows.sort_by_key(|r| r.at);

    let identity = Arc::new(Identity {
        tenant: opts.tenant.clone(),
        device,
        source: IdentitySource::Password,
    });
    let dref = DeviceRef::from(&*identity);
    let topic: Arc<str> = Arc::from(format!("devices/{}/telemetry", identity.device));
    let mut trace = Trace {
        models: vec![(dref.clone(), opts.model.clone())],
        extraction: Extraction {
            format: "csv".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let subject = format!("device:{dref}");
    for (n, row) in rows.into_iter().enumerate() {
        if n == 0 {
            let obs = Observation::Connect(ConnectObservation {
                at: row.at,
                session: 1,
                peer: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                identity: identity.clone(),
                client_id: identity.device.to_string(),
                protocol_level: 4,
                clean_start: true,
                keep_alive: 60,
                session_present: false,
                tls: TlsFacts::default(),
            });
            trace.extraction.count(&obs);
            trace.events.push(Event { obs, unit: 0 });
        }
        trace.extraction.rows += 1;
        *trace
            .extraction
            .rows_by_label
            .entry(row.label.clone())
            .or_default() += 1;
        let unit = trace.units.len();
        trace.units.push(Unit {
            label: row.label,
            subject: subject.clone(),
            peer: None,
            devices: vec![dref.clone()],
            first: row.at,
            last: row.at,
            open: false,
        });
        let bytes = row.payload.into_bytes();
        let keep = bytes.len().min(opts.payload_bytes);
        let obs = Observation::Publish(PublishObservation {
            at: row.at,
            session: 1,
            identity: identity.clone(),
            topic: topic.clone(),
            size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            payload: Bytes::copy_from_slice(&bytes[..keep]),
            qos: 0,
            retain: false,
            allowed: true,
        });
        trace.extraction.count(&obs);
        trace.events.push(Event { obs, unit });
    }
    Ok(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRIDGE: &str = "\u{feff}ts,date,time,fridge_temperature,temp_condition,label,type\r\n\
        1556245190,25-Apr-19, 19:19:50 ,9.25,high  ,1,ddos\r\n\
        1556245180,25-Apr-19, 19:19:40 ,9,low,0,normal\r\n";

    #[test]
    fn rows_become_time_ordered_publishes_of_the_features() {
        let t = telemetry_trace(FRIDGE.as_bytes(), &TelemetryOptions::new("fridge")).unwrap();
        assert_eq!(t.units.len(), 2);
        assert_eq!(t.units[0].label, "normal");
        assert_eq!(t.units[1].label, "ddos");
        assert_eq!(t.events.len(), 3);
        assert!(matches!(t.events[0].obs, Observation::Connect(_)));
        let Observation::Publish(p) = &t.events[1].obs else {
            panic!("not a publish");
        };
        assert_eq!(&*p.topic, "devices/fridge-1/telemetry");
        assert_eq!(
            &p.payload[..],
            br#"{"fridge_temperature":9,"temp_condition":"low"}"#
        );
        assert_eq!(
            p.at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_556_245_180)
        );
        let Observation::Publish(p) = &t.events[2].obs else {
            panic!("not a publish");
        };
        assert_eq!(
            &p.payload[..],
            br#"{"fridge_temperature":9.25,"temp_condition":"high"}"#
        );
        assert_eq!(t.extraction.rows_by_label.get("ddos"), Some(&1));
    }

    #[test]
    fn a_given_label_overrides_the_columns() {
        let mut o = TelemetryOptions::new("fridge");
        o.label = Some("ransomware".into());
        let t = telemetry_trace(FRIDGE.as_bytes(), &o).unwrap();
        assert!(t.units.iter().all(|u| u.label == "ransomware"));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let no_ts = "a,b,type\n1,2,normal\n";
        assert!(matches!(
            telemetry_trace(no_ts.as_bytes(), &TelemetryOptions::new("x")),
            Err(TelemetryError::MissingColumn("ts"))
        ));
        let bad_ts = "ts,v,type\nyesterday,2,normal\n";
        assert!(matches!(
            telemetry_trace(bad_ts.as_bytes(), &TelemetryOptions::new("x")),
            Err(TelemetryError::BadTime { line: 2, .. })
        ));
        let ragged = "ts,v,type\n1,2,normal\n2,3\n";
        assert!(matches!(
            telemetry_trace(ragged.as_bytes(), &TelemetryOptions::new("x")),
            Err(TelemetryError::Csv { .. })
        ));
        assert!(matches!(
            telemetry_trace(FRIDGE.as_bytes(), &TelemetryOptions::new("a/b")),
            Err(TelemetryError::BadModel(_))
        ));
        let mut o = TelemetryOptions::new("x");
        o.max_rows = 1;
        assert!(matches!(
            telemetry_trace(FRIDGE.as_bytes(), &o),
            Err(TelemetryError::TooManyRows(1))
        ));
    }

    #[test]
    fn models_come_from_file_names() {
        assert_eq!(
            model_from_file_name("Train_Test_IoT_GPS_Tracker.csv"),
            "gps_tracker"
        );
        assert_eq!(model_from_file_name("dir/plant sensor.csv"), "plant_sensor");
    }
}
