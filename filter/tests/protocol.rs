//! The MCP 2026-07-28 revision through the request path: declared versions, `Mcp-Name` and
//! `Mcp-Param-*` headers against the body, trace context in the audit record, and filtered
//! lists made private.

mod common;

use std::rc::Rc;

use common::*;
use mcp_guard::config::Config;
use mcp_guard::flow::{Action, BodyAction, Stream};
use serde_json::{json, Value};

const MODERN: &str = "2026-07-28";

fn config() -> Rc<Config> {
    config_with(|_| {})
}

fn config_with(change: impl FnOnce(&mut Value)) -> Rc<Config> {
    let mut c = json!({
        "issuers": [{ "issuer": ISSUER, "audiences": [RESOURCE], "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"], "jwks": jwks_all() }],
        "servers": [{
            "name": "crm",
            "resource": RESOURCE,
            "authorization_servers": [ISSUER],
            "credential": { "header": "x-api-key", "value": SERVICE_KEY },
            "policy": {
                "name": "crm", "version": "1",
                "rules": [
                    { "name": "discover", "allow": "mcp.method in ['server/discover', 'tools/list', 'tasks/get']" },
                    { "name": "tools", "allow": "mcp.tool.name in ['sql', 'echo']" },
                ],
            },
        }],
        "sessions": { "key": TEST_SESSION_KEY },
    });
    change(&mut c);
    Rc::new(
        Config::from_json(c.to_string().as_bytes(), &MapEnv::default())
            .unwrap_or_else(|e| panic!("test configuration is invalid: {e}")),
    )
}

fn host(shared: &Shared, headers: &[(&str, &str)]) -> MockHost {
    let auth = format!("Bearer {}", token_for("alice", &["staff"], "mcp:read"));
    let mut all: Vec<(&str, &str)> = vec![
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "mcp.example.com"),
        ("content-type", "application/json"),
        ("authorization", &auth),
    ];
    all.extend_from_slice(headers);
    MockHost::request(&all).with_shared(shared)
}

fn body(id: i64, method: &str, params: Value) -> Vec<u8> {
    let mut params = params;
    if let Some(p) = params.as_object_mut() {
        p.insert(
            "_meta".into(),
            json!({ "io.modelcontextprotocol/protocolVersion": MODERN }),
        );
    }
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
        .to_string()
        .into_bytes()
}

fn send(host: &mut MockHost, body: &[u8]) -> (Stream, Action) {
    let mut stream = Stream::new(config());
    assert_eq!(stream.on_request_headers(host, false), Action::Pause);
    let action = stream.on_request_body(host, body);
    (stream, action)
}

fn refused_with_32020(host: &MockHost) {
    assert_eq!(host.reply().status, 400);
    assert_eq!(host.reply().json()["error"]["code"], -32020);
    let record = host.record();
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["error_code"], -32020);
}

/// A 2026-07-28 request `method` (its id `id`, no params) answered by `message` as
/// `content_type` (JSON, or one event): what the answer's body callback returned, and the host.
fn answered(
    shared: &Shared,
    id: i64,
    method: &str,
    content_type: &str,
    message: &str,
) -> (BodyAction, MockHost) {
    let mut h = host(
        shared,
        &[("mcp-protocol-version", MODERN), ("mcp-method", method)],
    );
    let (mut stream, action) = send(&mut h, &body(id, method, json!({})));
    assert_eq!(action, Action::Continue);
    h.set_response(&[(":status", "200"), ("content-type", content_type)]);
    stream.on_response_headers(&mut h, Some(200), false);
    let answer = if content_type == "application/json" {
        message.to_string()
    } else {
        format!("event: message\ndata: {message}\n\n")
    };
    let action = stream.on_response_body(&mut h, answer.as_bytes(), true);
    (action, h)
}

fn list_tools(shared: &Shared, result: Value) -> Vec<u8> {
    let answer = json!({ "jsonrpc": "2.0", "id": 2, "result": result }).to_string();
    match answered(shared, 2, "tools/list", "application/json", &answer).0 {
        BodyAction::Replace(bytes) => bytes,
        BodyAction::Continue => answer.into_bytes(),
        BodyAction::Pause => panic!("held"),
    }
}

fn sql_tools() -> Value {
    json!({
        "resultType": "complete", "ttlMs": 60000, "cacheScope": "public",
        "tools": [
            { "name": "sql", "inputSchema": { "type": "object", "properties": {
                "region": { "type": "string", "x-mcp-header": "Region" },
                "query": { "type": "string" } } } },
            { "name": "echo", "inputSchema": { "type": "object" } },
            { "name": "secret", "inputSchema": { "type": "object" } },
        ],
    })
}

