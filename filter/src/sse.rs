//! Incremental rewriting of `text/event-stream` bodies (Server-Sent Events).
//!
//! Envoy hands response bodies over in arbitrary chunks. [`SseRewriter`] buffers only the
//! event currently being received, hands every complete event to a callback and emits, per
//! event, either its original bytes (so anything we do not touch is forwarded byte-for-byte,
//! comments included) or a re-encoding carrying a new `data` payload. Parsing follows the
//! WHATWG "event stream interpretation": lines end in CRLF, LF or CR (mixed); a blank line ends
//! an event; `:` starts a comment; `name: value` loses exactly one space after the colon; a line
//! without a colon is a field with an empty value; a UTF-8 BOM may open the stream.

use std::borrow::Cow;
use std::fmt;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One parsed event, as a client would see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// The last `id:` field (ignored when it contains NUL, as the spec says).
    pub id: Option<String>,
    /// The last `event:` field.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; empty when there were none. One line (a JSON-RPC
    /// message, up to megabytes) is borrowed from the event's bytes, not copied.
    pub data: Cow<'a, str>,
    /// The last `retry:` field made of ASCII digits only (others are ignored, as the spec says).
    pub retry: Option<String>,
}

impl Event<'_> {
    /// The event, owning its data.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            id: self.id,
            event: self.event,
            data: Cow::Owned(self.data.into_owned()),
            retry: self.retry,
        }
    }
}

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward the event's original bytes.
    Keep,
    /// Re-encode the event (`id`, `event`, `retry` kept) with this data payload (UTF-8 text:
    /// bytes, so that a payload the filter spliced need not be validated again).
    Replace(Vec<u8>),
    /// Re-encode the event with `id` as its id (`None`: no id line) and `data` as its payload
    /// (`None`: its own data).
    Rebind {
        id: Option<String>,
        data: Option<Vec<u8>>,
    },
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// An event exceeded the size limit; the stream cannot be inspected and must be cut.
    TooLarge,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::TooLarge => f.write_str("server-sent event larger than the limit"),
        }
    }
}

impl std::error::Error for SseError {}

/// What to do with an LF opening the next chunk when the previous one ended with an event
/// whose final blank line was a lone CR (it may have been the first half of a CRLF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingLf {
    None,
    /// The event was kept verbatim: forward the LF too.
    Emit,
    /// The event was re-encoded: its terminator is already written.
    Drop,
}

/// Rewrites an event stream chunk by chunk. Memory is bounded by `max_event_bytes`.
#[derive(Debug)]
pub struct SseRewriter {
    max_event_bytes: usize,
    /// Bytes of the event being received (never a complete event between pushes).
    buf: Vec<u8>,
    /// Start of the current line in `buf`.
    line_start: usize,
    /// Where to resume looking for a line terminator, so that each byte is scanned once.
    scan: usize,
    /// Nothing read yet: a BOM may still come.
    at_start: bool,
    pending_lf: PendingLf,
    /// A previous push failed; the stream state is no longer trustworthy.
    failed: bool,
}

impl SseRewriter {
    pub fn new(max_event_bytes: usize) -> Self {
        SseRewriter {
            max_event_bytes,
            buf: Vec::new(),
            line_start: 0,
            scan: 0,
            at_start: true,
            pending_lf: PendingLf::None,
            failed: false,
        }
    }

