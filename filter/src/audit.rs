//! Audit records: one JSON object per JSON-RPC message (or refused HTTP request), written to
//! Envoy filter state `wasm.mcp.audit` and from there to the access log. docs/audit.md documents
//! every field.
//!
//! A record is always a single line of valid JSON and never larger than [`MAX_RECORD_BYTES`]:
//! serde_json escapes control characters, and [`LineFormatter`] also escapes the characters that
//! some readers take for line breaks (U+0085, U+2028, U+2029) and DEL. An oversized record is
//! shrunk in steps: long strings inside the arguments are cut, then the arguments give way to a
//! marker, then every string field is cut, and as a last resort a minimal record remains.

use std::io;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::ser::Formatter;
use serde_json::{Map, Value};

/// Version of the record layout; bumped on any incompatible change.
pub const SCHEMA: &str = "mcp-guard.audit.v2";
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
/// Longest string kept when a record is too large (bytes, before the marker).
const MAX_STRING: usize = 256;
/// Longest string in the last-resort minimal record.
const MIN_STRING: usize = 64;
/// What an oversized value is replaced with; cut strings end in `…[truncated from N bytes]`.
pub const TRUNCATED: &str = "[truncated]";
/// Entries kept per array or object when oversized arguments are shrunk.
const MAX_ENTRIES: usize = 32;
/// Nesting kept when oversized arguments are shrunk.
const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Error => "error",
        }
    }
}

/// Record fields the filter also writes each under its own filter-state key `wasm.mcp.<name>`,
/// for access-log formats with one column per field (`%FILTER_STATE(wasm.mcp.decision:PLAIN)%`;
/// Envoy cannot pick a field out of the JSON record). Values are cut like oversized strings.
// Evaluated while compiling: an index out of bounds fails the build, never a request.
#[allow(clippy::indexing_slicing)]
pub const AUDIT_COLUMNS: [&str; COLUMNS.len()] = {
    let mut names = [""; COLUMNS.len()];
    let mut i = 0;
    while i < COLUMNS.len() {
        names[i] = COLUMNS[i].0;
        i += 1;
    }
    names
};

