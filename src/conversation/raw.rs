//! Client JSON ccgate passes through without reading it (tool schemas, tool calls'
//! inputs), kept as its text and shared.
//!
//! A `serde_json::Value` costs about 80 bytes per JSON value and was copied on its way to
//! the CLI (request, conversation, presentation, the run's tool list): a megabyte of
//! `[0,0,…]` was hundreds of megabytes of heap. [`RawJson`] is the validated text behind
//! an `Arc`: one copy of the bytes, cloned by reference, written out as it came. What
//! ccgate does read of it is read from the text: a top-level key ([`RawJson::top_str`]),
//! or the canonical form a fingerprint hashes ([`RawJson::canonical`]), built by
//! streaming over the text (an object's entries are buffered to sort them; no tree).

use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// The deepest nesting a kept JSON value may have: serde_json's own limit for a tree, so
/// nothing a tree could hold is refused, and nothing deeper reaches the CLI.
pub const RAW_MAX_DEPTH: usize = 128;

/// Valid JSON text, shared ([`Clone`] is a reference count).
#[derive(Clone)]
pub struct RawJson(Arc<RawValue>);

/// Why a text is not kept as [`RawJson`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawJsonError {
    #[error("not valid JSON")]
    Invalid,
    #[error("nested more than {RAW_MAX_DEPTH} levels deep")]
    TooDeep,
}

impl RawJson {
    /// A parsed raw value, its depth checked.
    pub fn from_raw(raw: Box<RawValue>) -> Result<RawJson, RawJsonError> {
        if depth(raw.get()) > RAW_MAX_DEPTH {
            return Err(RawJsonError::TooDeep);
        }
        Ok(RawJson(Arc::from(raw)))
    }

    /// `text` validated (no tree is built) and kept.
    pub fn parse(text: &str) -> Result<RawJson, RawJsonError> {
        let raw: Box<RawValue> = serde_json::from_str(text).map_err(|_| RawJsonError::Invalid)?;
        RawJson::from_raw(raw)
    }

    /// A tree ccgate built (or received from the CLI) as text.
    pub fn from_value(v: &Value) -> RawJson {
        let raw = serde_json::value::to_raw_value(v)
            .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
        RawJson(Arc::from(raw))
    }

    /// `{}`.
    pub fn empty_object() -> RawJson {
        RawJson::parse("{}").expect("{} is JSON")
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The heap this value holds (its text).
    pub fn cost(&self) -> usize {
        self.get().len()
    }

    /// The text's length without whitespace between tokens (what a size limit counts, so
    /// a pretty-printed value is not larger than a compact one).
    pub fn compact_len(&self) -> usize {
        bytes_in_strings(self.get())
            .filter(|&(c, in_string)| in_string || !c.is_ascii_whitespace())
            .count()
    }

    /// An object (`{…}`).
    pub fn is_object(&self) -> bool {
        self.get().starts_with('{')
    }

    /// The value as a tree (for the rare reader that needs one; Null if it cannot be).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }

    /// The top-level entry `key` of an object, as raw text (None: not an object, or no
    /// such key). Only that entry is looked at; the rest is skipped, not built.
    pub fn top(&self, key: &str) -> Option<&RawValue> {
        struct Find<'k>(&'k str);
        impl<'de, 'k> Visitor<'de> for Find<'k> {
            type Value = Option<&'de RawValue>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if k == self.0 {
                        found = Some(m.next_value::<&'de RawValue>()?);
                    } else {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
        }
        if !self.is_object() {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(self.get());
        de.deserialize_map(Find(key)).ok().flatten()
    }

    /// The top-level entry `key` when it is a string.
    pub fn top_str(&self, key: &str) -> Option<String> {
        self.top(key)
            .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
    }

    /// The value with every object's keys sorted (a later duplicate key wins, as in a
    /// tree), compact: the same text as the sorted tree's `to_string()`, so two spellings
    /// of one value hash alike. Built by streaming over the text: arrays and scalars are
    /// written as they are read; an object's entries are buffered to be sorted.
    pub fn canonical(&self) -> String {
        let mut out = Vec::with_capacity(self.get().len());
        let mut de = serde_json::Deserializer::from_str(self.get());
        match Canonical(&mut out).deserialize(&mut de) {
            // Only serde_json's writers wrote into `out`: it is UTF-8.
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            // Unreachable for a validated value; the text itself is a fine identity.
            Err(_) => self.get().to_string(),
        }
    }
}

/// Each byte of JSON text, and whether it belongs to a string (its quotes included):
/// what the scanners below read instead of building a tree.
pub fn bytes_in_strings(text: &str) -> impl Iterator<Item = (u8, bool)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    text.bytes().map(move |c| {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            (c, true)
        } else {
            in_string = c == b'"';
            (c, in_string)
        }
    })
}

/// The deepest bracket nesting of JSON text (strings skipped).
pub fn depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for (c, _) in bytes_in_strings(text).filter(|&(_, s)| !s) {
        match c {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Writes the canonical form of one value into its buffer.
struct Canonical<'a>(&'a mut Vec<u8>);

impl Canonical<'_> {
    fn write<T: Serialize + ?Sized>(self, v: &T) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.0, v);
    }
}

