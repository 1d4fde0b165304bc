use serde_json::{json, Map, Value};

use super::*;

fn policy(value: Value) -> Policy {
    match Policy::from_config(value, "policy") {
        Ok(p) => p,
        Err(e) => panic!("policy should compile: {e}"),
    }
}

fn error(value: Value) -> ConfigError {
    match Policy::from_config(value, "servers[0].policy") {
        Ok(_) => panic!("policy should not compile"),
        Err(e) => e,
    }
}

fn rules(rules: Value) -> Value {
    json!({ "name": "p", "version": "1", "rules": rules })
}

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => panic!("claims must be an object"),
    }
}

/// 2026-03-02T10:30:00Z, a Monday.
const NOW: i64 = 1_772_447_400;

fn call<'a>(
    claims: &'a Map<String, Value>,
    tool: &'a str,
    args: &'a Map<String, Value>,
) -> Input<'a> {
    Input {
        claims: Some(claims),
        method: "tools/call",
        tool: Some((tool, Some(args))),
        now: NOW,
        ..Default::default()
    }
}

fn method<'a>(claims: &'a Map<String, Value>, method: &'a str) -> Input<'a> {
    Input {
        claims: Some(claims),
        method,
        now: NOW,
        ..Default::default()
    }
}

/// Whether the built-in rule lets this method through to the rules.
fn method_allowed(p: &Policy, method: &str) -> bool {
    p.allow_unknown_methods || is_client_method(method)
}

/// This caller's facts for a call of `item` without arguments: what [`Policy::visible`]
/// evaluates.
pub(super) fn for_item<'a>(listing: &Input<'a>, item: Item<'a>) -> Input<'a> {
    let mut input = listing.clone();
    input.tool = None;
    input.prompt = None;
    input.resource_uri = None;
    input.task_id = None;
    input.subscription = None;
    input.input_responses = None;
    input.retry = false;
    match item {
        Item::Tool(name) => {
            input.method = "tools/call";
            input.tool = Some((name, None));
        }
        Item::Prompt(name) => {
            input.method = "prompts/get";
            input.prompt = Some(name);
        }
        Item::Resource(uri) => {
            input.method = "resources/read";
            input.resource_uri = Some(uri);
        }
    }
    input
}

fn decide(p: &Policy, input: &Input) -> (Outcome, Option<String>) {
    let d = p.evaluate(input);
    // Asked again, with whatever was remembered the first time: the same decision.
    assert_eq!(
        p.evaluate(input),
        d,
        "a remembered result changed the decision"
    );
    // Neither the index nor remembered results ever change a decision.
    let ctx = facts::context(&p.env, input, &p.reads, facts::Arguments::Present);
    if method_allowed(p, input.method) {
        assert_eq!(
            p.decide(&mut Some(ctx), input, false),
            d,
            "index changed the decision"
        );
    }
    (d.outcome, d.rule)
}

fn allowed(p: &Policy, input: &Input) -> bool {
    decide(p, input).0 == Outcome::Allow
}

fn eval(expr: &str, input: &Input) -> Result<bool, String> {
    let p = policy(rules(json!([{ "name": "r", "allow": expr }])));
    let ctx = facts::context(&p.env, input, &p.reads, facts::Arguments::Present);
    let rule = p.rules.first().expect("one rule");
    eval_bool(&rule.condition, &ctx)
}

fn no_args() -> Map<String, Value> {
    Map::new()
}

// ---- semantics ---------------------------------------------------------------------------

#[test]
fn deny_beats_allow_whatever_the_order() {
    let p = policy(rules(json!([
        { "name": "everything", "allow": "true" },
        { "name": "no-delete", "deny": "mcp.tool.name == 'delete'" },
    ])));
    let c = claims(json!({}));
    let a = no_args();
    assert_eq!(
        decide(&p, &call(&c, "delete", &a)),
        (Outcome::Deny, Some("no-delete".into()))
    );
    assert_eq!(
        decide(&p, &call(&c, "read", &a)),
        (Outcome::Allow, Some("everything".into()))
    );
}

#[test]
fn default_is_deny_unless_the_policy_says_allow() {
    let c = claims(json!({}));
    let a = no_args();
    let closed = policy(rules(
        json!([{ "name": "only-read", "allow": "mcp.tool.name == 'read'" }]),
    ));
    assert_eq!(
        decide(&closed, &call(&c, "write", &a)),
        (Outcome::Deny, None)
    );
    let mut open = rules(json!([{ "name": "no-write", "deny": "mcp.tool.name == 'write'" }]));
    open["default"] = json!("allow");
    let open = policy(open);
    assert_eq!(
        decide(&open, &call(&c, "other", &a)),
        (Outcome::Allow, None)
    );
    assert_eq!(decide(&open, &call(&c, "write", &a)).0, Outcome::Deny);
    let reason = closed.evaluate(&call(&c, "write", &a)).reason;
    assert!(reason.contains("default"), "{reason}");
}

#[test]
fn every_applicable_require_must_hold() {
    let p = policy(rules(json!([
        { "name": "all", "allow": "true" },
        { "name": "employees", "require": "'employees' in jwt.groups" },
        { "name": "mfa-for-admin", "require": "jwt.amr.exists(m, m == 'mfa')", "when": "mcp.tool.name.startsWith('admin_')" },
    ])));
    let a = no_args();
    let staff = claims(json!({ "groups": ["employees"], "amr": ["pwd"] }));
    let staff_mfa = claims(json!({ "groups": ["employees"], "amr": ["pwd", "mfa"] }));
    let outsider = claims(json!({ "groups": ["contractors"], "amr": ["mfa"] }));
    // `when` false: the requirement does not apply.
    assert!(allowed(&p, &call(&staff, "read", &a)));
    // `when` true: it must hold.
    assert_eq!(
        decide(&p, &call(&staff, "admin_reset", &a)),
        (Outcome::Deny, Some("mfa-for-admin".into()))
    );
    assert!(allowed(&p, &call(&staff_mfa, "admin_reset", &a)));
    // No `when`: it always applies.
    assert_eq!(
        decide(&p, &call(&outsider, "read", &a)),
        (Outcome::Deny, Some("employees".into()))
    );
}

#[test]
fn require_alone_does_not_allow() {
    let p = policy(rules(
        json!([{ "name": "employees", "require": "'employees' in jwt.groups" }]),
    ));
    let c = claims(json!({ "groups": ["employees"] }));
    assert_eq!(
        decide(&p, &call(&c, "read", &no_args())),
        (Outcome::Deny, None)
    );
}

#[test]
fn missing_scopes_answer_insufficient_scope() {
    let p = policy(rules(json!([
        { "name": "write", "allow": "mcp.tool.name == 'write'", "scopes": ["crm.write"] },
        { "name": "read", "allow": "mcp.tool.name == 'read'", "scopes": ["crm.read"] },
    ])));
    let a = no_args();
    let reader = claims(json!({ "scope": "openid crm.read" }));
    let writer = claims(json!({ "scp": ["crm.write"] }));
    assert_eq!(
        decide(&p, &call(&reader, "write", &a)),
        (
            Outcome::InsufficientScope(vec!["crm.write".into()]),
            Some("write".into())
        )
    );
    assert_eq!(
        decide(&p, &call(&reader, "read", &a)),
        (Outcome::Allow, Some("read".into()))
    );
    assert!(allowed(&p, &call(&writer, "write", &a)));
    let reason = p.evaluate(&call(&reader, "write", &a)).reason;
    assert!(reason.contains("crm.write"), "{reason}");
}

#[test]
fn an_allow_with_its_scopes_wins_over_one_without() {
    let p = policy(rules(json!([
        { "name": "admins", "allow": "true", "scopes": ["admin"] },
        { "name": "readers", "allow": "mcp.tool.name == 'read'" },
    ])));
    let c = claims(json!({}));
    let a = no_args();
    assert_eq!(
        decide(&p, &call(&c, "read", &a)),
        (Outcome::Allow, Some("readers".into()))
    );
    assert_eq!(
        decide(&p, &call(&c, "write", &a)),
        (
            Outcome::InsufficientScope(vec!["admin".into()]),
            Some("admins".into())
        )
    );
}

