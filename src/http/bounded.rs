//! Request fields the APIs bound, checked while they are parsed (so an oversized value is
//! refused before it is ever held as a tree).
//!
//! **Trees by cost.** Client JSON kept as a [`Value`] tree costs about 80 bytes per JSON
//! value. What ccgate only passes on is not a tree at all: tool schemas ([`ToolDef`]) and
//! tool calls' inputs are kept as text ([`RawJson`]). What must be a tree (a tool
//! definition's other fields, tool choices, option objects) is read as raw JSON first
//! ([`tree`], [`trees`]), its values counted against the request's budget
//! ([`MAX_TREE_VALUES`], set by [`with_tree_budget`] around the body's parse), and only
//! then parsed. Of an object ccgate reads only some keys of (a Responses `input` item),
//! only those become a tree, charged; the rest is skipped as it is read ([`read_fields`]).
//! Content parts of Chat Completions and Messages are not trees but cost as much on their
//! way to the CLI: each is charged as it is read, the part and each of its keys
//! ([`Charged`]), as a Responses part is.
//! A request over the budget is a 400 before any tree is built; depth is bounded by
//! serde_json's limit (128), as for [`RawJson`].

use std::cell::Cell;

use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::conversation::RawJson;

/// The most JSON values a request may hold in its tree-shaped fields together (tool
/// definitions but their schemas, tool choices, the fields of Responses input items ccgate
/// reads, option objects) and its content parts (of every API: a part and each of its
/// keys; a text part is 3): about 2.5 MB per copy of the trees. Text, messages, tool
/// schemas and tool inputs do not count.
pub const MAX_TREE_VALUES: usize = 32_768;

/// Body bytes per tree value beyond [`MAX_TREE_VALUES`]: a body larger than 1 MiB (an
/// operator raised `request_body_limit`, say for long agent histories) may hold one value
/// per this many bytes, so the budget keeps its ratio to the body's size (and memory its
/// bound per byte) instead of refusing long histories a larger limit was raised for.
pub const BYTES_PER_TREE_VALUE: usize = 32;

/// The budget of a body of `len` bytes: [`MAX_TREE_VALUES`] up to 1 MiB, then one value
/// per [`BYTES_PER_TREE_VALUE`] bytes.
pub fn tree_budget(len: usize) -> usize {
    MAX_TREE_VALUES.max(len / BYTES_PER_TREE_VALUE)
}

thread_local! {
    /// The values the request being parsed on this thread may still hold as trees (None:
    /// not inside [`with_tree_budget`], no bound).
    static BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
    /// The budget the parse began with (for the refusal's message).
    static BUDGET_SET: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs a request body's parse with a budget of `values` tree values.
pub fn with_tree_budget<R>(values: usize, parse: impl FnOnce() -> R) -> R {
    let before = BUDGET.with(|b| b.replace(Some(values)));
    let set_before = BUDGET_SET.with(|b| b.replace(Some(values)));
    let r = parse();
    BUDGET.with(|b| b.set(before));
    BUDGET_SET.with(|b| b.set(set_before));
    r
}

/// The JSON values in `raw` (each scalar, array and object entry): brackets and commas
/// outside strings, plus one.
pub fn count_values(raw: &str) -> usize {
    1 + crate::conversation::bytes_in_strings(raw)
        .filter(|&(c, in_string)| !in_string && matches!(c, b'[' | b'{' | b','))
        .count()
}

fn over_budget<E: serde::de::Error>() -> E {
    let budget = BUDGET_SET.with(Cell::get).unwrap_or(MAX_TREE_VALUES);
    E::custom(format!(
        "the request holds more than {budget} JSON values in structured fields (content parts, tool definitions, Responses input items, option objects)"
    ))
}

/// Charges `n` values to the request's budget; over it, the request's 400.
pub fn charge_values<E: serde::de::Error>(n: usize) -> Result<(), E> {
    BUDGET.with(|b| match b.get() {
        None => Ok(()),
        Some(left) if n > left => {
            b.set(Some(0));
            Err(over_budget())
        }
        Some(left) => {
            b.set(Some(left - n));
            Ok(())
        }
    })
}

/// An object charged to the request's budget as it is read — itself 1, each of its keys
/// 1 — and parsed as `T`: a content part of Chat Completions or Messages (a text part is
/// 3, as a Responses part of the same keys). A part is no tree, but costs far more than
/// its bytes on its way to the CLI (the part, its block, the presented block), so a body
/// of tiny parts is bounded as trees are. What is not an object is refused.
#[derive(Debug)]
pub struct Charged<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Charged<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Charged<T>, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for Visit<T> {
            type Value = Charged<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Charged<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(ChargedKeys(
                    map,
                )))
                .map(Charged)
            }
        }
        charge_values(1)?;
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// An object's entries, each key charged as it is read.
struct ChargedKeys<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for ChargedKeys<A> {
    type Error = A::Error;
    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let key = self.0.next_key_seed(seed)?;
        if key.is_some() {
            charge_values(1)?;
        }
        Ok(key)
    }
    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

