//! What the MCP 2026-07-28 revision (and its tasks extension) adds to a request and to a
//! result, in one place: the version a request declares, the shapes of the new methods'
//! params, the `Mcp-Name` and `Mcp-Param-*` headers checked against the body, the W3C trace
//! context, and the `cacheScope` of a list the filter made depend on the caller.
//!
//! Nothing here calls Envoy except through [`Host`] (shared data for the learned parameter
//! headers), so it is all tested natively.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::discovery::ListKind;
use crate::host::{Header, Host};
use crate::mcp::{Message, ParseError, Target};

/// The stateless revision: per-request `_meta`, `Mcp-Method`/`Mcp-Name`/`Mcp-Param-*` headers.
pub const MODERN: &str = "2026-07-28";
/// The 2026-07-28 method that opens a standing stream of the server's notifications.
pub const LISTEN: &str = "subscriptions/listen";

/// `_meta` key of the version a 2026-07-28 request declares.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// The tasks methods whose `params.taskId` names the task (2025-11-25 core, and the
/// 2026-07-28 tasks extension).
const TASK_METHODS: &[&str] = &["tasks/get", "tasks/update", "tasks/cancel", "tasks/result"];

/// Requests a 2026-07-28 client sends to a server (core and the tasks extension).
pub const MODERN_REQUESTS: &[&str] = &[
    "server/discover",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "completion/complete",
    "subscriptions/listen",
    "tasks/get",
    "tasks/update",
    "tasks/cancel",
];

/// Whether a message declaring 2026-07-28 may use `method`: a request must be one of the
/// revision's ([`MODERN_REQUESTS`]; `initialize`, `ping`, `logging/setLevel`,
/// `resources/subscribe`, `tasks/list`, `tasks/result`, … were removed). Notifications and
/// responses (which the revision does not send over HTTP) are judged as in earlier revisions.
pub fn is_modern_client_method(method: &str) -> bool {
    if method.is_empty() || method.starts_with("notifications/") {
        return crate::methods::is_client_method(method);
    }
    MODERN_REQUESTS.contains(&method)
}

/// The params' `_meta`, when it is an object.
pub fn meta(params: &Map<String, Value>) -> Option<&Map<String, Value>> {
    params.get("_meta").and_then(Value::as_object)
}

/// The protocol version the message's `_meta` declares.
pub fn meta_version(message: &Message) -> Option<&str> {
    meta(&message.params)
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str)
}

/// The version a request declares: `_meta`'s when present, else the `MCP-Protocol-Version`
/// header's. Two declarations that disagree are an error (the caller answers 400, -32020).
pub fn declared_version<'a>(
    header: Option<&'a str>,
    message: &'a Message,
) -> Result<Option<&'a str>, String> {
    let body = meta_version(message);
    if let Some(m) = meta(&message.params).and_then(|m| m.get(META_VERSION)) {
        if !m.is_string() {
            return Err(format!("_meta[{META_VERSION:?}] must be a string"));
        }
    }
    match (header, body) {
        (Some(h), Some(b)) if h != b => Err(format!(
            "MCP-Protocol-Version header {h:?} does not match the body's _meta protocol version {b:?}"
        )),
        (None, Some(b)) if b == MODERN => Err(format!(
            "a request declaring protocol version {MODERN} in _meta must send the MCP-Protocol-Version header"
        )),
        (_, Some(b)) => Ok(Some(b)),
        (h, None) => Ok(h),
    }
}

/// The task a tasks method names (`params.taskId`).
pub fn task_id(message: &Message) -> Option<&str> {
    if !TASK_METHODS.contains(&message.method.as_str()) {
        return None;
    }
    message.params.get("taskId").and_then(Value::as_str)
}

/// The notification filter of a `subscriptions/listen` request.
pub fn subscription(message: &Message) -> Option<&Map<String, Value>> {
    if message.method != LISTEN {
        return None;
    }
    message
        .params
        .get("notifications")
        .and_then(Value::as_object)
}

