//! The request path end to end, through the public `Stream` API and an in-memory host: what a
//! client gets back, what reaches the upstream, and what the audit trail says.

mod common;

use std::rc::Rc;

use common::*;
use mcp_guard::config::Config;
use mcp_guard::flow::{Action, BodyAction, Stream};
use mcp_guard::host::Host;
use mcp_guard::jwt::KeySet;
use serde_json::{json, Value};

// ---- configuration -----------------------------------------------------------------------

fn policy() -> Value {
    json!({
        "name": "crm",
        "version": "7",
        "rules": [
            { "name": "connect", "allow": "mcp.method in [\"initialize\", \"notifications/initialized\", \"ping\", \"tools/list\", \"prompts/list\", \"resources/list\"]" },
            { "name": "read-tools", "allow": "mcp.method == \"tools/call\" && mcp.tool.name in [\"search\", \"get\"]" },
            { "name": "no-delete", "deny": "mcp.tool.name == \"delete\" && !(\"admins\" in jwt.groups)" },
            { "name": "admin-delete", "allow": "mcp.tool.name == \"delete\" && \"admins\" in jwt.groups" },
            { "name": "update-needs-write", "allow": "mcp.tool.name == \"update\"", "scopes": ["crm:write"] },
        ],
    })
}

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
            "forward_claims": { "email": "x-mcp-user" },
            "policy": policy(),
        }],
        "sessions": { "key": SESSION_KEY },
    })
}

/// The sealing key of the test configuration (32 bytes, base64), and another one.
const SESSION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_SESSION_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn build(config: Value) -> Rc<Config> {
    Rc::new(
        Config::from_json(config.to_string().as_bytes(), &MapEnv::default())
            .unwrap_or_else(|e| panic!("test configuration is invalid: {e}")),
    )
}

fn config() -> Rc<Config> {
    build(base_config())
}

/// The base configuration with the policy's `on_deny: hide`.
fn hiding_config() -> Rc<Config> {
    let mut c = base_config();
    c["servers"][0]["policy"]["on_deny"] = json!("hide");
    build(c)
}

// ---- requests ----------------------------------------------------------------------------

const PROTOCOL: &str = "2025-06-18";

/// A POST to /mcp with a bearer token and these extra headers.
fn post_host(token: Option<&str>, extra: &[(&str, &str)]) -> MockHost {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "mcp.example.com"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", PROTOCOL),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let mut host = MockHost::request(&headers);
    for (k, v) in extra {
        host.set_request_header(k, v).unwrap();
    }
    host
}

fn get_host(path: &str, token: Option<&str>) -> MockHost {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "mcp.example.com"),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    MockHost::request(&headers)
}

fn alice() -> String {
    token_for("alice", &["staff"], "mcp:read")
}

fn bob() -> String {
    token_for("bob", &["staff"], "mcp:read")
}

fn admin() -> String {
    token_for("root", &["admins"], "mcp:read")
}

fn tool_call(id: Value, name: &str) -> Vec<u8> {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": { "name": name, "arguments": { "q": "acme" } },
    })
    .to_string()
    .into_bytes()
}

fn request(id: Value, method: &str) -> Vec<u8> {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": {} })
        .to_string()
        .into_bytes()
}

/// Runs the request headers and, when they were accepted, the body.
fn send(config: &Rc<Config>, host: &mut MockHost, body: &[u8]) -> (Stream, Action) {
    let mut stream = Stream::new(Rc::clone(config));
    let action = stream.on_request_headers(host, false);
    assert_eq!(
        action,
        Action::Pause,
        "POST headers are held until the body"
    );
    if !stream.awaiting_body() {
        return (stream, action);
    }
    let action = stream.on_request_body(host, body);
    (stream, action)
}

/// A POST by `token` with `body`, under the base configuration, and the exchange ends there
/// (Envoy's log phase: an allowed message's record is written then, as when the caller goes
/// away before the answer).
fn post(token: &str, body: &[u8]) -> (Stream, MockHost, Action) {
    let (mut stream, mut host, action) = post_open(token, body);
    stream.on_log(&mut host);
    (stream, host, action)
}

/// A POST by `token` with `body`, its exchange left open for the answer.
fn post_open(token: &str, body: &[u8]) -> (Stream, MockHost, Action) {
    let mut host = post_host(Some(token), &[]);
    let (stream, action) = send(&config(), &mut host, body);
    (stream, host, action)
}

fn challenge(error: Option<&str>) -> String {
    match error {
        Some(e) => format!("Bearer error=\"{e}\", resource_metadata=\"{METADATA_URL}\""),
        None => format!("Bearer resource_metadata=\"{METADATA_URL}\""),
    }
}

/// Headers refused: the reply, and nothing forwarded.
fn refused_at_headers(config: &Rc<Config>, host: &mut MockHost) -> Reply {
    let mut stream = Stream::new(Rc::clone(config));
    assert_eq!(stream.on_request_headers(host, false), Action::Pause);
    assert!(!stream.awaiting_body());
    assert!(stream.waiting().is_none());
    // A body arriving afterwards is never forwarded, and not answered twice.
    assert_eq!(
        stream.on_request_body(host, &request(json!(1), "ping")),
        Action::Pause
    );
    host.reply().clone()
}

// ---- RFC 9728 metadata -------------------------------------------------------------------

#[test]
fn metadata_document_is_served_without_a_token() {
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let mut host = get_host(path, None);
        let mut stream = Stream::new(config());
        assert_eq!(
            stream.on_request_headers(&mut host, true),
            Action::Pause,
            "{path}"
        );
        let reply = host.reply();
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let doc = reply.json();
        assert_eq!(doc["resource"], RESOURCE, "{path}");
        assert_eq!(doc["authorization_servers"], json!([ISSUER]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
}

/// RFC 9728 §3.3: the document at the root well-known URL names the resource at the origin.
/// With several servers behind one host none of them is that resource: the root must not answer
/// with the first (a client of another server falling back to the root would be sent to the
/// first one's authorization servers). Each server's own document is found only at its own
/// path, whatever the path tricks.
#[test]
fn with_several_servers_each_metadata_document_is_found_only_at_its_own_url() {
    const HR: &str = "https://mcp.example.com/hr";
    const HR_IDP: &str = "https://hr-idp.example.com";
    let two_servers = |root_resource: bool| {
        let mut c = base_config();
        let mut second = c["servers"][0].clone();
        second["name"] = json!("hr");
        second["path"] = json!("/hr");
        let resource = if root_resource {
            "https://mcp.example.com"
        } else {
            HR
        };
        second["resource"] = json!(resource);
        second["authorization_servers"] = json!([HR_IDP]);
        c["issuers"][0]["audiences"] = json!([RESOURCE, resource]);
        c["servers"].as_array_mut().expect("array").push(second);
        build(c)
    };
    let config = two_servers(false);
    let served = |config: &Rc<Config>, path: &str| {
        let mut host = get_host(path, None);
        let mut stream = Stream::new(Rc::clone(config));
        assert_eq!(stream.on_request_headers(&mut host, true), Action::Pause);
        let reply = host.reply();
        (reply.status == 200).then(|| reply.json())
    };
    let doc = served(&config, "/.well-known/oauth-protected-resource/hr").expect("hr");
    assert_eq!(doc["resource"], HR);
    assert_eq!(doc["authorization_servers"], json!([HR_IDP]));
    let doc = served(&config, "/.well-known/oauth-protected-resource/mcp").expect("crm");
    assert_eq!(doc["resource"], RESOURCE);
    assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    assert_eq!(
        served(&config, "/.well-known/oauth-protected-resource"),
        None,
        "the root names no server's resource here"
    );
    for trick in [
        "/.well-known/oauth-protected-resource/mcp/../hr",
        "/.well-known/oauth-protected-resource/hr/",
        "/.well-known/oauth-protected-resource//hr",
        "/.well-known/oauth-protected-resource/HR",
        "/.well-known/oauth-protected-resource/%68r",
        "/.well-known/oauth-protected-resource/",
    ] {
        assert_eq!(served(&config, trick), None, "{trick}");
    }
    // A query string is not part of the path: the document is the path's.
    let doc = served(&config, "/.well-known/oauth-protected-resource/mcp?r=/hr").expect("crm");
    assert_eq!(doc["resource"], RESOURCE);

    // A server whose resource is the origin is the root's.
    let config = two_servers(true);
    let doc = served(&config, "/.well-known/oauth-protected-resource").expect("root");
    assert_eq!(doc["resource"], "https://mcp.example.com");
    assert_eq!(doc["authorization_servers"], json!([HR_IDP]));
}

#[test]
fn unknown_path_is_404() {
    let mut host = get_host("/other", Some(&alice()));
    let reply = refused_at_headers(&config(), &mut host);
    assert_eq!(reply.status, 404);
    assert_eq!(host.record()["reason"], "unknown_path");
    // A near miss of the MCP path is no match either.
    let mut host = get_host("/mcp/", Some(&alice()));
    assert_eq!(refused_at_headers(&config(), &mut host).status, 404);
}

// ---- authentication ----------------------------------------------------------------------

#[test]
fn no_token_is_401_with_a_challenge_without_error() {
    let mut host = post_host(None, &[]);
    let reply = refused_at_headers(&config(), &mut host);
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(challenge(None).as_str())
    );
    let record = host.record();
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "missing_token");
    assert_eq!(record["status"], 401);
}

#[test]
fn scopes_supported_are_advertised_in_the_challenge() {
    let mut c = base_config();
    c["servers"][0]["scopes_supported"] = json!(["mcp:read", "crm:write"]);
    let mut host = post_host(None, &[]);
    let reply = refused_at_headers(&build(c), &mut host);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            format!("Bearer scope=\"mcp:read crm:write\", resource_metadata=\"{METADATA_URL}\"")
                .as_str()
        )
    );
}

#[test]
fn malformed_token_is_401_invalid_token() {
    for auth in ["Bearer not-a-jwt", "Basic YWxpY2U6cHc=", "Bearer"] {
        let mut host = post_host(None, &[("authorization", auth)]);
        let reply = refused_at_headers(&config(), &mut host);
        assert_eq!(reply.status, 401, "{auth}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some(challenge(Some("invalid_token")).as_str()),
            "{auth}"
        );
        assert_eq!(reply.json()["error"], "invalid_token");
    }
}

/// A token with these claim changes is refused with 401 invalid_token and `reason`.
fn assert_token_refused(token: &str, reason: &str) {
    let mut host = post_host(Some(token), &[]);
    let reply = refused_at_headers(&config(), &mut host);
    assert_eq!(reply.status, 401, "{reason}");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(challenge(Some("invalid_token")).as_str())
    );
    let record = host.record();
    assert_eq!(record["reason"], reason);
    assert_eq!(record["decision"], "deny");
    assert_eq!(
        host.counter(&format!("mcp_guard.auth_failures.reason={reason}")),
        1
    );
    // Nothing was swapped in: the upstream never sees the service key for this request.
    assert_eq!(host.req_header("x-api-key"), None);
}

#[test]
fn expired_token_is_refused_with_reason_expired() {
    let mut claims = claims_for("alice", &["staff"], "");
    claims["exp"] = json!(NOW - 3600);
    assert_token_refused(&sign(Signer::Es256, &claims), "expired");
}

#[test]
fn wrong_audience_is_refused_with_its_reason() {
    let mut claims = claims_for("alice", &["staff"], "");
    claims["aud"] = json!("https://other.example.com/mcp");
    assert_token_refused(&sign(Signer::Es256, &claims), "wrong_audience");
}

#[test]
fn unknown_key_is_refused_with_its_reason() {
    let header = json!({ "alg": "ES256", "kid": "no-such-key" });
    let token = sign_with_header(Signer::Es256, &header, &claims_for("alice", &[], ""));
    assert_token_refused(&token, "unknown_key");
}

#[test]
fn wrong_issuer_is_refused_with_its_reason() {
    let mut claims = claims_for("alice", &["staff"], "");
    claims["iss"] = json!("https://evil.example.com");
    assert_token_refused(&sign(Signer::Es256, &claims), "unknown_issuer");
}

#[test]
fn bad_signature_is_refused_with_its_reason() {
    assert_token_refused(
        &sign(Signer::Es256Other, &claims_for("alice", &[], "")),
        "bad_signature",
    );
}

#[test]
fn duplicate_authorization_is_400_invalid_request() {
    let mut host = post_host(Some(&alice()), &[]);
    host.request_headers
        .push(("authorization".into(), format!("Bearer {}", bob())));
    let reply = refused_at_headers(&config(), &mut host);
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(challenge(Some("invalid_request")).as_str())
    );
    assert_eq!(reply.json()["error"], "invalid_request");
    assert_eq!(host.record()["reason"], "duplicate_authorization");
}

#[test]
fn token_in_query_is_400_invalid_request() {
    let token = alice();
    let path = format!("/mcp?access_token={token}");
    let mut host = post_host(Some(&token), &[(":path", &path)]);
    let reply = refused_at_headers(&config(), &mut host);
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(challenge(Some("invalid_request")).as_str())
    );
    assert_eq!(host.record()["reason"], "token_in_query");
    // Also with no Authorization header at all.
    let mut host = post_host(None, &[(":path", &path)]);
    assert_eq!(refused_at_headers(&config(), &mut host).status, 400);
    // Whatever spelling a server's query parser would still read as `access_token`.
    for query in [
        "a=1;access_token=x",
        "access%5Ftoken=x",
        "ACCESS_TOKEN=x",
        "b=2&+access_token=x",
        "access.token=x",
    ] {
        let path = format!("/mcp?{query}");
        let mut host = post_host(Some(&token), &[(":path", &path)]);
        let reply = refused_at_headers(&config(), &mut host);
        assert_eq!(reply.status, 400, "{query}");
        assert_eq!(host.record()["reason"], "token_in_query", "{query}");
    }
}

// ---- credential swap -----------------------------------------------------------------------

#[test]
fn valid_post_is_held_and_forwarded_as_the_service() {
    let mut host = post_host(
        Some(&alice()),
        &[
            ("x-api-key", "client-copy-of-a-key"),
            ("cookie", "session=abc"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-mcp-user", "admin@example.com"),
            ("accept-encoding", "gzip, br"),
            ("x-custom", "kept"),
        ],
    );
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert!(stream.awaiting_body());
    assert!(host.replies.is_empty());
    assert_eq!(host.req_header("authorization"), None);
    assert_eq!(host.req_header_all("x-api-key"), vec![SERVICE_KEY]);
    assert_eq!(host.req_header("cookie"), None);
    assert_eq!(host.req_header("proxy-authorization"), None);
    assert_eq!(host.req_header_all("x-mcp-user"), vec!["alice@example.com"]);
    assert_eq!(host.req_header("accept-encoding"), None);
    assert_eq!(host.req_header("x-custom"), Some("kept"));
    assert_eq!(host.req_header("content-type"), Some("application/json"));
}

#[test]
fn method_override_headers_never_reach_the_upstream() {
    let overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("X-Method-Override", "PUT"),
        ("x-original-method", "DELETE"),
        ("X-Forwarded-Method", "DELETE"),
    ];
    let mut host = post_host(Some(&alice()), &overrides);
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert!(stream.awaiting_body());
    for (name, _) in overrides {
        assert_eq!(host.req_header(name), None, "{name}");
    }
}