/// Each of [`AUDIT_COLUMNS`] with where its value is in the record: the one list of them.
type Column = (&'static str, fn(&Record) -> Option<&str>);
const COLUMNS: [Column; 8] = [
    ("decision", |r| Some(r.decision.as_str())),
    ("reason", |r| r.reason.as_deref()),
    ("rule", |r| r.rule.as_deref()),
    ("sub", |r| r.sub.as_deref()),
    ("user", |r| r.user.as_deref()),
    ("client_id", |r| r.client_id.as_deref()),
    ("method", |r| r.method.as_deref()),
    ("tool", |r| r.tool.as_deref()),
];
/// Most `pin_drift` entries one record lists (a listing may drift more; the counter has all).
pub const MAX_PIN_DRIFT: usize = 32;

/// A definition that did not match its pin: `pinned` is `null` when the name has no pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinDrift {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub pinned: Option<String>,
    pub seen: String,
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
    /// When the record had to cut `arguments`: `sha256:` and the SHA-256 of the whole
    /// arguments in RFC 8785 canonical JSON, so that what the server logged can be matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments_sha256: Option<String>,
    /// The task a tasks method names (`params.taskId`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The W3C trace context of the request: `_meta.traceparent`, else the `traceparent` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The `traceparent` header's trace id, when it names another trace than `_meta`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_trace_id: Option<String>,
    pub decision: Verdict,
    /// Why, as a stable code (`crate::refusal::Refusal::code`, an authentication reason, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reason in prose, for people; its wording may change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
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
    /// Tools (or prompts) whose definition did not match its pin, or had none: in a listing,
    /// or the one a call named. At most [`MAX_PIN_DRIFT`] entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_drift: Option<Vec<PinDrift>>,
    /// The key's budget left (whole tokens; for a global limit, what the rate limit service
    /// said) in the limit that refused the message, or the smallest of those it spent from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_remaining: Option<u64>,
    /// Microseconds spent inside the filter's callbacks for this HTTP request so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_us: Option<u64>,
    /// Milliseconds from when the filter got the request's headers to the record's last update:
    /// the end of the response as the filter saw it, or the filter's own answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
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
            arguments_sha256: None,
            task_id: None,
            trace_id: None,
            span_id: None,
            header_trace_id: None,
            decision: Verdict::Deny,
            reason: None,
            detail: None,
            rule: None,
            policy: None,
            policy_version: None,
            status: None,
            error_code: None,
            upstream_status: None,
            hidden: None,
            pin_drift: None,
            limit_remaining: None,
            filter_us: None,
            total_ms: None,
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
        let line = self.encode();
        if line.len() <= MAX_RECORD_BYTES {
            return line;
        }
        let mut smaller = self.clone();
        // 1. Every string field first (client-controlled ones among them: a request id, a
        // session id, a string JSON-RPC id of kilobytes must not push the arguments out).
        smaller.cut_strings(MAX_STRING, 16);
        let line = smaller.encode();
        if line.len() <= MAX_RECORD_BYTES {
            return line;
        }
        // 2. Keep the arguments' shape, cut what is long inside them; say what they were.
        if let Some(arguments) = &mut smaller.arguments {
            smaller.arguments_sha256 = serde_jcs::to_vec(&*arguments).ok().map(|canonical| {
                use sha2::Digest as _;
                let hash = sha2::Sha256::digest(&canonical);
                format!("sha256:{}", base16ct::lower::encode_string(&hash))
            });
            shrink(arguments, 0);
            let line = smaller.encode();
            if line.len() <= MAX_RECORD_BYTES {
                return line;
            }
            smaller.arguments = Some(Value::String(TRUNCATED.into()));
        }
        // 3. Then every string field harder.
        smaller.cut_strings(MIN_STRING, 4);
        let line = smaller.encode();
        if line.len() <= MAX_RECORD_BYTES {
            return line;
        }
        // 4. Only escapes can make it this far (a control character takes six bytes): keep who,
        // what and the outcome, each bounded, so the line always fits.
        let cut = |s: &Option<String>| {
            s.clone().map(|mut s| {
                truncate(&mut s, MIN_STRING);
                s
            })
        };
        encode(&serde_json::json!({
            "schema": SCHEMA, "ts": smaller.ts, "request_id": cut(&smaller.request_id),
            "iss": cut(&smaller.iss), "sub": cut(&smaller.sub), "method": cut(&smaller.method),
            "tool": cut(&smaller.tool), "arguments_sha256": smaller.arguments_sha256,
            "decision": smaller.decision, "status": smaller.status,
            "reason": "record_too_large", "detail": "record too large",
            "filter_us": smaller.filter_us, "total_ms": smaller.total_ms,
        }))
    }

    /// The [`AUDIT_COLUMNS`] values, in that order; `None` where the record has no value.
    pub fn columns(&self) -> [(&'static str, Option<String>); AUDIT_COLUMNS.len()] {
        COLUMNS.map(|(name, value)| {
            let value = value(self).map(|v| {
                let mut v = escape_line_breaks(v);
                truncate(&mut v, MAX_STRING);
                v
            });
            (name, value)
        })
    }

    fn cut_strings(&mut self, max: usize, max_groups: usize) {
        for field in [
            &mut self.request_id,
            &mut self.source,
            &mut self.route,
            &mut self.upstream,
            &mut self.server,
            &mut self.session_id,
            &mut self.protocol_version,
            &mut self.iss,
            &mut self.sub,
            &mut self.user,
            &mut self.client_id,
            &mut self.method,
            &mut self.tool,
            &mut self.prompt,
            &mut self.resource,
            &mut self.task_id,
            &mut self.reason,
            &mut self.detail,
            &mut self.rule,
            &mut self.policy,
            &mut self.policy_version,
        ]
        .into_iter()
        .flatten()
        {
            truncate(field, max);
        }
        truncate(&mut self.http_method, max);
        if let Some(drift) = &mut self.pin_drift {
            drift.truncate(max_groups);
            for d in drift.iter_mut() {
                for name in [&mut d.tool, &mut d.prompt].into_iter().flatten() {
                    truncate(name, max);
                }
            }
        }
        if let Some(groups) = &mut self.groups {
            groups.truncate(max_groups);
            groups.iter_mut().for_each(|g| truncate(g, max));
        }
        match &mut self.jsonrpc_id {
            Some(Value::String(id)) => truncate(id, max),
            Some(Value::Number(_)) | None => {}
            Some(other) => *other = Value::String(TRUNCATED.into()),
        }
    }
}