#[test]
fn declared_versions_that_disagree_are_refused() {
    let shared = Shared::default();
    let mut h = host(
        &shared,
        &[
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "tools/list"),
        ],
    );
    let (_, action) = send(&mut h, &body(1, "tools/list", json!({})));
    assert_eq!(action, Action::Pause);
    refused_with_32020(&h);
    assert_eq!(h.record()["reason"], "header_mismatch");
    assert!(h.record()["detail"]
        .as_str()
        .unwrap_or("")
        .contains("does not match"));
    // Agreeing versions pass, and the record names the version.
    let mut h = host(
        &shared,
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/list"),
        ],
    );
    let (mut stream, action) = send(&mut h, &body(1, "tools/list", json!({})));
    assert_eq!(action, Action::Continue);
    stream.on_log(&mut h);
    assert_eq!(h.record()["protocol_version"], MODERN);
}

#[test]
fn missing_standard_headers_are_left_to_the_server() {
    let shared = Shared::default();
    let mut h = host(&shared, &[("mcp-protocol-version", MODERN)]);
    let (_, action) = send(
        &mut h,
        &body(1, "tools/call", json!({"name": "echo", "arguments": {}})),
    );
    assert_eq!(action, Action::Continue);
}

#[test]
fn task_requests_mirror_the_task_id_in_mcp_name() {
    let shared = Shared::default();
    let headers = |name| {
        vec![
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tasks/get"),
            ("mcp-name", name),
        ]
    };
    // Task ids are the handles the filter sealed for this caller (tests/tasks.rs); Mcp-Name
    // mirrors the handle the client holds, and upstream the task's own id.
    // TEST_SESSION_KEY: the bytes 0, 1, …, 31.
    let keys = mcp_guard::seal::Keys::new(&std::array::from_fn(|i| i as u8), None);
    let sealer = mcp_guard::tasks::Sealer {
        keys: &keys,
        caller: Some(mcp_guard::session::Caller {
            issuer: ISSUER,
            id: "alice",
            by_client: false,
        }),
        server: "crm",
        exchange: Default::default(),
    };
    let handle = sealer.seal("t-1").expect("sealed");
    let mut h = host(&shared, &headers(&handle));
    let (mut stream, action) = send(&mut h, &body(1, "tasks/get", json!({"taskId": handle})));
    assert_eq!(action, Action::Continue);
    stream.on_log(&mut h);
    assert_eq!(h.record()["task_id"], "t-1");
    assert_eq!(h.req_header("mcp-name"), Some("t-1"));
    let mut h = host(&shared, &headers("t-2"));
    let (_, _) = send(&mut h, &body(1, "tasks/get", json!({"taskId": handle})));
    refused_with_32020(&h);
}

#[test]
fn param_headers_are_checked_against_the_arguments_once_the_tool_was_listed() {
    let shared = Shared::default();
    let call = |region_header: Option<&str>, region: &str| {
        let mut headers = vec![
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "sql"),
        ];
        if let Some(r) = region_header {
            headers.push(("mcp-param-region", r));
        }
        let mut h = host(&shared, &headers);
        let (_, action) = send(
            &mut h,
            &body(
                3,
                "tools/call",
                json!({"name": "sql", "arguments": {"region": region, "query": "q"}}),
            ),
        );
        (h, action)
    };
    // Not listed through the filter yet: a parameter header cannot be checked, so it is refused
    // (the client lists the tools again and retries, as the revision says).
    let (h, _) = call(Some("us-west1"), "us-west1");
    refused_with_32020(&h);
    let (_, action) = call(None, "us-west1");
    assert_eq!(action, Action::Continue, "nothing to check");

    list_tools(&shared, sql_tools());
    let (_, action) = call(Some("us-west1"), "us-west1");
    assert_eq!(action, Action::Continue);
    let (_, action) = call(Some("=?base64?dXMtd2VzdDE=?="), "us-west1");
    assert_eq!(action, Action::Continue);
    let (h, action) = call(Some("eu-west1"), "us-west1");
    assert_eq!(action, Action::Pause, "nothing forwarded");
    refused_with_32020(&h);
    assert_eq!(h.record()["reason"], "header_mismatch");
    assert!(h.record()["detail"]
        .as_str()
        .unwrap_or("")
        .contains("Mcp-Param-region"));
    let (h, _) = call(None, "us-west1");
    refused_with_32020(&h);
}