#[test]
fn a_method_override_query_parameter_is_refused() {
    for query in [
        "_method=DELETE",
        "a=1&_METHOD=delete",
        "%5Fmethod=DELETE",
        ".method=DELETE",
        "x=1;_method=PUT",
    ] {
        let path = format!("/mcp?{query}");
        let mut host = post_host(Some(&alice()), &[(":path", &path)]);
        let reply = refused_at_headers(&config(), &mut host);
        assert_eq!(reply.status, 400, "{query}");
        assert_eq!(reply.json()["error"]["code"], -32600, "{query}");
        assert_eq!(host.record()["reason"], "method_override", "{query}");
        assert_eq!(host.record()["error_code"], -32600, "{query}");
    }
    // Other parameters pass.
    let mut host = post_host(Some(&alice()), &[(":path", "/mcp?method=x&my_method=y")]);
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert!(stream.awaiting_body());
}

#[test]
fn a_sender_constrained_token_without_its_proof_is_refused() {
    // Presented as a plain bearer token, a bound token may be a stolen one (RFC 9449, RFC 8705):
    // without its DPoP proof, its client certificate, or with a binding the filter cannot check.
    for (cnf, reason) in [
        (
            json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" }),
            "dpop_required",
        ),
        (
            json!({ "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2" }),
            "certificate_mismatch",
        ),
        (json!({}), "dpop_required"),
        (json!(null), "dpop_required"),
        (json!({ "jwk": { "kty": "OKP" } }), "dpop_required"),
    ] {
        let mut claims = claims_for("alice", &["staff"], "");
        claims["cnf"] = cnf;
        let mut host = post_host(Some(&sign(Signer::Es256, &claims)), &[]);
        let reply = refused_at_headers(&config(), &mut host);
        assert_eq!(reply.status, 401, "{reason}");
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|c| c.starts_with("DPoP error=\"invalid_token\"")),
            "{reason}"
        );
        let record = host.record();
        assert_eq!(record["reason"], reason);
        assert_eq!(record["decision"], "deny");
        assert_eq!(host.req_header("x-api-key"), None);
    }
}

#[test]
fn colliding_keys_are_refused_with_a_stable_reason() {
    for (body, reason, says) in [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"delete_customer"}}"#,
            "colliding_keys",
            r#"keys "name" and "Name""#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name\u0000":"x"}}"#,
            "control_character_in_key",
            r#"key "name\0""#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"x"}}"#,
            "duplicate_key",
            r#"duplicate key "name""#,
        ),
    ] {
        let (_, host, action) = post(&alice(), body.as_bytes());
        assert_eq!(action, Action::Pause, "{body}");
        let reply = host.reply();
        assert_eq!(reply.status, 400, "{body}");
        let error = &reply.json()["error"];
        assert_eq!(error["code"], -32600, "{body}");
        assert!(
            error["message"].as_str().unwrap_or_default().contains(says),
            "{error}"
        );
        assert_eq!(host.record()["reason"], reason);
        assert_eq!(host.record()["error_code"], -32600);
    }
}

#[test]
fn forwarded_claim_header_is_removed_when_the_token_lacks_the_claim() {
    let mut claims = claims_for("svc", &["staff"], "");
    claims.as_object_mut().expect("object").remove("email");
    let token = sign(Signer::Es256, &claims);
    let mut host = post_host(Some(&token), &[("X-MCP-User", "admin@example.com")]);
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert!(stream.awaiting_body());
    assert_eq!(host.req_header("x-mcp-user"), None);
}

#[test]
fn client_envoy_router_headers_never_reach_the_router() {
    // Envoy's router would retry, hedge or re-time an allowed call on these (from a client it
    // counts as internal): one decision must be one upstream attempt.
    let sent = [
        ("x-envoy-retry-on", "5xx"),
        ("X-Envoy-Max-Retries", "5"),
        ("x-envoy-upstream-rq-timeout-ms", "1"),
        ("x-envoy-hedge-on-per-try-timeout", "true"),
        ("x-envoy-original-path", "/admin"),
        ("x-envoyish", "kept"),
    ];
    let mut host = post_host(Some(&alice()), &sent);
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert!(stream.awaiting_body());
    for (name, _) in &sent[..5] {
        assert_eq!(host.req_header(&name.to_ascii_lowercase()), None, "{name}");
    }
    assert_eq!(host.req_header("x-envoyish"), Some("kept"));
}

#[test]
fn service_key_in_the_authorization_header_replaces_the_client_token() {
    let mut c = base_config();
    c["servers"][0]["credential"] =
        json!({ "header": "Authorization", "prefix": "Bearer ", "value": SERVICE_KEY });
    let mut host = post_host(Some(&alice()), &[]);
    let mut stream = Stream::new(build(c));
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert_eq!(
        host.req_header_all("authorization"),
        vec![format!("Bearer {SERVICE_KEY}").as_str()]
    );
}

// ---- policy ------------------------------------------------------------------------------

#[test]
fn allowed_call_continues_and_is_audited_with_its_rule() {
    let (_, host, action) = post(&alice(), &tool_call(json!(7), "search"));
    assert_eq!(action, Action::Continue);
    assert!(host.replies.is_empty());
    let record = host.record();
    assert_eq!(record["schema"], "mcp-guard.audit.v2");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["rule"], "read-tools");
    assert_eq!(record["method"], "tools/call");
    assert_eq!(record["tool"], "search");
    assert_eq!(record["jsonrpc_id"], 7);
    assert_eq!(record["sub"], "alice");
    assert_eq!(record["iss"], ISSUER);
    assert_eq!(record["user"], "alice@example.com");
    assert_eq!(record["groups"], json!(["staff"]));
    assert_eq!(record["server"], "crm");
    assert_eq!(record["policy"], "crm");
    assert_eq!(record["policy_version"], "7");
    assert_eq!(record["http_method"], "POST");
    assert_eq!(record["protocol_version"], PROTOCOL);
    assert!(
        record.get("arguments").is_none(),
        "arguments are not audited by default"
    );
    assert_eq!(
        host.counter("mcp_guard.requests.method=tools_call.decision=allow"),
        1
    );
}

#[test]
fn denied_call_is_answered_in_band_naming_rule_and_policy() {
    let (_, host, action) = post(&alice(), &tool_call(json!("req-7"), "delete"));
    assert_eq!(action, Action::Pause);
    let reply = host.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], "req-7");
    assert_eq!(body["error"]["code"], -31403);
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("no-delete"), "{message}");
    assert!(message.contains("crm"), "{message}");
    assert!(message.contains("delete"), "{message}");
    assert_eq!(body["error"]["data"]["rule"], "no-delete");
    assert_eq!(body["error"]["data"]["policy"], "crm");
    assert_eq!(body["error"]["data"]["policy_version"], "7");
    let record = host.record();
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["rule"], "no-delete");
    assert_eq!(record["status"], 200);
    assert_eq!(record["error_code"], -31403);
    assert_eq!(host.counter("mcp_guard.denials.rule=no-delete"), 1);
    assert_eq!(
        host.counter("mcp_guard.requests.method=tools_call.decision=deny"),
        1
    );
}

#[test]
fn admin_may_call_what_others_may_not() {
    let (_, host, action) = post(&admin(), &tool_call(json!(1), "delete"));
    assert_eq!(action, Action::Continue);
    assert_eq!(host.record()["rule"], "admin-delete");
}

#[test]
fn default_deny_says_no_rule_allows_it() {
    let (_, host, _) = post(&alice(), &tool_call(json!(3), "secret_tool"));
    let body = host.reply().json();
    assert_eq!(body["error"]["code"], -31403);
    assert_eq!(body["error"]["data"]["rule"], Value::Null);
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("no rule allows it"), "{message}");
    assert_eq!(host.record()["decision"], "deny");
}

#[test]
fn hiding_policy_answers_unknown_tool() {
    let mut host = post_host(Some(&alice()), &[]);
    let (_, action) = send(&hiding_config(), &mut host, &tool_call(json!(9), "delete"));
    assert_eq!(action, Action::Pause);
    let reply = host.reply();
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["id"], 9);
    assert_eq!(body["error"]["code"], -32602);
    let message = body["error"]["message"].as_str().expect("message");
    assert_eq!(message, "Unknown tool: delete");
    assert!(
        body["error"].get("data").is_none(),
        "nothing about the policy leaks"
    );
    // The audit trail still knows why.
    assert_eq!(host.record()["rule"], "no-delete");
}

#[test]
fn insufficient_scope_is_403_with_a_step_up_challenge() {
    let (_, host, action) = post(&alice(), &tool_call(json!(4), "update"));
    assert_eq!(action, Action::Pause);
    let reply = host.reply();
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"crm:write\", resource_metadata=\"{METADATA_URL}\""
            )
            .as_str()
        )
    );
    assert_eq!(host.record()["decision"], "deny");
    assert_eq!(host.record()["status"], 403);
    // With the scope, the same call goes through.
    let writer = token_for("alice", &["staff"], "mcp:read crm:write");
    let (_, host, action) = post(&writer, &tool_call(json!(4), "update"));
    assert_eq!(action, Action::Continue);
    assert_eq!(host.record()["rule"], "update-needs-write");
}

#[test]
fn denied_notification_is_403() {
    let body = br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#;
    let (_, host, action) = post(&alice(), body);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply().status, 403);
    assert_eq!(host.record()["decision"], "deny");
    // An allowed notification goes on.
    let body = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (_, _, action) = post(&alice(), body);
    assert_eq!(action, Action::Continue);
}

#[test]
fn server_only_method_is_denied_by_the_built_in_rule() {
    let (_, host, _) = post(&alice(), &request(json!(1), "sampling/createMessage"));
    let body = host.reply().json();
    assert_eq!(body["error"]["code"], -31403);
    assert_eq!(body["error"]["data"]["rule"], "unknown-method");
}

// ---- HTTP and JSON-RPC checks ------------------------------------------------------------

#[test]
fn malformed_json_is_400_parse_error() {
    let (_, host, action) = post(&alice(), b"{\"jsonrpc\":\"2.0\",");
    assert_eq!(action, Action::Pause);
    let reply = host.reply();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], -32700);
    assert_eq!(reply.json()["id"], Value::Null);
    assert_eq!(host.record()["error_code"], -32700);
}

#[test]
fn invalid_request_is_400_with_its_code() {
    let (_, host, _) = post(
        &alice(),
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}"#,
    );
    assert_eq!(host.reply().status, 400);
    assert_eq!(host.reply().json()["error"]["code"], -32600);
    let (_, host, _) = post(
        &alice(),
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"bad name"}}"#,
    );
    assert_eq!(host.reply().status, 400);
    assert_eq!(host.reply().json()["error"]["code"], -32602);
}

#[test]
fn post_without_body_is_refused() {
    let mut host = post_host(Some(&alice()), &[]);
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Pause);
    assert_eq!(host.reply().status, 400);
}

#[test]
fn non_json_content_type_is_415() {
    let mut host = post_host(Some(&alice()), &[("content-type", "text/plain")]);
    let (_, action) = send(&config(), &mut host, &request(json!(1), "ping"));
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply().status, 415);
    assert_eq!(host.record()["reason"], "unsupported_media_type");
    // Parameters and case are fine.
    let mut host = post_host(
        Some(&alice()),
        &[("content-type", "Application/JSON; charset=utf-8")],
    );
    let (_, action) = send(&config(), &mut host, &request(json!(1), "ping"));
    assert_eq!(action, Action::Continue);
}

#[test]
fn compressed_request_body_is_415() {
    for encoding in ["gzip", "identity, gzip", "br"] {
        let mut host = post_host(Some(&alice()), &[("content-encoding", encoding)]);
        let reply = refused_at_headers(&config(), &mut host);
        assert_eq!(reply.status, 415, "{encoding}");
        assert_eq!(host.record()["reason"], "content_encoding");
    }
    let mut host = post_host(Some(&alice()), &[("content-encoding", "identity")]);
    let (_, action) = send(&config(), &mut host, &request(json!(1), "ping"));
    assert_eq!(action, Action::Continue);
}

#[test]
fn body_too_large_is_413() {
    let mut c = base_config();
    c["max_body_bytes"] = json!(256);
    let config = build(c);
    let mut big = tool_call(json!(1), "search");
    let padding = vec![b' '; 300 - big.len()];
    big.extend_from_slice(&padding);
    let mut host = post_host(Some(&alice()), &[]);
    let (_, action) = send(&config, &mut host, &big);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply().status, 413);
    assert_eq!(host.record()["reason"], "body_too_large");
    // At the limit exactly, fine.
    let mut exact = tool_call(json!(1), "search");
    exact.extend(std::iter::repeat_n(b' ', 256 - exact.len()));
    let mut host = post_host(Some(&alice()), &[]);
    let (_, action) = send(&config, &mut host, &exact);
    assert_eq!(action, Action::Continue);
}

#[test]
fn mcp_method_header_mismatch_is_400() {
    let mut host = post_host(Some(&alice()), &[("mcp-method", "tools/list")]);
    let (_, action) = send(&config(), &mut host, &tool_call(json!(5), "search"));
    assert_eq!(action, Action::Pause);
    let reply = host.reply();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], -32020);
    assert_eq!(reply.json()["id"], 5);
    assert_eq!(host.record()["error_code"], -32020);
}

#[test]
fn mcp_name_header_mismatch_is_400() {
    let mut host = post_host(
        Some(&alice()),
        &[("mcp-method", "tools/call"), ("mcp-name", "get")],
    );
    let (_, _) = send(&config(), &mut host, &tool_call(json!(5), "search"));
    assert_eq!(host.reply().status, 400);
    assert_eq!(host.reply().json()["error"]["code"], -32020);
    // Matching headers are fine.
    let mut host = post_host(
        Some(&alice()),
        &[("mcp-method", "tools/call"), ("mcp-name", "search")],
    );
    let (_, action) = send(&config(), &mut host, &tool_call(json!(5), "search"));
    assert_eq!(action, Action::Continue);
}

#[test]
fn other_http_methods_are_405() {
    let mut host = post_host(Some(&alice()), &[(":method", "PUT")]);
    let reply = refused_at_headers(&config(), &mut host);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, POST, DELETE"));
}

#[test]
fn get_stream_is_allowed_and_audited() {
    let mut host = get_host("/mcp", Some(&alice()));
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Continue);
    stream.on_log(&mut host);
    assert_eq!(host.record()["decision"], "allow");
    assert_eq!(host.req_header("x-api-key"), Some(SERVICE_KEY));
}

// ---- sessions ----------------------------------------------------------------------------

