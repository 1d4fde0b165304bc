use serde_json::json;

use super::*;
use crate::mcp::parse_message;

fn message(value: Value) -> Message {
    parse_message(value.to_string().as_bytes(), 64).unwrap_or_else(|e| panic!("{e}"))
}

fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_declared_version_is_metas_and_must_agree_with_the_header() {
    let m = message(json!({"jsonrpc":"2.0","id":1,"method":"tools/list",
        "params":{"_meta":{META_VERSION: "2026-07-28"}}}));
    assert_eq!(
        declared_version(Some("2026-07-28"), &m),
        Ok(Some("2026-07-28"))
    );
    assert!(declared_version(Some("2025-11-25"), &m).is_err());
    assert!(
        declared_version(None, &m).is_err(),
        "2026-07-28 needs the header"
    );
    let legacy = message(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
    assert_eq!(
        declared_version(Some("2025-06-18"), &legacy),
        Ok(Some("2025-06-18"))
    );
    assert_eq!(declared_version(None, &legacy), Ok(None));
    let bad = message(json!({"jsonrpc":"2.0","id":1,"method":"tools/list",
        "params":{"_meta":{META_VERSION: 20260728}}}));
    assert!(declared_version(Some("2026-07-28"), &bad).is_err());
}

#[test]
fn new_methods_params_are_checked() {
    let ok = [
        json!({"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":"t-1"}}),
        json!({"jsonrpc":"2.0","id":1,"method":"tasks/update","params":{"taskId":"t-1","inputResponses":{"k":{"action":"accept"}}}}),
        json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["a://b"],"taskIds":["t"]}}}),
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","inputResponses":{},"requestState":"opaque"}}),
    ];
    for m in ok {
        assert_eq!(check_params(&message(m.clone())), Ok(()), "{m}");
    }
    let bad = [
        json!({"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{}}),
        json!({"jsonrpc":"2.0","id":1,"method":"tasks/cancel","params":{"taskId":7}}),
        json!({"jsonrpc":"2.0","id":1,"method":"tasks/update","params":{"taskId":"t"}}),
        json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{}}),
        json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":"yes"}}}),
        json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"everything":true}}}),
        json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":[1]}}}),
        // `%63` is `c`: a rule on `crm://c-1` would not see it, the server would.
        json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["crm://ok","crm://%63-1"]}}}),
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","requestState":{}}}),
    ];
    for m in bad {
        assert!(check_params(&message(m.clone())).is_err(), "{m}");
    }
}

#[test]
fn subscription_facts() {
    let m = message(
        json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{
        "notifications":{"toolsListChanged":true,"promptsListChanged":false,"resourceSubscriptions":["a://1","a://2"]}}}),
    );
    let f = subscription(&m).unwrap_or_else(|| panic!("a filter"));
    assert_eq!(
        requested(f),
        vec!["toolsListChanged", "resourceSubscriptions"]
    );
    assert_eq!(strings(f, "resourceSubscriptions"), vec!["a://1", "a://2"]);
    assert!(strings(f, "taskIds").is_empty());
}

#[test]
fn header_values_decode_the_base64_sentinel() {
    assert_eq!(decode_header_value("us-west1").as_deref(), Some("us-west1"));
    assert_eq!(
        decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
        Some("Hello, 世界")
    );
    assert_eq!(decode_header_value("caf\u{e9}"), None);
    assert_eq!(decode_header_value("a\nb"), None);
    assert_eq!(decode_header_value("=?base64?!!?="), None);
}

fn region_tool() -> Vec<ParamHeader> {
    param_headers(&json!({"type":"object","properties":{
        "region":{"type":"string","x-mcp-header":"Region"},
        "limits":{"type":"object","properties":{"max":{"type":"integer","x-mcp-header":"Max"}}},
        "items":{"type":"array","items":{"type":"object","properties":{"x":{"x-mcp-header":"X"}}}},
        "query":{"type":"string"}}}))
}

#[test]
fn param_headers_are_read_through_properties_only() {
    let mut found = region_tool();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        found,
        vec![
            ParamHeader {
                name: "max".into(),
                path: vec!["limits".into(), "max".into()]
            },
            ParamHeader {
                name: "region".into(),
                path: vec!["region".into()]
            },
        ]
    );
}

