//! JSON-RPC / MCP message parsing.
//!
//! One strict parse decides what the message is; the filter forwards the original bytes, never
//! a re-serialization, so what the policy saw is exactly what the server gets. Anything that is
//! not a single, well-formed JSON-RPC 2.0 message is refused: keys of one object, at any depth,
//! that a server-side decoder could take for the same member (duplicates, case variants, Unicode
//! case folds) or that hold control characters, unknown top-level members, request/response
//! hybrids, non-object `params`, ids that are neither a string nor an integer, trailing bytes,
//! excessive nesting.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

mod quick;

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
    /// of the same JSON type (what the parser checked but did not keep). The parser tests and
    /// the jsonrpc fuzz target compare the two parses with it.
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
    /// Keys of one object that decoders could read differently (-32600).
    Key(KeyProblem),
}

impl ParseError {
    pub fn code(&self) -> i64 {
        match self {
            ParseError::Json(_) => -32700,
            ParseError::Invalid(_) | ParseError::Key(_) => -32600,
            ParseError::Params(_) => -32602,
        }
    }

    /// What the audit record says: a stable reason for key problems, the message otherwise.
    pub fn audit_reason(&self) -> String {
        match self {
            ParseError::Key(k) => k.reason().to_string(),
            other => other.to_string(),
        }
    }
}

/// An object key the strict parse refuses, at any depth of the message.
///
/// Many server-side decoders match members case-insensitively and let the last one win: Go's
/// `encoding/json` (with Unicode simple case folding: `ſ` is `s`, the Kelvin sign is `k`),
/// Jackson with `ACCEPT_CASE_INSENSITIVE_PROPERTIES`, .NET `System.Text.Json` with
/// `PropertyNameCaseInsensitive`. An object holding `"name"` and `"Name"` would be one thing to
/// the policy and another to such a server, so two keys that are equal under simple case folding
/// are refused. Control characters in a key (C0, DEL, C1) are refused too: some decoders stop a
/// key at NUL, others drop or replace what they cannot print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// The same key twice.
    Duplicate(String),
    /// Two different keys equal under (ASCII or Unicode simple) case folding: the earlier, the
    /// later.
    Colliding(String, String),
    /// A key holding U+0000–U+001F, U+007F or U+0080–U+009F.
    ControlCharacter(String),
    /// A `params` key that folds to a member the filter reads but is spelled otherwise
    /// (`"Arguments"`): the member, the key. The filter would read the member as absent, a
    /// case-insensitive server as present.
    CaseVariant(&'static str, String),
}

impl KeyProblem {
    /// The audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyProblem::Duplicate(_) => "duplicate_key",
            KeyProblem::Colliding(..) => "colliding_keys",
            KeyProblem::ControlCharacter(_) => "control_character_in_key",
            KeyProblem::CaseVariant(..) => "case_variant_key",
        }
    }
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Duplicate(k) => write!(f, "duplicate key {}", shown(k)),
            KeyProblem::Colliding(a, b) => write!(
                f,
                "keys {} and {} differ only in case: case-insensitive decoders read them as one",
                shown(a),
                shown(b)
            ),
            KeyProblem::ControlCharacter(k) => {
                write!(f, "key {} contains a control character", shown(k))
            }
            KeyProblem::CaseVariant(member, k) => write!(
                f,
                "params key {} is a case variant of {member:?}: spell it exactly",
                shown(k)
            ),
        }
    }
}

/// A key as an error message shows it: quoted, every control or invisible character escaped
/// (Rust's `Debug` escaping), and cut after 64 characters.
fn shown(key: &str) -> String {
    const MAX: usize = 64;
    match key.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", key.get(..cut).unwrap_or_default()),
        None => format!("{key:?}"),
    }
}

/// Whether a key holds a C0 or C1 control character or DEL.
fn has_control(key: &str) -> bool {
    // 0xC2 leads the UTF-8 of U+0080–U+00BF: only then can a C1 control be there.
    key.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) && key.chars().any(char::is_control)
}

