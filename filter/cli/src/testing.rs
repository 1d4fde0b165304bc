//! `mcp-guard test`: the test cases kept beside a policy (`NAME.tests.yaml`), like `opa test`.
//!
//! ```yaml
//! now: "2026-03-02T10:30:00Z"        # default time of the cases (default: the current time)
//! identities:                        # named claim sets, used with `as:`
//!   alice: { sub: alice, groups: [sales], scope: "crm.read" }
//! cases:
//!   - name: sales reads a customer
//!     as: alice                      # or claims: { ... }
//!     message: { method: tools/call, params: { name: get_customer, arguments: { id: 7 } } }
//!     expect: allow                  # allow | deny | insufficient_scope
//!     rule: read-only-tools          # the deciding rule; null: the policy default
//!   - name: sales does not see delete_customer
//!     as: alice
//!     list: { tool: delete_customer }  # or prompt: NAME, resource: URI
//!     expect: hidden                   # visible | hidden
//! ```
//!
//! Optional per case: `now`, `headers` (a mapping), `source` (address), `mtls`, `scopes` (the
//! scopes an `insufficient_scope` answer asks for), `spent` (limit name → what the message's key
//! already spent in the current window: with it a case can `expect: limited`).
//!
//! ```yaml
//!   - name: the 101st email in an hour is limited
//!     as: alice
//!     spent: { per-engineer-email: 100 }
//!     message: { method: tools/call, params: { name: send_email, arguments: {} } }
//!     expect: limited
//!     rule: limit:per-engineer-email
//! ```

use std::fmt::Write as _;
use std::path::Path;

use mcp_guard::policy::{Item, Outcome, Policy};
use serde_json::{Map, Value};

use super::files;
use super::scenario::{self, Scenario};

#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

impl Summary {
    pub fn add(&mut self, other: Summary) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

const CASE_KEYS: &[&str] = &[
    "name",
    "description",
    "as",
    "claims",
    "message",
    "list",
    "expect",
    "rule",
    "scopes",
    "now",
    "headers",
    "source",
    "mtls",
    "spent",
];

/// Runs the test file `tests` against `policy`, printing a line per failure (and per case
/// when `verbose`). A test file that cannot be read counts as one failure.
pub fn run(policy: &Policy, tests: &Path, verbose: bool, out: &mut String) -> Summary {
    let mut summary = Summary::default();
    let doc = match files::read_document(tests) {
        Ok(doc) => doc,
        Err(e) => {
            let _ = writeln!(out, "  FAIL  {e}");
            summary.failed += 1;
            return summary;
        }
    };
    let file = match TestFile::parse(&doc) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(out, "  FAIL  {}: {e}", tests.display());
            summary.failed += 1;
            return summary;
        }
    };
    if file.cases.is_empty() {
        let _ = writeln!(out, "  warning: {} has no cases", tests.display());
    }
    for (i, case) in file.cases.iter().enumerate() {
        let name = case
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("cases[{i}]"));
        match run_case(policy, &file, case) {
            Ok(()) => {
                summary.passed += 1;
                if verbose {
                    let _ = writeln!(out, "  ok    {name}");
                }
            }
            Err(why) => {
                summary.failed += 1;
                let _ = writeln!(out, "  FAIL  {name}: {why}");
            }
        }
    }
    summary
}

struct TestFile {
    now: Option<i64>,
    identities: Map<String, Value>,
    cases: Vec<Map<String, Value>>,
}

impl TestFile {
    fn parse(doc: &Value) -> Result<TestFile, String> {
        let Value::Object(top) = doc else {
            return Err("a test file is a mapping with `cases`".into());
        };
        if let Some(unknown) = top
            .keys()
            .find(|k| !["now", "identities", "cases", "description"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown key {unknown:?} (known: now, identities, cases, description)"
            ));
        }
        let now = top
            .get("now")
            .map(scenario::parse_time)
            .transpose()
            .map_err(|e| format!("now: {e}"))?;
        let identities = match top.get("identities") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("identities: must be a mapping of name to claims".into()),
        };
        let cases = match top.get("cases") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, c)| match c {
                    Value::Object(m) => Ok(m.clone()),
                    _ => Err(format!("cases[{i}]: must be a mapping")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("cases: must be a list".into()),
            None => return Err("no `cases`".into()),
        };
        Ok(TestFile {
            now,
            identities,
            cases,
        })
    }
}

