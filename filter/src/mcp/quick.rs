//! The strict parse's quick path: one pass with the validating cursor's pieces ([`crate::scan`])
//! over a message that is plainly valid, which nearly every message is.
//!
//! serde_json drives the strict parse through a visitor (one call per value, every string
//! checked as UTF-8 on its own, every object's keys kept to compare); for a `tools/call` whose
//! arguments nobody reads that was about a quarter of the filter's own work per request. This
//! path builds the same [`Value`] (the same [`Mode`]s: what is kept, what is only checked) in
//! one pass over text checked as UTF-8 once. Whatever it is not sure of — a key with an escape,
//! a key problem, nesting near a limit, anything invalid — it leaves to the serde-based parse,
//! which gives the verdict and the error message. So it only ever has to be no more lenient
//! than that parse, and where it accepts, give the same value: its tests (and the `jsonrpc`
//! fuzz target) hold the two to that.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use super::{Mode, Seen};
use crate::scan;

/// serde_json refuses nesting past 128 containers on its own; this path leaves anything near
/// it to serde_json.
const NESTING: usize = 100;

/// The strict parse of `bytes`, or `None` for the serde-based parse to decide.
pub(super) fn parse(bytes: &[u8], max_depth: usize, mode: Mode) -> Option<Value> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut quick = Quick {
        text,
        pos: 0,
        max_depth: max_depth.min(NESTING),
    };
    let value = quick.value(0, mode)?;
    (scan::ws(bytes, quick.pos) == bytes.len()).then_some(value)
}

struct Quick<'a> {
    /// The whole input, valid UTF-8.
    text: &'a str,
    pos: usize,
    /// Containers at this depth or deeper are left to serde_json (the top value is at 0).
    max_depth: usize,
}

impl<'a> Quick<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// One value from `self.pos`, at `depth`, read as `mode` says.
    fn value(&mut self, depth: usize, mode: Mode) -> Option<Value> {
        let bytes = self.bytes();
        let i = scan::ws(bytes, self.pos);
        let (end, value) = match *bytes.get(i)? {
            b'{' => {
                self.pos = i + 1;
                return self.object(depth, mode);
            }
            b'[' => {
                self.pos = i + 1;
                return self.array(depth, mode);
            }
            b'"' => {
                let mut unicode = false;
                let end = scan::string(bytes, i, &mut unicode)?;
                let quoted = self.text.get(i..end)?;
                (end, Value::String(string(quoted, unicode, mode)?))
            }
            b't' => (scan::literal(bytes, i, b"true")?, Value::Bool(true)),
            b'f' => (scan::literal(bytes, i, b"false")?, Value::Bool(false)),
            b'n' => (scan::literal(bytes, i, b"null")?, Value::Null),
            _ => {
                let end = scan::number(bytes, i)?;
                (end, Value::Number(number(self.text.get(i..end)?)?))
            }
        };
        self.pos = end;
        Some(value)
    }

    /// An object's members, after its `{`. Keys are compared as the serde-based parse
    /// compares them ([`Seen`]); a key with an escape, or any key problem, is left to it.
    fn object(&mut self, depth: usize, mode: Mode) -> Option<Value> {
        if depth >= self.max_depth {
            return None;
        }
        let bytes = self.bytes();
        let mut out = Map::new();
        let mut keys = Keys::Ascii {
            keys: [""; ASCII_KEYS],
            len: 0,
        };
        let mut i = scan::ws(bytes, self.pos);
        if bytes.get(i) == Some(&b'}') {
            self.pos = i + 1;
            return Some(Value::Object(out));
        }
        loop {
            let mut unicode = false;
            let end = scan::string(bytes, i, &mut unicode)?;
            let key = self.text.get(i + 1..end.saturating_sub(1))?;
            if key.as_bytes().contains(&b'\\') {
                return None;
            }
            keys.add(key)?;
            i = scan::ws(bytes, end);
            if bytes.get(i) != Some(&b':') {
                return None;
            }
            self.pos = i + 1;
            let inner = match (mode, key) {
                (Mode::Message, "params") => Mode::Params,
                (Mode::Params, "arguments") | (Mode::Check, _) => Mode::Check,
                _ => Mode::Keep,
            };
            let value = self.value(depth + 1, inner)?;
            if mode != Mode::Check || super::kept_when_checked(&value) {
                out.insert(key.to_owned(), value);
            }
            i = scan::ws(bytes, self.pos);
            match bytes.get(i)? {
                b',' => i = scan::ws(bytes, i + 1),
                b'}' => {
                    self.pos = i + 1;
                    return Some(Value::Object(out));
                }
                _ => return None,
            }
        }
    }

    /// An array's elements, after its `[`.
    fn array(&mut self, depth: usize, mode: Mode) -> Option<Value> {
        if depth >= self.max_depth {
            return None;
        }
        // A batch's elements are messages.
        let inner = match mode {
            Mode::Message if depth == 0 => Mode::Message,
            Mode::Check => Mode::Check,
            _ => Mode::Keep,
        };
        let bytes = self.bytes();
        let mut out = Vec::new();
        let i = scan::ws(bytes, self.pos);
        if bytes.get(i) == Some(&b']') {
            self.pos = i + 1;
            return Some(Value::Array(out));
        }
        loop {
            let value = self.value(depth + 1, inner)?;
            if mode != Mode::Check || super::kept_when_checked(&value) {
                out.push(value);
            }
            let i = scan::ws(bytes, self.pos);
            match bytes.get(i)? {
                b',' => self.pos = i + 1,
                b']' => {
                    self.pos = i + 1;
                    return Some(Value::Array(out));
                }
                _ => return None,
            }
        }
    }
}