/// A key under Unicode simple case folding (CaseFolding.txt, statuses C and S), character by
/// character. Two keys Go's `strings.EqualFold` / `bytes.EqualFold` (and so `encoding/json`'s
/// field matching) holds equal fold to the same string: Go's `unicode.SimpleFold` orbits are
/// exactly the classes of these simple folds (Go's table generator builds them from
/// CaseFolding.txt C and S lines). No crate offers Go's rule as such, so it is put together
/// here from the `casefold` crate's simple folds, with one widening in [`fold_char`]. ASCII
/// keys without upper case (nearly all keys) are returned as they are, without a copy.
pub fn fold_key<'a>(key: &Cow<'a, str>) -> Cow<'a, str> {
    if key.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return key.clone();
    }
    if key.is_ascii() {
        return Cow::Owned(key.to_ascii_lowercase());
    }
    Cow::Owned(key.chars().map(fold_char).collect())
}

/// One character's fold: its simple case fold; a character without one (and only such a
/// character) joins the class of its one-character upper case's lower case. That widens Go's
/// rule in two places, both on the side of refusing: U+0131 (dotless ı) joins `i`/`I`, as
/// .NET's `OrdinalIgnoreCase` (upper-casing) and Java's `equalsIgnoreCase` hold them equal; and
/// case pairs newer than the fold table's Unicode version are still folded.
fn fold_char(c: char) -> char {
    let folded = casefold::simple_fold_char(c);
    if folded != c {
        return folded;
    }
    single(c.to_uppercase())
        .and_then(|u| single(u.to_lowercase()))
        .unwrap_or(c)
}

/// The only item of an iterator of one.
fn single(mut chars: impl Iterator<Item = char>) -> Option<char> {
    let first = chars.next()?;
    chars.next().is_none().then_some(first)
}

/// Up to this many keys an object's folded keys are compared one by one; past it, through a map.
const LINEAR_KEYS: usize = 16;

/// The keys of one object seen so far: (folded, as sent).
#[derive(Default)]
struct Seen<'de> {
    keys: Vec<(Cow<'de, str>, Cow<'de, str>)>,
    index: HashMap<Cow<'de, str>, usize>,
}

impl<'de> Seen<'de> {
    /// Adds a key, or says why the object must be refused.
    fn add(&mut self, key: Cow<'de, str>) -> Result<(), KeyProblem> {
        if has_control(&key) {
            return Err(KeyProblem::ControlCharacter(key.to_string()));
        }
        let folded = fold_key(&key);
        let earlier = if self.keys.len() < LINEAR_KEYS {
            self.keys.iter().position(|(f, _)| *f == folded)
        } else {
            if self.index.is_empty() {
                let index = self
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, (f, _))| (f.clone(), i));
                self.index.extend(index);
            }
            self.index.get(&folded).copied()
        };
        if let Some(i) = earlier {
            let first = self
                .keys
                .get(i)
                .map(|(_, k)| k.as_ref())
                .unwrap_or_default();
            return Err(if first == key.as_ref() {
                KeyProblem::Duplicate(key.to_string())
            } else {
                KeyProblem::Colliding(first.to_string(), key.to_string())
            });
        }
        if self.keys.len() >= LINEAR_KEYS {
            self.index.insert(folded.clone(), self.keys.len());
        }
        self.keys.push((folded, key));
        Ok(())
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Json(m) => write!(f, "parse error: {m}"),
            ParseError::Invalid(m) => write!(f, "invalid request: {m}"),
            ParseError::Params(m) => write!(f, "invalid params: {m}"),
            ParseError::Key(k) => write!(f, "invalid request: {k}"),
        }
    }
}

/// Parses JSON strictly: colliding keys ([`KeyProblem`]) at any depth and nesting beyond
/// `max_depth` are errors, as is anything after the value but whitespace.
pub fn parse_strict_json(bytes: &[u8], max_depth: usize) -> Result<Value, String> {
    parse_json(bytes, max_depth, Mode::Keep).map_err(json_error)
}

