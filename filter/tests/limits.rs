//! Rate limits and budgets (`limits:`) on the request path, through the public `Stream` API
//! and an in-memory host: what a limited caller gets back, what the audit says, what is
//! counted, and how a global limit waits for the rate limit service.

mod common;

use std::rc::Rc;

use common::*;
use mcp_guard::config::Config;
use mcp_guard::flow::{Action, Stream};
use mcp_guard::host::Host;
use mcp_guard::rls;
use prost::Message as _;
use serde_json::{json, Value};

fn config_with(limits: Value, service: bool) -> Rc<Config> {
    let mut c = json!({
        "issuers": [{ "issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["ES256"], "jwks": jwks_all() }],
        "servers": [{
            "name": "mail",
            "resource": RESOURCE,
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": {
                "name": "mail", "version": "1",
                "rules": [
                    { "name": "tools", "allow": "mcp.method in [\"tools/call\", \"tools/list\"]" },
                    { "name": "no-delete", "deny": "mcp.tool.name == \"delete\"" },
                ],
                "limits": limits,
            },
        }],
        "sessions": { "key": TEST_SESSION_KEY },
    });
    if service {
        c["rate_limit_service"] = json!({ "cluster": "rls", "domain": "mcp", "timeout_ms": 100 });
    }
    Rc::new(Config::from_json(c.to_string().as_bytes(), &MapEnv::default()).expect("config"))
}

/// Each engineer: 3 send_email an hour; everyone: 5 an hour.
fn email_limits() -> Value {
    json!([
        { "name": "per-engineer", "when": "mcp.tool.name == \"send_email\"", "key": "jwt.sub", "rate": "3/hour" },
        { "name": "company", "when": "mcp.tool.name == \"send_email\"", "key": "\"acme\"", "rate": "5/hour" },
    ])
}

fn post_host(token: &str) -> MockHost {
    let auth = format!("Bearer {token}");
    MockHost::request(&[
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "mcp.example.com"),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2025-06-18"),
        ("authorization", &auth),
    ])
}

fn call(id: i64, tool: &str) -> Vec<u8> {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": { "name": tool, "arguments": {} } })
    .to_string()
    .into_bytes()
}

/// One request through the stream; the host keeps the shared data between calls.
fn send(config: &Rc<Config>, host: &mut dyn Host, body: &[u8]) -> (Stream, Action) {
    let mut stream = Stream::new(Rc::clone(config));
    assert_eq!(stream.on_request_headers(host, false), Action::Pause);
    let action = stream.on_request_body(host, body);
    (stream, action)
}

/// Sends `body` as `sub` on a fresh host sharing `shared` and `now_ms`.
fn as_user(config: &Rc<Config>, shared: &Shared, now_ms: u64, sub: &str, body: &[u8]) -> MockHost {
    let mut host = post_host(&token_for(sub, &["eng"], "mcp"));
    host.shared = shared.clone();
    host.now_ms = now_ms;
    let (mut stream, _) = send(config, &mut host, body);
    stream.on_log(&mut host); // the exchange ends here: its record is written
    host
}