impl Record {
    /// The record as [`encode`] writes it, byte for byte, written field by field: serde_json's
    /// derived serializer passes every key and every string through its escape table a byte at
    /// a time, a sixth of an allowed call's instructions in the filter. Here keys are constants
    /// and a string with nothing to escape (nearly every one) is copied whole; anything else
    /// (a string with something to escape, the id, the arguments, pin drift) still goes through
    /// serde_json with [`LineFormatter`]. Held to [`encode`]'s output by a test over records
    /// with every field set, cut and escaped.
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer {
            out: Vec::with_capacity(1024),
            first: true,
        };
        w.text("schema", self.schema);
        w.text("ts", &self.ts);
        w.some_text("request_id", &self.request_id);
        w.some_text("source", &self.source);
        w.some_text("route", &self.route);
        w.some_text("upstream", &self.upstream);
        w.some_text("server", &self.server);
        w.some_text("session_id", &self.session_id);
        w.some_text("protocol_version", &self.protocol_version);
        w.some_text("iss", &self.iss);
        w.some_text("sub", &self.sub);
        w.some_text("user", &self.user);
        if let Some(groups) = &self.groups {
            w.key("groups");
            w.out.push(b'[');
            for (i, group) in groups.iter().enumerate() {
                if i > 0 {
                    w.out.push(b',');
                }
                w.string(group);
            }
            w.out.push(b']');
        }
        w.some_text("client_id", &self.client_id);
        w.text("http_method", &self.http_method);
        w.some_text("method", &self.method);
        w.some_serialized("jsonrpc_id", &self.jsonrpc_id);
        w.some_text("tool", &self.tool);
        w.some_text("prompt", &self.prompt);
        w.some_text("resource", &self.resource);
        w.some_serialized("arguments", &self.arguments);
        w.some_text("arguments_sha256", &self.arguments_sha256);
        w.some_text("task_id", &self.task_id);
        w.some_text("trace_id", &self.trace_id);
        w.some_text("span_id", &self.span_id);
        w.some_text("header_trace_id", &self.header_trace_id);
        w.text("decision", self.decision.as_str());
        w.some_text("reason", &self.reason);
        w.some_text("detail", &self.detail);
        w.some_text("rule", &self.rule);
        w.some_text("policy", &self.policy);
        w.some_text("policy_version", &self.policy_version);
        w.some_number("status", self.status);
        w.some_number("error_code", self.error_code);
        w.some_number("upstream_status", self.upstream_status);
        w.some_number("hidden", self.hidden);
        w.some_serialized("pin_drift", &self.pin_drift);
        w.some_number("limit_remaining", self.limit_remaining);
        w.some_number("filter_us", self.filter_us);
        w.some_number("total_ms", self.total_ms);
        w.out.push(b'}');
        if w.failed() {
            return FAILED.to_vec();
        }
        w.out
    }
}

/// What a record that cannot be written is written as.
const FAILED: &[u8] =
    br#"{"schema":"mcp-guard.audit.v2","decision":"error","reason":"record_not_serializable"}"#;

/// One JSON object written member by member ([`Record::encode`]).
struct Writer {
    out: Vec<u8>,
    first: bool,
}

