//! Caller-bound task ids: what the client sees of the upstream's task ids (sealed handles only),
//! what the upstream receives (its own ids), and who may use a handle (its caller only); the
//! same for the event ids a stream is resumed from (`resume.rs`).

mod common;

use std::rc::Rc;

use common::*;
use mcp_guard::config::Config;
use mcp_guard::flow::{Action, BodyAction, Stream};
use mcp_guard::host::Host;
use mcp_guard::seal::Keys;
use mcp_guard::tasks::{self, Exchange, Sealer};
use serde_json::{json, Value};

const KEY: [u8; 32] = [3; 32];
const NEXT: [u8; 32] = [4; 32];

fn keys() -> Keys {
    Keys::new(&KEY, None)
}

fn sealer<'a>(keys: &'a Keys, caller: &'a str) -> Sealer<'a> {
    Sealer {
        keys,
        caller: Some(mcp_guard::session::Caller {
            issuer: "https://idp",
            id: caller,
            by_client: false,
        }),
        server: "crm",
        exchange: Exchange {
            method: "tools/call",
            target: "confirm_delete",
        },
    }
}

fn seal_json(message: &Value, sealer: &Sealer) -> (Value, usize) {
    let bytes = message.to_string();
    match tasks::seal_answer(bytes.as_bytes(), sealer) {
        Ok(Some((out, hidden))) => (serde_json::from_slice(&out).expect("JSON"), hidden),
        Ok(None) => (message.clone(), 0),
        Err(e) => panic!("refused: {e}"),
    }
}

fn opened(body: &Value, sealer: &Sealer) -> Result<Option<(Value, Option<String>)>, String> {
    tasks::open_request(body.to_string().as_bytes(), sealer)
        .map(|o| o.map(|o| (serde_json::from_slice(&o.body).expect("JSON"), o.task_id)))
}

fn get(handle: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 9, "method": "tasks/get", "params": {"taskId": handle}})
}

#[test]
fn every_task_id_an_answer_carries_goes_out_sealed_for_its_caller() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    let related = |id: &str| json!({ "io.modelcontextprotocol/related-task": { "taskId": id } });
    let answers = [
        // 2026-07-28 CreateTaskResult, and a tasks/get result with input requests and a result.
        json!({"jsonrpc": "2.0", "id": 1, "result": {"resultType": "task", "taskId": "t-1", "status": "working"}}),
        json!({"jsonrpc": "2.0", "id": 2, "result": {
            "resultType": "complete", "taskId": "t-1", "status": "input_required",
            "inputRequests": {"confirm": {"method": "elicitation/create", "params": {"message": "sure?", "_meta": related("t-1")}}},
            "result": {"content": [], "_meta": related("t-1")}}}),
        // 2025-11-25 CreateTaskResult, tasks/result, a status notification, a server request.
        json!({"jsonrpc": "2.0", "id": 3, "result": {"task": {"taskId": "t-1", "status": "working"}, "_meta": related("t-1")}}),
        json!({"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": {"taskId": "t-1", "status": "completed"}}),
        json!({"jsonrpc": "2.0", "method": "notifications/tasks", "params": {"taskId": "t-1", "status": "completed"}}),
        json!({"jsonrpc": "2.0", "id": 7, "method": "elicitation/create", "params": {"message": "?", "_meta": related("t-1")}}),
    ];
    for answer in answers {
        let (out, hidden) = seal_json(&answer, &alice);
        assert_eq!(hidden, 0);
        let text = out.to_string();
        assert!(!text.contains("\"t-1\""), "an upstream id left: {text}");
        assert!(text.contains("mg1."), "{text}");
        // Every handle opens for alice as the upstream's id, and for nobody else.
        let bob = sealer(&keys, "bob");
        let handles: Vec<&str> = text.split('"').filter(|s| s.starts_with("mg1.")).collect();
        assert!(!handles.is_empty());
        for h in handles {
            assert_eq!(alice.open(h), Ok("t-1".to_string()));
            assert_eq!(
                bob.open(h),
                Err("task_not_found: task_of_another_caller".to_string())
            );
        }
    }
}