/// The `inputResponses` of a multi round-trip retry (or of a `tasks/update`).
pub fn input_responses(message: &Message) -> Option<&Map<String, Value>> {
    message
        .params
        .get("inputResponses")
        .and_then(Value::as_object)
}

/// Whether the request retries an earlier one (carries `inputResponses` or `requestState`).
pub fn is_retry(message: &Message) -> bool {
    message.params.contains_key("inputResponses") || message.params.contains_key("requestState")
}

/// The filter fields of `subscriptions/listen` a policy sees in `mcp.subscription.notifications`.
pub const SUBSCRIPTION_FIELDS: &[&str] = &[
    "toolsListChanged",
    "promptsListChanged",
    "resourcesListChanged",
    "resourceSubscriptions",
    "taskIds",
];

/// The requested notification types: each boolean field that is `true`, each list field that
/// is not empty.
pub fn requested(filter: &Map<String, Value>) -> Vec<&'static str> {
    SUBSCRIPTION_FIELDS
        .iter()
        .copied()
        .filter(|f| match filter.get(*f) {
            Some(Value::Bool(b)) => *b,
            Some(Value::Array(items)) => !items.is_empty(),
            _ => false,
        })
        .collect()
}

/// The strings of a list member of the subscription filter.
pub fn strings<'a>(filter: &'a Map<String, Value>, field: &str) -> Vec<&'a str> {
    match filter.get(field) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Checks the params of the methods this revision and the tasks extension add, so that the
/// policy decides on exactly what the server will read. Other methods are left as they are.
pub fn check_params(message: &Message) -> Result<(), ParseError> {
    let method = message.method.as_str();
    let params = &message.params;
    let bad = |what: &str| Err(ParseError::Params(format!("{method} needs {what}")));
    if TASK_METHODS.contains(&method) {
        match params.get("taskId") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => return bad("params.taskId as a non-empty string"),
        }
    }
    if method == "tasks/update" && !matches!(params.get("inputResponses"), Some(Value::Object(_))) {
        return bad("params.inputResponses as an object");
    }
    if method == LISTEN {
        let Some(Value::Object(filter)) = params.get("notifications") else {
            return bad("params.notifications as an object");
        };
        for (field, value) in filter {
            let ok = match field.as_str() {
                "toolsListChanged" | "promptsListChanged" | "resourcesListChanged" => {
                    value.is_boolean()
                }
                "resourceSubscriptions" | "taskIds" => value.as_array().is_some_and(|items| {
                    items
                        .iter()
                        .all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
                }),
                // A filter field this filter does not know could subscribe to anything: the
                // policy could not have decided on it.
                _ => false,
            };
            if !ok {
                return Err(ParseError::Params(format!(
                    "subscriptions/listen: params.notifications.{field} is not a known filter field of the expected type"
                )));
            }
            if field == "resourceSubscriptions" {
                for uri in value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    crate::mcp::check_resource_uri(uri)?;
                }
            }
        }
    }
    if message.params.contains_key("inputResponses")
        && !matches!(params.get("inputResponses"), Some(Value::Object(_)))
    {
        return bad("params.inputResponses as an object");
    }
    if message.params.contains_key("requestState")
        && !matches!(params.get("requestState"), Some(Value::String(_)))
    {
        return bad("params.requestState as a string");
    }
    Ok(())
}

/// What the `Mcp-Name` header mirrors: `params.name` (tools, prompts), `params.uri`
/// (resources), `params.taskId` (tasks methods).
pub fn mirrored_name(message: &Message) -> Option<&str> {
    if message.method == "completion/complete" {
        // Its target (the prompt or resource it completes) is not what Mcp-Name mirrors.
        return None;
    }
    match &message.target {
        Target::Tool { name, .. } | Target::Prompt { name } => Some(name.as_str()),
        Target::Resource { uri } => Some(uri.as_str()),
        Target::None => task_id(message),
    }
}