impl Writer {
    /// A member's name (a constant with nothing to escape) and its colon.
    fn key(&mut self, key: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn text(&mut self, key: &str, value: &str) {
        self.key(key);
        self.string(value);
    }

    fn some_text(&mut self, key: &str, value: &Option<String>) {
        if let Some(value) = value {
            self.text(key, value);
        }
    }

    fn some_number<N: itoa::Integer>(&mut self, key: &str, value: Option<N>) {
        if let Some(n) = value {
            self.key(key);
            self.out
                .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        }
    }

    fn some_serialized<T: Serialize>(&mut self, key: &str, value: &Option<T>) {
        if let Some(value) = value {
            self.key(key);
            let mut ser = serde_json::Serializer::with_formatter(&mut self.out, LineFormatter);
            if value.serialize(&mut ser).is_err() {
                // Not valid JSON any more: [`Writer::failed`] sees it.
                self.out.clear();
            }
        }
    }

    /// A string: copied whole between quotes when nothing in it needs an escape (JSON's: a
    /// quote, a backslash, a control character; [`LineFormatter`]'s: the lead bytes of U+007F,
    /// U+0085, U+2028, U+2029 and whatever shares them), else written by serde_json.
    fn string(&mut self, s: &str) {
        let bytes = s.as_bytes();
        let plain = crate::scan::plain_run(bytes, 0) == bytes.len()
            && memchr::memchr3(0x7f, 0xc2, 0xe2, bytes).is_none();
        if plain {
            self.out.push(b'"');
            self.out.extend_from_slice(s.as_bytes());
            self.out.push(b'"');
            return;
        }
        let mut ser = serde_json::Serializer::with_formatter(&mut self.out, LineFormatter);
        if s.serialize(&mut ser).is_err() {
            self.out.clear();
        }
    }

    /// Whether something could not be written (the output was emptied).
    fn failed(&self) -> bool {
        self.out.first() != Some(&b'{')
    }
}

/// Serializes compactly on one line, with [`LineFormatter`]'s escapes. Most records hold none
/// of the characters it escapes: serde_json's own compact output is taken after one scan for
/// their lead bytes (JSON's own syntax is ASCII below 0x7F, so they can only come from strings),
/// and only a record that has one is written again through [`LineFormatter`]. That formatter
/// sees every string fragment; a third of a record's encoding went to it.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    if serde_json::to_writer(&mut out, value).is_err() {
        return FAILED.to_vec();
    }
    if memchr::memchr3(0x7f, 0xc2, 0xe2, &out).is_none() {
        return out;
    }
    out.clear();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, LineFormatter);
    match value.serialize(&mut ser) {
        Ok(()) => out,
        Err(_) => FAILED.to_vec(),
    }
}

/// serde_json's compact output, but with U+007F, U+0085, U+2028 and U+2029 escaped as well:
/// they are valid JSON unescaped, yet line-oriented readers (Python's `splitlines`, JavaScript
/// before ES2019, some log shippers) split records at them.
pub struct LineFormatter;

impl Formatter for LineFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // U+007F is 0x7F; U+0085 starts with 0xC2; U+2028 and U+2029 start with 0xE2.
        if memchr::memchr3(0x7f, 0xc2, 0xe2, fragment.as_bytes()).is_none() {
            return writer.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            if matches!(c, '\u{7f}' | '\u{85}' | '\u{2028}' | '\u{2029}') {
                writer.write_all(fragment.get(start..at).unwrap_or_default().as_bytes())?;
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = at + c.len_utf8();
            }
        }
        writer.write_all(fragment.get(start..).unwrap_or_default().as_bytes())
    }
}

/// Cuts what is long inside oversized arguments, keeping their shape.
fn shrink(value: &mut Value, depth: usize) {
    match value {
        Value::String(s) => truncate(s, MAX_STRING),
        _ if depth >= MAX_DEPTH => *value = Value::String(TRUNCATED.into()),
        Value::Array(items) => {
            let more = items.len().saturating_sub(MAX_ENTRIES);
            items.truncate(MAX_ENTRIES);
            items.iter_mut().for_each(|v| shrink(v, depth + 1));
            if more > 0 {
                items.push(Value::String(format!("{TRUNCATED} {more} more")));
            }
        }
        Value::Object(map) => {
            let more = map.len().saturating_sub(MAX_ENTRIES);
            if more > 0 {
                let keep: Vec<String> = map.keys().take(MAX_ENTRIES).cloned().collect();
                map.retain(|k, _| keep.contains(k));
            }
            map.values_mut().for_each(|v| shrink(v, depth + 1));
            if more > 0 {
                map.insert(TRUNCATED.into(), Value::from(more));
            }
        }
        _ => {}
    }
}

/// How much of a tool call's arguments an audit record keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
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

/// Key names whose values are masked in `redacted` mode (matched as substrings, any case).
const SENSITIVE: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "authorization",
    "cookie",
    "credential",
    "session",
    "private",
    "ssn",
    "card",
];

