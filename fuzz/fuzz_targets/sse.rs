//! Incremental SSE rewriting (`sse::SseRewriter`), on arbitrary streams cut at arbitrary places.
//!
//! Input layout: byte 0 holds the mode; the next `n` bytes (n = bits 0-2, 0 to 7) are the
//! lengths of the first chunks; the rest is the stream (its remainder is the last chunk, pushed
//! with end_of_stream). Mode bit 3: the callback replaces the events selected by bits 5-7 with
//! a payload full of line ends and field-like lines; bit 4: a 64-byte event limit.
//!
//! Properties:
//! 1. It never panics, and a refused stream stays refused.
//! 2. Chunking does not matter: the output and the events seen are those of a single push.
//! 3. With every event kept, the output is the input byte for byte, except events with a line
//!    the standard ignores (re-encoded from what was read): so the output, pushed again, comes
//!    out unchanged.
//! 4. Replacement cannot inject anything: re-reading the output gives exactly the events seen
//!    (those that carry nothing aside), the replaced ones with their id, event and retry and
//!    the payload (line ends read as LF) as data, never an extra event or field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::sse::{Event, Rewrite, SseRewriter};

const MAX: usize = 1 << 16;
const SMALL_MAX: usize = 64;
const PAYLOAD: &str = "new\r\nid: forged\revent: x\n\ndata: y\r";

/// Pushes `chunks` (end_of_stream with the last) through one rewriter, replacing the events
/// whose index `replace` selects. `None` when the stream was refused.
fn run(
    chunks: &[&[u8]],
    max: usize,
    replace: &dyn Fn(usize) -> bool,
) -> Option<(Vec<u8>, Vec<Event<'static>>)> {
    let mut rw = SseRewriter::new(max);
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let mut f = |e: &Event| {
        let selected = replace(seen.len());
        seen.push(e.clone().into_owned());
        if selected {
            Rewrite::Replace(PAYLOAD.into())
        } else {
            Rewrite::Keep
        }
    };
    for (i, chunk) in chunks.iter().enumerate() {
        match rw.push(chunk, i + 1 == chunks.len(), &mut f) {
            Ok(bytes) => out.extend(bytes),
            Err(_) => {
                assert!(
                    rw.push(b"\n\n", true, &mut f).is_err(),
                    "refused stream resumed"
                );
                return None;
            }
        }
    }
    Some((out, seen))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let cuts = usize::from(mode & 7).min(rest.len());
    let (lengths, stream) = rest.split_at(cuts);
    let mut chunks = Vec::new();
    let mut tail = stream;
    for &len in lengths {
        let (chunk, after) = tail.split_at(usize::from(len).min(tail.len()));
        chunks.push(chunk);
        tail = after;
    }
    chunks.push(tail);

    let replacing = mode & 8 != 0;
    let select = mode >> 5;
    let replace = |i: usize| replacing && (select >> (i % 3)) & 1 == 1;
    let max = if mode & 16 != 0 { SMALL_MAX } else { MAX };

    let chunked = run(&chunks, max, &replace);
    if max != MAX || stream.len() > MAX {
        return; // Property 1 only: the stream may rightly be refused.
    }
    let (out, seen) = chunked.expect("a stream under the limit is never refused");
    let (whole_out, whole_seen) = run(&[stream], MAX, &replace).expect("under the limit");
    assert_eq!(seen, whole_seen, "chunking changed the events seen");
    assert_eq!(out, whole_out, "chunking changed the output");
    if !replacing {
        let (again, _) = run(&[&out], MAX, &|_| false).expect("output under the limit");
        assert_eq!(again, out, "kept events were not forwarded verbatim");
    }

    let data = PAYLOAD.replace("\r\n", "\n").replace('\r', "\n");
    let expected: Vec<Event> = seen
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            if replace(i) {
                Event {
                    data: data.clone().into(),
                    ..e
                }
            } else {
                e
            }
        })
        .filter(|e| *e != Event::default())
        .collect();
    let (_, reread) = run(&[&out], MAX, &|_| false).expect("output under the limit");
    let reread: Vec<Event> = reread
        .into_iter()
        .filter(|e| *e != Event::default())
        .collect();
    assert_eq!(reread, expected, "re-reading the output gave other events");
});