    /// Consumes `chunk` and returns the bytes to forward now: every event completed so far, kept
    /// or rewritten by `f`. Incomplete bytes wait for the next push; at `end_of_stream` they are
    /// flushed (an unterminated event is still given to `f`, and re-encoded complete if
    /// replaced). Blocks without any line but the blank one are forwarded without calling `f`.
    pub fn push(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        f: &mut dyn FnMut(&Event) -> Rewrite,
    ) -> Result<Vec<u8>, SseError> {
        if self.failed {
            return Err(SseError::TooLarge);
        }
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        // Start of the current event in `buf`.
        let mut start = 0;

        if self.at_start {
            if !end_of_stream && BOM.starts_with(&self.buf) {
                return Ok(out); // Too short to tell whether a BOM opens the stream.
            }
            self.at_start = false;
            if self.buf.starts_with(BOM) {
                out.extend_from_slice(BOM);
                start = BOM.len();
            }
        }
        if self.pending_lf != PendingLf::None && self.buf.len() > start {
            if self.buf.get(start) == Some(&b'\n') {
                if self.pending_lf == PendingLf::Emit {
                    out.push(b'\n');
                }
                start += 1;
            }
            self.pending_lf = PendingLf::None;
        }
        self.line_start = self.line_start.max(start);
        self.scan = self.scan.max(start);

        loop {
            let rest = self.buf.get(self.scan..).unwrap_or_default();
            let Some(offset) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.scan = self.buf.len();
                break;
            };
            let eol = self.scan + offset;
            let (next, cr_at_end) = match (self.buf.get(eol), self.buf.get(eol + 1)) {
                (Some(b'\r'), Some(b'\n')) => (eol + 2, false),
                (Some(b'\r'), None) => (eol + 1, !end_of_stream),
                _ => (eol + 1, false),
            };
            let blank = eol == self.line_start;
            if cr_at_end && !blank {
                // A CR ends the buffer: wait to see whether an LF follows (one CRLF, not two
                // line ends). A blank line ends the event either way, so it need not wait.
                self.scan = eol;
                break;
            }
            self.line_start = next;
            self.scan = next;
            if blank {
                let block = self.buf.get(start..next).unwrap_or_default();
                if block.len() > self.max_event_bytes {
                    return Err(self.fail());
                }
                let kept = emit(block, f, &mut out);
                start = next;
                if cr_at_end {
                    self.pending_lf = if kept {
                        PendingLf::Emit
                    } else {
                        PendingLf::Drop
                    };
                }
            }
        }

        let tail_len = self.buf.len().saturating_sub(start);
        if tail_len > self.max_event_bytes {
            return Err(self.fail());
        }
        if end_of_stream {
            if let Some(tail) = self.buf.get(start..) {
                emit(tail, f, &mut out);
            }
            self.buf.clear();
            self.line_start = 0;
            self.scan = 0;
            self.pending_lf = PendingLf::None;
        } else {
            self.buf.drain(..start);
            self.line_start = self.line_start.saturating_sub(start);
            self.scan = self.scan.saturating_sub(start);
        }
        Ok(out)
    }

    fn fail(&mut self) -> SseError {
        self.failed = true;
        self.buf = Vec::new();
        SseError::TooLarge
    }
}

/// Writes one event block (original bytes, possibly without final blank line) to `out`, kept
/// or re-encoded as `f` decides. Returns whether the original bytes were kept.
///
/// An event with a line the standard ignores (an unknown field name, an `id` with NUL, a
/// `retry` that is not digits) is never kept verbatim: it is re-encoded from what the filter
/// read, those lines and the event's comments dropped. Clients' parsers differ exactly on
/// such lines (the TypeScript SDK's strips `ï»¿`, a BOM decoded as Latin-1, from a stream's
/// first line: `ï»¿data: …`, an unknown field here, is data there); what the filter did not
/// read as data must not reach a client that might.
fn emit(block: &[u8], f: &mut dyn FnMut(&Event) -> Rewrite, out: &mut Vec<u8>) -> bool {
    let Some((event, read)) = parse_event(block) else {
        out.extend_from_slice(block);
        return true;
    };
    match f(&event) {
        Rewrite::Keep if !read.ignored => {
            out.extend_from_slice(block);
            true
        }
        Rewrite::Keep if read.has_data => {
            encode(&event, event.data.as_bytes(), out);
            false
        }
        Rewrite::Keep => {
            encode_fields(&event, out);
            out.push(b'\n');
            false
        }
        Rewrite::Replace(data) => {
            encode(&event, &data, out);
            false
        }
        Rewrite::Rebind { id, data } => {
            let rebound = Event {
                id,
                event: event.event.clone(),
                data: Cow::Borrowed(&event.data),
                retry: event.retry.clone(),
            };
            match data {
                Some(data) => encode(&rebound, &data, out),
                None if read.has_data => encode(&rebound, rebound.data.as_bytes(), out),
                None => {
                    encode_fields(&rebound, out);
                    out.push(b'\n');
                }
            }
            false
        }
    }
}

