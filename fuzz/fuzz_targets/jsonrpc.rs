//! JSON-RPC body parsing (`mcp::parse_message`), on arbitrary bytes.
//!
//! Properties:
//! 1. It never panics (nor overflows the stack: nesting is bounded by the depth limit).
//! 2. The strict parser is never more permissive than serde_json: whatever it accepts,
//!    `serde_json::from_slice::<Value>` accepts too, as an object, and `parse_strict_json`
//!    yields exactly the value serde_json does (no key or number is read differently).
//! 3. An accepted message is well-formed: its id, when present, is a string or an integer, and
//!    a request or notification has a method while a response has none.
//! 4. An accepted message reads the same to a server that decodes case-insensitively with the
//!    last key winning (Go's `encoding/json`, Jackson or .NET with case-insensitive properties)
//!    as to the policy: the id, the method, the tool name and every argument the filter read
//!    (at every depth), the prompt name, the resource URI. The reference decoder below keeps
//!    every member in order and looks names up under its own case folding (Rust's per-character
//!    upper then lower case), independent of the filter's fold table.
//! 5. The one-pass cursor that reads answers (`scan::is_json`) accepts exactly the JSON
//!    serde_json accepts (`IgnoredAny`, on UTF-8), up to its nesting limit.
//! 6. The strict parse's quick path (`mcp::quick`) gives the same value or the same error as
//!    the serde-based parse it stands in for.
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use mcp_guard::mcp::{
    parse_message, parse_message_for, parse_strict_json, parse_strict_json_without_quick_path,
    Arguments, Kind, Message, Target, DEFAULT_MAX_DEPTH,
};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A JSON value as a case-insensitive, last-wins decoder sees it: objects keep every member,
/// in order.
#[derive(Debug)]
enum Loose {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Loose>),
    Object(Vec<(String, Loose)>),
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Loose, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Loose, E> {
                Ok(Loose::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
                Ok(Loose::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
                Ok(Loose::Number(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Loose, E> {
                Ok(Number::from_f64(v).map_or(Loose::Null, Loose::Number))
            }
            fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose::String(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Loose::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Loose>()? {
                    out.push(entry);
                }
                Ok(Loose::Object(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The reference decoder's case folding: ASCII case, and for other characters the lower case
/// of the upper case (when each is one character).
fn fold(key: &str) -> String {
    let single = |mut it: Box<dyn Iterator<Item = char>>| {
        let first = it.next()?;
        it.next().is_none().then_some(first)
    };
    key.chars()
        .map(|c| {
            single(Box::new(c.to_uppercase()))
                .and_then(|u| single(Box::new(u.to_lowercase())))
                .unwrap_or(c)
        })
        .collect()
}

impl Loose {
    /// A member as the decoder finds it: the last whose name folds like `name`.
    fn get(&self, name: &str) -> Option<&Loose> {
        let Loose::Object(members) = self else {
            return None;
        };
        let name = fold(name);
        members.iter().rev().find(|(k, _)| fold(k) == name).map(|(_, v)| v)
    }

    /// Whether the decoder reads this value as the filter's `value`: same scalars, same items,
    /// and an object with exactly the filter's members, each found by a folded lookup.
    fn reads_as(&self, value: &Value) -> bool {
        match (self, value) {
            (Loose::Null, Value::Null) => true,
            (Loose::Bool(a), Value::Bool(b)) => a == b,
            (Loose::Number(a), Value::Number(b)) => a == b,
            (Loose::String(a), Value::String(b)) => a == b,
            (Loose::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.reads_as(y))
            }
            (Loose::Object(members), Value::Object(map)) => self.has_exactly(members, map),
            _ => false,
        }
    }

    fn has_exactly(&self, members: &[(String, Loose)], map: &Map<String, Value>) -> bool {
        let mut names: Vec<String> = members.iter().map(|(k, _)| fold(k)).collect();
        names.sort();
        names.dedup();
        names.len() == map.len()
            && map
                .iter()
                .all(|(k, v)| self.get(k).is_some_and(|found| found.reads_as(v)))
    }

    fn str_member(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Loose::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Property 4 for one accepted message.
fn same_to_a_case_insensitive_decoder(data: &[u8], message: &Message) {
    let loose: Loose = serde_json::from_slice(data).expect("accepted, so JSON");
    let id = loose.get("id");
    match (&message.id, id) {
        (None, None) => {}
        (Some(mine), Some(theirs)) => assert!(theirs.reads_as(mine), "id {mine} / {theirs:?}"),
        other => panic!("the id differs: {other:?}"),
    }
    if message.kind == Kind::Response {
        return;
    }
    assert_eq!(loose.str_member("method"), Some(message.method.as_str()), "method");
    let params = loose.get("params");
    let param = |name: &str| params.and_then(|p| p.str_member(name));
    match &message.target {
        Target::Tool { name, arguments } => {
            assert_eq!(param("name"), Some(name.as_str()), "tool name");
            match params.and_then(|p| p.get("arguments")) {
                None | Some(Loose::Null) => assert!(arguments.is_empty(), "arguments"),
                Some(theirs) => assert!(
                    theirs.reads_as(&Value::Object(arguments.clone())),
                    "arguments {arguments:?} / {theirs:?}"
                ),
            }
        }
        Target::Prompt { name } => assert_eq!(param("name"), Some(name.as_str()), "prompt"),
        Target::Resource { uri } => assert_eq!(param("uri"), Some(uri.as_str()), "uri"),
        Target::None => {}
    }
}

/// Containers nested at most this deep (an over-estimate: brackets in strings count too).
fn shallow(data: &[u8]) -> bool {
    let mut depth = 0usize;
    data.iter().all(|b| {
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        depth <= mcp_guard::scan::MAX_DEPTH as usize
    })
}

fuzz_target!(|data: &[u8]| {
    let serde_says = std::str::from_utf8(data).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    let scan_says = mcp_guard::scan::is_json(data);
    assert!(!scan_says || serde_says, "the cursor accepted what serde_json refuses");
    if shallow(data) {
        assert_eq!(scan_says, serde_says, "the cursor and serde_json disagree");
    }
    // The strict parse's quick path changes nothing: the same value, or the same error.
    assert_eq!(
        parse_strict_json(data, DEFAULT_MAX_DEPTH),
        parse_strict_json_without_quick_path(data, DEFAULT_MAX_DEPTH),
        "the quick path and serde_json's parse differ"
    );
    // The parse that drops unread arguments decides exactly as the one that keeps them.
    let checked = parse_message_for(data, DEFAULT_MAX_DEPTH, Arguments::Check);
    let Ok(message) = parse_message(data, DEFAULT_MAX_DEPTH) else {
        assert!(checked.is_err(), "only the argument-dropping parse accepted it");
        return;
    };
    assert_eq!(
        checked.as_ref().ok(),
        Some(&message.without_arguments()),
        "the two parses differ"
    );
    let lenient: Value = serde_json::from_slice(data)
        .unwrap_or_else(|e| panic!("strict parse accepted what serde_json rejects: {e}"));
    assert!(lenient.is_object(), "accepted a non-object: {lenient}");
    let strict = parse_strict_json(data, DEFAULT_MAX_DEPTH).expect("parse_message accepted it");
    assert_eq!(strict, lenient, "strict and lenient parses differ");

    match &message.id {
        None | Some(Value::String(_)) => {}
        Some(Value::Number(n)) => assert!(n.is_i64() || n.is_u64(), "non-integer id {n}"),
        Some(other) => panic!("id of the wrong type: {other}"),
    }
    match message.kind {
        Kind::Response => assert!(message.method.is_empty() && message.id.is_some()),
        Kind::Request => assert!(message.id.is_some()),
        Kind::Notification => assert!(message.id.is_none()),
    }
    same_to_a_case_insensitive_decoder(data, &message);
});
