//! Per-caller filtering of discovery results: `tools/list`, `prompts/list`, `resources/list`.
//!
//! A caller should only see what it may use. [`filter_result`] takes one whole JSON-RPC
//! message from the server (a JSON body, or the data of one SSE event) and drops the list
//! entries the caller is not allowed.
//!
//! The message is validated by serde_json without building anything (UTF-8, then syntax), then
//! a small scanner, which only ever sees valid JSON, locates the list and its entries, and the
//! hidden entries are cut out of the original bytes. Everything else stays byte-for-byte as the
//! server wrote it (member order, number formatting, whitespace). This is several times faster
//! than parsing into a `serde_json::Value` and serializing again, which would also reorder
//! every object's members (serde_json is built without `preserve_order`).
//!
//! Members the decision depends on (`id`, `result`, the list, each entry's name) must appear
//! once: a duplicate makes the message [`Filtered::Unparseable`] (an entry with a duplicate
//! name is hidden), so that no client can read a different list than the one filtered.

use std::ops::Range;

use serde::de::IgnoredAny;
use serde_json::Value;

/// Which discovery list a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
}

impl ListKind {
    /// The list kind answered by a request `method`, if any.
    pub fn for_method(method: &str) -> Option<ListKind> {
        match method {
            "tools/list" => Some(ListKind::Tools),
            "prompts/list" => Some(ListKind::Prompts),
            "resources/list" => Some(ListKind::Resources),
            _ => None,
        }
    }

    /// The member of `result` holding the list.
    pub fn list_key(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
        }
    }

    /// The member of each entry that `allowed` is asked about.
    pub fn name_key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
        }
    }
}

/// The outcome of [`filter_result`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// A matching list response with nothing hidden: forward the original bytes.
    Unchanged,
    /// A matching list response with `hidden` entries removed: forward `body` instead.
    Rewritten { body: Vec<u8>, hidden: usize },
    /// Not the awaited list response (notification, server request, error, other id, no
    /// list): forward unchanged.
    NotAList,
    /// Not JSON, not UTF-8, or ambiguous (a duplicate `id`, `result` or list member): the
    /// caller should fail closed.
    Unparseable,
}

/// Filters the list in `message` if it is a response (a `result` member) whose `id` equals
/// `expected_id` (any id when `None`) and whose result holds the `kind` list array. Entries are
/// kept when their name (`name`, or `uri` for resources) is a string that `allowed` accepts;
/// everything else in the message is kept as is. A JSON-RPC batch is filtered member by member.
pub fn filter_result(
    message: &[u8],
    kind: ListKind,
    expected_id: Option<&Value>,
    allowed: &mut dyn FnMut(&str) -> bool,
) -> Filtered {
    filter_entries(message, kind, expected_id, &mut |name, _| allowed(name))
}

/// [`filter_result`], with each entry's JSON text (as the server wrote it) handed to `allowed`
/// beside its name: what tool pinning digests.
pub fn filter_entries(
    message: &[u8],
    kind: ListKind,
    expected_id: Option<&Value>,
    allowed: &mut dyn FnMut(&str, &[u8]) -> bool,
) -> Filtered {
    if std::str::from_utf8(message).is_err()
        || serde_json::from_slice::<IgnoredAny>(message).is_err()
    {
        return Filtered::Unparseable;
    }
    let mut top = Scan::new(message, 0);
    let lists = if top.peek() == Some(b'[') {
        top.elements(|s| Some(s.message(kind, expected_id)))
    } else {
        Some(vec![top.message(kind, expected_id)])
    };
    // The scanner cannot fail on valid JSON; if it ever did, fail closed.
    let Some(lists) = lists else {
        return Filtered::Unparseable;
    };

    // Each list to shorten: the span of its array and the spans of the entries to keep.
    let mut edits: Vec<(Range<usize>, Vec<Range<usize>>)> = Vec::new();
    let mut found = false;
    let mut hidden = 0;
    for list in lists {
        let (array, entries) = match list {
            Ok(Some(list)) => list,
            Ok(None) => continue,
            Err(Ambiguous) => return Filtered::Unparseable,
        };
        found = true;
        let total = entries.len();
        let kept: Vec<Range<usize>> = entries
            .into_iter()
            .filter(|(entry, name)| {
                let text = message.get(entry.clone()).unwrap_or_default();
                name.as_deref().is_some_and(|n| allowed(n, text))
            })
            .map(|(entry, _)| entry)
            .collect();
        if kept.len() < total {
            hidden += total - kept.len();
            edits.push((array, kept));
        }
    }
    match (found, hidden) {
        (false, _) => Filtered::NotAList,
        (true, 0) => Filtered::Unchanged,
        (true, hidden) => splice(message, &edits).map_or(Filtered::Unparseable, |body| {
            Filtered::Rewritten { body, hidden }
        }),
    }
}