#[test]
fn a_tools_own_output_and_client_task_ids_of_server_requests_are_left_alone() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    for untouched in [
        json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "taskId"}], "structuredContent": {"taskId": "jira-1"}}}),
        json!({"jsonrpc": "2.0", "id": 5, "method": "tasks/get", "params": {"taskId": "client-side-1"}}),
        json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"taskId": "x", "progressToken": 1, "progress": 1}}),
    ] {
        let bytes = untouched.to_string();
        assert_eq!(
            tasks::seal_answer(bytes.as_bytes(), &alice),
            Ok(None),
            "{untouched}"
        );
    }
}

#[test]
fn a_task_listing_shows_no_task_it_cannot_prove_is_the_callers() {
    let keys = keys();
    let listing = json!({"jsonrpc": "2.0", "id": 4, "result": {
        "tasks": [{"taskId": "t-1", "status": "working"}, {"taskId": "t-2", "status": "completed"}],
        "nextCursor": "c"}});
    let (out, hidden) = seal_json(&listing, &sealer(&keys, "alice"));
    assert_eq!(hidden, 2);
    assert_eq!(out["result"]["tasks"], json!([]));
    assert_eq!(out["result"]["nextCursor"], "c");
    assert!(!out.to_string().contains("t-1"));
}

#[test]
fn batches_escaped_names_and_events_are_sealed_too() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    let batch = br#"[{"jsonrpc":"2.0","id":1,"result":{"task\u0049d":"t-1"}},{"jsonrpc":"2.0","id":2,"result":{}}]"#;
    let (out, _) = tasks::seal_answer(batch, &alice)
        .expect("sealed")
        .expect("changed");
    let out: Value = serde_json::from_slice(&out).expect("JSON");
    let handle = out[0]["result"]["taskId"].as_str().expect("a handle");
    assert_eq!(alice.open(handle), Ok("t-1".into()));
    assert_eq!(out[1], json!({"jsonrpc": "2.0", "id": 2, "result": {}}));
}

#[test]
fn answers_that_could_be_read_two_ways_or_cannot_be_sealed_do_not_go_on() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    let long = "x".repeat(300);
    for bad in [
        r#"{"jsonrpc":"2.0","id":1,"result":{"taskId":"t-1","taskId":"t-2"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"result":{"taskId":7}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"result":{"taskId":""}}"#.to_string(),
        format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"taskId":"{long}"}}}}"#),
    ] {
        assert!(tasks::seal_answer(bad.as_bytes(), &alice).is_err(), "{bad}");
    }
    // A caller the token does not name gets no task id at all.
    let nobody = Sealer {
        caller: None,
        ..alice
    };
    let ok = br#"{"jsonrpc":"2.0","id":1,"result":{"taskId":"t-1"}}"#;
    assert!(tasks::seal_answer(ok, &nobody).is_err());
}

/// A member a case-insensitive decoder (Go's `encoding/json`) reads as `taskId` or `_meta`
/// carries a raw upstream id past the seal: refused in a request, and in an answer.
#[test]
fn a_spelling_some_decoders_read_as_task_id_is_refused() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    let related = |meta: &str, member: &str| {
        json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
            "name":"search","arguments":{},
            meta: {(tasks::RELATED): { member: "bobs-raw-upstream-task" }}}})
    };
    let mut spellings: Vec<Value> = [
        "TaskId",
        "TASKID",
        "taskid",
        "ta\u{17f}kId",
        "tas\u{212a}Id",
        "task\u{131}d",
    ]
    .into_iter()
    .map(|m| related("_meta", m))
    .collect();
    spellings.push(related("_Meta", "taskId"));
    for body in spellings {
        let bytes = body.to_string();
        // The strict parse has nothing to compare a lone variant with...
        assert!(
            mcp_guard::mcp::parse_message(bytes.as_bytes(), 64).is_ok(),
            "{body}"
        );
        // ...the task scan refuses it rather than find no task id.
        assert!(opened(&body, &alice).is_err(), "forwarded raw: {body}");
    }
    let answer = br#"{"jsonrpc":"2.0","id":1,"result":{"TaskId":"t-1"}}"#;
    assert!(tasks::seal_answer(answer, &alice).is_err());
}

