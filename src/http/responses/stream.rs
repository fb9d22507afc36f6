//! The Responses SSE sequence of a streamed answer: `response.created`,
//! `response.in_progress`, one output item per message or function call with its deltas
//! and `done` events, then `response.completed` / `response.incomplete`, or `error` +
//! `response.failed`; every event with its `sequence_number`.

use axum::response::sse::Event;
use serde_json::{json, Map, Value};

use super::output::{annotations, call_item, call_item_id, incomplete, message_item, web_item};
use super::reasoning::reasoning_id;
use super::request::ResponsesRequest;
use super::tools::ToolKind;
use crate::http::handler::Framer;
use crate::http::unix_now;
use crate::protocol::Success;
use crate::turn::ThinkingStep;

/// The Responses API's streaming events.
pub struct ResponseFramer {
    req: ResponsesRequest,
    id: String,
    created_at: u64,
    sequence: u64,
    /// The answer's whole text so far (what is stored for `previous_response_id`).
    text: String,
    /// The output items finished so far, in order (the final `response` lists them as
    /// they were streamed: text after a call is a message item of its own).
    done: Vec<Value>,
    /// Output items started so far.
    items: usize,
    /// The open item: a message (its own id and text, which its `done` events repeat),
    /// or a function call.
    open: Option<OpenItem>,
    /// The CLI's web calls so far (the messages after them cite their sources).
    web: Vec<crate::protocol::WebCall>,
    /// Every event's data, for the unit tests.
    #[cfg(test)]
    sent: Vec<Value>,
}

/// The output item being streamed.
enum OpenItem {
    /// A reasoning item (one thinking block): its text and signature so far.
    Reasoning {
        index: usize,
        id: String,
        text: String,
        signature: String,
    },
    Message {
        index: usize,
        id: String,
        text: String,
    },
    Call {
        index: usize,
        id: String,
        call_id: String,
        name: String,
        kind: ToolKind,
        arguments: String,
    },
}

impl ResponseFramer {
    pub(super) fn new(req: ResponsesRequest, id: String) -> ResponseFramer {
        ResponseFramer {
            req,
            id,
            created_at: unix_now(),
            sequence: 0,
            text: String::new(),
            done: Vec::new(),
            items: 0,
            open: None,
            web: Vec::new(),
            #[cfg(test)]
            sent: Vec::new(),
        }
    }

    /// One event: `type` first, the fields, then its `sequence_number`.
    fn event(&mut self, kind: &str, fields: Value) -> Event {
        let mut m = Map::new();
        m.insert("type".into(), kind.into());
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        m.insert("sequence_number".into(), self.sequence.into());
        self.sequence += 1;
        #[cfg(test)]
        self.sent.push(Value::Object(m.clone()));
        Event::default()
            .event(kind)
            .data(Value::Object(m).to_string())
    }

    fn part(text: &str) -> Value {
        json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    }
}