/// A strict JSON parse's error as text: serde_json's, or the key problem's.
fn json_error(e: ParseError) -> String {
    match e {
        ParseError::Json(m) => m,
        other => other.to_string(),
    }
}

/// The strict parse without its quick path, as [`parse_strict_json`]: for tests that hold the
/// two to the same verdicts.
#[doc(hidden)]
pub fn parse_strict_json_without_quick_path(
    bytes: &[u8],
    max_depth: usize,
) -> Result<Value, String> {
    parse_serde(bytes, max_depth, Mode::Keep).map_err(json_error)
}

/// Parses JSON strictly; errors are [`ParseError::Json`] or [`ParseError::Key`]. A plainly
/// valid text is parsed in one pass ([`quick`]); anything else by serde_json, which gives the
/// verdict and the error.
fn parse_json(bytes: &[u8], max_depth: usize, mode: Mode) -> Result<Value, ParseError> {
    match quick::parse(bytes, max_depth, mode) {
        Some(value) => Ok(value),
        None => parse_serde(bytes, max_depth, mode),
    }
}

/// [`parse_json`], with the first integer beyond 64 bits that a double does not hold exactly
/// ([`inexact_wide_integer`]). serde_json reads such an integer as the nearest double, so the
/// parsed value cannot tell it from a number written as a double; the text can. The quick
/// path leaves every integer beyond 64 bits to the serde-based parse, so only that parse's
/// input is scanned for one.
fn parse_json_noting_wide(
    bytes: &[u8],
    max_depth: usize,
    mode: Mode,
) -> Result<(Value, Option<&str>), ParseError> {
    match quick::parse(bytes, max_depth, mode) {
        Some(value) => Ok((value, None)),
        None => {
            let value = parse_serde(bytes, max_depth, mode)?;
            Ok((value, inexact_wide_integer(bytes)))
        }
    }
}

/// The first integer literal (no fraction, no exponent) outside strings in `bytes`, a text
/// serde_json parsed, that is beyond the 64-bit integers and that a double does not hold
/// exactly (`18446744073709551617` is read as 18446744073709551616 by serde_json, and so by
/// the policy; Python, and any server that reads JSON integers exactly, acts on the first).
/// A scan of the text rather than of the value: the value no longer says how the number was
/// written, and no JSON library here keeps the literal (serde_json's `arbitrary_precision`
/// would change every number's representation in the filter).
fn inexact_wide_integer(bytes: &[u8]) -> Option<&str> {
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                // Past the string: serde_json accepted it, so it ends with an unescaped quote.
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += match c {
                        b'\\' => 2,
                        b'"' => break,
                        _ => 1,
                    };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = bytes
                    .get(i..)
                    .and_then(|rest| {
                        rest.iter().position(|c| {
                            !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                        })
                    })
                    .map_or(bytes.len(), |n| i + n);
                let literal = bytes
                    .get(i..end)
                    .and_then(|t| std::str::from_utf8(t).ok())?;
                if integer_beyond_64_bits(literal) {
                    // Rust prints a double's exact decimal value: an integral double holds the
                    // integer exactly only if it prints as the literal does.
                    let exact = literal
                        .parse::<f64>()
                        .is_ok_and(|double| format!("{double:.0}") == literal);
                    if !exact {
                        return Some(literal);
                    }
                }
                i = end.max(i + 1);
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether a JSON number's text is an integer literal (no fraction, no exponent) that fits
/// neither `i64` nor `u64`: serde_json reads it as a double.
fn integer_beyond_64_bits(literal: &str) -> bool {
    !literal.contains(['.', 'e', 'E'])
        && literal.parse::<i64>().is_err()
        && literal.parse::<u64>().is_err()
}

/// Parses JSON strictly through serde_json, with the checks in [`Strict`].
fn parse_serde(bytes: &[u8], max_depth: usize, mode: Mode) -> Result<Value, ParseError> {
    let problem = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict {
        depth: 0,
        max_depth,
        mode,
        problem: &problem,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| match problem.take() {
        Some(key) => ParseError::Key(key),
        None => ParseError::Json(e.to_string()),
    })
}

/// What the parser keeps of the value it is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Everything.
    Keep,
    /// A message (or a batch of them) whose tool arguments nobody reads: everything but
    /// `params.arguments`.
    Message,
    /// The `params` of such a message.
    Params,
    /// Checked as strictly as the rest, but not kept: objects, arrays and strings come out
    /// empty (of the same type, which the message's shape checks look at), but for the
    /// integers in them that doubles cannot hold ([`kept_when_checked`]).
    Check,
}

