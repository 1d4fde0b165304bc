//! JSON-RPC / MCP message parsing.
//!
//! One strict parse decides what the message is; the filter forwards the original bytes, never
//! a re-serialization, so what the policy saw is exactly what the server gets. Anything that is
//! not a single, well-formed JSON-RPC 2.0 message is refused: duplicate keys at any depth,
//! unknown or case-variant top-level members, request/response hybrids, non-object `params`,
//! ids that are neither a string nor an integer, trailing bytes, excessive nesting.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Default limit on how deeply objects and arrays may nest.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// What kind of JSON-RPC message a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    /// A result or an error: the client answering a server's request.
    Response,
}

/// The object an MCP request is about, when it names one.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    None,
    Tool {
        name: String,
        arguments: Map<String, Value>,
    },
    Prompt {
        name: String,
    },
    Resource {
        uri: String,
    },
}

/// A parsed JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    /// The request id (string or integer), echoed in any answer the filter makes.
    pub id: Option<Value>,
    /// The method; empty for responses.
    pub method: String,
    /// The params; for `tools/call`, without `arguments` (they move into [`Target::Tool`]).
    pub params: Map<String, Value>,
    pub target: Target,
}

impl Message {
    /// This message as the parse that drops unread arguments ([`Arguments::Check`]) gives it:
    /// a tool's arguments empty, and any other method's `params.arguments` emptied to a value
    /// of the same JSON type (what the parser checked but did not keep).
    pub fn without_arguments(&self) -> Message {
        let mut m = self.clone();
        if let Target::Tool { arguments, .. } = &mut m.target {
            arguments.clear();
        }
        if let Some(a) = m.params.get_mut("arguments") {
            match a {
                Value::Object(o) => o.clear(),
                Value::Array(items) => items.clear(),
                Value::String(s) => s.clear(),
                _ => {}
            }
        }
        m
    }

    pub fn tool_name(&self) -> Option<&str> {
        match &self.target {
            Target::Tool { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Why a body was refused. Each maps to a JSON-RPC error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON at all, or not UTF-8 (JSON-RPC -32700).
    Json(String),
    /// JSON, but not an acceptable JSON-RPC message (-32600).
    Invalid(String),
    /// A well-formed request whose MCP params are wrong (-32602).
    Params(String),
}

impl ParseError {
    pub fn code(&self) -> i64 {
        match self {
            ParseError::Json(_) => -32700,
            ParseError::Invalid(_) => -32600,
            ParseError::Params(_) => -32602,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Json(m) => write!(f, "parse error: {m}"),
            ParseError::Invalid(m) => write!(f, "invalid request: {m}"),
            ParseError::Params(m) => write!(f, "invalid params: {m}"),
        }
    }
}

/// Parses JSON strictly: duplicate keys at any depth and nesting beyond `max_depth` are errors,
/// as is anything after the value but whitespace.
pub fn parse_strict_json(bytes: &[u8], max_depth: usize) -> Result<Value, String> {
    parse_json(bytes, max_depth, Mode::Keep)
}

fn parse_json(bytes: &[u8], max_depth: usize, mode: Mode) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict {
        depth: 0,
        max_depth,
        mode,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// What the parser keeps of the value it is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Everything.
    Keep,
    /// A message (or a batch of them) whose tool arguments nobody reads: everything but
    /// `params.arguments`.
    Message,
    /// The `params` of such a message.
    Params,
    /// Checked as strictly as the rest, but not kept: objects, arrays and strings come out
    /// empty (of the same type, which the message's shape checks look at).
    Check,
}

#[derive(Clone, Copy)]
struct Strict {
    depth: usize,
    max_depth: usize,
    mode: Mode,
}

impl Strict {
    fn nested<E: de::Error>(&self, mode: Mode) -> Result<Strict, E> {
        if self.depth >= self.max_depth {
            return Err(E::custom(format!(
                "nesting deeper than {} levels",
                self.max_depth
            )));
        }
        Ok(Strict {
            depth: self.depth + 1,
            max_depth: self.max_depth,
            mode,
        })
    }

    fn keeps(&self) -> bool {
        self.mode != Mode::Check
    }
}

/// An object key, borrowed from the input where it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(if self.keeps() {
            v.to_string()
        } else {
            String::new()
        }))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(if self.keeps() { v } else { String::new() }))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // A batch's elements are messages.
        let mode = match self.mode {
            Mode::Message if self.depth == 0 => Mode::Message,
            Mode::Check => Mode::Check,
            _ => Mode::Keep,
        };
        let inner = self.nested(mode)?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            if self.keeps() {
                out.push(v);
            }
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if !self.keeps() {
            return self.check_map(map);
        }
        // An object one level too deep is refused even when empty, as an array is.
        self.nested::<A::Error>(Mode::Keep)?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let mode = match (self.mode, key.as_str()) {
                (Mode::Message, "params") => Mode::Params,
                (Mode::Params, "arguments") => Mode::Check,
                _ => Mode::Keep,
            };
            let value = map.next_value_seed(self.nested(mode)?)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