#[test]
fn a_spent_budget_answers_200_with_a_jsonrpc_error_and_retry_after() {
    let config = config_with(email_limits(), false);
    let shared = Shared::default();
    let t0 = NOW as u64 * 1000;
    for i in 0..3 {
        let host = as_user(&config, &shared, t0, "alice", &call(i, "send_email"));
        assert!(host.replies.is_empty(), "call {i} is forwarded");
        let r = host.record();
        assert_eq!(r["decision"], "allow");
        assert_eq!(r["limit_remaining"], json!(2 - i));
    }
    let host = as_user(&config, &shared, t0, "alice", &call(9, "send_email"));
    let reply = host.reply();
    assert_eq!(reply.status, 200);
    assert!(reply
        .headers
        .contains(&("retry-after".into(), "1200".into())));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["id"], 9);
    assert_eq!(body["error"]["code"], -31429);
    assert_eq!(body["error"]["data"]["limit"], "per-engineer");
    assert_eq!(body["error"]["data"]["retry_after_ms"], 1_200_000);
    let r = host.record();
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["rule"], "limit:per-engineer");
    assert_eq!(r["limit_remaining"], 0);
    assert_eq!(
        host.counter("mcp_guard.limits.name=per-engineer.outcome=limited"),
        1
    );
    assert_eq!(host.counter("mcp_guard.denials.rule=limit_per-engineer"), 1);

    // Other tools are not counted; bob has his own budget, until the company's runs out.
    let host = as_user(&config, &shared, t0, "alice", &call(10, "search"));
    assert!(host.replies.is_empty());
    assert_eq!(host.record()["limit_remaining"], Value::Null);
    for i in 0..2 {
        let host = as_user(&config, &shared, t0, "bob", &call(i, "send_email"));
        assert!(host.replies.is_empty());
    }
    let host = as_user(&config, &shared, t0, "bob", &call(3, "send_email"));
    assert_eq!(host.record()["rule"], "limit:company");

    // 20 minutes later alice has one token again (3/hour), but the company none yet: 12 min.
    let host = as_user(
        &config,
        &shared,
        t0 + 1_200_000,
        "alice",
        &call(11, "send_email"),
    );
    assert!(host.replies.is_empty(), "refilled");
}

#[test]
fn denied_messages_are_not_counted() {
    let limits = json!([{ "name": "all", "key": "jwt.sub", "rate": "1/minute" }]);
    let config = config_with(limits, false);
    let shared = Shared::default();
    let t0 = NOW as u64 * 1000;
    for i in 0..3 {
        let host = as_user(&config, &shared, t0, "alice", &call(i, "delete"));
        assert_eq!(host.record()["rule"], "no-delete");
    }
    let host = as_user(&config, &shared, t0, "alice", &call(5, "search"));
    assert!(host.replies.is_empty(), "the denials spent nothing");
}

#[test]
fn a_key_reading_a_missing_claim_fails_closed() {
    let limits = json!([{ "name": "per-team", "key": "jwt.team", "rate": "10/minute" }]);
    let config = config_with(limits, false);
    let host = as_user(
        &config,
        &Shared::default(),
        NOW as u64 * 1000,
        "alice",
        &call(1, "search"),
    );
    let reply = host.reply();
    assert_eq!(reply.status, 200);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], -31429);
    let r = host.record();
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["rule"], "limit:per-team");
    assert_eq!(r["reason"], "limit_error", "{r}");
    assert!(
        r["detail"].as_str().unwrap().contains("failing closed"),
        "{r}"
    );
    assert_eq!(
        host.counter("mcp_guard.limits.name=per-team.outcome=error"),
        1
    );
}

#[test]
fn cost_is_a_cel_int() {
    let limits = json!([{ "name": "recipients", "key": "jwt.sub", "rate": "10/hour",
                          "cost": "mcp.tool.name == \"send_email\" ? 4 : 0" }]);
    let config = config_with(limits, false);
    let shared = Shared::default();
    let t0 = NOW as u64 * 1000;
    for (i, expect) in [(0, json!(6)), (1, json!(2))] {
        let host = as_user(&config, &shared, t0, "alice", &call(i, "send_email"));
        assert_eq!(host.record()["limit_remaining"], expect);
    }
    let host = as_user(&config, &shared, t0, "alice", &call(2, "search"));
    assert!(host.replies.is_empty(), "cost 0 is not counted");
    let host = as_user(&config, &shared, t0, "alice", &call(3, "send_email"));
    assert_eq!(host.record()["rule"], "limit:recipients");
}

fn global_limits(failure_mode: &str) -> Value {
    json!([{ "name": "company", "key": "\"acme\"", "rate": "5000/hour", "scope": "global",
             "failure_mode": failure_mode, "cost": 2 }])
}

fn grpc_host(token: Option<u32>) -> CallHost {
    CallHost::new(post_host(&token_for("alice", &["eng"], "mcp")), token)
}

