//! What a test case or `explain` describes: a caller (claims), a message, and the request
//! around it, turned into the policy's [`Input`] exactly as the filter does.

use std::time::{SystemTime, UNIX_EPOCH};

use mcp_guard::mcp::{self, Message, Target};
use mcp_guard::policy::{Input, RequestFacts};
use serde_json::{Map, Value};

/// The request around a message.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub claims: Map<String, Value>,
    /// Seconds since the epoch.
    pub now: i64,
    /// Request headers, pseudo-headers included (`:path`, `:authority`, `:method`).
    pub headers: Vec<(String, String)>,
    pub source: String,
    pub mtls: bool,
    /// The headers rules do not see: what the filter removes from a server that lists none of
    /// its own (`strip_headers`), credentials and forwarding headers included.
    pub removed: Vec<String>,
}

impl Scenario {
    pub fn new(claims: Map<String, Value>) -> Scenario {
        Scenario {
            claims,
            now: now(),
            headers: vec![
                (":method".into(), "POST".into()),
                (":path".into(), "/mcp".into()),
                (":authority".into(), "localhost".into()),
                ("content-type".into(), "application/json".into()),
            ],
            source: "127.0.0.1".into(),
            mtls: false,
            removed: mcp_guard::config::stripped_headers(
                mcp_guard::config::DEFAULT_STRIP_HEADERS
                    .iter()
                    .map(|h| h.to_string())
                    .collect(),
                [],
            ),
        }
    }

    /// Sets a header, replacing any of the same name.
    pub fn set_header(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(k, _)| *k != name);
        self.headers.push((name, value.to_string()));
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The policy input for `message`, as the filter builds it.
    pub fn input<'a>(&'a self, message: &'a Message) -> Input<'a> {
        let of = Input::of_message(message);
        Input {
            claims: Some(&self.claims),
            method: of.method,
            tool: of.tool,
            prompt: of.prompt,
            resource_uri: of.resource_uri,
            protocol_version: of
                .protocol_version
                .or_else(|| self.header("mcp-protocol-version")),
            task_id: of.task_id,
            subscription: of.subscription,
            input_responses: of.input_responses,
            retry: of.retry,
            ..self.base()
        }
    }

    /// The policy input of a listing request (`tools/list`), for [`Policy::visible`].
    ///
    /// [`Policy::visible`]: mcp_guard::policy::Policy::visible
    pub fn listing(&self) -> Input<'_> {
        Input {
            method: "tools/list",
            ..self.base()
        }
    }

    fn base(&self) -> Input<'_> {
        Input {
            claims: Some(&self.claims),
            method: "",
            tool: None,
            prompt: None,
            resource_uri: None,
            session_id: self.header("mcp-session-id"),
            request: RequestFacts {
                path: self.header(":path").unwrap_or_default(),
                host: self.header(":authority").unwrap_or_default(),
                method: self.header(":method").unwrap_or_default(),
                headers: &self.headers,
                removed: &self.removed,
            },
            source_address: &self.source,
            mtls: self.mtls,
            now: self.now,
            ..Input::default()
        }
    }
}

/// The current time, in seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An RFC 3339 time (`2026-03-02T10:30:00Z`), or seconds since the epoch.
pub fn parse_time(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("{n} is not a number of seconds")),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp())
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}")),
        other => Err(format!("{other} is not a time")),
    }
}

/// The bytes of a message given in a test or on the command line. A string is used as is;
/// a mapping is serialized, with `"jsonrpc": "2.0"` added when missing and, for a request
/// (a method that is not a notification, and no `result` or `error`), `"id": 1`.
pub fn message_bytes(value: &Value) -> Result<Vec<u8>, String> {
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Object(obj) => {
            let mut obj = obj.clone();
            if !obj.contains_key("jsonrpc") {
                obj.insert("jsonrpc".into(), Value::from("2.0"));
                let notification = obj
                    .get("method")
                    .and_then(Value::as_str)
                    .is_some_and(|m| m.starts_with("notifications/"));
                let response = obj.contains_key("result") || obj.contains_key("error");
                if !obj.contains_key("id") && !notification && !response {
                    obj.insert("id".into(), Value::from(1));
                }
            }
            serde_json::to_vec(&Value::Object(obj)).map_err(|e| e.to_string())
        }
        other => Err(format!(
            "a message is a mapping or a JSON string, not {other}"
        )),
    }
}

/// Parses a message exactly as the filter does.
pub fn parse_message(bytes: &[u8]) -> Result<Message, String> {
    mcp::parse_message(bytes, mcp::DEFAULT_MAX_DEPTH).map_err(|e| {
        format!(
            "the filter refuses this message ({e}, JSON-RPC {})",
            e.code()
        )
    })
}

/// A one-line description of a message: `tools/call "get_customer"`.
pub fn describe(message: &Message) -> String {
    match &message.target {
        Target::Tool { name, .. } => format!("{} {name:?}", message.method),
        Target::Prompt { name } => format!("{} {name:?}", message.method),
        Target::Resource { uri } => format!("{} {uri:?}", message.method),
        Target::None if message.method.is_empty() => "a response".to_string(),
        Target::None => message.method.clone(),
    }
}