#[derive(Clone, Copy)]
struct Strict<'p> {
    depth: usize,
    max_depth: usize,
    mode: Mode,
    /// Where a key problem is left for [`parse_json`] (serde's errors carry only text).
    problem: &'p Cell<Option<KeyProblem>>,
}

impl<'p> Strict<'p> {
    fn nested<E: de::Error>(&self, mode: Mode) -> Result<Strict<'p>, E> {
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
            problem: self.problem,
        })
    }

    fn keeps(&self) -> bool {
        self.mode != Mode::Check
    }

    /// Records a key problem and returns the error that stops the parse.
    fn refuse<E: de::Error>(&self, problem: KeyProblem) -> E {
        let e = E::custom(&problem);
        self.problem.set(Some(problem));
        e
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

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
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
            if self.keeps() || kept_when_checked(&v) {
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
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(Key)? {
            seen.add(key.clone())
                .map_err(|p| self.refuse::<A::Error>(p))?;
            let mode = match (self.mode, key.as_ref()) {
                (Mode::Message, "params") => Mode::Params,
                (Mode::Params, "arguments") => Mode::Check,
                _ => Mode::Keep,
            };
            let value = map.next_value_seed(self.nested(mode)?)?;
            out.insert(key.into_owned(), value);
        }
        Ok(Value::Object(out))
    }
}

impl Strict<'_> {
    /// Checks an object without keeping it: the keys are compared where they lie in the input.
    fn check_map<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested(Mode::Check)?;
        let mut seen = Seen::default();
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            seen.add(key.clone())
                .map_err(|p| self.refuse::<A::Error>(p))?;
            let value = map.next_value_seed(inner)?;
            if kept_when_checked(&value) {
                out.insert(key.into_owned(), value);
            }
        }
        Ok(Value::Object(out))
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

/// Tool arguments as a server that parses JSON text in string arguments reads them (the
/// official Python SDK's `pre_parse_json`): each top-level string value that is JSON for
/// `null`, an array or an object becomes that value (a number, a boolean or a string in the
/// text stays the string there). `None` when no argument is such a string. The text is parsed
/// as serde_json parses it; Python's parser also reads `NaN` and out-of-range numbers, which
/// inside an array or object the filter then leaves as the string.
pub fn json_strings_parsed(arguments: &Map<String, Value>) -> Option<Map<String, Value>> {
    let parsed = |value: &Value| -> Option<Value> {
        let Value::String(text) = value else {
            return None;
        };
        let start = text.trim_start_matches([' ', '\t', '\n', '\r']);
        if !(start.starts_with(['[', '{']) || start.starts_with("null")) {
            return None;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(v @ (Value::Null | Value::Array(_) | Value::Object(_))) => Some(v),
            _ => None,
        }
    };
    let mut out: Option<Map<String, Value>> = None;
    for (key, value) in arguments {
        if let Some(v) = parsed(value) {
            out.get_or_insert_with(|| arguments.clone())
                .insert(key.clone(), v);
        }
    }
    out
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
    match parse_json_noting_wide(body, max_depth, arguments.mode())? {
        (Value::Array(_), _) => Err(ParseError::Invalid(
            "JSON-RPC batches are not accepted: send one message per request".into(),
        )),
        (value, wide) => {
            let message = message_from_value(value)?;
            match wide {
                Some(n) if message.kind != Kind::Response => Err(wide_integer_error(n)),
                _ => Ok(message),
            }
        }
    }
}