/// Decodes a header value that may use the `=?base64?…?=` sentinel of 2026-07-28. `None`
/// when it has characters a header value may not carry, or a sentinel that does not decode
/// to UTF-8.
pub fn decode_header_value(value: &str) -> Option<String> {
    if !value
        .bytes()
        .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
    {
        return None;
    }
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
        None => Some(value.to_string()),
    }
}

// ---- Mcp-Param-* headers ---------------------------------------------------------------------

/// One tool parameter mirrored into a header: the header's name after `Mcp-Param-`
/// (lower-cased) and the property path of the argument.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ParamHeader {
    pub name: String,
    pub path: Vec<String>,
}

const MAX_PARAM_HEADERS: usize = 64;
const MAX_SCHEMA_DEPTH: usize = 16;
const PARAM_PREFIX: &str = "mcp-param-";

/// The `x-mcp-header` annotations of a tool's `inputSchema`, statically reachable through
/// `properties` only (as the revision requires).
pub fn param_headers(schema: &Value) -> Vec<ParamHeader> {
    fn walk(schema: &Value, path: &mut Vec<String>, out: &mut Vec<ParamHeader>) {
        if path.len() >= MAX_SCHEMA_DEPTH || out.len() >= MAX_PARAM_HEADERS {
            return;
        }
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (key, property) in properties {
            path.push(key.clone());
            if let Some(name) = property.get("x-mcp-header").and_then(Value::as_str) {
                if out.len() < MAX_PARAM_HEADERS {
                    out.push(ParamHeader {
                        name: name.to_ascii_lowercase(),
                        path: path.clone(),
                    });
                }
            }
            walk(property, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out);
    out
}

/// The tools of a `tools/list` result message with their parameter headers.
pub fn listed_param_headers(message: &[u8]) -> Vec<(String, Vec<ParamHeader>)> {
    #[derive(Deserialize)]
    struct Msg {
        result: Option<ListResult>,
    }
    #[derive(Deserialize)]
    struct ListResult {
        #[serde(default)]
        tools: Vec<Tool>,
    }
    #[derive(Deserialize)]
    struct Tool {
        name: Option<String>,
        #[serde(rename = "inputSchema")]
        input_schema: Option<Value>,
    }
    let Ok(Msg { result: Some(list) }) = serde_json::from_slice::<Msg>(message) else {
        return Vec::new();
    };
    list.tools
        .into_iter()
        .filter_map(|t| {
            let headers = t
                .input_schema
                .as_ref()
                .map(param_headers)
                .unwrap_or_default();
            Some((t.name?, headers))
        })
        .collect()
}

fn shared_key(server: &str, slot: u16) -> String {
    format!("mcp-guard:params:{}:{slot}", quoted(server))
}

/// A server's name in a shared-data key: JSON quoting keeps any name unambiguous.
fn quoted(server: &str) -> String {
    serde_json::to_string(server).unwrap_or_default()
}

/// The id of the filter's own `tools/list` (see [`declarations_request`]).
pub const DECLARATIONS_ID: &str = "mcp-guard-declarations";

/// How often one Envoy asks a server for its tools' declarations, at most.
pub const DECLARATIONS_EVERY_MS: u64 = 10_000;

/// How old the filter's own view of a server's tools may be when a pinned tool is called
/// (2026-07-28): older, the server is asked again before the call is decided.
pub const PINS_FRESH_MS: u64 = 60_000;

/// How long after a listing request a replica may ask again for a pinned tool's sake, when the
/// last one failed or is still in flight.
pub const PINS_RETRY_MS: u64 = 1_000;

/// How old a view may be and still decide a pinned tool's call while a newer one is being
/// asked for (or could not be had): older, or none, and the call is refused.
pub const PINS_GRACE_MS: u64 = 2 * PINS_FRESH_MS;

fn viewed_key(server: &str) -> String {
    format!("mcp-guard:pins-viewed:{}", quoted(server))
}

/// This Envoy read `server`'s tools from the server itself at `now_ms`.
pub fn record_view(host: &mut dyn Host, server: &str, now_ms: u64) {
    host.shared_set(&viewed_key(server), &now_ms.to_le_bytes());
}

/// How long ago this Envoy last read `server`'s tools from the server itself; `None` if never.
pub fn view_age(host: &dyn Host, server: &str, now_ms: u64) -> Option<u64> {
    let bytes = host.shared_get(&viewed_key(server))?;
    let at = u64::from_le_bytes(<[u8; 8]>::try_from(bytes.as_slice()).ok()?);
    Some(now_ms.saturating_sub(at))
}

/// The body of the filter's own `tools/list` (2026-07-28, stateless): sent with the service's
/// credential when a call carries `Mcp-Param-*` headers for a tool this Envoy has not seen
/// listed (another replica served the listing, or this one restarted since). The declarations
/// are the server's, whoever asks; without them the headers could not be checked.
pub fn declarations_request() -> Vec<u8> {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": DECLARATIONS_ID,
        "method": "tools/list",
        "params": { "_meta": {
            META_VERSION: MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }},
    })
    .to_string()
    .into_bytes()
}