/// The arguments as the audit record shows them under `mode`. `token`: the caller's own token,
/// which is never written to the record, even where an agent passed it on as an argument.
pub fn arguments(
    mode: ArgumentsMode,
    args: &Map<String, Value>,
    token: Option<&str>,
) -> Option<Value> {
    let shown = match mode {
        ArgumentsMode::None => return None,
        ArgumentsMode::Keys => {
            Value::Array(args.keys().map(|k| Value::String(k.clone())).collect())
        }
        ArgumentsMode::Redacted => mask(&Value::Object(args.clone())),
        ArgumentsMode::Full => Value::Object(args.clone()),
    };
    Some(match token.filter(|t| t.len() >= MIN_TOKEN_SCRUBBED) {
        Some(token) => scrub(shown, token),
        None => shown,
    })
}

/// Shorter "tokens" are not searched for (a real one is far longer; a few characters would
/// match ordinary text).
const MIN_TOKEN_SCRUBBED: usize = 16;

/// `value` with every occurrence of `secret` (in strings and member names) replaced.
fn scrub(value: Value, secret: &str) -> Value {
    let clean = |s: String| {
        if s.contains(secret) {
            s.replace(secret, "[REDACTED]")
        } else {
            s
        }
    };
    match value {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| scrub(v, secret)).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (clean(k), scrub(v, secret)))
                .collect(),
        ),
        other => other,
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

/// A column's value with what a text log line could be split or forged by (control characters,
/// DEL, U+0085, U+2028, U+2029) written as `\uXXXX`, as the JSON line writes them: a column
/// is read raw by a text access-log format (`%FILTER_STATE(wasm.mcp.method:PLAIN)%`), and a
/// method, a claim or an id is the client's or the IdP's text.
fn escape_line_breaks(value: &str) -> String {
    let breaks = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !value.chars().any(breaks) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if breaks(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Cuts `s` to at most `max` bytes (on a character boundary) and marks the cut.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let original = s.len();
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(&format!("…[truncated from {original} bytes]"));
    }
}