impl<'de> DeserializeSeed<'de> for Canonical<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canonical<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.write(&v);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.write(&v);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.write(&v);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // As a tree's number: a finite float (JSON has no others).
        match serde_json::Number::from_f64(v) {
            Some(n) => self.write(&n),
            None => self.write(&()),
        }
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.write(v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.write(&());
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push(b'[');
        let mut first = true;
        loop {
            let at = out.len();
            if !first {
                out.push(b',');
            }
            if seq.next_element_seed(Canonical(&mut *out))?.is_none() {
                out.truncate(at);
                break;
            }
            first = false;
        }
        out.push(b']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let mut v = Vec::new();
            map.next_value_seed(Canonical(&mut v))?;
            entries.push((k, v));
        }
        // Stable: of equal keys the later stays last, and is the one kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let out = self.0;
        out.push(b'{');
        let mut first = true;
        for (i, (k, v)) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|next| &next.0 == k) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            let _ = serde_json::to_writer(&mut *out, k);
            out.push(b':');
            out.extend_from_slice(v);
        }
        out.push(b'}');
        Ok(())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawJson, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        RawJson::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanners_skip_strings_with_escaped_quotes_and_brackets() {
        let text = r#"{ "a\"[{": [1, {"b": "]}"}], "c": "\\" }"#;
        assert_eq!(depth(text), 3);
        let raw = RawJson::parse(text).unwrap();
        assert_eq!(
            raw.compact_len(),
            text.chars().filter(|c| *c != ' ').count()
        );
    }
    use serde_json::json;

    fn tree_canonical(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), tree_canonical(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(tree_canonical).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn the_canonical_form_is_the_sorted_trees_text() {
        for text in [
            r#"{"b":1,"a":[{"z":null,"y":true},-2,3.5,1e300,"\u00e9\n"],"c":{}}"#,
            r#"[]"#,
            r#"[[],{},[1]]"#,
            r#""x""#,
            r#"{"a":1,"a":2,"b":{"d":0,"c":-0}}"#,
            r#"{ "k" : [ 1 , 2 ] , "é" : 18446744073709551615, "n": -9223372036854775808 }"#,
            r#"123456789012345678901234567890"#,
        ] {
            let raw = RawJson::parse(text).unwrap();
            let tree: Value = serde_json::from_str(text).unwrap();
            assert_eq!(raw.canonical(), tree_canonical(&tree).to_string(), "{text}");
        }
        let a = RawJson::parse(r#"{"b":[1,{"y":2,"x":1}],"a":"s"}"#).unwrap();
        let b = RawJson::parse(r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn kept_values_are_valid_and_bounded_in_depth() {
        assert_eq!(RawJson::parse("[1,").unwrap_err(), RawJsonError::Invalid);
        assert_eq!(RawJson::parse("{} x").unwrap_err(), RawJsonError::Invalid);
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(RawJson::parse(&deep(RAW_MAX_DEPTH)).is_ok());
        assert_eq!(
            RawJson::parse(&deep(RAW_MAX_DEPTH + 1)).unwrap_err(),
            RawJsonError::TooDeep
        );
        assert_eq!(depth(r#"{"a":"[[[[","b":[{}]}"#), 3);
        // Through serde (a request's field), the same bounds.
        let deeper = format!("{{\"x\":{}}}", deep(5000));
        let e = serde_json::from_str::<std::collections::HashMap<String, RawJson>>(&deeper);
        assert!(e.unwrap_err().to_string().contains("nested more than"));
    }

    #[test]
    fn top_level_keys_are_read_without_a_tree() {
        let raw = RawJson::parse(r#"{"big":[0,0,0],"type":"object","n":1}"#).unwrap();
        assert_eq!(raw.top_str("type").as_deref(), Some("object"));
        assert_eq!(raw.top_str("n"), None);
        assert_eq!(raw.top("n").map(RawValue::get), Some("1"));
        assert_eq!(raw.top("missing").map(RawValue::get), None);
        assert_eq!(
            RawJson::parse("[1]")
                .unwrap()
                .top("type")
                .map(RawValue::get),
            None
        );
        assert!(raw.is_object());
        assert!(!RawJson::parse(r#""{""#).unwrap().is_object());
    }

    #[test]
    fn it_is_written_as_it_came_and_shared() {
        let raw = RawJson::parse(r#"{"x": [1, 2]}"#).unwrap();
        let copy = raw.clone();
        assert!(std::ptr::eq(raw.get(), copy.get()));
        assert_eq!(
            serde_json::to_string(&json!({"input": raw})).unwrap(),
            r#"{"input":{"x":[1,2]}}"#
        );
        #[derive(Serialize)]
        struct Holder<'a> {
            input: &'a RawJson,
        }
        assert_eq!(
            serde_json::to_string(&Holder { input: &raw }).unwrap(),
            r#"{"input":{"x": [1, 2]}}"#
        );
        assert_eq!(RawJson::from_value(&json!({"a": 1})).get(), r#"{"a":1}"#);
        assert_eq!(raw.compact_len(), r#"{"x":[1,2]}"#.len());
        assert_eq!(RawJson::parse(r#"[ " a\" " ]"#).unwrap().compact_len(), 9);
        assert_eq!(raw.to_value(), json!({"x": [1, 2]}));
    }
}