#[test]
fn evaluation_errors_fail_closed() {
    let p = policy(rules(json!([
        { "name": "all", "allow": "true" },
        { "name": "no-delete-unless-admin", "deny": "mcp.tool.name == 'delete' && !('admins' in jwt.groups)" },
        { "name": "owner", "require": "mcp.tool.arguments.owner == 'acme'", "when": "mcp.tool.name == 'push'" },
    ])));
    let no_groups = claims(json!({ "sub": "x" }));
    let a = no_args();
    // A deny that cannot be evaluated (no `groups` claim) denies.
    let d = p.evaluate(&call(&no_groups, "delete", &a));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.rule.as_deref(), Some("no-delete-unless-admin"));
    assert!(d.reason.contains("failing closed"), "{}", d.reason);
    // A require that cannot be evaluated (no `owner` argument) denies.
    assert_eq!(
        decide(&p, &call(&no_groups, "push", &a)),
        (Outcome::Deny, Some("owner".into()))
    );
    let owner = claims(json!({ "owner": "acme" }));
    assert!(allowed(&p, &call(&no_groups, "push", &owner)));
    // An allow that cannot be evaluated does not allow.
    let q = policy(rules(
        json!([{ "name": "sales", "allow": "'sales' in jwt.groups" }]),
    ));
    let d = q.evaluate(&call(&no_groups, "read", &a));
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.reason.contains("could not be evaluated"), "{}", d.reason);
}

#[test]
fn unknown_methods_are_denied_by_the_built_in_rule() {
    let p = policy(rules(json!([{ "name": "all", "allow": "true" }])));
    let c = claims(json!({}));
    for m in [
        "sampling/createMessage",
        "elicitation/create",
        "roots/list",
        "notifications/tools/list_changed",
        "tools/destroy",
        "x",
    ] {
        assert_eq!(
            decide(&p, &method(&c, m)),
            (Outcome::Deny, Some(UNKNOWN_METHOD_RULE.into())),
            "{m}"
        );
    }
    for m in CLIENT_REQUESTS.iter().chain(CLIENT_NOTIFICATIONS) {
        assert!(allowed(&p, &method(&c, m)), "{m}");
    }
    let mut open = rules(json!([{ "name": "all", "allow": "true" }]));
    open["unknown_methods"] = json!("allow");
    assert!(allowed(&policy(open), &method(&c, "vendor/extension")));
}

#[test]
fn responses_are_known_and_have_an_empty_method() {
    let p = policy(rules(json!([
        { "name": "responses", "allow": "mcp.kind == 'response' && mcp.method == ''" },
    ])));
    let c = claims(json!({}));
    assert_eq!(
        decide(&p, &method(&c, "")),
        (Outcome::Allow, Some("responses".into()))
    );
    assert_eq!(decide(&p, &method(&c, "ping")), (Outcome::Deny, None));
}

#[test]
fn policy_options_are_parsed() {
    let mut v = rules(json!([]));
    v["on_deny"] = json!("hide");
    v["unknown_methods"] = json!("allow");
    v["version"] = json!(3);
    v["description"] = json!("d");
    let p = policy(v);
    assert!(p.hide_denied);
    assert!(p.allow_unknown_methods);
    assert_eq!(p.version, "3");
    let p = policy(rules(json!([])));
    assert!(!p.hide_denied && !p.allow_unknown_methods && !p.default_allow);

    let mut v = rules(json!([]));
    v["on_deny"] = json!("silent");
    let e = error(v);
    assert_eq!(e.field, "servers[0].policy.on_deny");
    assert!(e.message.contains("\"explain\" or \"hide\""), "{e}");
}

#[test]
fn building_only_what_the_rules_read_changes_no_result() {
    let c = claims(json!({ "sub": "a", "groups": ["x"], "scope": "read write", "n": 3 }));
    let a = claims(json!({ "q": "x" }));
    let input = Input {
        session_id: Some("s-1"),
        ..call(&c, "tool", &a)
    };
    for expr in [
        "jwt.sub == 'a'",
        "'groups' in jwt",
        "size(jwt) == 5",
        "jwt.scopes == ['read', 'write']",
        "has(jwt.n)",
        "has(jwt.missing)",
        "jwt.missing == 1",
        "jwt.exists(k, k == 'n')",
        "jwt.groups.exists(jwt, jwt == 'x')",
        "mcp.tool.name == 'tool'",
        "size(mcp) == 13",
        "'prompt' in mcp",
        "mcp.resource.name == '' && mcp.prompt.name == ''",
        "mcp.kind == 'request' && mcp.sessionId == 's-1'",
        "mcp.tool.arguments.q == 'x'",
        "mcp.tool == {'name': 'tool', 'arguments': {'q': 'x'}}",
    ] {
        let p = policy(rules(json!([{ "name": "r", "allow": expr }])));
        let rule = p.rules.first().expect("one rule");
        let everything = facts::Reads {
            jwt: facts::Fields::All,
            mcp: facts::Fields::All,
            ..p.reads.clone()
        };
        let some = facts::context(&p.env, &input, &p.reads, facts::Arguments::Present);
        let all = facts::context(&p.env, &input, &everything, facts::Arguments::Present);
        let result = eval_bool(&rule.condition, &some);
        assert_eq!(result, eval_bool(&rule.condition, &all), "{expr}");
        // Not vacuous: these hold (or fail) for a reason.
        if !expr.contains("missing") {
            assert_eq!(result, Ok(true), "{expr}");
        }
    }
    let p = policy(rules(
        json!([{ "name": "r", "allow": "jwt.sub == 'a' && mcp.method == 'x'" }]),
    ));
    assert_eq!(
        p.reads.jwt,
        facts::Fields::Named(["sub".to_string()].into_iter().collect())
    );
}

// ---- listing -----------------------------------------------------------------------------

#[test]
fn a_listing_hides_a_tool_whose_deny_fails_on_a_missing_claim_even_if_it_reads_arguments() {
    // The documented fail-closed pattern, with a clause on the arguments: a token without
    // `groups` is denied every call of hr_ tools, so it is not shown them either.
    let mut v = rules(json!([
        { "name": "hr-only", "deny": "!('hr' in jwt.groups) && (mcp.tool.name.startsWith('hr_') || mcp.tool.arguments.department == 'hr')" },
        { "name": "hr", "allow": "mcp.tool.name.startsWith('hr_')" },
        { "name": "push", "allow": "mcp.tool.name == 'push' && mcp.tool.arguments.owner == 'acme'" },
    ]));
    v["on_deny"] = json!("hide");
    let p = policy(v);
    let service = claims(json!({}));
    let listing = Input {
        claims: Some(&service),
        method: "tools/list",
        now: NOW,
        ..Default::default()
    };
    assert!(!p.lister(&listing).visible(Item::Tool("hr_get_salary")));
    let hr = claims(json!({ "groups": ["hr"] }));
    let hr_listing = Input {
        claims: Some(&hr),
        ..listing.clone()
    };
    let mut lister = p.lister(&hr_listing);
    assert!(lister.visible(Item::Tool("hr_get_salary")));
    assert!(lister.visible(Item::Tool("push")), "the arguments decide");
}