impl ResponseFramer {
    /// Opens a message item (its one text part), with a new id.
    fn open_message(&mut self, out: &mut Vec<Event>) -> usize {
        let index = self.items;
        self.items += 1;
        let item_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let item = message_item(&item_id, "in_progress", None);
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        out.push(self.event(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": index, "content_index": 0,
                   "part": Self::part("")}),
        ));
        self.open = Some(OpenItem::Message {
            index,
            id: item_id,
            text: String::new(),
        });
        index
    }

    /// Opens a reasoning item (and its summary part when summaries are asked for).
    fn open_reasoning(&mut self, out: &mut Vec<Event>) {
        self.close(out, "completed");
        let index = self.items;
        self.items += 1;
        let id = reasoning_id();
        let mut item = self.req.reasoning_item(&id, "", "");
        item.as_object_mut().map(|o| o.remove("encrypted_content"));
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        if self.req.summaries() {
            out.push(self.event(
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": index, "summary_index": 0,
                       "part": {"type": "summary_text", "text": ""}}),
            ));
        }
        self.open = Some(OpenItem::Reasoning {
            index,
            id,
            text: String::new(),
            signature: String::new(),
        });
    }

    /// Closes the open item with its `done` events.
    fn close(&mut self, out: &mut Vec<Event>, status: &str) {
        match self.open.take() {
            None => {}
            Some(OpenItem::Reasoning {
                index,
                id,
                text,
                signature,
            }) => {
                if self.req.summaries() {
                    out.push(self.event(
                        "response.reasoning_summary_text.done",
                        json!({"item_id": id, "output_index": index, "summary_index": 0,
                               "text": text}),
                    ));
                    out.push(self.event(
                        "response.reasoning_summary_part.done",
                        json!({"item_id": id, "output_index": index, "summary_index": 0,
                               "part": {"type": "summary_text", "text": text}}),
                    ));
                }
                let item = self.req.reasoning_item(&id, &text, &signature);
                out.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
                self.done.push(item);
            }
            Some(OpenItem::Message {
                index,
                id: item_id,
                text,
            }) => {
                let notes = annotations(&text, &self.web);
                for (n, note) in notes.as_array().into_iter().flatten().enumerate() {
                    out.push(self.event(
                        "response.output_text.annotation.added",
                        json!({"item_id": item_id, "output_index": index, "content_index": 0,
                               "annotation_index": n, "annotation": note}),
                    ));
                }
                out.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0,
                           "text": text, "logprobs": []}),
                ));
                out.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0,
                           "part": Self::part(&text)}),
                ));
                let mut item = message_item(&item_id, status, Some(&text));
                item["content"][0]["annotations"] = notes;
                out.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
                self.done.push(item);
            }
            Some(OpenItem::Call {
                index,
                id,
                call_id,
                name,
                kind,
                arguments,
            }) => {
                let item = call_item(&kind, &call_id, &name, &arguments, "completed");
                if kind == ToolKind::Custom {
                    // The input is a string inside the call's JSON: sent whole at the end.
                    let input = item["input"].clone();
                    out.push(self.event(
                        "response.custom_tool_call_input.delta",
                        json!({"item_id": id, "output_index": index, "delta": input}),
                    ));
                    out.push(self.event(
                        "response.custom_tool_call_input.done",
                        json!({"item_id": id, "output_index": index, "input": input}),
                    ));
                } else {
                    out.push(self.event(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": index, "name": name,
                               "arguments": arguments}),
                    ));
                }
                out.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
                self.done.push(item);
            }
        }
    }
}

