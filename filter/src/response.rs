//! What comes back from the upstream: list results filtered per caller, the service key never
//! echoed downstream, and a refused service credential turned into a clear 502.
//!
//! JSON (and any non-SSE) bodies are held whole, up to a limit, then checked and rewritten once;
//! `text/event-stream` bodies are rewritten event by event as they stream.

use memchr::memmem;

use crate::discovery::{self, Checked, KnownLists, ListKind, Listed};
use crate::sse::{Rewrite, SseRewriter};
use crate::tasks::Sealer;

/// Largest non-streamed response body held for inspection.
pub const MAX_BUFFERED_RESPONSE: usize = 8 * 1024 * 1024;
/// Largest single server-sent event.
pub const MAX_EVENT: usize = 4 * 1024 * 1024;
const REDACTED: &[u8] = b"[REDACTED]";

/// Which list results to filter in this response, and what the answer to list requests must
/// be: see [`discovery::Expect`].
pub type ListFilter = discovery::Expect;

/// The audit reason prefix of a list answer the filter could not read (fail closed).
pub const UNREADABLE_LIST_ANSWER: &str = "unreadable_list_answer";

/// How a response body is handled.
#[derive(Debug)]
pub enum Body {
    /// Held whole, inspected at the end.
    Buffered,
    /// Server-sent events, inspected one by one.
    Events(Box<SseRewriter>),
}

/// What inspecting (part of) a body found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    pub hidden: usize,
    pub leaks: usize,
    /// The body could not be inspected (unparseable list, oversized event): fail closed.
    pub failed: Option<String>,
    /// Tools listed, with their `Mcp-Param-*` headers (see [`crate::protocol::learn`]).
    pub learned: Vec<(String, Vec<crate::protocol::ParamHeader>)>,
}

/// Chooses the body handling from the response's content type.
pub fn body_for(content_type: &str) -> Body {
    if crate::http::is_event_stream(content_type) {
        Body::Events(Box::new(SseRewriter::new(MAX_EVENT)))
    } else {
        Body::Buffered
    }
}

/// Byte strings to find in responses (the service key's forms), each with its searcher built
/// once, when the configuration loads. A pattern may widen its redaction over neighbouring
/// base64 characters (see [`Pattern`]).
#[derive(Clone)]
pub struct Patterns {
    finders: Vec<(memmem::Finder<'static>, Widen)>,
    /// The same, ASCII lower-cased, for header names (which Envoy lowercases).
    folded: Vec<memmem::Finder<'static>>,
}

/// How far a match's redaction extends over adjacent base64 characters: the core of a base64
/// encoding at another byte offset leaves a character on each side (then `=` padding) that
/// still carries bits of the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Widen {
    pub left: usize,
    pub right: usize,
}

/// One pattern: its bytes and how far its redaction widens.
pub struct Pattern {
    pub bytes: Vec<u8>,
    pub widen: Widen,
}

impl Patterns {
    pub fn new(patterns: impl IntoIterator<Item = Vec<u8>>) -> Patterns {
        Patterns::widened(patterns.into_iter().map(|bytes| Pattern {
            bytes,
            widen: Widen::default(),
        }))
    }

    pub fn widened(patterns: impl IntoIterator<Item = Pattern>) -> Patterns {
        let finders: Vec<(memmem::Finder<'static>, Widen)> = patterns
            .into_iter()
            .filter(|p| !p.bytes.is_empty())
            .map(|p| (memmem::Finder::new(&p.bytes).into_owned(), p.widen))
            .collect();
        let folded = finders
            .iter()
            .map(|(f, _)| memmem::Finder::new(&f.needle().to_ascii_lowercase()).into_owned())
            .collect();
        Patterns { finders, folded }
    }

    fn needles(&self) -> impl Iterator<Item = (&[u8], Widen)> {
        self.finders.iter().map(|(f, w)| (f.needle(), *w))
    }
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Patterns) -> bool {
        self.needles().eq(other.needles())
    }
}

impl Eq for Patterns {}

impl std::fmt::Debug for Patterns {
    /// Never the secret itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Patterns({} redacted)", self.finders.len())
    }
}