fn charge<E: serde::de::Error>(raw: &RawValue) -> Result<(), E> {
    charge_text(raw.get())
}

fn charge_text<E: serde::de::Error>(raw: &str) -> Result<(), E> {
    if BUDGET.with(Cell::get).is_none() {
        return Ok(());
    }
    charge_values(count_values(raw))
}

/// An optional tree-shaped field, charged to the request's budget before it is parsed.
/// Use with `#[serde(default, deserialize_with = "…")]` on an `Option<Value>` field.
pub fn tree<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    let Some(raw) = Option::<Box<RawValue>>::deserialize(d)? else {
        return Ok(None);
    };
    charge(&raw)?;
    match serde_json::from_str::<Value>(raw.get()).map_err(D::Error::custom)? {
        Value::Null => Ok(None),
        v => Ok(Some(v)),
    }
}

/// The keys of an object ccgate reads ([`read_fields`]): `keys` are parsed as trees,
/// `lists` as lists of objects of which ccgate reads the keys given with them.
#[derive(Debug, Clone, Copy)]
pub struct ReadKeys {
    pub keys: &'static [&'static str],
    pub lists: &'static [(&'static str, &'static [&'static str])],
}

/// An object of which ccgate reads only some keys (a Responses `input` item, its content
/// parts): the values of `read.keys` are charged and parsed as [`tree`], those of
/// `read.lists` as lists of such objects; every other entry (what ccgate does not read:
/// ids, statuses, annotations, logprobs, fields of later API versions) is skipped as it
/// is read: no tree, no charge. What is not an object is a tree, charged.
pub fn read_fields<'de, D: Deserializer<'de>>(d: D, read: ReadKeys) -> Result<Value, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    fields_of(&raw, read).map_err(D::Error::custom)
}

fn fields_of(raw: &RawValue, read: ReadKeys) -> Result<Value, serde_json::Error> {
    if !raw.get().starts_with('{') {
        charge(raw)?;
        return serde_json::from_str(raw.get());
    }
    struct Visit(ReadKeys);
    impl<'de> Visitor<'de> for Visit {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if let Some((_, keys)) = self.0.lists.iter().find(|(k, _)| *k == key) {
                    let raw = map.next_value::<Box<RawValue>>()?;
                    let value = list_of(&raw, keys).map_err(A::Error::custom)?;
                    out.insert(key, value);
                } else if self.0.keys.contains(&key.as_str()) {
                    let raw = map.next_value::<Box<RawValue>>()?;
                    charge::<A::Error>(&raw)?;
                    let value = serde_json::from_str(raw.get()).map_err(A::Error::custom)?;
                    out.insert(key, value);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }
    charge_text("0")?;
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let map = de.deserialize_map(Visit(read))?;
    Ok(Value::Object(map))
}

/// A list of objects of which ccgate reads `keys` (anything else: a tree, charged).
fn list_of(raw: &RawValue, keys: &'static [&'static str]) -> Result<Value, serde_json::Error> {
    if !raw.get().starts_with('[') {
        charge(raw)?;
        return serde_json::from_str(raw.get());
    }
    charge_text("0")?;
    let read = ReadKeys { keys, lists: &[] };
    let elements: Vec<Box<RawValue>> = serde_json::from_str(raw.get())?;
    let elements = elements
        .iter()
        .map(|e| fields_of(e, read))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Array(elements))
}

