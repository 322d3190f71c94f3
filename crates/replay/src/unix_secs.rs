//! Serializes a `SystemTime` as fractional seconds since the Unix epoch.

use std::time::SystemTime;

use serde::Serializer;

pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    s.serialize_f64(secs)
}