#[test]
fn a_handle_opens_for_its_caller_only_and_raw_ids_are_refused() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    let handle = alice.seal("t-1").expect("sealed");
    let (body, id) = opened(&get(&handle), &alice)
        .expect("opened")
        .expect("changed");
    assert_eq!(body["params"]["taskId"], "t-1");
    assert_eq!(id.as_deref(), Some("t-1"));

    let refused = |body: &Value, who: &Sealer| opened(body, who).expect_err("refused");
    assert_eq!(
        refused(&get(&handle), &sealer(&keys, "bob")),
        "task_not_found: task_of_another_caller"
    );
    assert_eq!(
        refused(&get("t-1"), &alice),
        "task_not_found: task_not_sealed"
    );
    let other_server = Sealer {
        server: "billing",
        ..alice
    };
    assert_eq!(
        refused(&get(&handle), &other_server),
        "task_not_found: task_of_another_server"
    );
    let mut tampered = handle.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    assert!(refused(&get(&tampered), &alice).starts_with("task_not_found: task_"));
    // A session handle is not a task handle.
    let session = mcp_guard::session::seal(
        &keys,
        "t-1",
        mcp_guard::session::Caller {
            issuer: "https://idp",
            id: "alice",
            by_client: false,
        },
        "crm",
    )
    .expect("sealed");
    assert_eq!(
        refused(&get(&session), &alice),
        "task_not_found: task_tampered"
    );
}

#[test]
fn every_place_a_request_names_a_task_is_opened() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    let h1 = alice.seal("t-1").expect("sealed");
    let h2 = alice.seal("t-2").expect("sealed");
    let related = |id: &str| json!({ "io.modelcontextprotocol/related-task": { "taskId": id } });
    let listen = json!({"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen",
        "params": {"notifications": {"taskIds": [h1, h2]}}});
    let (body, id) = opened(&listen, &alice).expect("opened").expect("changed");
    assert_eq!(
        body["params"]["notifications"]["taskIds"],
        json!(["t-1", "t-2"])
    );
    assert_eq!(id, None);
    let answer =
        json!({"jsonrpc": "2.0", "id": 7, "result": {"action": "accept", "_meta": related(&h1)}});
    let (body, _) = opened(&answer, &alice).expect("opened").expect("changed");
    assert_eq!(body["result"]["_meta"], related("t-1"));
    let update = json!({"jsonrpc": "2.0", "id": 2, "method": "tasks/update",
        "params": {"taskId": h2, "inputResponses": {}, "_meta": related(&h2)}});
    let (body, id) = opened(&update, &alice).expect("opened").expect("changed");
    assert_eq!(body["params"]["taskId"], "t-2");
    assert_eq!(body["params"]["_meta"], related("t-2"));
    assert_eq!(id.as_deref(), Some("t-2"));
    // One foreign id among several refuses the whole message.
    let bobs = sealer(&keys, "bob").seal("t-3").expect("sealed");
    let mixed = json!({"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen",
        "params": {"notifications": {"taskIds": [h1, bobs]}}});
    assert!(opened(&mixed, &alice).is_err());
    // Nothing to open: left as it is.
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x", "arguments": {"taskId": "mine"}}});
    assert_eq!(opened(&call, &alice), Ok(None));
}

#[test]
fn handles_sealed_under_the_previous_key_still_open_during_rotation() {
    let old = keys();
    let handle = sealer(&old, "alice").seal("t-1").expect("sealed");
    let rotated = Keys::new(&NEXT, Some(&KEY));
    let alice = sealer(&rotated, "alice");
    let (body, _) = opened(&get(&handle), &alice)
        .expect("opened")
        .expect("changed");
    assert_eq!(body["params"]["taskId"], "t-1");
    let done = Keys::new(&NEXT, None);
    assert_eq!(
        opened(&get(&handle), &sealer(&done, "alice")),
        Err("task_not_found: task_key_unknown".into())
    );
}