/// Alice initializes and the upstream issues `upstream_id`: the handle she gets back.
fn open_session(config: &Rc<Config>, token: &str, upstream_id: &str) -> String {
    let mut host = post_host(Some(token), &[]);
    let (mut stream, action) = send(config, &mut host, &request(json!(1), "initialize"));
    assert_eq!(action, Action::Continue);
    host.set_response(&[
        (":status", "200"),
        ("content-type", "application/json"),
        ("mcp-session-id", upstream_id),
    ]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), true),
        Action::Continue
    );
    let handle = host
        .resp_header("mcp-session-id")
        .expect("a session id")
        .to_string();
    stream.on_log(&mut host);
    assert_eq!(host.record()["session_id"], handle.as_str());
    handle
}

/// A request with this session handle: what the upstream got as its session id, if anything.
fn use_session(config: &Rc<Config>, token: &str, handle: &str) -> (MockHost, Option<String>) {
    let mut host = post_host(Some(token), &[("mcp-session-id", handle)]);
    let mut stream = Stream::new(Rc::clone(config));
    let action = stream.on_request_headers(&mut host, false);
    if action == Action::Pause && !stream.awaiting_body() {
        return (host, None);
    }
    assert_eq!(
        stream.on_request_body(&mut host, &tool_call(json!(2), "search")),
        Action::Continue
    );
    let forwarded = host.req_header("mcp-session-id").map(str::to_string);
    stream.on_log(&mut host);
    (host, forwarded)
}

fn session_refused(host: &MockHost, reason: &str) {
    let reply = host.reply();
    assert_eq!(reply.status, 404, "{reason}");
    assert_eq!(reply.json()["error"]["code"], -32001);
    assert_eq!(reply.json()["error"]["message"], "Session not found");
    assert_eq!(host.record()["reason"], reason);
    assert_eq!(host.record()["status"], 404);
}

#[test]
fn the_client_gets_a_sealed_handle_and_the_upstream_its_own_id() {
    let config = config();
    let handle = open_session(&config, &alice(), "s-1");
    assert!(handle.starts_with("mg1."), "{handle}");
    assert!(!handle.contains("s-1"));

    let (host, forwarded) = use_session(&config, &alice(), &handle);
    assert_eq!(forwarded.as_deref(), Some("s-1"));
    // The audit trail carries the handle the client sees, never the upstream's id.
    assert_eq!(host.record()["session_id"], handle.as_str());
    assert_eq!(host.record()["decision"], "allow");

    // Every answer's session id is sealed again, to the same handle.
    let mut host = post_host(Some(&alice()), &[("mcp-session-id", &handle)]);
    let (mut stream, _) = send(&config, &mut host, &tool_call(json!(3), "search"));
    host.set_response(&[(":status", "202"), ("mcp-session-id", "s-1")]);
    stream.on_response_headers(&mut host, Some(202), true);
    assert_eq!(host.resp_header("mcp-session-id"), Some(handle.as_str()));
}

#[test]
fn another_caller_presenting_a_handle_gets_404_and_nothing_is_forwarded() {
    let config = config();
    let handle = open_session(&config, &alice(), "s-1");
    for method in ["POST", "GET", "DELETE"] {
        let mut host = post_host(Some(&bob()), &[("mcp-session-id", &handle)]);
        host.set_request_header(":method", method).unwrap();
        let reply = refused_at_headers(&config, &mut host);
        assert_eq!(reply.status, 404, "{method}");
        session_refused(&host, "session_of_another_caller");
        assert_eq!(host.record()["sub"], "bob");
        assert_eq!(host.record()["session_id"], handle.as_str());
    }
    // Same subject, another issuer's token would be another caller too (issuer bound in):
    // covered natively in seal.rs; here the owner still gets through.
    assert_eq!(
        use_session(&config, &alice(), &handle).1.as_deref(),
        Some("s-1")
    );
}

#[test]
fn a_replica_with_the_same_configuration_accepts_the_handle() {
    let handle = open_session(&config(), &alice(), "s-1");
    let replica = config();
    assert_eq!(
        use_session(&replica, &alice(), &handle).1.as_deref(),
        Some("s-1")
    );
    let (host, forwarded) = use_session(&replica, &bob(), &handle);
    assert_eq!(forwarded, None);
    session_refused(&host, "session_of_another_caller");
}

#[test]
fn ids_that_were_never_sealed_or_were_changed_are_refused() {
    let config = config();
    let handle = open_session(&config, &alice(), "s-1");
    let mut tampered = handle.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let too_long = format!("mg1.{}", "A".repeat(600));
    for (id, reason) in [
        ("s-1", "session_not_sealed"),
        ("never-issued", "session_not_sealed"),
        (too_long.as_str(), "session_not_sealed"),
        (tampered.as_str(), "session_tampered"),
    ] {
        let (host, forwarded) = use_session(&config, &alice(), id);
        assert_eq!(forwarded, None, "{reason}");
        session_refused(&host, reason);
    }
    // Sealed with a key this configuration does not have.
    let mut c = base_config();
    c["sessions"] = json!({ "key": OTHER_SESSION_KEY });
    let (host, forwarded) = use_session(&build(c), &alice(), &handle);
    assert_eq!(forwarded, None);
    session_refused(&host, "session_key_unknown");
}

#[test]
fn a_handle_of_one_server_is_refused_on_another() {
    let mut c = base_config();
    let mut second = c["servers"][0].clone();
    second["name"] = json!("hr");
    second["match"] = json!({ "route_name": "hr-route" });
    c["servers"][0]["match"] = json!({ "route_name": "crm-route" });
    c["servers"].as_array_mut().expect("array").push(second);
    let config = build(c);

    let mut host = post_host(Some(&alice()), &[]);
    host.set_property(&["xds", "route_name"], "crm-route");
    let (mut stream, _) = send(&config, &mut host, &request(json!(1), "initialize"));
    host.set_response(&[(":status", "200"), ("mcp-session-id", "s-crm")]);
    stream.on_response_headers(&mut host, Some(200), true);
    let handle = host
        .resp_header("mcp-session-id")
        .expect("sealed")
        .to_string();

    let mut host = post_host(Some(&alice()), &[("mcp-session-id", &handle)]);
    host.set_property(&["xds", "route_name"], "hr-route");
    refused_at_headers(&config, &mut host);
    session_refused(&host, "session_of_another_server");
}

#[test]
fn rotation_keeps_sessions_and_seals_anew_with_the_current_key() {
    let handle = open_session(&config(), &alice(), "s-1");
    let mut c = base_config();
    c["sessions"] = json!({ "key": OTHER_SESSION_KEY, "previous_key": SESSION_KEY });
    let rotated = build(c);
    assert_eq!(
        use_session(&rotated, &alice(), &handle).1.as_deref(),
        Some("s-1")
    );
    let new_handle = open_session(&rotated, &alice(), "s-1");
    assert_ne!(new_handle, handle);
    // A replica not yet rotated does not know the new key.
    let (host, _) = use_session(&config(), &alice(), &new_handle);
    session_refused(&host, "session_key_unknown");
}

/// `sessions.cipher` is switched one replica at a time: a session opened on a replica sealing
/// with one cipher goes on through a replica sealing with the other, and another caller still
/// cannot use it.
#[test]
fn a_session_moves_between_replicas_sealing_with_either_cipher() {
    let aes = config();
    let mut c = base_config();
    c["sessions"] = json!({ "key": SESSION_KEY, "cipher": "xchacha20-poly1305" });
    let chacha = build(c);
    let one = open_session(&aes, &alice(), "s-1");
    let two = open_session(&chacha, &alice(), "s-1");
    assert!(
        one.starts_with("mg1.") && two.starts_with("mg2."),
        "{one} {two}"
    );
    for config in [&aes, &chacha] {
        for handle in [&one, &two] {
            assert_eq!(
                use_session(config, &alice(), handle).1.as_deref(),
                Some("s-1")
            );
            let (host, forwarded) = use_session(config, &bob(), handle);
            assert_eq!(forwarded, None);
            session_refused(&host, "session_of_another_caller");
        }
    }
}

#[test]
fn a_token_naming_no_caller_cannot_hold_a_session() {
    let config = config();
    // client_id stands in for a missing sub.
    let mut claims = claims_for("ignored", &["staff"], "mcp:read");
    claims.as_object_mut().expect("object").remove("sub");
    claims["client_id"] = json!("batch-app");
    let app = sign(Signer::Es256, &claims);
    let handle = open_session(&config, &app, "s-app");
    assert_eq!(
        use_session(&config, &app, &handle).1.as_deref(),
        Some("s-app")
    );

    // Neither sub nor client_id nor azp: the session is not handed out, and audited so.
    claims.as_object_mut().expect("object").remove("client_id");
    let nobody = sign(Signer::Es256, &claims);
    let mut host = post_host(Some(&nobody), &[]);
    let (mut stream, _) = send(&config, &mut host, &request(json!(1), "initialize"));
    host.set_response(&[(":status", "200"), ("mcp-session-id", "s-x")]);
    stream.on_response_headers(&mut host, Some(200), true);
    assert_eq!(host.reply().status, 403);
    assert_eq!(host.record()["reason"], "session_unbindable");
    assert!(!host.reply().body.windows(3).any(|w| w == b"s-x"));
    // And a handle it presents opens for no one.
    let (host, forwarded) = use_session(&config, &nobody, &handle);
    assert_eq!(forwarded, None);
    session_refused(&host, "session_unbindable");
}

#[test]
fn a_stateless_configuration_refuses_sessions() {
    let mut c = base_config();
    c["sessions"] = json!({ "stateless": true });
    let config = build(c);
    let (host, forwarded) = use_session(&config, &alice(), "s-1");
    assert_eq!(forwarded, None);
    session_refused(&host, "session_not_sealed");
    let mut host = post_host(Some(&alice()), &[]);
    let (mut stream, _) = send(&config, &mut host, &request(json!(1), "initialize"));
    host.set_response(&[(":status", "200"), ("mcp-session-id", "s-1")]);
    stream.on_response_headers(&mut host, Some(200), true);
    assert_eq!(host.reply().status, 502);
    assert_eq!(host.record()["reason"], "session_not_configured");
}

#[test]
fn a_session_header_envoy_will_not_replace_fails_closed() {
    let config = config();
    let handle = open_session(&config, &alice(), "s-1");
    // The request: the handle must not go upstream in place of the upstream's id.
    let mut host = post_host(Some(&alice()), &[("mcp-session-id", &handle)]);
    host.refuse_headers = vec!["mcp-session-id"];
    let reply = refused_at_headers(&config, &mut host);
    assert_eq!(reply.status, 500);
    assert_eq!(host.record()["reason"], "session_header_not_set");
    // The answer: the upstream's id must not go to the client unsealed.
    let mut host = post_host(Some(&alice()), &[]);
    let (mut stream, _) = send(&config, &mut host, &request(json!(1), "initialize"));
    host.refuse_headers = vec!["mcp-session-id"];
    host.set_response(&[(":status", "200"), ("mcp-session-id", "s-2")]);
    stream.on_response_headers(&mut host, Some(200), true);
    assert_eq!(host.reply().status, 502);
    assert_eq!(host.record()["reason"], "session_header_not_set");
}

#[test]
fn a_credential_envoy_will_not_strip_or_set_fails_closed() {
    // The client's token stays, the service key or a claim header is not set, or responses
    // could come compressed: nothing goes upstream.
    for refused in [
        "authorization",
        "x-api-key",
        "x-mcp-user",
        "accept-encoding",
    ] {
        // Sent by the client: removed before the request goes on (absent ones need nothing).
        let mut host = post_host(Some(&alice()), &[("accept-encoding", "gzip")]);
        host.refuse_headers = vec![refused];
        let reply = refused_at_headers(&config(), &mut host);
        assert_eq!(reply.status, 500, "{refused}");
        assert_eq!(host.record()["reason"], "credential_not_set", "{refused}");
        assert_eq!(host.record()["decision"], "error", "{refused}");
    }
}

#[test]
fn response_headers_envoy_will_not_change_fail_closed() {
    let config = config();
    // An event stream goes on as it comes, without its length (events may be rewritten).
    for (refused, content_type) in [
        ("www-authenticate", "application/json"),
        ("content-length", "text/event-stream"),
    ] {
        let mut host = post_host(Some(&alice()), &[]);
        let (mut stream, _) = send(&config, &mut host, &request(json!(1), "ping"));
        host.refuse_headers = vec![refused];
        host.set_response(&[
            (":status", "200"),
            ("content-type", content_type),
            ("content-length", "2"),
            ("www-authenticate", "Bearer"),
        ]);
        stream.on_response_headers(&mut host, Some(200), false);
        assert_eq!(host.reply().status, 502, "{refused}");
        assert_eq!(host.record()["decision"], "error", "{refused}");
        assert_eq!(
            host.record()["reason"],
            "response_header_not_removed",
            "{refused}"
        );
    }
}

#[test]
fn an_upstream_session_id_that_cannot_be_sealed_is_not_passed_on() {
    let config = config();
    let long = "x".repeat(300);
    let mut host = post_host(Some(&alice()), &[]);
    let (mut stream, _) = send(&config, &mut host, &request(json!(1), "initialize"));
    host.set_response(&[(":status", "200"), ("mcp-session-id", &long)]);
    stream.on_response_headers(&mut host, Some(200), true);
    assert_eq!(host.reply().status, 502);
    assert_eq!(host.record()["reason"], "session_id_unsealable");
}

// ---- batches -----------------------------------------------------------------------------

fn batch(messages: &[Vec<u8>]) -> Vec<u8> {
    let items: Vec<Value> = messages
        .iter()
        .map(|m| serde_json::from_slice(m).expect("json"))
        .collect();
    Value::Array(items).to_string().into_bytes()
}

#[test]
fn allowed_batch_in_2025_03_26_goes_on_with_one_audit_line_per_message() {
    let mut host = post_host(Some(&alice()), &[("mcp-protocol-version", "2025-03-26")]);
    let body = batch(&[tool_call(json!(1), "search"), tool_call(json!(2), "get")]);
    let (mut stream, action) = send(&config(), &mut host, &body);
    assert_eq!(action, Action::Continue);
    assert!(host.replies.is_empty());
    stream.on_log(&mut host);
    let records = host.audit();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["tool"], "search");
    assert_eq!(records[0]["jsonrpc_id"], 1);
    assert_eq!(records[1]["tool"], "get");
    assert_eq!(records[1]["jsonrpc_id"], 2);
    assert!(records
        .iter()
        .all(|r| r["decision"] == "allow" && r["rule"] == "read-tools"));
    assert_eq!(
        host.counter("mcp_guard.requests.method=tools_call.decision=allow"),
        2
    );
}