/// The headers of that request (the credential's is added by the caller).
pub const DECLARATIONS_HEADERS: [(&str, &str); 5] = [
    (":method", "POST"),
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
    ("mcp-protocol-version", MODERN),
    ("mcp-method", "tools/list"),
];

/// Whether this Envoy may ask `server` for its tools now: when it last did at least `every_ms`
/// ago, across its worker VMs (shared data) — so that calls naming tools the server does not
/// have cannot make the filter list its tools again and again.
pub fn claim_listing(host: &mut dyn Host, server: &str, now_ms: u64, every_ms: u64) -> bool {
    let key = format!("mcp-guard:params-fetched:{server}");
    let (last, cas) = crate::host::shared_read(host, &key);
    let last = <[u8; 8]>::try_from(last.as_slice()).map_or(0, u64::from_le_bytes);
    now_ms.saturating_sub(last) >= every_ms && host.shared_set_cas(&key, &now_ms.to_le_bytes(), cas)
}

/// Remembers the parameter headers of listed tools (in shared data, so every worker agrees).
///
/// Bounded whatever a server lists: a tool's declarations live in one of [`DECLARATION_SLOTS`]
/// entries per server (by a fixed hash of its name), each holding at most
/// [`SLOT_TOOLS`] tools and [`SLOT_BYTES`] bytes; a server whose tool names keep changing
/// replaces its own older entries (a call naming a forgotten tool asks the server again).
/// Server and tool names are JSON-quoted in the key, so no pair of names can share one.
pub fn learn(host: &mut dyn Host, server: &str, tools: &[(String, Vec<ParamHeader>)]) {
    let mut slots: BTreeMap<u16, Vec<&(String, Vec<ParamHeader>)>> = BTreeMap::new();
    for tool in tools {
        slots.entry(slot(&tool.0)).or_default().push(tool);
    }
    for (slot, tools) in slots {
        let key = shared_key(server, slot);
        for _ in 0..LEARN_TRIES {
            let (stored, cas) = crate::host::shared_read(host, &key);
            let mut known: BTreeMap<String, Vec<ParamHeader>> =
                serde_json::from_slice(&stored).unwrap_or_default();
            let changed = tools.iter().fold(false, |changed, (name, headers)| {
                known.insert(name.clone(), headers.clone()).as_ref() != Some(headers) || changed
            });
            if !changed {
                break;
            }
            // Over the bounds: the tools of this listing stay, others go first.
            let listed = |name: &String| tools.iter().any(|(n, _)| n == name);
            let mut older: Vec<String> = known.keys().filter(|n| !listed(n)).cloned().collect();
            let value = loop {
                // Serialized only once the count fits.
                if known.len() <= SLOT_TOOLS {
                    let value = serde_json::to_vec(&known).unwrap_or_default();
                    if value.len() <= SLOT_BYTES {
                        break value;
                    }
                }
                match older.pop().or_else(|| known.keys().next().cloned()) {
                    Some(drop) => known.remove(&drop),
                    None => break Vec::new(),
                };
            };
            if host.shared_set_cas(&key, &value, cas) {
                break;
            }
        }
    }
}

