//! Audit records: one JSON object per JSON-RPC message (or refused HTTP request), written to
//! Envoy filter state `wasm.mcp.audit` and from there to the access log.
//!
//! A record is always a single line of valid JSON (serde_json escapes control characters) and
//! never larger than [`MAX_RECORD_BYTES`]: oversized arguments are replaced by a marker first,
//! then long strings are cut.

use serde::Serialize;
use serde_json::{Map, Value};

/// Version of the record layout; bumped on any incompatible change.
pub const SCHEMA: &str = "mcp-guard.audit.v1";
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
const MAX_STRING: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub schema: &'static str,
    /// RFC 3339 time, millisecond precision, UTC.
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// HTTP method of the request.
    pub http_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jsonrpc_id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    pub decision: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// HTTP status of the filter's own answer, when it answered locally.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u32>,
    /// For list results: how many entries this caller did not get to see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
}

impl Record {
    pub fn new(ts_millis: u64, http_method: &str) -> Record {
        Record {
            schema: SCHEMA,
            ts: rfc3339_millis(ts_millis),
            request_id: None,
            source: None,
            route: None,
            upstream: None,
            server: None,
            session_id: None,
            protocol_version: None,
            iss: None,
            sub: None,
            user: None,
            groups: None,
            client_id: None,
            http_method: http_method.to_string(),
            method: None,
            jsonrpc_id: None,
            tool: None,
            prompt: None,
            resource: None,
            arguments: None,
            decision: Verdict::Deny,
            reason: None,
            rule: None,
            policy: None,
            policy_version: None,
            status: None,
            error_code: None,
            upstream_status: None,
            hidden: None,
        }
    }

    /// Fills the "who" fields from verified claims.
    pub fn set_identity(&mut self, claims: &Map<String, Value>) {
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
        self.iss = text("iss");
        self.sub = text("sub");
        self.user = text("email")
            .or_else(|| text("preferred_username"))
            .or_else(|| text("upn"));
        self.client_id = text("azp").or_else(|| text("client_id"));
        self.groups = match claims.get("groups") {
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
            ),
            Some(Value::String(g)) => Some(vec![g.clone()]),
            _ => None,
        };
    }

    /// The record as one line of JSON, at most [`MAX_RECORD_BYTES`] long.
    pub fn to_line(&self) -> Vec<u8> {
        let line = serde_json::to_vec(self).unwrap_or_default();
        if line.len() <= MAX_RECORD_BYTES {
            return line;
        }
        let mut smaller = self.clone();
        if smaller.arguments.is_some() {
            smaller.arguments = Some(Value::String("[truncated]".into()));
        }
        for field in [
            &mut smaller.tool,
            &mut smaller.prompt,
            &mut smaller.resource,
            &mut smaller.reason,
            &mut smaller.user,
            &mut smaller.sub,
            &mut smaller.iss,
            &mut smaller.session_id,
            &mut smaller.client_id,
            &mut smaller.method,
        ]
        .into_iter()
        .flatten()
        {
            truncate(field);
        }
        if let Some(groups) = &mut smaller.groups {
            groups.truncate(16);
            groups.iter_mut().for_each(truncate);
        }
        if let Some(Value::String(id)) = &mut smaller.jsonrpc_id {
            truncate(id);
        }
        let line = serde_json::to_vec(&smaller).unwrap_or_default();
        if line.len() <= MAX_RECORD_BYTES {
            return line;
        }
        // Still too large (cannot happen with the caps above); never emit an unbounded line.
        serde_json::to_vec(&serde_json::json!({
            "schema": SCHEMA, "ts": smaller.ts, "decision": smaller.decision,
            "reason": "record too large"
        }))
        .unwrap_or_default()
    }
}

/// How much of a tool call's arguments an audit record keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ArgumentsMode {
    /// Nothing (the default: arguments may hold personal data).
    #[default]
    None,
    /// The argument names only.
    Keys,
    /// Everything, with the values of sensitive-looking keys masked.
    Redacted,
    /// Everything, as sent.
    Full,
}

impl ArgumentsMode {
    pub fn parse(s: &str) -> Option<ArgumentsMode> {
        Some(match s {
            "none" => ArgumentsMode::None,
            "keys" => ArgumentsMode::Keys,
            "redacted" => ArgumentsMode::Redacted,
            "full" => ArgumentsMode::Full,
            _ => return None,
        })
    }
}

/// Key names whose values are masked in `redacted` mode (matched as substrings, any case).
const SENSITIVE: &[&str] = &[
    "password", "passwd", "secret", "token", "key", "authorization", "cookie", "credential",
    "session", "private", "ssn", "card",
];

/// The arguments as the audit record shows them under `mode`.
pub fn arguments(mode: ArgumentsMode, args: &Map<String, Value>) -> Option<Value> {
    match mode {
        ArgumentsMode::None => None,
        ArgumentsMode::Keys => Some(Value::Array(
            args.keys().map(|k| Value::String(k.clone())).collect(),
        )),
        ArgumentsMode::Redacted => Some(mask(&Value::Object(args.clone()))),
        ArgumentsMode::Full => Some(Value::Object(args.clone())),
    }
}

fn mask(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    if SENSITIVE.iter().any(|s| lower.contains(s)) {
                        (k.clone(), Value::String("[REDACTED]".into()))
                    } else {
                        (k.clone(), mask(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask).collect()),
        other => other.clone(),
    }
}

fn truncate(s: &mut String) {
    if s.len() > MAX_STRING {
        let mut end = MAX_STRING;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("…[truncated]");
    }
}

/// Formats milliseconds since the epoch as `2026-11-23T18:55:00.123Z`.
pub fn rfc3339_millis(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let millis = (ms % 1000) as u32;
    match chrono::DateTime::from_timestamp(secs, millis * 1_000_000) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => String::from("1970-01-01T00:00:00.000Z"),
    }
}
