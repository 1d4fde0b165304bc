//! Policies: named CEL rules over the caller's identity and the MCP message.
//!
//! Semantics, in order:
//! 1. any matching `deny` rule denies;
//! 2. every applicable `require` rule (its `when` holds, or it has none) must hold;
//! 3. otherwise the first matching `allow` rule allows — if it declares `scopes` the token
//!    lacks, the answer is 403 `insufficient_scope` instead;
//! 4. otherwise the policy's `default` (deny unless it says `allow`).
//!
//! Rules are compiled once, when the configuration loads. A rule that fails to evaluate
//! (a missing argument, a type mismatch) fails closed: a `deny` counts as matched, a
//! `require` as not satisfied, an `allow` as not matched.

use std::sync::Arc;

use cel::objects::{Key, Map as CelMap};
use cel::{Context, Program, Value as Cel};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{typed, ConfigError};

/// The variables a rule may use.
pub const VARIABLES: &[&str] = &["jwt", "mcp", "request", "source", "connection", "now"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
    Require,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub effect: Effect,
    condition: Program,
    when: Option<Program>,
    pub scopes: Vec<String>,
}

#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub version: String,
    pub default_allow: bool,
    pub rules: Vec<Rule>,
}

/// What the policy decided, and because of which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    /// Allowed by a rule whose scopes the token does not have: 403 with a step-up challenge.
    InsufficientScope(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The deciding rule; `None` when the policy default decided.
    pub rule: Option<String>,
    /// A short explanation (for `explain`, logs and evaluation errors).
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    rules: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    allow: Option<String>,
    #[serde(default)]
    deny: Option<String>,
    #[serde(default)]
    require: Option<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

impl Policy {
    pub fn from_config(value: Value, field: &str) -> Result<Policy, ConfigError> {
        let raw: RawPolicy = typed(value, field)?;
        if raw.name.trim().is_empty() {
            return Err(ConfigError::new(format!("{field}.name"), "must not be empty"));
        }
        let default_allow = match raw.default.as_deref() {
            None | Some("deny") => false,
            Some("allow") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    format!("{field}.default"),
                    format!("must be \"allow\" or \"deny\", not {other:?}"),
                ))
            }
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
        for (i, value) in raw.rules.into_iter().enumerate() {
            let rule_field = format!("{field}.rules[{i}]");
            let rule = Rule::from_config(value, &rule_field)?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(ConfigError::new(
                    format!("{rule_field}.name"),
                    format!("rule name {:?} is used twice", rule.name),
                ));
            }
            rules.push(rule);
        }
        Ok(Policy {
            name: raw.name,
            version: raw.version.unwrap_or_default(),
            default_allow,
            rules,
        })
    }

    /// Evaluates the policy for one message.
    pub fn evaluate(&self, input: &Input) -> Decision {
        let ctx = input.context();
        let scopes = input.scopes();

        for rule in self.rules.iter().filter(|r| r.effect == Effect::Deny) {
            match eval_bool(&rule.condition, &ctx) {
                Ok(false) => {}
                Ok(true) => return decided(Outcome::Deny, rule, "deny rule matched".into()),
                Err(e) => {
                    return decided(
                        Outcome::Deny,
                        rule,
                        format!("deny rule could not be evaluated ({e}); failing closed"),
                    )
                }
            }
        }
        for rule in self.rules.iter().filter(|r| r.effect == Effect::Require) {
            let applies = match &rule.when {
                None => Ok(true),
                Some(when) => eval_bool(when, &ctx),
            };
            let holds = applies.and_then(|a| if a { eval_bool(&rule.condition, &ctx) } else { Ok(true) });
            match holds {
                Ok(true) => {}
                Ok(false) => {
                    return decided(Outcome::Deny, rule, "required condition does not hold".into())
                }
                Err(e) => {
                    return decided(
                        Outcome::Deny,
                        rule,
                        format!("require rule could not be evaluated ({e}); failing closed"),
                    )
                }
            }
        }
        for rule in self.rules.iter().filter(|r| r.effect == Effect::Allow) {
            if eval_bool(&rule.condition, &ctx) == Ok(true) {
                let missing: Vec<String> = rule
                    .scopes
                    .iter()
                    .filter(|s| !scopes.iter().any(|have| have == *s))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    return decided(
                        Outcome::InsufficientScope(rule.scopes.clone()),
                        rule,
                        format!("token lacks scope(s) {}", missing.join(" ")),
                    );
                }
                return decided(Outcome::Allow, rule, "allow rule matched".into());
            }
        }
        Decision {
            outcome: if self.default_allow {
                Outcome::Allow
            } else {
                Outcome::Deny
            },
            rule: None,
            reason: "no rule matched; policy default applies".into(),
        }
    }
}

