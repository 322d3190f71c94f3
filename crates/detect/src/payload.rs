//! Numeric fields out of a JSON payload, without building a document and without
//! allocating: a small scanner walks the object, skips what it does not need, and only
//! descends into keys that lead to a wanted field. Readings are reported as they are met,
//! so a payload cut short by the tap's byte limit still yields the fields before the cut.
//!
//! On valid JSON it reports exactly what a full parser would (a test holds it to
//! `serde_json`); on invalid JSON it is lenient and reports the numbers it met before
//! giving up.

use crate::profile::Field;

/// Deepest nesting followed or skipped before giving up.
const MAX_DEPTH: usize = 64;
/// Longest escaped key that can match a field (keys without escapes have no limit).
const MAX_ESCAPED_KEY: usize = 128;
/// Powers of ten exact in an `f64`.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Calls `found(index, value)` for every field of `fields` (at most 64) that `payload`
/// holds as a number. Returns whether the payload was one complete JSON value.
pub(crate) fn extract(payload: &[u8], fields: &[Field], found: &mut dyn FnMut(usize, f64)) -> bool {
    let n = fields.len().min(64);
    let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let mut s = Scanner {
        b: payload,
        i: 0,
        fields,
        found,
    };
    s.ws();
    let ok = if s.peek() == Some(b'{') {
        s.object(mask, 0)
    } else {
        s.skip_value(0)
    }
    .is_some();
    s.ws();
    ok && s.i == payload.len()
}

struct Scanner<'b, 'f, 'o> {
    b: &'b [u8],
    i: usize,
    fields: &'f [Field],
    found: &'o mut dyn FnMut(usize, f64),
}

impl Scanner<'_, '_, '_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek() == Some(c)).then(|| self.i += 1)
    }

    /// An object at `self.i`; `mask` holds the fields whose path continues into it.
    fn object(&mut self, mask: u64, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let sub = self.key(mask, depth)?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            if sub == 0 {
                self.skip_value(depth + 1)?;
            } else {
                self.value(sub, depth + 1)?;
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A value some wanted field's path reaches.
    fn value(&mut self, mask: u64, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(mask, depth),
            b'-' | b'0'..=b'9' => {
                let v = self.number()?;
                let mut m = mask;
                while m != 0 {
                    let k = m.trailing_zeros() as usize;
                    m &= m - 1;
                    if self.fields.get(k).is_some_and(|f| f.path.len() == depth) {
                        (self.found)(k, v);
                    }
                }
                Some(())
            }
            _ => self.skip_value(depth),
        }
    }

    /// Reads a key and answers which fields of `mask` continue through it.
    fn key(&mut self, mask: u64, depth: usize) -> Option<u64> {
        let (start, end, escaped) = self.string()?;
        let raw = self.b.get(start..end)?;
        let mut buf = [0u8; MAX_ESCAPED_KEY];
        let key: &[u8] = if escaped {
            match unescape(raw, &mut buf) {
                Some(n) => &buf[..n],
                None => return Some(0),
            }
        } else {
            raw
        };
        let mut m = mask;
        let mut sub = 0;
        while m != 0 {
            let k = m.trailing_zeros();
            m &= m - 1;
            let continues = self
                .fields
                .get(k as usize)
                .and_then(|f| f.path.get(depth))
                .is_some_and(|seg| seg.as_bytes() == key);
            if continues {
                sub |= 1 << k;
            }
        }
        Some(sub)
    }

    /// A string at `self.i`: the bounds of its contents and whether it holds escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..)?;
            let j = rest.iter().position(|c| *c == b'"' || *c == b'\\')?;
            self.i += j;
            if self.b[self.i] == b'"' {
                let end = self.i;
                self.i += 1;
                return Some((start, end, escaped));
            }
            escaped = true;
            // A backslash and the character it escapes (`\uXXXX` is plain hex after).
            self.i += 2;
        }
    }

    fn number(&mut self) -> Option<f64> {
        let start = self.i;
        // The common case in one pass: up to 15 significant digits and no exponent is
        // exact as an integer over a power of ten, and one division rounds correctly.
        let neg = self.eat(b'-').is_some();
        let mut mantissa: u64 = 0;
        let mut digits = 0u32;
        let mut scale = 0usize;
        let int_start = self.i;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            digits += 1;
            self.i += 1;
        }
        let int_digits = self.i - int_start;
        if self.peek() == Some(b'.') {
            self.i += 1;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
                digits += 1;
                scale += 1;
                self.i += 1;
            }
        }
        let simple = !matches!(self.peek(), Some(b'e' | b'E' | b'+' | b'-' | b'.'))
            && int_digits > 0
            && (int_digits == 1 || self.b.get(int_start) != Some(&b'0'))
            && (self.b.get(self.i - 1) != Some(&b'.'))
            && digits <= 15;
        if simple && let Some(p) = POW10.get(scale) {
            let v = mantissa as f64 / p;
            return Some(if neg { -v } else { v });
        }
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        let text = std::str::from_utf8(self.b.get(start..self.i)?).ok()?;
        if !valid_number(text.as_bytes()) {
            return None;
        }
        text.parse::<f64>().ok().filter(|v| v.is_finite())
    }

    /// Skips one value of any kind.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.object(0, depth),
            b'[' => {
                self.i += 1;
                self.ws();
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }
}

