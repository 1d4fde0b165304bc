//! JSON-RPC body parsing (`mcp::parse_message`), on arbitrary bytes.
//!
//! Properties:
//! 1. It never panics (nor overflows the stack: nesting is bounded by the depth limit).
//! 2. The strict parser is never more permissive than serde_json: whatever it accepts,
//!    `serde_json::from_slice::<Value>` accepts too, as an object, and `parse_strict_json`
//!    yields exactly the value serde_json does (no key or number is read differently).
//! 3. An accepted message is well-formed: its id, when present, is a string or an integer, and
//!    a request or notification has a method while a response has none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::mcp::{
    parse_message, parse_message_for, parse_strict_json, Arguments, Kind, DEFAULT_MAX_DEPTH,
};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
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
});