/// Either base64 alphabet (standard and URL-safe).
fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// Replaces every occurrence of the patterns in `bytes` (widened over the base64 characters
/// next to it, as the pattern says); returns how many were found.
pub fn redact(bytes: &mut Vec<u8>, patterns: &Patterns) -> usize {
    let mut found = 0;
    for (finder, widen) in &patterns.finders {
        // The common case, nothing to redact, costs one scan and no allocation.
        let mut hits = finder.find_iter(bytes).peekable();
        if hits.peek().is_none() {
            continue;
        }
        let len = finder.needle().len();
        let mut out = Vec::with_capacity(bytes.len());
        let mut from = 0;
        for at in hits {
            // Overlapping matches: the first one wins, as a left-to-right replacement would.
            if at < from {
                continue;
            }
            let mut start = at;
            for _ in 0..widen.left {
                match start.checked_sub(1) {
                    Some(p) if p >= from && bytes.get(p).copied().is_some_and(is_base64) => {
                        start = p
                    }
                    _ => break,
                }
            }
            let mut end = at + len;
            for _ in 0..widen.right {
                match bytes.get(end) {
                    Some(&b) if is_base64(b) => end += 1,
                    _ => break,
                }
            }
            if widen.left + widen.right > 0 {
                // Padding ends an encoding: it goes too.
                for _ in 0..2 {
                    match bytes.get(end) {
                        Some(b'=') => end += 1,
                        _ => break,
                    }
                }
            }
            out.extend_from_slice(bytes.get(from..start).unwrap_or_default());
            out.extend_from_slice(REDACTED);
            from = end;
            found += 1;
        }
        out.extend_from_slice(bytes.get(from..).unwrap_or_default());
        *bytes = out;
    }
    found
}

/// Whether `text` contains any pattern.
pub fn contains_any(text: &[u8], patterns: &Patterns) -> bool {
    patterns.finders.iter().any(|(f, _)| f.find(text).is_some())
}

/// Whether a header name carries any pattern, in any case: Envoy lowercases the names it
/// passes on, so the key echoed as a name (`demo-key: 1`, a valid token) reaches the client
/// lowercased.
pub fn name_contains_any(name: &str, patterns: &Patterns) -> bool {
    let name = name.to_ascii_lowercase();
    patterns
        .folded
        .iter()
        .any(|f| f.find(name.as_bytes()).is_some())
}

/// What a response header (or trailer) carrying the service key becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldLeak {
    /// The key is in its value: set the header to this value, the key redacted.
    Value { name: String, redacted: String },
    /// The key is in its name: no value can hide it, the header goes.
    Name(String),
}

/// The response headers or trailers that carry the service key, in their names or values, and
/// what each becomes. Every value of a name is read: a client may read any of them.
pub fn leaking_fields(fields: &[(String, String)], patterns: &Patterns) -> Vec<FieldLeak> {
    let mut leaks: Vec<FieldLeak> = Vec::new();
    for (name, value) in fields {
        if name_contains_any(name, patterns) {
            if !leaks.contains(&FieldLeak::Name(name.clone())) {
                leaks.push(FieldLeak::Name(name.clone()));
            }
        } else if contains_any(value.as_bytes(), patterns) {
            let mut redacted = value.clone().into_bytes();
            redact(&mut redacted, patterns);
            leaks.push(FieldLeak::Value {
                name: name.clone(),
                redacted: String::from_utf8_lossy(&redacted).into_owned(),
            });
        }
    }
    leaks
}

/// What an answer is checked against.
#[derive(Clone, Copy)]
pub struct Checks<'a> {
    /// The lists to filter, and what list answers must be.
    pub lists: Option<&'a ListFilter>,
    /// The list arrays this server sent before ([`KnownLists`]).
    pub known: Option<&'a KnownLists>,
    /// The service key's forms, redacted wherever they appear.
    pub patterns: &'a Patterns,
    /// Seals task ids (and an event stream's event ids, [`crate::resume`]) for the caller.
    pub tasks: Option<&'a Sealer<'a>>,
}

/// Whether a listed entry goes to the caller.
pub type Visible<'a> = dyn FnMut(&Listed) -> bool + 'a;