/// Whether `s` is a JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn valid_number(s: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let from = *i;
        while s.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > from
    };
    if s.get(i) == Some(&b'-') {
        i += 1;
    }
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == s.len()
}

/// Decodes a JSON string's escapes into `buf`; `None` if invalid or too long.
fn unescape(raw: &[u8], buf: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    let mut i = 0;
    let mut put = |bytes: &[u8], n: &mut usize| -> Option<()> {
        let end = *n + bytes.len();
        buf.get_mut(*n..end)?.copy_from_slice(bytes);
        *n = end;
        Some(())
    };
    let hex4 = |at: usize| -> Option<u32> {
        let h = raw.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            put(&[c], &mut n)?;
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(i)?;
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let lo = hex4(i + 2)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                char::from_u32(code)?
            }
            _ => return None,
        };
        let mut tmp = [0u8; 4];
        put(ch.encode_utf8(&mut tmp).as_bytes(), &mut n)?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use proptest::prelude::*;
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::*;

    /// The reference: the same extraction through `serde_json`'s deserializer.
    fn extract_reference(
        payload: &[u8],
        fields: &[Field],
        found: &mut dyn FnMut(usize, f64),
    ) -> bool {
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

    fn field(name: &str) -> Field {
        Field {
            path: name.split('.').map(Into::into).collect(),
            name: name.into(),
            min: None,
            max: None,
            max_step: None,
            max_repeats: None,
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

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|v| serde_json::json!(v)),
            any::<u64>().prop_map(|v| serde_json::json!(v)),
            (-1e6f64..1e6).prop_map(|v| serde_json::json!(v)),
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| serde_json::json!(v)),
            "\\PC{0,6}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("temp".to_owned()),
                            Just("env".to_owned()),
                            Just("hum".to_owned()),
                            Just("x".to_owned()),
                            Just("t\"e/m\\p\u{e9}\u{1F600}".to_owned()),
                            "[a-z]{0,3}",
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Equal fields and values, the values to within a few units in the last place:
    /// `serde_json` without its `float_roundtrip` feature may round the last bit
    /// differently from the standard library's correctly rounded parse.
    fn same_readings(a: &[(usize, f64)], b: &[(usize, f64)]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|((i, x), (j, y))| {
                i == j && (x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs()))
            })
    }

    const NAMES: [&str; 5] = [
        "temp",
        "env.hum",
        "env.x.temp",
        "x",
        "t\"e/m\\p\u{e9}\u{1F600}",
    ];

    /// Whether the payload was complete, and the readings met.
    type Run = (bool, Vec<(usize, f64)>);

    fn both(payload: &[u8]) -> (Run, Run) {
        let fields: Vec<Field> = NAMES.iter().map(|n| field(n)).collect();
        let mut a = Vec::new();
        let ok_a = extract(payload, &fields, &mut |i, v| a.push((i, v)));
        let mut b = Vec::new();
        let ok_b = extract_reference(payload, &fields, &mut |i, v| b.push((i, v)));
        ((ok_a, a), (ok_b, b))
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_valid_documents(v in json(), pretty in any::<bool>(), ascii in any::<bool>()) {
            let mut text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            if ascii {
                // Escape every non-ASCII character as \uXXXX (surrogate pairs included).
                text = text
                    .chars()
                    .map(|c| {
                        if c.is_ascii() {
                            c.to_string()
                        } else {
                            let mut units = [0u16; 2];
                            c.encode_utf16(&mut units)
                                .iter()
                                .map(|u| format!("\\u{u:04x}"))
                                .collect()
                        }
                    })
                    .collect();
            }
            let (fast, reference) = both(text.as_bytes());
            prop_assert_eq!(fast.0, reference.0, "{}", text);
            prop_assert!(same_readings(&fast.1, &reference.1), "{text}: {fast:?} vs {reference:?}");
        }

        #[test]
        fn truncated_documents_yield_what_serde_json_met(v in json(), cut in any::<prop::sample::Index>()) {
            let text = serde_json::to_string(&v).unwrap();
            let bytes = text.as_bytes();
            let cut = cut.index(bytes.len() + 1);
            let (fast, reference) = both(&bytes[..cut]);
            // Cut inside a number, the scanner may read the digits before the cut as a
            // shorter number where serde_json waits for more; otherwise they agree.
            prop_assert_eq!(fast.0, reference.0);
            prop_assert!(fast.1.len() >= reference.1.len());
            prop_assert!(same_readings(&fast.1[..reference.1.len()], &reference.1));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = both(&b);
        }
    }
}