#[test]
fn a_global_limit_asks_the_service_and_waits() {
    let config = config_with(global_limits("closed"), true);
    let mut host = grpc_host(Some(42));
    let (mut stream, action) = send(&config, &mut host, &call(1, "search"));
    assert_eq!(action, Action::Pause);
    assert!(stream.waiting_for_limits());
    assert!(host.inner.replies.is_empty());
    let (cluster, service, method, msg, timeout) = host.calls[0].clone();
    assert_eq!(
        (cluster.as_str(), service.as_str(), method.as_str(), timeout),
        (
            "rls",
            "envoy.service.ratelimit.v3.RateLimitService",
            "ShouldRateLimit",
            100
        )
    );
    let request = rls::RateLimitRequest::decode(msg.as_slice()).unwrap();
    assert_eq!(request.domain, "mcp");
    let entries: Vec<(&str, &str)> = request.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries, vec![("mcp_limit", "company"), ("mcp_key", "acme")]);
    assert_eq!(
        request.descriptors[0].hits_addend.as_ref().unwrap().value,
        2
    );
    // Another token's answer is not ours.
    assert_eq!(
        stream.on_grpc_answer(&mut host, 7, 0, Some(&rls_answer(1, 9))),
        Action::Pause
    );
    assert_eq!(
        stream.on_grpc_answer(&mut host, 42, 0, Some(&rls_answer(1, 9))),
        Action::Continue
    );
    stream.on_log(&mut host);
    let r = host.inner.record();
    assert_eq!(
        (r["decision"].as_str(), r["limit_remaining"].as_u64()),
        (Some("allow"), Some(9))
    );

    let mut host = grpc_host(Some(43));
    let (mut stream, _) = send(&config, &mut host, &call(2, "search"));
    assert_eq!(
        stream.on_grpc_answer(&mut host, 43, 0, Some(&rls_answer(2, 0))),
        Action::Pause
    );
    let reply = host.inner.reply();
    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains(&("retry-after".into(), "30".into())));
    assert_eq!(host.inner.record()["rule"], "limit:company");
}

#[test]
fn an_unavailable_service_applies_each_limits_failure_mode() {
    // closed: refused, audited as an error; open: forwarded, audited with the reason.
    let config = config_with(global_limits("closed"), true);
    let mut host = grpc_host(Some(1));
    let (mut stream, _) = send(&config, &mut host, &call(1, "search"));
    assert_eq!(stream.on_grpc_answer(&mut host, 1, 14, None), Action::Pause);
    assert_eq!(host.inner.reply().status, 200);
    let r = host.inner.record();
    assert_eq!(
        (r["decision"].as_str(), r["rule"].as_str()),
        (Some("error"), Some("limit:company"))
    );
    assert_eq!(
        host.inner
            .counter("mcp_guard.limits.name=company.outcome=failure_closed"),
        1
    );

    let config = config_with(global_limits("open"), true);
    let mut host = grpc_host(None); // cannot even be sent
    let (mut stream, action) = send(&config, &mut host, &call(1, "search"));
    assert_eq!(action, Action::Continue);
    stream.on_log(&mut host);
    let r = host.inner.record();
    assert_eq!(r["decision"], "allow");
    assert!(r["reason"]
        .as_str()
        .unwrap()
        .starts_with("rate_limit_service_unavailable"));
    assert_eq!(
        host.inner
            .counter("mcp_guard.limits.name=company.outcome=failure_open"),
        1
    );
}

