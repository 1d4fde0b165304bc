//! Token introspection (RFC 7662) through the request path: an opaque token waits for one call,
//! the answer is checked like a JWT's claims and reaches the policy, answers are cached (the
//! IdP is not asked again), concurrent requests share one call, and an IdP that fails gives
//! 503, never 401.

mod common;

use std::rc::Rc;

use common::*;
use mcp_guard::config::Config;
use mcp_guard::flow::{Action, BodyAction, Idle, Stream};
use serde_json::{json, Value};

const OPAQUE: &str = "2YotnFZFEjr1zCsicMWpAA";
const PARTNER: &str = "https://partner-idp.example.net";

/// A POST with `token`, its HTTP calls (introspection) answered with tokens from 7000.
fn post(token: &str) -> CallHost {
    let auth = format!("Bearer {token}");
    CallHost::new(
        MockHost::request(&[
            (":method", "POST"),
            (":path", "/mcp"),
            (":authority", "mcp.example.com"),
            ("content-type", "application/json"),
            ("authorization", &auth),
        ]),
        Some(7000),
    )
}

fn config(mode: &str) -> Rc<Config> {
    let value = json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [RESOURCE],
            "algorithms": ["ES256"],
            "jwks": { "keys": [p256_public_jwk()] },
            "introspect": mode,
            "introspection": {
                "endpoint": "https://idp.example.com/token/introspection",
                "cluster": "idp",
                "client_id": "mcp-guard",
                "client_secret_from_env": "INTROSPECTION_SECRET",
                "auth": "client_secret_post",
                "cache_ttl_seconds": 30,
                "negative_ttl_seconds": 2,
            },
        }],
        "servers": [{
            "name": "crm",
            "resource": RESOURCE,
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": { "name": "p", "rules": [
                { "name": "sales", "allow": "\"sales\" in jwt.groups" },
            ]},
        }],
        "sessions": { "key": TEST_SESSION_KEY },
    });
    let env = MapEnv::with(&[("INTROSPECTION_SECRET", "s3cret")]);
    Rc::new(Config::from_json(value.to_string().as_bytes(), &env).unwrap())
}

fn active(extra: Value) -> Vec<u8> {
    let mut answer = json!({
        "active": true, "iss": ISSUER, "aud": RESOURCE, "client_id": "agent",
        "sub": "alice", "scope": "mcp:tools", "exp": NOW + 600, "iat": NOW - 5,
        "token_type": "Bearer", "groups": ["sales"],
    });
    for (k, v) in extra.as_object().unwrap() {
        answer[k] = v.clone();
    }
    answer.to_string().into_bytes()
}

const BODY: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}"#;

/// Headers of a fresh request: (stream, action).
fn start(config: &Rc<Config>, host: &mut CallHost) -> (Stream, Action) {
    let mut stream = Stream::new(Rc::clone(config));
    let action = stream.on_request_headers(host, false);
    (stream, action)
}

/// Answers the last call and resumes `stream`.
fn answer(
    config: &Rc<Config>,
    host: &mut CallHost,
    stream: &mut Stream,
    status: Option<u32>,
    body: &[u8],
) -> Action {
    let call = host.http_calls.last().unwrap().0;
    assert!(config.authenticator.owns_introspection_call(call));
    let settled = config
        .authenticator
        .on_introspection_response(call, status, Some(body), host);
    assert_eq!(settled, Some(0));
    stream.resume(host)
}

/// The IdP's 200 answer (`body`) to the last introspection call, and the stream resumed.
fn idp_says(config: &Rc<Config>, host: &mut CallHost, stream: &mut Stream, body: &[u8]) -> Action {
    answer(config, host, stream, Some(200), body)
}

