//! Calls and listings are decided by one walk ([`Policy::walk`]): for a policy that does not read
//! the arguments, a listing shows an item exactly when a call of it without arguments is not
//! denied (allowed, or refused for missing scopes only: a step-up opens it).

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::tests::for_item;
use super::*;

/// Conditions over the item, the method and the caller, none reading the arguments: name tests
/// the listing remembers, opaque reads of the name, claims that may be missing (an evaluation
/// error, which fails closed) and combinations.
const CONDITIONS: &[&str] = &[
    "true",
    "false",
    r#"mcp.tool.name == "a""#,
    r#"mcp.tool.name in ["a", "b"]"#,
    r#"mcp.tool.name.startsWith("r")"#,
    r#"mcp.tool.name != "zz""#,
    "size(mcp.tool.name) > 1",
    r#"mcp.prompt.name == "p""#,
    r#"mcp.resource.uri.startsWith("docs://")"#,
    r#"mcp.method == "tools/call""#,
    r#"mcp.method == "prompts/get""#,
    r#"jwt.team == "a""#,
    r#""admins" in jwt.groups"#,
    "jwt.level > 2",
    "has(jwt.team)",
    r#"mcp.tool.name.startsWith("r") && jwt.team == "a""#,
    r#"mcp.tool.name == "b" || "admins" in jwt.groups"#,
    r#"mcp.prompt.name == "q" || jwt.level > 2"#,
];

const TOOLS: &[&str] = &["a", "b", "r1", "rr", "zz", "x"];
const PROMPTS: &[&str] = &["p", "q"];
const RESOURCES: &[&str] = &["docs://x", "hr://y"];

fn callers() -> Vec<Map<String, Value>> {
    [
        json!({}),
        json!({ "team": "a", "groups": [], "level": 3, "scope": "s1" }),
        json!({ "team": "b", "groups": ["admins"], "level": 1 }),
        json!({ "groups": "not a list", "level": "high", "scope": "s1 s2" }),
    ]
    .into_iter()
    .filter_map(|c| match c {
        Value::Object(m) => Some(m),
        _ => None,
    })
    .collect()
}

/// One rule: effect (0 allow, 1 deny, 2 require), condition, `when` of a require rule (an
/// index past the end: none), scopes of an allow rule (0 none, 1 `s1`, 2 `s2`).
type RawRule = (u8, usize, usize, u8);

fn rule_json(i: usize, (effect, condition, when, scopes): RawRule) -> Value {
    let condition = CONDITIONS[condition % CONDITIONS.len()];
    let name = format!("r{i}");
    match effect % 3 {
        0 => {
            let scopes: &[&str] = match scopes % 3 {
                0 => &[],
                1 => &["s1"],
                _ => &["s2"],
            };
            json!({ "name": name, "allow": condition, "scopes": scopes })
        }
        1 => json!({ "name": name, "deny": condition }),
        _ => match CONDITIONS.get(when) {
            Some(when) => json!({ "name": name, "require": condition, "when": when }),
            None => json!({ "name": name, "require": condition }),
        },
    }
}

fn items() -> Vec<Item<'static>> {
    let mut items: Vec<Item> = TOOLS.iter().map(|t| Item::Tool(t)).collect();
    items.extend(PROMPTS.iter().map(|p| Item::Prompt(p)));
    items.extend(RESOURCES.iter().map(|r| Item::Resource(r)));
    items
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn an_item_is_listed_exactly_when_a_call_of_it_is_not_denied(
        rules in prop::collection::vec(
            (0u8..3, 0..CONDITIONS.len(), 0..CONDITIONS.len() * 2, 0u8..3),
            0..7,
        ),
        default_allow in any::<bool>(),
    ) {
        let rules: Vec<Value> = rules.into_iter().enumerate().map(|(i, r)| rule_json(i, r)).collect();
        let config = json!({
            "name": "walk",
            "default": if default_allow { "allow" } else { "deny" },
            "rules": rules,
        });
        let policy = match Policy::compile(config.clone(), "") {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("{config}: {e:?}"))),
        };
        prop_assert!(!policy.reads_arguments());
        for claims in callers() {
            let listing = Input {
                claims: Some(&claims),
                method: "tools/list",
                now: 1_772_447_400,
                ..Default::default()
            };
            let mut lister = policy.lister(&listing);
            for item in items() {
                let call = policy.evaluate(&for_item(&listing, item));
                let not_denied = call.outcome != Outcome::Deny;
                prop_assert_eq!(
                    lister.visible(item),
                    not_denied,
                    "{} caller {:?} item {:?}: call {:?}",
                    config,
                    claims,
                    item,
                    call
                );
                prop_assert_eq!(policy.visible(&listing, item), not_denied);
            }
        }
    }
}
