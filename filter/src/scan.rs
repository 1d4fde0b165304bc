//! A one-pass, validating cursor over JSON text, for reading a few members of a large message
//! (a 500-tool listing is ~140 KB) without building it.
//!
//! Written by hand because no maintained crate does both at once: serde_json validates, and
//! hands out a member's text as a `RawValue`, but not the byte offsets of the values it skips,
//! so finding the spans of a list's entries took a second scan after a validating pass; two
//! passes over every listing were most of the time a listing cost in Envoy. This cursor
//! accepts exactly what `serde_json::from_slice::<IgnoredAny>` accepts on UTF-8 input (the
//! grammar of RFC 8259, no trailing commas) up to 127 nested containers, and refuses deeper
//! nesting, as serde_json's parser into values does (its skipping of values has no limit;
//! this cursor's state stays fixed in size); `tests` hold the two to the same verdicts.
//!
//! The caller checks UTF-8 first (`str::from_utf8`, which is fast); the cursor checks the
//! rest. Every method returns `None` on anything invalid, and never panics.

use std::ops::Range;

/// Containers nested deeper than this are refused (serde_json's recursion limit).
pub const MAX_DEPTH: u32 = 127;

/// Whether `b` ends a run of plain string contents: the closing quote, a backslash, or a
/// control character (JSON forbids them unescaped).
fn stops_string(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Where the run of plain string contents starting at `i` ends: at a quote, a backslash, a
/// control character, or the end of `bytes`. Most bytes of a listing are string contents, so
/// this goes sixteen bytes at a time with Wasm SIMD, else eight (SWAR), then byte by byte.
pub(crate) fn plain_run(bytes: &[u8], i: usize) -> usize {
    plain_run_words(bytes, simd_run(bytes, i))
}

/// Wasm SIMD: sixteen bytes at a time (three compares and a bitmask), up to the first stop or
/// the last full block; [`plain_run_words`] finishes. The intrinsics used build a vector from
/// two loaded words and never read memory themselves: no `unsafe`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn simd_run(bytes: &[u8], mut i: usize) -> usize {
    use core::arch::wasm32::{u64x2, u8x16_bitmask, u8x16_eq, u8x16_lt, u8x16_splat, v128_or};
    let (quote, backslash, space) = (u8x16_splat(b'"'), u8x16_splat(b'\\'), u8x16_splat(0x20));
    while let Some(block) = bytes.get(i..).and_then(|rest| rest.first_chunk::<16>()) {
        let (Some(lo), Some(hi)) = (block.first_chunk::<8>(), block.last_chunk::<8>()) else {
            break;
        };
        let v = u64x2(u64::from_le_bytes(*lo), u64::from_le_bytes(*hi));
        let stops = v128_or(
            v128_or(u8x16_eq(v, quote), u8x16_eq(v, backslash)),
            u8x16_lt(v, space),
        );
        let mask = u8x16_bitmask(stops);
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    i
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn simd_run(_: &[u8], i: usize) -> usize {
    i
}

/// Eight bytes at a time (SWAR on a `u64`), then byte by byte for the last few.
fn plain_run_words(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `w` below `n` (n <= 0x80). Borrows only run upwards, so
    // the lowest marked byte is exactly the first one below `n`; bytes above it may be marked
    // wrongly, which does not matter: only the first counts.
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    while let Some(word) = bytes.get(i..).and_then(|rest| rest.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*word);
        let stops = below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1);
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while bytes.get(i).is_some_and(|&b| !stops_string(b)) {
        i += 1;
    }
    i
}

/// A cursor over JSON text. Spans are absolute byte ranges into the input.
pub struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Containers the cursor is inside of.
    depth: u32,
    /// A `\u` escape was read in some string (member names included).
    pub unicode_escape: bool,
}

impl<'a> Scan<'a> {
    /// A cursor at the first value of `bytes` (after whitespace).
    pub fn new(bytes: &'a [u8]) -> Self {
        let mut s = Scan {
            bytes,
            pos: 0,
            depth: 0,
            unicode_escape: false,
        };
        s.ws();
        s
    }