#[test]
fn visible_evaluates_the_rules_as_a_call_without_arguments() {
    let mut v = rules(json!([
        { "name": "connect", "allow": "mcp.method in ['initialize', 'tools/list']" },
        { "name": "read", "allow": "mcp.tool.name in ['get_customer', 'search']" },
        { "name": "admins-delete", "allow": "mcp.tool.name == 'delete' && 'admins' in jwt.groups" },
        { "name": "push", "allow": "mcp.tool.name == 'push' && mcp.tool.arguments.owner in ['acme']" },
        { "name": "no-force", "deny": "mcp.tool.name == 'push' && mcp.tool.arguments.force != false" },
        { "name": "hr-only", "deny": "mcp.tool.name.startsWith('hr_') && !('hr' in jwt.groups)" },
        { "name": "hr", "allow": "mcp.tool.name.startsWith('hr_')" },
        { "name": "branch", "require": "mcp.tool.arguments.branch != 'main'", "when": "mcp.tool.name == 'push'" },
        { "name": "prompts", "allow": "mcp.prompt.name == 'summary'" },
        { "name": "docs", "allow": "mcp.method == 'resources/read' && mcp.resource.uri.startsWith('docs://')" },
    ]));
    v["on_deny"] = json!("hide");
    let p = policy(v);
    let user = claims(json!({ "groups": ["sales"] }));
    let admin = claims(json!({ "groups": ["admins", "hr"] }));
    let listing = Input {
        claims: Some(&user),
        method: "tools/list",
        now: NOW,
        ..Default::default()
    };
    let admin_listing = Input {
        claims: Some(&admin),
        method: "tools/list",
        now: NOW,
        ..Default::default()
    };

    let mut lister = p.lister(&listing);
    assert!(lister.visible(Item::Tool("get_customer")));
    assert!(!lister.visible(Item::Tool("delete")));
    // The arguments decide: some call to `push` could be allowed.
    assert!(lister.visible(Item::Tool("push")));
    assert!(!lister.visible(Item::Tool("hr_salaries")));
    assert!(!lister.visible(Item::Tool("unknown")));
    assert!(lister.visible(Item::Prompt("summary")));
    assert!(!lister.visible(Item::Prompt("other")));
    assert!(lister.visible(Item::Resource("docs://guide")));
    assert!(!lister.visible(Item::Resource("hr://people")));
    for tool in ["get_customer", "delete", "push", "hr_salaries", "unknown"] {
        assert_eq!(
            lister.visible(Item::Tool(tool)),
            lister.visible_unindexed(Item::Tool(tool)),
            "{tool}"
        );
    }

    let mut lister = p.lister(&admin_listing);
    assert!(lister.visible(Item::Tool("delete")));
    assert!(lister.visible(Item::Tool("hr_salaries")));
    // The one-item form agrees.
    assert!(p.visible(&admin_listing, Item::Tool("delete")));
    assert!(!p.visible(&listing, Item::Tool("delete")));
}

#[test]
fn remembered_listing_results_agree_with_evaluating_every_item() {
    let p = policy(rules(json!([
        { "name": "connect", "allow": "mcp.method in ['initialize', 'tools/list']" },
        { "name": "read", "allow": "mcp.tool.name in ['get_a', 'get_b'] || mcp.tool.name.startsWith('read_')" },
        { "name": "no-x", "deny": "mcp.tool.name.contains('x') && !('admins' in jwt.groups)" },
        // Reads the name another way: evaluated for every item.
        { "name": "five", "allow": "size(mcp.tool.name) == 5" },
        { "name": "team", "allow": "mcp.tool.name.endsWith('_team') && jwt.team == 'a'" },
        { "name": "level", "require": "jwt.level > 2", "when": "mcp.tool.name != 'free_team'" },
        { "name": "prompts", "allow": "mcp.prompt.name == 'summary' || mcp.prompt.name.startsWith('p_')" },
        { "name": "docs", "allow": "mcp.resource.uri.startsWith('docs://') && !mcp.resource.name.endsWith('.secret')" },
    ])));
    let tools = [
        "get_a",
        "get_b",
        "read_1",
        "read_x",
        "abcde",
        "xx_team",
        "a_team",
        "free_team",
        "delete",
        "hello",
        "read_2",
        "read_3",
    ];
    let mut items: Vec<Item> = tools.iter().map(|t| Item::Tool(t)).collect();
    items.extend(["summary", "p_1", "other"].map(Item::Prompt));
    items.extend(["docs://a", "docs://b.secret", "hr://x"].map(Item::Resource));
    let mut total = Vec::new();
    for caller in [
        json!({ "groups": [], "team": "a", "level": 3 }),
        json!({ "groups": ["admins"], "team": "b", "level": 1 }),
        json!({}),
    ] {
        let c = claims(caller.clone());
        let listing = Input {
            claims: Some(&c),
            method: "tools/list",
            now: NOW,
            ..Default::default()
        };
        let mut remembering = p.lister(&listing);
        let mut shown = 0;
        for item in &items {
            let expected = p.lister(&listing).visible_unindexed(*item);
            assert_eq!(remembering.visible(*item), expected, "{caller} {item:?}");
            shown += usize::from(expected);
        }
        total.push(shown);
    }
    // The callers see different things, not all or nothing.
    assert!(total.iter().any(|&n| n > 0 && n < items.len()), "{total:?}");
}

#[test]
fn a_long_listing_runs_each_rule_once_per_answer_to_its_name_tests() {
    let p = policy(rules(json!([
        { "name": "read", "allow": "mcp.tool.name in ['a', 'b'] || mcp.tool.name.startsWith('read_')" },
        { "name": "no-drop", "deny": "mcp.tool.name.contains('drop') && !('admins' in jwt.groups)" },
    ])));
    let c = claims(json!({ "groups": [] }));
    let listing = Input {
        claims: Some(&c),
        method: "tools/list",
        now: NOW,
        ..Default::default()
    };
    let names: Vec<String> = (0..500)
        .map(|i| match i % 3 {
            0 => format!("read_{i}"),
            1 => format!("drop_{i}"),
            _ => format!("other_{i}"),
        })
        .collect();
    let mut lister = p.lister(&listing);
    let shown = names
        .iter()
        .filter(|n| lister.visible(Item::Tool(n)))
        .count();
    assert_eq!(shown, 167);
    // read_*, drop_* and other_* differ in one test each: a handful of evaluations, not 1000.
    assert!(lister.known.len() <= 6, "{}", lister.known.len());
}

#[test]
fn visible_hides_what_a_deny_without_arguments_denies() {
    let p = policy(rules(json!([
        { "name": "all", "allow": "true" },
        { "name": "no-drop", "deny": "mcp.tool.name == 'drop_table'" },
        // Fails for a missing claim, not a missing argument: fails closed, as a call would.
        { "name": "contractors", "deny": "mcp.tool.name == 'export' && jwt.contractor" },
        { "name": "only-small", "deny": "mcp.tool.arguments.limit > 100" },
    ])));
    let c = claims(json!({}));
    let listing = Input {
        claims: Some(&c),
        method: "tools/list",
        now: NOW,
        ..Default::default()
    };
    let mut lister = p.lister(&listing);
    assert!(!lister.visible(Item::Tool("drop_table")));
    assert!(!lister.visible(Item::Tool("export")));
    assert!(lister.visible(Item::Tool("query")));
}

#[test]
fn visible_shows_items_that_need_a_step_up() {
    let p = policy(rules(
        json!([{ "name": "write", "allow": "mcp.tool.name == 'write'", "scopes": ["w"] }]),
    ));
    let c = claims(json!({}));
    let listing = Input {
        claims: Some(&c),
        method: "tools/list",
        now: NOW,
        ..Default::default()
    };
    assert!(p.visible(&listing, Item::Tool("write")));
}

#[test]
fn for_item_describes_the_call_visible_evaluates() {
    let c = claims(json!({}));
    let listing = Input {
        claims: Some(&c),
        method: "tools/list",
        now: NOW,
        ..Default::default()
    };
    let call = for_item(&listing, Item::Tool("t"));
    assert_eq!(call.method, "tools/call");
    assert_eq!(call.tool, Some(("t", None)));
    assert_eq!(
        for_item(&listing, Item::Resource("u")).resource_uri,
        Some("u")
    );
    assert_eq!(for_item(&listing, Item::Prompt("p")).method, "prompts/get");
}

// ---- CEL: variables and functions ---------------------------------------------------------