/// A request or notification holding an integer the policy would read as another number
/// ([`inexact_wide_integer`]): refused as the integers doubles cannot hold are
/// ([`inexact_integer`]). Only in `params` can it be (an `id` beyond 64 bits is refused before,
/// and the other members are strings).
fn wide_integer_error(literal: &str) -> ParseError {
    let shown = match literal.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", literal.get(..cut).unwrap_or(literal)),
        None => literal.to_string(),
    };
    ParseError::Params(format!(
        "the integer {shown} is beyond what the policy reads exactly (it would judge the \
         nearest double, a server that reads JSON integers exactly acts on the integer): send \
         it as a string"
    ))
}

/// Parses a JSON-RPC batch (allowed by protocol version 2025-03-26 only), keeping the tool
/// arguments or not: every element must be a valid message, and the batch must not be empty.
pub fn parse_batch_for(
    body: &[u8],
    max_depth: usize,
    arguments: Arguments,
) -> Result<Vec<Message>, ParseError> {
    let (Value::Array(items), wide) = parse_json_noting_wide(body, max_depth, arguments.mode())?
    else {
        return Err(ParseError::Invalid("a batch must be a JSON array".into()));
    };
    if items.is_empty() {
        return Err(ParseError::Invalid(
            "an empty batch is not a valid request".into(),
        ));
    }
    let messages = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            message_from_value(item).map_err(|e| match e {
                ParseError::Invalid(m) => ParseError::Invalid(format!("batch element {i}: {m}")),
                ParseError::Params(m) => ParseError::Params(format!("batch element {i}: {m}")),
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The text does not say which element holds it: a batch with a request or notification is
    // refused (a batch of responses alone passes, as a response would).
    match wide {
        Some(n) if messages.iter().any(|m| m.kind != Kind::Response) => Err(wide_integer_error(n)),
        _ => Ok(messages),
    }
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
    check_read_members(&params)?;
    let kind = if id.is_some() {
        Kind::Request
    } else {
        Kind::Notification
    };
    let mut params = params;
    let target = target_of(&method, &mut params)?;
    let arguments = match &target {
        Target::Tool { arguments, .. } => Some(arguments),
        _ => None,
    };
    if let Some(n) = params
        .values()
        .chain(arguments.into_iter().flat_map(|a| a.values()))
        .find_map(inexact_integer)
    {
        return Err(ParseError::Params(format!(
            "the integer {n} is read as another number by servers that read JSON numbers as \
             doubles (JavaScript, Go's `any`) than by the policy: send it as a string"
        )));
    }
    Ok(Message {
        kind,
        id,
        method,
        params,
        target,
    })
}

/// What a value only checked ([`Mode::Check`]) keeps of what is in it: the integers doubles
/// cannot hold ([`inexact_integer`]), and the containers that hold one (under their keys, in
/// their order). The message is refused for them as when the arguments are kept (the same
/// first integer, so the same error), whether or not a rule reads the arguments.
fn kept_when_checked(value: &Value) -> bool {
    match value {
        Value::Number(_) => inexact_integer(value).is_some(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(members) => !members.is_empty(),
        _ => false,
    }
}

/// An integer in `value` (at any depth) that a decoder reading JSON numbers as IEEE binary64
/// doubles rounds to another value (beyond 2^53: `9007199254740993` is `9007199254740992`
/// in JavaScript's `JSON.parse`). The policy reads integers exactly, so a rule would judge
/// another number than such a server acts on. Depth is bounded by the parse's nesting limit.
fn inexact_integer(value: &Value) -> Option<&Number> {
    match value {
        Value::Number(n) => {
            let exact = match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => (i as f64) as i128 == i128::from(i),
                (None, Some(u)) => (u as f64) as i128 == i128::from(u),
                // Fractions and exponents are doubles to the policy too.
                (None, None) => true,
            };
            (!exact).then_some(n)
        }
        Value::Array(items) => items.iter().find_map(inexact_integer),
        Value::Object(members) => members.values().find_map(inexact_integer),
        _ => None,
    }
}

/// The `params` members the filter reads (for any method, so a method's members cannot hide
/// in another's spelling).
const READ_PARAMS: &[&str] = &[
    "name",
    "arguments",
    "uri",
    "ref",
    // A 2026-07-28 retry: what it answers (`mcp.input.responses`) and that it is one.
    "inputResponses",
    "requestState",
];

/// Refuses a `params` key that a case-insensitive server would take for a member the filter
/// reads while the filter, matching exactly, would not (`"Arguments"` alone: no arguments to
/// the policy, arguments to the server).
fn check_read_members(params: &Map<String, Value>) -> Result<(), ParseError> {
    for key in params.keys() {
        if READ_PARAMS.contains(&key.as_str()) {
            continue;
        }
        let folded = fold_key(&Cow::Borrowed(key.as_str()));
        if let Some(member) = READ_PARAMS.iter().find(|m| m.eq_ignore_ascii_case(&folded)) {
            return Err(ParseError::Key(KeyProblem::CaseVariant(
                member,
                key.clone(),
            )));
        }
    }
    Ok(())
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
            let uri = text("uri")?;
            check_resource_uri(&uri)?;
            Target::Resource { uri }
        }
        // The server completes an argument of the prompt or resource template `ref` names,
        // from its data: the policy decides on that prompt or resource as for a read of it.
        "completion/complete" => completion_target(params)?,
        _ => Target::None,
    })
}