/// What parsing an event block noticed beyond the [`Event`].
#[derive(Debug, Clone, Copy, Default)]
struct Read {
    /// It had a `data` line.
    has_data: bool,
    /// It had a field line the standard ignores.
    ignored: bool,
}

/// Parses an event block; `None` when it holds no line before the blank one.
fn parse_event(block: &[u8]) -> Option<(Event<'_>, Read)> {
    let mut event = Event::default();
    let mut any_line = false;
    let mut has_data = false;
    let mut ignored = false;
    for line in Lines(Some(block)) {
        if line.is_empty() {
            break;
        }
        any_line = true;
        if line.first() == Some(&b':') {
            // A comment goes on verbatim unless a client could read a line inside it.
            ignored |= splits_elsewhere(line);
            continue;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let (name, rest) = line.split_at(colon);
                let value = rest.get(1..).unwrap_or_default();
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // `from_utf8` first: its ASCII fast path is much faster than the lossy decoder's,
        // which matters for a 100 KB data line in Wasm.
        let value = match std::str::from_utf8(value) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(value),
        };
        match name {
            b"data" => {
                if has_data {
                    let data = event.data.to_mut();
                    data.push('\n');
                    data.push_str(&value);
                } else {
                    event.data = value;
                }
                has_data = true;
            }
            // Read by another client as two lines: neither is what the filter read.
            _ if splits_elsewhere(line) => ignored = true,
            b"event" => event.event = Some(value.into_owned()),
            b"id" if !value.contains('\0') => event.id = Some(value.into_owned()),
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                event.retry = Some(value.into_owned());
            }
            _ => ignored = true,
        }
    }
    any_line.then_some((event, Read { has_data, ignored }))
}

/// Whether `line` holds a character some clients end a line at besides CR and LF: Python's
/// `str.splitlines` (which `httpx-sse` before 0.4.2 reads streams with, under `mcp` 1.x) also
/// splits at VT, FF, FS, GS, RS, NEL (U+0085), LS (U+2028) and PS (U+2029). In a comment or an
/// `event`/`id` value, the rest would be a line of its own there (`: x<U+2028>data: {…}` is a
/// data line the filter never read). In a data line they can only sit inside a JSON string
/// (raw VT…RS are refused by the strict parse, NEL/LS/PS are not JSON whitespace): such a client
/// reads an unterminated string, not another message.
fn splits_elsewhere(line: &[u8]) -> bool {
    line.iter().enumerate().any(|(i, b)| match b {
        0x0b | 0x0c | 0x1c..=0x1e => true,
        0xc2 => line.get(i + 1) == Some(&0x85),
        0xe2 => line.get(i + 1) == Some(&0x80) && matches!(line.get(i + 2), Some(0xa8 | 0xa9)),
        _ => false,
    })
}

/// Encodes `event` with `data` as its payload. Data is split on every kind of line end so
/// that a payload can never smuggle in extra fields or events.
fn encode(event: &Event, data: &[u8], out: &mut Vec<u8>) {
    // Room for one data line at once: the payload is usually one JSON-RPC message, up to
    // megabytes, which growing by doubling would copy again and again.
    out.reserve(data.len() + 16);
    encode_fields(event, out);
    for line in Lines(Some(data)) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// The event's `id`, `event` and `retry` lines.
fn encode_fields(event: &Event, out: &mut Vec<u8>) {
    let fields = [
        ("id", &event.id),
        ("event", &event.event),
        ("retry", &event.retry),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            // Values come from a single line, but guard against a caller-built Event anyway.
            let value = Lines(Some(value.as_bytes())).next().unwrap_or_default();
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.push(b'\n');
        }
    }
}