/// Parameter headers mirror a tool's arguments: on any other message (here `tools/list`) they
/// name a value no body carries, which a router or rate limiter after the filter would act on.
#[test]
fn a_param_header_on_a_message_without_tool_arguments_is_refused() {
    let shared = Shared::default();
    list_tools(&shared, sql_tools());
    let mut h = host(
        &shared,
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/list"),
            ("mcp-param-region", "us-west1"),
        ],
    );
    let (_, action) = send(&mut h, &body(4, "tools/list", json!({})));
    assert_eq!(action, Action::Pause, "nothing forwarded");
    refused_with_32020(&h);
    assert!(h.record()["detail"]
        .as_str()
        .is_some_and(|d| d.contains("mcp-param-region") && d.contains("tools/list")));
}

/// A request of an earlier revision (or of none) that carries parameter headers anyway: its
/// server reads the body only, so the header would show a router or rate limiter after the
/// filter a value no one checked. Refused as in 2026-07-28; batches too.
#[test]
fn a_param_header_on_a_request_of_an_earlier_revision_is_refused() {
    let shared = Shared::default();
    list_tools(&shared, sql_tools());
    let call = json!({
        "jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "sql", "arguments": {"region": "us-west1", "query": "q"}},
    });
    for version in [Some("2025-11-25"), Some("2025-06-18"), None] {
        let mut headers = vec![("mcp-param-region", "eu-west1")];
        headers.extend(version.map(|v| ("mcp-protocol-version", v)));
        let mut h = host(&shared, &headers);
        let (_, action) = send(&mut h, call.to_string().as_bytes());
        assert_eq!(action, Action::Pause, "{version:?}: nothing forwarded");
        refused_with_32020(&h);
        assert!(h.record()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("mcp-param-region")));
        // Without the header the same request goes on.
        let mut h = host(&shared, &headers[1..]);
        let (_, action) = send(&mut h, call.to_string().as_bytes());
        assert_eq!(action, Action::Continue, "{version:?}");
    }
    let mut h = host(
        &shared,
        &[
            ("mcp-protocol-version", "2025-03-26"),
            ("mcp-param-region", "eu-west1"),
        ],
    );
    let (_, action) = send(&mut h, format!("[{call}]").as_bytes());
    assert_eq!(action, Action::Pause, "a batch: nothing forwarded");
    assert!(h.record()["detail"]
        .as_str()
        .is_some_and(|d| d.contains("mcp-param-region")));
}

/// Under `on_deny: hide` the parameter headers' check must not tell a caller which hidden
/// tools exist (it reads what the server declared for every tool): a denied call is answered
/// as a call of a tool that does not exist, whatever its headers say.
#[test]
fn with_hide_the_header_check_does_not_reveal_a_hidden_tool() {
    let shared = Shared::default();
    let mut tools = sql_tools();
    tools["tools"][2] = json!({ "name": "secret", "inputSchema": { "type": "object",
        "properties": { "employee": { "type": "string", "x-mcp-header": "Employee" } } } });
    list_tools(&shared, tools);
    let hiding = config_with(|c| c["servers"][0]["policy"]["on_deny"] = json!("hide"));
    let answer = |name: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", name),
        ];
        headers.extend_from_slice(extra);
        let mut h = host(&shared, &headers);
        let call = body(
            5,
            "tools/call",
            json!({"name": name, "arguments": {"employee": "e-1"}}),
        );
        let mut stream = Stream::new(Rc::clone(&hiding));
        assert_eq!(stream.on_request_headers(&mut h, false), Action::Pause);
        assert_eq!(
            stream.on_request_body(&mut h, &call),
            Action::Pause,
            "{name}"
        );
        let reply = h.reply().json();
        (
            reply["error"]["code"].clone(),
            reply["error"]["message"].clone(),
        )
    };
    for extra in [
        &[][..],
        &[("mcp-param-zz", "1")],
        &[("mcp-param-employee", "e-2")],
    ] {
        let (code, message) = answer("secret", extra);
        assert_eq!(code, json!(-32602), "{extra:?}: {message}");
        assert_eq!(message, json!("Unknown tool: secret"), "{extra:?}");
    }
    // A tool the caller may call is still held to its headers.
    let (code, _) = answer("sql", &[("mcp-param-zz", "1")]);
    assert_eq!(code, json!(-32020));
}

#[test]
fn a_filtered_list_is_private_and_keeps_its_ttl() {
    let shared = Shared::default();
    let out = list_tools(&shared, sql_tools());
    let v: Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(v["result"]["cacheScope"], "private");
    assert_eq!(v["result"]["ttlMs"], 60000);
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["sql", "echo"]);
    // Nothing hidden: still the caller's answer, still private.
    let mut all = sql_tools();
    if let Some(tools) = all["tools"].as_array_mut() {
        tools.pop();
    }
    let out = list_tools(&shared, all);
    let v: Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(v["result"]["cacheScope"], "private");
}

