//! The claims that say who the caller is (`sub`, `client_id`, `azp`, `jti`) are read as
//! strings (RFC 7519 StringOrURI): one of another type would be read as absent, so the token
//! would be bound to its client (sharing sessions), escape the revocation feed, and leave no
//! subject in the audit. Such a token is refused as malformed.

mod common;

use std::rc::Rc;

use common::*;
use mcp_guard::config::Config;
use mcp_guard::flow::{Action, Stream};
use mcp_guard::host::Host;
use serde_json::{json, Value};

fn base_config() -> Value {
    json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [RESOURCE],
            "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"],
            "jwks": jwks_all(),
        }],
        "servers": [{
            "name": "crm",
            "resource": RESOURCE,
            "authorization_servers": [ISSUER],
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": { "name": "p", "version": "1", "rules": [
                { "name": "all", "allow": "true" },
            ]},
        }],
        "sessions": { "key": TEST_SESSION_KEY },
    })
}

fn build(config: Value) -> Rc<Config> {
    Rc::new(
        Config::from_json(config.to_string().as_bytes(), &MapEnv::default())
            .unwrap_or_else(|e| panic!("test configuration is invalid: {e}")),
    )
}

fn post_host(token: &str, extra: &[(&str, &str)]) -> MockHost {
    let auth = format!("Bearer {token}");
    let headers: Vec<(&str, &str)> = vec![
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "mcp.example.com"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-06-18"),
        ("authorization", &auth),
    ];
    let mut host = MockHost::request(&headers);
    for (k, v) in extra {
        host.set_request_header(k, v).unwrap();
    }
    host
}

fn body(id: i64, method: &str) -> Vec<u8> {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": {} })
        .to_string()
        .into_bytes()
}

fn token(claims: Value) -> String {
    sign(Signer::Es256, &claims)
}

fn user(sub: Value) -> String {
    let mut c = claims_for("x", &["staff"], "mcp:read");
    c["sub"] = sub;
    c["client_id"] = json!("shared-app");
    token(c)
}

/// `token` initializes; the upstream issues `upstream_id`: the handle the client gets.
fn open_session(config: &Rc<Config>, token: &str, upstream_id: &str) -> Option<String> {
    let mut host = post_host(token, &[]);
    let mut stream = Stream::new(Rc::clone(config));
    stream.on_request_headers(&mut host, false);
    if !stream.awaiting_body() {
        return None;
    }
    if stream.on_request_body(&mut host, &body(1, "initialize")) != Action::Continue {
        return None;
    }
    host.set_response(&[
        (":status", "200"),
        ("content-type", "application/json"),
        ("mcp-session-id", upstream_id),
    ]);
    stream.on_response_headers(&mut host, Some(200), true);
    host.resp_header("mcp-session-id").map(str::to_string)
}

/// What the upstream got as session id when `token` presents `handle`.
fn use_session(config: &Rc<Config>, token: &str, handle: &str) -> Option<String> {
    let mut host = post_host(token, &[("mcp-session-id", handle)]);
    let mut stream = Stream::new(Rc::clone(config));
    stream.on_request_headers(&mut host, false);
    if !stream.awaiting_body() {
        return None;
    }
    if stream.on_request_body(&mut host, &body(2, "ping")) != Action::Continue {
        return None;
    }
    host.req_header("mcp-session-id").map(str::to_string)
}

/// A numeric `sub` the revocation feed lists must be refused: the IdP's feed names the user
/// "42" (a feed's keys are strings).
#[test]
fn numeric_subject_is_revoked_by_the_feed() {
    let mut c = base_config();
    c["issuers"][0]["revocation"] = json!({ "inline": {
        "not_before": { "42": NOW + 10 },
    }});
    let config = build(c);
    let t = user(json!(42));
    let mut host = post_host(&t, &[]);
    let mut stream = Stream::new(Rc::clone(&config));
    stream.on_request_headers(&mut host, false);
    let forwarded = stream.awaiting_body()
        && stream.on_request_body(&mut host, &body(1, "ping")) == Action::Continue;
    assert!(!forwarded, "a revoked subject's token was forwarded");
}

/// A numeric `jti` the revocation feed lists (a feed's ids are strings) must be refused.
#[test]
fn numeric_jti_is_revoked_by_the_feed() {
    let mut c = base_config();
    c["issuers"][0]["revocation"] = json!({ "inline": { "revoked_jti": ["1001"] } });
    let config = build(c);
    let mut claims = claims_for("alice", &["staff"], "mcp:read");
    claims["jti"] = json!(1001);
    let t = token(claims);
    let mut host = post_host(&t, &[]);
    let mut stream = Stream::new(Rc::clone(&config));
    stream.on_request_headers(&mut host, false);
    let forwarded = stream.awaiting_body()
        && stream.on_request_body(&mut host, &body(1, "ping")) == Action::Continue;
    assert!(!forwarded, "a revoked token (numeric jti) was forwarded");
}

/// Users "42" and "43" of one client keep their sessions apart; a numeric `sub` (users 42 and
/// 43 would both be bound to the client) is refused as malformed.
#[test]
fn string_subjects_keep_sessions_apart_and_a_numeric_sub_is_malformed() {
    let config = build(base_config());
    let first = user(json!("42"));
    let handle = open_session(&config, &first, "s-42").expect("a session");
    assert_eq!(
        use_session(&config, &first, &handle).as_deref(),
        Some("s-42")
    );
    assert_eq!(use_session(&config, &user(json!("43")), &handle), None);

    let mut host = post_host(&user(json!(42)), &[]);
    let mut stream = Stream::new(Rc::clone(&config));
    stream.on_request_headers(&mut host, false);
    assert!(!stream.awaiting_body());
    assert_eq!(host.reply().status, 401);
    assert_eq!(host.record()["reason"], "malformed");
}