#[test]
fn batch_with_one_denied_message_forwards_nothing() {
    let mut host = post_host(Some(&alice()), &[("mcp-protocol-version", "2025-03-26")]);
    let body = batch(&[tool_call(json!(1), "search"), tool_call(json!(2), "delete")]);
    let (_, action) = send(&config(), &mut host, &body);
    assert_eq!(action, Action::Pause);
    let reply = host.reply();
    assert_eq!(reply.status, 200);
    let answers = reply.json();
    let answers = answers.as_array().expect("an array of answers");
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[0]["error"]["code"], -31403);
    assert_eq!(answers[1]["id"], 2);
    assert_eq!(answers[1]["error"]["code"], -31403);
    assert_eq!(answers[1]["error"]["data"]["rule"], "no-delete");
    let records = host.audit();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["decision"] == "deny"));
    assert_eq!(records[1]["rule"], "no-delete");
}

#[test]
fn batch_of_notifications_refused_with_403_audits_403() {
    let mut host = post_host(Some(&alice()), &[("mcp-protocol-version", "2025-03-26")]);
    let body = batch(&[
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#
            .to_vec(),
    ]);
    let (_, action) = send(&config(), &mut host, &body);
    assert_eq!(action, Action::Pause);
    let status = host.reply().status;
    assert_eq!(status, 403);
    // The audit trail must record the status the client actually got.
    for record in host.audit() {
        assert_eq!(record["status"], status, "{record}");
    }
}

/// A message refused when sent alone is refused inside a batch too: its params are checked
/// (a case variant of a subscription filter field, a filter field the filter does not know),
/// its `_meta` version against the header, and the one-message headers are not accepted.
#[test]
fn a_batch_element_is_checked_as_if_sent_alone() {
    let listen = |notifications: Value| {
        json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen",
               "params":{"notifications": notifications}})
        .to_string()
        .into_bytes()
    };
    let ping = br#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#.to_vec();
    let declared = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "name":"search","arguments":{},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}})
    .to_string()
    .into_bytes();
    type Case<'a> = (Vec<u8>, &'a [(&'a str, &'a str)]);
    let cases: [Case; 4] = [
        (
            listen(json!({"ResourceSubscriptions": ["crm://secret/payroll"]})),
            &[],
        ),
        (listen(json!({"allResources": true})), &[]),
        (declared, &[]),
        (tool_call(json!(1), "search"), &[("mcp-method", "ping")]),
    ];
    for (message, extra) in cases {
        let headers: Vec<(&str, &str)> = [("mcp-protocol-version", "2025-03-26")]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let mut host = post_host(Some(&alice()), &headers);
        let body = batch(&[message.clone(), ping.clone()]);
        let (_, action) = send(&config(), &mut host, &body);
        let text = String::from_utf8_lossy(&message);
        assert_eq!(action, Action::Pause, "forwarded in a batch: {text}");
        assert_eq!(host.reply().status, 400, "{text}");
    }
}

/// A `subscriptions/listen` opens a standing stream, watched for its token's end (`exp`, the
/// revocation feed, the IdP) only when it comes alone: in a batch it is refused, however valid.
#[test]
fn a_listen_in_a_batch_is_refused() {
    let listen = json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen",
        "params":{"notifications":{"resourceSubscriptions":["crm://customers/c-1"]}}})
    .to_string()
    .into_bytes();
    let ping = br#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#.to_vec();
    let mut host = post_host(Some(&alice()), &[("mcp-protocol-version", "2025-03-26")]);
    let (_, action) = send(&config(), &mut host, &batch(&[listen, ping]));
    assert_eq!(action, Action::Pause, "not forwarded");
    let reply = host.reply();
    assert_eq!(reply.status, 400);
    let said = reply.json().to_string();
    assert!(said.contains("send it alone"), "{said}");
}

#[test]
fn batch_in_2025_06_18_is_400() {
    let mut host = post_host(Some(&alice()), &[("mcp-protocol-version", "2025-06-18")]);
    let body = batch(&[tool_call(json!(1), "search")]);
    let (_, action) = send(&config(), &mut host, &body);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply().status, 400);
    assert_eq!(host.reply().json()["error"]["code"], -32600);
    // And without any protocol header.
    let mut host = post_host(Some(&alice()), &[]);
    host.remove_request_header("mcp-protocol-version").unwrap();
    let (_, _) = send(&config(), &mut host, &body);
    assert_eq!(host.reply().status, 400);
}

// ---- responses ---------------------------------------------------------------------------

#[test]
fn envoys_own_answer_after_forwarding_is_not_recorded_as_the_servers() {
    let (mut stream, mut host, _) = post_open(&alice(), &tool_call(json!(1), "search"));
    host.set_property(
        &["response", "code_details"],
        "upstream_reset_before_response_started{connection_termination}",
    );
    host.set_response(&[
        (":status", "503"),
        ("content-type", "text/plain"),
        ("x-echo", SERVICE_KEY),
    ]);
    stream.on_response_headers(&mut host, Some(503), false);
    // Checked as any answer: a filter after this one may have copied what it should not.
    assert!(!host
        .resp_header("x-echo")
        .unwrap_or_default()
        .contains(SERVICE_KEY));
    let body = b"upstream connect error or disconnect/reset before headers";
    stream.on_response_body(&mut host, body, true);
    stream.on_log(&mut host);
    let r = host.record();
    assert_eq!(r["reason"], "answered_by_envoy", "{r}");
    assert!(r.get("upstream_status").is_none(), "{r}");
    assert!(r["detail"]
        .as_str()
        .is_some_and(|d| d.contains("upstream_reset")));
    // The server's own 500 is the server's.
    let (mut stream, mut host, _) = post_open(&alice(), &tool_call(json!(1), "search"));
    host.set_property(&["response", "code_details"], "via_upstream");
    host.set_response(&[(":status", "500"), ("content-type", "application/json")]);
    stream.on_response_headers(&mut host, Some(500), false);
    let answer = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"boom"}}"#;
    stream.on_response_body(&mut host, answer, true);
    stream.on_log(&mut host);
    let r = host.record();
    assert_eq!(r["upstream_status"], 500);
    assert!(r.get("reason").is_none(), "{r}");
}

#[test]
fn a_caller_gone_while_its_answer_is_held_keeps_its_allow() {
    let (mut stream, mut host) =
        answered(&alice(), &tool_call(json!(1), "search"), "application/json");
    host.set_property(
        &["response", "code_details"],
        "downstream_remote_disconnect",
    );
    stream.on_log(&mut host);
    let r = host.record();
    assert_eq!(r["decision"], "allow", "forwarded: the call may have run");
    assert!(r["detail"]
        .as_str()
        .is_some_and(|d| d.contains("downstream_remote_disconnect")));
    // A body never completed: nothing forwarded, and the request is on record.
    let mut host = post_host(Some(&alice()), &[]);
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    stream.on_log(&mut host);
    let r = host.record();
    assert_eq!(
        (r["decision"].as_str(), r["reason"].as_str()),
        (Some("error"), Some("caller_went_away"))
    );
}

/// An allowed `tools/call` (id `c-1`) answered with `status` and one more header: what the
/// answer's headers callback returned, and the host.
fn answered_with(status: u32, header: (&str, &str)) -> (Action, MockHost) {
    let (mut stream, mut host, action) = post_open(&alice(), &tool_call(json!("c-1"), "search"));
    assert_eq!(action, Action::Continue);
    host.set_response(&[(":status", &status.to_string()), header]);
    let action = stream.on_response_headers(&mut host, Some(status), false);
    (action, host)
}

#[test]
fn upstream_401_becomes_502_with_its_own_code() {
    for upstream in [401, 403] {
        let (action, host) =
            answered_with(upstream, ("www-authenticate", "Bearer realm=\"upstream\""));
        assert_eq!(action, Action::Pause);
        let reply = host.reply();
        assert_eq!(reply.status, 502);
        assert_eq!(reply.header("www-authenticate"), None);
        let body = reply.json();
        assert_eq!(body["error"]["code"], -31502);
        assert_eq!(body["id"], "c-1");
        let record = host.record();
        assert_eq!(record["decision"], "error");
        assert_eq!(record["upstream_status"], upstream);
        assert_eq!(record["status"], 502);
    }
}

/// A redirect from the MCP server is not passed on: a client would follow it and take what
/// answers there as the answer to its request (its message, and to the gateway's own origin its
/// token, sent wherever the server chose). 502, audited with where it pointed.
#[test]
fn an_upstream_redirect_is_not_passed_on() {
    for status in [301, 302, 303, 307, 308] {
        let (action, host) = answered_with(status, ("location", "https://elsewhere.example/hr"));
        assert_eq!(action, Action::Pause);
        let reply = host.reply();
        assert_eq!(reply.status, 502, "{status}");
        assert_eq!(reply.header("location"), None);
        let record = host.record();
        assert_eq!(record["reason"], "upstream_redirect");
        assert_eq!(record["upstream_status"], status);
        assert!(record["detail"]
            .as_str()
            .unwrap()
            .contains("elsewhere.example"));
    }
    // 304 (no location) is no redirect.
    let (mut stream, mut host, _) = post_open(&alice(), &tool_call(json!("c-1"), "search"));
    host.set_response(&[(":status", "304")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(304), true),
        Action::Continue
    );
}

/// A completed allowed POST whose response headers were seen.
fn answered(token: &str, body: &[u8], content_type: &str) -> (Stream, MockHost) {
    let (mut stream, mut host, action) = post_open(token, body);
    assert_eq!(action, Action::Continue);
    host.set_response(&[
        (":status", "200"),
        ("content-type", content_type),
        ("content-length", "123"),
    ]);
    stream.on_response_headers(&mut host, Some(200), false);
    (stream, host)
}

fn replaced(action: BodyAction, original: &[u8]) -> Vec<u8> {
    match action {
        BodyAction::Replace(bytes) => bytes,
        BodyAction::Continue => original.to_vec(),
        BodyAction::Pause => panic!("body unexpectedly held"),
    }
}

#[test]
fn service_key_is_redacted_from_a_json_response() {
    let (mut stream, mut host) =
        answered(&alice(), &tool_call(json!(1), "search"), "application/json");
    assert_eq!(
        host.resp_header("content-length"),
        Some("123"),
        "held with the body: its length is set when the body is rewritten"
    );
    let body = key_leaking_answer();
    let body = body.as_bytes();
    let (first, _) = body.split_at(40);
    assert_eq!(
        stream.on_response_body(&mut host, first, false),
        BodyAction::Pause
    );
    let out = replaced(stream.on_response_body(&mut host, body, true), body);
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains(SERVICE_KEY), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
    assert!(host.counter("mcp_guard.key_leaks_redacted") >= 1);
    let length = out.len().to_string();
    assert_eq!(
        host.resp_header("content-length"),
        Some(length.as_str()),
        "the length of what the client gets"
    );
    assert_ne!(out.len(), body.len());
}

fn key_leaking_answer() -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"debug: key={SERVICE_KEY}"}}]}}}}"#
    )
}

#[test]
fn a_held_answer_passed_on_unchanged_keeps_its_length() {
    let (mut stream, mut host) =
        answered(&alice(), &tool_call(json!(1), "search"), "application/json");
    let body = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
    assert_eq!(
        stream.on_response_body(&mut host, body, true),
        BodyAction::Continue
    );
    assert_eq!(host.resp_header("content-length"), Some("123"));
}

#[test]
fn a_rewritten_answer_whose_length_envoy_will_not_set_is_not_passed_on() {
    let (mut stream, mut host) =
        answered(&alice(), &tool_call(json!(1), "search"), "application/json");
    host.refuse_headers = vec!["content-length"];
    let body = key_leaking_answer();
    assert_eq!(
        stream.on_response_body(&mut host, body.as_bytes(), true),
        BodyAction::Pause
    );
    assert_eq!(host.reply().status, 502);
    assert_eq!(host.record()["decision"], "error");
    assert_eq!(host.record()["reason"], "response_length_not_set");
    assert!(!String::from_utf8_lossy(&host.reply().body).contains(SERVICE_KEY));
    // The key did not go on: blocked, not redacted.
    assert_eq!(host.counter("mcp_guard.key_leaks_redacted"), 0);
    assert_eq!(host.counter("mcp_guard.key_leaks_blocked"), 1);
}

#[test]
fn a_held_answer_that_ends_in_trailers_goes_without_its_length() {
    // Trailers reach an HTTP/1.1 client only in a chunked answer.
    let (mut stream, mut host) =
        answered(&alice(), &tool_call(json!(1), "search"), "application/json");
    host.response_trailers = vec![("x-checksum".into(), "1".into())];
    assert_eq!(stream.on_response_trailers(&mut host), BodyAction::Continue);
    assert_eq!(host.resp_header("content-length"), None);
    // Its body, checked now, is rewritten without a length being set again.
    let body = key_leaking_answer();
    let out = replaced(
        stream.on_response_body(&mut host, body.as_bytes(), true),
        body.as_bytes(),
    );
    assert!(String::from_utf8_lossy(&out).contains("[REDACTED]"));
    assert_eq!(host.resp_header("content-length"), None);
    // Envoy does not take the removal: 502, nothing of the answer goes on.
    let (mut stream, mut host) =
        answered(&alice(), &tool_call(json!(1), "search"), "application/json");
    host.refuse_headers = vec!["content-length"];
    assert_eq!(stream.on_response_trailers(&mut host), BodyAction::Pause);
    assert_eq!(host.reply().status, 502);
    assert_eq!(host.record()["reason"], "response_header_not_removed");
}

#[test]
fn a_held_answer_is_read_at_its_end_and_events_at_every_chunk() {
    let (stream, _) = answered(&alice(), &tool_call(json!(1), "search"), "application/json");
    assert!(
        stream.holds_response_chunk(40, false),
        "held whole: left unread"
    );
    assert!(
        !stream.holds_response_chunk(40, true),
        "the end is read and checked"
    );
    let over = mcp_guard::response::MAX_BUFFERED_RESPONSE + 1;
    assert!(
        !stream.holds_response_chunk(over, false),
        "over the limit: read, and refused"
    );
    let (stream, _) = answered(
        &alice(),
        &tool_call(json!(1), "search"),
        "text/event-stream",
    );
    assert!(
        !stream.holds_response_chunk(40, false),
        "events are checked as they come"
    );
}

#[test]
fn service_key_is_redacted_from_an_event_stream_split_across_chunks() {
    let (mut stream, mut host) = answered(
        &alice(),
        &tool_call(json!(1), "search"),
        "text/event-stream",
    );
    let event = format!(
        "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"text\":\"{SERVICE_KEY}\"}}}}\n\n"
    );
    let cut = event.find("0123").expect("inside the key");
    let (a, b) = event.as_bytes().split_at(cut);
    let mut out = replaced(stream.on_response_body(&mut host, a, false), a);
    out.extend(replaced(stream.on_response_body(&mut host, b, true), b));
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains(SERVICE_KEY), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
    assert!(text.contains("\"id\":1"), "{text}");
}

/// One SSE event carrying a JSON-RPC notification (a subscription's, a long call's progress).
fn progress_event(n: u32) -> Vec<u8> {
    format!(
        "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\
         \"params\":{{\"progressToken\":\"p\",\"progress\":{n}}}}}\n\n"
    )
    .into_bytes()
}