#[test]
fn an_opaque_token_is_introspected_once_and_its_claims_reach_the_policy() {
    let config = config("opaque");
    let mut host = post(OPAQUE);
    let (mut stream, action) = start(&config, &mut host);
    assert_eq!(action, Action::Pause);
    assert!(stream.waiting().is_some(), "waits for the answer");
    assert_eq!(host.http_calls.len(), 1);
    let (_, cluster, headers, body) = host.http_calls[0].clone();
    assert_eq!(cluster, "idp");
    assert!(headers.contains(&(":path".into(), "/token/introspection".into())));
    assert!(headers.contains(&(":method".into(), "POST".into())));
    assert_eq!(
        body,
        format!(
            "token={OPAQUE}&token_type_hint=access_token&client_id=mcp-guard&client_secret=s3cret"
        )
    );

    // A second request with the same token while the call is in flight: no second call.
    let mut host2 = post(OPAQUE);
    host2.inner.shared = Rc::clone(&host.inner.shared);
    let (mut stream2, _) = start(&config, &mut host2);
    assert!(stream2.waiting().is_some());
    assert!(host2.http_calls.is_empty());

    idp_says(&config, &mut host, &mut stream, &active(json!({})));
    assert!(stream.waiting().is_none());
    assert!(stream.awaiting_body());
    assert_eq!(stream.on_request_body(&mut host, BODY), Action::Continue);
    stream.on_log(&mut host);
    let record = host.inner.record();
    assert_eq!(record["sub"], "alice");
    assert_eq!(record["decision"], "allow");
    assert!(!String::from_utf8_lossy(&host.inner.audits.concat()).contains(OPAQUE));

    assert_eq!(stream2.resume(&mut host2), Action::Pause);
    assert!(stream2.awaiting_body());

    // Cached: a third request asks nobody.
    let mut host3 = post(OPAQUE);
    let (stream3, _) = start(&config, &mut host3);
    assert!(stream3.awaiting_body() && host3.http_calls.is_empty());
    assert_eq!(
        host3
            .inner
            .counter("mcp_guard.introspections.outcome=cache_hit"),
        1
    );
}

#[test]
fn inactive_invalid_and_failed_answers() {
    for (status, body, code, reason) in [
        (
            Some(200),
            br#"{"active":false}"#.to_vec(),
            401,
            "token_inactive",
        ),
        (
            Some(200),
            active(json!({"aud": "https://other.example.com"})),
            401,
            "wrong_audience",
        ),
        (
            Some(200),
            active(json!({"iss": "https://evil.example.com"})),
            401,
            "unknown_issuer",
        ),
        (Some(200), active(json!({"exp": NOW - 600})), 401, "expired"),
        (
            Some(200),
            active(json!({"token_type": "refresh_token"})),
            401,
            "wrong_typ",
        ),
        (
            Some(200),
            b"<html>".to_vec(),
            503,
            "introspection_unavailable",
        ),
        (Some(500), Vec::new(), 503, "introspection_unavailable"),
        (None, Vec::new(), 503, "introspection_unavailable"),
    ] {
        let config = config("opaque");
        let mut host = post(OPAQUE);
        let (mut stream, _) = start(&config, &mut host);
        assert_eq!(
            answer(&config, &mut host, &mut stream, status, &body),
            Action::Pause,
            "{reason}"
        );
        assert!(stream.waiting().is_none(), "{reason}");
        let reply = host.inner.reply();
        assert_eq!(reply.status, code, "{reason}");
        assert_eq!(host.inner.record()["reason"], reason);
        if code == 401 {
            assert!(reply
                .header("www-authenticate")
                .unwrap()
                .contains("invalid_token"));
        } else {
            assert!(reply.header("www-authenticate").is_none());
        }
    }
}