#[test]
fn param_headers_must_match_the_arguments() {
    let declared = region_tool();
    let args = json!({"region":"us-west1","limits":{"max":42},"query":"q"});
    let args = args.as_object().cloned().unwrap_or_default();
    let check = |pairs: &[(&str, &str)]| param_mismatch(&headers(pairs), Some(&declared), &args);
    assert_eq!(
        check(&[("mcp-param-region", "us-west1"), ("mcp-param-max", "42")]),
        None
    );
    assert_eq!(
        check(&[
            ("Mcp-Param-Region", "=?base64?dXMtd2VzdDE=?="),
            ("mcp-param-max", "=?base64?NDI=?=")
        ]),
        None
    );
    // An integer as the clients write it, not as any text that parses to it: a router reading
    // the header as text must not see one value under many names.
    for other in ["42.0", "042", "+42", "4.2e1", " 42", "42.0000000000000001"] {
        assert!(
            check(&[("mcp-param-region", "us-west1"), ("mcp-param-max", other)]).is_some(),
            "{other}"
        );
    }
    // A body value written as a float: its decimal form, or Python's `str(42.0)`.
    let floats = json!({"region":"us-west1","limits":{"max":42.0},"query":"q"});
    let floats = floats.as_object().cloned().unwrap_or_default();
    for (header, ok) in [
        ("42", true),
        ("42.0", true),
        ("42.00", false),
        ("4.2e1", false),
    ] {
        let mismatch = param_mismatch(
            &headers(&[("mcp-param-region", "us-west1"), ("mcp-param-max", header)]),
            Some(&declared),
            &floats,
        );
        assert_eq!(mismatch.is_none(), ok, "{header}");
    }
    assert!(check(&[("mcp-param-region", "eu-west1"), ("mcp-param-max", "42")]).is_some());
    assert!(
        check(&[("mcp-param-max", "42")]).is_some(),
        "missing header"
    );
    assert!(check(&[("mcp-param-region", "us-west1"), ("mcp-param-max", "43")]).is_some());
    assert!(
        check(&[
            ("mcp-param-region", "us-west1"),
            ("mcp-param-max", "42"),
            ("mcp-param-query", "q")
        ])
        .is_some(),
        "undeclared header"
    );
    assert!(
        check(&[
            ("mcp-param-region", "us-west1"),
            ("mcp-param-region", "us-west1"),
            ("mcp-param-max", "42")
        ])
        .is_some(),
        "repeated header"
    );
    // No value in the body: no header expected, and none accepted.
    let empty = Map::new();
    assert_eq!(param_mismatch(&[], Some(&declared), &empty), None);
    assert!(param_mismatch(
        &headers(&[("mcp-param-region", "x")]),
        Some(&declared),
        &empty
    )
    .is_some());
    // A tool never listed here: headers cannot be checked, so they are refused.
    assert!(param_mismatch(&headers(&[("mcp-param-region", "x")]), None, &args).is_some());
    assert_eq!(param_mismatch(&[], None, &args), None);
    // Booleans are `true` / `false`.
    let flag = vec![ParamHeader {
        name: "dry".into(),
        path: vec!["dry".into()],
    }];
    let args = json!({"dry": true})
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        param_mismatch(&headers(&[("mcp-param-dry", "true")]), Some(&flag), &args),
        None
    );
    assert!(param_mismatch(&headers(&[("mcp-param-dry", "True")]), Some(&flag), &args).is_some());
}

#[test]
fn listed_tools_yield_their_param_headers() {
    let list = json!({"jsonrpc":"2.0","id":2,"result":{"tools":[
        {"name":"sql","inputSchema":{"type":"object","properties":{"region":{"type":"string","x-mcp-header":"Region"}}}},
        {"name":"plain","inputSchema":{"type":"object"}}]}});
    let found = listed_param_headers(list.to_string().as_bytes());
    assert_eq!(found.len(), 2);
    assert_eq!(
        found.first().map(|(n, h)| (n.as_str(), h.len())),
        Some(("sql", 1))
    );
    assert_eq!(
        found.get(1).map(|(n, h)| (n.as_str(), h.len())),
        Some(("plain", 0))
    );
}