impl Strict {
    /// Checks an object without keeping it: the keys are compared where they lie in the input.
    fn check_map<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested(Mode::Check)?;
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let duplicate = if keys.len() < 16 {
                keys.contains(&key)
            } else {
                if many.is_empty() {
                    many.extend(keys.iter().cloned());
                }
                many.contains(&key)
            };
            if duplicate {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            if keys.len() < 16 {
                keys.push(key);
            } else {
                many.insert(key);
            }
            map.next_value_seed(inner)?;
        }
        Ok(Value::Object(Map::new()))
    }
}

const MEMBERS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];

/// What of a message the decisions need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arguments {
    /// `tools/call` arguments are kept (a rule or the audit reads them).
    Keep,
    /// Checked as strictly as the rest of the message, then dropped: no copy of large
    /// arguments is made when nothing reads them. [`Target::Tool`] then has no arguments.
    Check,
}

impl Arguments {
    fn mode(self) -> Mode {
        match self {
            Arguments::Keep => Mode::Keep,
            Arguments::Check => Mode::Message,
        }
    }
}

/// Parses one JSON-RPC message body.
pub fn parse_message(body: &[u8], max_depth: usize) -> Result<Message, ParseError> {
    parse_message_for(body, max_depth, Arguments::Keep)
}

/// Parses one JSON-RPC message body, keeping the tool arguments or not.
pub fn parse_message_for(
    body: &[u8],
    max_depth: usize,
    arguments: Arguments,
) -> Result<Message, ParseError> {
    match parse_json(body, max_depth, arguments.mode()).map_err(ParseError::Json)? {
        Value::Array(_) => Err(ParseError::Invalid(
            "JSON-RPC batches are not accepted: send one message per request".into(),
        )),
        value => message_from_value(value),
    }
}

/// Parses a JSON-RPC batch (allowed by protocol version 2025-03-26 only): every element must
/// be a valid message, and the batch must not be empty.
pub fn parse_batch(body: &[u8], max_depth: usize) -> Result<Vec<Message>, ParseError> {
    parse_batch_for(body, max_depth, Arguments::Keep)
}