#[test]
fn variables_are_all_there() {
    let c = claims(json!({
        "sub": "alice", "groups": ["sales", "emea"], "scope": "crm.read crm.write",
        "org": { "id": 42, "tier": "gold" }, "email_verified": true,
    }));
    let args = claims(
        json!({ "owner": "acme", "force": false, "n": 3, "labels": ["a", "b"], "nested": { "k": 1.5 } }),
    );
    let headers = vec![
        (":path".to_string(), "/mcp?x=1".to_string()),
        ("X-Team".to_string(), "blue".to_string()),
        ("x-multi".to_string(), "a".to_string()),
        ("x-multi".to_string(), "b".to_string()),
        ("authorization".to_string(), "Bearer secret".to_string()),
    ];
    let input = Input {
        claims: Some(&c),
        method: "tools/call",
        tool: Some(("create_issue", Some(&args))),
        session_id: Some("s-1"),
        request: RequestFacts {
            path: "/mcp?x=1",
            host: "mcp.example.com",
            method: "POST",
            headers: &headers,
            removed: &[],
        },
        source_address: "10.0.0.7",
        mtls: true,
        now: NOW,
        ..Default::default()
    };
    for expr in [
        "jwt.sub == 'alice'",
        "jwt.org.id == 42 && jwt.org.tier == 'gold'",
        "jwt.email_verified",
        "jwt.scopes == ['crm.read', 'crm.write']",
        "'crm.write' in jwt.scopes",
        "mcp.method == 'tools/call' && mcp.methodName == 'tools/call'",
        "mcp.kind == 'request'",
        "mcp.tool.name == 'create_issue'",
        "mcp.tool.arguments.owner == 'acme' && mcp.tool.arguments.force == false",
        "mcp.tool.arguments.n == 3 && mcp.tool.arguments.n < 10",
        "mcp.tool.arguments.nested.k > 1.0",
        "mcp.tool.arguments['labels'][1] == 'b'",
        "mcp.prompt.name == '' && mcp.resource.uri == '' && mcp.resource.name == ''",
        "mcp.session_id == 's-1' && mcp.sessionId == 's-1'",
        "request.path == '/mcp' && request.host == 'mcp.example.com' && request.method == 'POST'",
        "request.headers['x-team'] == 'blue'",
        "request.headers['x-multi'] == 'a, b'",
        "!(':path' in request.headers) && !('authorization' in request.headers)",
        "source.address == '10.0.0.7'",
        "connection.mtls",
        "now == timestamp('2026-03-02T10:30:00Z')",
    ] {
        assert_eq!(eval(expr, &input), Ok(true), "{expr}");
    }
}

#[test]
fn the_usual_cel_functions_work() {
    let c = claims(json!({
        "email": "alice@example.com", "groups": ["sales", "emea"], "roles": [],
        "iat": 1_772_440_000, "auth_time": "2026-03-02T10:20:00Z",
    }));
    let args =
        claims(json!({ "repo": "acme/api", "branch": "feature/x", "files": ["a.rs", "b.rs"] }));
    let input = call(&c, "push_branch", &args);
    for expr in [
        "jwt.email.endsWith('@example.com')",
        "mcp.tool.name.startsWith('push_')",
        "mcp.tool.arguments.repo.contains('/')",
        "mcp.tool.arguments.branch.matches('^feature/[a-z0-9-]+$')",
        "matches(mcp.tool.arguments.repo, '^acme/')",
        "'emea' in jwt.groups",
        "!('admins' in jwt.groups)",
        "jwt.groups.exists(g, g == 'sales')",
        "jwt.groups.all(g, g.size() <= 5)",
        "jwt.groups.exists_one(g, g.startsWith('e'))",
        "jwt.groups.filter(g, g != 'sales') == ['emea']",
        "jwt.groups.map(g, g + '!') == ['sales!', 'emea!']",
        "mcp.tool.arguments.files.all(f, f.endsWith('.rs'))",
        "has(jwt.email) && !has(jwt.phone)",
        "has(mcp.tool.arguments.branch) && !has(mcp.tool.arguments.force)",
        "size(jwt.groups) == 2 && jwt.roles.size() == 0 && size('abc') == 3",
        "now > timestamp('2026-01-01T00:00:00Z') && now < timestamp('2027-01-01T00:00:00Z')",
        "now - timestamp(jwt.auth_time) < duration('15m')",
        "now - duration('1h') > timestamp(jwt.auth_time) - duration('2h')",
        "duration('1h') + duration('30m') == duration('90m')",
        "now.getHours() == 10 && now.getMinutes() == 30",
        "now.getHours('Europe/Paris') == 11",
        "now.getDayOfWeek() == 1 && now.getFullYear() == 2026 && now.getMonth() == 2",
        "int(now - timestamp(int(jwt.iat))) >= 0 || true",
        "type(jwt.groups) == list && type(mcp.tool.name) == string",
        "jwt.groups[0] == 'sales'",
        "string(size(jwt.groups)) == '2'",
        "mcp.tool.name in ['a', 'push_branch'] ? true : false",
    ] {
        assert_eq!(eval(expr, &input), Ok(true), "{expr}");
    }
}

#[test]
fn references_report_comprehension_variables_so_the_checker_walks_the_ast() {
    // What cel-rust's own reference list says: the comprehension variable `x` is reported as
    // a variable. Hence the scope-aware walk in analysis.rs rather than `references()`.
    let program = Program::compile("[1].exists(x, x > 0)").expect("compiles");
    let references = program.references();
    assert!(references.variables().contains(&"x"));
    // The walk knows better: all of these compile.
    for expr in [
        "[1].exists(x, x > 0)",
        "jwt.groups.exists(jwt, jwt == 'a')",
        "{'a': 1}.all(k, k != '')",
        "jwt.groups.exists(g, [g].all(h, h == g))",
        "jwt.groups.map(mcp, mcp.size()).all(n, n > 0)",
    ] {
        assert!(compile(expr, "f", "r").is_ok(), "{expr}");
    }
    // A comprehension variable is not in scope after its macro.
    let e = compile("jwt.groups.exists(g, g == 'a') || g == 'b'", "f", "r")
        .expect_err("g is out of scope");
    assert!(e.message.contains("unknown variable \"g\""), "{e}");
}

// ---- configuration errors -----------------------------------------------------------------

fn rule_error(expr: &str) -> ConfigError {
    error(rules(json!([
        { "name": "first", "allow": "true" },
        { "name": "second", "deny": "false" },
        { "name": "third", "allow": expr },
    ])))
}

#[test]
fn syntax_errors_name_the_rule_field_line_and_column() {
    let e = rule_error("mcp.method ==");
    assert_eq!(e.field, "servers[0].policy.rules[2].allow");
    assert!(
        e.message
            .starts_with("rule \"third\": line 1, column 14: CEL syntax error"),
        "{e}"
    );
    let e = rule_error("mcp.method == 'a' &&\n  jwt.sub ++ 'x'");
    assert!(e.message.contains("line 2, column 12"), "{e}");
    let e = rule_error("");
    assert!(e.message.contains("empty"), "{e}");
}

#[test]
fn unknown_variables_and_fields_are_config_errors() {
    let e = rule_error("user.name == 'x'");
    assert_eq!(e.field, "servers[0].policy.rules[2].allow");
    assert!(e.message.contains("unknown variable \"user\""), "{e}");
    assert!(e.message.contains("line 1, column 1"), "{e}");
    let e = rule_error("jwt.sub == 'a' && mcp.tool.nme == 'x'");
    assert!(e.message.contains("mcp.tool has no field \"nme\""), "{e}");
    assert!(e.message.contains("column 27"), "{e}");
    let e = rule_error("has(mcp.prompt.title)");
    assert!(
        e.message.contains("mcp.prompt has no field \"title\""),
        "{e}"
    );
    let e = rule_error("now.seconds > 3");
    assert!(e.message.contains("a timestamp has no fields"), "{e}");
    // Claims and arguments are open.
    assert!(compile(
        "jwt.anything.deep == 1 && mcp.tool.arguments.x.y == 2",
        "f",
        "r"
    )
    .is_ok());
}

#[test]
fn unknown_functions_are_config_errors() {
    let e = rule_error("mcp.tool.name.lowerAscii() == 'x'");
    assert!(e.message.contains("unknown function \"lowerAscii\""), "{e}");
    let e = rule_error("frobnicate(jwt.sub)");
    assert!(e.message.contains("unknown function \"frobnicate\""), "{e}");
    // Two-variable comprehensions are not among cel-rust's macros.
    let e = rule_error("{'a': 1}.all(k, v, v > 0)");
    assert!(
        e.message.contains("takes a variable and an expression"),
        "{e}"
    );
    let e = rule_error("jwt.groups.exists(1)");
    assert!(
        e.message.contains("takes a variable and an expression"),
        "{e}"
    );
    assert!(compile("optional.of(jwt.sub).hasValue()", "f", "r").is_ok());
}