/// Checks and filters a complete JSON-RPC message (a whole JSON body, or one event's data).
fn filter_message(
    message: &str,
    checks: Checks,
    visible: &mut Visible,
    report: &mut Inspection,
) -> Option<Vec<u8>> {
    let lists = checks.lists?;
    match discovery::check_answer_text(message, lists, checks.known, visible) {
        Checked::Pass => None,
        Checked::Listed { kinds, cacheable } => {
            private(&kinds, cacheable, message.as_bytes(), None, report)
        }
        Checked::Rewritten {
            body,
            hidden,
            kinds,
            cacheable,
        } => {
            report.hidden += hidden;
            private(&kinds, cacheable, message.as_bytes(), Some(body), report)
        }
        Checked::Unreadable(why) => {
            report.failed = Some(format!("{UNREADABLE_LIST_ANSWER}: {why}"));
            None
        }
    }
}

/// Filters a message's lists, then seals its task ids for the caller ([`crate::tasks`]).
fn check_message(
    message: &str,
    checks: Checks,
    visible: &mut Visible,
    report: &mut Inspection,
) -> Option<Vec<u8>> {
    let out = filter_message(message, checks, visible, report);
    let current = out.as_deref().unwrap_or(message.as_bytes());
    let rewritten = match checks.tasks {
        Some(tasks) => crate::tasks::seal_answer(current, tasks),
        None => crate::tasks::hide_listed(current),
    };
    match rewritten {
        Ok(None) => out,
        Ok(Some((sealed, hidden))) => {
            report.hidden += hidden;
            Some(sealed)
        }
        Err(why) => {
            report.failed = Some(why);
            None
        }
    }
}

/// An answer the filter decided for this caller leaves private (`cacheScope`): a list it
/// filtered, and any other result a server marked cacheable (a `resources/read`, a
/// `server/discover`), which the policy allowed this caller and perhaps not the next one a
/// shared cache would give it to. A tools listing also teaches the `Mcp-Param-*`
/// declarations ([`crate::protocol::private_list`]). Batches exist only in 2025-03-26, which
/// has neither.
fn private(
    kinds: &[ListKind],
    cacheable: bool,
    message: &[u8],
    rewritten: Option<Vec<u8>>,
    report: &mut Inspection,
) -> Option<Vec<u8>> {
    let batch = message.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let kind = match kinds {
        _ if batch => return rewritten,
        [] if !cacheable => return rewritten,
        // Only a scope the server gave is made private: results of other methods (a task's, a
        // subscription's) carry `resultType` and no scope, and get none.
        [] => return crate::protocol::made_private(message, rewritten, false, &mut report.failed),
        _ if kinds.contains(&ListKind::Tools) => ListKind::Tools,
        [first, ..] => *first,
    };
    crate::protocol::private_list(
        kind,
        cacheable,
        message,
        rewritten,
        &mut report.failed,
        &mut report.learned,
    )
}

/// Inspects a whole buffered body. Returns the body to send, when it changed.
pub fn inspect_buffered(
    body: &[u8],
    json: bool,
    checks: Checks,
    visible: &mut Visible,
) -> (Option<Vec<u8>>, Inspection) {
    let mut report = Inspection::default();
    let lists = checks.lists;
    // An empty body is no list; it is unreadable only where a list is due.
    let mut out = if json && (!body.is_empty() || lists.is_some_and(|l| l.strict)) {
        match std::str::from_utf8(body) {
            Ok(text) => check_message(text, checks, visible, &mut report),
            // No task id a client could read; a list due here is unreadable.
            Err(_) => {
                if lists.is_some() {
                    report.failed = Some(format!("{UNREADABLE_LIST_ANSWER}: not JSON"));
                }
                None
            }
        }
    } else {
        None
    };
    let rewritten = out.is_some();
    let mut bytes = out.take().unwrap_or_else(|| body.to_vec());
    report.leaks = redact(&mut bytes, checks.patterns);
    let changed = rewritten || report.leaks > 0;
    (changed.then_some(bytes), report)
}