#[test]
fn traceparent_is_validated() {
    let t = traceparent("00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01");
    assert_eq!(
        t,
        Some(Trace {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "00f067aa0ba902b7".into()
        })
    );
    for bad in [
        "00-0AF7651916CD43DD8448EB211C80319C-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01",
        "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01-extra",
        "00-0af7651916cd43dd8448eb211c8031-00f067aa0ba902b7-01",
        "garbage",
    ] {
        assert_eq!(traceparent(bad), None, "{bad}");
    }
    assert!(
        traceparent("01-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01-future").is_some()
    );
}

#[test]
fn meta_trace_context_wins_and_a_different_header_trace_is_noted() {
    let meta_tp = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
    let m = message(
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"traceparent":meta_tp}}}),
    );
    let same_trace = headers(&[(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01",
    )]);
    let (t, other) = trace(&same_trace, Some(&m));
    assert_eq!(t.map(|t| t.span_id), Some("00f067aa0ba902b7".to_string()));
    assert_eq!(other, None);
    let other_trace = headers(&[(
        "traceparent",
        "00-11111111111111111111111111111111-1111111111111111-01",
    )]);
    let (t, other) = trace(&other_trace, Some(&m));
    assert_eq!(
        t.map(|t| t.trace_id),
        Some("0af7651916cd43dd8448eb211c80319c".to_string())
    );
    assert_eq!(other.as_deref(), Some("11111111111111111111111111111111"));
    let (t, _) = trace(&other_trace, None);
    assert_eq!(t.map(|t| t.span_id), Some("1111111111111111".to_string()));
    let twice = headers(&[("traceparent", meta_tp), ("traceparent", meta_tp)]);
    assert_eq!(trace(&twice, None).0, None);
}

#[test]
fn filtered_lists_become_private() {
    let public = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[],"ttlMs":60000,"cacheScope":"public","resultType":"complete"}}"#;
    let out = private_cache(public, true)
        .ok()
        .flatten()
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(v["result"]["cacheScope"], "private");
    assert_eq!(v["result"]["ttlMs"], 60000);
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(public).replace("\"public\"", "\"private\"")
    );
    let private = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[],"cacheScope":"private"}}"#;
    assert_eq!(private_cache(private, true), Ok(None));
    // A 2026-07-28 result without a scope gets one.
    let missing = br#"{"jsonrpc":"2.0","id":2,"result":{ "tools":[],"ttlMs":5}}"#;
    let out = private_cache(missing, true)
        .ok()
        .flatten()
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(v["result"]["cacheScope"], "private");
    assert_eq!(v["result"]["ttlMs"], 5);
    // Not inserted where asked not to (a result of a method that has no scope: a task's).
    let task = br#"{"jsonrpc":"2.0","id":2,"result":{"resultType":"complete"}}"#;
    assert_eq!(private_cache(task, false), Ok(None));
    // Earlier revisions' results are left alone.
    let legacy = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}"#;
    assert_eq!(private_cache(legacy, true), Ok(None));
    // Two scopes: a client might read either, so the message is refused.
    let twice = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[],"cacheScope":"private","cacheScope":"public"}}"#;
    assert!(private_cache(twice, true).is_err());
}

// ---- the policy's view of the revision's methods ----------------------------------------------