#[test]
fn the_mcp_name_header_mirrors_the_upstream_id_in_the_header_form() {
    assert_eq!(tasks::header_value("t-1"), "t-1");
    assert_eq!(tasks::header_value("a b"), "=?base64?YSBi?=");
}

// ---- through the request path -----------------------------------------------------------

const SESSION_KEY: &str = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

fn config() -> Rc<Config> {
    config_with(json!({ "key": SESSION_KEY }))
}

fn config_with(sessions: Value) -> Rc<Config> {
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["RS256", "ES256"], "jwks": jwks_all()}],
        "servers": [{
            "name": "crm",
            "resource": RESOURCE,
            "authorization_servers": [ISSUER],
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": {"name": "p", "version": "1", "rules": [
                {"name": "tasks", "allow": "mcp.method.startsWith('tasks/') && !mcp.task.id.startsWith('forbidden')"},
                {"name": "tools", "allow": "mcp.method == 'tools/call'"},
            ]},
        }],
        "sessions": sessions,
    });
    Rc::new(Config::from_json(config.to_string().as_bytes(), &MapEnv::default()).expect("config"))
}

fn post(token: &str, extra: &[(&str, &str)], body: &Value) -> (MockHost, Stream, Action) {
    let auth = format!("Bearer {token}");
    let bytes = body.to_string();
    let length = bytes.len().to_string();
    let mut host = MockHost::request(&[
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "mcp.example.com"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-11-25"),
        ("content-length", &length),
        ("authorization", &auth),
    ]);
    for (k, v) in extra {
        host.set_request_header(k, v).unwrap();
    }
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    let action = stream.on_request_body(&mut host, bytes.as_bytes());
    (host, stream, action)
}

/// Alice's task handle for the upstream's `t-1`, as a tools/call answer gave it to her.
fn alices_handle() -> String {
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow", "arguments": {}, "task": {"ttl": 60000}}});
    let (mut host, mut stream, action) = post(&token_for("alice", &[], ""), &[], &call);
    assert_eq!(action, Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Pause
    );
    let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": "t-1", "status": "working"}}});
    let BodyAction::Replace(out) =
        stream.on_response_body(&mut host, answer.to_string().as_bytes(), true)
    else {
        panic!("the answer must be rewritten");
    };
    let out: Value = serde_json::from_slice(&out).expect("JSON");
    let handle = out["result"]["task"]["taskId"].as_str().expect("a handle");
    assert!(handle.starts_with("mg1."), "{handle}");
    handle.to_string()
}

#[test]
fn the_caller_polls_its_task_and_the_upstream_gets_its_own_id() {
    let handle = alices_handle();
    let (mut host, mut stream, action) = post(
        &token_for("alice", &[], ""),
        &[("mcp-name", &handle)],
        &get(&handle),
    );
    assert_eq!(action, Action::Continue);
    stream.on_log(&mut host);
    let forwarded: Value =
        serde_json::from_slice(host.replaced_request_body.as_deref().expect("rewritten"))
            .expect("JSON");
    assert_eq!(forwarded["params"]["taskId"], "t-1");
    assert_eq!(host.req_header("mcp-name"), Some("t-1"));
    let length = forwarded.to_string().len().to_string();
    assert_eq!(host.req_header("content-length"), Some(length.as_str()));
    let record = host.record();
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["task_id"], "t-1");
}

#[test]
fn another_caller_presenting_the_handle_is_told_the_task_does_not_exist() {
    let handle = alices_handle();
    let (host, _, action) = post(&token_for("bob", &[], ""), &[], &get(&handle));
    assert_eq!(action, Action::Pause);
    assert_eq!(host.replaced_request_body, None);
    let reply = host.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["id"], 9);
    assert_eq!(reply.json()["error"]["code"], -32602);
    assert_eq!(
        reply.json()["error"]["message"],
        "Failed to retrieve task: Task not found"
    );
    let record = host.record();
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "task_not_found");
    assert_eq!(record["detail"], "task_of_another_caller");
    // And an upstream id sent raw is not forwarded either.
    let (host, _, action) = post(&token_for("alice", &[], ""), &[], &get("t-1"));
    assert_eq!(action, Action::Pause);
    assert_eq!(host.record()["reason"], "task_not_found");
    assert_eq!(host.record()["detail"], "task_not_sealed");
}