    /// The input.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The next byte, whitespace skipped.
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.pos).copied()
    }

    /// How many containers the cursor is inside of.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Moves past `text` if the input continues with exactly these bytes (whitespace skipped
    /// first), where `text` is one value a cursor read as valid at this same depth: the same
    /// bytes from the same depth get the same verdict, so there is nothing to check again.
    /// `escape` is what reading it left in [`Scan::unicode_escape`].
    pub fn skip_known(&mut self, text: &[u8], depth: u32, escape: bool) -> bool {
        self.ws();
        let end = self.pos.saturating_add(text.len());
        let same = depth == self.depth
            && self
                .bytes
                .get(self.pos..end)
                .is_some_and(|here| crate::bytes::same(here, text));
        if same {
            self.pos = end;
            self.unicode_escape |= escape;
        }
        same
    }

    /// Whether only whitespace is left: the end of a whole JSON text.
    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.pos == self.bytes.len()
    }

    fn ws(&mut self) {
        self.pos = ws(self.bytes, self.pos);
    }

    /// Consumes `byte` (after whitespace) or fails.
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Whether the quoted member name at `span` decodes to `key` (escapes such as `\u0069d`
    /// count).
    pub fn key_is(&self, span: &Range<usize>, key: &str) -> bool {
        let Some(raw) = self.bytes.get(span.clone()) else {
            return false;
        };
        if raw.contains(&b'\\') {
            serde_json::from_slice::<String>(raw).is_ok_and(|k| k == key)
        } else {
            raw.get(1..raw.len().saturating_sub(1)) == Some(key.as_bytes())
        }
    }

    /// Reads one string; its span, quotes included.
    pub fn string(&mut self) -> Option<Range<usize>> {
        let start = ws(self.bytes, self.pos);
        self.pos = string(self.bytes, start, &mut self.unicode_escape)?;
        Some(start..self.pos)
    }

    /// Enters a container.
    fn open(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// Reads one value of any kind; its span. Containers are walked without recursion, one
    /// bit per open container saying whether it is an object.
    pub fn value(&mut self) -> Option<Range<usize>> {
        let bytes = self.bytes;
        let start = ws(bytes, self.pos);
        let mut i = start;
        let outer = self.depth;
        let mut depth = outer;
        // u64s: wasm32 has no 128-bit shifts.
        let mut objects = [0u64; 2];
        let escape = &mut self.unicode_escape;
        'value: loop {
            match *bytes.get(i)? {
                b'"' => i = string(bytes, i, escape)?,
                open @ (b'{' | b'[') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    let level = depth - outer - 1;
                    let (word, bit) = ((level / 64) as usize, 1u64 << (level % 64));
                    let object = open == b'{';
                    let word = objects.get_mut(word)?;
                    if object {
                        *word |= bit;
                    } else {
                        *word &= !bit;
                    }
                    i = ws(bytes, i + 1);
                    if bytes.get(i) == Some(&(open + 2)) {
                        // `{}` or `[]` (`}` and `]` are two after `{` and `[`).
                        i += 1;
                        depth -= 1;
                    } else {
                        if object {
                            i = member_name(bytes, i, escape)?;
                        }
                        continue 'value;
                    }
                }
                b't' => i = literal(bytes, i, b"true")?,
                b'f' => i = literal(bytes, i, b"false")?,
                b'n' => i = literal(bytes, i, b"null")?,
                _ => i = number(bytes, i)?,
            }
            // After a value: close containers, or go on to the next member or element.
            loop {
                if depth == outer {
                    self.pos = i;
                    return Some(start..i);
                }
                let level = depth - outer - 1;
                let object = objects.get((level / 64) as usize)? & (1u64 << (level % 64)) != 0;
                i = ws(bytes, i);
                match *bytes.get(i)? {
                    b',' => {
                        i = ws(bytes, i + 1);
                        if object {
                            i = member_name(bytes, i, escape)?;
                        }
                        continue 'value;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                i += 1;
                depth -= 1;
            }
        }
    }

    /// Reads an object, handing each member name's span to `member`, which must read the
    /// value (with [`Scan::value`] or the structured readers).
    pub fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Range<usize>) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        self.open()?;
        if self.peek()? != b'}' {
            loop {
                let key = self.string()?;
                self.expect(b':')?;
                member(self, key)?;
                match self.peek()? {
                    b',' => self.pos += 1,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.pos += 1;
        self.depth -= 1;
        Some(())
    }

    /// Reads an array, calling `element` (which must read it) on each element.
    pub fn elements<T>(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut items = Vec::new();
        self.expect(b'[')?;
        self.open()?;
        if self.peek()? != b']' {
            loop {
                self.ws();
                items.push(element(self)?);
                match self.peek()? {
                    b',' => self.pos += 1,
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.pos += 1;
        self.depth -= 1;
        Some(items)
    }
}

/// Past the whitespace at `i`.
pub(crate) fn ws(bytes: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(i) {
        i += 1;
    }
    i
}

/// Past the string at `i` (which must open it); notes a `\u` escape in `escape`.
pub(crate) fn string(bytes: &[u8], i: usize, escape: &mut bool) -> Option<usize> {
    if bytes.get(i) != Some(&b'"') {
        return None;
    }
    let mut i = i + 1;
    loop {
        i = plain_run(bytes, i);
        match bytes.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match bytes.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = bytes.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    *escape = true;
                    i += 6;
                }
                _ => return None,
            },
            _ => return None, // A control character.
        }
    }
}

/// Past a member's name and its colon, at `i`, and the whitespace after.
fn member_name(bytes: &[u8], i: usize, escape: &mut bool) -> Option<usize> {
    let i = ws(bytes, string(bytes, i, escape)?);
    (bytes.get(i)? == &b':').then(|| ws(bytes, i + 1))
}

/// Past the number at `i` (RFC 8259 grammar).
pub(crate) fn number(bytes: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let some_digits = |i: usize| Some(digits(i)).filter(|&end| end > i);
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match bytes.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i),
        _ => return None,
    };
    if bytes.get(i) == Some(&b'.') {
        i = some_digits(i + 1)?;
    }
    if let Some(b'e' | b'E') = bytes.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = bytes.get(i) {
            i += 1;
        }
        i = some_digits(i)?;
    }
    Some(i)
}