#[test]
fn detectable_type_errors_are_config_errors() {
    for (expr, wanted) in [
        ("mcp.method > 3", "cannot order a string and a int"),
        (
            "mcp.tool.name == 1",
            "comparing a string with a int is always false",
        ),
        ("now + 1 > now", "+ does not apply to a timestamp and a int"),
        ("mcp.tool.name", "gives a string, not a bool"),
        ("1 + 2", "gives a int, not a bool"),
        ("mcp.method && true", "operands of && must be bools"),
        ("'a' in mcp.method", "`in` needs a list or a map"),
        ("mcp.tool.name.startsWith(1)", "startsWith() takes a string"),
        ("now.startsWith('x')", "works on strings"),
        (
            "mcp.tool.name.getHours() == 1",
            "getHours() works on a timestamp",
        ),
        ("size(now) > 0", "size() needs"),
        ("now > timestamp('yesterday')", "always fails"),
        (
            "now - timestamp('2026-01-01T00:00:00Z') < duration('1 hour')",
            "always fails",
        ),
        ("mcp.tool.name.matches('[a-')", "invalid regular expression"),
        (
            "now.getHours('Mars/Olympus') == 1",
            "not a zone this filter carries",
        ),
        // A real zone, but not one of those built in (.cargo/config.toml).
        ("now.getHours('Asia/Kathmandu') == 1", "Time zones"),
        ("now.getHours('+25:00') == 1", "invalid time zone"),
        ("1 / 0 == 1", "always fails"),
        (
            "mcp.method.all(c, c == 'a')",
            "cannot iterate over a string",
        ),
        ("connection.mtls == 'yes'", "comparing a bool with a string"),
    ] {
        let e = rule_error(expr);
        assert_eq!(e.field, "servers[0].policy.rules[2].allow", "{expr}");
        assert!(e.message.contains(wanted), "{expr}: {e}");
        assert!(e.message.contains("line 1, column"), "{expr}: {e}");
    }
}

#[test]
fn rule_shape_errors_name_the_field() {
    let e = error(rules(
        json!([{ "name": "x", "allow": "true", "deny": "true" }]),
    ));
    assert_eq!(e.field, "servers[0].policy.rules[0]");
    let e = error(rules(
        json!([{ "name": "x", "allow": "true", "when": "true" }]),
    ));
    assert_eq!(e.field, "servers[0].policy.rules[0].when");
    let e = error(rules(
        json!([{ "name": "x", "deny": "true", "scopes": ["a"] }]),
    ));
    assert_eq!(e.field, "servers[0].policy.rules[0].scopes");
    let e = error(rules(
        json!([{ "name": "x", "require": "true", "when": "mcp.nope" }]),
    ));
    assert_eq!(e.field, "servers[0].policy.rules[0].when");
    let e = error(rules(
        json!([{ "name": "x", "allow": "true" }, { "name": "x", "allow": "true" }]),
    ));
    assert_eq!(e.field, "servers[0].policy.rules[1].name");
    let e = error(rules(
        json!([{ "name": "unknown-method", "allow": "true" }]),
    ));
    assert_eq!(e.field, "servers[0].policy.rules[0].name");
    let e = error(rules(
        json!([{ "name": "x", "allow": "true", "effect": "allow" }]),
    ));
    assert_eq!(e.field, "servers[0].policy.rules[0].effect");
    let e = error(json!({ "rules": [] }));
    assert_eq!(e.field, "servers[0].policy.name");
}

#[test]
fn compile_reports_every_error() {
    let errors = Policy::compile(
        rules(json!([
            { "name": "a", "allow": "nope" },
            { "name": "b", "allow": "true" },
            { "name": "c", "deny": "mcp.tool.name ==" },
        ])),
        "",
    )
    .expect_err("two bad rules");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["rules[0].allow", "rules[2].deny"]);
    let at = errors
        .get(1)
        .and_then(|e| e.location.clone())
        .expect("a location");
    assert_eq!(
        (at.line, at.column, at.source_line.as_str()),
        (1, 17, "mcp.tool.name ==")
    );
}

// ---- index -------------------------------------------------------------------------------

#[test]
fn rules_are_indexed_by_the_tools_and_methods_they_name() {
    let p = policy(rules(json!([
        { "name": "one", "allow": "mcp.tool.name == 'a' && jwt.x" },
        { "name": "two", "allow": "'sales' in jwt.groups && mcp.tool.name in ['a', 'b']" },
        { "name": "both", "deny": "mcp.tool.name in ['a', 'b'] && mcp.tool.name == 'b'" },
        { "name": "method", "allow": "mcp.method == 'tools/list'" },
        { "name": "any", "allow": "mcp.tool.name.startsWith('x') || mcp.tool.name == 'c'" },
        { "name": "req", "require": "mcp.tool.name == 'zzz'", "when": "mcp.tool.name == 'c'" },
        { "name": "req-always", "require": "mcp.tool.name != 'd'" },
    ])));
    let tools = |name: &str| {
        p.rules
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.tools().cloned())
    };
    let set = |v: &[&str]| {
        Some(
            v.iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<String>>(),
        )
    };
    assert_eq!(tools("one"), set(&["a"]));
    assert_eq!(tools("two"), set(&["a", "b"]));
    assert_eq!(tools("both"), set(&["b"]));
    assert_eq!(tools("method"), None);
    assert_eq!(tools("any"), None);
    assert_eq!(tools("req"), set(&["c"]));
    assert_eq!(tools("req-always"), None);
    let methods = p
        .rules
        .iter()
        .find(|r| r.name == "method")
        .and_then(|r| r.methods().map(|m| m.iter().cloned().collect()));
    assert_eq!(methods, set(&["tools/list"]));

    // A call to `b` runs neither `one` nor `method` nor `req`.
    let c = claims(json!({ "groups": ["sales"], "x": true }));
    let a = no_args();
    let ran: Vec<String> = p
        .explain(&call(&c, "b", &a))
        .rules
        .into_iter()
        .filter(|r| r.indexed)
        .map(|r| r.name)
        .collect();
    assert_eq!(ran, ["two", "both", "any", "req-always"]);
    for tool in ["a", "b", "c", "d", "x1", ""] {
        decide(&p, &call(&c, tool, &a));
    }
    decide(&p, &method(&c, "tools/list"));
}

#[test]
fn explain_reports_each_rule() {
    let p = policy(rules(json!([
        { "name": "read", "allow": "mcp.tool.name == 'read'" },
        { "name": "sales", "allow": "'sales' in jwt.groups" },
        { "name": "mfa", "require": "jwt.mfa", "when": "mcp.tool.name == 'admin'" },
    ])));
    let c = claims(json!({}));
    let a = no_args();
    let x = p.explain(&call(&c, "read", &a));
    assert_eq!(x.decision.outcome, Outcome::Allow);
    assert!(x.method_known);
    let by_name = |n: &str| x.rules.iter().find(|r| r.name == n).cloned().expect("rule");
    assert_eq!(by_name("read").result, Some(Ok(true)));
    assert!(matches!(by_name("sales").result, Some(Err(_))));
    assert_eq!(by_name("mfa").when, Some(Ok(false)));
    assert_eq!(by_name("mfa").result, None);
}

// ---- performance -------------------------------------------------------------------------

#[test]
fn a_hundred_rule_policy_only_runs_the_rules_of_the_tool_called() {
    let mut list = Vec::new();
    for i in 0..100 {
        list.push(json!({
            "name": format!("tool-{i}"),
            "allow": format!("mcp.tool.name == 'tool_{i}' && 'team-{}' in jwt.groups && mcp.tool.arguments.size() < 10", i % 7),
        }));
    }
    let p = policy(rules(Value::Array(list)));
    let c = claims(json!({ "groups": ["team-3"] }));
    let a = no_args();
    let x = p.explain(&call(&c, "tool_10", &a));
    assert_eq!(x.rules.iter().filter(|r| r.indexed).count(), 1);
    assert_eq!(
        decide(&p, &call(&c, "tool_10", &a)),
        (Outcome::Allow, Some("tool-10".into()))
    );
    assert_eq!(decide(&p, &call(&c, "tool_11", &a)).0, Outcome::Deny);
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        p.evaluate(&call(&c, "tool_10", &a));
    }
    // Generous even for a debug build: building the CEL environment per request (the old
    // `Context::default()`) alone cost about 250 µs.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn positions_count_characters() {
    let e = rule_error("jwt.name == 'Zoë' && mcp.nope");
    assert!(e.message.contains("line 1, column 25"), "{e}");
}