#[test]
fn the_policy_decides_on_the_upstreams_task_id() {
    let keys = Keys::new(&[3; 32], None);
    let alice = Sealer {
        keys: &keys,
        caller: Some(mcp_guard::session::Caller {
            issuer: ISSUER,
            id: "alice",
            by_client: false,
        }),
        server: "crm",
        exchange: Default::default(),
    };
    let handle = alice.seal("forbidden-1").expect("sealed");
    let (host, _, action) = post(&token_for("alice", &[], ""), &[], &get(&handle));
    assert_eq!(action, Action::Pause);
    let record = host.record();
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["task_id"], "forbidden-1");
    assert_eq!(host.replies.len(), 1);
}

#[test]
fn a_batch_with_task_ids_is_refused() {
    let handle = alices_handle();
    let batch = json!([get(&handle), {"jsonrpc": "2.0", "id": 2, "method": "ping"}]);
    let auth = format!("Bearer {}", token_for("alice", &[], ""));
    let mut host = MockHost::request(&[
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "mcp.example.com"),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2025-03-26"),
        ("authorization", &auth),
    ]);
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    let action = stream.on_request_body(&mut host, batch.to_string().as_bytes());
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply().status, 400);
    assert_eq!(host.record()["reason"], "task_not_found");
    assert_eq!(
        host.record()["detail"],
        "task ids and request states cannot be sent in a JSON-RPC batch"
    );
    assert_eq!(host.replaced_request_body, None);
}

