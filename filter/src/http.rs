//! HTTP header names and values: what the configuration may name, and media types as the
//! filter reads them from `content-type`. A leaf module.

/// The media type of a `content-type` value: before any parameters, trimmed (`Application/JSON;
/// charset=utf-8` → `Application/JSON`). Compare it without regard to case.
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// `application/json`, any case, with or without parameters.
pub fn is_json(content_type: &str) -> bool {
    media_type(content_type).eq_ignore_ascii_case("application/json")
}

/// `text/event-stream`, any case, with or without parameters.
pub fn is_event_stream(content_type: &str) -> bool {
    media_type(content_type).eq_ignore_ascii_case("text/event-stream")
}

/// Whether a `content-type` value names a charset other than UTF-8. JSON and SSE are UTF-8
/// (RFC 8259 §8.1, the SSE standard) and the filter reads them so; but peers decode by this
/// parameter (Express's JSON parser and the TypeScript SDK's server accept any `utf-*`, UTF-7
/// included, where `+ACI-` is a quote; httpx, under the Python SDK's client, decodes event
/// streams by it): the same bytes would mean another message to them. Every parameter whose
/// name begins with `charset` counts: parsers differ on which of several wins, and Python's
/// reads RFC 2231 forms (`charset*=''utf-7`, `charset*0=utf-7`), which are therefore refused
/// whatever they say. The value is compared after splitting at every `;`, so a quoted `;`
/// cannot hide a parameter from this check, only make it stricter.
pub fn foreign_charset(content_type: &str) -> bool {
    content_type.split(';').skip(1).any(|parameter| {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let name = name.trim();
        if !name
            .get(..7)
            .is_some_and(|n| n.eq_ignore_ascii_case("charset"))
        {
            return false;
        }
        if name.len() != 7 {
            return true;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        // `utf8` is UTF-8 to every decoder that knows it (Python's, WHATWG's); Express refuses it.
        !(value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8"))
    })
}

/// Whether an answer's `content-type` may be read as JSON or an event stream by an MCP client
/// while the filter reads it otherwise: the clients classify loosely (the TypeScript SDK by
/// whether the value contains `text/event-stream`, then `application/json`; the Python SDK
/// by prefix), the filter by the exact media type. So a value that names either anywhere must
/// be exactly an event stream, or exactly JSON naming no event stream; and in UTF-8.
pub fn ambiguous_answer_type(content_type: &str) -> bool {
    let lower = content_type.to_ascii_lowercase();
    let names_json = lower.contains("application/json");
    let names_events = lower.contains("text/event-stream");
    let exact = is_event_stream(content_type) || (is_json(content_type) && !names_events);
    ((names_json || names_events) && !exact) || (exact && foreign_charset(content_type))
}

/// Every request header with this prefix is removed before the router: Envoy's router takes
/// `x-envoy-retry-on`, `x-envoy-max-retries`, `x-envoy-upstream-rq-timeout-ms`,
/// `x-envoy-hedge-on-per-try-timeout` and the like from a client it counts as internal
/// (`internal_address_config`), and would send one allowed `tools/call` to the upstream
/// several times for one decision, one audit record and one limit hit. The upstream gets none
/// either (`x-envoy-original-path`, `x-envoy-internal` forged or not).
pub const ENVOY_HEADER_PREFIX: &str = "x-envoy-";

/// Whether a request header is removed before the upstream by its name's prefix, whatever
/// `strip_headers` says (the headers always removed by name join every server's list at load).
pub fn always_removed(name: &str) -> bool {
    name.get(..ENVOY_HEADER_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(ENVOY_HEADER_PREFIX))
}

/// A token (RFC 9110 §5.6.2): what a header name may be.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII, space and tab: what may go into a header value as is.
pub fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// `s.contains(char::is_whitespace)`, byte by byte for ASCII text (a token, nearly always):
/// decoding characters for Unicode's table costs more than the rest of a cached token check.
pub fn has_whitespace(s: &str) -> bool {
    // Text of printable ASCII only (every well-formed token) has none.
    if printable_ascii(s.as_bytes()) {
        return false;
    }
    if s.is_ascii() {
        s.bytes()
            .any(|b| matches!(b, b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r' | b' '))
    } else {
        s.contains(char::is_whitespace)
    }
}

/// Whether every byte is printable ASCII (0x21 to 0x7E), eight bytes at a time (SWAR on a
/// `u64`; a byte-by-byte loop costs several instructions a byte, and a token is a kilobyte).
pub fn printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let words = bytes.chunks_exact(8);
    let rest = words.remainder();
    let printable_word = |w: u64| {
        // Some byte below 0x21: the lowest such byte is marked exactly (borrows only run
        // upwards), so a mark means one is there. Some byte at or above 0x7F: its high bit,
        // or the one adding 1 sets (a carry out of 0xFF comes only from a byte already marked).
        let low = w.wrapping_sub(ONES * 0x21) & !w & HIGH;
        let high = (w | w.wrapping_add(ONES)) & HIGH;
        low | high == 0
    };
    words
        .map(|c| c.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w)))
        .all(printable_word)
        && rest.iter().all(|b| (0x21..0x7f).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_found_as_unicode_defines_it() {
        for s in [
            "a b",
            "a\tb",
            "a\x0Bb",
            "a\x0Cb",
            "a\rb",
            "a\nb",
            "a\u{a0}b",
            "a\u{2028}b",
            "a\u{3000}b",
        ] {
            assert!(has_whitespace(s), "{s:?}");
            assert_eq!(has_whitespace(s), s.contains(char::is_whitespace));
        }
        for s in ["abc.def-ghi_jkl~+/=", "é", "\u{200b}", "", "a\x01\x7fb"] {
            assert_eq!(has_whitespace(s), s.contains(char::is_whitespace), "{s:?}");
        }
        // Long text, whitespace at every place around the chunks the check goes by.
        for at in [0, 1, 31, 32, 33, 63, 64, 99] {
            for space in [" ", "\t", "\u{a0}", "\u{85}"] {
                let mut s = "a".repeat(100);
                s.replace_range(at..at + 1, space);
                assert!(has_whitespace(&s), "{s:?}");
            }
        }
        assert!(!has_whitespace(&"a".repeat(100)));
    }

    #[test]
    fn printable_ascii_is_every_byte_from_0x21_to_0x7e() {
        let naive = |b: &[u8]| b.iter().all(|c| (0x21..0x7f).contains(c));
        for bad in 0..=255u8 {
            for at in 0..20 {
                for len in [at + 1, 20, 31] {
                    let mut text = vec![b'a'; len];
                    text[at] = bad;
                    assert_eq!(
                        printable_ascii(&text),
                        naive(&text),
                        "{bad:#x} at {at} of {len}"
                    );
                    // Next to the extremes of what is printable.
                    for edge in [0x21u8, 0x7e] {
                        let mut t = vec![edge; len];
                        t[at] = bad;
                        assert_eq!(printable_ascii(&t), naive(&t), "{bad:#x} among {edge:#x}");
                    }
                }
            }
        }
        assert!(printable_ascii(b""));
    }

    #[test]
    fn only_utf_8_is_a_native_charset() {
        for value in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;CHARSET=UTF-8",
            "application/json; charset=\"utf-8\"",
            "text/event-stream; charset = utf-8 ; x=1",
            "application/json; x=\"a;b\"",
            "application/json;charset=UTF8",
        ] {
            assert!(!foreign_charset(value), "{value}");
        }
        for value in [
            "application/json; charset=utf-7",
            "application/json; charset=UTF-16",
            "application/json; charset=utf-8; charset=utf-7",
            "application/json; charset=\"utf\\-7\"",
            "application/json; charset=",
            "application/json; charset",
            "application/json; x=\"a;charset=utf-7\"",
            "text/event-stream; charset*=''utf-16le",
            "text/event-stream; CHARSET*0=utf-7",
            "text/event-stream; charset*=utf-8''utf-8",
            "text/event-stream; charset=iso-8859-1",
        ] {
            assert!(foreign_charset(value), "{value}");
        }
    }

    #[test]
    fn answer_types_a_client_could_read_otherwise_are_ambiguous() {
        for value in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/event-stream",
            "text/event-stream; x=application/json",
            "text/plain",
            "",
        ] {
            assert!(!ambiguous_answer_type(value), "{value}");
        }
        for value in [
            "application/json-seq",
            "application/jsonx",
            "text/plain; x=application/json",
            "application/json; x=text/event-stream",
            "text/event-stream2",
            "text/html, application/json",
            "application/json; charset=utf-16",
            "text/event-stream; charset=utf-7",
        ] {
            assert!(ambiguous_answer_type(value), "{value}");
        }
    }

    #[test]
    fn media_types_are_read_without_parameters_or_case() {
        for (value, json, events) in [
            ("application/json", true, false),
            ("Application/JSON; charset=utf-8", true, false),
            (" application/json ;x=1", true, false),
            ("text/event-stream", false, true),
            ("TEXT/EVENT-STREAM;charset=utf-8", false, true),
            ("application/json-seq", false, false),
            ("text/plain", false, false),
            ("", false, false),
        ] {
            assert_eq!(is_json(value), json, "{value}");
            assert_eq!(is_event_stream(value), events, "{value}");
        }
    }
}