fn decided(outcome: Outcome, rule: &Rule, reason: String) -> Decision {
    Decision {
        outcome,
        rule: Some(rule.name.clone()),
        reason,
    }
}

impl Rule {
    fn from_config(value: Value, field: &str) -> Result<Rule, ConfigError> {
        let raw: RawRule = typed(value, field)?;
        let _ = raw.description;
        if raw.name.trim().is_empty() {
            return Err(ConfigError::new(format!("{field}.name"), "must not be empty"));
        }
        let (effect, key, source) = match (raw.allow, raw.deny, raw.require) {
            (Some(s), None, None) => (Effect::Allow, "allow", s),
            (None, Some(s), None) => (Effect::Deny, "deny", s),
            (None, None, Some(s)) => (Effect::Require, "require", s),
            _ => {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "rule {:?} needs exactly one of \"allow\", \"deny\" or \"require\"",
                        raw.name
                    ),
                ))
            }
        };
        if raw.when.is_some() && effect != Effect::Require {
            return Err(ConfigError::new(
                format!("{field}.when"),
                "\"when\" only applies to \"require\" rules; fold the condition into the expression",
            ));
        }
        if !raw.scopes.is_empty() && effect != Effect::Allow {
            return Err(ConfigError::new(
                format!("{field}.scopes"),
                "\"scopes\" only applies to \"allow\" rules",
            ));
        }
        let condition = compile(&source, &format!("{field}.{key}"), &raw.name)?;
        let when = match raw.when {
            Some(w) => Some(compile(&w, &format!("{field}.when"), &raw.name)?),
            None => None,
        };
        Ok(Rule {
            name: raw.name,
            effect,
            condition,
            when,
            scopes: raw.scopes,
        })
    }
}