#[test]
fn an_answer_whose_task_id_cannot_be_sealed_is_not_forwarded() {
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow", "arguments": {}}});
    let (mut host, mut stream, action) = post(&token_for("alice", &[], ""), &[], &call);
    assert_eq!(action, Action::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Pause
    );
    let answer = br#"{"jsonrpc":"2.0","id":1,"result":{"task":{"taskId":"t-1","taskId":"t-2"}}}"#;
    assert_eq!(
        stream.on_response_body(&mut host, answer, true),
        BodyAction::Pause
    );
    assert_eq!(host.reply().status, 502);
    let record = host.record();
    assert_eq!(record["decision"], "error");
    assert_eq!(record["reason"], "task_answer_unreadable");
    assert!(record["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[test]
fn task_ids_in_an_event_stream_are_sealed_event_by_event() {
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow", "arguments": {}}});
    let (mut host, mut stream, _) = post(&token_for("alice", &[], ""), &[], &call);
    host.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    assert_eq!(
        stream.on_response_headers(&mut host, Some(200), false),
        Action::Continue
    );
    let first = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tasks/status\",\"params\":{\"taskId\":\"t-";
    let second = b"1\",\"status\":\"working\"}}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"resultType\":\"task\",\"taskId\":\"t-1\"}}\n\n";
    let mut out = Vec::new();
    for (chunk, end) in [(&first[..], false), (&second[..], true)] {
        match stream.on_response_body(&mut host, chunk, end) {
            BodyAction::Replace(bytes) => out.extend(bytes),
            other => panic!("{other:?}"),
        }
    }
    let text = String::from_utf8(out).expect("UTF-8");
    assert!(!text.contains("\"t-1\""), "{text}");
    let keys = Keys::new(&KEY, None);
    let alice = Sealer {
        keys: &keys,
        caller: Some(mcp_guard::session::Caller {
            issuer: ISSUER,
            id: "alice",
            by_client: false,
        }),
        server: "crm",
        exchange: Default::default(),
    };
    let handle = alice.seal("t-1").expect("sealed");
    assert_eq!(text.matches(handle.as_str()).count(), 2, "{text}");
}

// ---- event ids: resuming a stream (resume.rs) ---------------------------------------------

/// Alice's tool call answered on an event stream of these events; what reaches her.
fn answered_with_events(events: &[u8]) -> String {
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {}}});
    let (mut host, mut stream, action) = post(&token_for("alice", &[], ""), &[], &call);
    assert_eq!(action, Action::Continue);
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
fn event_ids(stream: &str) -> Vec<&str> {
    stream
        .lines()
        .filter_map(|l| {
            l.strip_prefix("id: ")
                .or_else(|| (l == "id:").then_some(""))
        })
        .collect()
}

/// `who` resumes with `last_event_id`: what the filter did and what the upstream would get.
fn resume(config: Rc<Config>, who: &str, last_event_id: &str) -> (Action, MockHost) {
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
    let mut stream = Stream::new(config);
    let action = stream.on_request_headers(&mut host, true);
    (action, host)
}

#[test]
fn a_stream_resumes_from_the_callers_own_event_ids_only() {
    let events = b"id: stream-7f3a_1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\nid: stream-7f3a_2\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}\n\n";
    let out = answered_with_events(events);
    let handles = event_ids(&out);
    assert_eq!(handles.len(), 2, "{out}");
    assert!(
        !out.contains("stream-7f3a"),
        "an upstream event id went out: {out}"
    );
    assert!(out.contains("\"result\""), "{out}");

    // Alice resumes from her last event: the upstream gets its own id.
    let (action, host) = resume(config(), "alice", handles[1]);
    assert_eq!(action, Action::Continue);
    assert_eq!(host.req_header("last-event-id"), Some("stream-7f3a_2"));

    // Bob presents Alice's handle, or the upstream's raw id: refused, nothing forwarded.
    for (presented, reason) in [
        (handles[1], "event_id_of_another_caller"),
        ("stream-7f3a_2", "event_id_not_sealed"),
    ] {
        let (action, host) = resume(config(), "bob", presented);
        assert_eq!(action, Action::Pause);
        assert_eq!(host.reply().status, 400);
        assert_eq!(host.audit()[0]["reason"], reason);
    }
}

#[test]
fn an_empty_event_id_stays_empty_and_events_without_ids_are_untouched() {
    let events = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\nid:\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}\n\n";
    let out = answered_with_events(events);
    assert_eq!(event_ids(&out), vec![""], "{out}");
    assert!(out.starts_with("data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\""));
}

#[test]
fn without_a_sealing_key_no_stream_is_resumed() {
    let (action, host) = resume(
        config_with(json!({ "stateless": true })),
        "alice",
        "stream-7f3a_2",
    );
    assert_eq!(action, Action::Continue);
    assert_eq!(host.req_header("last-event-id"), None);
}

/// The acknowledgement of a `subscriptions/listen` names back the tasks it subscribed to: the
/// request carried handles (opened), so the acknowledgement carries them sealed again.
#[test]
fn a_subscription_acknowledgement_names_the_tasks_as_handles() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
        "params": {"notifications": {"taskIds": ["t-1", "t-2"]}}});
    let (out, _) = seal_json(&ack, &alice);
    let ids = out["params"]["notifications"]["taskIds"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ids.len(), 2);
    for (id, raw) in ids.iter().zip(["t-1", "t-2"]) {
        let handle = id.as_str().unwrap_or_default();
        assert_ne!(handle, raw);
        assert_eq!(alice.open(handle).ok().as_deref(), Some(raw));
    }
}

/// Without a sealing key task ids go as the server wrote them, but a listing still shows no
/// task: the server lists every caller's, seeing one key.
#[test]
fn without_a_sealing_key_a_task_listing_still_shows_no_task() {
    let listing = json!({"jsonrpc": "2.0", "id": 3, "result": {"tasks": [
        {"taskId": "bobs-task-1", "status": "working"}]}});
    let (out, hidden) = tasks::hide_listed(listing.to_string().as_bytes())
        .ok()
        .flatten()
        .expect("rewritten");
    let out: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(out["result"]["tasks"], json!([]));
    assert_eq!(hidden, 1);
    let status =
        json!({"jsonrpc": "2.0", "id": 4, "result": {"taskId": "t-9", "status": "working"}});
    assert_eq!(tasks::hide_listed(status.to_string().as_bytes()), Ok(None));
}