/// Past `word` at `i`.
pub(crate) fn literal(bytes: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    let end = i + word.len();
    (bytes.get(i..end)? == word).then_some(end)
}

/// Whether `bytes` is one JSON text, as `serde_json::from_slice::<IgnoredAny>` would have it
/// (nested at most [`MAX_DEPTH`] deep).
pub fn is_json(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut scan = Scan::new(bytes);
    scan.value().is_some() && scan.at_end()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::IgnoredAny;

    fn serde_says(bytes: &[u8]) -> bool {
        std::str::from_utf8(bytes).is_ok() && serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
    }

    fn same_verdict(text: &[u8]) {
        assert_eq!(
            is_json(text),
            serde_says(text),
            "verdicts differ on {:?}",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn agrees_with_serde_json_on_edge_cases() {
        let cases: &[&str] = &[
            "",
            " ",
            "0",
            "-0",
            "-",
            "01",
            "1.",
            "1.5",
            ".5",
            "1e",
            "1e+",
            "1e-5",
            "1E5",
            "-1.0e+0",
            "+1",
            "0x10",
            "1 2",
            "NaN",
            "Infinity",
            "true",
            "tru",
            "truex",
            "null",
            "nul",
            "false",
            "\"\"",
            "\"",
            "\"a\\\"b\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"\\uD800\"",
            "\"\\x\"",
            "\"\t\"",
            "\"\u{7f}\"",
            "\"é\"",
            "[]",
            "[",
            "]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1,,2]",
            "{}",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,\"a\":1}",
            "{\"a\":1 \"b\":2}",
            "{1:2}",
            "{\"a\":1}x",
            "{\"a\":1}  \n",
            "\u{feff}{}",
            "[{\"a\":[{}]},[[]],{\"b\":{}}]",
            "{\"a\":[1,{\"b\":[true,false,null,\"x\"]}]}",
            " [ 1 , { \"a\" : 2 } ] ",
            "[1}",
            "{\"a\":1]",
            "[[1],2}",
            "\"a\\/b\\b\\f\\n\\r\\t\"",
            "{\"\\u0069d\":1}",
        ];
        for case in cases {
            same_verdict(case.as_bytes());
        }
        same_verdict(b"\"\xff\"");
    }

    #[test]
    fn nesting_deeper_than_127_is_refused() {
        for depth in [1usize, 126, 127, 128, 129, 300] {
            for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
                let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                assert!(serde_says(text.as_bytes()));
                assert_eq!(is_json(text.as_bytes()), depth <= 127, "depth {depth}");
            }
        }
        // Nesting inside the structured readers counts too.
        let nested = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        let (fits, deep) = (nested(126), nested(127));
        assert!(is_json(fits.as_bytes()) && !is_json(deep.as_bytes()));
        let mut s = Scan::new(fits.as_bytes());
        assert!(s.object(|s, _| s.value().map(|_| ())).is_some());
        let mut s = Scan::new(deep.as_bytes());
        assert!(s.object(|s, _| s.value().map(|_| ())).is_none());
    }

    /// JSON values for property tests: every kind of leaf (strings with escapes and characters
    /// that fold case), nested up to six deep; objects of up to `members` members named by
    /// `keys`.
    pub(crate) fn json_value(
        keys: BoxedStrategy<String>,
        members: usize,
    ) -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-zA-Z\"\\\\\\n\u{e9}\u{130}\u{212a}\u{1F600}]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(keys.clone(), inner, 0..members)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// `value`'s text (pretty or compact), and that text damaged at one place: `byte` inserted
    /// (`edit` 0), a byte removed (1) or replaced by `byte` (2) at `at`, or the text cut there.
    pub(crate) fn text_and_damaged(
        value: &serde_json::Value,
        pretty: bool,
        at: prop::sample::Index,
        edit: u8,
        byte: u8,
    ) -> (Vec<u8>, Vec<u8>) {
        let text = if pretty {
            serde_json::to_vec_pretty(value).unwrap_or_default()
        } else {
            serde_json::to_vec(value).unwrap_or_default()
        };
        let mut damaged = text.clone();
        let i = at.index(text.len() + 1);
        match edit {
            0 => damaged.insert(i, byte),
            1 if i < text.len() => {
                damaged.remove(i);
            }
            2 if i < text.len() => damaged[i] = byte,
            _ => damaged.truncate(i),
        }
        (text, damaged)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Valid JSON, pretty or compact, then damaged at one place: the cursor and serde_json
        /// give the same verdict every time.
        #[test]
        fn agrees_with_serde_json(
            value in json_value("[a-z\"]{0,4}".boxed(), 6),
            pretty in any::<bool>(),
            at in any::<prop::sample::Index>(),
            edit in 0u8..4,
            byte in prop::sample::select(b"{}[]:,\"\\ 0-1.eEtfnu\x01x".to_vec()),
        ) {
            let (text, damaged) = text_and_damaged(&value, pretty, at, edit, byte);
            same_verdict(&text);
            same_verdict(&damaged);
        }

        /// The span of every value read is exactly that value's text.
        #[test]
        fn spans_are_the_values_text(value in json_value("[a-z\"]{0,4}".boxed(), 6)) {
            let text = serde_json::to_vec(&value).unwrap_or_default();
            let mut s = Scan::new(&text);
            let span = s.value();
            prop_assert_eq!(span, Some(0..text.len()));
        }
    }
}