/// A standing stream opened with a JWT goes on only while the token's signature would still
/// be accepted: once its issuer's keys change it is verified again (at its next event, or
/// between events), and a key the IdP withdrew (a compromised one) no longer admits it, as a
/// new request with the token gets 401. A change that keeps the key lets it go on.
#[test]
fn a_standing_stream_is_cut_once_the_key_that_signed_its_token_is_withdrawn() {
    let config = config();
    let mut host = get_host("/mcp", Some(&alice()));
    let mut stream = Stream::new(Rc::clone(&config));
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    stream.on_response_headers(&mut host, Some(200), false);
    let first = progress_event(1);
    assert_eq!(
        replaced(stream.on_response_body(&mut host, &first, false), &first),
        first
    );
    let issuer = &config.authenticator.issuers()[0];
    // New keys that still hold the token's key: it verifies again and the stream goes on.
    let kept = mcp_guard::jwt::KeySet::from_json(
        &json!({ "keys": [p256_public_jwk(), rsa_public_jwk()] }),
    )
    .unwrap();
    issuer.install_keys(kept);
    assert_eq!(stream.check_idle(&mut host), mcp_guard::flow::Idle::Open);
    let second = progress_event(2);
    assert_eq!(
        replaced(stream.on_response_body(&mut host, &second, false), &second),
        second
    );
    // The IdP withdraws the key: the stream is cut between events.
    let withdrawn =
        mcp_guard::jwt::KeySet::from_json(&json!({ "keys": [rsa_public_jwk()] })).unwrap();
    issuer.install_keys(withdrawn);
    assert_eq!(stream.check_idle(&mut host), mcp_guard::flow::Idle::Over);
    assert_eq!(host.resets, 1, "the stream is cut");
    let record = host.record();
    assert_eq!(record["reason"], "token_ended_mid_stream");
    assert!(
        record["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("key"),
        "{record}"
    );
}

#[test]
fn an_event_stream_is_cut_once_the_callers_token_has_expired() {
    // A GET stream: the server's notifications, for as long as it stays open.
    let mut host = get_host("/mcp", Some(&alice()));
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    stream.on_response_headers(&mut host, Some(200), false);
    let first = progress_event(1);
    assert_eq!(
        replaced(stream.on_response_body(&mut host, &first, false), &first),
        first
    );
    // The token (exp NOW + 3600) is still accepted within the clock skew (60 s) ...
    host.now_ms = (NOW as u64 + 3600 + 59) * 1000;
    let second = progress_event(2);
    assert_eq!(
        replaced(stream.on_response_body(&mut host, &second, false), &second),
        second
    );
    assert_eq!(host.resets, 0);
    // ... and not after: nothing more of the stream reaches the caller.
    host.now_ms = (NOW as u64 + 3600 + 61) * 1000;
    let third = progress_event(3);
    assert_eq!(
        stream.on_response_body(&mut host, &third, false),
        BodyAction::Pause
    );
    assert_eq!(host.resets, 1, "the stream is cut");
    let record = host.record();
    assert_eq!(record["decision"], "error");
    assert_eq!(record["reason"], "token_ended_mid_stream");
    assert!(
        record["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("token expired"),
        "{record}"
    );
    // The answer to a request (held, or streamed with its progress) is the end of a request
    // decided when it came: it is delivered whole.
    for content_type in ["application/json", "text/event-stream"] {
        let (mut stream, mut host) =
            answered(&alice(), &tool_call(json!(1), "search"), content_type);
        host.now_ms = (NOW as u64 + 3600 + 61) * 1000;
        let message = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
        let answer = if content_type == "application/json" {
            message.to_string()
        } else {
            format!("data: {message}\n\n")
        };
        assert_ne!(
            stream.on_response_body(&mut host, answer.as_bytes(), true),
            BodyAction::Pause,
            "{content_type}"
        );
        assert_eq!(host.resets, 0, "{content_type}");
    }
}

#[test]
fn an_event_stream_is_cut_once_the_revocation_feed_lists_its_caller() {
    let mut c = base_config();
    c["issuers"][0]["revocation"] = json!({
        "uri": "https://feeds.example.com/revoked.json",
        "cluster": "feeds",
        "refresh_seconds": 5,
    });
    let config = build(c);
    let mut feeds = mcp_guard::feeds::FeedManager::new(&config.authenticator);
    let mut vm = MockKeyHost::new(NOW as u64 * 1000);
    let publish = |vm: &mut MockKeyHost, feeds: &mut mcp_guard::feeds::FeedManager, doc: Value| {
        feeds.tick(&config.authenticator, vm);
        let call = vm.calls.last().expect("a feed fetch").token;
        feeds.on_response(
            &config.authenticator,
            vm,
            call,
            Some(200),
            Some(doc.to_string().as_bytes()),
        );
    };
    publish(&mut vm, &mut feeds, json!({"revoked_jti": []}));

    let mut host = get_host("/mcp", Some(&alice()));
    let mut stream = Stream::new(Rc::clone(&config));
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    stream.on_response_headers(&mut host, Some(200), false);
    let first = progress_event(1);
    assert_ne!(
        stream.on_response_body(&mut host, &first, false),
        BodyAction::Pause
    );

    vm.now_ms += 6_000;
    publish(
        &mut vm,
        &mut feeds,
        json!({"issuer": ISSUER, "not_before": {"alice": NOW}}),
    );
    let second = progress_event(2);
    assert_eq!(
        stream.on_response_body(&mut host, &second, false),
        BodyAction::Pause
    );
    assert_eq!(host.resets, 1, "the stream is cut");
    assert_eq!(host.record()["reason"], "token_ended_mid_stream");
}

#[test]
fn a_previous_service_key_is_redacted_too() {
    // A rotation's overlap: the upstream still accepts (and may echo) the key it replaced.
    const OLD: &str = "sk-old-service-key-9876543210";
    let mut c = base_config();
    c["servers"][0]["credential"]["previous_values"] = json!([OLD]);
    let rotated = build(c);
    let mut host = post_host(Some(&alice()), &[]);
    let (mut stream, action) = send(&rotated, &mut host, &tool_call(json!(1), "search"));
    assert_eq!(action, Action::Continue);
    assert_eq!(
        host.req_header("x-api-key"),
        Some(SERVICE_KEY),
        "only the current key is sent"
    );
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    stream.on_response_headers(&mut host, Some(200), false);
    let answer = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"was {OLD} now {SERVICE_KEY}"}}]}}}}"#
    );
    let out = replaced(
        stream.on_response_body(&mut host, answer.as_bytes(), true),
        answer.as_bytes(),
    );
    let out = String::from_utf8_lossy(&out);
    assert!(!out.contains(OLD) && !out.contains(SERVICE_KEY), "{out}");
    let mut c = base_config();
    c["servers"][0]["credential"]["previous_values"] = json!(["short"]);
    let err = Config::from_json(c.to_string().as_bytes(), &MapEnv::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("credential.previous_values[0]"), "{err}");
    assert!(!err.contains("short\""), "the value is not quoted: {err}");
    // Read from a file, a key often ends in a newline the echoed key does not hold.
    let mut c = base_config();
    c["servers"][0]["credential"]["previous_values"] = json!([format!("{OLD}\n")]);
    let err = Config::from_json(c.to_string().as_bytes(), &MapEnv::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("credential.previous_values[0]"), "{err}");
    assert!(!err.contains(OLD), "the value is not shown: {err}");
}

#[test]
fn service_key_is_redacted_from_response_headers() {
    let (mut stream, mut host, _) = post_open(&alice(), &tool_call(json!(1), "search"));
    host.set_response(&[
        (":status", "200"),
        ("x-debug", &format!("used {SERVICE_KEY}")),
    ]);
    stream.on_response_headers(&mut host, Some(200), true);
    let value = host.resp_header("x-debug").expect("kept, redacted");
    assert!(!value.contains(SERVICE_KEY), "{value}");
}

#[test]
fn a_response_header_named_with_the_service_key_is_removed() {
    let (mut stream, mut host, _) = post_open(&alice(), &tool_call(json!(1), "search"));
    let upper = SERVICE_KEY.to_ascii_uppercase();
    host.set_response(&[
        (":status", "200"),
        (SERVICE_KEY, "1"),
        (&format!("x-{upper}-y"), "2"),
        ("x-kept", "3"),
    ]);
    stream.on_response_headers(&mut host, Some(200), true);
    let names: Vec<&str> = host
        .response_headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(names, [":status", "x-kept"]);
    assert_eq!(host.counter("mcp_guard.key_leaks_redacted"), 2);
}

#[test]
fn the_service_key_is_redacted_from_response_trailers() {
    let (mut stream, mut host) = answered(
        &alice(),
        &tool_call(json!(1), "search"),
        "text/event-stream",
    );
    host.response_trailers = vec![
        ("x-echo".into(), format!("used {SERVICE_KEY}")),
        (SERVICE_KEY.into(), "1".into()),
        ("x-kept".into(), "2".into()),
    ];
    assert_eq!(stream.on_response_trailers(&mut host), BodyAction::Continue);
    let trailers = format!("{:?}", host.response_trailers);
    assert!(!trailers.contains(SERVICE_KEY), "{trailers}");
    assert_eq!(host.response_trailers.len(), 2, "{trailers}");
    assert!(
        trailers.contains("[REDACTED]") && trailers.contains("x-kept"),
        "{trailers}"
    );
    assert_eq!(host.resets, 0);
    // Envoy does not take the change: the stream is cut, nothing unredacted goes on.
    let (mut stream, mut host) = answered(
        &alice(),
        &tool_call(json!(1), "search"),
        "text/event-stream",
    );
    host.response_trailers = vec![("x-echo".into(), SERVICE_KEY.into())];
    host.refuse_headers.push("x-echo");
    assert_eq!(stream.on_response_trailers(&mut host), BodyAction::Pause);
    assert_eq!(host.resets, 1);
}

const TOOLS: &str = r#"[{"name":"search","description":"d"},{"name":"get"},{"name":"update"},{"name":"delete"},{"name":"secret_tool"}]"#;

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn tools_list_json_is_filtered_per_caller() {
    let (mut stream, mut host) = answered(
        &alice(),
        &request(json!(5), "tools/list"),
        "application/json",
    );
    let body =
        format!(r#"{{"jsonrpc":"2.0","id":5,"result":{{"tools":{TOOLS},"nextCursor":"c2"}}}}"#);
    let out = replaced(
        stream.on_response_body(&mut host, body.as_bytes(), true),
        body.as_bytes(),
    );
    let out: Value = serde_json::from_slice(&out).expect("still JSON");
    assert_eq!(names(&out["result"]["tools"]), ["search", "get", "update"]);
    assert_eq!(out["result"]["nextCursor"], "c2");
    assert_eq!(host.counter("mcp_guard.hidden_entries"), 2);
    let record = host.record();
    assert_eq!(record["hidden"], 2);
    assert_eq!(record["method"], "tools/list");

    // An admin sees delete too.
    let (mut stream, mut host) = answered(
        &admin(),
        &request(json!(5), "tools/list"),
        "application/json",
    );
    let out = replaced(
        stream.on_response_body(&mut host, body.as_bytes(), true),
        body.as_bytes(),
    );
    let out: Value = serde_json::from_slice(&out).expect("still JSON");
    assert_eq!(
        names(&out["result"]["tools"]),
        ["search", "get", "update", "delete"]
    );
    assert_eq!(host.record()["hidden"], 1);
}

#[test]
fn tools_list_event_stream_is_filtered_per_caller() {
    let (mut stream, mut host) = answered(
        &alice(),
        &request(json!(5), "tools/list"),
        "text/event-stream",
    );
    let event = format!(
        "id: e1\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{{\"tools\":{TOOLS}}}}}\n\n"
    );
    let (a, b) = event.as_bytes().split_at(30);
    let mut out = replaced(stream.on_response_body(&mut host, a, false), a);
    out.extend(replaced(stream.on_response_body(&mut host, b, true), b));
    let text = String::from_utf8(out).expect("utf-8");
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .expect("a data line")
        .trim();
    let message: Value = serde_json::from_str(data).expect("JSON data");
    assert_eq!(
        names(&message["result"]["tools"]),
        ["search", "get", "update"]
    );
    assert_eq!(host.counter("mcp_guard.hidden_entries"), 2);
    assert_eq!(host.record()["hidden"], 2);
}

// ---- waiting for keys --------------------------------------------------------------------

fn remote_config() -> Rc<Config> {
    let mut c = base_config();
    c["issuers"][0] = json!({
        "issuer": ISSUER,
        "audiences": [RESOURCE],
        "jwks_uri": "https://idp.example.com/jwks",
        "cluster": "idp",
        "fetch_timeout_ms": 1000,
    });
    c["key_wait_ms"] = json!(3000);
    build(c)
}

fn install(config: &Config, jwks: Value) {
    config.authenticator.issuers()[0].install_keys(KeySet::from_json(&jwks).expect("jwks"));
}

#[test]
fn request_waits_for_the_first_keys_then_proceeds() {
    let config = remote_config();
    let mut host = post_host(Some(&alice()), &[]);
    let mut stream = Stream::new(Rc::clone(&config));
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    let wait = stream.waiting().expect("waits for keys");
    assert_eq!(wait.issuer, 0);
    assert_eq!(wait.deadline_ms, host.now_ms + 3000);
    assert!(host.replies.is_empty());
    assert_eq!(
        host.req_header("x-api-key"),
        None,
        "nothing swapped while waiting"
    );

    host.now_ms += 200;
    install(&config, json!({ "keys": [p256_public_jwk()] }));
    assert_eq!(stream.resume(&mut host), Action::Pause);
    assert!(stream.waiting().is_none());
    assert!(stream.awaiting_body());
    assert_eq!(host.req_header("x-api-key"), Some(SERVICE_KEY));
    assert_eq!(
        stream.on_request_body(&mut host, &tool_call(json!(1), "search")),
        Action::Continue
    );
    stream.on_log(&mut host);
    assert_eq!(host.record()["decision"], "allow");
}

#[test]
fn request_waiting_past_the_deadline_gets_503() {
    let config = remote_config();
    let mut host = post_host(Some(&alice()), &[]);
    let mut stream = Stream::new(Rc::clone(&config));
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    let wait = stream.waiting().expect("waits");

    // A fetch settled without keys before the deadline: still waiting, same deadline.
    host.now_ms += 1000;
    assert_eq!(stream.resume(&mut host), Action::Pause);
    assert_eq!(stream.waiting(), Some(wait));

    host.now_ms = wait.deadline_ms;
    assert_eq!(stream.resume(&mut host), Action::Pause);
    assert!(stream.waiting().is_none());
    let reply = host.reply();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert_eq!(
        reply.header("www-authenticate"),
        None,
        "never a 401 that drops tokens"
    );
    let record = host.record();
    assert_eq!(record["decision"], "error");
    assert_eq!(record["reason"], "keys_unavailable");
    assert_eq!(record["status"], 503);
}

#[test]
fn unknown_kid_waits_once_for_a_refetch() {
    let config = remote_config();
    install(
        &config,
        json!({ "keys": [p256_jwk_of(&p256_other_key(), "old")] }),
    );
    let mut host = post_host(Some(&alice()), &[]);
    let mut stream = Stream::new(Rc::clone(&config));
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert!(
        stream.waiting().is_some(),
        "an unknown kid triggers a re-fetch"
    );
    assert!(config.authenticator.issuers()[0].take_refetch_request());

    // The re-fetch brought the new key.
    install(&config, json!({ "keys": [p256_public_jwk()] }));
    assert_eq!(stream.resume(&mut host), Action::Pause);
    assert!(stream.awaiting_body());
    assert!(host.replies.is_empty());
}

#[test]
fn unknown_kid_after_the_wait_is_401() {
    let config = remote_config();
    install(
        &config,
        json!({ "keys": [p256_jwk_of(&p256_other_key(), "old")] }),
    );
    let mut host = post_host(Some(&alice()), &[]);
    let mut stream = Stream::new(Rc::clone(&config));
    stream.on_request_headers(&mut host, false);
    assert!(stream.waiting().is_some());
    host.now_ms += 500;
    assert_eq!(stream.resume(&mut host), Action::Pause);
    assert!(stream.waiting().is_none(), "waits only once");
    assert_eq!(host.reply().status, 401);
    assert_eq!(host.record()["reason"], "unknown_key");
}

// ---- more response handling ----------------------------------------------------------------

#[test]
fn audit_record_is_completed_with_the_upstream_status() {
    let (mut stream, mut host, _) = post_open(&alice(), &tool_call(json!(1), "search"));
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Pause
    );
    // A held body: the record is written once, when the body has been checked.
    assert!(host.audits.is_empty(), "{:?}", host.audits);
    let body = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
    stream.on_response_body(&mut host, body, true);
    assert_eq!(host.audits.len(), 1);
    stream.on_log(&mut host);
    assert_eq!(
        host.audits.len(),
        1,
        "nothing left to write in the log phase"
    );
    let record = host.record();
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["upstream_status"], 200);
    assert_eq!(record["tool"], "search");
}

