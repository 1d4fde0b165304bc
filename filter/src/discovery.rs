//! Per-caller filtering of discovery results: `tools/list`, `prompts/list`, `resources/list`.
//!
//! A caller should only see what it may use. [`filter_result`] takes one whole JSON-RPC
//! message from the server (a JSON body, or the data of one SSE event) and drops the list
//! entries the caller is not allowed. The message is parsed once, strictly (duplicate keys
//! make it [`Filtered::Unparseable`], so a client can never read a different list than the
//! one filtered), trimmed in place and serialized once. Untouched messages keep their
//! original bytes.

use serde_json::Value;

use crate::mcp::parse_strict_json;

/// Nesting limit for results: tool input schemas can be deep, so this is serde_json's own limit.
const MAX_DEPTH: usize = 128;

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
    /// Not strict JSON (malformed, duplicate keys, too deep): the caller should fail closed.
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
    let Ok(mut value) = parse_strict_json(message, MAX_DEPTH) else {
        return Filtered::Unparseable;
    };
    let hidden = match &mut value {
        Value::Array(batch) => batch
            .iter_mut()
            .filter_map(|m| filter_message(m, kind, expected_id, allowed))
            .reduce(|a, b| a + b),
        single => filter_message(single, kind, expected_id, allowed),
    };
    match hidden {
        None => Filtered::NotAList,
        Some(0) => Filtered::Unchanged,
        Some(hidden) => match serde_json::to_vec(&value) {
            Ok(body) => Filtered::Rewritten { body, hidden },
            Err(_) => Filtered::Unparseable,
        },
    }
}

/// Retains the allowed entries of one message; the number removed, or `None` if the message
/// is not the awaited list response.
fn filter_message(
    message: &mut Value,
    kind: ListKind,
    expected_id: Option<&Value>,
    allowed: &mut dyn FnMut(&str) -> bool,
) -> Option<usize> {
    let message = message.as_object_mut()?;
    if expected_id.is_some_and(|id| message.get("id") != Some(id)) {
        return None;
    }
    let list = message
        .get_mut("result")?
        .as_object_mut()?
        .get_mut(kind.list_key())?
        .as_array_mut()?;
    let before = list.len();
    list.retain(|entry| {
        entry
            .get(kind.name_key())
            .and_then(Value::as_str)
            .is_some_and(|name| allowed(name))
    });
    Some(before - list.len())
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
            // Duplicate keys: a client might read the other list.
            b"{\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"}],\"tools\":[]}}",
            b"\xff",
        ] {
            assert_eq!(
                filter_result(bad, ListKind::Tools, None, &mut deny),
                Filtered::Unparseable,
                "{}",
                String::from_utf8_lossy(bad)
            );
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
        let body = big_list();
        let runs = 200;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            let f = filter_result(&body, ListKind::Tools, Some(&json!(42)), &mut |n| even(n));
            assert!(matches!(f, Filtered::Rewritten { hidden: 250, .. }));
        }
        let each = start.elapsed() / runs;
        println!("500 tools, {} bytes: {each:?} per filter", body.len());
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