#[test]
fn limits_are_checked_at_load_naming_the_field() {
    let cases = [
        (
            json!([{ "name": "a", "key": "jwt.sub", "rate": "10/fortnight" }]),
            "limits[0].rate",
        ),
        (
            json!([{ "name": "a", "key": "size(jwt.sub)", "rate": "1/second" }]),
            "limits[0].key",
        ),
        (
            json!([{ "name": "a", "key": "jwt.sub", "rate": "1/second", "cost": "\"x\"" }]),
            "limits[0].cost",
        ),
        (
            json!([{ "name": "a", "key": "jwt.sub", "rate": "1/second", "when": "mcp.tool.name" }]),
            "limits[0].when",
        ),
        (
            json!([{ "name": "a", "key": "jwt.sub", "rate": "1/second", "failure_mode": "open" }]),
            "limits[0].failure_mode",
        ),
        (
            json!([{ "name": "a", "key": "jwt.sub", "rate": "1/second", "scope": "global", "burst": 3 }]),
            "limits[0].burst",
        ),
        (
            json!([{ "name": "a b", "key": "jwt.sub", "rate": "1/second" }]),
            "limits[0].name",
        ),
        (
            // The descriptor DPoP proofs are spent under (`dpop.replay: fleet`).
            json!([{ "name": "dpop_proof", "key": "jwt.sub", "rate": "1/second", "scope": "global" }]),
            "limits[0].name",
        ),
        (
            json!([{ "name": "a", "key": "jwt.sub", "rate": "1/second", "scope": "global" }]),
            "limits[0].scope",
        ),
        (
            json!([{ "name": "a", "key": "jwt.sub", "rate": "1/second", "colour": "red" }]),
            "limits[0].colour",
        ),
    ];
    for (limits, field) in cases {
        let c = json!({
            "issuers": [{ "issuer": ISSUER, "audiences": [RESOURCE], "jwks": jwks_all() }],
            "servers": [{ "name": "m", "resource": RESOURCE,
                "credential": { "header": "x-api-key", "value": SERVICE_KEY },
                "policy": { "name": "p", "rules": [], "limits": limits } }],
        });
        let err = Config::from_json(c.to_string().as_bytes(), &MapEnv::default())
            .expect_err(field)
            .to_string();
        assert!(
            err.starts_with(&format!("servers[0].policy.{field}")),
            "{field}: {err}"
        );
    }
}

#[test]
fn envoy_answering_while_the_service_is_awaited_is_audited_once() {
    let config = config_with(global_limits("closed"), true);
    let mut host = grpc_host(Some(5));
    let (mut stream, _) = send(&config, &mut host, &call(1, "search"));
    assert_eq!(
        stream.on_response_headers(&mut host, Some(504), true),
        Action::Continue
    );
    let r = host.inner.record();
    assert_eq!(
        (r["decision"].as_str(), r["reason"].as_str()),
        (Some("error"), Some("answered_by_envoy"))
    );
    // The late answer changes nothing.
    assert_eq!(
        stream.on_grpc_answer(&mut host, 5, 0, Some(&rls_answer(1, 9))),
        Action::Pause
    );
    assert_eq!(host.inner.audits.len(), 1);
}

#[test]
fn a_caller_gone_while_the_service_is_awaited_leaves_a_record() {
    // The service may have counted the message: who spent the budget is on record.
    let config = config_with(global_limits("closed"), true);
    let mut host = grpc_host(Some(6));
    let (mut stream, action) = send(&config, &mut host, &call(1, "search"));
    assert_eq!(action, Action::Pause);
    assert!(host.inner.audits.is_empty());
    stream.on_log(&mut host);
    let r = host.inner.record();
    assert_eq!(r["decision"], "error");
    assert_eq!(r["reason"], "caller_went_away");
    assert_eq!(r["tool"], "search");
    assert!(r["detail"]
        .as_str()
        .is_some_and(|d| d.contains("rate limit service")));
    assert_eq!(host.inner.audits.len(), 1);
}

/// Two global limits (as policies/email.yaml counts each send_email twice), `cost` 3.
fn two_global_limits(failure_mode: &str) -> Value {
    json!([
        { "name": "per-engineer", "key": "jwt.sub", "rate": "100/hour", "scope": "global",
          "failure_mode": failure_mode, "cost": 3 },
        { "name": "company", "key": "\"acme\"", "rate": "5000/hour", "scope": "global",
          "failure_mode": failure_mode, "cost": 3 },
    ])
}

fn answer_of(overall: i32, statuses: Vec<rls::DescriptorStatus>) -> Vec<u8> {
    rls::RateLimitResponse {
        overall_code: overall,
        statuses,
    }
    .encode_to_vec()
}