impl Framer for ResponseFramer {
    fn opening(&mut self) -> Vec<Event> {
        let r = self
            .req
            .response(&self.id, self.created_at, "in_progress", json!([]));
        vec![
            self.event("response.created", json!({"response": r})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    fn text(&mut self, text: String) -> Vec<Event> {
        let mut out = Vec::new();
        if !matches!(self.open, Some(OpenItem::Message { .. })) {
            self.close(&mut out, "completed");
            self.open_message(&mut out);
        }
        self.text.push_str(&text);
        let Some(OpenItem::Message {
            index,
            id,
            text: item_text,
        }) = self.open.as_mut()
        else {
            return out;
        };
        item_text.push_str(&text);
        let (index, item_id) = (*index, id.clone());
        out.push(self.event(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": index, "content_index": 0,
                   "delta": text, "logprobs": []}),
        ));
        out
    }

    /// Reached only when the request asks for reasoning items.
    fn thinking(&mut self, step: ThinkingStep) -> Vec<Event> {
        let mut out = Vec::new();
        match step {
            ThinkingStep::Start => self.open_reasoning(&mut out),
            ThinkingStep::Text(t) => {
                if !matches!(self.open, Some(OpenItem::Reasoning { .. })) {
                    self.open_reasoning(&mut out);
                }
                let summaries = self.req.summaries();
                let Some(OpenItem::Reasoning {
                    index, id, text, ..
                }) = self.open.as_mut()
                else {
                    return out;
                };
                text.push_str(&t);
                let (index, id) = (*index, id.clone());
                if summaries {
                    out.push(self.event(
                        "response.reasoning_summary_text.delta",
                        json!({"item_id": id, "output_index": index, "summary_index": 0,
                               "delta": t}),
                    ));
                }
            }
            ThinkingStep::Signature(sig) => {
                if let Some(OpenItem::Reasoning { signature, .. }) = self.open.as_mut() {
                    signature.push_str(&sig);
                }
            }
        }
        out
    }

    fn tool_start(&mut self, _index: usize, call_id: String, name: String) -> Vec<Event> {
        let mut out = Vec::new();
        self.close(&mut out, "completed");
        let index = self.items;
        self.items += 1;
        let kind = self.req.tool_kind(&name);
        let id = call_item_id(&call_id, &kind);
        let item = call_item(&kind, &call_id, &name, "", "in_progress");
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        self.open = Some(OpenItem::Call {
            index,
            id,
            call_id,
            name,
            kind,
            arguments: String::new(),
        });
        out
    }

    fn tool_args(&mut self, _index: usize, fragment: String) -> Vec<Event> {
        let Some(OpenItem::Call {
            index,
            id,
            kind,
            arguments,
            ..
        }) = self.open.as_mut()
        else {
            return Vec::new();
        };
        arguments.push_str(&fragment);
        if *kind == ToolKind::Custom {
            return Vec::new();
        }
        let (index, id) = (*index, id.clone());
        vec![self.event(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": fragment}),
        )]
    }

    fn web(&mut self, call: &crate::protocol::WebCall) -> Vec<Event> {
        let mut out = Vec::new();
        self.close(&mut out, "completed");
        let index = self.items;
        self.items += 1;
        let item = web_item(call);
        let id = item["id"].clone();
        let mut started = item.clone();
        started["status"] = "in_progress".into();
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": started}),
        ));
        for phase in ["in_progress", "searching", "completed"] {
            out.push(self.event(
                &format!("response.web_search_call.{phase}"),
                json!({"item_id": id, "output_index": index}),
            ));
        }
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.done.push(item);
        self.web.push(call.clone());
        out
    }

    fn finish(&mut self, s: &Success) -> Vec<Event> {
        let mut out = Vec::new();
        let status = if incomplete(s) {
            "incomplete"
        } else {
            "completed"
        };
        if !self.done.iter().any(|i| i["type"] != "reasoning")
            && !matches!(
                self.open,
                Some(OpenItem::Message { .. } | OpenItem::Call { .. })
            )
        {
            // An empty answer still has its (empty) message item.
            self.close(&mut out, "completed");
            self.open_message(&mut out);
        }
        self.close(&mut out, status);
        let text = std::mem::take(&mut self.text);
        let mut done = self.req.finished(&self.id, self.created_at, "", s, &text);
        done["output"] = Value::Array(std::mem::take(&mut self.done));
        self.req.remember(&self.id, &text, s, &done["output"]);
        let last = if incomplete(s) {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.event(last, json!({"response": done})));
        out
    }

    /// `error` with the error's code, message and param, then `response.failed` with the
    /// failed response (its `error` has the code and message).
    fn fail(&mut self, body: Value) -> Vec<Event> {
        let e = &body["error"];
        let code = e["code"]
            .as_str()
            .or_else(|| e["type"].as_str())
            .unwrap_or("server_error")
            .to_string();
        let message = e["message"]
            .as_str()
            .unwrap_or("The request failed.")
            .to_string();
        let mut r = self
            .req
            .response(&self.id, self.created_at, "failed", json!([]));
        r["error"] = json!({"code": code, "message": message});
        vec![
            self.event(
                "error",
                json!({"code": code, "message": message, "param": e["param"].clone()}),
            ),
            self.event("response.failed", json!({"response": r})),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::ToolCall;

    fn framer() -> ResponseFramer {
        let req: ResponsesRequest =
            serde_json::from_value(json!({"model": "sonnet", "input": "hi", "stream": true}))
                .unwrap();
        ResponseFramer::new(req, "resp_1".into())
    }

    #[test]
    fn text_after_a_call_is_a_new_message_item_with_only_its_own_text() {
        let mut f = framer();
        f.opening();
        f.text("Let me look. ".into());
        f.tool_start(0, "toolu_1".into(), "get_weather".into());
        f.tool_args(0, r#"{"city":"Paris"}"#.into());
        f.text("Asked.".into());
        let s = Success {
            text: "Let me look. Asked.".into(),
            tool_calls: vec![ToolCall {
                id: "toolu_1".into(),
                name: "get_weather".into(),
                input: json!({"city": "Paris"}),
            }],
            ..Success::default()
        };
        f.finish(&s);
        let added: Vec<&Value> = f
            .sent
            .iter()
            .filter(|e| e["type"] == "response.output_item.added")
            .map(|e| &e["item"])
            .collect();
        assert_eq!(added.len(), 3, "{:?}", f.sent);
        assert_ne!(added[0]["id"], added[2]["id"], "a new message item");
        let texts: Vec<&Value> = f
            .sent
            .iter()
            .filter(|e| e["type"] == "response.output_text.done")
            .map(|e| &e["text"])
            .collect();
        assert_eq!(texts, [&json!("Let me look. "), &json!("Asked.")]);
        let indexes: Vec<u64> = f
            .sent
            .iter()
            .filter(|e| e["type"] == "response.output_item.done")
            .map(|e| e["output_index"].as_u64().unwrap())
            .collect();
        assert_eq!(indexes, [0, 1, 2]);
        let done = f.sent.last().unwrap();
        assert_eq!(done["type"], "response.completed");
        let output = done["response"]["output"].as_array().unwrap();
        let kinds: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message", "function_call", "message"]);
        assert_eq!(output[2]["content"][0]["text"], "Asked.");
        assert_eq!(output[0]["id"], added[0]["id"]);
    }
}