#[test]
fn upstream_challenge_header_is_never_relayed() {
    let (mut stream, mut host, _) = post_open(&alice(), &tool_call(json!(1), "search"));
    host.set_response(&[
        (":status", "200"),
        ("www-authenticate", "Bearer realm=\"x\""),
    ]);
    stream.on_response_headers(&mut host, Some(200), true);
    assert_eq!(host.resp_header("www-authenticate"), None);
}

#[test]
fn base64_service_key_is_redacted_too() {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(SERVICE_KEY);
    let (mut stream, mut host) =
        answered(&alice(), &tool_call(json!(1), "search"), "application/json");
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"auth":"Basic {encoded}"}}}}"#);
    let out = replaced(
        stream.on_response_body(&mut host, body.as_bytes(), true),
        body.as_bytes(),
    );
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains(&encoded), "{text}");
}

fn blocking_config() -> Rc<Config> {
    let mut c = base_config();
    c["servers"][0]["key_leak"] = json!("block");
    build(c)
}

#[test]
fn blocked_key_leak_in_json_becomes_502() {
    let config = blocking_config();
    let mut host = post_host(Some(&alice()), &[]);
    let (mut stream, action) = send(&config, &mut host, &tool_call(json!(1), "search"));
    assert_eq!(action, Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Pause
    );
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"k":"{SERVICE_KEY}"}}}}"#);
    assert_eq!(
        stream.on_response_body(&mut host, body.as_bytes(), true),
        BodyAction::Pause
    );
    let reply = host.reply();
    assert_eq!(reply.status, 502);
    assert!(!String::from_utf8_lossy(&reply.body).contains(SERVICE_KEY));
    assert_eq!(host.record()["decision"], "error");
}

#[test]
fn blocked_key_leak_in_an_event_stream_cuts_the_stream() {
    let config = blocking_config();
    let mut host = post_host(Some(&alice()), &[]);
    let (mut stream, _) = send(&config, &mut host, &tool_call(json!(1), "search"));
    host.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Continue
    );
    let event = format!(
        "data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"k\":\"{SERVICE_KEY}\"}}}}\n\n"
    );
    let action = stream.on_response_body(&mut host, event.as_bytes(), false);
    assert_eq!(action, BodyAction::Pause);
    assert_eq!(host.resets, 1);
    assert_eq!(host.record()["decision"], "error");
}

#[test]
fn ambiguous_list_result_fails_closed() {
    let (mut stream, mut host) = answered(
        &alice(),
        &request(json!(5), "tools/list"),
        "application/json",
    );
    // Two "tools" members: a client might read either one.
    let body = r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"search"}],"tools":[{"name":"delete"}]}}"#;
    let action = stream.on_response_body(&mut host, body.as_bytes(), true);
    assert_eq!(action, BodyAction::Pause);
    assert_eq!(host.reply().status, 502);
}

#[test]
fn get_stream_replaying_a_list_is_filtered() {
    let mut host = get_host("/mcp", Some(&alice()));
    host.set_request_header("accept", "text/event-stream")
        .unwrap();
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Continue
    );
    let event =
        format!("data: {{\"jsonrpc\":\"2.0\",\"id\":77,\"result\":{{\"tools\":{TOOLS}}}}}\n\n");
    let out = replaced(
        stream.on_response_body(&mut host, event.as_bytes(), false),
        event.as_bytes(),
    );
    let text = String::from_utf8(out).expect("utf-8");
    assert!(!text.contains("secret_tool"), "{text}");
    assert!(!text.contains("\"delete\""), "{text}");
    assert!(text.contains("\"search\""), "{text}");
}

#[test]
fn ending_a_session_the_upstream_kept_does_not_free_it_for_others() {
    let config = config();
    let handle = open_session(&config, &alice(), "s-9");

    // Alice asks to end the session; this server does not let clients end sessions (405, as
    // the MCP transport allows), so the session lives on upstream.
    let mut host = get_host("/mcp", Some(&alice()));
    host.set_request_header(":method", "DELETE").unwrap();
    host.set_request_header("mcp-session-id", &handle).unwrap();
    let mut stream = Stream::new(Rc::clone(&config));
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Continue);
    assert_eq!(host.req_header("mcp-session-id"), Some("s-9"));
    host.set_response(&[(":status", "405")]);
    stream.on_response_headers(&mut host, Some(405), true);

    // Bob must still not be able to use Alice's live session.
    let (host, forwarded) = use_session(&config, &bob(), &handle);
    assert_eq!(forwarded, None, "bob got through to alice's session");
    session_refused(&host, "session_of_another_caller");
}

#[test]
fn audit_arguments_redacted_masks_secrets() {
    let mut c = base_config();
    c["servers"][0]["audit_arguments"] = json!("redacted");
    let mut host = post_host(Some(&alice()), &[]);
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": "search", "arguments": { "q": "acme", "api_key": "hunter2", "nested": { "password": "p" } } },
    });
    let (mut stream, action) = send(&build(c), &mut host, body.to_string().as_bytes());
    assert_eq!(action, Action::Continue);
    stream.on_log(&mut host);
    let args = &host.record()["arguments"];
    assert_eq!(args["q"], "acme");
    assert_eq!(args["api_key"], "[REDACTED]");
    assert_eq!(args["nested"]["password"], "[REDACTED]");
}

#[test]
fn the_callers_own_token_passed_as_an_argument_is_not_audited() {
    // An agent may hand its token on to a tool; no token is written to the audit log.
    let token = alice();
    for mode in ["full", "redacted", "keys"] {
        let mut c = base_config();
        c["servers"][0]["audit_arguments"] = json!(mode);
        let mut host = post_host(Some(&token), &[]);
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": "search", "arguments": {
                "q": format!("Bearer {token}"), "list": [token.clone()], token.clone(): 1 } },
        });
        let (mut stream, action) = send(&build(c), &mut host, body.to_string().as_bytes());
        assert_eq!(action, Action::Continue);
        stream.on_log(&mut host);
        let line = host.record().to_string();
        assert!(!line.contains(&token), "{mode}: {line}");
        assert!(line.contains("[REDACTED]"), "{mode}: {line}");
    }
}

#[test]
fn envoy_attributes_are_audited_and_select_the_server() {
    let mut c = base_config();
    let mut second = c["servers"][0].clone();
    second["name"] = json!("hr");
    second["match"] = json!({ "route_name": "hr-route" });
    c["servers"][0]["match"] = json!({ "route_name": "crm-route" });
    c["servers"].as_array_mut().expect("array").push(second);
    let config = build(c);
    let mut host = post_host(Some(&alice()), &[("x-request-id", "rid-1")]);
    host.set_property(&["source", "address"], "10.0.0.7:5555");
    host.set_property(&["xds", "route_name"], "hr-route");
    host.set_property(&["xds", "cluster_name"], "hr_upstream");
    let (mut stream, action) = send(&config, &mut host, &tool_call(json!(1), "search"));
    assert_eq!(action, Action::Continue);
    stream.on_log(&mut host);
    let record = host.record();
    assert_eq!(record["server"], "hr");
    assert_eq!(record["route"], "hr-route");
    assert_eq!(record["upstream"], "hr_upstream");
    assert_eq!(record["source"], "10.0.0.7:5555");
    assert_eq!(record["request_id"], "rid-1");
    // A route no server matches: 404.
    let mut host = post_host(Some(&alice()), &[]);
    host.set_property(&["xds", "route_name"], "other");
    assert_eq!(refused_at_headers(&config, &mut host).status, 404);
}

#[test]
fn repeated_session_header_cannot_smuggle_another_callers_session() {
    let config = config();
    let alices = open_session(&config, &alice(), "s-alice");
    let bobs = open_session(&config, &bob(), "s-bob");

    // Bob sends his own handle first and Alice's second: Envoy forwards both, and many servers
    // read the last one (or the joined value).
    let mut host = post_host(Some(&bob()), &[("mcp-session-id", &bobs)]);
    host.request_headers
        .push(("mcp-session-id".into(), alices.clone()));
    let mut stream = Stream::new(Rc::clone(&config));
    stream.on_request_headers(&mut host, false);
    let refused = host.replies.first().map(|r| r.status);
    assert_eq!(
        refused,
        Some(400),
        "bob's request with alice's session went on"
    );
}

/// An event stream answering `tools/list` with id 5, gzip-compressed (`TOOLS` as listed).
const GZIPPED_TOOLS_EVENT: &str = "1f8b080000000000020355cdb10a02311084e1fe9e42a60e2282cdbe8a8884ece2e58849c8ee5521ef6e6ce42ce7e387616f9e4e1d9b96dc6a00e17abec02132e8e6d044f764a00e2b2529e8de91fd5b66a7e25b5867caa2a1c56ab1e4c98ce17ecd4bec38f7cadee4282c49fe452534b1e7f70ee331c6b27c00e62b6e8da3000000";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn compressed_response_is_not_forwarded_uninspected() {
    // The filter strips accept-encoding, but an upstream may compress anyway: then neither the
    // list filter nor the key redaction can see the content, and it must not go out as is.
    let (mut stream, mut host, action) = post_open(&alice(), &request(json!(5), "tools/list"));
    assert_eq!(action, Action::Continue);
    host.set_response(&[
        (":status", "200"),
        ("content-type", "text/event-stream"),
        ("content-encoding", "gzip"),
    ]);
    let headers_action = stream.on_response_headers(&mut host, Some(200), false);
    let body = unhex(GZIPPED_TOOLS_EVENT);
    let forwarded = if host.replies.is_empty() {
        match stream.on_response_body(&mut host, &body, true) {
            BodyAction::Pause => None,
            BodyAction::Continue => Some(body.clone()),
            BodyAction::Replace(bytes) => Some(bytes),
        }
    } else {
        None
    };
    let cut = !host.replies.is_empty()
        || host.resets > 0
        || (headers_action == Action::Pause && forwarded.is_none());
    assert!(
        cut,
        "a compressed tools/list reached the caller unfiltered ({} bytes)",
        forwarded.map_or(0, |b| b.len())
    );
}

// ---- list answers: filtered or refused (issue 12) ------------------------------------------

/// A tools/list request with id 5 answered with `status` and these headers.
fn list_answered(
    status: u32,
    headers: &[(&str, &str)],
    end_of_stream: bool,
) -> (Stream, MockHost, Action) {
    let (mut stream, mut host, action) = post_open(&alice(), &request(json!(5), "tools/list"));
    assert_eq!(action, Action::Continue);
    let status_text = status.to_string();
    let mut all = vec![(":status", status_text.as_str())];
    all.extend_from_slice(headers);
    host.set_response(&all);
    let action = stream.on_response_headers(&mut host, Some(status), end_of_stream);
    (stream, host, action)
}

fn assert_unreadable_list_answer(host: &MockHost, why: &str) {
    let reply = host.reply();
    assert_eq!(reply.status, 502);
    let body = reply.json();
    assert_eq!(body["id"], 5, "{body}");
    assert_eq!(body["error"]["code"], -32603);
    let record = host.record();
    assert_eq!(record["decision"], "error");
    assert_eq!(record["reason"], "unreadable_list_answer");
    assert_eq!(record["detail"], why);
    assert_eq!(record["status"], 502);
}

#[test]
fn a_list_answer_of_an_unreadable_content_type_is_502() {
    for (content_type, why) in [
        (
            Some("application/json-rpc"),
            "content-type \"application/json-rpc\"",
        ),
        (Some("text/plain"), "content-type \"text/plain\""),
        (
            Some("application/problem+json"),
            "content-type \"application/problem+json\"",
        ),
        (
            Some("application/json, text/plain"),
            "content-type \"application/json, text/plain\"",
        ),
        (None, "no content-type"),
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("content-type", t))
            .into_iter()
            .collect();
        let (_, host, action) = list_answered(200, &headers, false);
        assert_eq!(action, Action::Pause, "{content_type:?}");
        assert_unreadable_list_answer(&host, why);
    }
    // With parameters, any case: readable.
    let (_, host, action) = list_answered(
        200,
        &[("content-type", "Application/JSON; charset=utf-8")],
        false,
    );
    assert_eq!(action, Action::Pause);
    assert!(host.replies.is_empty());
}

#[test]
fn a_list_answer_with_another_2xx_or_no_body_is_502() {
    for status in [201, 202, 203, 204, 206] {
        let (_, host, _) = list_answered(status, &[("content-type", "application/json")], false);
        assert_unreadable_list_answer(&host, &format!("status {status}"));
    }
    let (_, host, _) = list_answered(200, &[("content-type", "application/json")], true);
    assert_unreadable_list_answer(&host, "no body");
}

#[test]
fn a_list_answer_with_a_coerced_id_is_filtered() {
    for id in [r#""5""#, "5.0", "5e0", r#""05""#] {
        let (mut stream, mut host, _) =
            list_answered(200, &[("content-type", "application/json")], false);
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":{TOOLS}}}}}"#);
        let out = replaced(
            stream.on_response_body(&mut host, body.as_bytes(), true),
            body.as_bytes(),
        );
        let out: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            names(&out["result"]["tools"]),
            ["search", "get", "update"],
            "{id}"
        );
    }
}

