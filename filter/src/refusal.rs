//! Every way the filter refuses a request or an answer, as one type. Each refusal knows its
//! HTTP status, its stable reason code (the audit record's `reason`, a metrics label), its
//! JSON-RPC error code, its headers and its body; `Stream::refuse` (flow/done.rs) is the one
//! function that answers with it and audits it. The prose (`detail`) is for people and may
//! change; the codes are a stable interface (docs/audit.md lists them).

use serde_json::{json, Value};

use crate::audit::Verdict;
use crate::reply;

/// A refusal: what went wrong, with what the answer needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    // ---- the request's headers -----------------------------------------------------------------
    /// No MCP server is configured at this path (404).
    UnknownPath,
    /// The token (or its proof of possession) was refused: 401, or 400 for a malformed
    /// request. `code` is the authentication reason (`expired`, `wrong_audience`, …).
    Unauthenticated {
        code: &'static str,
        status: u32,
        /// OAuth error of the body (`invalid_token`, `invalid_request`, …).
        error: &'static str,
        description: String,
        /// `WWW-Authenticate` values, in order.
        challenges: Vec<String>,
    },
    /// Keys, revocations or introspection are not available: not the caller's fault (503).
    AuthUnavailable {
        code: &'static str,
        description: String,
    },
    /// A header that must appear at most once appeared more often (400).
    RepeatedHeader(std::borrow::Cow<'static, str>),
    /// `Mcp-Session-Id` is not visible ASCII (400).
    InvalidSessionId,
    /// A session handle that does not open for this caller and server (404); `code` says why.
    SessionNotFound(&'static str),
    /// A `Last-Event-ID` that is not an event handle of this caller and server (400); `code`
    /// says why ([`crate::resume`]).
    EventIdNotFound(&'static str),
    /// A compressed request body (415).
    CompressedRequest,
    /// A `_method` query parameter (400).
    MethodOverride,
    /// The client's credentials could not be removed or the service's set (500).
    CredentialNotSet,
    /// The upstream's session id could not replace the client's handle (500).
    SessionNotForwarded,
    /// Not POST, GET or DELETE (405).
    MethodNotAllowed,
    // ---- the request's body --------------------------------------------------------------------
    /// A body on a GET or DELETE (400).
    BodyNotAllowed,
    /// Trailers ended the request before it was decided (400): MCP requests carry none.
    RequestTrailers,
    /// Over `max_body_bytes` (413).
    BodyTooLarge,
    /// A POST body that is not `application/json` (415).
    UnsupportedMediaType,
    /// Not one valid JSON-RPC message (400); `code` names the problem.
    InvalidMessage {
        code: &'static str,
        jsonrpc: i64,
        detail: String,
    },
    /// `Mcp-Protocol-Version`, `Mcp-Method`, `Mcp-Name` or `Mcp-Param-*` disagree with the
    /// body (400, -32020).
    HeaderMismatch { id: Option<Value>, detail: String },
    /// A JSON-RPC batch where none is allowed (400).
    BatchNotAllowed(String),
    /// A JSON-RPC batch on a server with limits (400).
    BatchWithLimits,
    /// The policy, or a pin, denied the message: a request is answered in-band (200, its
    /// JSON-RPC error), anything else with 403. `body` is the JSON-RPC error.
    Denied {
        code: &'static str,
        request: bool,
        jsonrpc: i64,
        detail: String,
        body: Vec<u8>,
    },
    /// The policy needs scopes the token does not have (403 + `insufficient_scope`).
    InsufficientScope {
        detail: String,
        challenge: String,
        body: Vec<u8>,
    },
    /// A task handle that does not open for this caller and server ("task not found"): 200 for
    /// a request (its JSON-RPC error), 404 otherwise. `detail` says why.
    TaskNotFound {
        id: Option<Value>,
        request: bool,
        detail: String,
    },
    /// A `requestState` that is not this caller's for this request (a request: 200, -32602).
    RequestStateRefused { id: Option<Value>, detail: String },
    /// Task ids (or request states) in a JSON-RPC batch (400): batches have no tasks, so they
    /// are never opened.
    TaskInBatch,
    /// The message with its tasks opened no longer parses (400).
    TaskIdInvalid {
        id: Option<Value>,
        jsonrpc: i64,
        detail: String,
    },
    /// The body with the opened task ids could not be forwarded (500).
    TaskNotForwarded { id: Option<Value> },
    /// A limit or budget refused the message: 200 for a request, 429 otherwise.
    RateLimited {
        code: &'static str,
        request: bool,
        detail: String,
        body: Vec<u8>,
        retry_after_s: Option<u64>,
        /// The rate limit service failed and the limit fails closed: an error, not a denial.
        failed: bool,
    },
    /// The filter could not complete the request (503).
    Internal { code: &'static str, detail: String },
    // ---- the answer ----------------------------------------------------------------------------
    /// The upstream refused the gateway's service credential (401/403 → 502).
    UpstreamRefusedCredential { id: Option<Value> },
    /// Envoy routed the request elsewhere than the route and cluster the filter checked it
    /// for (its route was matched again on the headers the filter changed): the answer does
    /// not go on (502). `detail` names both.
    Rerouted { detail: String, body: Vec<u8> },
    /// A compressed response (502).
    CompressedResponse(String),
    /// An answer whose `content-type` a client may read otherwise than the filter (502): JSON
    /// or an event stream in a charset other than UTF-8, a value that names JSON or an event
    /// stream without being exactly one, several values. The (first) `content-type` value.
    AmbiguousContentType { content_type: String, body: Vec<u8> },
    /// The response carried the service key and `key_leak: block` (502).
    ServiceKeyInResponse,
    /// A session the gateway cannot seal for the caller: `status` 502 or 403.
    SessionUnsealable {
        code: &'static str,
        status: u32,
        id: Option<Value>,
        message: &'static str,
    },
    /// The sealed session handle could not replace the upstream's id (502).
    SessionHeaderNotSet,
    /// A response header that must go could not be removed (502).
    ResponseHeaderNotRemoved { body: Vec<u8> },
    /// The answer to a list request cannot be read as that list (502).
    UnreadableListAnswer { detail: String, body: Vec<u8> },
    /// A held response that could not be checked (502; a streaming one is cut instead).
    UninspectableResponse {
        code: &'static str,
        detail: String,
        body: Vec<u8>,
    },
}

impl Refusal {
    /// The stable reason code: the audit record's `reason` and the metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownPath => "unknown_path",
            Refusal::Unauthenticated { code, .. } | Refusal::AuthUnavailable { code, .. } => code,
            Refusal::RepeatedHeader(_) => "repeated_header",
            Refusal::InvalidSessionId => "invalid_session_id",
            Refusal::SessionNotFound(code) | Refusal::EventIdNotFound(code) => code,
            Refusal::CompressedRequest => "content_encoding",
            Refusal::MethodOverride => "method_override",
            Refusal::CredentialNotSet => "credential_not_set",
            Refusal::SessionNotForwarded | Refusal::SessionHeaderNotSet => "session_header_not_set",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::BodyNotAllowed => "body_not_allowed",
            Refusal::RequestTrailers => "request_trailers",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::InvalidMessage { code, .. } => code,
            Refusal::HeaderMismatch { .. } => "header_mismatch",
            Refusal::BatchNotAllowed(_) => "batch_not_allowed",
            Refusal::BatchWithLimits => "batch_with_limits",
            Refusal::Denied { code, .. } => code,
            Refusal::InsufficientScope { .. } => "insufficient_scope",
            Refusal::TaskNotFound { .. } | Refusal::TaskInBatch => crate::tasks::NOT_FOUND,
            Refusal::TaskIdInvalid { .. } => "task_id_invalid",
            Refusal::RequestStateRefused { .. } => crate::tasks::STATE_REFUSED,
            Refusal::TaskNotForwarded { .. } => "task_body_not_set",
            Refusal::RateLimited { code, .. } => code,
            Refusal::Internal { code, .. } => code,
            Refusal::UpstreamRefusedCredential { .. } => "upstream_refused_service_credential",
            Refusal::Rerouted { .. } => "rerouted",
            Refusal::CompressedResponse(_) | Refusal::AmbiguousContentType { .. } => {
                "uninspectable_response"
            }
            Refusal::ServiceKeyInResponse => "service_key_in_response",
            Refusal::SessionUnsealable { code, .. } => code,
            Refusal::ResponseHeaderNotRemoved { .. } => "response_header_not_removed",
            Refusal::UnreadableListAnswer { .. } => "unreadable_list_answer",
            Refusal::UninspectableResponse { code, .. } => code,
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> u32 {
        match self {
            Refusal::UnknownPath | Refusal::SessionNotFound(_) => 404,
            Refusal::Unauthenticated { status, .. } => *status,
            Refusal::AuthUnavailable { .. } | Refusal::Internal { .. } => 503,
            Refusal::RepeatedHeader(_)
            | Refusal::InvalidSessionId
            | Refusal::EventIdNotFound(_)
            | Refusal::MethodOverride
            | Refusal::BodyNotAllowed
            | Refusal::RequestTrailers
            | Refusal::InvalidMessage { .. }
            | Refusal::HeaderMismatch { .. }
            | Refusal::BatchNotAllowed(_)
            | Refusal::BatchWithLimits => 400,
            Refusal::CompressedRequest | Refusal::UnsupportedMediaType => 415,
            Refusal::CredentialNotSet | Refusal::SessionNotForwarded => 500,
            Refusal::MethodNotAllowed => 405,
            Refusal::BodyTooLarge => 413,
            Refusal::Denied { request, .. } => {
                if *request {
                    200
                } else {
                    403
                }
            }
            Refusal::InsufficientScope { .. } => 403,
            Refusal::TaskNotFound { request, .. } => {
                if *request {
                    200
                } else {
                    404
                }
            }
            Refusal::TaskInBatch | Refusal::TaskIdInvalid { .. } => 400,
            Refusal::RequestStateRefused { .. } => 200,
            Refusal::TaskNotForwarded { .. } => 500,
            Refusal::RateLimited { request, .. } => {
                if *request {
                    200
                } else {
                    429
                }
            }
            Refusal::SessionUnsealable { status, .. } => *status,
            Refusal::UpstreamRefusedCredential { .. }
            | Refusal::Rerouted { .. }
            | Refusal::CompressedResponse(_)
            | Refusal::AmbiguousContentType { .. }
            | Refusal::ServiceKeyInResponse
            | Refusal::SessionHeaderNotSet
            | Refusal::ResponseHeaderNotRemoved { .. }
            | Refusal::UnreadableListAnswer { .. }
            | Refusal::UninspectableResponse { .. } => 502,
        }
    }

    /// The JSON-RPC error code the answer (and the audit record's `error_code`) carries, when
    /// the answer is a JSON-RPC error.
    pub fn jsonrpc_code(&self) -> Option<i64> {
        match self {
            Refusal::RepeatedHeader(_)
            | Refusal::InvalidSessionId
            | Refusal::EventIdNotFound(_)
            | Refusal::CompressedRequest
            | Refusal::MethodOverride
            | Refusal::BodyTooLarge
            | Refusal::UnsupportedMediaType
            | Refusal::BatchNotAllowed(_)
            | Refusal::BatchWithLimits => Some(-32600),
            Refusal::SessionUnsealable { .. } => Some(-32600),
            Refusal::SessionNotFound(_) => Some(-32001),
            Refusal::TaskNotFound { .. } => Some(crate::tasks::NOT_FOUND_CODE),
            Refusal::TaskInBatch => Some(-32600),
            Refusal::RequestStateRefused { .. } => Some(-32602),
            Refusal::TaskIdInvalid { jsonrpc, .. } => Some(*jsonrpc),
            Refusal::TaskNotForwarded { .. } => Some(reply::INTERNAL),
            Refusal::CredentialNotSet
            | Refusal::SessionNotForwarded
            | Refusal::Internal { .. }
            | Refusal::UnreadableListAnswer { .. } => Some(reply::INTERNAL),
            Refusal::InvalidMessage { jsonrpc, .. } | Refusal::Denied { jsonrpc, .. } => {
                Some(*jsonrpc)
            }
            Refusal::HeaderMismatch { .. } => Some(reply::HEADER_MISMATCH),
            Refusal::InsufficientScope { .. } => Some(reply::POLICY_DENIED),
            Refusal::RateLimited { .. } => Some(reply::RATE_LIMITED),
            Refusal::UpstreamRefusedCredential { .. } => Some(reply::UPSTREAM_CREDENTIAL),
            _ => None,
        }
    }

    /// `deny` for the caller's or the policy's doing, `error` when the filter, Envoy or the
    /// upstream failed.
    pub fn verdict(&self) -> Verdict {
        match self {
            Refusal::AuthUnavailable { .. }
            | Refusal::TaskNotForwarded { .. }
            | Refusal::CredentialNotSet
            | Refusal::SessionNotForwarded
            | Refusal::Internal { .. }
            | Refusal::UpstreamRefusedCredential { .. }
            | Refusal::Rerouted { .. }
            | Refusal::CompressedResponse(_)
            | Refusal::AmbiguousContentType { .. }
            | Refusal::ServiceKeyInResponse
            | Refusal::SessionUnsealable { .. }
            | Refusal::SessionHeaderNotSet
            | Refusal::ResponseHeaderNotRemoved { .. }
            | Refusal::UnreadableListAnswer { .. }
            | Refusal::UninspectableResponse { .. } => Verdict::Error,
            Refusal::RateLimited { failed: true, .. } => Verdict::Error,
            _ => Verdict::Deny,
        }
    }

    /// The prose: what happened, for people (the audit record's `detail`).
    pub fn detail(&self) -> String {
        match self {
            Refusal::UnknownPath => "no MCP server at this path".into(),
            Refusal::Unauthenticated { description, .. }
            | Refusal::AuthUnavailable { description, .. } => description.clone(),
            Refusal::RepeatedHeader(name) => format!("the {name} header must appear at most once"),
            Refusal::InvalidSessionId => "Mcp-Session-Id must be visible ASCII".into(),
            Refusal::SessionNotFound(_) => "Session not found".into(),
            Refusal::EventIdNotFound(_) => {
                "Last-Event-ID does not name an event of this caller's streams: reconnect without it".into()
            }
            Refusal::CompressedRequest => "compressed request bodies are refused".into(),
            Refusal::MethodOverride => {
                "a _method query parameter is refused: the HTTP method is the request's own".into()
            }
            Refusal::CredentialNotSet => "the request's credentials could not be swapped".into(),
            Refusal::SessionNotForwarded => {
                "the session (or the event id a stream resumes from) could not be forwarded".into()
            }
            Refusal::MethodNotAllowed => "use POST, GET or DELETE".into(),
            Refusal::BodyNotAllowed => "GET and DELETE requests carry no body".into(),
            Refusal::RequestTrailers => "MCP requests carry no trailers".into(),
            Refusal::BodyTooLarge => "request body too large".into(),
            Refusal::UnsupportedMediaType => {
                "POST bodies must be application/json, in UTF-8 (no other charset)".into()
            }
            Refusal::InvalidMessage { detail, .. }
            | Refusal::Rerouted { detail, .. }
            | Refusal::HeaderMismatch { detail, .. }
            | Refusal::Denied { detail, .. }
            | Refusal::InsufficientScope { detail, .. }
            | Refusal::RateLimited { detail, .. }
            | Refusal::Internal { detail, .. }
            | Refusal::UnreadableListAnswer { detail, .. }
            | Refusal::UninspectableResponse { detail, .. }
            | Refusal::TaskNotFound { detail, .. }
            | Refusal::TaskIdInvalid { detail, .. }
            | Refusal::RequestStateRefused { detail, .. } => detail.clone(),
            Refusal::TaskInBatch => {
                "task ids and request states cannot be sent in a JSON-RPC batch".into()
            }
            Refusal::TaskNotForwarded { .. } => "the task could not be forwarded".into(),
            Refusal::BatchNotAllowed(protocol) => format!(
                "JSON-RPC batches are not allowed in protocol version {protocol:?}; send one message per request"
            ),
            Refusal::BatchWithLimits => "JSON-RPC batches are refused on a server with limits; send one message per request".into(),
            Refusal::UpstreamRefusedCredential { .. } => "the MCP server refused the gateway's service credential; an operator must fix or rotate it".into(),
            Refusal::CompressedResponse(encoding) => format!("content-encoding {encoding}"),
            Refusal::AmbiguousContentType { content_type, .. } => {
                format!("content-type {content_type}")
            }
            Refusal::ServiceKeyInResponse => "response carried the service key".into(),
            Refusal::SessionUnsealable { message, .. } => (*message).into(),
            Refusal::SessionHeaderNotSet => "the session could not be sealed".into(),
            Refusal::ResponseHeaderNotRemoved { .. } => {
                "a response header that must not reach the client could not be removed".into()
            }
        }
    }

    /// The answer's headers besides `content-type`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Refusal::Unauthenticated { challenges, .. } => challenges
                .iter()
                .map(|c| ("www-authenticate", c.clone()))
                .collect(),
            Refusal::AuthUnavailable { .. } => vec![("retry-after", "2".into())],
            Refusal::MethodNotAllowed => vec![("allow", "GET, POST, DELETE".into())],
            Refusal::InsufficientScope { challenge, .. } => {
                vec![("www-authenticate", challenge.clone())]
            }
            Refusal::RateLimited {
                retry_after_s: Some(s),
                ..
            } => vec![("retry-after", s.to_string())],
            _ => Vec::new(),
        }
    }

    /// The answer's body (JSON).
    pub fn body(&self) -> Vec<u8> {
        let rpc = |id: Option<&Value>, code: i64, message: &str| {
            reply::jsonrpc_error(id, code, message, None)
        };
        match self {
            Refusal::UnknownPath => reply::http_error("not_found", &self.detail()),
            Refusal::Unauthenticated {
                error, description, ..
            } => reply::http_error(error, description),
            Refusal::AuthUnavailable { description, .. } => {
                reply::http_error("temporarily_unavailable", description)
            }
            Refusal::MethodNotAllowed => reply::http_error("method_not_allowed", &self.detail()),
            Refusal::BodyNotAllowed | Refusal::RequestTrailers => {
                reply::http_error("invalid_request", &self.detail())
            }
            Refusal::HeaderMismatch { id, detail } => {
                rpc(id.as_ref(), reply::HEADER_MISMATCH, detail)
            }
            Refusal::Denied { body, .. }
            | Refusal::InsufficientScope { body, .. }
            | Refusal::RateLimited { body, .. }
            | Refusal::ResponseHeaderNotRemoved { body }
            | Refusal::UnreadableListAnswer { body, .. }
            | Refusal::UninspectableResponse { body, .. }
            | Refusal::AmbiguousContentType { body, .. }
            | Refusal::Rerouted { body, .. } => body.clone(),
            Refusal::UpstreamRefusedCredential { id } => {
                rpc(id.as_ref(), reply::UPSTREAM_CREDENTIAL, &self.detail())
            }
            Refusal::CompressedResponse(_) => {
                reply::http_error("bad_gateway", "the MCP server sent a compressed response")
            }
            Refusal::ServiceKeyInResponse => {
                reply::http_error("bad_gateway", "upstream response refused")
            }
            Refusal::SessionUnsealable { id, message, .. } => rpc(id.as_ref(), -32600, message),
            Refusal::TaskNotFound { id, .. } => rpc(
                id.as_ref(),
                crate::tasks::NOT_FOUND_CODE,
                crate::tasks::NOT_FOUND_MESSAGE,
            ),
            Refusal::TaskIdInvalid {
                id,
                jsonrpc,
                detail,
            } => rpc(id.as_ref(), *jsonrpc, detail),
            Refusal::TaskNotForwarded { id } => rpc(id.as_ref(), reply::INTERNAL, &self.detail()),
            Refusal::RequestStateRefused { id, .. } => rpc(
                id.as_ref(),
                -32602,
                "Invalid requestState: it was not issued to this caller for this request; \
                 send the request again without it",
            ),
            Refusal::SessionHeaderNotSet => reply::http_error("bad_gateway", &self.detail()),
            other => match other.jsonrpc_code() {
                Some(code) => rpc(None, code, &other.detail()),
                None => json!({ "error": other.code() }).to_string().into_bytes(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_identifiers_and_bodies_are_json() {
        let all = [
            Refusal::UnknownPath,
            Refusal::RepeatedHeader("content-type".into()),
            Refusal::InvalidSessionId,
            Refusal::SessionNotFound("session_tampered"),
            Refusal::EventIdNotFound("event_id_tampered"),
            Refusal::CompressedRequest,
            Refusal::MethodOverride,
            Refusal::CredentialNotSet,
            Refusal::SessionNotForwarded,
            Refusal::MethodNotAllowed,
            Refusal::BodyNotAllowed,
            Refusal::RequestTrailers,
            Refusal::BodyTooLarge,
            Refusal::UnsupportedMediaType,
            Refusal::BatchNotAllowed("2025-06-18".into()),
            Refusal::BatchWithLimits,
            Refusal::UpstreamRefusedCredential { id: None },
            Refusal::CompressedResponse("gzip".into()),
            Refusal::ServiceKeyInResponse,
            Refusal::SessionHeaderNotSet,
        ];
        for r in &all {
            assert!(
                r.code()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r:?}"
            );
            assert!(serde_json::from_slice::<Value>(&r.body()).is_ok(), "{r:?}");
            assert!(!r.detail().is_empty());
            assert!((200..600).contains(&r.status()));
        }
        assert_eq!(
            Refusal::MethodNotAllowed.headers(),
            vec![("allow", "GET, POST, DELETE".to_string())]
        );
        assert_eq!(Refusal::BodyTooLarge.jsonrpc_code(), Some(-32600));
        assert_eq!(Refusal::ServiceKeyInResponse.verdict(), Verdict::Error);
        assert_eq!(Refusal::UnknownPath.verdict(), Verdict::Deny);
    }
}