/// An optional list of tree-shaped values, charged as [`tree`].
pub fn trees<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Value>>, D::Error> {
    let Some(raw) = Option::<Box<RawValue>>::deserialize(d)? else {
        return Ok(None);
    };
    charge(&raw)?;
    serde_json::from_str(raw.get()).map_err(D::Error::custom)
}

/// A tool definition as a client sends it (Anthropic, Chat Completions, Responses): its
/// fields as a small tree, charged to the request's budget, except its input schema
/// (`input_schema`, `parameters`, or Chat Completions' `function.parameters`), which is
/// kept as the client sent it ([`RawJson`]): a schema is only passed on to the CLI and
/// hashed, and may be large (an `enum` of thousands of values).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    /// The definition without its schema (an object).
    fields: Map<String, Value>,
    /// The schema and where it was (None: absent or null).
    schema: Schema,
}

/// A tool definition's schema and where it was.
type Schema = Option<(SchemaAt, RawJson)>;

/// Where a tool definition's schema is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaAt {
    /// A top-level key (`input_schema`, `parameters`).
    Top(&'static str),
    /// `function.parameters`.
    Function,
}

/// The keys whose value is a schema, kept raw.
fn schema_key(key: &str) -> Option<&'static str> {
    match key {
        "input_schema" => Some("input_schema"),
        "parameters" => Some("parameters"),
        _ => None,
    }
}

impl ToolDef {
    /// A field of the definition (never its schema).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The definition's fields but its schema (a hosted tool's settings).
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The input schema (`input_schema`, `parameters` or `function.parameters`), if given
    /// and not null.
    pub fn schema(&self) -> Option<&RawJson> {
        self.schema.as_ref().map(|(_, s)| s)
    }

    /// The whole definition as a tree (an echo of the request, a stored thread's tools).
    pub fn to_value(&self) -> Value {
        let mut v = Value::Object(self.fields.clone());
        match &self.schema {
            None => {}
            Some((SchemaAt::Top(k), s)) => v[*k] = s.to_value(),
            Some((SchemaAt::Function, s)) => {
                if let Some(f) = v.get_mut("function").and_then(Value::as_object_mut) {
                    f.insert("parameters".into(), s.to_value());
                }
            }
        }
        v
    }
}

/// Written back as it was read, the schema as its text (a stored thread's tools).
impl serde::Serialize for ToolDef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in &self.fields {
            match (&self.schema, k.as_str(), v) {
                (Some((SchemaAt::Function, schema)), "function", Value::Object(f)) => {
                    struct Function<'a>(&'a Map<String, Value>, &'a RawJson);
                    impl serde::Serialize for Function<'_> {
                        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                            let mut m = s.serialize_map(None)?;
                            for (k, v) in self.0 {
                                m.serialize_entry(k, v)?;
                            }
                            m.serialize_entry("parameters", self.1)?;
                            m.end()
                        }
                    }
                    m.serialize_entry(k, &Function(f, schema))?;
                }
                _ => m.serialize_entry(k, v)?,
            }
        }
        if let Some((SchemaAt::Top(k), schema)) = &self.schema {
            m.serialize_entry(k, schema)?;
        }
        m.end()
    }
}

/// Tool definitions whose schemas become trees after all (Responses echoes its `tools` in
/// every `response` object): their schemas are charged to the budget as well.
pub fn echoed_tools<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<ToolDef>>, D::Error> {
    let defs = Option::<Vec<ToolDef>>::deserialize(d)?;
    for s in defs.iter().flatten().filter_map(ToolDef::schema) {
        charge_text(s.get())?;
    }
    Ok(defs)
}

