//! Request fields the APIs bound, checked while they are parsed (so an oversized value is
//! refused before it is ever held as a tree).

use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};

/// The most `metadata` pairs (OpenAI: 16).
pub const METADATA_MAX_PAIRS: usize = 16;
/// The longest `metadata` key, in characters (OpenAI: 64).
pub const METADATA_KEY_MAX_CHARS: usize = 64;
/// The longest `metadata` value, in characters (OpenAI: 512).
pub const METADATA_VALUE_MAX_CHARS: usize = 512;

/// `metadata` (OpenAI Responses and Chat Completions): null, or an object of at most 16
/// string pairs, keys up to 64 and values up to 512 characters. Use with
/// `#[serde(default, deserialize_with = "…")]` on an `Option<Value>` field.
pub fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    struct Visit;
    impl<'de> Visitor<'de> for Visit {
        type Value = Option<Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "`metadata`: an object of at most {METADATA_MAX_PAIRS} string key-value pairs"
            )
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<Value>, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Option<Value>, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Option<Value>, D2::Error> {
            d.deserialize_any(Visit)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.len() == METADATA_MAX_PAIRS {
                    return Err(A::Error::custom(format!(
                        "`metadata` may have at most {METADATA_MAX_PAIRS} key-value pairs"
                    )));
                }
                if key.chars().count() > METADATA_KEY_MAX_CHARS {
                    return Err(A::Error::custom(format!(
                        "`metadata` keys may be at most {METADATA_KEY_MAX_CHARS} characters"
                    )));
                }
                let value: String = map
                    .next_value()
                    .map_err(|_| A::Error::custom(format!("`metadata.{key}` must be a string")))?;
                if value.chars().count() > METADATA_VALUE_MAX_CHARS {
                    return Err(A::Error::custom(format!(
                        "`metadata` values may be at most {METADATA_VALUE_MAX_CHARS} characters"
                    )));
                }
                out.insert(key, Value::String(value));
            }
            Ok(Some(Value::Object(out)))
        }
    }
    d.deserialize_option(Visit)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Req {
        #[serde(default, deserialize_with = "super::metadata")]
        metadata: Option<serde_json::Value>,
    }

    fn parse(s: &str) -> Result<Option<serde_json::Value>, String> {
        serde_json::from_str::<Req>(s)
            .map(|r| r.metadata)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn metadata_is_at_most_16_string_pairs() {
        assert_eq!(parse("{}").unwrap(), None);
        assert_eq!(parse(r#"{"metadata":null}"#).unwrap(), None);
        assert_eq!(
            parse(r#"{"metadata":{"a":"b"}}"#).unwrap(),
            Some(serde_json::json!({"a": "b"}))
        );
        let pairs: Vec<String> = (0..17).map(|i| format!("\"k{i}\":\"v\"")).collect();
        let e = parse(&format!("{{\"metadata\":{{{}}}}}", pairs.join(","))).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
        let e = parse(r#"{"metadata":{"a":[0,0,0]}}"#).unwrap_err();
        assert!(e.contains("`metadata.a` must be a string"), "{e}");
        let e = parse(&format!(
            "{{\"metadata\":{{\"{}\":\"v\"}}}}",
            "k".repeat(65)
        ))
        .unwrap_err();
        assert!(e.contains("keys may be at most 64"), "{e}");
        let e = parse(&format!(
            "{{\"metadata\":{{\"k\":\"{}\"}}}}",
            "v".repeat(513)
        ))
        .unwrap_err();
        assert!(e.contains("values may be at most 512"), "{e}");
        assert!(parse(r#"{"metadata":[1]}"#).is_err());
    }
}