/// `cargo test --release -p mcp-guard --lib policy::tests::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench() {
    let mut list = vec![
        json!({ "name": "connect", "allow": "mcp.method in ['initialize', 'notifications/initialized', 'tools/list', 'ping']" }),
    ];
    for i in 0..99 {
        list.push(json!({
            "name": format!("tool-{i}"),
            "allow": format!("mcp.tool.name == 'tool_{i}' && 'team-{}' in jwt.groups && mcp.tool.arguments.owner in ['acme', 'acme-labs']", i % 7),
        }));
    }
    let p = policy(rules(Value::Array(list)));
    let c = claims(
        json!({ "sub": "alice", "groups": ["team-3", "staff"], "scope": "a b c", "iss": "https://idp", "aud": "x", "exp": 2_000_000_000 }),
    );
    let a = claims(json!({ "owner": "acme", "repo": "api", "branch": "feature/x" }));
    let n = 100_000;
    let started = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(p.evaluate(&call(&c, "tool_10", &a)));
    }
    println!(
        "indexed, 100 rules: {:?} per evaluation",
        started.elapsed() / n
    );
    let ctx_started = std::time::Instant::now();
    for _ in 0..n {
        let input = call(&c, "tool_10", &a);
        let ctx = facts::context(&p.env, &input, &p.reads, facts::Arguments::Present);
        std::hint::black_box(p.decide(&mut Some(ctx), &input, false));
    }
    println!(
        "unindexed, 100 rules: {:?} per evaluation",
        ctx_started.elapsed() / n
    );
    let listing = method(&c, "tools/list");
    let started = std::time::Instant::now();
    let mut lister = p.lister(&listing);
    let names: Vec<String> = (0..99).map(|i| format!("tool_{i}")).collect();
    for _ in 0..1000 {
        for name in &names {
            std::hint::black_box(lister.visible(Item::Tool(name)));
        }
    }
    println!("listing: {:?} per tool", started.elapsed() / (1000 * 99));
}

#[test]
fn the_documented_examples_work() {
    let c = claims(json!({ "groups": ["sre"], "auth_time": 1_772_446_800, "sub": "x" }));
    let args = claims(json!({ "owner": "acme", "files": [{ "path": "src/a.rs" }] }));
    let headers = vec![("x-team".to_string(), "blue".to_string())];
    let input = Input {
        request: RequestFacts {
            headers: &headers,
            ..Default::default()
        },
        ..call(&c, "hr_list", &args)
    };
    for expr in [
        "has(jwt.groups) && 'sre' in jwt.groups",
        "jwt.groups.exists(g, g in ['sre', 'platform'])",
        "mcp.tool.name.startsWith('hr_') || mcp.tool.name.matches('^(create|update|delete)_')",
        "mcp.tool.arguments.owner in ['acme', 'acme-labs'] && !(has(mcp.tool.arguments.force) && mcp.tool.arguments.force)",
        "mcp.tool.arguments.files.all(f, !f.path.startsWith('.github/'))",
        "now >= timestamp('2026-03-02T08:00:00Z') && now < timestamp('2026-03-02T20:00:00Z')",
        "now - timestamp(jwt.auth_time) < duration('15m')",
        "now.getDayOfWeek() in [1, 2, 3, 4, 5] && now.getHours('Europe/Paris') >= 8 && now.getHours('Europe/Paris') < 19",
        "'x-team' in request.headers && !('x-other' in request.headers)",
        "optional.of(jwt.sub).hasValue() && jwt.?nickname.orValue('none') == 'none'",
        "'abc'.matches('b')",
        "{'a': 1, 'b': 2}.filter(k, k != 'a') == ['b']",
        "mcp.kind == 'request'",
    ] {
        assert_eq!(eval(expr, &input), Ok(true), "{expr}");
    }
}

// ---- comparisons a client can turn by changing a value's JSON type -------------------------

/// `mcp.tool.arguments.force == true` is false for `"true"` or `1`, which the Python SDK's
/// server reads as `True`: a deny written so lets a force-push through. Such comparisons are
/// reported at load (the policy still loads) where a mismatch would let a message through, naming what to write.
#[test]
fn comparisons_a_client_turns_by_sending_another_json_type_are_warned_at_load() {
    // The policy loads (an upgrade must not stop a fleet's filters); the warning names the
    // comparison and what to write instead.
    let warning = |value: Value| -> String {
        match Policy::from_config(value, "servers[0].policy") {
            Ok(p) => match p.warnings.first() {
                Some(w) => w.to_string(),
                None => panic!("policy should warn"),
            },
            Err(e) => panic!("policy should load: {e}"),
        }
    };
    let refused = [
        json!({ "name": "r", "deny": "mcp.tool.name == 'push' && mcp.tool.arguments.force == true" }),
        json!({ "name": "r", "deny": "true == mcp.tool.arguments.force" }),
        json!({ "name": "r", "deny": "mcp.tool.arguments['force'] == true" }),
        json!({ "name": "r", "deny": "mcp.tool.arguments.account == 42" }),
        json!({ "name": "r", "deny": "mcp.tool.arguments.account in [1, 2]" }),
        json!({ "name": "r", "deny": "mcp.tool.arguments.amount == 1000.5 || jwt.x" }),
        json!({ "name": "r", "deny": "mcp.tool.arguments.files.exists(f, f.force == true)" }),
        json!({ "name": "r", "deny": "mcp.input.responses.confirm.ok == true" }),
        json!({ "name": "r", "allow": "!(has(mcp.tool.arguments.force) && mcp.tool.arguments.force == true)" }),
        json!({ "name": "r", "allow": "mcp.tool.arguments.force != true" }),
        json!({ "name": "r", "require": "mcp.tool.arguments.dry_run != false" }),
        json!({ "name": "r", "require": "true", "when": "mcp.tool.arguments.force == true" }),
        json!({ "name": "r", "allow": "mcp.tool.arguments.n == 1 ? false : true" }),
    ];
    for rule in refused {
        let w = warning(rules(json!([rule.clone()])));
        assert!(
            w.starts_with("servers[0].policy.rules[0].")
                && w.contains("another JSON type")
                && w.contains("Arguments as the server reads them"),
            "{rule}: {w}"
        );
    }
    let w = warning(rules(json!([
        { "name": "no-force", "deny": "has(mcp.tool.arguments.force) && mcp.tool.arguments.force == true" },
    ])));
    assert!(w.starts_with("servers[0].policy.rules[0].deny: "), "{w}");
    assert!(
        w.contains("line 1, column 59") && w.contains("mcp.tool.arguments.force != false"),
        "{w}"
    );
    let w = warning(json!({ "name": "p", "limits": [
        { "name": "l", "when": "mcp.tool.arguments.bulk == true", "key": "jwt.sub", "rate": "1/second" },
    ] }));
    assert!(w.starts_with("servers[0].policy.limits[0].when: "), "{w}");

    // Where a mismatch refuses, the comparison is the safe way to write the rule: no warning.
    let safe = policy(rules(json!([
        { "name": "a", "deny": "has(mcp.tool.arguments.force) && mcp.tool.arguments.force != false" },
        { "name": "b", "allow": "!has(mcp.tool.arguments.force) || mcp.tool.arguments.force == false" },
        { "name": "c", "allow": "mcp.tool.arguments.limit == 10 && mcp.tool.arguments.mode in [1, 2]" },
        { "name": "d", "require": "mcp.tool.arguments.owner == 'acme' && mcp.tool.arguments.n == 3" },
        { "name": "e", "deny": "int(mcp.tool.arguments.account) == 42 || mcp.tool.arguments.amount > 1000" },
        { "name": "f", "deny": "mcp.tool.arguments.branch in ['main', 'master'] || jwt.level == 3" },
        { "name": "g", "deny": "mcp.tool.arguments.files.exists(f, f.force != false)" },
        { "name": "h", "deny": "mcp.tool.arguments.mode == 'x' && [1].exists(mcp, mcp.tool == 1)" },
    ])));
    assert!(safe.warnings.is_empty(), "{:?}", safe.warnings);
}