/// Compiles one CEL expression, rejecting unknown variables.
pub fn compile(source: &str, field: &str, rule: &str) -> Result<Program, ConfigError> {
    let program = Program::compile(source).map_err(|errors| {
        let detail = errors
            .errors
            .iter()
            .map(|e| {
                format!(
                    "line {}, column {}: {}",
                    e.pos.0.max(0) + 1,
                    e.pos.1.max(0) + 1,
                    e.msg
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError::new(field, format!("rule {rule:?}: CEL syntax error at {detail}"))
    })?;
    let references = program.references();
    let mut unknown: Vec<&str> = references
        .variables()
        .into_iter()
        .filter(|v| !VARIABLES.contains(v) && !is_bound_in_macro(source, v))
        .collect();
    unknown.sort_unstable();
    if let Some(first) = unknown.first() {
        return Err(ConfigError::new(
            field,
            format!(
                "rule {rule:?}: unknown variable {first:?} (known: {})",
                VARIABLES.join(", ")
            ),
        ));
    }
    Ok(program)
}

/// Whether `name` is the iteration variable of a macro such as `exists(x, …)`.
fn is_bound_in_macro(source: &str, name: &str) -> bool {
    ["all(", "exists(", "exists_one(", "map(", "filter("]
        .iter()
        .any(|m| source.contains(&format!("{m}{name},")) || source.contains(&format!("{m}{name} ,")))
}

fn eval_bool(program: &Program, ctx: &Context) -> Result<bool, String> {
    match program.execute(ctx) {
        Ok(Cel::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("expression gave {:?}, not a bool", other.type_of())),
        Err(e) => Err(e.to_string()),
    }
}

/// The facts a policy decides on.
#[derive(Debug, Default, Clone)]
pub struct Input<'a> {
    pub claims: Option<&'a Map<String, Value>>,
    pub method: &'a str,
    pub tool: Option<(&'a str, Option<&'a Map<String, Value>>)>,
    pub prompt: Option<&'a str>,
    pub resource_uri: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub request: RequestFacts<'a>,
    pub source_address: &'a str,
    pub mtls: bool,
    /// Seconds since the epoch.
    pub now: i64,
}

#[derive(Debug, Default, Clone)]
pub struct RequestFacts<'a> {
    pub path: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub headers: &'a [(String, String)],
}

impl Input<'_> {
    /// Scopes granted by the token: `scope` (space-separated) or `scp` (string or list).
    pub fn scopes(&self) -> Vec<String> {
        scopes_of(self.claims)
    }

    fn context(&self) -> Context<'static, 'static> {
        let mut ctx = Context::default();
        let mut jwt = self.claims.map(|c| json_map(c)).unwrap_or_default();
        jwt.insert(
            key("scopes"),
            Cel::List(Arc::new(self.scopes().into_iter().map(Cel::from).collect())),
        );
        ctx.add_variable_from_value("jwt", map(jwt));

        let (tool_name, arguments) = match self.tool {
            Some((name, args)) => (name, args.map(json_map).unwrap_or_default()),
            None => ("", Default::default()),
        };
        let mcp = map(
            [
                (key("method"), Cel::from(self.method)),
                (
                    key("tool"),
                    map([
                        (key("name"), Cel::from(tool_name)),
                        (key("arguments"), map(arguments)),
                    ]),
                ),
                (
                    key("prompt"),
                    map([(key("name"), Cel::from(self.prompt.unwrap_or("")))]),
                ),
                (
                    key("resource"),
                    map([(key("uri"), Cel::from(self.resource_uri.unwrap_or("")))]),
                ),
                (key("session_id"), Cel::from(self.session_id.unwrap_or(""))),
            ],
        );
        ctx.add_variable_from_value("mcp", mcp);

        let headers: std::collections::HashMap<Key, Cel> = self
            .request
            .headers
            .iter()
            .map(|(k, v)| (key(&k.to_ascii_lowercase()), Cel::from(v.as_str())))
            .collect();
        ctx.add_variable_from_value(
            "request",
            map([
                (key("path"), Cel::from(self.request.path)),
                (key("host"), Cel::from(self.request.host)),
                (key("method"), Cel::from(self.request.method)),
                (key("headers"), map(headers)),
            ]),
        );
        ctx.add_variable_from_value("source", map([(key("address"), Cel::from(self.source_address))]));
        ctx.add_variable_from_value("connection", map([(key("mtls"), Cel::Bool(self.mtls))]));
        let now = chrono::DateTime::from_timestamp(self.now, 0).unwrap_or_default();
        ctx.add_variable_from_value("now", Cel::Timestamp(now.fixed_offset()));
        ctx
    }
}

/// Scopes granted by a token's claims.
pub fn scopes_of(claims: Option<&Map<String, Value>>) -> Vec<String> {
    let Some(claims) = claims else {
        return Vec::new();
    };
    let split = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => split(s),
        (_, Some(Value::String(s))) => split(s),
        (_, Some(Value::Array(items))) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn key(name: &str) -> Key {
    Key::String(Arc::new(name.to_string()))
}

fn map<I: IntoIterator<Item = (Key, Cel)>>(entries: I) -> Cel {
    Cel::Map(CelMap {
        map: Arc::new(entries.into_iter().collect()),
    })
}

fn json_map(obj: &Map<String, Value>) -> std::collections::HashMap<Key, Cel> {
    obj.iter().map(|(k, v)| (key(k), json_to_cel(v))).collect()
}

/// Converts JSON into a CEL value: integers stay integers (`int`, or `uint` beyond i64).
pub fn json_to_cel(value: &Value) -> Cel {
    match value {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Cel::Int(i)
            } else if let Some(u) = n.as_u64() {
                Cel::UInt(u)
            } else {
                Cel::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Cel::from(s.as_str()),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(obj) => map(json_map(obj)),
    }
}