/// Up to this many keys of one object are kept on the stack.
const ASCII_KEYS: usize = 16;

/// The keys of one object so far, compared as [`Seen`] compares them. Printable ASCII keys
/// (nearly all) fold to their ASCII lower case and nothing else folds to them but keys with
/// other characters, so while every key is one they are compared by ASCII case, on the stack;
/// at the first key that is not, or past [`ASCII_KEYS`], [`Seen`] takes over.
enum Keys<'a> {
    Ascii {
        keys: [&'a str; ASCII_KEYS],
        len: usize,
    },
    Seen(Seen<'a>),
}

impl<'a> Keys<'a> {
    /// Adds a key; `None` at any key problem (left to the serde-based parse to name).
    fn add(&mut self, key: &'a str) -> Option<()> {
        if let Keys::Ascii { keys, len } = self {
            let printable = key.bytes().all(|b| (0x20..0x7f).contains(&b));
            let earlier = keys.get(..*len)?;
            if printable && *len < ASCII_KEYS {
                if earlier.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                    return None;
                }
                *keys.get_mut(*len)? = key;
                *len += 1;
                return Some(());
            }
            let mut seen = Seen::default();
            for k in earlier {
                seen.add(Cow::Borrowed(*k)).ok()?;
            }
            *self = Keys::Seen(seen);
        }
        match self {
            Keys::Seen(seen) => seen.add(Cow::Borrowed(key)).ok(),
            Keys::Ascii { .. } => None,
        }
    }
}

/// A string value (`quoted`: its text, quotes included, which the cursor found valid but for
/// what a `\u` escape decodes to). Only checked ([`Mode::Check`]), it comes out empty, as from
/// the serde-based parse. Escapes are decoded by serde_json, which refuses a lone surrogate.
fn string(quoted: &str, unicode: bool, mode: Mode) -> Option<String> {
    let inner = quoted.get(1..quoted.len().saturating_sub(1))?;
    if mode == Mode::Check {
        if unicode {
            serde_json::from_str::<String>(quoted).ok()?;
        }
        return Some(String::new());
    }
    if inner.as_bytes().contains(&b'\\') {
        serde_json::from_str(quoted).ok()
    } else {
        Some(inner.to_owned())
    }
}