fn policy(rules: Value) -> crate::policy::Policy {
    crate::policy::Policy::from_config(json!({"name":"p","version":"1","rules":rules}), "policy")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn decide(p: &crate::policy::Policy, m: &Message) -> (crate::policy::Outcome, Option<String>) {
    let d = p.evaluate(&crate::policy::Input::of_message(m));
    (d.outcome, d.rule)
}

fn modern(method: &str, params: Value) -> Message {
    let mut params = params;
    if let Some(p) = params.as_object_mut() {
        p.insert("_meta".into(), json!({META_VERSION: MODERN}));
    }
    message(json!({"jsonrpc":"2.0","id":1,"method":method,"params":params}))
}

#[test]
fn rules_read_the_new_methods_facts() {
    use crate::policy::Outcome::{Allow, Deny};
    let p = policy(json!([
        {"name":"discover","allow":"mcp.method == 'server/discover' && mcp.protocol_version == '2026-07-28'"},
        {"name":"own-tasks","allow":"mcp.method in ['tasks/get', 'tasks/update', 'tasks/cancel'] && mcp.task.id.startsWith('t-')"},
        {"name":"listen","allow":"mcp.method == 'subscriptions/listen' && mcp.subscription.resources.all(u, u.startsWith('crm://')) && !('taskIds' in mcp.subscription.notifications)"},
        {"name":"retry","deny":"mcp.input.retry && has(mcp.input.responses.confirm) && mcp.input.responses.confirm.action != 'accept'"},
        {"name":"tools","allow":"mcp.tool.name == 'echo'"},
    ]));
    assert_eq!(decide(&p, &modern("server/discover", json!({}))).0, Allow);
    assert_eq!(
        decide(&p, &modern("tasks/get", json!({"taskId":"t-1"}))).0,
        Allow
    );
    assert_eq!(
        decide(&p, &modern("tasks/cancel", json!({"taskId":"x-1"}))).0,
        Deny
    );
    assert_eq!(
        decide(
            &p,
            &modern("tasks/update", json!({"taskId":"t-1","inputResponses":{}}))
        )
        .0,
        Allow
    );
    let listen = |filter: Value| {
        decide(
            &p,
            &modern("subscriptions/listen", json!({"notifications":filter})),
        )
        .0
    };
    assert_eq!(
        listen(json!({"toolsListChanged":true,"resourceSubscriptions":["crm://a"]})),
        Allow
    );
    assert_eq!(
        listen(json!({"resourceSubscriptions":["file:///etc/passwd"]})),
        Deny
    );
    assert_eq!(listen(json!({"taskIds":["t-1"]})), Deny);
    // A multi round-trip retry is decided as the call it retries, and its answers are read.
    let call = |extra: Value| {
        let mut params = json!({"name":"echo","arguments":{"text":"hi"}});
        if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        decide(&p, &modern("tools/call", params))
    };
    assert_eq!(call(json!({})).0, Allow);
    assert_eq!(
        call(json!({"inputResponses":{"confirm":{"action":"accept"}},"requestState":"s"})).0,
        Allow
    );
    assert_eq!(
        call(json!({"inputResponses":{"confirm":{"action":"decline"}},"requestState":"s"})),
        (Deny, Some("retry".to_string()))
    );
}

#[test]
fn a_2026_07_28_request_may_only_use_that_revisions_methods() {
    let p = policy(json!([{"name":"all","allow":"true"}]));
    for removed in [
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "tasks/list",
        "tasks/result",
    ] {
        assert_eq!(
            decide(&p, &modern(removed, json!({"taskId":"t","uri":"a://b"})))
                .1
                .as_deref(),
            Some(crate::policy::UNKNOWN_METHOD_RULE),
            "{removed}"
        );
    }
    for kept in [
        "server/discover",
        "subscriptions/listen",
        "tasks/get",
        "tools/list",
    ] {
        assert_eq!(
            decide(&p, &modern(kept, json!({"taskId":"t","notifications":{}})))
                .1
                .as_deref(),
            Some("all"),
            "{kept}"
        );
    }
    // Earlier revisions keep their methods, and gain the tasks extension's.
    for legacy in [
        "initialize",
        "ping",
        "tasks/list",
        "tasks/result",
        "tasks/update",
        "subscriptions/listen",
    ] {
        let m = message(
            json!({"jsonrpc":"2.0","id":1,"method":legacy,"params":{"taskId":"t","inputResponses":{},"notifications":{}}}),
        );
        assert_eq!(decide(&p, &m).1.as_deref(), Some("all"), "{legacy}");
    }
}

#[test]
fn rules_on_the_new_variables_are_checked_at_load() {
    for bad in [
        "mcp.task.name == 'x'",
        "mcp.subscription.uris == []",
        "mcp.input.retry == 'yes'",
        "mcp.protocol_version > 3",
    ] {
        let r = crate::policy::Policy::from_config(
            json!({"name":"p","rules":[{"name":"r","allow":bad}]}),
            "policy",
        );
        assert!(r.is_err(), "{bad}");
    }
}

#[test]
fn an_escaped_scope_is_found_too() {
    let sneaky = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[],"cache\u0053cope":"public"}}"#;
    let out = private_cache(sneaky, true)
        .ok()
        .flatten()
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(v["result"]["cacheScope"], "private");
}