/// The fields of a tool definition's object (or of its `function`), each charged and
/// parsed but the schema; returns the fields and the schema with its key.
fn tool_fields<'de, A: MapAccess<'de>>(
    mut map: A,
    nested: bool,
) -> Result<(Map<String, Value>, Schema), A::Error> {
    let mut fields = Map::new();
    let mut schema = None;
    while let Some(key) = map.next_key::<String>()? {
        if let Some(k) = schema_key(&key).filter(|k| !nested || *k == "parameters") {
            let raw: RawJson = map.next_value()?;
            let at = if nested {
                SchemaAt::Function
            } else {
                SchemaAt::Top(k)
            };
            schema = (raw.get() != "null").then_some((at, raw));
            continue;
        }
        if key == "function" && !nested {
            let (f, s) = map.next_value::<FunctionFields>()?.0;
            if s.is_some() {
                schema = s;
            }
            fields.insert(key, f);
            continue;
        }
        let raw: Box<RawValue> = map.next_value()?;
        charge(&raw)?;
        fields.insert(
            key,
            serde_json::from_str(raw.get()).map_err(A::Error::custom)?,
        );
    }
    Ok((fields, schema))
}

/// Chat Completions' `function` object: its fields as a tree, its `parameters` raw.
struct FunctionFields((Value, Schema));

impl<'de> serde::Deserialize<'de> for FunctionFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FunctionFields, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = FunctionFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a function object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FunctionFields, A::Error> {
                let (fields, schema) = tool_fields(map, true)?;
                Ok(FunctionFields((Value::Object(fields), schema)))
            }
        }
        // Anything but an object is kept as it is (the API's check names it).
        let raw = Box::<RawValue>::deserialize(d)?;
        if raw.get().starts_with('{') {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            de.deserialize_map(Visit).map_err(D::Error::custom)
        } else {
            charge(&raw)?;
            let v = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
            Ok(FunctionFields((v, None)))
        }
    }
}