/// The parameter headers last listed for a tool; `None` when this filter has not seen it
/// listed.
pub fn known_param_headers(host: &dyn Host, server: &str, tool: &str) -> Option<Vec<ParamHeader>> {
    let value = host.shared_get(&shared_key(server, slot(tool)))?;
    let mut known: BTreeMap<String, Vec<ParamHeader>> = serde_json::from_slice(&value).ok()?;
    known.remove(tool)
}

/// How many shared-data entries one server's declarations are spread over.
pub const DECLARATION_SLOTS: u16 = 256;
/// The most tools one entry holds.
pub const SLOT_TOOLS: usize = 64;
/// The largest entry, in bytes (with [`DECLARATION_SLOTS`]: at most 4 MiB per server).
pub const SLOT_BYTES: usize = 16 * 1024;
/// Attempts to update an entry against concurrent listings on other workers.
const LEARN_TRIES: usize = 4;

/// The entry a tool's declarations live in: a fixed hash of its name, the same in every worker.
fn slot(tool: &str) -> u16 {
    let digest = Sha256::digest(tool.as_bytes());
    let [a, b, ..] = <[u8; 32]>::from(digest);
    u16::from_be_bytes([a, b]) % DECLARATION_SLOTS
}

pub fn is_param_header(name: &str) -> bool {
    name.len() > PARAM_PREFIX.len()
        && name
            .get(..PARAM_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PARAM_PREFIX))
}

/// Checks a `tools/call`'s `Mcp-Param-*` headers against its arguments, given the tool's
/// declared parameter headers (`None`: the tool was never listed through this filter).
/// Every declared parameter with a value needs its header, equal to the value after decoding;
/// a header no declaration names, or a declared one without a value, is a mismatch.
pub fn param_mismatch(
    headers: &[Header],
    declared: Option<&[ParamHeader]>,
    arguments: &Map<String, Value>,
) -> Option<String> {
    let sent: Vec<(String, &str)> = headers
        .iter()
        .filter(|(k, _)| is_param_header(k))
        .map(|(k, v)| {
            (
                k.get(PARAM_PREFIX.len()..)
                    .unwrap_or("")
                    .to_ascii_lowercase(),
                v.as_str(),
            )
        })
        .collect();
    let Some(declared) = declared else {
        return sent.first().map(|(name, _)| {
            format!(
                "Mcp-Param-{name} header for a tool this gateway has not seen listed; list the tools again, then retry"
            )
        });
    };
    for (i, (name, _)) in sent.iter().enumerate() {
        if sent.iter().skip(i + 1).any(|(other, _)| other == name) {
            return Some(format!(
                "the Mcp-Param-{name} header must appear at most once"
            ));
        }
        if !declared.iter().any(|d| &d.name == name) {
            return Some(format!(
                "Mcp-Param-{name} header names no parameter header of this tool"
            ));
        }
    }
    for d in declared {
        let value = lookup(arguments, &d.path).filter(|v| !v.is_null());
        let header = sent.iter().find(|(n, _)| n == &d.name).map(|(_, v)| *v);
        match (value, header) {
            (None, None) => {}
            (None, Some(_)) => {
                return Some(format!(
                    "Mcp-Param-{} header sent, but the body has no value for it",
                    d.name
                ))
            }
            (Some(_), None) => {
                return Some(format!(
                    "Mcp-Param-{} header missing for a value the body carries",
                    d.name
                ))
            }
            (Some(value), Some(header)) => {
                if !value_matches(header, value) {
                    return Some(format!(
                        "Mcp-Param-{} header does not match the body's value",
                        d.name
                    ));
                }
            }
        }
    }
    None
}

