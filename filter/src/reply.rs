//! The answers the filter gives itself: JSON-RPC errors and plain HTTP errors.

use serde_json::{json, Value};

/// JSON-RPC error code of a policy denial. Outside the JSON-RPC reserved range
/// (-32768..-32000), which also holds MCP's own codes.
pub const POLICY_DENIED: i64 = -31403;
/// JSON-RPC error code when the filter could not complete a request (fail closed).
pub const INTERNAL: i64 = -32603;
/// The upstream refused the gateway's service credential (answered with HTTP 502).
pub const UPSTREAM_CREDENTIAL: i64 = -31502;
/// JSON-RPC error code of a message refused by a rate limit or budget (`limits:`), answered with
/// HTTP 200 and `Retry-After`. Outside the reserved range, like [`POLICY_DENIED`] (MCP defines
/// no code for it).
pub const RATE_LIMITED: i64 = -31429;
/// 2026-07-28: `Mcp-Method` / `Mcp-Name` headers disagree with the body.
pub const HEADER_MISMATCH: i64 = -32020;

/// A JSON-RPC error response body. `id` is echoed; `None` becomes `null`.
pub fn jsonrpc_error(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Vec<u8> {
    let mut error = serde_json::Map::new();
    error.insert("code".into(), json!(code));
    error.insert("message".into(), json!(message));
    if let Some(data) = data {
        error.insert("data".into(), data);
    }
    json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error })
        .to_string()
        .into_bytes()
}

/// A small JSON body for HTTP-level refusals (401, 404, 405, …).
pub fn http_error(error: &str, description: &str) -> Vec<u8> {
    json!({ "error": error, "error_description": description })
        .to_string()
        .into_bytes()
}