/// A `server/discover` (id 3) answered by `message` as `content_type`.
fn discovered(shared: &Shared, content_type: &str, message: &str) -> (BodyAction, MockHost) {
    answered(shared, 3, "server/discover", content_type, message)
}

/// Every answer is decided for its caller, not only lists: a read or a discovery the server
/// marks public leaves private, so a shared cache never gives it to a caller the policy would
/// refuse. As JSON and as an event.
#[test]
fn a_cacheable_result_of_any_method_is_private() {
    let shared = Shared::default();
    let result = json!({ "resultType": "complete", "ttlMs": 60000, "cacheScope": "public",
        "serverInfo": { "name": "crm" } });
    for content_type in ["application/json", "text/event-stream"] {
        let message = json!({ "jsonrpc": "2.0", "id": 3, "result": result }).to_string();
        let out = match discovered(&shared, content_type, &message).0 {
            BodyAction::Replace(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            other => panic!("{content_type}: not rewritten: {other:?}"),
        };
        assert!(out.contains(r#""cacheScope":"private""#), "{out}");
        assert!(!out.contains("public"), "{out}");
    }
}

/// A caching member written in another case (`CacheScope`, `cacheſcope`) would stay beside
/// the `cacheScope: "private"` the filter sets, and a client that matches member names by case
/// (Go's encoding/json, the last one winning) would read the server's: refused as ambiguous,
/// a held answer with 502 and a stream cut, like a duplicate.
#[test]
fn a_caching_member_in_another_case_is_refused() {
    let shared = Shared::default();
    for member in [
        "CacheScope",
        "CACHESCOPE",
        "cache\\u017fcope",
        "TtlMs",
        "ResultType",
    ] {
        for content_type in ["application/json", "text/event-stream"] {
            let message = format!(
                r#"{{"jsonrpc":"2.0","id":3,"result":{{"resultType":"complete","ttlMs":60000,"{member}":"public","serverInfo":{{"name":"crm"}}}}}}"#
            );
            let (action, h) = discovered(&shared, content_type, &message);
            assert_eq!(action, BodyAction::Pause, "{member} {content_type}");
            if content_type == "application/json" {
                assert_eq!(h.reply().status, 502, "{member}");
            } else {
                assert_eq!(h.resets, 1, "{member}: the stream is cut");
            }
            assert_eq!(h.record()["decision"], "error", "{member}");
        }
    }
}

#[test]
fn trace_context_is_recorded() {
    let shared = Shared::default();
    let mut h = host(
        &shared,
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/list"),
            (
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01",
            ),
        ],
    );
    let mut b: Value =
        serde_json::from_slice(&body(1, "tools/list", json!({}))).unwrap_or_default();
    b["params"]["_meta"]["traceparent"] =
        json!("00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01");
    let (mut stream, action) = send(&mut h, b.to_string().as_bytes());
    assert_eq!(action, Action::Continue);
    stream.on_log(&mut h);
    let r = h.record();
    assert_eq!(r["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(r["span_id"], "00f067aa0ba902b7");
    assert_eq!(r["header_trace_id"], "11111111111111111111111111111111");
}

#[test]
fn a_filtered_list_in_an_event_stream_is_private_too() {
    let shared = Shared::default();
    let mut h = host(
        &shared,
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/list"),
        ],
    );
    let (mut stream, action) = send(&mut h, &body(2, "tools/list", json!({})));
    assert_eq!(action, Action::Continue);
    h.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    stream.on_response_headers(&mut h, Some(200), false);
    let data = json!({ "jsonrpc": "2.0", "id": 2, "result": sql_tools() }).to_string();
    let event = format!("event: message\ndata: {data}\n\n");
    let (a, b) = event.as_bytes().split_at(40);
    let mut out = Vec::new();
    for (chunk, end) in [(a, false), (b, true)] {
        match stream.on_response_body(&mut h, chunk, end) {
            BodyAction::Replace(bytes) => out.extend(bytes),
            BodyAction::Continue => out.extend_from_slice(chunk),
            BodyAction::Pause => panic!("held"),
        }
    }
    let text = String::from_utf8_lossy(&out);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_default();
    let v: Value = serde_json::from_str(line).unwrap_or_default();
    assert_eq!(v["result"]["cacheScope"], "private", "{text}");
    assert_eq!(v["result"]["ttlMs"], 60000);
    assert_eq!(v["result"]["tools"].as_array().map(Vec::len), Some(2));
}

// ---- declarations asked of the server (a replica that has not seen the listing) -------------

#[test]
fn the_declarations_request_is_a_2026_tools_list() {
    let body: Value = serde_json::from_slice(&mcp_guard::protocol::declarations_request()).unwrap();
    assert_eq!(body["method"], "tools/list");
    assert_eq!(
        body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
        "2026-07-28"
    );
    assert!(mcp_guard::protocol::DECLARATIONS_HEADERS.contains(&("mcp-method", "tools/list")));
}

#[test]
fn the_server_is_asked_at_most_once_per_ten_seconds_per_envoy() {
    let shared = Shared::default();
    let mut host = MockHost::request(&[]).with_shared(&shared);
    let claim = |host: &mut MockHost, server: &str, now: u64| {
        mcp_guard::protocol::claim_listing(host, server, now, 10_000)
    };
    assert!(claim(&mut host, "crm", 1_000_000));
    assert!(!claim(&mut host, "crm", 1_005_000), "within ten seconds");
    assert!(claim(&mut host, "git", 1_005_000), "another server");
    // Another worker VM shares the data.
    let mut other = MockHost::request(&[]).with_shared(&shared);
    assert!(!claim(&mut other, "crm", 1_009_999));
    assert!(claim(&mut other, "crm", 1_010_000));
    // Pins' freshness asks less often: a minute since the last request.
    assert!(!mcp_guard::protocol::claim_listing(
        &mut other, "crm", 1_060_000, 60_000
    ));
    assert!(mcp_guard::protocol::claim_listing(
        &mut other, "crm", 1_070_000, 60_000
    ));
}

fn declared(name: &str) -> Vec<mcp_guard::protocol::ParamHeader> {
    vec![mcp_guard::protocol::ParamHeader {
        name: name.into(),
        path: vec![name.into()],
    }]
}

#[test]
fn declarations_of_one_server_never_answer_for_another() {
    use mcp_guard::protocol::{known_param_headers, learn};
    let shared = Shared::default();
    let mut host = MockHost::request(&[]).with_shared(&shared);
    // Names that a plain "server:tool" key would join into the same string.
    learn(&mut host, "a", &[("b:c".into(), declared("forged"))]);
    assert_eq!(known_param_headers(&host, "a:b", "c"), None);
    assert_eq!(
        known_param_headers(&host, "a", "b:c"),
        Some(declared("forged"))
    );
    learn(&mut host, "a:b", &[("c".into(), declared("real"))]);
    assert_eq!(
        known_param_headers(&host, "a:b", "c"),
        Some(declared("real"))
    );
    assert_eq!(
        known_param_headers(&host, "a", "b:c"),
        Some(declared("forged"))
    );
}

#[test]
fn declarations_are_bounded_whatever_a_server_lists() {
    use mcp_guard::protocol::{
        known_param_headers, learn, DECLARATION_SLOTS, SLOT_BYTES, SLOT_TOOLS,
    };
    let shared = Shared::default();
    let mut host = MockHost::request(&[]).with_shared(&shared);
    // A server whose tool names change on every listing: 40 listings of 500 new names, more
    // than the entries hold.
    for round in 0..40 {
        let tools: Vec<_> = (0..500)
            .map(|i| (format!("tool-{round}-{i}"), declared(&format!("h{i}"))))
            .collect();
        learn(&mut host, "crm", &tools);
        // The latest listing is known, tool by tool.
        for (name, headers) in tools.iter().step_by(50) {
            assert_eq!(
                known_param_headers(&host, "crm", name).as_ref(),
                Some(headers)
            );
        }
    }
    let entries = shared.borrow();
    let mine: Vec<_> = entries
        .iter()
        .filter(|(k, _)| k.starts_with("mcp-guard:params:\"crm\""))
        .collect();
    assert!(
        mine.len() <= usize::from(DECLARATION_SLOTS),
        "{}",
        mine.len()
    );
    assert!(mine.iter().all(|(_, v)| v.len() <= SLOT_BYTES));
    drop(entries);
    // Older names made room: a call naming a forgotten one asks the server again.
    let remembered = (0..40)
        .flat_map(|round| (0..500).map(move |i| format!("tool-{round}-{i}")))
        .filter(|name| known_param_headers(&host, "crm", name).is_some())
        .count();
    assert!(remembered < 20_000, "{remembered}");
    assert!(
        remembered <= usize::from(DECLARATION_SLOTS) * SLOT_TOOLS,
        "{remembered}"
    );
}