/// What a case expects.
enum Expect {
    Outcome(&'static str),
    Visible(bool),
}

fn run_case(policy: &Policy, file: &TestFile, case: &Map<String, Value>) -> Result<(), String> {
    if let Some(unknown) = case.keys().find(|k| !CASE_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key {unknown:?} (known: {})",
            CASE_KEYS.join(", ")
        ));
    }
    let claims = match (case.get("as"), case.get("claims")) {
        (Some(_), Some(_)) => return Err("give `as` or `claims`, not both".into()),
        (Some(Value::String(who)), None) => match file.identities.get(who) {
            Some(Value::Object(c)) => c.clone(),
            Some(_) => return Err(format!("identity {who:?} is not a mapping of claims")),
            None => return Err(format!("no identity {who:?} in `identities`")),
        },
        (Some(_), None) => return Err("`as` names an identity".into()),
        (None, Some(Value::Object(c))) => c.clone(),
        (None, Some(_)) => return Err("`claims` must be a mapping".into()),
        (None, None) => Map::new(),
    };
    let mut scene = Scenario::new(claims);
    if let Some(now) = case
        .get("now")
        .map(scenario::parse_time)
        .transpose()?
        .or(file.now)
    {
        scene.now = now;
    }
    match case.get("headers") {
        None => {}
        Some(Value::Object(headers)) => {
            for (name, value) in headers {
                let value = value
                    .as_str()
                    .ok_or_else(|| format!("headers.{name}: must be a string"))?;
                scene.set_header(name, value);
            }
        }
        Some(_) => return Err("`headers` must be a mapping".into()),
    }
    if let Some(source) = case.get("source") {
        scene.source = source
            .as_str()
            .ok_or("`source` must be an address")?
            .to_string();
    }
    if let Some(mtls) = case.get("mtls") {
        scene.mtls = mtls.as_bool().ok_or("`mtls` must be true or false")?;
    }

    let expect = match case.get("expect").and_then(Value::as_str) {
        Some("allow") => Expect::Outcome("allow"),
        Some("deny") => Expect::Outcome("deny"),
        Some("insufficient_scope") => Expect::Outcome("insufficient_scope"),
        Some("limited") => Expect::Outcome("limited"),
        Some("visible") => Expect::Visible(true),
        Some("hidden") => Expect::Visible(false),
        _ => {
            return Err(
                "`expect` must be allow, deny, insufficient_scope, limited (with `message`), or visible, hidden (with `list`)"
                    .into(),
            )
        }
    };

    match (expect, case.get("message"), case.get("list")) {
        (Expect::Outcome(wanted), Some(message), None) => {
            let bytes = scenario::message_bytes(message)?;
            let message = scenario::parse_message(&bytes)?;
            let input = scene.input(&message);
            let mut decision = policy.evaluate(&input);
            let mut got = match &decision.outcome {
                Outcome::Allow => "allow",
                Outcome::Deny => "deny",
                Outcome::InsufficientScope(_) => "insufficient_scope",
            };
            let spent = spent_budgets(policy, case.get("spent"))?;
            if got == "allow" {
                if let Some((verdict, rule, reason)) = limit_verdict(policy, &input, &spent) {
                    got = verdict;
                    decision.rule = Some(rule);
                    decision.reason = reason;
                }
            }
            let by = match &decision.rule {
                Some(rule) => format!("by rule {rule:?}"),
                None => "by the policy default".to_string(),
            };
            if got != wanted {
                return Err(format!(
                    "expected {wanted}, got {got} {by} ({}) for {}",
                    decision.reason,
                    scenario::describe(&message)
                ));
            }
            if let Some(rule) = case.get("rule") {
                let wanted_rule = match rule {
                    Value::Null => None,
                    Value::String(s) => Some(s.as_str()),
                    _ => {
                        return Err(
                            "`rule` must be a rule name, or null for the policy default".into()
                        )
                    }
                };
                if decision.rule.as_deref() != wanted_rule {
                    let wanted_by = match wanted_rule {
                        Some(r) => format!("by rule {r:?}"),
                        None => "by the policy default".to_string(),
                    };
                    return Err(format!(
                        "{got} as expected, but {by}, not {wanted_by} ({})",
                        decision.reason
                    ));
                }
            }
            if let Some(scopes) = case.get("scopes") {
                let wanted: Vec<&str> = scopes
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .ok_or("`scopes` must be a list")?;
                let got: Vec<&str> = match &decision.outcome {
                    Outcome::InsufficientScope(s) => s.iter().map(String::as_str).collect(),
                    _ => Vec::new(),
                };
                if got != wanted {
                    return Err(format!(
                        "the challenge asks for scopes {got:?}, not {wanted:?}"
                    ));
                }
            }
            Ok(())
        }
        (Expect::Visible(wanted), None, Some(list)) => {
            let item = match list {
                Value::Object(m) if m.len() == 1 => match m.iter().next() {
                    Some((kind, Value::String(name))) => (kind.clone(), name.clone()),
                    _ => {
                        return Err(
                            "`list` is { tool: NAME }, { prompt: NAME } or { resource: URI }"
                                .into(),
                        )
                    }
                },
                _ => {
                    return Err(
                        "`list` is { tool: NAME }, { prompt: NAME } or { resource: URI }".into(),
                    )
                }
            };
            let target = match item.0.as_str() {
                "tool" => Item::Tool(&item.1),
                "prompt" => Item::Prompt(&item.1),
                "resource" => Item::Resource(&item.1),
                other => {
                    return Err(format!(
                        "`list` names a tool, prompt or resource, not a {other}"
                    ))
                }
            };
            let listing = scene.listing();
            let got = policy.visible(&listing, target);
            if got != wanted {
                let word = |v: bool| if v { "visible" } else { "hidden" };
                return Err(format!(
                    "expected {} {:?} to be {}, but it is {}",
                    item.0,
                    item.1,
                    word(wanted),
                    word(got)
                ));
            }
            if case.contains_key("rule") || case.contains_key("scopes") {
                return Err("`rule` and `scopes` apply to `message` cases, not `list` ones".into());
            }
            Ok(())
        }
        (Expect::Outcome(_), _, _) => Err(
            "allow, deny, insufficient_scope and limited need a `message` (and no `list`)".into(),
        ),
        (Expect::Visible(_), _, _) => {
            Err("visible and hidden need a `list` (and no `message`)".into())
        }
    }
}

