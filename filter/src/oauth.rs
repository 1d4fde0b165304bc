//! The MCP authorization spec as seen from the resource server: RFC 9728 Protected Resource
//! Metadata and RFC 6750 `WWW-Authenticate` challenges.

use serde_json::json;

use crate::config::Server;
pub use crate::url::{metadata_path, split_resource, split_url, WELL_KNOWN};

/// The RFC 9728 metadata document for a server.
pub fn metadata_document(server: &Server) -> Vec<u8> {
    let mut doc = serde_json::Map::new();
    doc.insert("resource".into(), json!(server.resource));
    doc.insert(
        "authorization_servers".into(),
        json!(server.authorization_servers),
    );
    doc.insert("bearer_methods_supported".into(), json!(["header"]));
    if !server.scopes_supported.is_empty() {
        doc.insert("scopes_supported".into(), json!(server.scopes_supported));
    }
    if let Some(name) = &server.resource_name {
        doc.insert("resource_name".into(), json!(name));
    }
    if server.require_dpop {
        doc.insert("dpop_bound_access_tokens_required".into(), json!(true));
    }
    serde_json::Value::Object(doc).to_string().into_bytes()
}

/// Quotes a value for an auth-param (RFC 7235 quoted-string).
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A `WWW-Authenticate: Bearer …` challenge.
///
/// `error` is `None` when no token was presented (RFC 6750 §3.1: no error code then).
pub fn challenge(server: &Server, error: Option<&str>, scope: Option<&str>) -> String {
    let mut params = Vec::with_capacity(3);
    if let Some(error) = error {
        params.push(format!("error={}", quoted(error)));
    }
    let scope = scope.map(str::to_string).or_else(|| {
        (!server.scopes_supported.is_empty()).then(|| server.scopes_supported.join(" "))
    });
    if let Some(scope) = scope {
        params.push(format!("scope={}", quoted(&scope)));
    }
    params.push(format!(
        "resource_metadata={}",
        quoted(&server.metadata_url)
    ));
    format!("Bearer {}", params.join(", "))
}

/// Why a request carries no usable bearer token, in RFC 6750 terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization` header: 401 without an error code.
    Missing,
    /// Not `Bearer <token>`: 401 `invalid_token`.
    Malformed(&'static str),
    /// Several `Authorization` headers, or a token in the query string: 400 `invalid_request`.
    InvalidRequest(&'static str, &'static str),
}

/// Extracts the bearer token: exactly one `Authorization` header, scheme `Bearer` in any case,
/// no `access_token` in the query string (RFC 6750 §2.3 is never accepted).
pub fn bearer<'h>(authorization: &[&'h str], query: &str) -> Result<&'h str, BearerError> {
    let in_query = crate::url::query_names(query).any(|name| name == b"access_token");
    if in_query {
        return Err(BearerError::InvalidRequest(
            "token_in_query",
            "tokens in the query string are refused; send an Authorization header",
        ));
    }
    let value = match authorization {
        [] => return Err(BearerError::Missing),
        // Envoy joins repeated Authorization headers into one value with ",": a comma never
        // occurs in a bearer token (RFC 6750 b64token), so it means several credentials.
        [one] if !one.contains(',') => *one,
        _ => {
            return Err(BearerError::InvalidRequest(
                "duplicate_authorization",
                "more than one Authorization header",
            ))
        }
    };
    let token = match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(BearerError::Malformed(
                "the Authorization scheme must be Bearer",
            ))
        }
    };
    if token.is_empty() || crate::http::has_whitespace(token) {
        return Err(BearerError::Malformed("empty or malformed bearer token"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_resource_urls() {
        assert_eq!(
            split_resource("https://mcp.example.com/mcp"),
            Ok(("https://mcp.example.com", "/mcp"))
        );
        assert_eq!(
            split_resource("http://127.0.0.1:10000"),
            Ok(("http://127.0.0.1:10000", ""))
        );
        assert!(split_resource("mcp.example.com/mcp").is_err());
        assert!(split_resource("https:///mcp").is_err());
        assert_eq!(split_resource("https://h/x"), Ok(("https://h", "/x")));
        assert!(split_resource("https://a/mcp?x=1").is_err());
    }

    #[test]
    fn metadata_paths_follow_rfc_9728() {
        assert_eq!(
            metadata_path("/mcp"),
            "/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(metadata_path(""), WELL_KNOWN);
        assert_eq!(metadata_path("/"), WELL_KNOWN);
    }

    #[test]
    fn bearer_rules() {
        assert_eq!(bearer(&["Bearer abc"], ""), Ok("abc"));
        assert_eq!(bearer(&["bEaReR abc"], "x=1"), Ok("abc"));
        assert_eq!(bearer(&[], ""), Err(BearerError::Missing));
        assert!(matches!(
            bearer(&["Basic abc"], ""),
            Err(BearerError::Malformed(_))
        ));
        assert!(matches!(
            bearer(&["Bearer a b"], ""),
            Err(BearerError::Malformed(_))
        ));
        assert!(matches!(
            bearer(&["Bearer "], ""),
            Err(BearerError::Malformed(_))
        ));
        assert!(matches!(
            bearer(&["Bearer a", "Bearer b"], ""),
            Err(BearerError::InvalidRequest("duplicate_authorization", _))
        ));
        // Two headers as Envoy hands them over: joined with a comma.
        assert!(matches!(
            bearer(&["Bearer a,Bearer b"], ""),
            Err(BearerError::InvalidRequest("duplicate_authorization", _))
        ));
        assert!(matches!(
            bearer(&["Bearer a"], "Access_Token=x"),
            Err(BearerError::InvalidRequest("token_in_query", _))
        ));
    }

    #[test]
    fn quotes_auth_params() {
        assert_eq!(quoted("a\"b\\c\n"), "\"a\\\"b\\\\c\"");
    }
}