fn lookup<'a>(arguments: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = arguments.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

/// The revision's value encoding: strings as is, integers in decimal, booleans `true`/`false`;
/// any of them may use the base64 sentinel. An integer is taken only as the official clients
/// write it — its decimal form (`7`, `-7`), or for a body value written as an integral float
/// (`7.0`) also Python's rendering of it (`7.0`) — not as any text that parses to the number
/// (`007`, `+7`, `7e0`, ` 7`, `7.0000000000000001`): a router or rate limiter after the filter
/// reading the header as text would see one value under unboundedly many names.
fn value_matches(header: &str, value: &Value) -> bool {
    let Some(decoded) = decode_header_value(header) else {
        return false;
    };
    match value {
        Value::String(s) => &decoded == s,
        Value::Bool(b) => decoded == if *b { "true" } else { "false" },
        Value::Number(n) if n.is_i64() || n.is_u64() => decoded == n.to_string(),
        Value::Number(n) => n.as_f64().is_some_and(|f| {
            // Below 1e16 an integral float is exactly an integer and Python writes `N.0`.
            let integral = f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16;
            let whole = f as i64;
            integral && (decoded == whole.to_string() || decoded == format!("{whole}.0"))
        }),
        _ => false,
    }
}

// ---- trace context ---------------------------------------------------------------------------

/// A W3C trace context's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: String,
    pub span_id: String,
}

/// Parses a W3C `traceparent` (`version-traceid-parentid-flags`, lower-case hex). `None` when
/// invalid (version `ff`, all-zero ids, wrong lengths, upper case): such a value is ignored.
pub fn traceparent(value: &str) -> Option<Trace> {
    let value = value.trim_matches([' ', '\t']);
    let mut parts = value.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace_id, 32) || !hex(span_id, 16) {
        return None;
    }
    if !hex(flags, 2) || trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    Some(Trace {
        trace_id: trace_id.to_string(),
        span_id: span_id.to_string(),
    })
}

/// The trace context of a request: the message's `_meta.traceparent` when valid (the context
/// the MCP server continues), else the `traceparent` header's. The second value is the
/// header's trace id when both are valid and their trace ids differ.
pub fn trace(headers: &[Header], message: Option<&Message>) -> (Option<Trace>, Option<String>) {
    let header = {
        let mut values = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("traceparent"));
        match (values.next(), values.next()) {
            // W3C: several traceparent headers are invalid.
            (Some((_, v)), None) => traceparent(v),
            _ => None,
        }
    };
    let body = message
        .and_then(|m| meta(&m.params))
        .and_then(|m| m.get("traceparent"))
        .and_then(Value::as_str)
        .and_then(traceparent);
    match (body, header) {
        (Some(b), Some(h)) => {
            let other = (h.trace_id != b.trace_id).then_some(h.trace_id);
            (Some(b), other)
        }
        (Some(b), None) => (Some(b), None),
        (None, h) => (h, None),
    }
}

// ---- cacheScope of caller-dependent results ---------------------------------------------------

/// What a list result became once the filter decided it for this caller: `rewritten` is the
/// filtered message (or `None` when nothing was hidden). Returns the message to send, when it
/// differs from `message`.
///
/// A list the filter tailors to the caller is private whatever the upstream said: its
/// `cacheScope` becomes `"private"` (added to a 2026-07-28 result that lacks it); `ttlMs` and
/// everything else stay as they were.
pub fn private_list(
    kind: ListKind,
    cacheable: bool,
    message: &[u8],
    rewritten: Option<Vec<u8>>,
    failed: &mut Option<String>,
    learned: &mut Vec<(String, Vec<ParamHeader>)>,
) -> Option<Vec<u8>> {
    let current = rewritten.as_deref().unwrap_or(message);
    // Only results of the revision that has parameter headers (`cacheable`: they carry
    // `resultType`) are read for declarations: earlier revisions' listings cost nothing more.
    if kind == ListKind::Tools
        && (cacheable || memchr::memmem::find(current, b"x-mcp-header").is_some())
    {
        learned.extend(listed_param_headers(current));
    }
    if !cacheable {
        // No caching member (as the list's reader found them, escapes decoded): nothing to mark.
        return rewritten;
    }
    made_private(message, rewritten, true, failed)
}

