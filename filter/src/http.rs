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
    if s.is_ascii() {
        s.bytes()
            .any(|b| matches!(b, b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r' | b' '))
    } else {
        s.contains(char::is_whitespace)
    }
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
        for s in ["abc.def-ghi_jkl~+/=", "é", "\u{200b}", ""] {
            assert_eq!(has_whitespace(s), s.contains(char::is_whitespace), "{s:?}");
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