fn status_of(code: i32, has_limit: bool) -> rls::DescriptorStatus {
    rls::DescriptorStatus {
        code,
        current_limit: has_limit.then_some(rls::CurrentLimit {
            requests_per_unit: 10,
            unit: 3,
        }),
        limit_remaining: 4,
        duration_until_reset: None,
    }
}

/// Each global limit is a request of its own, with one descriptor and its cost in the
/// descriptor's `hits_addend` and the request's: limitador-server counts the request's (its
/// descriptor has no such field) and names descriptors by position (`descriptors[0]`), so a
/// second limit in the same request would never be counted there. They are asked one after
/// the other, in policy order: the service counts what it finds within a limit and cannot give
/// it back, so a message one limit refuses is not counted against the next.
#[test]
fn each_global_limit_is_its_own_request_with_its_cost() {
    let asked = |host: &CallHost| -> Vec<(String, u32, u64, usize)> {
        host.calls
            .iter()
            .map(|(_, _, _, msg, _)| {
                let r = rls::RateLimitRequest::decode(msg.as_slice()).unwrap();
                let d = &r.descriptors[0];
                (
                    d.entries[0].value.clone(),
                    r.hits_addend,
                    d.hits_addend.as_ref().map_or(0, |h| h.value),
                    r.descriptors.len(),
                )
            })
            .collect()
    };
    let config = config_with(two_global_limits("closed"), true);
    let mut host = grpc_host(Some(10));
    let (mut stream, action) = send(&config, &mut host, &call(1, "send_email"));
    assert_eq!(action, Action::Pause);
    assert_eq!(asked(&host), vec![("per-engineer".to_string(), 3, 3, 1)]);
    // Within the first: the second is asked; over it, the message is refused.
    let ok = answer_of(rls::OK, vec![status_of(rls::OK, true)]);
    assert_eq!(
        stream.on_grpc_answer(&mut host, 10, 0, Some(&ok)),
        Action::Pause
    );
    assert!(host.inner.replies.is_empty());
    assert_eq!(
        asked(&host),
        vec![
            ("per-engineer".to_string(), 3, 3, 1),
            ("company".to_string(), 3, 3, 1)
        ]
    );
    let over = answer_of(rls::OVER_LIMIT, vec![status_of(rls::OVER_LIMIT, true)]);
    assert_eq!(
        stream.on_grpc_answer(&mut host, 11, 0, Some(&over)),
        Action::Pause
    );
    assert_eq!(host.inner.reply().status, 200);
    assert_eq!(host.inner.record()["rule"], "limit:company");

    // Over the caller's own limit: refused at once, and the shared budget is never asked
    // (so never counted).
    let mut host = grpc_host(Some(30));
    let (mut stream, _) = send(&config, &mut host, &call(3, "send_email"));
    assert_eq!(
        stream.on_grpc_answer(&mut host, 30, 0, Some(&over)),
        Action::Pause
    );
    assert_eq!(host.inner.record()["rule"], "limit:per-engineer");
    assert_eq!(asked(&host).len(), 1, "company not asked");

    // Both within their budgets: forwarded once both answered; an answer for a call not made
    // (yet) changes nothing.
    let mut host = grpc_host(Some(20));
    let (mut stream, _) = send(&config, &mut host, &call(2, "send_email"));
    assert_eq!(
        stream.on_grpc_answer(&mut host, 21, 0, Some(&ok)),
        Action::Pause
    );
    assert_eq!(
        stream.on_grpc_answer(&mut host, 20, 0, Some(&ok)),
        Action::Pause
    );
    assert_eq!(
        stream.on_grpc_answer(&mut host, 21, 0, Some(&ok)),
        Action::Continue
    );
    stream.on_log(&mut host);
    assert_eq!(host.inner.record()["decision"], "allow");
}