/// The answer to send with its scope made private ([`private_cache`] on `rewritten`, else on
/// `message`): the bytes to send instead, `rewritten` when nothing changes, or `None` with
/// `failed` set when the message is ambiguous.
pub fn made_private(
    message: &[u8],
    rewritten: Option<Vec<u8>>,
    insert: bool,
    failed: &mut Option<String>,
) -> Option<Vec<u8>> {
    let current = rewritten.as_deref().unwrap_or(message);
    match private_cache(current, insert) {
        Ok(Some(body)) => Some(body),
        Ok(None) => rewritten,
        Err(why) => {
            *failed = Some(why);
            None
        }
    }
}

/// Sets `result.cacheScope` to `"private"` in one JSON-RPC response message, editing its bytes
/// in place (`insert`: also where the result of the 2026-07-28 revision has none). `Ok(None)`:
/// already private, or a result of an earlier revision (no `cacheScope`, `ttlMs` or
/// `resultType`). An ambiguous message (a duplicate `result` or `cacheScope`) is an
/// error: a client might read the other one.
pub fn private_cache(message: &[u8], insert: bool) -> Result<Option<Vec<u8>>, String> {
    #[derive(Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        result: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    #[allow(non_snake_case)]
    struct Cacheable<'a> {
        #[serde(borrow)]
        cacheScope: Option<&'a RawValue>,
        #[serde(borrow)]
        ttlMs: Option<&'a RawValue>,
        #[serde(borrow)]
        resultType: Option<&'a RawValue>,
    }
    if message.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Ok(None);
    }
    // Earlier revisions' results have none of these members: skip the parse (a member name
    // written with escapes is found by the parse, so any `\u` is parsed too).
    let has = |needle: &[u8]| memchr::memmem::find(message, needle).is_some();
    if !(has(b"cacheScope") || has(b"ttlMs") || has(b"resultType") || has(b"\\u")) {
        return Ok(None);
    }
    let msg: Msg = serde_json::from_slice(message)
        .map_err(|e| format!("list result could not be parsed: {e}"))?;
    let Some(result) = msg.result else {
        return Ok(None);
    };
    if !result.get().starts_with('{') {
        return Ok(None);
    }
    let fields: Cacheable = serde_json::from_str(result.get())
        .map_err(|e| format!("list result could not be parsed: {e}"))?;
    let offset =
        |raw: &RawValue| (raw.get().as_ptr() as usize).wrapping_sub(message.as_ptr() as usize);
    let (at, replace, insert) = match fields.cacheScope {
        Some(scope) if scope.get() == "\"private\"" => return Ok(None),
        Some(scope) => (offset(scope), scope.get().len(), "\"private\"".to_string()),
        None if insert && (fields.ttlMs.is_some() || fields.resultType.is_some()) => {
            // After the result's `{`; a comma when other members follow.
            (
                offset(result) + 1,
                0,
                "\"cacheScope\":\"private\",".to_string(),
            )
        }
        None => return Ok(None),
    };
    let (Some(head), Some(tail)) = (message.get(..at), message.get(at + replace..)) else {
        return Err("list result could not be parsed".into());
    };
    let mut out = Vec::with_capacity(message.len() + insert.len());
    out.extend_from_slice(head);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(tail);
    Ok(Some(out))
}

#[cfg(test)]
mod tests;