/// The prompt or resource (template) a `completion/complete` is for: `params.ref`,
/// `{"type":"ref/prompt","name":…}` or `{"type":"ref/resource","uri":…}`.
fn completion_target(params: &Map<String, Value>) -> Result<Target, ParseError> {
    let bad = |what: &str| {
        ParseError::Params(format!(
            "completion/complete needs params.ref {what} (a ref/prompt with a name or a ref/resource with a uri)"
        ))
    };
    let reference = params
        .get("ref")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("as an object"))?;
    let text = |member: &str| match reference.get(member) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(bad(&format!("with a non-empty {member}"))),
    };
    match reference.get("type").and_then(Value::as_str) {
        Some("ref/prompt") => Ok(Target::Prompt {
            name: text("name")?,
        }),
        Some("ref/resource") => {
            let uri = text("uri")?;
            check_resource_uri(&uri)?;
            Ok(Target::Resource { uri })
        }
        _ => Err(bad("of a known type")),
    }
}

/// Refuses a resource URI that percent-encodes an unreserved character (`%63` for `c`, `%2D`
/// for `-`): RFC 3986 (2.3) makes it the same URI as the decoded one, and servers decode it
/// (the Python SDK reads `crm://customers/%63-100` as the template value `c-100`), while a rule
/// compares the text (`mcp.resource.uri == "crm://customers/c-100"` would be false). Such
/// encodings are never needed: the client sends the character itself.
pub fn check_resource_uri(uri: &str) -> Result<(), ParseError> {
    let bytes = uri.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'%' {
            continue;
        }
        let hex = |at: usize| bytes.get(at).and_then(|h| (*h as char).to_digit(16));
        if let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) {
            let decoded = char::from(u8::try_from(high * 16 + low).unwrap_or(0));
            if decoded.is_ascii_alphanumeric() || matches!(decoded, '-' | '.' | '_' | '~') {
                return Err(ParseError::Params(format!(
                    "resource URI {uri:?} percent-encodes {decoded:?}, which servers decode: \
                     send the character itself"
                )));
            }
        }
    }
    Ok(())
}

/// The MCP specification's tool names: 1–128 of `[A-Za-z0-9_.-]`. Anything else (look-alike
/// Unicode, zero-width characters, spaces) is refused before policy sees it.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