/// The safe forms refuse what a converting server would read as the forbidden value.
#[test]
fn the_safe_forms_refuse_values_of_another_json_type() {
    let p = policy(rules(json!([
        { "name": "no-force", "deny": "has(mcp.tool.arguments.force) && mcp.tool.arguments.force != false" },
        { "name": "not-42", "deny": "has(mcp.tool.arguments.account) && int(mcp.tool.arguments.account) == 42" },
        { "name": "push", "allow": "mcp.tool.name == 'push'" },
    ])));
    let who = claims(json!({ "sub": "a" }));
    for (args, outcome) in [
        (json!({}), Outcome::Allow),
        (json!({ "force": false }), Outcome::Allow),
        (json!({ "force": true }), Outcome::Deny),
        (json!({ "force": "true" }), Outcome::Deny),
        (json!({ "force": 1 }), Outcome::Deny),
        (json!({ "force": "false" }), Outcome::Deny),
        (json!({ "account": 41 }), Outcome::Allow),
        (json!({ "account": 42 }), Outcome::Deny),
        (json!({ "account": "42" }), Outcome::Deny),
        (json!({ "account": 42.0 }), Outcome::Deny),
        (json!({ "account": " 42" }), Outcome::Deny),
        (json!({ "account": [42] }), Outcome::Deny),
    ] {
        let args = claims(args);
        let d = p.evaluate(&call(&who, "push", &args));
        assert_eq!(d.outcome, outcome, "{args:?}: {d:?}");
    }
}

/// A listing cannot tell why a rule that reads the arguments failed: a missing claim in it
/// counts as undecided too, and the item is listed though every call of it is denied. A
/// condition on the caller in a rule of its own is decided in listings (docs/policy.md,
/// "Listings").
#[test]
fn a_listing_decides_a_claim_condition_kept_apart_from_the_arguments() {
    let mixed = policy(rules(json!([
        { "name": "hr-only", "deny": "mcp.tool.name == 'hr_export' && (!('hr' in jwt.groups) || mcp.tool.arguments.rows > 100)" },
        { "name": "all", "allow": "true" },
    ])));
    let apart = policy(rules(json!([
        { "name": "hr-only", "deny": "mcp.tool.name == 'hr_export' && !(has(jwt.groups) && 'hr' in jwt.groups)" },
        { "name": "big", "deny": "mcp.tool.name == 'hr_export' && mcp.tool.arguments.rows > 100" },
        { "name": "all", "allow": "true" },
    ])));
    let nobody = claims(json!({ "sub": "x" }));
    let listing = method(&nobody, "tools/list");
    let small = claims(json!({ "rows": 1 }));
    for p in [&mixed, &apart] {
        let d = p.evaluate(&call(&nobody, "hr_export", &small));
        assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    }
    assert!(mixed.visible(&listing, Item::Tool("hr_export")));
    assert!(!apart.visible(&listing, Item::Tool("hr_export")));
    let hr = claims(json!({ "sub": "h", "groups": ["hr"] }));
    assert!(apart.visible(&method(&hr, "tools/list"), Item::Tool("hr_export")));
}

/// A `require` whose `when` fails denies (docs/policy.md, "Errors fail closed"): the
/// requirement is not skipped because its condition could not be read.
#[test]
fn a_require_whose_when_fails_denies() {
    let p = policy(rules(json!([
        { "name": "mfa", "require": "'mfa' in jwt.amr", "when": "jwt.level > 3" },
        { "name": "all", "allow": "true" },
    ])));
    let no_level = claims(json!({ "sub": "a" }));
    let none = claims(json!({}));
    let d = p.evaluate(&call(&no_level, "t", &none));
    assert_eq!(
        (d.outcome.clone(), d.rule.as_deref()),
        (Outcome::Deny, Some("mfa")),
        "{d:?}"
    );
    let low = claims(json!({ "sub": "a", "level": 1 }));
    assert_eq!(p.evaluate(&call(&low, "t", &none)).outcome, Outcome::Allow);
}

/// A deny on one spelling of an address misses the others a mail server delivers alike; the
/// anchored allow-list of docs/policy.md ("Arguments as the server reads them") refuses them.
#[test]
fn recipients_are_checked_as_an_anchored_allow_list() {
    let deny_list = policy(rules(json!([
        { "name": "no-competitor", "deny": "mcp.tool.arguments.to.exists(t, t.endsWith('@competitor.com'))" },
        { "name": "send", "allow": "true" },
    ])));
    let allow_list = policy(rules(json!([
        { "name": "acme-only",
          "require": r#"type(mcp.tool.arguments.to) == list && mcp.tool.arguments.to.all(t, t.matches("(?i)^[a-z0-9._%+-]+@acme\\.com$"))"#,
          "when": "mcp.tool.name == 'send_email'" },
        { "name": "send", "allow": "true" },
    ])));
    let who = claims(json!({ "sub": "a" }));
    let outcome = |p: &Policy, to: Value| {
        let args = claims(json!({ "to": to }));
        p.evaluate(&call(&who, "send_email", &args)).outcome
    };
    for to in [
        json!(["x@Competitor.COM"]),
        json!(["\"X\" <x@competitor.com>"]),
        json!(["x@competitor.com."]),
    ] {
        // The deny-list form lets these through: why the docs advise against it.
        assert_eq!(outcome(&deny_list, to.clone()), Outcome::Allow, "{to}");
        assert_eq!(outcome(&allow_list, to.clone()), Outcome::Deny, "{to}");
    }
    for to in [
        json!("bob@acme.com"),
        json!("[\"bob@acme.com\"]"),
        json!(["bob@acme.com", "eve@acme.com.evil.test"]),
        json!(["bob@acme.com\n"]),
        json!(["bob@acme.com", 7]),
    ] {
        assert_eq!(outcome(&allow_list, to.clone()), Outcome::Deny, "{to}");
    }
    assert_eq!(
        outcome(&allow_list, json!(["bob@acme.com", "Eve.Smith@ACME.com"])),
        Outcome::Allow
    );
}

#[test]
fn one_evaluation_gives_the_decision_and_what_an_allowed_message_owes_its_limits() {
    let p = policy(json!({ "name": "p", "version": "1",
        "rules": [
            { "name": "read", "allow": "mcp.tool.name == 'search'" },
            { "name": "no-delete", "deny": "mcp.tool.name == 'delete'" }
        ],
        "limits": [
            { "name": "per-user", "key": "jwt.sub", "rate": "10/minute" },
            { "name": "searches", "key": "jwt.team", "rate": "5/minute",
              "when": "mcp.tool.name == 'search'", "cost": 2 }
        ] }));
    let c = claims(json!({ "sub": "alice", "team": "sales" }));
    let args = Map::new();
    let allowed = call(&c, "search", &args);
    let (decision, charges) = p.evaluate_charged(&allowed);
    assert_eq!(decision.outcome, Outcome::Allow);
    assert_eq!(decision, p.evaluate(&allowed));
    let charges = charges.expect("the keys evaluate");
    assert_eq!(Ok(charges.clone()), p.charges(&allowed));
    let owed: Vec<_> = charges
        .iter()
        .map(|c| (c.limit, c.key.as_str(), c.cost))
        .collect();
    assert_eq!(owed, [(0, "alice", 1), (1, "sales", 2)]);

    // A denied message owes nothing, though its limits' keys would evaluate.
    let denied = call(&c, "delete", &args);
    let (decision, charges) = p.evaluate_charged(&denied);
    assert_eq!(decision.outcome, Outcome::Deny);
    assert_eq!(charges, Ok(Vec::new()));
    assert_eq!(p.charges(&denied).map(|c| c.len()), Ok(1));

    // A key that cannot be evaluated fails the allowed message closed, naming the limit.
    let anonymous = claims(json!({ "team": "sales" }));
    let (decision, charges) = p.evaluate_charged(&call(&anonymous, "search", &args));
    assert_eq!(decision.outcome, Outcome::Allow);
    assert_eq!(charges.map_err(|e| e.limit), Err(0));
}

/// The rules whose result for a call follows from its method and names alone.
fn remembered_rules(p: &Policy) -> Vec<(&str, bool)> {
    p.rules
        .iter()
        .map(|r| (r.name.as_str(), r.condition_remembered))
        .collect()
}