#[test]
fn always_mode_introspects_a_valid_jwt_too() {
    let config = config("always");
    let mut claims = claims_for("alice", &["sales"], "");
    claims["iat"] = json!(NOW);
    let jwt = sign(Signer::Es256, &claims);
    let mut host = post(&jwt);
    let (mut stream, _) = start(&config, &mut host);
    assert_eq!(host.http_calls.len(), 1);
    idp_says(&config, &mut host, &mut stream, br#"{"active":false}"#);
    assert_eq!(host.inner.reply().status, 401);
    assert_eq!(host.inner.record()["reason"], "token_inactive");
}

/// With `introspect: always`, a JWT the IdP says is a refresh token is refused even though it
/// verified (an issuer that requires no `typ`).
#[test]
fn always_mode_refuses_a_jwt_the_idp_calls_a_refresh_token() {
    let mut claims = claims_for("alice", &["sales"], "");
    claims["iat"] = json!(NOW);
    let jwt = sign(Signer::Es256, &claims);
    for (kind, status) in [
        (json!({"token_use": "refresh_token"}), Some(401)),
        (json!({"token_type": "refresh_token"}), Some(401)),
        (json!({"token_type": "Bearer"}), None),
    ] {
        let config = config("always");
        let mut host = post(&jwt);
        let (mut stream, _) = start(&config, &mut host);
        assert_eq!(host.http_calls.len(), 1, "{kind}");
        idp_says(&config, &mut host, &mut stream, &active(kind.clone()));
        match status {
            Some(code) => {
                assert_eq!(host.inner.reply().status, code, "{kind}");
                assert_eq!(host.inner.record()["reason"], "wrong_typ", "{kind}");
            }
            None => assert!(stream.awaiting_body(), "{kind}"),
        }
    }
}

#[test]
fn only_one_issuer_may_introspect() {
    let mut value: Value = json!({
        "issuers": [],
        "servers": [{ "name": "s", "resource": RESOURCE,
            "credential": { "header": "x-api-key", "value": "k" }, "policy": { "name": "p" } }],
        "sessions": { "key": TEST_SESSION_KEY },
    });
    for iss in ["https://a.example.com", "https://b.example.com"] {
        value["issuers"].as_array_mut().unwrap().push(json!({
            "issuer": iss, "audiences": [RESOURCE], "jwks": { "keys": [p256_public_jwk()] },
            "introspect": "opaque",
            "introspection": { "endpoint": "https://a.example.com/i", "cluster": "idp",
                "client_id": "c", "client_secret_from_env": "S" },
        }));
    }
    let env = MapEnv::with(&[("S", "x")]);
    let err = Config::from_json(value.to_string().as_bytes(), &env).unwrap_err();
    assert_eq!(err.field, "issuers[1].introspect");
    let err = Config::from_json(value.to_string().as_bytes(), &MapEnv::default()).unwrap_err();
    assert_eq!(err.field, "issuers[0].introspection.client_secret_from_env");
}

/// A configuration introspecting at `endpoint` through `cluster` for `issuer`.
fn config_at(issuer: &str, endpoint: &str, cluster: &str) -> Rc<Config> {
    config_with_ttl(issuer, endpoint, cluster, None)
}

/// [`config_at`] with `introspection.cache_ttl_seconds` when `ttl` is given.
fn config_with_ttl(issuer: &str, endpoint: &str, cluster: &str, ttl: Option<u64>) -> Rc<Config> {
    let mut value = json!({
        "issuers": [{
            "issuer": issuer,
            "audiences": [RESOURCE],
            "algorithms": ["ES256"],
            "jwks": { "keys": [p256_public_jwk()] },
            "introspect": "opaque",
            "introspection": {
                "endpoint": endpoint,
                "cluster": cluster,
                "client_id": "mcp-guard",
                "client_secret_from_env": "INTROSPECTION_SECRET",
            },
        }],
        "servers": [{
            "name": "crm",
            "resource": RESOURCE,
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": { "name": "p", "rules": [ { "name": "all", "allow": "true" } ]},
        }],
        "sessions": { "key": TEST_SESSION_KEY },
    });
    if let Some(ttl) = ttl {
        value["issuers"][0]["introspection"]["cache_ttl_seconds"] = json!(ttl);
    }
    let env = MapEnv::with(&[("INTROSPECTION_SECRET", "s3cret")]);
    Rc::new(Config::from_json(value.to_string().as_bytes(), &env).unwrap())
}

fn post_sharing(token: &str, shared: &Shared) -> CallHost {
    let auth = format!("Bearer {token}");
    CallHost::new(
        MockHost::request(&[
            (":method", "POST"),
            (":path", "/mcp"),
            (":authority", "mcp.example.com"),
            ("content-type", "application/json"),
            ("authorization", &auth),
        ])
        .with_shared(shared),
        Some(7000),
    )
}

/// Two filter configurations in one Envoy with the same `vm_config` (the shipped templates all
/// name `vm_id: mcp-guard`) share Envoy's shared data: an answer one got from its authorization
/// server about a token (RFC 7662: `iss` optional) is not the other's answer for its issuer.
/// Answers are kept by the token and who was asked about it, for which issuer.
#[test]
fn an_answer_another_configurations_server_gave_is_not_adopted() {
    let shared = Shared::default();
    let partner = config_at(
        PARTNER,
        "https://partner-idp.example.net/introspect",
        "partner",
    );
    let staff = config_at(ISSUER, "https://idp.example.com/token/introspection", "idp");

    let mut host = post_sharing(OPAQUE, &shared);
    let mut stream = Stream::new(Rc::clone(&partner));
    stream.on_request_headers(&mut host, false);
    let call = host
        .http_calls
        .last()
        .map(|c| c.0)
        .expect("the partner's server is asked");
    let answer = json!({
        "active": true, "sub": "alice", "aud": RESOURCE, "exp": NOW + 600, "iat": NOW - 5,
        "client_id": "partner-app",
    })
    .to_string();
    partner.authenticator.on_introspection_response(
        call,
        Some(200),
        Some(answer.as_bytes()),
        &mut host,
    );
    assert_eq!(stream.resume(&mut host), Action::Pause);
    assert!(stream.awaiting_body(), "the partner's caller is let in");

    // The same token at the employees' configuration: it asks its own IdP, and waits for it.
    let mut host = post_sharing(OPAQUE, &shared);
    let mut stream = Stream::new(Rc::clone(&staff));
    stream.on_request_headers(&mut host, false);
    assert!(
        !stream.awaiting_body(),
        "decided on the partner server's answer"
    );
    let asked: Vec<&str> = host.http_calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(asked, vec!["idp"]);
}

/// RFC 7662 lets the authorization server answer for any token it issued, whatever the hint:
/// a refresh token or an ID token sent as a bearer token is "active" too. Servers name the kind
/// in `token_type`, `token_use` (Ory Hydra) or `typ` (Keycloak); every such answer is refused,
/// and an access token's answer (in each server's words) is still accepted.
#[test]
fn an_answer_about_a_refresh_or_id_token_is_not_an_access_token() {
    for extra in [
        json!({"token_type": "refresh_token"}),
        json!({"token_type": null}),
        json!({"token_use": "refresh_token"}),
        json!({"token_use": "id_token"}),
        json!({"token_use": ["access_token"]}),
        json!({"typ": "Refresh"}),
        json!({"typ": "Offline"}),
        json!({"typ": "ID"}),
        json!({"typ": 1}),
        json!({"token_type": "Bearer", "token_use": "refresh_token"}),
    ] {
        let config = config("opaque");
        let mut host = post(OPAQUE);
        let (mut stream, _) = start(&config, &mut host);
        idp_says(&config, &mut host, &mut stream, &active(extra.clone()));
        let reply = host.inner.reply();
        assert_eq!(reply.status, 401, "{extra}");
        assert_eq!(host.inner.record()["reason"], "wrong_typ", "{extra}");
        assert!(reply
            .header("www-authenticate")
            .is_some_and(|c| c.contains("invalid_token")));
    }
    for extra in [
        json!({"token_use": "access_token"}),
        json!({"typ": "Bearer", "token_type": "Bearer"}),
        json!({"token_type": "N_A"}),
    ] {
        let config = config("opaque");
        let mut host = post(OPAQUE);
        let (mut stream, _) = start(&config, &mut host);
        idp_says(&config, &mut host, &mut stream, &active(extra.clone()));
        assert!(stream.awaiting_body(), "{extra}");
    }
}

/// An answer another configuration sharing the VM published (or this one before an update that
/// shortened `cache_ttl_seconds`) is used here only within this configuration's TTL, counted
/// from when the answer was got: a revocation is seen as soon as this configuration promises.
#[test]
fn a_shared_answer_is_not_used_past_this_configurations_ttl() {
    let with_ttl = |ttl: u64| {
        config_with_ttl(
            ISSUER,
            "https://idp.example.com/token/introspection",
            "idp",
            Some(ttl),
        )
    };
    let shared = Shared::default();
    let before = with_ttl(3600);
    let mut host = post_sharing(OPAQUE, &shared);
    let mut stream = Stream::new(Rc::clone(&before));
    stream.on_request_headers(&mut host, false);
    let call = host.http_calls.last().map(|c| c.0).expect("asked");
    before.authenticator.on_introspection_response(
        call,
        Some(200),
        Some(&active(json!({"exp": NOW + 3000}))),
        &mut host,
    );
    assert_eq!(stream.resume(&mut host), Action::Pause);
    assert!(stream.awaiting_body());

    // Within the new configuration's 10 s: adopted, nobody asked.
    let after = with_ttl(10);
    let mut host = post_sharing(OPAQUE, &shared);
    host.inner.now_ms += 5_000;
    let mut stream = Stream::new(Rc::clone(&after));
    stream.on_request_headers(&mut host, false);
    assert!(stream.awaiting_body() && host.http_calls.is_empty());

    // 20 s after the answer was got: its IdP is asked again (another VM's view, no local copy).
    let after = with_ttl(10);
    let mut host = post_sharing(OPAQUE, &shared);
    host.inner.now_ms += 20_000;
    let mut stream = Stream::new(Rc::clone(&after));
    stream.on_request_headers(&mut host, false);
    assert!(!stream.awaiting_body(), "decided on a 20 s old answer");
    let asked: Vec<&str> = host.http_calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(asked, vec!["idp"]);
}

/// A GET stream opened with `token` (its introspection answered `active`), its answer an
/// event stream: (stream, host), the first event through.
fn standing_stream(config: &Rc<Config>, token: &str) -> (Stream, CallHost) {
    let auth = format!("Bearer {token}");
    let mut host = CallHost::new(
        MockHost::request(&[
            (":method", "GET"),
            (":path", "/mcp"),
            (":authority", "mcp.example.com"),
            ("accept", "text/event-stream"),
            ("authorization", &auth),
        ]),
        Some(7000),
    );
    let mut stream = Stream::new(Rc::clone(config));
    if stream.on_request_headers(&mut host, true) == Action::Pause {
        assert_eq!(
            answer(
                config,
                &mut host,
                &mut stream,
                Some(200),
                &active(json!({}))
            ),
            Action::Continue
        );
    }
    host.inner
        .set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    stream.on_response_headers(&mut host, Some(200), false);
    assert_eq!(event_through(&mut stream, &mut host, 1), Some(event(1)));
    (stream, host)
}

fn event(n: u32) -> Vec<u8> {
    format!(
        "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/resources/updated\",\
         \"params\":{{\"uri\":\"crm://customers/{n}\"}}}}\n\n"
    )
    .into_bytes()
}

/// Event `n` of the stream: what goes on, or `None` when it is held.
fn event_through(stream: &mut Stream, host: &mut CallHost, n: u32) -> Option<Vec<u8>> {
    let bytes = event(n);
    match stream.on_response_body(host, &bytes, false) {
        BodyAction::Continue => Some(bytes),
        BodyAction::Replace(out) => Some(out),
        BodyAction::Pause => None,
    }
}

/// A standing stream opened with the opaque token whose first event past the cache TTL (30 s)
/// is held while the IdP is asked again.
fn held_past_the_ttl(config: &Rc<Config>) -> (Stream, CallHost) {
    let (mut stream, mut host) = standing_stream(config, OPAQUE);
    host.inner.now_ms += 31_000;
    assert_eq!(event_through(&mut stream, &mut host, 2), None, "held");
    (stream, host)
}

#[test]
fn a_standing_stream_goes_on_while_the_idp_still_vouches_for_its_token() {
    let config = config("opaque");
    let (mut stream, mut host) = standing_stream(&config, OPAQUE);
    let calls = host.http_calls.len();
    // Within the cache TTL (30 s) nobody is asked.
    host.inner.now_ms += 29_000;
    assert_eq!(event_through(&mut stream, &mut host, 2), Some(event(2)));
    assert_eq!(host.http_calls.len(), calls);
    // Past it, the next events are held while the IdP is asked again, as a new request would.
    host.inner.now_ms += 2_000;
    assert_eq!(event_through(&mut stream, &mut host, 3), None);
    assert_eq!(host.http_calls.len(), calls + 1, "one introspection call");
    assert!(stream.waiting().is_some());
    assert_eq!(event_through(&mut stream, &mut host, 4), None, "held too");
    assert_eq!(host.http_calls.len(), calls + 1, "no second call");
    assert_eq!(stream.take_due_answer(), None);
    // Active: the held events are due, checked as one chunk, and go on.
    assert_eq!(
        idp_says(&config, &mut host, &mut stream, &active(json!({}))),
        Action::Continue
    );
    assert!(stream.waiting().is_none());
    assert_eq!(stream.take_due_answer(), Some(false));
    let held = [event(3), event(4)].concat();
    assert_eq!(
        match stream.on_response_body(&mut host, &held, false) {
            BodyAction::Continue => held.clone(),
            BodyAction::Replace(out) => out,
            BodyAction::Pause => panic!("held again"),
        },
        held
    );
    assert_eq!(host.inner.resets, 0);
    assert_eq!(event_through(&mut stream, &mut host, 5), Some(event(5)));
}

#[test]
fn a_standing_stream_is_cut_once_the_idp_says_its_token_is_not_active() {
    for (status, body, detail) in [
        (Some(200), br#"{"active":false}"#.to_vec(), "not active"),
        (Some(200), active(json!({"exp": NOW - 600})), "expired"),
        (Some(503), Vec::new(), "not available"),
    ] {
        let config = config("opaque");
        let (mut stream, mut host) = held_past_the_ttl(&config);
        assert_eq!(
            answer(&config, &mut host, &mut stream, status, &body),
            Action::Pause,
            "{detail}"
        );
        assert_eq!(stream.take_due_answer(), None, "{detail}");
        assert_eq!(host.inner.resets, 1, "the stream is cut: {detail}");
        let record = host.inner.record();
        assert_eq!(record["decision"], "error");
        assert_eq!(record["reason"], "token_ended_mid_stream");
        let said = record["detail"].as_str().unwrap_or_default();
        assert!(said.contains(detail), "{said}");
        assert!(!said.contains(OPAQUE));
    }
}

#[test]
fn a_standing_stream_whose_idp_does_not_answer_in_time_is_cut() {
    let config = config("opaque");
    let (mut stream, mut host) = held_past_the_ttl(&config);
    let wait = stream.waiting().unwrap();
    // Resumed before the deadline with the call still out: held still.
    assert_eq!(stream.resume(&mut host), Action::Pause);
    assert_eq!(stream.waiting(), Some(wait));
    host.inner.now_ms = wait.deadline_ms;
    assert_eq!(stream.resume(&mut host), Action::Pause);
    assert!(stream.waiting().is_none());
    assert_eq!(host.inner.resets, 1);
    assert_eq!(host.inner.record()["reason"], "token_ended_mid_stream");
}

#[test]
fn trailers_wait_with_the_held_events_and_the_end_is_kept() {
    let config = config("opaque");
    let (mut stream, mut host) = held_past_the_ttl(&config);
    assert_eq!(stream.on_response_trailers(&mut host), BodyAction::Pause);
    idp_says(&config, &mut host, &mut stream, &active(json!({})));
    assert_eq!(
        stream.take_due_answer(),
        Some(true),
        "the answer's end came"
    );
}

#[test]
fn a_stream_opened_with_a_verified_jwt_asks_no_idp_unless_always() {
    let mut claims = claims_for("alice", &["sales"], "");
    claims["iat"] = json!(NOW);
    let jwt = sign(Signer::Es256, &claims);
    let (mut stream, mut host) = standing_stream(&config("opaque"), &jwt);
    host.inner.now_ms += 3_000_000;
    assert_eq!(event_through(&mut stream, &mut host, 2), Some(event(2)));
    assert!(host.http_calls.is_empty());
    // `introspect: always`: the JWT is vouched for by the IdP too, and asked about again.
    let config = config("always");
    let (mut stream, mut host) = standing_stream(&config, &jwt);
    assert_eq!(host.http_calls.len(), 1);
    host.inner.now_ms += 31_000;
    assert_eq!(event_through(&mut stream, &mut host, 2), None);
    assert_eq!(host.http_calls.len(), 2);
    idp_says(&config, &mut host, &mut stream, br#"{"active":false}"#);
    assert_eq!(host.inner.resets, 1);
}

/// A standing stream past the cache TTL (30 s) with no event: the IdP is asked between events.
fn idle_past_the_ttl(config: &Rc<Config>) -> (Stream, CallHost) {
    let (mut stream, mut host) = standing_stream(config, OPAQUE);
    assert!(stream.is_standing());
    let calls = host.http_calls.len();
    // Within the TTL nobody is asked.
    host.inner.now_ms += 29_000;
    assert_eq!(stream.check_idle(&mut host), Idle::Open);
    assert_eq!(host.http_calls.len(), calls);
    host.inner.now_ms += 2_000;
    assert_eq!(stream.check_idle(&mut host), Idle::Asked);
    assert_eq!(host.http_calls.len(), calls + 1, "one introspection call");
    assert!(stream.waiting().is_some());
    assert_eq!(stream.check_idle(&mut host), Idle::Open, "asked once");
    assert_eq!(host.http_calls.len(), calls + 1);
    (stream, host)
}

#[test]
fn an_idle_standing_stream_is_cut_once_the_idp_says_its_token_is_not_active() {
    let config = config("opaque");
    let (mut stream, mut host) = idle_past_the_ttl(&config);
    assert_eq!(
        idp_says(&config, &mut host, &mut stream, br#"{"active":false}"#),
        Action::Pause
    );
    assert_eq!(stream.take_due_answer(), None);
    assert_eq!(host.inner.resets, 1, "cut without waiting for an event");
    let record = host.inner.record();
    assert_eq!(record["reason"], "token_ended_mid_stream");
    assert!(record["detail"].as_str().unwrap().contains("not active"));
    assert!(!stream.is_standing());
    assert_eq!(stream.check_idle(&mut host), Idle::Over);
}

#[test]
fn an_idle_standing_stream_the_idp_still_vouches_for_goes_on_and_nothing_is_resumed() {
    let config = config("opaque");
    let (mut stream, mut host) = idle_past_the_ttl(&config);
    // Nothing was held: nothing for the adapter to let go (no resume of a stream not paused).
    assert_eq!(
        idp_says(&config, &mut host, &mut stream, &active(json!({}))),
        Action::Pause
    );
    assert_eq!(stream.take_due_answer(), None);
    assert!(stream.waiting().is_none());
    assert_eq!(host.inner.resets, 0);
    let calls = host.http_calls.len();
    assert_eq!(event_through(&mut stream, &mut host, 2), Some(event(2)));
    assert_eq!(stream.check_idle(&mut host), Idle::Open);
    assert_eq!(
        host.http_calls.len(),
        calls,
        "the new answer holds for the TTL"
    );
}

#[test]
fn an_event_that_comes_while_an_idle_stream_is_asked_about_is_held_until_the_answer() {
    let config = config("opaque");
    let (mut stream, mut host) = idle_past_the_ttl(&config);
    assert_eq!(event_through(&mut stream, &mut host, 2), None, "held");
    assert_eq!(
        idp_says(&config, &mut host, &mut stream, &active(json!({}))),
        Action::Continue
    );
    assert_eq!(stream.take_due_answer(), Some(false));
    // Trailers while asked: held with the end kept.
    let config = self::config("opaque");
    let (mut stream, mut host) = idle_past_the_ttl(&config);
    assert_eq!(stream.on_response_trailers(&mut host), BodyAction::Pause);
    idp_says(&config, &mut host, &mut stream, &active(json!({})));
    assert_eq!(stream.take_due_answer(), Some(true));
}

#[test]
fn an_idle_standing_stream_ends_when_its_jwt_expires() {
    let mut claims = claims_for("alice", &["sales"], "");
    claims["exp"] = json!(NOW + 60);
    let jwt = sign(Signer::Es256, &claims);
    let (mut stream, mut host) = standing_stream(&config("opaque"), &jwt);
    host.inner.now_ms += 30_000;
    assert_eq!(stream.check_idle(&mut host), Idle::Open);
    host.inner.now_ms += 600_000;
    assert_eq!(stream.check_idle(&mut host), Idle::Over);
    assert!(host.http_calls.is_empty(), "a verified JWT asks no IdP");
    assert_eq!(host.inner.resets, 1);
    let record = host.inner.record();
    assert_eq!(record["reason"], "token_ended_mid_stream");
    assert!(
        record["detail"].as_str().unwrap().contains("expired"),
        "{record}"
    );
}