impl<'de> serde::Deserialize<'de> for ToolDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ToolDef, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = ToolDef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a tool definition (an object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ToolDef, A::Error> {
                let (fields, schema) = tool_fields(map, false)?;
                Ok(ToolDef { fields, schema })
            }
        }
        // Each definition counts as one value of the budget, its fields as theirs.
        BUDGET.with(|b| match b.get() {
            Some(0) => Err(over_budget()),
            Some(left) => {
                b.set(Some(left - 1));
                Ok(())
            }
            None => Ok(()),
        })?;
        d.deserialize_map(Visit)
    }
}

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

    #[test]
    fn values_in_strings_are_not_counted() {
        let text = r#"{ "a\"[{": [1, {"b": "]},"}], "c": "\\" }"#;
        assert_eq!(super::count_values(text), 6);
    }

    #[derive(Deserialize)]
    struct Trees {
        #[serde(default, deserialize_with = "super::tree")]
        a: Option<serde_json::Value>,
        #[serde(default, deserialize_with = "super::trees")]
        b: Option<Vec<serde_json::Value>>,
    }

    #[test]
    fn values_are_counted_outside_strings() {
        assert_eq!(super::count_values("0"), 1);
        assert_eq!(super::count_values("[0,0,0]"), 4);
        assert_eq!(super::count_values(r#"{"a":"x,[{","b":[1]}"#), 4);
        assert_eq!(super::count_values(r#""a\"b,""#), 1);
    }

    #[test]
    fn trees_share_the_request_budget() {
        let parse = |s: &str| serde_json::from_str::<Trees>(s).map_err(|e| e.to_string());
        let r = super::with_tree_budget(10, || parse(r#"{"a":[1,2,3],"b":[{"x":1},{"y":2}]}"#));
        let r = r.unwrap();
        assert_eq!(r.a, Some(serde_json::json!([1, 2, 3])));
        assert_eq!(r.b.unwrap().len(), 2);
        let e = super::with_tree_budget(5, || parse(r#"{"a":[1,2,3],"b":[{"x":1},{"y":2}]}"#))
            .err()
            .unwrap();
        assert!(e.contains("more than"), "{e}");
        // Outside a budget (a tree parsed from a tree) nothing is bounded.
        let big = format!("{{\"a\":[{}]}}", vec!["0"; 100].join(","));
        assert!(parse(&big).is_ok());
        assert_eq!(parse(r#"{"a":null}"#).unwrap().a, None);
    }

    #[test]
    fn of_an_object_only_the_keys_read_are_a_tree_and_charged() {
        const READ: super::ReadKeys = super::ReadKeys {
            keys: &["type", "role"],
            lists: &[("content", &["type", "text"])],
        };
        struct Item(serde_json::Value);
        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Item, D::Error> {
                super::read_fields(d, READ).map(Item)
            }
        }
        let big = format!("[{}]", vec!["0"; 100].join(","));
        let text = format!(
            r#"{{"type":"message","id":{big},"role":"user","content":[{{"type":"input_text","text":"hi","logprobs":{big}}},"s"]}}"#
        );
        let item = super::with_tree_budget(10, || serde_json::from_str::<Item>(&text)).unwrap();
        assert_eq!(
            item.0,
            serde_json::json!({"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "hi"}, "s"]})
        );
        // The object 1, type 1, role 1, content 1 + part 1 + its two keys 2 + "s" 1 = 8.
        assert!(super::with_tree_budget(7, || serde_json::from_str::<Item>(&text)).is_err());
        // A read key holding an array is charged in full; content as a string is a string.
        let text = format!(r#"{{"role":{big}}}"#);
        assert!(super::with_tree_budget(50, || serde_json::from_str::<Item>(&text)).is_err());
        let item = serde_json::from_str::<Item>(r#"{"content":"hi"}"#).unwrap();
        assert_eq!(item.0, serde_json::json!({"content": "hi"}));
        let item = serde_json::from_str::<Item>(r#"[1,{"a":2}]"#).unwrap();
        assert_eq!(item.0, serde_json::json!([1, {"a": 2}]));
        assert!(serde_json::from_str::<Item>(r#"{"type":"a","x":[1,}"#).is_err());
    }

    #[derive(Deserialize, Debug)]
    struct Part {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        source: Option<serde_json::Value>,
    }

    #[test]
    fn a_charged_object_costs_itself_and_each_key() {
        type Parts = Vec<super::Charged<Part>>;
        let text = r#"[{"type":"text","text":"x"},{"type":"image","source":{"a":1,"b":2}}]"#;
        // 1 + 2 keys, then 1 + 2 keys (the source's own keys are not charged): 6.
        let parts = super::with_tree_budget(6, || serde_json::from_str::<Parts>(text)).unwrap();
        assert_eq!(parts[1].0.kind, "image");
        assert!(parts[1].0.source.is_some());
        let e = super::with_tree_budget(5, || serde_json::from_str::<Parts>(text)).unwrap_err();
        assert!(e.to_string().contains("content parts"), "{e}");
        // Outside a budget, nothing is bounded; what is not an object is refused.
        assert_eq!(serde_json::from_str::<Parts>(text).unwrap().len(), 2);
        assert!(serde_json::from_str::<Parts>(r#"["x"]"#).is_err());
    }

    #[test]
    fn tool_definitions_keep_their_schema_as_text_and_write_it_back() {
        use crate::http::bounded::ToolDef;
        for text in [
            r#"{"type":"function","function":{"name":"t","parameters":{"type":"object","x":[1,2]}}}"#,
            r#"{"name":"t","description":"d","input_schema":{"type":"object"}}"#,
            r#"{"type":"function","name":"t","parameters":{"type":"object"},"strict":true}"#,
            r#"{"name":"t"}"#,
        ] {
            let def: ToolDef = serde_json::from_str(text).unwrap();
            let tree: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(def.to_value(), tree, "{text}");
            let again: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&def).unwrap()).unwrap();
            assert_eq!(again, tree, "{text}");
            assert!(def.get("parameters").is_none() && def.get("input_schema").is_none());
        }
        let def: ToolDef = serde_json::from_str(r#"{"name":"t","input_schema":null}"#).unwrap();
        assert!(def.schema().is_none());
        // The schema is not charged; the other fields are.
        let big = format!("[{}]", vec!["0"; 100].join(","));
        let text = format!(r#"{{"name":"t","input_schema":{{"x":{big}}}}}"#);
        let def = super::with_tree_budget(10, || serde_json::from_str::<ToolDef>(&text)).unwrap();
        assert!(def.schema().unwrap().get().contains("0,0"));
        let text = format!(r#"{{"name":"t","input_schema":{{}},"x":{big}}}"#);
        assert!(super::with_tree_budget(10, || serde_json::from_str::<ToolDef>(&text)).is_err());
    }

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