/// One limit's call failing applies that limit's failure mode; the others' verdicts stand.
#[test]
fn a_failed_call_applies_its_own_limits_failure_mode() {
    let ok = answer_of(rls::OK, vec![status_of(rls::OK, true)]);
    let config = config_with(two_global_limits("open"), true);
    let mut host = grpc_host(Some(30));
    let (mut stream, _) = send(&config, &mut host, &call(1, "send_email"));
    assert_eq!(
        stream.on_grpc_answer(&mut host, 30, 14, None),
        Action::Pause
    );
    assert_eq!(
        stream.on_grpc_answer(&mut host, 31, 0, Some(&ok)),
        Action::Continue
    );
    stream.on_log(&mut host);
    let r = host.inner.record();
    assert_eq!(r["decision"], "allow");
    assert!(
        r["detail"].as_str().unwrap().contains("\"per-engineer\""),
        "{r}"
    );
    assert_eq!(
        host.inner
            .counter("mcp_guard.limits.name=per-engineer.outcome=failure_open"),
        1
    );
    assert_eq!(
        host.inner
            .counter("mcp_guard.limits.name=company.outcome=allowed"),
        1
    );
}

/// Answers that do not show the message counted within its limit: an overall OVER_LIMIT
/// whose status is not (Envoy's own rate limit filter acts on the overall code), and a status
/// without `current_limit` (no limit of the service matched the descriptor: it counted
/// nothing) — the second applies the limit's failure mode (`closed` here).
#[test]
fn answers_that_do_not_show_the_message_counted_do_not_pass_it() {
    let config = config_with(global_limits("closed"), true);
    for (answer, rule_reason) in [
        (
            answer_of(rls::OVER_LIMIT, vec![status_of(0, true)]),
            "exhausted",
        ),
        (
            answer_of(rls::OK, vec![status_of(rls::OK, false)]),
            "has no limit for \"company\"",
        ),
    ] {
        let mut host = grpc_host(Some(1));
        let (mut stream, _) = send(&config, &mut host, &call(1, "search"));
        assert_eq!(
            stream.on_grpc_answer(&mut host, 1, 0, Some(&answer)),
            Action::Pause
        );
        assert_eq!(host.inner.reply().status, 200);
        let r = host.inner.record();
        assert_eq!(r["rule"], "limit:company", "{r}");
        let said = format!(
            "{} {}",
            r["reason"].as_str().unwrap_or_default(),
            r["detail"].as_str().unwrap_or_default()
        );
        assert!(said.contains(rule_reason), "{r}");
    }
}

/// A local limit keyed on a value the caller chooses (`mcp.tool.arguments.to`): keys are
/// placed in slots by a hash keyed with the sealing key, so a caller cannot work out keys that
/// take another key's slots (a key may use four) and fill them, which would refuse every
/// message for that key (`limit_table_full`, fail closed). The keys below are what an
/// attacker who read the policy would compute with the plain hash.
#[test]
fn a_caller_cannot_aim_chosen_keys_at_another_keys_slots() {
    use mcp_guard::limits::{limit_id, locate};
    let limits = json!([{ "name": "per-recipient", "key": "mcp.tool.arguments.to",
                          "rate": "10/hour", "slots": 64 }]);
    let config = config_with(limits, false);
    let id = limit_id("mail", "per-recipient");
    let (_, victim) = locate(None, &id, "ceo@acme.test", 64);
    let chosen: Vec<String> = (0u64..)
        .map(|i| format!("x{i}@evil.test"))
        .filter(|k| locate(None, &id, k, 64).1 == victim)
        .take(8)
        .collect();
    let shared = Shared::default();
    let now = 1_700_000_000_000;
    let send_to = |sub: &str, to: &str| {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": { "name": "send_email", "arguments": { "to": to } } })
        .to_string();
        let host = as_user(&config, &shared, now, sub, body.as_bytes());
        host.replies.is_empty().then_some(()).ok_or(host.record())
    };
    for key in &chosen {
        send_to("mallory", key).expect("mallory's own keys are within their limit");
    }
    send_to("alice", "ceo@acme.test").expect("alice's key keeps its own slots");
}