/// Splits on CRLF, LF or CR like `str::split`: a trailing line end yields a final empty line.
struct Lines<'a>(Option<&'a [u8]>);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.0?;
        let Some(eol) = memchr::memchr2(b'\n', b'\r', rest) else {
            self.0 = None;
            return Some(rest);
        };
        let (line, tail) = rest.split_at(eol);
        let skip = if tail.starts_with(b"\r\n") { 2 } else { 1 };
        self.0 = tail.get(skip..);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` (the last one with end_of_stream) and returns the output and the events
    /// seen. Events whose data contains "secret" are replaced with the data upper-cased.
    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Event<'static>>) {
        let mut rw = SseRewriter::new(1 << 16);
        let mut seen = Vec::new();
        let mut out = Vec::new();
        let mut f = |e: &Event| {
            seen.push(e.clone().into_owned());
            if e.data.contains("secret") {
                Rewrite::Replace(e.data.to_uppercase().into_bytes())
            } else {
                Rewrite::Keep
            }
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            out.extend(rw.push(chunk, last, &mut f).unwrap());
        }
        (out, seen)
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    fn data(d: &str) -> Event<'static> {
        Event {
            data: Cow::Owned(d.into()),
            ..Event::default()
        }
    }

    // BOM, comments, LF / CRLF / CR (mixed), multi-line data, a replaced event with id.
    const STREAM: &[u8] = b"\xEF\xBB\xBF: hello\n\nid: 1\ndata: a\n\n\
        event: x\r\ndata:b\r\ndata:  c\r\n\r\n\
        id: 7\revent: r\rretry: 100\rdata: secret\rdata\r\r\
        data: tail\n\n";

    fn stream_events() -> Vec<Event<'static>> {
        vec![
            Event::default(),
            Event {
                id: Some("1".into()),
                ..data("a")
            },
            Event {
                event: Some("x".into()),
                ..data("b\n c")
            },
            Event {
                id: Some("7".into()),
                event: Some("r".into()),
                retry: Some("100".into()),
                ..data("secret\n")
            },
            data("tail"),
        ]
    }

    const STREAM_OUT: &str = "\u{feff}: hello\n\nid: 1\ndata: a\n\n\
        event: x\r\ndata:b\r\ndata:  c\r\n\r\n\
        id: 7\nevent: r\nretry: 100\ndata: SECRET\ndata: \n\n\
        data: tail\n\n";

    #[test]
    fn whole_stream() {
        let (out, seen) = run(&[STREAM]);
        assert_eq!(text(&out), STREAM_OUT);
        assert_eq!(seen, stream_events());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        for at in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(at);
            let (out, seen) = run(&[a, b]);
            assert_eq!(text(&out), STREAM_OUT, "split at {at}");
            assert_eq!(seen, stream_events(), "split at {at}");
        }
    }

    #[test]
    fn split_at_every_pair_of_boundaries() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let (ab, c) = STREAM.split_at(j);
                let (a, b) = ab.split_at(i);
                let (out, seen) = run(&[a, b, c]);
                assert_eq!(text(&out), STREAM_OUT, "split at {i}, {j}");
                assert_eq!(seen, stream_events(), "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn byte_by_byte_with_empty_chunks() {
        let mut chunks: Vec<&[u8]> = STREAM.chunks(1).flat_map(|c| [c, &b""[..]]).collect();
        chunks.push(b"");
        let (out, seen) = run(&chunks);
        assert_eq!(text(&out), STREAM_OUT);
        assert_eq!(seen, stream_events());
    }

    #[test]
    fn events_are_emitted_as_soon_as_complete() {
        let mut rw = SseRewriter::new(1024);
        let mut n = 0;
        let mut f = |_: &Event| {
            n += 1;
            Rewrite::Keep
        };
        let out = rw
            .push(b"data: 1\n\ndata: 2\n\ndata: 3", false, &mut f)
            .unwrap();
        assert_eq!(text(&out), "data: 1\n\ndata: 2\n\n");
        // A blank line ending in CR completes the event at once, even if an LF may follow.
        let out = rw.push(b"\r\r", false, &mut f).unwrap();
        assert_eq!(text(&out), "data: 3\r\r");
        let out = rw.push(b"\ndata: 4\n\n", false, &mut f).unwrap();
        assert_eq!(text(&out), "\ndata: 4\n\n");
        assert_eq!(n, 4);
    }

    #[test]
    fn crlf_split_after_replaced_event_is_not_an_extra_blank_line() {
        let mut rw = SseRewriter::new(1024);
        let mut f = |_: &Event| Rewrite::Replace("new".into());
        let out = rw.push(b"id: 3\r\ndata: old\r\n\r", false, &mut f).unwrap();
        assert_eq!(text(&out), "id: 3\ndata: new\n\n");
        let out = rw.push(b"\n", true, &mut f).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn field_parsing() {
        let (_, seen) = run(&[b"data\ndata:\ndata:  x \nid\nevent:e:f\nretry: 1x\nfoo: bar\n\n"]);
        assert_eq!(
            seen,
            vec![Event {
                id: Some(String::new()),
                event: Some("e:f".into()),
                ..data("\n\n x ")
            }]
        );
        let (_, seen) = run(&[b"id: a\0b\nid: c\nretry: 5\nretry: \n\n"]);
        assert_eq!(seen[0].id.as_deref(), Some("c"));
        assert_eq!(seen[0].retry.as_deref(), Some("5"));
    }

    #[test]
    fn comment_and_bare_id_events_are_passed_with_empty_data() {
        let (out, seen) = run(&[b": keepalive\n\nid: 9\n\n\n"]);
        assert_eq!(text(&out), ": keepalive\n\nid: 9\n\n\n");
        assert_eq!(
            seen,
            vec![
                Event::default(),
                Event {
                    id: Some("9".into()),
                    ..Event::default()
                }
            ]
        );
    }

    #[test]
    fn replaced_event_keeps_id_for_replay() {
        let input = b"id: evt-42\nevent: message\ndata: {\"secret\":1}\n\n";
        let (out, _) = run(&[input]);
        assert_eq!(
            text(&out),
            "id: evt-42\nevent: message\ndata: {\"SECRET\":1}\n\n"
        );
        // A client resuming with Last-Event-ID: evt-42 gets the event replayed; rewriting the
        // replay the same way yields the same bytes and the same id.
        let (replayed, seen) = run(&[input]);
        assert_eq!(replayed, out);
        let (_, reparsed) = run(&[&out]);
        assert_eq!(reparsed[0].id, seen[0].id);
        assert_eq!(reparsed[0].data, "{\"SECRET\":1}");
    }

    #[test]
    fn replacement_data_cannot_inject_lines() {
        let mut out = Vec::new();
        encode(&Event::default(), b"a\r\nb\rc\nid: x\n", &mut out);
        assert_eq!(
            text(&out),
            "data: a\ndata: b\ndata: c\ndata: id: x\ndata: \n\n"
        );
        let evil = Event {
            id: Some("1\nevent: x".into()),
            ..Event::default()
        };
        out.clear();
        encode(&evil, b"d", &mut out);
        assert_eq!(text(&out), "id: 1\ndata: d\n\n");
    }

    #[test]
    fn bom_only_at_start() {
        let (out, seen) = run(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n\xEF\xBB\xBFdata: y\n\n"]);
        // A later BOM is part of the field name: an unknown field, not forwarded.
        assert_eq!(out, b"\xEF\xBB\xBFdata: x\n\n\n");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], data("x"));
        assert_eq!(seen[1], Event::default());
        let (out, seen) = run(&[b"\xEF\xBB"]);
        assert_eq!(out, b"\n");
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn lines_the_standard_ignores_never_reach_the_client() {
        // A BOM decoded as Latin-1 (which one SDK's parser strips), unknown or mis-cased field
        // names, an id with NUL, a retry that is not digits: each event is re-encoded from what
        // was read, its comments dropped with them; the data the filter saw is kept.
        let stream: &[u8] = b"\xC3\xAF\xC2\xBB\xC2\xBFdata: {\"all\":1}\n\n\
            : keep-alive\nData: x\ndata: seen\nid: 7\n\n\
            retry: 1s\nevent: e\ndata: ok\n\n\
            id: a\x00b\ndata: d\n\n";
        let (out, seen) = run(&[stream]);
        assert_eq!(
            text(&out),
            "\nid: 7\ndata: seen\n\nevent: e\ndata: ok\n\ndata: d\n\n"
        );
        assert_eq!(seen.len(), 4);
        assert!(seen[0].data.is_empty());
        // Known fields only, comments included: forwarded byte for byte.
        let plain: &[u8] = b": hi\r\nid: 1\r\nevent: m\r\nretry: 10\r\ndata: a\r\ndata\r\n\r\n";
        let (out, _) = run(&[plain]);
        assert_eq!(out, plain);
    }

    #[test]
    fn a_line_end_only_some_clients_see_hides_nothing() {
        // `httpx-sse` before 0.4.2 splits lines as Python's `str.splitlines`: a comment or an
        // `event`/`id` value holding LS, PS, NEL, VT, FF, FS, GS or RS would end there, and what
        // follows (`data: …`) be a data line the filter never read. Such events are re-encoded
        // from what the filter read: the comment and the field dropped, nothing unread kept.
        for sep in [
            "\u{2028}", "\u{2029}", "\u{85}", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e",
        ] {
            for line in [
                format!(": keep-alive{sep}data: {{\"smuggled\":1}}"),
                format!("event: message{sep}data: {{\"smuggled\":1}}"),
                format!("id: 7{sep}data: {{\"smuggled\":1}}"),
            ] {
                let stream = format!("{line}\ndata: {{\"seen\":1}}\n\n");
                let (out, seen) = run(&[stream.as_bytes()]);
                assert_eq!(text(&out), "data: {\"seen\":1}\n\n", "{line:?}");
                assert_eq!(seen[0].data, "{\"seen\":1}");
                // Alone (no data line): an empty event, nothing of the line.
                let (out, _) = run(&[format!("{line}\n\n").as_bytes()]);
                assert_eq!(text(&out), "\n", "{line:?}");
            }
        }
        // In a data line they can only be inside a JSON string: kept as the filter read it.
        let stream = "data: {\"x\":\"a\u{2028}b\"}\n\n";
        let (out, _) = run(&[stream.as_bytes()]);
        assert_eq!(text(&out), stream);
    }

    #[test]
    fn unterminated_event_at_end_of_stream() {
        let (out, seen) = run(&[b"data: 1\n\ndata: la", b"st"]);
        assert_eq!(text(&out), "data: 1\n\ndata: last");
        assert_eq!(seen, vec![data("1"), data("last")]);
        let (out, seen) = run(&[b"id: 2\ndata: secret\r"]);
        assert_eq!(text(&out), "id: 2\ndata: SECRET\n\n");
        assert_eq!(seen[0].id.as_deref(), Some("2"));
        let (out, seen) = run(&[b"data: 1\n\n", b""]);
        assert_eq!(text(&out), "data: 1\n\n");
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn oversize_event() {
        let mut keep = |_: &Event| Rewrite::Keep;
        let mut rw = SseRewriter::new(16);
        // Exactly at the limit: fine.
        assert!(rw.push(b"data: 01234567\n\n", false, &mut keep).is_ok());
        // Incomplete but already too large: refused before the event ends.
        assert_eq!(
            rw.push(b"data: 0123456789ab", false, &mut keep),
            Err(SseError::TooLarge)
        );
        assert_eq!(rw.push(b"\n\n", true, &mut keep), Err(SseError::TooLarge));
        // Too large when complete, within one chunk.
        let mut rw = SseRewriter::new(16);
        assert_eq!(
            rw.push(b"data: 1\n\ndata: 0123456789\n\n", false, &mut keep),
            Err(SseError::TooLarge)
        );
        // Many small events in one chunk are fine.
        let mut rw = SseRewriter::new(16);
        let many = b"data: 1\n\n".repeat(100);
        assert_eq!(rw.push(&many, true, &mut keep).unwrap(), many);
    }

    #[test]
    fn never_panics_on_odd_input() {
        let inputs: &[&[u8]] = &[
            b"",
            b"\r",
            b"\n",
            b"\r\n",
            b":",
            b"::\r\r",
            b"\xff\xfe\n\n",
            b"data\xff: \xc3\n\n",
            b"\r\r\r\n\n\r",
            b"data: \xe2\x82",
            b"\xac\n\n",
        ];
        let mut rw = SseRewriter::new(8);
        let mut f = |_: &Event| Rewrite::Replace("\r\n\r".into());
        for (i, input) in inputs.iter().enumerate() {
            let _ = rw.push(input, false, &mut f);
            let _ = run(&inputs[i..]);
        }
        let _ = rw.push(b"", true, &mut f);
    }
}