/// A number's value, from text the cursor found to be one. Up to 18 digits without sign,
/// fraction or exponent is read here (it fits in a `u64`, as serde_json reads it); anything
/// else by serde_json, which refuses what overflows a double. An integer beyond 64 bits is
/// left to the serde-based parse, whose caller checks how doubles read it
/// ([`super::inexact_wide_integer`]).
fn number(text: &str) -> Option<Number> {
    let digits = text.as_bytes();
    if digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d.wrapping_sub(b'0')));
        return Some(Number::from(n));
    }
    if super::integer_beyond_64_bits(text) {
        return None;
    }
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::{parse_serde, DEFAULT_MAX_DEPTH};
    use crate::scan::tests::{json_value, text_and_damaged};
    use proptest::prelude::*;

    const MODES: [Mode; 4] = [Mode::Keep, Mode::Message, Mode::Params, Mode::Check];

    /// Where the quick path accepts, the serde-based parse accepts the same value.
    fn agrees(text: &[u8], max_depth: usize) {
        for mode in MODES {
            if let Some(quick) = parse(text, max_depth, mode) {
                let serde = parse_serde(text, max_depth, mode);
                assert_eq!(
                    serde.as_ref().ok(),
                    Some(&quick),
                    "{mode:?} at depth {max_depth}: the quick path accepted {:?}, serde: {serde:?}",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }

    fn quick_accepts(text: &str) -> bool {
        parse(text.as_bytes(), DEFAULT_MAX_DEPTH, Mode::Keep).is_some()
    }

    #[test]
    fn plain_messages_take_the_quick_path_and_read_the_same() {
        let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search",
            "arguments":{"q":"caf\u00e9 \"x\"","n":-0,"big":10000000000000000000,"neg":-1234567890123456,"wide":1.2345678901234568e23,
            "f":1.5e3,"deep":[{"a":[true,false,null]},[]],"r":"é"}}}"#;
        let many = "{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,\"f\":1,\"g\":1,\"h\":1,\"i\":1,\"j\":1,\"k\":1,\"l\":1,\"m\":1,\"n\":1,\"o\":1,\"p\":1,\"q\":1,\"r\":1}";
        let unicode = "{\"a\":1,\"\u{e9}\":1,\"E\":1,\"\u{212a}\":1}";
        for text in [
            call,
            many,
            unicode,
            "[]",
            "{}",
            " 0 ",
            "\"\"",
            "[1,{\"a\":{}}]",
        ] {
            assert!(quick_accepts(text), "{text}");
            agrees(text.as_bytes(), DEFAULT_MAX_DEPTH);
        }
        // An integer beyond 64 bits is the serde-based parse's (its caller checks the text).
        for text in ["123456789012345678901234", "[-9223372036854775809]"] {
            assert!(!quick_accepts(text), "{text}");
        }
        let checked = parse(call.as_bytes(), 64, Mode::Message);
        let arguments = checked
            .as_ref()
            .and_then(|m| m.pointer("/params/arguments"))
            .cloned();
        assert_eq!(
            arguments,
            Some(Value::Object(Map::new())),
            "checked, not kept"
        );
    }

    #[test]
    fn what_it_is_not_sure_of_goes_to_serde() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"A":2}"#,
            r#"{"Kind":1,"Kind":2}"#,
            "{\"kind\":1,\"\u{212a}IND\":2}",
            "{\"s\":1,\"\u{17f}\":2}",
            "{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,\"f\":1,\"g\":1,\"h\":1,\"i\":1,\"j\":1,\"k\":1,\"l\":1,\"m\":1,\"n\":1,\"o\":1,\"p\":1,\"q\":1,\"A\":1}",
            "{\"a\":1,\"\u{e9}\":1,\"A\":1}",
            r#"{"\u0061":1}"#,
            r#"{"a\u0001":1}"#,
            r#""\ud800""#,
            r#"{"a":"\udc00"}"#,
            "1e400",
            "-1e400",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1 2",
            "\u{feff}{}",
            "",
            "[",
            "\"\t\"",
            "truex",
        ] {
            assert!(!quick_accepts(text), "{text}");
            agrees(text.as_bytes(), DEFAULT_MAX_DEPTH);
        }
        // Checked only, a lone surrogate in the arguments is refused all the same.
        let lone = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":"\ud800"}}}"#;
        assert!(parse(lone, 64, Mode::Message).is_none());
    }

    #[test]
    fn nesting_at_the_limit_goes_to_serde() {
        for depth in [1usize, 2, 63, 64, 65, 99, 100, 101, 130] {
            for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
                let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                for max in [1usize, 2, 64, 128] {
                    let quick = parse(text.as_bytes(), max, Mode::Keep).is_some();
                    assert_eq!(quick, depth <= max.min(NESTING), "{depth} in {max}");
                    agrees(text.as_bytes(), max);
                }
            }
        }
    }

    /// Member names as messages have them, and case variants and folds of short ones.
    fn keys() -> BoxedStrategy<String> {
        prop_oneof![
            Just("params".to_string()),
            Just("arguments".to_string()),
            "[a-zA-Z\u{17f}\u{212a}]{0,3}"
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Valid JSON, then damaged at one place (a byte inserted, removed or replaced, or the
        /// text cut): wherever the quick path accepts, serde gives the same value.
        #[test]
        fn never_more_lenient_than_serde(
            value in json_value(keys(), 20),
            pretty in any::<bool>(),
            at in any::<prop::sample::Index>(),
            edit in 0u8..4,
            byte in prop::sample::select(b"{}[]:,\"\\ 0-1.eEtfnuAa\x01x".to_vec()),
            max_depth in prop::sample::select(vec![1usize, 3, 64]),
        ) {
            let (text, damaged) = text_and_damaged(&value, pretty, at, edit, byte);
            agrees(&text, max_depth);
            agrees(&damaged, max_depth);
        }
    }
}