/// `spent`: limit name → amount already spent by the message's key.
fn spent_budgets(
    policy: &Policy,
    spent: Option<&Value>,
) -> Result<std::collections::HashMap<String, u64>, String> {
    let mut out = std::collections::HashMap::new();
    match spent {
        None => {}
        Some(Value::Object(m)) => {
            for (name, amount) in m {
                if !policy.limits.iter().any(|l| &l.name == name) {
                    let known: Vec<&str> = policy.limits.iter().map(|l| l.name.as_str()).collect();
                    return Err(format!(
                        "spent: the policy has no limit {name:?} (it has: {})",
                        known.join(", ")
                    ));
                }
                let amount = amount
                    .as_u64()
                    .ok_or_else(|| format!("spent.{name}: must be a whole number"))?;
                out.insert(name.clone(), amount);
            }
        }
        Some(_) => return Err("`spent` must be a mapping of limit name to amount".into()),
    }
    Ok(out)
}

/// What the limits make of an allowed message, given what its keys already spent: `limited`
/// when one has no room for the message's cost (a local limit holds `burst`, a global one the
/// rate's N per window), `deny` when one cannot be evaluated (fails closed); `None`: allowed.
fn limit_verdict(
    policy: &Policy,
    input: &mcp_guard::policy::Input,
    spent: &std::collections::HashMap<String, u64>,
) -> Option<(&'static str, String, String)> {
    let charges = match policy.charges(input) {
        Ok(c) => c,
        Err(e) => {
            let name = policy
                .limits
                .get(e.limit)
                .map(|l| l.name.as_str())
                .unwrap_or("");
            return Some(("deny", format!("limit:{name}"), e.reason));
        }
    };
    for charge in charges {
        let limit = policy.limits.get(charge.limit)?;
        let budget = match limit.scope {
            mcp_guard::policy::Scope::Local => limit.burst,
            mcp_guard::policy::Scope::Global => limit.rate.amount,
        };
        let already = spent.get(&limit.name).copied().unwrap_or(0);
        if already.saturating_add(charge.cost) > budget {
            return Some((
                "limited",
                format!("limit:{}", limit.name),
                format!(
                    "key {:?} spent {already} of {budget} ({}), the message costs {}",
                    charge.key, limit.rate, charge.cost
                ),
            ));
        }
    }
    None
}
