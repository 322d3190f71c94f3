//! Numeric fields out of a JSON payload, without building a document and without
//! allocating: a `serde_json` visitor walks the object and only descends into keys that
//! lead to a wanted field. Readings are reported as they are met, so a payload cut short
//! by the tap's byte limit still yields the fields before the cut.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::profile::Field;

/// Calls `found(index, value)` for every field of `fields` (at most 64) that `payload`
/// holds as a number. Returns whether the payload was a complete JSON object.
pub(crate) fn extract(payload: &[u8], fields: &[Field], found: &mut dyn FnMut(usize, f64)) -> bool {
    let n = fields.len().min(64);
    let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let mut de = serde_json::Deserializer::from_slice(payload);
    let seed = Value {
        fields,
        depth: 0,
        mask,
        found,
    };
    seed.deserialize(&mut de).is_ok() && de.end().is_ok()
}

struct Value<'f, 'o> {
    fields: &'f [Field],
    depth: usize,
    mask: u64,
    found: &'o mut dyn FnMut(usize, f64),
}

impl Value<'_, '_> {
    fn leaf(&mut self, v: f64) {
        let mut m = self.mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            if self
                .fields
                .get(i)
                .is_some_and(|f| f.path.len() == self.depth)
            {
                (self.found)(i, v);
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Value<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.leaf(v as f64);
        Ok(())
    }
    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.leaf(v as f64);
        Ok(())
    }
    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        self.leaf(v);
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(sub) = map.next_key_seed(Key {
            fields: self.fields,
            depth: self.depth,
            mask: self.mask,
        })? {
            if sub == 0 {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Value {
                    fields: self.fields,
                    depth: self.depth + 1,
                    mask: sub,
                    found: &mut *self.found,
                })?;
            }
        }
        Ok(())
    }
}

/// Reads an object key and answers which of the active fields continue through it.
struct Key<'f> {
    fields: &'f [Field],
    depth: usize,
    mask: u64,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = u64;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<u64, E> {
        let mut m = self.mask;
        let mut sub = 0;
        while m != 0 {
            let i = m.trailing_zeros();
            m &= m - 1;
            let continues = self
                .fields
                .get(i as usize)
                .and_then(|f| f.path.get(self.depth))
                .is_some_and(|seg| **seg == *key);
            if continues {
                sub |= 1 << i;
            }
        }
        Ok(sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str) -> Field {
        Field {
            path: name.split('.').map(Into::into).collect(),
            name: name.into(),
            min: None,
            max: None,
            slot: None,
        }
    }

    fn read(payload: &str, names: &[&str]) -> (bool, Vec<(usize, f64)>) {
        let fields: Vec<Field> = names.iter().map(|n| field(n)).collect();
        let mut got = Vec::new();
        let ok = extract(payload.as_bytes(), &fields, &mut |i, v| got.push((i, v)));
        (ok, got)
    }

    #[test]
    fn top_level_and_nested_fields() {
        let (ok, got) = read(
            r#"{"temp": 21.5, "env": {"hum": 40, "x": [1,2,{"hum": 99}]}, "hum": "n/a", "id": "a\"b"}"#,
            &["temp", "env.hum", "hum"],
        );
        assert!(ok);
        assert_eq!(got, vec![(0, 21.5), (1, 40.0)]);
    }

    #[test]
    fn a_truncated_payload_yields_the_fields_before_the_cut() {
        let (ok, got) = read(
            r#"{"temp": -3, "hum": 55, "long": "xxxxxxxx"#,
            &["temp", "hum"],
        );
        assert!(!ok);
        assert_eq!(got, vec![(0, -3.0), (1, 55.0)]);
    }

    #[test]
    fn non_objects_and_garbage_yield_nothing() {
        for p in ["[1,2]", "42", "", "\u{0}\u{1}", "{\"temp\":", "null"] {
            let (_, got) = read(p, &["temp"]);
            assert!(got.is_empty(), "{p}");
        }
    }

    #[test]
    fn escaped_keys_still_match() {
        let (_, got) = read(r#"{"te\u006dp": 7}"#, &["temp"]);
        assert_eq!(got, vec![(0, 7.0)]);
    }
}