/// A member that must be unique appears twice, or the scanner failed.
struct Ambiguous;

/// A list entry: its span and its name, if it is an object with one string name.
type Entry = (Range<usize>, Option<String>);

/// A list: the span of its array and its entries.
type List = (Range<usize>, Vec<Entry>);

/// Copies `bytes`, replacing each array span with `[` kept entries joined by `,` `]`.
fn splice(bytes: &[u8], edits: &[(Range<usize>, Vec<Range<usize>>)]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut cursor = 0;
    for (array, kept) in edits {
        out.extend_from_slice(bytes.get(cursor..array.start)?);
        out.push(b'[');
        for (i, entry) in kept.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(bytes.get(entry.clone())?);
        }
        out.push(b']');
        cursor = array.end;
    }
    out.extend_from_slice(bytes.get(cursor..)?);
    Some(out)
}

/// A cursor over JSON already validated by serde_json, reading it in one pass. Every method
/// returns `None` rather than panic if the input is not what it expects. Spans are absolute
/// byte ranges into `bytes`.
struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    fn new(bytes: &'a [u8], pos: usize) -> Self {
        let mut s = Scan { bytes, pos };
        s.ws();
        s
    }

    /// Reads one message: its list if it is the awaited list response.
    fn message(
        &mut self,
        kind: ListKind,
        expected_id: Option<&Value>,
    ) -> Result<Option<List>, Ambiguous> {
        self.ws();
        if self.peek() != Some(b'{') {
            self.value().ok_or(Ambiguous)?;
            return Ok(None);
        }
        let mut ids = Vec::new();
        let mut results = Vec::new();
        self.object(|s, key| {
            if s.key_is(&key, "id") {
                ids.push(s.value()?);
            } else if s.key_is(&key, "result") {
                results.push(s.result(kind)?);
            } else {
                s.value()?;
            }
            Some(())
        })
        .ok_or(Ambiguous)?;
        if results.is_empty() {
            return Ok(None);
        }
        if results.len() > 1 || (expected_id.is_some() && ids.len() > 1) {
            return Err(Ambiguous);
        }
        if let Some(expected) = expected_id {
            let id = ids.first().and_then(|v| self.bytes.get(v.clone()));
            let id = id.and_then(|v| serde_json::from_slice::<Value>(v).ok());
            if id.as_ref() != Some(expected) {
                return Ok(None);
            }
        }
        let mut lists = results.pop().unwrap_or_default();
        if lists.len() > 1 {
            return Err(Ambiguous);
        }
        Ok(lists.pop().flatten())
    }

    /// Reads a `result` value: one item per list member, the list if it is an array.
    fn result(&mut self, kind: ListKind) -> Option<Vec<Option<List>>> {
        let mut lists = Vec::new();
        if self.peek()? != b'{' {
            self.value()?;
            return Some(lists);
        }
        self.object(|s, key| {
            if !s.key_is(&key, kind.list_key()) {
                s.value()?;
            } else if s.peek()? == b'[' {
                let start = s.pos;
                let entries = s.entries(kind.name_key())?;
                lists.push(Some((start..s.pos, entries)));
            } else {
                s.value()?;
                lists.push(None);
            }
            Some(())
        })?;
        Some(lists)
    }

    /// Reads an array of list entries and the `name_key` string of each one.
    fn entries(&mut self, name_key: &str) -> Option<Vec<Entry>> {
        self.elements(|s| {
            let start = s.pos;
            if s.peek()? != b'{' {
                s.value()?;
                return Some((start..s.pos, None));
            }
            let mut names = Vec::new();
            s.object(|s, key| {
                if s.key_is(&key, name_key) {
                    names.push(s.value()?);
                } else {
                    s.value()?;
                }
                Some(())
            })?;
            // No name, several names or a name that is not a string: no entry.
            let name = match names.as_slice() {
                [name] => serde_json::from_slice::<String>(s.bytes.get(name.clone())?).ok(),
                _ => None,
            };
            Some((start..s.pos, name))
        })
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Consumes `byte` (after whitespace) or fails.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Advances to the next byte matching `stop`; that byte.
    fn seek(&mut self, stop: impl Fn(u8) -> bool) -> Option<u8> {
        let offset = self.bytes.get(self.pos..)?.iter().position(|&b| stop(b))?;
        self.pos += offset;
        self.peek()
    }

    /// Whether the quoted key at `span` decodes to `key` (escapes such as `\u0069d` count).
    fn key_is(&self, span: &Range<usize>, key: &str) -> bool {
        let Some(raw) = self.bytes.get(span.clone()) else {
            return false;
        };
        if raw.contains(&b'\\') {
            serde_json::from_slice::<String>(raw).is_ok_and(|k| k == key)
        } else {
            raw.get(1..raw.len().saturating_sub(1)) == Some(key.as_bytes())
        }
    }

    /// Skips one value; its span.
    fn value(&mut self) -> Option<Range<usize>> {
        self.ws();
        let start = self.pos;
        match self.peek()? {
            b'"' => return self.string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.seek(|b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        _ => depth = depth.checked_sub(1)?,
                    }
                    self.pos += 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
            _ => {
                let end = |b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r');
                if self.seek(end).is_none() {
                    self.pos = self.bytes.len();
                }
            }
        }
        Some(start..self.pos)
    }

    /// Skips a string; its span, quotes included.
    fn string(&mut self) -> Option<Range<usize>> {
        self.ws();
        let start = self.pos;
        self.expect(b'"')?;
        while self.seek(|b| b == b'"' || b == b'\\')? == b'\\' {
            self.pos += 2;
        }
        self.pos += 1;
        Some(start..self.pos)
    }

    /// Reads an object, handing each key's span to `member`, which must consume the value.
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Range<usize>) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        self.ws();
        if self.peek()? != b'}' {
            loop {
                let key = self.string()?;
                self.expect(b':')?;
                self.ws();
                member(self, key)?;
                self.ws();
                match self.peek()? {
                    b',' => self.pos += 1,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.pos += 1;
        Some(())
    }

    /// Reads an array, calling `element` (which must consume it) on each element.
    fn elements<T>(&mut self, mut element: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let mut items = Vec::new();
        self.expect(b'[')?;
        self.ws();
        if self.peek()? != b']' {
            loop {
                self.ws();
                items.push(element(self)?);
                self.ws();
                match self.peek()? {
                    b',' => self.pos += 1,
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.pos += 1;
        Some(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::{Event, Rewrite, SseRewriter};
    use serde_json::json;

    fn filter(message: &Value, kind: ListKind, id: Option<Value>, allow: &[&str]) -> Filtered {
        let bytes = serde_json::to_vec(message).unwrap();
        filter_result(&bytes, kind, id.as_ref(), &mut |n| allow.contains(&n))
    }

    fn rewritten(f: Filtered) -> (Value, usize) {
        match f {
            Filtered::Rewritten { body, hidden } => {
                (serde_json::from_slice(&body).unwrap(), hidden)
            }
            other => panic!("expected Rewritten, got {other:?}"),
        }
    }

    fn tools(names: &[&str]) -> Vec<Value> {
        names
            .iter()
            .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
            .collect()
    }

    #[test]
    fn methods() {
        assert_eq!(ListKind::for_method("tools/list"), Some(ListKind::Tools));
        assert_eq!(
            ListKind::for_method("prompts/list"),
            Some(ListKind::Prompts)
        );
        assert_eq!(
            ListKind::for_method("resources/list"),
            Some(ListKind::Resources)
        );
        assert_eq!(ListKind::for_method("resources/templates/list"), None);
        assert_eq!(ListKind::for_method("tools/call"), None);
    }

    #[test]
    fn tools_filtered_other_members_kept() {
        let msg = json!({
            "jsonrpc": "2.0", "id": 3,
            "result": {"tools": tools(&["a", "b", "c"]), "nextCursor": "page-2", "_meta": {"k": 1}},
        });
        let (out, hidden) = rewritten(filter(&msg, ListKind::Tools, Some(json!(3)), &["a", "c"]));
        assert_eq!(hidden, 1);
        assert_eq!(
            out,
            json!({
                "jsonrpc": "2.0", "id": 3,
                "result": {"tools": tools(&["a", "c"]), "nextCursor": "page-2", "_meta": {"k": 1}},
            })
        );
    }

    #[test]
    fn prompts_and_resources() {
        let msg = json!({"jsonrpc": "2.0", "id": "p", "result": {"prompts": [{"name": "x"}, {"name": "y"}]}});
        let (out, hidden) = rewritten(filter(&msg, ListKind::Prompts, Some(json!("p")), &["y"]));
        assert_eq!(
            (out["result"]["prompts"].clone(), hidden),
            (json!([{"name": "y"}]), 1)
        );

        let msg = json!({"jsonrpc": "2.0", "id": 1, "result": {"resources": [
            {"uri": "file:///a", "name": "y"}, {"uri": "file:///b", "name": "x"},
        ]}});
        // Resources are matched on `uri`, not `name`.
        let (out, _) = rewritten(filter(&msg, ListKind::Resources, None, &["file:///b", "y"]));
        assert_eq!(
            out["result"]["resources"],
            json!([{"uri": "file:///b", "name": "x"}])
        );
        // The wrong kind finds no list.
        assert_eq!(filter(&msg, ListKind::Tools, None, &[]), Filtered::NotAList);
    }

    #[test]
    fn malformed_entries_are_removed() {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
            {"name": "ok"}, {"title": "no name"}, {"name": 5}, {"name": null}, "ok", null,
        ]}});
        let (out, hidden) = rewritten(filter(&msg, ListKind::Tools, Some(json!(1)), &["ok"]));
        assert_eq!(hidden, 5);
        assert_eq!(out["result"]["tools"], json!([{"name": "ok"}]));
    }

    #[test]
    fn nothing_hidden_is_unchanged() {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools(&["a", "b"])}});
        assert_eq!(
            filter(&msg, ListKind::Tools, Some(json!(1)), &["a", "b"]),
            Filtered::Unchanged
        );
        let empty = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}});
        assert_eq!(
            filter(&empty, ListKind::Tools, None, &[]),
            Filtered::Unchanged
        );
    }

    #[test]
    fn everything_hidden() {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools(&["a", "b"])}});
        let (out, hidden) = rewritten(filter(&msg, ListKind::Tools, None, &[]));
        assert_eq!((out["result"]["tools"].clone(), hidden), (json!([]), 2));
    }

    #[test]
    fn other_messages_are_not_lists() {
        let id = Some(json!(7));
        let cases = [
            // Error response.
            json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "no"}}),
            // Notification.
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}),
            // Server request.
            json!({"jsonrpc": "2.0", "id": 7, "method": "roots/list"}),
            // Another id, same or different type.
            json!({"jsonrpc": "2.0", "id": 8, "result": {"tools": tools(&["a"])}}),
            json!({"jsonrpc": "2.0", "id": "7", "result": {"tools": tools(&["a"])}}),
            // No id at all.
            json!({"jsonrpc": "2.0", "result": {"tools": tools(&["a"])}}),
            // A result without the list, or with a list that is not an array.
            json!({"jsonrpc": "2.0", "id": 7, "result": {}}),
            json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": {"name": "a"}}}),
            json!({"jsonrpc": "2.0", "id": 7, "result": [1]}),
            json!("just a string"),
            json!([]),
        ];
        for msg in cases {
            assert_eq!(
                filter(&msg, ListKind::Tools, id.clone(), &[]),
                Filtered::NotAList,
                "{msg}"
            );
        }
        // Without an expected id, any response id matches.
        let msg = json!({"jsonrpc": "2.0", "id": 8, "result": {"tools": tools(&["a"])}});
        assert!(matches!(
            filter(&msg, ListKind::Tools, None, &[]),
            Filtered::Rewritten { .. }
        ));
    }

    #[test]
    fn unparseable() {
        let mut deny = |_: &str| false;
        for bad in [
            &b""[..],
            b"{",
            b"not json",
            b"{\"id\":1,\"result\":{\"tools\":[]}} trailing",
            b"{\"id\":1,\"result\":{\"tools\":[{\"name\":\"\xff\"}]}}",
            // Duplicate members the decision depends on: a client might read the other one.
            b"{\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"}],\"tools\":[]}}",
            b"{\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"}],\"t\\u006fols\":[]}}",
            b"{\"id\":1,\"result\":{\"tools\":[]},\"result\":{\"tools\":[{\"name\":\"a\"}]}}",
        ] {
            assert_eq!(
                filter_result(bad, ListKind::Tools, None, &mut deny),
                Filtered::Unparseable,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let dup_id = br#"{"id":1,"id":2,"result":{"tools":[{"name":"a"}]}}"#;
        let one = json!(1);
        assert_eq!(
            filter_result(dup_id, ListKind::Tools, Some(&one), &mut deny),
            Filtered::Unparseable
        );
    }

    #[test]
    fn ambiguous_entry_names_are_hidden() {
        let msg = br#"{"id":1,"result":{"tools":[{"name":"a","name":"b"},{"name":"a"}]}}"#;
        let f = filter_result(msg, ListKind::Tools, None, &mut |_| true);
        let (out, hidden) = rewritten(f);
        assert_eq!(hidden, 1);
        assert_eq!(out["result"]["tools"], json!([{"name": "a"}]));
    }

    #[test]
    fn escapes_are_decoded_like_a_client_would() {
        // Keys and names written with escapes; strings full of JSON punctuation.
        let msg = br#"{"\u0069d":1,"r\u0065sult":{"t\u006fols":[
            {"description":"tricky \"}]{[, \\","n\u0061me":"\u0061"},
            {"name":"b\"]}","x":["]","}",{"\\":"\""}]},
            {"name":"c"}
        ]}}"#;
        let one = json!(1);
        let mut seen = Vec::new();
        let f = filter_result(msg, ListKind::Tools, Some(&one), &mut |n| {
            seen.push(n.to_owned());
            n != "b\"]}"
        });
        assert_eq!(seen, ["a", "b\"]}", "c"]);
        let (out, hidden) = rewritten(f);
        assert_eq!(hidden, 1);
        assert_eq!(
            out["result"]["tools"],
            json!([{"description": "tricky \"}]{[, \\", "name": "a"}, {"name": "c"}])
        );
    }

    #[test]
    fn other_bytes_are_preserved_exactly() {
        // Member order, whitespace and number formats survive; only the hidden entry goes.
        let msg = "{ \"result\" : {\"_meta\":{\"z\":1, \"a\":1.50e3},\n  \"tools\" : [ {\"name\":\"a\"} ,\n\
                   {\"name\":\"b\"}\t, {\"name\":\"c\",\"n\":12345678901234567890123} ] ,\
                   \"nextCursor\":\"x\" },\"jsonrpc\":\"2.0\",\"id\" : 9 }";
        let f = filter_result(msg.as_bytes(), ListKind::Tools, None, &mut |n| n != "b");
        let Filtered::Rewritten { body, hidden: 1 } = f else {
            panic!("{f:?}");
        };
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{ \"result\" : {\"_meta\":{\"z\":1, \"a\":1.50e3},\n  \"tools\" : [{\"name\":\"a\"},\
             {\"name\":\"c\",\"n\":12345678901234567890123}] ,\
             \"nextCursor\":\"x\" },\"jsonrpc\":\"2.0\",\"id\" : 9 }"
        );
    }

    /// The scanner against a straightforward `Value` implementation, on compact and pretty
    /// encodings of varied messages.
    #[test]
    fn agrees_with_value_reference() {
        fn reference(msg: &Value, allow: &dyn Fn(&str) -> bool) -> Value {
            let mut msg = msg.clone();
            if let Some(list) = msg["result"]["tools"].as_array_mut() {
                list.retain(|t| t["name"].as_str().is_some_and(allow));
            }
            msg
        }
        let allow = |n: &str| n.len() & 1 == 0;
        let messages = [
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
                {"name": "ab", "inputSchema": {"type": "object", "properties": {
                    "q": {"type": ["string", "null"], "default": null, "enum": [1, -2.5e-3, true, false]},
                }}},
                {"name": "abc", "annotations": {"title": "x\u{1F600}\n\t\"\\/"}},
                {"name": ""}, {"name": "abcd", "nested": [[[[{}]]], [], {}]},
                [], 1, "ab", null, {"name": ["ab"]},
            ], "nextCursor": null}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "ab"}]}}),
        ];
        for msg in &messages {
            for bytes in [
                serde_json::to_vec(msg).unwrap(),
                serde_json::to_vec_pretty(msg).unwrap(),
            ] {
                let expected = reference(msg, &allow);
                match filter_result(&bytes, ListKind::Tools, Some(&json!(1)), &mut |n| allow(n)) {
                    Filtered::Rewritten { body, hidden } => {
                        let got: Value = serde_json::from_slice(&body).unwrap();
                        assert_eq!(got, expected);
                        assert!(hidden > 0);
                    }
                    Filtered::Unchanged => assert_eq!(&expected, msg),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn batch_members_are_filtered() {
        let msg = json!([
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
            {"jsonrpc": "2.0", "id": 1, "result": {"tools": tools(&["a", "b"])}},
        ]);
        let (out, hidden) = rewritten(filter(&msg, ListKind::Tools, Some(json!(1)), &["b"]));
        assert_eq!(hidden, 1);
        assert_eq!(out[0], msg[0]);
        assert_eq!(out[1]["result"]["tools"], json!(tools(&["b"])));
    }

    fn big_list() -> Vec<u8> {
        let tools: Vec<Value> = (0..500)
            .map(|i| {
                json!({
                    "name": format!("tool_{i}"),
                    "description": format!("Does thing number {i} with some reasonably long text."),
                    "inputSchema": {"type": "object", "properties": {
                        "path": {"type": "string", "description": "A path"},
                        "count": {"type": "integer", "minimum": 0},
                    }, "required": ["path"]},
                })
            })
            .collect();
        serde_json::to_vec(&json!({
            "jsonrpc": "2.0", "id": 42, "result": {"tools": tools, "nextCursor": "c"},
        }))
        .unwrap()
    }

    fn even(name: &str) -> bool {
        name.strip_prefix("tool_")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n % 2 == 0)
    }

    #[test]
    fn five_hundred_tools() {
        let body = big_list();
        let (out, hidden) = rewritten(filter_result(
            &body,
            ListKind::Tools,
            Some(&json!(42)),
            &mut |n| even(n),
        ));
        assert_eq!(hidden, 250);
        let names: Vec<&str> = out["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..500).step_by(2).map(|i| format!("tool_{i}")).collect();
        assert_eq!(names, expected);
        assert_eq!(out["result"]["nextCursor"], "c");
        assert_eq!(
            out["result"]["tools"][1]["inputSchema"]["required"],
            json!(["path"])
        );
    }

    /// `cargo test --release -p mcp-guard five_hundred_tools_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn five_hundred_tools_timing() {
        /// The fastest of 300 runs: robust against other load on the machine.
        fn best(mut run: impl FnMut()) -> std::time::Duration {
            (0..300)
                .map(|_| {
                    let start = std::time::Instant::now();
                    run();
                    start.elapsed()
                })
                .min()
                .unwrap()
        }
        let body = big_list();
        let filter = best(|| {
            let f = filter_result(&body, ListKind::Tools, Some(&json!(42)), &mut |n| even(n));
            assert!(matches!(f, Filtered::Rewritten { hidden: 250, .. }));
        });
        let validate = best(|| {
            serde_json::from_slice::<IgnoredAny>(&body).unwrap();
        });
        let scan = best(|| {
            let list = Scan::new(&body, 0).message(ListKind::Tools, None);
            assert!(matches!(list, Ok(Some(_))));
        });
        let value = best(|| {
            let v: Value = serde_json::from_slice(&body).unwrap();
            serde_json::to_vec(&v).unwrap();
        });
        println!(
            "500 tools, {} bytes: {filter:?} per filter (validation {validate:?}, scan {scan:?}); \
             Value parse + serialize alone: {value:?}",
            body.len()
        );
    }

    /// The two modules together, as the filter uses them on a `text/event-stream` response.
    #[test]
    fn sse_stream_with_requests_before_the_result() {
        let notification =
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
        let request =
            r#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{}}"#;
        let result = json!({"jsonrpc": "2.0", "id": 5, "result": {
            "tools": tools(&["read", "delete"]), "nextCursor": "n",
        }});
        let stream = format!(
            ": ping\r\n\r\nid: e1\r\ndata: {notification}\r\n\r\n\
             event: message\ndata: {request}\n\n\
             id: e3\nevent: message\ndata: {result}\n\n"
        );
        let expected_id = json!(5);
        let mut f = |e: &Event| match filter_result(
            e.data.as_bytes(),
            ListKind::Tools,
            Some(&expected_id),
            &mut |n| n == "read",
        ) {
            Filtered::Rewritten { body, .. } => Rewrite::Replace(String::from_utf8(body).unwrap()),
            Filtered::Unchanged | Filtered::NotAList => Rewrite::Keep,
            Filtered::Unparseable if e.data.is_empty() => Rewrite::Keep,
            Filtered::Unparseable => panic!("unparseable {e:?}"),
        };
        let bytes = stream.as_bytes();
        for at in 0..=bytes.len() {
            let mut rw = SseRewriter::new(1 << 16);
            let (a, b) = bytes.split_at(at);
            let mut out = rw.push(a, false, &mut f).unwrap();
            out.extend(rw.push(b, true, &mut f).unwrap());
            let out = String::from_utf8(out).unwrap();
            // The notification and the server request pass byte-for-byte.
            let (head, last) = out.split_at(out.find("id: e3").unwrap());
            assert_eq!(
                head,
                format!(
                    ": ping\r\n\r\nid: e1\r\ndata: {notification}\r\n\r\n\
                     event: message\ndata: {request}\n\n"
                )
            );
            let data = last
                .strip_prefix("id: e3\nevent: message\ndata: ")
                .and_then(|s| s.strip_suffix("\n\n"))
                .unwrap();
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["result"]["tools"], json!(tools(&["read"])));
            assert_eq!(data["result"]["nextCursor"], "n");
        }
    }
}