#[test]
fn only_rules_that_read_the_method_and_names_alone_are_remembered() {
    let p = policy(rules(json!([
        {"name": "discover", "allow": "mcp.method in [\"initialize\", \"tools/list\"]"},
        {"name": "tools", "allow": "mcp.method == \"tools/call\" && (mcp.tool.name in [\"a\", \"b\"] || mcp.tool.name.startsWith(\"read_\"))"},
        {"name": "kind", "allow": "mcp.kind == \"notification\" || mcp.prompt.name == \"p\" || mcp.resource.uri.startsWith(\"file:\")"},
        {"name": "comprehension", "allow": "[\"x\", \"y\"].exists(mcp, mcp == \"x\") && mcp.methodName.size() > 3"},
        {"name": "claims", "allow": "mcp.tool.name == \"c\" && \"admins\" in jwt.groups"},
        {"name": "session", "allow": "mcp.tool.name == \"d\" && mcp.session_id != \"\""},
        {"name": "arguments", "allow": "mcp.tool.name == \"e\" && mcp.tool.arguments.x == 1"},
        {"name": "presence", "allow": "has(mcp.tool.name)"},
        {"name": "name-read-otherwise", "allow": "mcp.tool.name.size() == 3"},
        {"name": "time", "allow": "mcp.tool.name == \"f\" && now > timestamp(\"2020-01-01T00:00:00Z\")"},
        {"name": "header", "allow": "mcp.tool.name == \"g\" && request.headers[\"x-a\"] == \"1\""},
        {"name": "version", "allow": "mcp.protocolVersion == \"2025-11-25\""},
    ])));
    assert_eq!(
        remembered_rules(&p),
        [
            ("discover", true),
            ("tools", true),
            ("kind", true),
            ("comprehension", true),
            ("claims", false),
            ("session", false),
            ("arguments", false),
            ("presence", false),
            ("name-read-otherwise", false),
            ("time", false),
            ("header", false),
            ("version", false),
        ]
    );
}

#[test]
fn a_remembered_result_decides_a_repeated_call_as_running_the_rule_would() {
    let p = policy(json!({
        "name": "p", "version": "1",
        "rules": [
            {"name": "no-delete", "deny": "mcp.tool.name == \"delete\" && !(\"admins\" in jwt.groups)"},
            {"name": "read-only", "allow": "mcp.method == \"tools/call\" && (mcp.tool.name in [\"get\", \"list\"] || mcp.tool.name.startsWith(\"read_\"))"},
            {"name": "broken", "allow": "mcp.tool.name == \"broken\" && [1, 2][mcp.method.size()] == 1"},
            {"name": "admins", "allow": "\"admins\" in jwt.groups"},
        ]
    }));
    let user = claims(json!({"sub": "u", "groups": ["staff"]}));
    let admin = claims(json!({"sub": "a", "groups": ["admins"]}));
    let args = Map::new();
    for _ in 0..3 {
        for (who, tool, outcome, rule) in [
            (&user, "get", Outcome::Allow, Some("read-only")),
            (&user, "read_x", Outcome::Allow, Some("read-only")),
            (&admin, "read_y", Outcome::Allow, Some("read-only")),
            (&user, "put", Outcome::Deny, None),
            (&admin, "put", Outcome::Allow, Some("admins")),
            (&user, "delete", Outcome::Deny, Some("no-delete")),
            (&admin, "delete", Outcome::Allow, Some("admins")),
            // A rule that fails fails the same way when its result is remembered.
            (&user, "broken", Outcome::Deny, None),
            (&admin, "broken", Outcome::Allow, Some("admins")),
        ] {
            let d = p.evaluate(&call(who, tool, &args));
            assert_eq!(
                (d.outcome, d.rule.as_deref()),
                (outcome, rule),
                "{tool} by {who:?}: {}",
                d.reason
            );
        }
    }
    // read-only: one result per combination of its tests passed ("get"; "read_x" and
    // "read_y"; "put", "delete" and "broken", which pass none); broken: one ("broken", the
    // only tool the index asks it about). "delete" by a user never reaches the allow rules.
    assert_eq!(p.remembered.len(), 4);

    // The method is part of what is remembered.
    let p = policy(rules(json!([
        {"name": "tools", "allow": "mcp.method.startsWith(\"tools/\") && mcp.tool.name == \"get\""},
    ])));
    for _ in 0..2 {
        for (m, outcome) in [
            ("tools/call", Outcome::Allow),
            ("prompts/get", Outcome::Deny),
        ] {
            let input = Input {
                tool: Some(("get", None)),
                ..method(&user, m)
            };
            assert_eq!(p.evaluate(&input).outcome, outcome, "{m}");
        }
    }
    assert_eq!(p.remembered.len(), 2);
}

/// With `unknown_methods: allow` the caller chooses the method, up to the body's size: a
/// long one is never kept (found by a review: eight megabyte methods per rule were).
#[test]
fn a_long_method_is_decided_but_not_remembered() {
    let mut all: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("d{i}"), "deny": format!("mcp.method.startsWith(\"bad/{i}\")")}))
        .collect();
    all.push(json!({"name": "ok", "allow": "true"}));
    let p = policy(json!({"name": "p", "version": "1", "unknown_methods": "allow", "rules": all}));
    let who = claims(json!({"sub": "u"}));
    for k in 0..8u8 {
        let long = format!("{}{}", char::from(b'a' + k), "x".repeat(100_000));
        assert_eq!(p.evaluate(&method(&who, &long)).outcome, Outcome::Allow);
        let denied = format!("bad/3{}", "x".repeat(100_000));
        assert_eq!(p.evaluate(&method(&who, &denied)).outcome, Outcome::Deny);
    }
    assert_eq!(p.remembered.method_bytes(), 0);
    // Short ones are.
    assert_eq!(p.evaluate(&method(&who, "x/y")).outcome, Outcome::Allow);
    assert_eq!(
        p.remembered.method_bytes(),
        3 * 21,
        "20 deny rules and the allow rule"
    );
}

#[test]
fn remembered_results_are_bounded() {
    let store = remembered::Remembered::default();
    for i in 0..10_000usize {
        let method = format!("m/{}", i % 50);
        store.put(
            i % 300,
            Part::Condition,
            (i / 300) as u64,
            &method,
            Tri::True,
        );
        assert!(store.len() <= 4096);
    }
    assert!(store.len() > 0);
}

/// A limit keyed by a claim (`jwt.sub`), without `when` and with a fixed cost, is charged from
/// the claims without a CEL context: the same charge, or the same error, as CEL gives.
#[test]
fn a_claim_key_charges_as_cel_would() {
    let p = policy(json!({
        "name": "p", "version": "1",
        "rules": [{"name": "all", "allow": "true"}],
        "limits": [
            {"name": "by-sub", "key": "jwt.sub", "rate": "10/second"},
            {"name": "by-team", "key": "jwt.team", "rate": "10/second", "cost": 3},
            {"name": "free", "key": "jwt.sub", "rate": "10/second", "cost": 0},
            {"name": "scopes", "key": "jwt.scopes[0]", "rate": "10/second"},
            {"name": "when", "key": "jwt.sub", "rate": "10/second", "when": "mcp.method != \"ping\""},
            {"name": "costly", "key": "jwt.sub", "rate": "10/second", "cost": "size(jwt.sub)"},
        ],
    }));
    let fast: Vec<bool> = [
        json!({"sub": "alice"}),
        json!({"sub": "alice"}),
        json!({"sub": "alice"}),
    ]
    .iter()
    .zip(&p.limits)
    .enumerate()
    .map(|(i, (c, limit))| limit.charge_by_claim(i, Some(&claims(c.clone()))).is_some())
    .collect();
    assert_eq!(fast, [true, false, true], "by-team has no team claim here");
    assert!(p.limits.iter().skip(3).enumerate().all(|(i, l)| l
        .charge_by_claim(i + 3, Some(&claims(json!({"sub": "a", "scopes": "x"}))))
        .is_none()));
    let long = "x".repeat(600);
    for c in [
        json!({"sub": "alice", "team": "red", "scope": "a b"}),
        json!({"sub": "é", "team": "", "scope": "a"}),
        json!({"sub": 42, "team": "red", "scope": "a"}),
        json!({"team": "red", "scope": "a"}),
        json!({"sub": long, "team": ["red"], "scope": "a"}),
        json!({"sub": null, "team": {"a": 1}, "scope": "a"}),
        json!({"sub": "s", "team": "t", "scope": "a", "scopes": "not the scopes"}),
    ] {
        let c = claims(c);
        let input = method(&c, "tools/list");
        let ctx = facts::context(&p.env, &input, &p.reads, facts::Arguments::Absent);
        let by_cel: Result<Vec<Charge>, ChargeError> = p
            .limits
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.charge(i, &ctx).transpose())
            .collect();
        assert_eq!(p.charges(&input), by_cel, "{c:?}");
    }
}
