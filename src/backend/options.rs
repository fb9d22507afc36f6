//! The per-request process flags beyond the model and the system prompt: structured
//! output (`--json-schema`), effort (`--effort`) and thinking (`--thinking`,
//! `--max-thinking-tokens`, `--thinking-display`).

/// The CLI's `--effort` levels (what `claude --help` and the CLI's own check accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effort {
    Low,
    Medium,
    High,
    Xhigh,
    Max,
}

impl Effort {
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
            Effort::Xhigh => "xhigh",
            Effort::Max => "max",
        }
    }
}

/// How the model thinks: `--thinking disabled`, `--thinking adaptive`, or a budget
/// (`--max-thinking-tokens N`, honoured by models that take a budget; adaptive-only
/// models think adaptively whatever it says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Thinking {
    Disabled,
    Adaptive,
    Budget(u32),
}

/// Per-request process flags beyond the model and system prompt. The default adds no flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RunOptions {
    /// `--json-schema`: the compact JSON text of the schema the answer must satisfy.
    pub json_schema: Option<String>,
    pub effort: Option<Effort>,
    pub thinking: Option<Thinking>,
    /// `--thinking-display` (`summarized` / `omitted`).
    pub thinking_display: Option<&'static str>,
}

impl RunOptions {
    /// The flags these options add to the argv, in a fixed order.
    pub fn flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(schema) = &self.json_schema {
            out.push("--json-schema".to_string());
            out.push(schema.clone());
        }
        if let Some(e) = self.effort {
            out.push("--effort".to_string());
            out.push(e.as_str().to_string());
        }
        match self.thinking {
            Some(Thinking::Disabled) => out.extend(["--thinking".into(), "disabled".into()]),
            Some(Thinking::Adaptive) => out.extend(["--thinking".into(), "adaptive".into()]),
            Some(Thinking::Budget(n)) => {
                out.extend(["--max-thinking-tokens".into(), n.to_string()])
            }
            None => {}
        }
        if let Some(d) = self.thinking_display {
            out.push("--thinking-display".to_string());
            out.push(d.to_string());
        }
        out
    }

    pub fn is_default(&self) -> bool {
        *self == RunOptions::default()
    }
}