/// Formats milliseconds since the epoch as `2026-11-23T18:55:00.123Z`.
pub fn rfc3339_millis(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let millis = (ms % 1000) as u32;
    match chrono::DateTime::from_timestamp(secs, millis * 1_000_000) {
        // Not `format("%Y-…")`: that parses its format string on every record.
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => String::from("1970-01-01T00:00:00.000Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Record {
        let mut r = Record::new(1_795_460_100_123, "POST");
        r.sub = Some("alice".into());
        r.iss = Some("https://idp.example".into());
        r.method = Some("tools/call".into());
        r.tool = Some("get_customer".into());
        r.decision = Verdict::Allow;
        r
    }

    /// Records with every field set or not, holding every kind of string: written field by
    /// field, each is byte for byte what serde_json writes for it.
    #[test]
    fn a_record_written_field_by_field_is_what_serde_json_writes() {
        const TEXTS: [&str; 14] = [
            "",
            "plain",
            "with \"quotes\"",
            "back\\slash",
            "ctl\u{1}x\u{1f}",
            "del\u{7f}",
            "nel\u{85}",
            "ls\u{2028}ps\u{2029}",
            "é ü",
            "\u{a0}nbsp",
            "€uro",
            "emoji 😀",
            "tab\tnl\n",
            "/slash/",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut pick = |n: u64| (next() % n) as usize;
            let mut r = Record::new(1_795_460_100_123, TEXTS[pick(14)]);
            for field in [
                &mut r.request_id,
                &mut r.source,
                &mut r.route,
                &mut r.upstream,
                &mut r.server,
                &mut r.session_id,
                &mut r.protocol_version,
                &mut r.iss,
                &mut r.sub,
                &mut r.user,
                &mut r.client_id,
                &mut r.method,
                &mut r.tool,
                &mut r.prompt,
                &mut r.resource,
                &mut r.task_id,
                &mut r.trace_id,
                &mut r.span_id,
                &mut r.header_trace_id,
                &mut r.reason,
                &mut r.detail,
                &mut r.rule,
                &mut r.policy,
                &mut r.policy_version,
            ] {
                *field = (pick(3) > 0).then(|| TEXTS[pick(14)].to_string());
            }
            r.groups =
                (pick(2) == 0).then(|| (0..pick(4)).map(|_| TEXTS[pick(14)].into()).collect());
            let values = [
                json!(7),
                json!("id\u{2028}"),
                json!({"a": [1, "\u{85}", null]}),
                json!(-1.5),
            ];
            r.jsonrpc_id = (pick(2) == 0).then(|| values[pick(4)].clone());
            r.arguments = (pick(2) == 0).then(|| values[pick(4)].clone());
            r.decision = [Verdict::Allow, Verdict::Deny, Verdict::Error][pick(3)];
            r.status = (pick(2) == 0).then(|| pick(600) as u32);
            r.error_code = (pick(2) == 0).then(|| -(pick(40000) as i64));
            r.upstream_status = (pick(2) == 0).then(|| pick(600) as u32);
            r.hidden = (pick(2) == 0).then(|| pick(1000));
            r.pin_drift = (pick(2) == 0).then(|| {
                vec![PinDrift {
                    tool: (pick(2) == 0).then(|| TEXTS[pick(14)].into()),
                    prompt: (pick(2) == 0).then(|| TEXTS[pick(14)].into()),
                    pinned: (pick(2) == 0).then(|| TEXTS[pick(14)].into()),
                    seen: TEXTS[pick(14)].into(),
                }]
            });
            r.limit_remaining = (pick(2) == 0).then(|| pick(u64::MAX) as u64);
            r.filter_us = (pick(2) == 0).then(|| pick(100_000) as u64);
            r.total_ms = (pick(2) == 0).then_some(u64::MAX);
            let ours = r.encode();
            let theirs = encode(&r);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }

    fn parse(line: &[u8]) -> Value {
        assert!(line.len() <= MAX_RECORD_BYTES, "{} bytes", line.len());
        let text = std::str::from_utf8(line).expect("UTF-8");
        // One line for every reader: no raw control characters, nothing a reader splits at.
        assert!(
            !text
                .chars()
                .any(|c| c < ' ' || matches!(c, '\u{7f}' | '\u{85}' | '\u{2028}' | '\u{2029}')),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn small_records_are_plain_serde_json() {
        let mut r = record();
        r.filter_us = Some(42);
        r.total_ms = Some(7);
        let line = r.to_line();
        assert_eq!(line, serde_json::to_vec(&r).unwrap());
        let v = parse(&line);
        assert_eq!(v["schema"], "mcp-guard.audit.v2");
        assert_eq!(v["ts"], "2026-11-23T18:55:00.123Z");
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["filter_us"], 42);
        assert_eq!(v["total_ms"], 7);
        // Absent, never null.
        assert!(v.get("reason").is_none() && v.get("status").is_none());
    }

    #[test]
    fn control_and_line_breaking_characters_are_escaped() {
        let nasty = "a\nb\r\t\"q\"\\ \u{0}\u{1b}[31m\u{1f}\u{7f}\u{85}\u{2028}\u{2029} é 漢字 😀";
        let mut r = record();
        r.tool = Some(nasty.into());
        r.reason = Some(nasty.into());
        r.arguments = Some(json!({ "text": nasty, nasty: [nasty] }));
        let line = r.to_line();
        let text = String::from_utf8(line.clone()).unwrap();
        for escaped in [
            r"\n", r"\r", r"\t", r#"\""#, r"\\", r"\u0000", r"\u001b", r"\u001f", r"\u007f",
            r"\u0085", r"\u2028", r"\u2029",
        ] {
            assert!(text.contains(escaped), "{escaped} in {text}");
        }
        assert!(
            text.contains("é 漢字 😀"),
            "other unicode stays readable: {text}"
        );
        let v = parse(&line);
        assert_eq!(v["tool"], nasty);
        assert_eq!(v["arguments"]["text"], nasty);
        assert_eq!(v["arguments"][nasty][0], nasty);
    }

    #[test]
    fn an_oversized_argument_is_cut_and_marked_the_rest_kept() {
        let big = "x".repeat(200 * 1024);
        let mut r = record();
        r.arguments =
            Some(json!({ "customer_id": "c-100", "note": big, "nested": { "deep": [1, 2, 3] } }));
        let v = parse(&r.to_line());
        let args = &v["arguments"];
        assert_eq!(args["customer_id"], "c-100");
        assert_eq!(args["nested"], json!({ "deep": [1, 2, 3] }));
        let note = args["note"].as_str().unwrap();
        assert_eq!(
            note,
            format!("{}…[truncated from 204800 bytes]", "x".repeat(MAX_STRING))
        );
        assert_eq!(v["tool"], "get_customer");
        assert_eq!(v["sub"], "alice");
    }

    #[test]
    fn arguments_too_large_even_when_cut_become_a_marker() {
        let mut args = Map::new();
        for i in 0..1000 {
            args.insert(format!("key{i:04}"), Value::String("v".repeat(1000)));
        }
        let mut r = record();
        r.arguments = Some(Value::Object(args));
        let v = parse(&r.to_line());
        assert_eq!(v["arguments"], TRUNCATED);
        assert_eq!(v["tool"], "get_customer");
    }

    #[test]
    fn shrinking_bounds_lists_objects_and_depth() {
        let mut deep = json!("bottom");
        for _ in 0..20 {
            deep = json!([deep]);
        }
        let mut v = json!({ "list": (0..100).collect::<Vec<_>>(), "deep": deep });
        shrink(&mut v, 0);
        let list = v["list"].as_array().unwrap();
        assert_eq!(list.len(), MAX_ENTRIES + 1);
        assert_eq!(list[MAX_ENTRIES], "[truncated] 68 more");
        assert!(v.to_string().contains("\"[truncated]\""));
        assert!(!v.to_string().contains("bottom"));
    }

    #[test]
    fn huge_client_headers_cannot_push_who_and_what_out_of_the_record() {
        let mut r = record();
        r.protocol_version = Some("p".repeat(60_000));
        r.session_id = Some("s".repeat(60_000));
        r.request_id = Some("r".repeat(60_000));
        r.reason = Some("Mcp-Method header \"".to_string() + &"m".repeat(60_000));
        r.groups = Some((0..500).map(|i| format!("group-{i}")).collect());
        let v = parse(&r.to_line());
        assert_eq!(v["sub"], "alice");
        assert_eq!(v["tool"], "get_customer");
        assert_eq!(v["decision"], "allow");
        assert!(v["protocol_version"]
            .as_str()
            .unwrap()
            .ends_with("…[truncated from 60000 bytes]"));
        assert!(v["groups"].as_array().unwrap().len() <= 16);
    }

    #[test]
    fn cut_arguments_are_named_by_their_digest() {
        // Padding (many members, long values) pushes the member the server acts on out of the
        // record; the digest of the whole arguments still names what was sent.
        let mut r = record();
        let mut args = serde_json::Map::new();
        for i in 0..40 {
            args.insert(format!("a{i:02}"), json!("x"));
        }
        args.insert("a_pad".into(), json!("p".repeat(9_000)));
        args.insert("customer_id".into(), json!("c-TARGET-999"));
        let whole = Value::Object(args);
        r.arguments = Some(whole.clone());
        let v = parse(&r.to_line());
        assert!(!v.to_string().contains("c-TARGET-999"));
        let canonical = serde_jcs::to_vec(&whole).unwrap();
        use sha2::Digest as _;
        let expected = format!(
            "sha256:{}",
            base16ct::lower::encode_string(&sha2::Sha256::digest(&canonical))
        );
        assert_eq!(v["arguments_sha256"], expected.as_str());
        // Arguments that fit have no digest.
        let mut r = record();
        r.arguments = Some(json!({"customer_id": "c-1"}));
        assert!(parse(&r.to_line()).get("arguments_sha256").is_none());
    }

    #[test]
    fn a_long_client_string_does_not_push_the_arguments_out() {
        for long in ["request_id", "session_id", "jsonrpc_id"] {
            let mut r = record();
            r.arguments = Some(json!({ "customer_id": "c-TARGET-999" }));
            let text = "r".repeat(9_000);
            match long {
                "request_id" => r.request_id = Some(text),
                "session_id" => r.session_id = Some(text),
                _ => r.jsonrpc_id = Some(Value::String(text)),
            }
            let v = parse(&r.to_line());
            assert_eq!(
                v["arguments"],
                json!({ "customer_id": "c-TARGET-999" }),
                "{long}"
            );
            assert!(v[long]
                .as_str()
                .unwrap()
                .ends_with("[truncated from 9000 bytes]"));
        }
    }

    #[test]
    fn the_worst_case_still_yields_a_bounded_line_with_who_and_outcome() {
        // Every string all control characters: six bytes each once escaped.
        let evil = "\u{1}".repeat(20_000);
        let mut r = record();
        r.decision = Verdict::Deny;
        r.status = Some(401);
        for field in [
            &mut r.request_id,
            &mut r.source,
            &mut r.route,
            &mut r.upstream,
            &mut r.server,
            &mut r.session_id,
            &mut r.protocol_version,
            &mut r.iss,
            &mut r.user,
            &mut r.client_id,
            &mut r.prompt,
            &mut r.resource,
            &mut r.reason,
            &mut r.rule,
            &mut r.policy,
            &mut r.policy_version,
        ] {
            *field = Some(evil.clone());
        }
        r.sub = Some(format!("mallory{evil}"));
        r.groups = Some(vec![evil.clone(); 100]);
        r.jsonrpc_id = Some(Value::String(evil.clone()));
        r.arguments = Some(json!({ "a": evil }));
        r.filter_us = Some(5);
        let v = parse(&r.to_line());
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["status"], 401);
        assert_eq!(v["filter_us"], 5);
        assert_eq!(v["reason"], "record_too_large");
        assert_eq!(v["detail"], "record too large");
        assert!(v["sub"].as_str().unwrap().starts_with("mallory"));
    }

    #[test]
    fn identity_fields() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        let mut r = record();
        r.set_identity(&claims(json!({
            "iss": "https://idp", "sub": "u1", "preferred_username": "ada", "upn": "ada@corp",
            "client_id": "cli", "groups": "admins"
        })));
        assert_eq!(r.user.as_deref(), Some("ada"));
        assert_eq!(r.client_id.as_deref(), Some("cli"));
        assert_eq!(r.groups, Some(vec!["admins".to_string()]));
        r.set_identity(&claims(json!({ "sub": "u1", "email": "ada@example.com", "upn": "x", "azp": "agent", "client_id": "cli", "groups": ["a", 1, "b"] })));
        assert_eq!(r.user.as_deref(), Some("ada@example.com"));
        assert_eq!(r.client_id.as_deref(), Some("agent"));
        assert_eq!(r.groups, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(r.iss, None);
    }

    #[test]
    fn argument_modes() {
        let args =
            json!({ "customer_id": "c-1", "api_key": "k", "nested": { "Password": "p", "x": 1 } });
        let args = args.as_object().unwrap();
        assert_eq!(arguments(ArgumentsMode::None, args, None), None);
        assert_eq!(
            arguments(ArgumentsMode::Keys, args, None),
            Some(json!(["api_key", "customer_id", "nested"]))
        );
        assert_eq!(
            arguments(ArgumentsMode::Redacted, args, None),
            Some(
                json!({ "customer_id": "c-1", "api_key": "[REDACTED]", "nested": { "Password": "[REDACTED]", "x": 1 } })
            )
        );
        assert_eq!(
            arguments(ArgumentsMode::Full, args, None),
            Some(Value::Object(args.clone()))
        );
        let parse = |s: &str| serde_json::from_value::<ArgumentsMode>(json!(s)).ok();
        assert_eq!(parse("redacted"), Some(ArgumentsMode::Redacted));
        assert_eq!(parse("all"), None);
    }

    #[test]
    fn columns_follow_the_record_and_are_bounded() {
        let mut r = record();
        r.rule = Some("read-only".into());
        r.tool = Some("t".repeat(1000));
        let columns = r.columns();
        assert_eq!(columns.clone().map(|(name, _)| name), AUDIT_COLUMNS);
        let value = |name: &str| {
            columns
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(value("decision").as_deref(), Some("allow"));
        assert_eq!(value("rule").as_deref(), Some("read-only"));
        assert_eq!(value("sub").as_deref(), Some("alice"));
        assert_eq!(value("reason"), None);
        assert!(value("tool")
            .unwrap()
            .ends_with("…[truncated from 1000 bytes]"));
        // A text log format reads the columns raw: nothing in them can break its line.
        r.method = Some("nope\ndecision=allow sub=admin\r\u{85}\u{2028}\u{7f}".into());
        let method = r.columns().into_iter().find(|(n, _)| *n == "method");
        assert_eq!(
            method.and_then(|(_, v)| v).as_deref(),
            Some("nope\\u000adecision=allow sub=admin\\u000d\\u0085\\u2028\\u007f")
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_795_460_100_007),
            "2026-11-23T18:55:00.007Z"
        );
    }
}