// ---- multi round-trip requestState (2026-07-28) ------------------------------------------------

fn input_required(state: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "result": {"resultType": "input_required",
        "inputRequests": {"confirm": {"method": "elicitation/create", "params": {"message": "sure?"}}},
        "requestState": state}})
}

fn retry(state: &str, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool,
        "arguments": {"customer_id": "c-1"}, "inputResponses": {"confirm": {"action": "accept"}},
        "requestState": state}})
}

#[test]
fn a_request_state_is_bound_to_its_caller_server_and_request() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    let (answer, _) = seal_json(&input_required("delete:c-1"), &alice);
    let sealed = answer["result"]["requestState"].as_str().expect("a string");
    assert!(
        sealed.starts_with("mg1.") && sealed.ends_with("~delete:c-1"),
        "{sealed}"
    );
    assert_eq!(
        answer["result"]["inputRequests"],
        input_required("")["result"]["inputRequests"]
    );

    // Alice's retry of the same call: the server gets its own state back.
    let (body, _) = opened(&retry(sealed, "confirm_delete"), &alice)
        .expect("opens")
        .expect("rewritten");
    assert_eq!(body["params"]["requestState"], "delete:c-1");
    assert_eq!(
        body["params"]["inputResponses"]["confirm"]["action"],
        "accept"
    );

    let refused = |sealer: &Sealer, body: &Value| {
        let why = opened(body, sealer).expect_err("refused");
        assert!(why.starts_with(tasks::STATE_REFUSED), "{why}");
        why
    };
    // Another caller, another server, another tool, another method, a changed state, a raw
    // state, a handle without its state, a string that is not one.
    let bob = sealer(&keys, "bob");
    assert!(refused(&bob, &retry(sealed, "confirm_delete")).contains("of_another_caller"));
    let other_server = Sealer {
        server: "billing",
        ..alice
    };
    refused(&other_server, &retry(sealed, "confirm_delete"));
    let other_tool = Sealer {
        exchange: Exchange {
            target: "delete_customer",
            ..alice.exchange
        },
        ..alice
    };
    assert!(refused(&other_tool, &retry(sealed, "delete_customer")).contains("another request"));
    let other_method = Sealer {
        exchange: Exchange {
            method: "prompts/get",
            ..alice.exchange
        },
        ..alice
    };
    refused(&other_method, &retry(sealed, "confirm_delete"));
    let changed = sealed.replace("~delete:c-1", "~delete:c-2");
    assert!(refused(&alice, &retry(&changed, "confirm_delete")).contains("changed"));
    refused(&alice, &retry("delete:c-1", "confirm_delete"));
    let handle_only = sealed.split('~').next().expect("a handle");
    refused(&alice, &retry(handle_only, "confirm_delete"));
    refused(&alice, &retry("mg1.AAAA~delete:c-1", "confirm_delete"));
    // A token that names nobody: nothing is sealed, nothing opens.
    let nobody = Sealer {
        caller: None,
        ..alice
    };
    assert!(tasks::seal_answer(input_required("s").to_string().as_bytes(), &nobody).is_err());
    refused(&nobody, &retry(sealed, "confirm_delete"));
}