#[test]
fn a_json_list_answer_that_is_not_the_list_is_502() {
    for (body, why) in [
        (
            r#"{"jsonrpc":"2.0","id":6,"result":{"tools":[]}}"#,
            "a response to no request of this exchange",
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
            "a list result without its list",
        ),
        (
            r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#,
            "a request or notification where a response was due",
        ),
        ("", "not JSON"),
        ("tools: search, delete", "not JSON"),
    ] {
        let (mut stream, mut host, _) =
            list_answered(200, &[("content-type", "application/json")], false);
        assert_eq!(
            stream.on_response_body(&mut host, body.as_bytes(), true),
            BodyAction::Pause,
            "{body}"
        );
        assert_unreadable_list_answer(&host, why);
    }
    // An error answer passes as it is.
    let (mut stream, mut host, _) =
        list_answered(200, &[("content-type", "application/json")], false);
    let error = br#"{"jsonrpc":"2.0","id":5,"error":{"code":-32601,"message":"no"}}"#;
    assert_eq!(
        stream.on_response_body(&mut host, error, true),
        BodyAction::Continue
    );
    assert!(host.replies.is_empty());
}

#[test]
fn a_list_answer_under_an_error_status_is_still_filtered() {
    let (mut stream, mut host, action) =
        list_answered(500, &[("content-type", "application/json")], false);
    assert_eq!(action, Action::Pause);
    // Whatever its id: a client reading it would see the list.
    let body = format!(r#"{{"jsonrpc":"2.0","id":"x","result":{{"tools":{TOOLS}}}}}"#);
    let out = replaced(
        stream.on_response_body(&mut host, body.as_bytes(), true),
        body.as_bytes(),
    );
    let out: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(names(&out["result"]["tools"]), ["search", "get", "update"]);
    // A 404 in plain text (an expired session) passes.
    let (mut stream, mut host, _) = list_answered(404, &[("content-type", "text/plain")], false);
    assert_eq!(
        stream.on_response_body(&mut host, b"Not Found", true),
        BodyAction::Continue
    );
    assert!(host.replies.is_empty());
}

#[test]
fn an_event_stream_list_answer_is_filtered_or_cut() {
    // Server requests pass; the answer with a coerced id is filtered.
    let (mut stream, mut host, _) =
        list_answered(200, &[("content-type", "text/event-stream")], false);
    let events = format!(
        "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{}}}}\n\n\
         data: {{\"jsonrpc\":\"2.0\",\"id\":\"5\",\"result\":{{\"tools\":{TOOLS}}}}}\n\n"
    );
    let out = replaced(
        stream.on_response_body(&mut host, events.as_bytes(), true),
        events.as_bytes(),
    );
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.contains("notifications/progress"));
    assert!(
        !text.contains("delete") && !text.contains("secret_tool"),
        "{text}"
    );
    // An event that is not JSON-RPC, or a response to another id: the stream is cut.
    for data in [
        "not json",
        r#"{"jsonrpc":"2.0","id":6,"result":{"tools":[]}}"#,
        r#"{"tools":[]}"#,
    ] {
        let (mut stream, mut host, _) =
            list_answered(200, &[("content-type", "text/event-stream")], false);
        let event = format!("data: {data}\n\n");
        assert_eq!(
            stream.on_response_body(&mut host, event.as_bytes(), false),
            BodyAction::Pause
        );
        assert_eq!(host.resets, 1, "{data}");
        let record = host.record();
        assert_eq!(record["decision"], "error");
        assert_eq!(record["reason"], "unreadable_list_answer");
        assert!(!record["detail"].as_str().unwrap_or_default().is_empty());
    }
}

#[test]
fn a_batch_s_list_answers_are_filtered_by_id() {
    let config = config();
    let mut host = post_host(Some(&alice()), &[("mcp-protocol-version", "2025-03-26")]);
    let body = batch(&[request(json!(1), "tools/list"), request(json!(2), "ping")]);
    let (mut stream, action) = send(&config, &mut host, &body);
    assert_eq!(action, Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    stream.on_response_headers(&mut host, Some(200), false);
    let answer = format!(
        r#"[{{"jsonrpc":"2.0","id":2,"result":{{}}}},{{"jsonrpc":"2.0","id":"1","result":{{"tools":{TOOLS}}}}}]"#
    );
    let out = replaced(
        stream.on_response_body(&mut host, answer.as_bytes(), true),
        answer.as_bytes(),
    );
    let out: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(
        names(&out[1]["result"]["tools"]),
        ["search", "get", "update"]
    );
    assert_eq!(out[0], json!({"jsonrpc": "2.0", "id": 2, "result": {}}));
}

#[test]
fn a_batch_s_refused_answer_is_on_every_message_s_record() {
    let mut host = post_host(Some(&alice()), &[("mcp-protocol-version", "2025-03-26")]);
    let body = batch(&[
        tool_call(json!(1), "search"),
        request(json!(2), "tools/list"),
    ]);
    let (mut stream, action) = send(&config(), &mut host, &body);
    assert_eq!(action, Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "text/plain")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Pause
    );
    assert_eq!(host.reply().status, 502);
    stream.on_log(&mut host);
    let last: Vec<Value> = host.audit().into_iter().rev().take(2).collect();
    assert_eq!(last.len(), 2);
    for r in &last {
        assert_eq!(r["decision"], "error", "{r}");
        assert_eq!(r["reason"], "unreadable_list_answer", "{r}");
        assert_eq!(r["status"], 502, "{r}");
    }
}

#[test]
fn a_get_stream_of_another_content_type_is_502() {
    let mut host = get_host("/mcp", Some(&alice()));
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "text/plain")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Pause
    );
    assert_eq!(host.reply().status, 502);
    assert_eq!(host.record()["reason"], "unreadable_list_answer");
    assert_eq!(host.record()["detail"], "content-type \"text/plain\"");
}

#[test]
fn a_held_response_envoy_answered_itself_is_audited_as_an_error() {
    let (mut stream, mut host, _) = post_open(&alice(), &tool_call(json!(1), "search"));
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Pause
    );
    // Envoy's buffer limit: its own 500, the body never reaches the filter's end.
    host.set_property(&["response", "code_details"], "response_payload_too_large");
    stream.on_log(&mut host);
    let record = host.record();
    assert_eq!(record["decision"], "error");
    assert_eq!(record["upstream_status"], 200);
    assert_eq!(record["reason"], "response_payload_too_large");
    assert!(record["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("per_connection_buffer_limit_bytes"));

    // A body checked to its end: the record stays as it was.
    let (mut stream, mut host, _) = post_open(&alice(), &tool_call(json!(1), "search"));
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    stream.on_response_headers(&mut host, Some(200), false);
    stream.on_response_body(&mut host, br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, true);
    host.set_property(&["response", "code_details"], "via_upstream");
    stream.on_log(&mut host);
    assert_eq!(host.record()["decision"], "allow");
}

// ---- metrics ------------------------------------------------------------------------------

#[test]
fn metric_labels_come_from_bounded_sets() {
    let config = config();
    // A method no MCP client sends: counted as `other`, denied by the built-in rule.
    let mut host = post_host(Some(&alice()), &[]);
    send(&config, &mut host, &request(json!(1), "x-evil/method-4711"));
    assert_eq!(host.record()["reason"], "policy_denied");
    assert_eq!(
        host.counter("mcp_guard.requests.method=other.decision=deny"),
        1,
        "{:?}",
        host.counters
    );
    assert_eq!(host.counter("mcp_guard.denials.rule=unknown-method"), 1);
    assert!(
        host.counters.keys().all(|k| !k.contains("4711")),
        "{:?}",
        host.counters
    );
    // A known method keeps its name.
    let mut host = post_host(Some(&alice()), &[]);
    send(&config, &mut host, &request(json!(2), "ping"));
    assert_eq!(
        host.counter("mcp_guard.requests.method=ping.decision=allow"),
        1
    );
}

#[test]
fn audit_columns_are_written_unless_switched_off() {
    let body = tool_call(json!(1), "search");
    let mut host = post_host(Some(&alice()), &[]);
    send(&config(), &mut host, &body).0.on_log(&mut host);
    assert_eq!(
        host.property_string(&["mcp.decision"]).as_deref(),
        Some("allow")
    );
    assert_eq!(host.property_string(&["mcp.sub"]).as_deref(), Some("alice"));

    let mut quiet = base_config();
    quiet["audit_columns"] = json!(false);
    let mut host = post_host(Some(&alice()), &[]);
    send(&build(quiet), &mut host, &body).0.on_log(&mut host);
    assert!(
        !host.audits.is_empty(),
        "the record itself is still written"
    );
    assert!(
        host.properties
            .keys()
            .all(|k| !k.concat().starts_with("mcp.")),
        "no per-field column: {:?}",
        host.properties.keys()
    );
}

// ---- trailers, charsets and answers a client reads otherwise (hostile review, session 11) ---

#[test]
fn request_trailers_before_the_decision_refuse_the_request() {
    // The body has not ended (HTTP/2 ends it with trailers): nothing was decided.
    let mut host = post_host(Some(&alice()), &[]);
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert!(stream.awaiting_body());
    assert_eq!(stream.on_request_trailers(&mut host), Action::Pause);
    let reply = host.reply();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "invalid_request");
    let record = host.record();
    assert_eq!(
        (&record["decision"], &record["reason"]),
        (&json!("deny"), &json!("request_trailers"))
    );
    // The body step never runs after that.
    assert_eq!(
        stream.on_request_body(&mut host, &tool_call(json!(1), "search")),
        Action::Pause
    );
    assert_eq!(host.replies.len(), 1);
}

#[test]
fn request_trailers_after_the_decision_go_on() {
    let (mut stream, mut host, action) = post_open(&alice(), &tool_call(json!(1), "search"));
    assert_eq!(action, Action::Continue);
    assert_eq!(stream.on_request_trailers(&mut host), Action::Continue);
    assert!(host.replies.is_empty());
    // An answered request stays answered.
    let (mut stream, mut host, action) = post_open(&alice(), &tool_call(json!(1), "delete"));
    assert_eq!((action, host.replies.len()), (Action::Pause, 1));
    assert_eq!(stream.on_request_trailers(&mut host), Action::Pause);
    assert_eq!(host.replies.len(), 1);
}

#[test]
fn a_held_answer_is_unchecked_until_its_end() {
    let (mut stream, mut host, _) =
        list_answered(200, &[("content-type", "application/json")], false);
    assert!(stream.holds_unchecked_answer());
    let body = format!(r#"{{"jsonrpc":"2.0","id":5,"result":{{"tools":{TOOLS}}}}}"#);
    let out = replaced(
        stream.on_response_body(&mut host, body.as_bytes(), true),
        body.as_bytes(),
    );
    let out: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(names(&out["result"]["tools"]), ["search", "get", "update"]);
    assert!(!stream.holds_unchecked_answer());
    // A stream's events are checked as they come: nothing unchecked is held.
    let (stream, _, _) = list_answered(200, &[("content-type", "text/event-stream")], false);
    assert!(!stream.holds_unchecked_answer());
}

#[test]
fn a_request_body_in_another_charset_is_415() {
    for content_type in [
        "application/json; charset=utf-7",
        "application/json; charset=utf-16le",
        "application/json; charset=utf-8; charset=utf-7",
        "application/json; charset*=''utf-7",
    ] {
        let mut host = post_host(Some(&alice()), &[("content-type", content_type)]);
        let (_, action) = send(&config(), &mut host, &request(json!(1), "ping"));
        assert_eq!(action, Action::Pause, "{content_type}");
        assert_eq!(host.reply().status, 415, "{content_type}");
        assert_eq!(host.record()["reason"], "unsupported_media_type");
    }
}

#[test]
fn every_content_encoding_of_a_request_counts() {
    let token = format!("Bearer {}", alice());
    let mut host = MockHost::request(&[
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "mcp.example.com"),
        ("content-type", "application/json"),
        ("mcp-protocol-version", PROTOCOL),
        ("authorization", &token),
        ("content-encoding", "identity"),
        ("content-encoding", "gzip"),
    ]);
    let reply = refused_at_headers(&config(), &mut host);
    assert_eq!(reply.status, 415);
    assert_eq!(host.record()["reason"], "content_encoding");
}

