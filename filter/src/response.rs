//! What comes back from the upstream: list results filtered per caller, the service key never
//! echoed downstream, and a refused service credential turned into a clear 502.
//!
//! JSON (and any non-SSE) bodies are held whole, up to a limit, then checked and rewritten once;
//! `text/event-stream` bodies are rewritten event by event as they stream.

use memchr::memmem;
use serde_json::Value;

use crate::discovery::{self, Filtered, ListKind};
use crate::sse::{Rewrite, SseRewriter};

/// Largest non-streamed response body held for inspection.
pub const MAX_BUFFERED_RESPONSE: usize = 8 * 1024 * 1024;
/// Largest single server-sent event.
pub const MAX_EVENT: usize = 4 * 1024 * 1024;
const REDACTED: &[u8] = b"[REDACTED]";

/// Which list results to filter in this response.
#[derive(Debug, Clone, PartialEq)]
pub struct ListFilter {
    pub kinds: Vec<ListKind>,
    /// The list request's id; `None` on a GET stream, where replayed results are recognised by
    /// their shape alone.
    pub expected_id: Option<Value>,
}

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
}

/// Chooses the body handling from the response's content type.
pub fn body_for(content_type: &str) -> Body {
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("text/event-stream") {
        Body::Events(Box::new(SseRewriter::new(MAX_EVENT)))
    } else {
        Body::Buffered
    }
}

/// Byte strings to find in responses (the service key's forms), each with its searcher built
/// once, when the configuration loads.
#[derive(Clone)]
pub struct Patterns(Vec<memmem::Finder<'static>>);

impl Patterns {
    pub fn new(patterns: impl IntoIterator<Item = Vec<u8>>) -> Patterns {
        Patterns(
            patterns
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(|p| memmem::Finder::new(&p).into_owned())
                .collect(),
        )
    }

    fn needles(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(memmem::Finder::needle)
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
        write!(f, "Patterns({} redacted)", self.0.len())
    }
}

/// Replaces every occurrence of the patterns in `bytes`; returns how many were found.
pub fn redact(bytes: &mut Vec<u8>, patterns: &Patterns) -> usize {
    let mut found = 0;
    for finder in &patterns.0 {
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
            out.extend_from_slice(bytes.get(from..at).unwrap_or_default());
            out.extend_from_slice(REDACTED);
            from = at + len;
            found += 1;
        }
        out.extend_from_slice(bytes.get(from..).unwrap_or_default());
        *bytes = out;
    }
    found
}

/// Whether `text` contains any pattern.
pub fn contains_any(text: &[u8], patterns: &Patterns) -> bool {
    patterns.0.iter().any(|f| f.find(text).is_some())
}

/// Whether a listed entry goes to the caller: asked with the list kind, the entry's name and
/// its JSON text as the server wrote it.
pub type Visible<'a> = dyn FnMut(ListKind, &str, &[u8]) -> bool + 'a;

/// Filters a complete JSON-RPC message (a whole JSON body, or one event's data).
fn filter_message(
    message: &[u8],
    lists: Option<&ListFilter>,
    visible: &mut Visible,
    report: &mut Inspection,
) -> Option<Vec<u8>> {
    let lists = lists?;
    for kind in &lists.kinds {
        let kind = *kind;
        match discovery::filter_entries(
            message,
            kind,
            lists.expected_id.as_ref(),
            &mut |name, entry| visible(kind, name, entry),
        ) {
            Filtered::Unchanged => return None,
            Filtered::NotAList => continue,
            Filtered::Rewritten { body, hidden } => {
                report.hidden += hidden;
                return Some(body);
            }
            Filtered::Unparseable => {
                report.failed = Some("list result could not be parsed".into());
                return None;
            }
        }
    }
    None
}

/// Inspects a whole buffered body. Returns the body to send, when it changed.
pub fn inspect_buffered(
    body: &[u8],
    json: bool,
    lists: Option<&ListFilter>,
    patterns: &Patterns,
    visible: &mut Visible,
) -> (Option<Vec<u8>>, Inspection) {
    let mut report = Inspection::default();
    let mut out = if json && !body.is_empty() {
        filter_message(body, lists, visible, &mut report)
    } else {
        None
    };
    let mut bytes = out.take().unwrap_or_else(|| body.to_vec());
    report.leaks = redact(&mut bytes, patterns);
    let changed = report.hidden > 0 || report.leaks > 0;
    (changed.then_some(bytes), report)
}

/// Inspects the next chunk of an event stream. Returns the bytes to send in its place.
pub fn inspect_events(
    rewriter: &mut SseRewriter,
    chunk: &[u8],
    end_of_stream: bool,
    lists: Option<&ListFilter>,
    patterns: &Patterns,
    visible: &mut Visible,
) -> (Vec<u8>, Inspection) {
    let mut report = Inspection::default();
    let result = rewriter.push(chunk, end_of_stream, &mut |event| {
        let data = event.data.as_bytes();
        let mut replaced = if data.is_empty() {
            None
        } else {
            filter_message(data, lists, visible, &mut report)
        };
        let mut current = replaced.take().unwrap_or_else(|| data.to_vec());
        let leaks = redact(&mut current, patterns);
        report.leaks += leaks;
        let other_fields_leak = [event.id.as_deref(), event.event.as_deref()]
            .iter()
            .flatten()
            .any(|f| contains_any(f.as_bytes(), patterns));
        if other_fields_leak {
            report.leaks += 1;
            return Rewrite::Replace(String::from_utf8_lossy(&current).into_owned());
        }
        if current.as_slice() != data {
            Rewrite::Replace(String::from_utf8_lossy(&current).into_owned())
        } else {
            Rewrite::Keep
        }
    });
    match result {
        Ok(bytes) => {
            // Comments are forwarded verbatim: check them too.
            let mut bytes = bytes;
            report.leaks += redact(&mut bytes, patterns);
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
            kinds: vec![ListKind::Tools],
            expected_id: Some(Value::from(3)),
        };
        let (out, report) = inspect_buffered(
            body,
            true,
            Some(&lists),
            &Patterns::new([]),
            &mut |_, n, _| n == "a",
        );
        assert_eq!(report.hidden, 1);
        let out: Value = serde_json::from_slice(&out.unwrap_or_default()).unwrap_or_default();
        assert_eq!(out["result"]["tools"], serde_json::json!([{"name": "a"}]));
        assert_eq!(out["result"]["nextCursor"], "x");
    }

    #[test]
    fn event_stream_leaks_are_redacted_across_chunks() {
        let mut rw = SseRewriter::new(1024);
        let patterns = Patterns::new([b"sk-secret-1".to_vec()]);
        let (a, r1) = inspect_events(
            &mut rw,
            b"data: {\"k\":\"sk-sec",
            false,
            None,
            &patterns,
            &mut |_, _, _| true,
        );
        let (b, r2) = inspect_events(
            &mut rw,
            b"ret-1\"}\n\n",
            true,
            None,
            &patterns,
            &mut |_, _, _| true,
        );
        let all = [a, b].concat();
        assert_eq!(r1.leaks + r2.leaks, 1);
        assert!(!contains_any(&all, &patterns));
        assert!(String::from_utf8_lossy(&all).contains("[REDACTED]"));
    }
}