#[test]
fn a_request_state_spelled_otherwise_is_found_or_refused() {
    let keys = keys();
    let alice = sealer(&keys, "alice");
    // An escaped name is the same member to every reader: sealed.
    let escaped = input_required("s")
        .to_string()
        .replace("requestState", "request\\u0053tate");
    let (out, _) = tasks::seal_answer(escaped.as_bytes(), &alice)
        .expect("readable")
        .expect("sealed");
    let out: Value = serde_json::from_slice(&out).expect("JSON");
    assert!(out["result"]["requestState"]
        .as_str()
        .expect("sealed")
        .starts_with("mg1."));
    // Twice, or in a spelling some decoders fold to it: the answer does not go on.
    let twice = input_required("s").to_string().replace(
        "\"requestState\"",
        "\"requestState\":\"a\",\"requestState\"",
    );
    assert!(tasks::seal_answer(twice.as_bytes(), &alice).is_err());
    let folded = input_required("s")
        .to_string()
        .replace("\"resultType\"", "\"RequestState\":\"x\",\"resultType\"");
    assert!(tasks::seal_answer(folded.as_bytes(), &alice).is_err());
    // A request whose requestState is written with an escape is opened like any other.
    let (answer, _) = seal_json(&input_required("s"), &alice);
    let sealed = answer["result"]["requestState"].as_str().expect("sealed");
    let body = retry(sealed, "confirm_delete")
        .to_string()
        .replace("requestState", "request\\u0053tate");
    let opened = tasks::open_request(body.as_bytes(), &alice)
        .expect("opens")
        .expect("rewritten");
    let forwarded: Value = serde_json::from_slice(&opened.body).expect("JSON");
    assert_eq!(forwarded["params"]["requestState"], "s");
}

/// Through the whole flow: a 2026-07-28 call answered `input_required`, then retried.
fn modern_call(token: &str, body: &Value) -> (MockHost, Stream, Action) {
    post(
        token,
        &[("mcp-protocol-version", "2026-07-28")],
        &modern(body),
    )
}

fn modern(body: &Value) -> Value {
    let mut body = body.clone();
    body["params"]["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    body
}

#[test]
fn a_retry_with_another_callers_request_state_is_refused_and_not_forwarded() {
    let first = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "confirm_delete", "arguments": {"customer_id": "c-1"}}});
    let (mut host, mut stream, action) = modern_call(&token_for("alice", &[], ""), &first);
    assert_eq!(action, Action::Continue, "{:?}", host.record());
    host.set_response(&[(":status", "200"), ("content-type", "application/json")]);
    stream.on_response_headers(&mut host, Some(200), false);
    let BodyAction::Replace(out) = stream.on_response_body(
        &mut host,
        input_required("delete:c-1").to_string().as_bytes(),
        true,
    ) else {
        panic!("the answer must be rewritten");
    };
    let out: Value = serde_json::from_slice(&out).expect("JSON");
    let sealed = out["result"]["requestState"]
        .as_str()
        .expect("sealed")
        .to_string();
    assert!(sealed.ends_with("~delete:c-1"));

    // Alice retries: forwarded with the server's own state.
    let (mut host, mut stream, action) = modern_call(
        &token_for("alice", &[], ""),
        &retry(&sealed, "confirm_delete"),
    );
    assert_eq!(action, Action::Continue);
    stream.on_log(&mut host);
    let forwarded: Value =
        serde_json::from_slice(host.replaced_request_body.as_deref().expect("rewritten"))
            .expect("JSON");
    assert_eq!(forwarded["params"]["requestState"], "delete:c-1");

    // Bob replays it: -32602, nothing forwarded, audited.
    let (host, _, action) = modern_call(
        &token_for("bob", &[], ""),
        &retry(&sealed, "confirm_delete"),
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(host.replaced_request_body, None);
    let reply = host.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["id"], 2);
    assert_eq!(reply.json()["error"]["code"], -32602);
    let record = host.record();
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "request_state_refused");
    assert_eq!(record["detail"], "request_state_of_another_caller");
    // A raw state (what the server wrote, sent past the gateway's handle) is refused as well.
    let (host, _, action) = modern_call(
        &token_for("alice", &[], ""),
        &retry("delete:c-1", "confirm_delete"),
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(host.record()["reason"], "request_state_refused");
}

#[test]
fn a_batch_carrying_a_request_state_is_refused() {
    let batch = json!([retry("anything", "confirm_delete")]);
    let old = [("mcp-protocol-version", "2025-03-26")];
    let (host, _, action) = post(&token_for("alice", &[], ""), &old, &batch);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply().status, 400);
    assert_eq!(host.record()["reason"], "task_not_found");
}