/// Inspects the next chunk of an event stream. Returns the bytes to send in its place.
pub fn inspect_events(
    rewriter: &mut SseRewriter,
    chunk: &[u8],
    end_of_stream: bool,
    checks: Checks,
    visible: &mut Visible,
) -> (Vec<u8>, Inspection) {
    let mut report = Inspection::default();
    let result = rewriter.push(chunk, end_of_stream, &mut |event| {
        let data = if event.data.is_empty() {
            None
        } else {
            check_message(&event.data, checks, visible, &mut report)
        };
        // The upstream's event id never goes out as it wrote it: sealed for the caller, or
        // (unbindable) left out. Without a sealing key Last-Event-ID never reaches it.
        match (&event.id, checks.tasks) {
            (Some(id), Some(sealer)) => Rewrite::Rebind {
                id: crate::resume::seal_id(sealer, id),
                data,
            },
            (_, _) => data.map_or(Rewrite::Keep, Rewrite::Replace),
        }
    });
    match result {
        Ok(mut bytes) => {
            // The service key, once over everything that goes out: the events' data, their
            // other fields and comments, kept or re-encoded alike.
            report.leaks += redact(&mut bytes, checks.patterns);
            (bytes, report)
        }
        Err(e) => {
            report.failed = Some(e.to_string());
            (Vec::new(), report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn fields_carrying_the_key_in_a_name_or_a_value_are_found() {
        let patterns = Patterns::new([b"Sk-Secret-1".to_vec()]);
        let fields: Vec<(String, String)> = [
            ("x-echo", "used Sk-Secret-1"),
            ("sk-secret-1", "1"), // lowercased by Envoy
            ("sk-secret-1", "2"),
            ("x-kept", "sk-secret-1"), // a value keeps its case: not the key
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            leaking_fields(&fields, &patterns),
            [
                FieldLeak::Value {
                    name: "x-echo".into(),
                    redacted: "used [REDACTED]".into()
                },
                FieldLeak::Name("sk-secret-1".into()),
            ]
        );
        assert!(leaking_fields(&[("x-a".into(), "b".into())], &patterns).is_empty());
    }

    #[test]
    fn redacts_every_occurrence_of_every_pattern() {
        let mut body = b"key=sk-secret-1 again sk-secret-1 b64=c2stc2VjcmV0LTE=".to_vec();
        let n = redact(
            &mut body,
            &Patterns::new([b"sk-secret-1".to_vec(), b"c2stc2VjcmV0LTE=".to_vec()]),
        );
        assert_eq!(n, 3);
        assert_eq!(
            body,
            b"key=[REDACTED] again [REDACTED] b64=[REDACTED]".to_vec()
        );
    }

    #[test]
    fn buffered_list_is_filtered_and_counted() {
        let body = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a"},{"name":"b"}],"nextCursor":"x"}}"#;
        let lists = ListFilter {
            lists: vec![(Value::from(3), ListKind::Tools)],
            strict: true,
            responses_only: true,
            ..Default::default()
        };
        let checks = Checks {
            lists: Some(&lists),
            known: None,
            patterns: &Patterns::new([]),
            tasks: None,
        };
        let (out, report) = inspect_buffered(body, true, checks, &mut |l| l.name == "a");
        assert_eq!(report.hidden, 1);
        let out: Value = serde_json::from_slice(&out.unwrap_or_default()).unwrap_or_default();
        assert_eq!(out["result"]["tools"], serde_json::json!([{"name": "a"}]));
        assert_eq!(out["result"]["nextCursor"], "x");
    }

    #[test]
    fn event_stream_leaks_are_redacted_across_chunks() {
        let mut rw = SseRewriter::new(1024);
        let patterns = Patterns::new([b"sk-secret-1".to_vec()]);
        let checks = Checks {
            lists: None,
            known: None,
            patterns: &patterns,
            tasks: None,
        };
        let chunk = b"data: {\"k\":\"sk-sec";
        let (a, r1) = inspect_events(&mut rw, chunk, false, checks, &mut |_| true);
        let chunk = b"ret-1\"}\n\n";
        let (b, r2) = inspect_events(&mut rw, chunk, true, checks, &mut |_| true);
        let all = [a, b].concat();
        assert_eq!(r1.leaks + r2.leaks, 1);
        assert!(!contains_any(&all, &patterns));
        assert!(String::from_utf8_lossy(&all).contains("[REDACTED]"));
    }
}
