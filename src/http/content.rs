//! Message content as both APIs write it, parsed once into conversation [`Block`]s: a
//! plain string or a list of parts (`text`, Anthropic `image` / `document` /
//! `tool_use` / `tool_result` / `thinking` / `redacted_thinking`, OpenAI `image_url` /
//! `file`). Images and documents are validated into the Messages API's block shape here.

use serde::Deserialize;

use crate::conversation::{Block, RawJson};
use crate::http::bounded::Charged;
use crate::http::errors::ApiError;

/// A message's (or a system prompt's) content: a string or a list of parts.
///
/// Deserialized by hand, not as an untagged enum: serde buffers an untagged enum's whole
/// value as a tree first (about 40 bytes per JSON value), which multiplied the memory of a
/// body full of small values.
#[derive(Debug)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content::Text(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Content, E> {
                Ok(Content::Text(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Content, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
                // Each part is charged to the request's budget as it is read.
                while let Some(Charged(p)) = seq.next_element::<Charged<Part>>()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// One content part, with the fields of every part type either API sends. Attachments'
/// fields are boxed: most parts are text, and a part's size is paid per part.
#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    source: Option<Box<Strings>>,
    #[serde(default)]
    image_url: Option<Box<Strings>>,
    #[serde(default)]
    file: Option<Box<Strings>>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// A `tool_use` part's input, kept as the client sent it (never a tree).
    #[serde(default)]
    input: Option<RawJson>,
    #[serde(default)]
    tool_use_id: Option<String>,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    is_error: Option<bool>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    data: Option<String>,
    /// A `tool_reference` part's tool (inside a tool result, after a tool search).
    #[serde(default)]
    tool_name: Option<String>,
}

/// The string fields of an attachment's object (`source`, `image_url`, `file`) that
/// ccgate reads; anything else in it is skipped while parsing, never held. A bare string
/// (the older `image_url: "…"`) is its `url`.
#[derive(Debug, Default)]
struct Strings {
    kind: Option<String>,
    media_type: Option<String>,
    data: Option<String>,
    url: Option<String>,
    file_id: Option<String>,
    file_data: Option<String>,
    filename: Option<String>,
}

impl Strings {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "type" => self.kind.as_deref(),
            "media_type" => self.media_type.as_deref(),
            "data" => self.data.as_deref(),
            "url" => self.url.as_deref(),
            "file_id" => self.file_id.as_deref(),
            "file_data" => self.file_data.as_deref(),
            "filename" => self.filename.as_deref(),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Strings, D::Error> {
        struct Visit;
        /// A value kept only when it is a string.
        struct MaybeString(Option<String>);
        impl<'de> Deserialize<'de> for MaybeString {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MaybeString, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = MaybeString;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("any JSON value")
                    }
                    fn visit_str<E>(self, s: &str) -> Result<MaybeString, E> {
                        Ok(MaybeString(Some(s.to_owned())))
                    }
                    fn visit_string<E>(self, s: String) -> Result<MaybeString, E> {
                        Ok(MaybeString(Some(s)))
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<MaybeString, E> {
                        Ok(MaybeString(None))
                    }
                    fn visit_i64<E>(self, _: i64) -> Result<MaybeString, E> {
                        Ok(MaybeString(None))
                    }
                    fn visit_u64<E>(self, _: u64) -> Result<MaybeString, E> {
                        Ok(MaybeString(None))
                    }
                    fn visit_f64<E>(self, _: f64) -> Result<MaybeString, E> {
                        Ok(MaybeString(None))
                    }
                    fn visit_unit<E>(self) -> Result<MaybeString, E> {
                        Ok(MaybeString(None))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<MaybeString, A::Error> {
                        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                        Ok(MaybeString(None))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<MaybeString, A::Error> {
                        while map
                            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                            .is_some()
                        {}
                        Ok(MaybeString(None))
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Strings;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object or a string")
            }
            fn visit_str<E>(self, s: &str) -> Result<Strings, E> {
                Ok(Strings {
                    url: Some(s.to_owned()),
                    ..Strings::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Strings, A::Error> {
                let mut out = Strings::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "type" => &mut out.kind,
                        "media_type" => &mut out.media_type,
                        "data" => &mut out.data,
                        "url" => &mut out.url,
                        "file_id" => &mut out.file_id,
                        "file_data" => &mut out.file_data,
                        "filename" => &mut out.filename,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value::<MaybeString>()?.0;
                }
                Ok(out)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Strings, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Strings::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Strings, E> {
                Ok(Strings::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Strings, E> {
                Ok(Strings::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Strings, E> {
                Ok(Strings::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Strings, E> {
                Ok(Strings::default())
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Which parts a place accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// Text only (system prompts, system messages).
    Text,
    /// Text, images and documents (user messages, tool results).
    User,
    /// Text, tool calls and thinking (assistant messages).
    Assistant,
}

impl Content {
    /// The content as blocks; a part this place does not accept is a 400 naming its path
    /// (`path` is the JSON path of the content, e.g. `messages[2].content`).
    pub fn blocks(&self, path: &str, allow: Allow) -> Result<Vec<Block>, ApiError> {
        match self {
            Content::Text(t) => Ok(vec![Block::Text(t.clone())]),
            Content::Parts(parts) => parts
                .iter()
                .enumerate()
                .map(|(j, p)| p.block(&format!("{path}[{j}]"), allow))
                .collect(),
        }
    }

    /// The tools `tool_reference` parts inside this content's tool results name, with
    /// their paths (the API checks each is among the request's tools).
    pub fn tool_references(&self, path: &str) -> Vec<(String, String)> {
        let Content::Parts(parts) = self else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (j, p) in parts.iter().enumerate() {
            if let (true, Some(Content::Parts(inner))) =
                (p.kind == "tool_result", p.content.as_ref())
            {
                for (k, r) in inner.iter().enumerate() {
                    if r.kind == "tool_reference" {
                        let at = format!("{path}[{j}].content[{k}].tool_name");
                        out.push((at, r.tool_name.clone().unwrap_or_default()));
                    }
                }
            }
        }
        out
    }

    /// The text of text-only content, parts joined with newlines.
    pub fn text(&self, path: &str) -> Result<String, ApiError> {
        let blocks = self.blocks(path, Allow::Text)?;
        let texts: Vec<&str> = blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        Ok(texts.join("\n"))
    }
}

/// One content part given as a tree in either API's shape (a Responses part translated
/// to it) as a block; `at` is its path.
pub fn part_block(part: serde_json::Value, at: &str, allow: Allow) -> Result<Block, ApiError> {
    let part: Part = serde_json::from_value(part)
        .map_err(|e| ApiError::invalid_param(format!("invalid content part: {e}"), at))?;
    part.block(at, allow)
}

impl Part {
    fn block(&self, at: &str, allow: Allow) -> Result<Block, ApiError> {
        let field = |f: &str| format!("{at}{f}");
        let kind = self.kind.as_str();
        let attachment = matches!(kind, "image" | "image_url" | "document" | "file");
        if attachment && allow != Allow::User {
            return Err(ApiError::invalid_param(
                "images and documents are only supported in user messages",
                &field(".type"),
            ));
        }
        let assistant_only = matches!(kind, "tool_use" | "thinking" | "redacted_thinking");
        if (assistant_only && allow != Allow::Assistant)
            || (kind == "tool_result" && allow != Allow::User)
        {
            return Err(ApiError::invalid_param(
                format!("`{kind}` blocks are not allowed in this message"),
                &field(".type"),
            ));
        }
        Ok(match kind {
            "text" => Block::Text(self.text.clone().ok_or_else(|| {
                ApiError::invalid_param("text block is missing `text`", &field(".text"))
            })?),
            "image" => Block::Image(anthropic_image(self.source.as_deref(), &field(".source"))?),
            "image_url" => Block::Image(openai_image(
                self.image_url.as_deref(),
                &field(".image_url"),
            )?),
            "document" => Block::Document(anthropic_document(self, &field(".source"))?),
            "file" => Block::Document(openai_file(self.file.as_deref(), &field(".file"))?),
            "tool_use" => Block::ToolUse {
                id: required(&self.id, &field(".id"))?,
                name: required(&self.name, &field(".name"))?,
                input: match &self.input {
                    None => RawJson::empty_object(),
                    Some(v) if v.is_object() => v.clone(),
                    // As the Messages API: a tool's input is always an object.
                    Some(_) => {
                        return Err(ApiError::invalid_param(
                            "Input should be a valid dictionary",
                            &field(".input"),
                        ))
                    }
                },
            },
            "tool_result" => Block::ToolResult {
                tool_use_id: required(&self.tool_use_id, &field(".tool_use_id"))?,
                content: match &self.content {
                    None => Vec::new(),
                    Some(c) => tool_result_blocks(c, &field(".content"))?,
                },
                is_error: self.is_error.unwrap_or(false),
            },
            "thinking" => Block::Thinking {
                text: self.thinking.clone().unwrap_or_default(),
                signature: self.signature.clone(),
                redacted: false,
            },
            "redacted_thinking" => Block::Thinking {
                text: self.data.clone().unwrap_or_default(),
                signature: None,
                redacted: true,
            },
            other => {
                return Err(ApiError::invalid_param(
                    format!(
                    "content type `{other}` is not supported; only text, images and documents are"
                ),
                    &field(".type"),
                ))
            }
        })
    }
}

/// A tool result's content: what a user message may hold, and `tool_reference` parts (a
/// tool search's answer: the named tool is now loaded). Every client tool is offered to
/// the model from the start, so a reference is told to the model as text.
fn tool_result_blocks(c: &Content, path: &str) -> Result<Vec<Block>, ApiError> {
    let Content::Parts(parts) = c else {
        return c.blocks(path, Allow::User);
    };
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let at = format!("{path}[{j}]");
            if p.kind != "tool_reference" {
                return p.block(&at, Allow::User);
            }
            match p.tool_name.as_deref().filter(|n| !n.is_empty()) {
                Some(name) => Ok(Block::Text(format!("Tool loaded: {name}"))),
                None => Err(ApiError::invalid_param(
                    "a `tool_reference` block needs `tool_name`",
                    &format!("{at}.tool_name"),
                )),
            }
        })
        .collect()
}

fn required(v: &Option<String>, path: &str) -> Result<String, ApiError> {
    v.clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid_param("this field is required", path))
}

/// Media types the Messages API accepts for images.
const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

fn plausible_base64(data: &str) -> bool {
    !data.is_empty()
        && data
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_'))
}

fn base64_source(
    media_type: &str,
    allowed: &[&str],
    data: &str,
    path: &str,
) -> Result<serde_json::Value, ApiError> {
    if !allowed.contains(&media_type) {
        return Err(ApiError::invalid_param(
            format!(
                "media type `{media_type}` is not supported here; use one of {}",
                allowed.join(", ")
            ),
            path,
        ));
    }
    if !plausible_base64(data) {
        return Err(ApiError::invalid_param(
            "data must be non-empty base64",
            path,
        ));
    }
    Ok(serde_json::json!({"type": "base64", "media_type": media_type, "data": data}))
}

fn url_source(url: &str, path: &str) -> Result<serde_json::Value, ApiError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ApiError::invalid_param(
            "URL must be http(s) or a base64 data: URL",
            path,
        ));
    }
    Ok(serde_json::json!({"type": "url", "url": url}))
}

fn str_field<'a>(v: Option<&'a Strings>, key: &str) -> &'a str {
    v.and_then(|s| s.get(key)).unwrap_or_default()
}

/// An Anthropic `image` block's `source` (`base64` or `url`), validated.
fn anthropic_image(source: Option<&Strings>, path: &str) -> Result<serde_json::Value, ApiError> {
    let source = match str_field(source, "type") {
        "base64" => base64_source(
            str_field(source, "media_type"),
            &IMAGE_MEDIA_TYPES,
            str_field(source, "data"),
            path,
        )?,
        "url" => url_source(str_field(source, "url"), path)?,
        _ => {
            return Err(ApiError::invalid_param(
                "image `source.type` must be `base64` or `url`",
                path,
            ))
        }
    };
    Ok(serde_json::json!({"type": "image", "source": source}))
}

/// An Anthropic `document` block: a base64 PDF, plain text, or a PDF URL (with its
/// optional `title` and `context`).
fn anthropic_document(b: &Part, path: &str) -> Result<serde_json::Value, ApiError> {
    let source = b.source.as_deref();
    let source = match str_field(source, "type") {
        "base64" => base64_source(
            str_field(source, "media_type"),
            &["application/pdf"],
            str_field(source, "data"),
            path,
        )?,
        "text" => {
            let data = source
                .and_then(|s| s.get("data"))
                .ok_or_else(|| ApiError::invalid_param("text document needs `data`", path))?;
            serde_json::json!({"type": "text", "media_type": "text/plain", "data": data})
        }
        "url" => url_source(str_field(source, "url"), path)?,
        _ => {
            return Err(ApiError::invalid_param(
                "document `source.type` must be `base64` (PDF), `text` or `url`",
                path,
            ))
        }
    };
    let mut block = serde_json::json!({"type": "document", "source": source});
    if let Some(t) = &b.title {
        block["title"] = t.clone().into();
    }
    if let Some(c) = &b.context {
        block["context"] = c.clone().into();
    }
    Ok(block)
}

/// An OpenAI `image_url` part: a `data:<type>;base64,<data>` URL or an http(s) URL.
fn openai_image(image_url: Option<&Strings>, path: &str) -> Result<serde_json::Value, ApiError> {
    // Both `{"url": "…"}` and the older bare string.
    let url = str_field(image_url, "url");
    let source = match url.strip_prefix("data:") {
        Some(rest) => {
            let (media_type, data) = rest
                .split_once(";base64,")
                .ok_or_else(|| ApiError::invalid_param("data: URL must be base64", path))?;
            base64_source(media_type, &IMAGE_MEDIA_TYPES, data, path)?
        }
        None => url_source(url, path)?,
    };
    Ok(serde_json::json!({"type": "image", "source": source}))
}

/// An OpenAI `file` part with inline `file_data` (a base64 PDF data: URL); uploaded
/// `file_id`s do not exist here.
fn openai_file(file: Option<&Strings>, path: &str) -> Result<serde_json::Value, ApiError> {
    if !str_field(file, "file_id").is_empty() {
        return Err(ApiError::invalid_param(
            "`file_id` is not supported (there is no file store); send the file inline as `file_data`",
            path,
        ));
    }
    let data_url = str_field(file, "file_data");
    let (media_type, data) = data_url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
        .ok_or_else(|| {
            ApiError::invalid_param(
                "`file_data` must be a data: URL (data:application/pdf;base64,…)",
                path,
            )
        })?;
    let source = base64_source(media_type, &["application/pdf"], data, path)?;
    let mut block = serde_json::json!({"type": "document", "source": source});
    let name = str_field(file, "filename");
    if !name.is_empty() {
        block["title"] = name.into();
    }
    Ok(block)
}