/// Parses a batch, keeping the tool arguments or not.
pub fn parse_batch_for(
    body: &[u8],
    max_depth: usize,
    arguments: Arguments,
) -> Result<Vec<Message>, ParseError> {
    let Value::Array(items) =
        parse_json(body, max_depth, arguments.mode()).map_err(ParseError::Json)?
    else {
        return Err(ParseError::Invalid("a batch must be a JSON array".into()));
    };
    if items.is_empty() {
        return Err(ParseError::Invalid(
            "an empty batch is not a valid request".into(),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            message_from_value(item).map_err(|e| match e {
                ParseError::Invalid(m) => ParseError::Invalid(format!("batch element {i}: {m}")),
                ParseError::Params(m) => ParseError::Params(format!("batch element {i}: {m}")),
                other => other,
            })
        })
        .collect()
}

/// Whether a body is a batch (a JSON array), judged by its first non-blank byte.
pub fn is_batch(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

fn message_from_value(value: Value) -> Result<Message, ParseError> {
    let mut obj = match value {
        Value::Object(obj) => obj,
        _ => {
            return Err(ParseError::Invalid(
                "a message must be a JSON object".into(),
            ))
        }
    };
    if let Some(unknown) = obj.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
        return Err(ParseError::Invalid(format!("unknown member {unknown:?}")));
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(ParseError::Invalid("\"jsonrpc\" must be \"2.0\"".into()));
    }
    let id = match obj.remove("id") {
        None => None,
        Some(id @ Value::String(_)) => Some(id),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n)),
        Some(_) => {
            return Err(ParseError::Invalid(
                "\"id\" must be a string or an integer".into(),
            ))
        }
    };
    let has_result = obj.contains_key("result");
    let has_error = obj.contains_key("error");
    let method = obj.remove("method");
    let params = obj.remove("params");

    let Some(method) = method else {
        // A response from the client to a server request.
        if params.is_some() {
            return Err(ParseError::Invalid(
                "a response must not carry \"params\"".into(),
            ));
        }
        if has_result == has_error {
            return Err(ParseError::Invalid(
                "a message needs \"method\", or exactly one of \"result\" and \"error\"".into(),
            ));
        }
        if id.is_none() {
            return Err(ParseError::Invalid("a response needs an \"id\"".into()));
        }
        return Ok(Message {
            kind: Kind::Response,
            id,
            method: String::new(),
            params: Map::new(),
            target: Target::None,
        });
    };
    if has_result || has_error {
        return Err(ParseError::Invalid(
            "a message cannot be both a request and a response".into(),
        ));
    }
    let method = match method {
        Value::String(m) if !m.is_empty() => m,
        _ => {
            return Err(ParseError::Invalid(
                "\"method\" must be a non-empty string".into(),
            ))
        }
    };
    let params = match params {
        None => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(ParseError::Invalid("\"params\" must be an object".into())),
    };
    let kind = if id.is_some() {
        Kind::Request
    } else {
        Kind::Notification
    };
    let mut params = params;
    let target = target_of(&method, &mut params)?;
    Ok(Message {
        kind,
        id,
        method,
        params,
        target,
    })
}

/// Extracts the tool, prompt or resource an MCP method is about. A tool's arguments move out
/// of `params` into the target (no second copy).
fn target_of(method: &str, params: &mut Map<String, Value>) -> Result<Target, ParseError> {
    let text = |name: &str| -> Result<String, ParseError> {
        match params.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(ParseError::Params(format!(
                "{method} needs params.{name} as a non-empty string"
            ))),
        }
    };
    Ok(match method {
        "tools/call" => {
            let name = text("name")?;
            if !is_valid_tool_name(&name) {
                return Err(ParseError::Params(format!(
                    "tool name {name:?} is not 1-128 characters of A-Z a-z 0-9 _ - ."
                )));
            }
            let arguments = match params.remove("arguments") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(a)) => a,
                Some(_) => {
                    return Err(ParseError::Params(
                        "tools/call params.arguments must be an object".into(),
                    ))
                }
            };
            Target::Tool { name, arguments }
        }
        "prompts/get" => Target::Prompt {
            name: text("name")?,
        },
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            Target::Resource { uri: text("uri")? }
        }
        _ => Target::None,
    })
}

/// The MCP specification's tool names: 1–128 of `[A-Za-z0-9_.-]`. Anything else (look-alike
/// Unicode, zero-width characters, spaces) is refused before policy sees it.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
