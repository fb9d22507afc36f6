//! ccgate: an OpenAI- and Anthropic-compatible HTTP gateway in front of the Claude Code CLI,
//! whose failure handling is driven by a hot-reloaded rules file.
//!
//! Data flow: HTTP request (`http`) → health gate (`health`) → CLI run (`backend`) →
//! success translated to the API's shape, or failure facts → classified by the current
//! rules snapshot (`rules`, swapped by `reload`) → status + headers + body (`http::errors`).
#![forbid(unsafe_code)]

pub mod accounts;
pub mod app;
pub mod backend;
pub mod capture;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod conversation;
pub mod engine;
pub mod health;
pub mod http;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod offload;
pub mod probe;
pub mod protocol;
pub mod reload;
pub mod response_store;
pub mod rules;
pub mod shutdown;
pub mod store;
pub mod turn;

pub use app::serve;
pub use http::state::AppState;