/// A tools/call (id 7) answered with `content_type` and these bytes, to its end.
fn call_answered(content_type: &str, body: &str) -> (Stream, MockHost, Action, BodyAction) {
    let (mut stream, mut host, action) = post_open(&alice(), &tool_call(json!(7), "search"));
    assert_eq!(action, Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", content_type)]);
    let headers = stream.on_response_headers(&mut host, Some(200), false);
    if !host.replies.is_empty() {
        return (stream, host, headers, BodyAction::Pause);
    }
    let body = stream.on_response_body(&mut host, body.as_bytes(), true);
    (stream, host, headers, body)
}

#[test]
fn a_list_smuggled_into_another_requests_answer_does_not_pass() {
    // Clients take a response by its id, whichever POST it came on: id 8 may be a tools/list
    // the client awaits elsewhere. On this tools/call's answer it would pass unfiltered.
    let smuggled = format!(r#"{{"jsonrpc":"2.0","id":8,"result":{{"tools":{TOOLS}}}}}"#);
    let (_, host, _, _) = call_answered("application/json", &smuggled);
    assert_eq!(host.reply().status, 502);
    assert!(!String::from_utf8_lossy(&host.reply().body).contains("secret_tool"));
    assert_eq!(host.record()["reason"], "unreadable_list_answer");
    let events = format!(
        "data: {smuggled}\n\ndata: {{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{{\"content\":[]}}}}\n\n"
    );
    let (_, host, headers, body) = call_answered("text/event-stream", &events);
    assert_eq!((headers, body), (Action::Continue, BodyAction::Pause));
    assert_eq!(host.resets, 1, "the stream is cut");
    assert_eq!(host.record()["decision"], "error");
    // The call's own answer passes as it is.
    let own = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok"}]}}"#;
    let (_, host, headers, body) = call_answered("application/json", own);
    assert_eq!((headers, body), (Action::Pause, BodyAction::Continue));
    assert!(host.replies.is_empty());
}

#[test]
fn a_list_on_an_answer_with_this_requests_id_is_filtered_too() {
    // Two POSTs with the same id ("7" and 7 are one id to the Python SDK client, which routes
    // answers by `str(id)`): the server may write the tools/list answer on the tools/call's
    // stream. Whatever list reaches the caller is filtered.
    for id in [r#""7""#, "7"] {
        let listed = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":{TOOLS}}}}}"#);
        let (_, host, _, body) = call_answered("application/json", &listed);
        assert!(host.replies.is_empty(), "{id}: passes, filtered");
        let BodyAction::Replace(out) = body else {
            panic!("{id}: the list is rewritten, got {body:?}");
        };
        let out = String::from_utf8_lossy(&out);
        assert!(
            !out.contains("secret_tool") && out.contains("search"),
            "{out}"
        );
        let events = format!("data: {listed}\n\n");
        let (_, host, _, body) = call_answered("text/event-stream", &events);
        assert_eq!(host.resets, 0);
        let BodyAction::Replace(out) = body else {
            panic!("{id}: the event is rewritten, got {body:?}");
        };
        assert!(!String::from_utf8_lossy(&out).contains("secret_tool"));
    }
}

#[test]
fn an_id_of_non_ascii_digits_answers_no_request() {
    // The Python SDK client reads "٨" (Arabic-Indic eight) as 8: on this call's answer (id 7)
    // it would answer another request. The filter does not decode such digits, so the answer
    // is for no request of this exchange: it does not pass, list or not.
    // As the characters and as JSON escapes.
    for id in ["\u{668}", "\u{ff17}", "\u{96d}", "\\u0668", "\\u0667"] {
        for result in [
            format!(r#"{{"tools":{TOOLS}}}"#),
            r#"{"content":[]}"#.to_string(),
        ] {
            let answer = format!(r#"{{"jsonrpc":"2.0","id":"{id}","result":{result}}}"#);
            let (_, host, _, _) = call_answered("application/json", &answer);
            assert_eq!(host.reply().status, 502, "{answer}");
            assert_eq!(host.record()["reason"], "unreadable_list_answer");
        }
    }
}

#[test]
fn an_answer_a_client_could_read_otherwise_is_502() {
    for content_type in [
        "application/json; charset=utf-7",
        "text/event-stream; charset=utf-16le",
        "text/event-stream; charset*=''utf-7",
        "application/json-seq",
        "text/plain; x=text/event-stream",
        "application/json; x=text/event-stream",
    ] {
        let own = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#;
        let (_, host, headers, _) = call_answered(content_type, own);
        assert_eq!(headers, Action::Pause, "{content_type}");
        assert_eq!(host.reply().status, 502, "{content_type}");
        let record = host.record();
        assert_eq!(record["reason"], "uninspectable_response", "{content_type}");
        assert_eq!(record["detail"], format!("content-type {content_type}"));
    }
}

#[test]
fn a_repeated_header_rules_read_is_refused() {
    // Rules would read `prod, dev`; Starlette and Go read `prod`, others `dev`.
    let mut c = base_config();
    c["servers"][0]["policy"]["rules"] = json!([
        { "name": "no-prod", "deny": "\"x-env\" in request.headers && request.headers[\"x-env\"] == \"prod\"" },
        { "name": "all", "allow": "true" },
    ]);
    let reading = build(c);
    let twice = |host: &mut MockHost| {
        for (k, v) in [("x-env", "prod"), ("X-Env", "dev")] {
            host.request_headers.push((k.into(), v.into()));
        }
    };
    let mut host = post_host(Some(&alice()), &[]);
    twice(&mut host);
    let (_, action) = send(&reading, &mut host, &tool_call(json!(1), "search"));
    assert_eq!(action, Action::Pause, "nothing forwarded");
    assert_eq!(host.reply().status, 400);
    assert_eq!(host.record()["reason"], "repeated_header");
    assert!(
        host.reply().json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("x-env")),
        "{:?}",
        host.reply().json()
    );
    let mut host = post_host(Some(&alice()), &[("x-env", "prod")]);
    let (_, action) = send(&reading, &mut host, &tool_call(json!(1), "search"));
    assert_eq!(action, Action::Pause);
    assert_eq!(host.record()["rule"], "no-prod");
    // A policy that reads no request header leaves repeated ones to the server.
    let mut host = post_host(Some(&alice()), &[]);
    twice(&mut host);
    let (_, action) = send(&config(), &mut host, &tool_call(json!(1), "search"));
    assert_eq!(action, Action::Continue);
}

#[test]
fn rules_do_not_see_headers_the_server_never_receives() {
    // `x-mcp-user` carries the token's email upstream, `x-api-key` the service key: a client's
    // own values of them are replaced, so a rule reading them would decide on a forgery.
    let mut c = base_config();
    c["servers"][0]["policy"]["rules"] = json!([
        { "name": "by-user-header", "allow": "\"x-mcp-user\" in request.headers || \"x-api-key\" in request.headers" },
        { "name": "by-team-header", "allow": "request.headers[\"x-team\"] == \"crm\"" },
    ]);
    let config = build(c);
    let forged = [("x-mcp-user", "root@example.com"), ("x-api-key", "mine")];
    let mut host = post_host(Some(&alice()), &forged);
    let (_, action) = send(&config, &mut host, &tool_call(json!(1), "search"));
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply().json()["error"]["code"], -31403);
    // Other headers are the client's and reach the server as sent: rules read them.
    let mut host = post_host(Some(&alice()), &[("x-team", "crm")]);
    let (mut stream, action) = send(&config, &mut host, &tool_call(json!(1), "search"));
    assert_eq!(action, Action::Continue);
    stream.on_log(&mut host);
    assert_eq!(host.record()["rule"], "by-team-header");
}

#[test]
fn an_answer_that_came_by_another_route_than_the_checked_one_is_502() {
    // Envoy matches the route again after the filter changed the request's headers: a route
    // on `x-mcp-user` (a forwarded claim) would take the request to another upstream.
    let mut host = post_host(Some(&alice()), &[]);
    host.set_property(&["xds", "route_name"], "crm");
    let (mut stream, action) = send(&config(), &mut host, &tool_call(json!(7), "search"));
    assert_eq!(action, Action::Continue);
    host.set_property(&["xds", "route_name"], "by-user");
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Pause
    );
    assert_eq!(host.reply().status, 502);
    let record = host.record();
    assert_eq!(
        (&record["decision"], &record["reason"]),
        (&json!("error"), &json!("rerouted"))
    );
    assert!(
        record["detail"].as_str().unwrap().contains("\"by-user\""),
        "{record}"
    );
    // The same route: the answer goes on.
    let mut host = post_host(Some(&alice()), &[]);
    host.set_property(&["xds", "route_name"], "crm");
    let (mut stream, _) = send(&config(), &mut host, &tool_call(json!(7), "search"));
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Pause
    );
    assert!(host.replies.is_empty());
}

/// An integer argument beyond 2^53 is one number to the policy (exact) and another to a
/// server that reads JSON numbers as doubles (JavaScript's `JSON.parse`, Go's `any`):
/// `9007199254740993` is `9007199254740992` there. A deny rule on the latter must not be
/// passed by writing the former.
#[test]
fn an_integer_a_double_reads_otherwise_is_refused_not_judged() {
    let mut c = base_config();
    c["servers"][0]["policy"] = json!({
        "name": "crm", "version": "7",
        "rules": [
            { "name": "not-that-customer", "deny": "mcp.tool.name == \"get\" && int(mcp.tool.arguments.customer_id) == 9007199254740992" },
            { "name": "get", "allow": "mcp.tool.name == \"get\"" },
        ],
    });
    let config = build(c);
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get","arguments":{"customer_id":9007199254740993}}}"#;
    let mut host = post_host(Some(&alice()), &[]);
    let (mut stream, action) = send(&config, &mut host, body);
    stream.on_log(&mut host);
    assert_eq!(action, Action::Pause, "forwarded: {:?}", host.audit());
    let record = host.record();
    assert_eq!(record["status"], 400, "{record}");
    assert_eq!(record["error_code"], -32602, "{record}");
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.contains("9007199254740993") && d.contains("as a string")),
        "{record}"
    );
    // The control: the exact double is denied by the rule, a small integer allowed.
    for (text, decision) in [("9007199254740992", "deny"), ("42", "allow")] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get","arguments":{{"customer_id":{text}}}}}}}"#
        );
        let mut host = post_host(Some(&alice()), &[]);
        let (mut stream, _) = send(&config, &mut host, body.as_bytes());
        stream.on_log(&mut host);
        assert_eq!(host.record()["decision"], decision, "{text}");
    }
}

/// Beyond 64 bits serde_json reads an integer as the nearest double, so the policy would judge
/// 18446744073709551616 where Python (and any server reading JSON integers exactly) acts on
/// 18446744073709551617: a rule's bound at 2^64 would let the larger number through. Refused as
/// the integers doubles cannot hold are, whether or not a rule reads the arguments; an integer
/// a double holds exactly (2^64, 10^20) passes as that double.
#[test]
fn an_integer_beyond_64_bits_a_double_reads_otherwise_is_refused_not_judged() {
    let mut c = base_config();
    c["servers"][0]["policy"] = json!({
        "name": "crm", "version": "7",
        "rules": [
            { "name": "small-amounts", "allow": "mcp.tool.name == \"pay\" && double(mcp.tool.arguments.amount) <= 18446744073709551616.0" },
            { "name": "get", "allow": "mcp.tool.name == \"get\"" },
        ],
    });
    let config = build(c);
    let call = |tool: &str, amount: &str| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"amount":{amount},"note":"x\"18446744073709551617"}}}}}}"#
        );
        let mut host = post_host(Some(&alice()), &[]);
        let (mut stream, action) = send(&config, &mut host, body.as_bytes());
        stream.on_log(&mut host);
        (action, host.record())
    };
    for (tool, wide) in [
        ("pay", "18446744073709551617"),
        ("pay", "-9223372036854775809"),
        ("pay", "[1, {\"deep\": 123456789012345678901234567890}]"),
        // The rule does not read this tool's arguments: refused all the same.
        ("get", "18446744073709551617"),
    ] {
        let (action, record) = call(tool, wide);
        assert_eq!(action, Action::Pause, "{wide} forwarded: {record}");
        assert_eq!(record["status"], 400, "{record}");
        assert_eq!(record["error_code"], -32602, "{record}");
        assert!(
            record["detail"]
                .as_str()
                .is_some_and(|d| d.contains("as a string")
                    && d.contains(&format!(
                        "integer {}",
                        wide.trim_start_matches("[1, {\"deep\": ")
                            .trim_end_matches("}]")
                    ))),
            "{record}"
        );
    }
    // Integers a double holds exactly, the same number written as a double, and the integer
    // inside a string: judged as the server reads them.
    for (amount, decision) in [
        ("18446744073709551616", "allow"),
        ("1.8446744073709552e19", "allow"),
        ("100000000000000000000", "deny"),
        ("\"18446744073709551617\"", "allow"),
    ] {
        let (_, record) = call("pay", amount);
        assert_eq!(record["decision"], decision, "{amount}: {record}");
    }
}

/// A list member (or the result, or an entry's name) spelled in another case beside
/// the one the filter reads. Go's `encoding/json` (mcp-go's client, any Go client decoding
/// into structs) matches member names case-insensitively, the last one winning: it reads the
/// unfiltered `Tools`. The answer must be filtered or refused, never passed with a second list.
#[test]
fn a_case_variant_list_beside_the_filtered_one_makes_the_answer_unreadable() {
    let mut passed = Vec::new();
    for body in [
        format!(r#"{{"jsonrpc":"2.0","id":5,"result":{{"tools":[],"Tools":{TOOLS}}}}}"#),
        format!(
            r#"{{"jsonrpc":"2.0","id":5,"result":{{"tools":[]}},"Result":{{"tools":{TOOLS}}}}}"#
        ),
        format!(r#"{{"jsonrpc":"2.0","id":5,"result":{{"tools":[],"toolſ":{TOOLS}}}}}"#),
        r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"search","Name":"delete"}]}}"#
            .to_string(),
    ] {
        let (mut stream, mut host) = answered(
            &alice(),
            &request(json!(5), "tools/list"),
            "application/json",
        );
        let action = stream.on_response_body(&mut host, body.as_bytes(), true);
        stream.on_log(&mut host);
        let record = host.record();
        if record["decision"] != "error"
            || !record["detail"]
                .as_str()
                .is_some_and(|r| r.contains("in another case"))
            || matches!(action, BodyAction::Continue)
        {
            passed.push((body, action, record));
        }
    }
    assert!(passed.is_empty(), "not refused: {passed:#?}");
}

/// `"ID"` beside `"id"`: the filter reads the answer to the tools/call (id 7); Go's
/// `encoding/json` reads id 5, the tools/list the client awaits on another POST, unfiltered.
#[test]
fn a_case_variant_id_does_not_carry_a_list_to_another_request() {
    let body = format!(r#"{{"jsonrpc":"2.0","id":7,"ID":5,"result":{{"tools":{TOOLS}}}}}"#);
    let (mut stream, mut host) =
        answered(&alice(), &tool_call(json!(7), "search"), "application/json");
    let action = stream.on_response_body(&mut host, body.as_bytes(), true);
    stream.on_log(&mut host);
    assert!(!matches!(action, BodyAction::Continue));
    let record = host.record();
    assert_eq!(record["decision"], "error", "{record}");
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|r| r.contains("in another case")),
        "{record}"
    );
}

/// `completion/complete` completes an argument of the prompt or resource template its
/// `params.ref` names, from the server's data: the policy sees that prompt (or resource), so a
/// rule on it holds for its completions too, and the audit names it.
#[test]
fn a_completion_is_decided_on_the_prompt_or_resource_it_completes() {
    let mut c = base_config();
    c["servers"][0]["policy"] = json!({
        "name": "crm", "version": "7",
        "rules": [
            { "name": "no-secret", "deny": "mcp.prompt.name == \"secret\" || mcp.resource.uri.startsWith(\"secret://\")" },
            { "name": "complete", "allow": "mcp.method == \"completion/complete\"" },
        ],
    });
    let config = build(c);
    let complete = |reference: Value| {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "completion/complete",
                           "params": { "ref": reference, "argument": { "name": "customer", "value": "a" } } })
        .to_string();
        let mut host = post_host(Some(&alice()), &[]);
        let (mut stream, action) = send(&config, &mut host, body.as_bytes());
        stream.on_log(&mut host);
        (action, host.record())
    };
    let (action, record) = complete(json!({ "type": "ref/prompt", "name": "secret" }));
    assert_eq!(action, Action::Pause, "{record}");
    assert_eq!(
        (&record["decision"], &record["rule"], &record["prompt"]),
        (&json!("deny"), &json!("no-secret"), &json!("secret"))
    );
    let (action, record) = complete(json!({ "type": "ref/resource", "uri": "secret://{id}" }));
    assert_eq!(action, Action::Pause, "{record}");
    assert_eq!(record["rule"], "no-secret");
    let (action, record) = complete(json!({ "type": "ref/prompt", "name": "public" }));
    assert_eq!(action, Action::Continue, "{record}");
    assert_eq!(record["prompt"], "public");
    // A ref the filter cannot read is refused, not decided as no prompt at all.
    for reference in [
        json!({ "type": "ref/prompt" }),
        json!({ "type": "ref/other", "name": "secret" }),
        json!("secret"),
    ] {
        let (action, record) = complete(reference);
        assert_eq!(action, Action::Pause);
        assert_eq!(record["error_code"], -32602, "{record}");
    }
}
