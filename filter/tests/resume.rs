//! Resuming event streams (`Last-Event-ID`): the event ids a client sees are handles sealed for
//! it and its server, and a stream resumes only from the caller's own (see `resume.rs`).

mod common;

use std::rc::Rc;

use common::*;
use mcp_guard::config::Config;
use mcp_guard::flow::{Action, BodyAction, Stream};
use serde_json::{json, Value};

const SESSION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn config(sessions: Value) -> Rc<Config> {
    let config = json!({
        "issuers": [{ "issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["ES256"],
                      "jwks": jwks_all() }],
        "servers": [{
            "name": "crm",
            "path": "/mcp",
            "resource": RESOURCE,
            "audiences": [RESOURCE],
            "authorization_servers": [ISSUER],
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": { "name": "p", "version": "1",
                        "rules": [{ "name": "all", "allow": "true" }] },
        }],
        "sessions": sessions,
    });
    Rc::new(Config::from_json(config.to_string().as_bytes(), &MapEnv::default()).expect("config"))
}

fn sealed() -> Rc<Config> {
    config(json!({ "key": SESSION_KEY }))
}

/// Alice's tool call answered on an event stream whose events carry these `id:` lines; what
/// reaches her.
fn answered_with_ids(config: &Rc<Config>, events: &[u8]) -> String {
    let auth = format!("Bearer {}", token_for("alice", &[], ""));
    let mut host = MockHost::request(&[
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "mcp.example.com"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-11-25"),
        ("authorization", &auth),
    ]);
    let mut stream = Stream::new(Rc::clone(config));
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{}}}"#;
    assert_eq!(stream.on_request_body(&mut host, call), Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Continue
    );
    let out = match stream.on_response_body(&mut host, events, true) {
        BodyAction::Replace(b) => b,
        BodyAction::Continue => events.to_vec(),
        BodyAction::Pause => panic!("the stream was cut"),
    };
    String::from_utf8(out).expect("UTF-8")
}

/// The `id:` values of an event stream.
fn ids(stream: &str) -> Vec<&str> {
    stream
        .lines()
        .filter_map(|l| {
            l.strip_prefix("id: ")
                .or_else(|| (l == "id:").then_some(""))
        })
        .collect()
}

/// `who` resumes with `last_event_id`: what the filter did and what the upstream would get.
fn resume(config: &Rc<Config>, who: &str, last_event_id: &str) -> (Action, MockHost) {
    let auth = format!("Bearer {}", token_for(who, &[], ""));
    let mut host = MockHost::request(&[
        (":method", "GET"),
        (":path", "/mcp"),
        (":authority", "mcp.example.com"),
        ("accept", "text/event-stream"),
        ("mcp-protocol-version", "2025-11-25"),
        ("authorization", &auth),
        ("last-event-id", last_event_id),
    ]);
    let mut stream = Stream::new(Rc::clone(config));
    let action = stream.on_request_headers(&mut host, true);
    (action, host)
}

#[test]
fn a_stream_resumes_from_the_callers_own_event_ids_only() {
    let config = sealed();
    let events = b"id: stream-7f3a_1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\nid: stream-7f3a_2\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}\n\n";
    let out = answered_with_ids(&config, events);
    let handles = ids(&out);
    assert_eq!(handles.len(), 2, "{out}");
    assert!(
        !out.contains("stream-7f3a"),
        "an upstream event id went out: {out}"
    );
    assert!(out.contains("\"result\""), "{out}");

    // Alice resumes from her last event: the upstream gets its own id.
    let (action, host) = resume(&config, "alice", handles[1]);
    assert_eq!(action, Action::Continue);
    assert_eq!(host.req_header("last-event-id"), Some("stream-7f3a_2"));

    // Bob presents Alice's handle, or the upstream's raw id: refused, nothing forwarded.
    for (presented, reason) in [
        (handles[1], "event_id_of_another_caller"),
        ("stream-7f3a_2", "event_id_not_sealed"),
    ] {
        let (action, host) = resume(&config, "bob", presented);
        assert_eq!(action, Action::Pause);
        assert_eq!(host.reply().status, 400);
        assert_eq!(host.audit()[0]["reason"], reason);
    }
}

#[test]
fn an_empty_id_stays_empty_and_events_without_ids_are_untouched() {
    let config = sealed();
    let events = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\nid:\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}\n\n";
    let out = answered_with_ids(&config, events);
    assert_eq!(ids(&out), vec![""], "{out}");
    assert!(out.starts_with("data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\""));
}

#[test]
fn without_a_sealing_key_no_stream_is_resumed() {
    let config = config(json!({ "stateless": true }));
    let (action, host) = resume(&config, "alice", "stream-7f3a_2");
    assert_eq!(action, Action::Continue);
    assert_eq!(host.req_header("last-event-id"), None);
}
