//! Policies: named CEL rules over the caller's identity and the MCP message.
//!
//! Semantics, in order (docs/policy.md has the full reference):
//! 0. a message whose method is not one an MCP client sends is denied by the built-in rule
//!    [`UNKNOWN_METHOD_RULE`], unless the policy says `unknown_methods: allow`;
//! 1. any matching `deny` rule denies;
//! 2. every applicable `require` rule (its `when` holds, or it has none) must hold;
//! 3. otherwise any matching `allow` rule allows — if every matching `allow` rule declares
//!    `scopes` the token lacks, the answer is 403 `insufficient_scope` (with the first such
//!    rule's scopes) instead;
//! 4. otherwise the policy's `default` (deny unless it says `allow`).
//!
//! Rules are compiled and checked once, when the configuration loads: syntax, unknown variables
//! and fields, unknown functions and the type errors that can be seen without running the rule
//! are configuration errors naming the rule's field and the line and column in the expression.
//! A rule that fails to evaluate (a missing argument or claim, a type mismatch) fails closed: a
//! `deny` counts as matched, a `require` as not satisfied, an `allow` as not matched.
//!
//! Requests only evaluate the rules that can apply to them: a rule with a conjunct such as
//! `mcp.tool.name == "x"`, `mcp.tool.name in [...]` or `mcp.method == "..."` is indexed under
//! those tools and methods, so a call to another tool never runs it.

mod analysis;
mod facts;
mod functions;
mod items;
pub mod limit;
mod loose;
mod remembered;

use std::collections::{BTreeSet, HashMap};

/// A map keyed by what the configuration names (rule indexes, tool names): hashed with
/// foldhash, several times faster than SipHash in Wasm; callers cannot choose what is stored.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
use std::fmt;
use std::sync::Arc;

use cel::{Context, Env, Program, Value as Cel};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{typed, ConfigError};

pub use facts::json_to_cel;
pub use limit::{Charge, ChargeError, FailureMode, Limit, Scope};

/// The variables a rule may use.
pub const VARIABLES: &[&str] = &["jwt", "mcp", "request", "source", "connection", "now"];

/// The name of the built-in rule that denies methods no MCP client sends (see
/// [`is_client_method`]). No policy rule may use it.
pub const UNKNOWN_METHOD_RULE: &str = "unknown-method";

pub use crate::methods::{is_client_method, CLIENT_NOTIFICATIONS, CLIENT_REQUESTS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
    Require,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Require => "require",
        }
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub effect: Effect,
    /// The `allow`, `deny` or `require` expression, as written.
    pub expression: String,
    /// The `when` expression of a `require` rule, as written.
    pub when_expression: Option<String>,
    /// Scopes an `allow` rule needs the token to carry.
    pub scopes: Vec<String>,
    condition: Program,
    when: Option<Program>,
    /// The tools the rule can apply to (from conjuncts such as `mcp.tool.name == "x"`); `None`
    /// when any tool, or none, may match.
    tools: Option<BTreeSet<String>>,
    /// The methods the rule can apply to, likewise (in order, without repeats). A list, not a
    /// set: see [`Rule::may_apply_to_method`].
    methods: Option<Box<[String]>>,
    /// Whether the rule reads `mcp.tool.arguments` (so it cannot be decided for a listing).
    uses_arguments: bool,
    /// How `condition` and `when` read the item of a listing.
    condition_items: items::ItemUse,
    when_items: Option<items::ItemUse>,
    /// Whether `condition` and `when` decide a call by its method and names alone (see
    /// [`remembered`]).
    condition_remembered: bool,
    when_remembered: bool,
}

impl Rule {
    /// The tools this rule can apply to, when its expression (its `when`, for a `require`
    /// rule) limits them; `None` when it is not limited to named tools.
    pub fn tools(&self) -> Option<&BTreeSet<String>> {
        self.tools.as_ref()
    }

    /// The methods this rule can apply to, when its expression limits them.
    pub fn methods(&self) -> Option<&[String]> {
        self.methods.as_deref()
    }

    /// Whether the index lets this rule apply to a message with this method and tool name.
    fn may_apply(&self, method: &str, tool: &str) -> bool {
        self.may_apply_to_method(method) && self.tools.as_ref().is_none_or(|t| t.contains(tool))
    }

    /// Asked for every rule and every item of a listing: the few names are compared one by
    /// one, lengths first ([`crate::bytes::same`]), rather than through the set's ordered
    /// search, whose string comparisons go through Wasm's byte-at-a-time `memcmp`.
    fn may_apply_to_method(&self, method: &str) -> bool {
        self.methods.as_deref().is_none_or(|m| {
            m.iter()
                .any(|name| crate::bytes::same(name.as_bytes(), method.as_bytes()))
        })
    }
}

/// A compiled policy.
pub struct Policy {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    /// `default: allow`: a message no rule decides is allowed.
    pub default_allow: bool,
    /// `on_deny: hide`: a denied call to a tool, prompt or resource is answered as if it did not
    /// exist (JSON-RPC -32602), and lists leave out what the caller may not use. With `explain`
    /// (the default) a denial names the rule and the policy.
    pub hide_denied: bool,
    /// `unknown_methods: allow`: methods no MCP client sends are left to the rules instead of
    /// being denied by [`UNKNOWN_METHOD_RULE`].
    pub allow_unknown_methods: bool,
    pub rules: Vec<Rule>,
    /// Rate limits and budgets on allowed messages (`limits:`), in policy order.
    pub limits: Vec<Limit>,
    env: Arc<Env>,
    index: Index,
    /// What the rules read (variables, and members of `jwt` and `mcp`): only that is built
    /// for a request.
    reads: facts::Reads,
    /// Whether some rule reads the tool arguments (else they are neither kept nor converted).
    reads_arguments: bool,
    /// Rules that load but decide otherwise than a server converting argument types would
    /// (see `loose`): logged when the configuration loads, printed by `mcp-guard check`.
    pub warnings: Vec<PolicyError>,
    /// Results of rules that follow from a call's method and names alone.
    remembered: remembered::Remembered,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("default_allow", &self.default_allow)
            .field("hide_denied", &self.hide_denied)
            .field("allow_unknown_methods", &self.allow_unknown_methods)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
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
    /// The deciding rule ([`UNKNOWN_METHOD_RULE`] for the built-in one); `None` when the policy
    /// default decided.
    pub rule: Option<String>,
    /// A short explanation (for `explain`, logs and evaluation errors).
    pub reason: String,
}

/// A policy error: the field it is about (`servers[0].policy.rules[2].allow`), the rule, and
/// where in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub field: String,
    pub rule: Option<String>,
    pub message: String,
    pub location: Option<Location>,
}

/// A position in a rule's expression, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    /// The line of the expression the position is on.
    pub source_line: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.detail())
    }
}

impl std::error::Error for PolicyError {}

impl PolicyError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError {
            field: field.into(),
            rule: None,
            message: message.into(),
            location: None,
        }
    }

    /// The message with the rule and the position, without the field.
    pub fn detail(&self) -> String {
        let mut text = String::new();
        if let Some(rule) = &self.rule {
            text.push_str(&format!("rule {rule:?}: "));
        }
        if let Some(at) = &self.location {
            text.push_str(&format!("line {}, column {}: ", at.line, at.column));
        }
        text.push_str(&self.message);
        text
    }
}

impl From<PolicyError> for ConfigError {
    fn from(e: PolicyError) -> Self {
        ConfigError::new(e.field.clone(), e.detail())
    }
}

impl From<ConfigError> for PolicyError {
    fn from(e: ConfigError) -> Self {
        PolicyError::new(e.field, e.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(default)]
    version: Option<Value>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    on_deny: Option<String>,
    #[serde(default)]
    unknown_methods: Option<String>,
    #[serde(default)]
    rules: Vec<Value>,
    #[serde(default)]
    limits: Vec<Value>,
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

/// `field.member`, or `member` at the top.
fn member(field: &str, name: &str) -> String {
    if field.is_empty() {
        name.to_string()
    } else {
        format!("{field}.{name}")
    }
}

/// One of two words, naming the field and the choices when it is neither.
fn choice(value: Option<&str>, field: String, no: &str, yes: &str) -> Result<bool, PolicyError> {
    match value {
        None => Ok(false),
        Some(v) if v == no => Ok(false),
        Some(v) if v == yes => Ok(true),
        Some(other) => Err(PolicyError::new(
            field,
            format!("must be {no:?} or {yes:?}, not {other:?}"),
        )),
    }
}

impl Policy {
    /// Parses and compiles a policy; the first error, for the plugin configuration.
    pub fn from_config(value: Value, field: &str) -> Result<Policy, ConfigError> {
        Policy::compile(value, field).map_err(|errors| {
            errors
                .into_iter()
                .next()
                .map(ConfigError::from)
                .unwrap_or_else(|| ConfigError::new(field, "invalid policy"))
        })
    }

    /// Parses and compiles a policy, reporting every error found (for `mcp-guard check`).
    /// `field` prefixes every error's field; empty for a policy file of its own.
    pub fn compile(value: Value, field: &str) -> Result<Policy, Vec<PolicyError>> {
        if !value.is_object() {
            return Err(vec![PolicyError::new(field, "a policy must be a mapping")]);
        }
        let raw: RawPolicy = typed(value, field).map_err(|e| vec![PolicyError::from(e)])?;
        let mut errors = Vec::new();
        if raw.name.trim().is_empty() {
            errors.push(PolicyError::new(member(field, "name"), "must not be empty"));
        }
        let version = match raw.version {
            None => String::new(),
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                errors.push(PolicyError::new(
                    member(field, "version"),
                    "must be a string (or a number)",
                ));
                String::new()
            }
        };
        let mut flag = |value: Option<String>, name: &str, no: &str, yes: &str| {
            choice(value.as_deref(), member(field, name), no, yes).unwrap_or_else(|e| {
                errors.push(e);
                false
            })
        };
        let default_allow = flag(raw.default, "default", "deny", "allow");
        let hide_denied = flag(raw.on_deny, "on_deny", "explain", "hide");
        let allow_unknown_methods = flag(raw.unknown_methods, "unknown_methods", "deny", "allow");

        let env = Arc::new(functions::environment());
        let mut checker = analysis::Checker::new(Arc::clone(&env));
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
        for (i, value) in raw.rules.into_iter().enumerate() {
            let rule_field = format!("{}[{i}]", member(field, "rules"));
            match Rule::from_config(value, &rule_field, &mut checker) {
                Ok(rule) => {
                    if rules.iter().any(|r| r.name == rule.name) {
                        errors.push(PolicyError::new(
                            member(&rule_field, "name"),
                            format!("rule name {:?} is used twice", rule.name),
                        ));
                    } else if rule.name == UNKNOWN_METHOD_RULE {
                        errors.push(PolicyError::new(
                            member(&rule_field, "name"),
                            format!(
                                "{UNKNOWN_METHOD_RULE:?} is the built-in rule for unknown methods; \
                                 use `unknown_methods: allow` and a rule of another name"
                            ),
                        ));
                    }
                    rules.push(rule);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        let mut limits: Vec<Limit> = Vec::with_capacity(raw.limits.len());
        for (i, value) in raw.limits.into_iter().enumerate() {
            let limit_field = format!("{}[{i}]", member(field, "limits"));
            match Limit::from_config(value, &limit_field, &mut checker) {
                Ok(limit) => {
                    if limits.iter().any(|l| l.name == limit.name) {
                        errors.push(PolicyError::new(
                            member(&limit_field, "name"),
                            format!("limit name {:?} is used twice", limit.name),
                        ));
                    }
                    limits.push(limit);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let reads = checker.reads().clone();
        let warnings = checker.take_warnings();
        let index = Index::build(&rules);
        let reads_arguments =
            rules.iter().any(|r| r.uses_arguments) || limits.iter().any(|l| l.uses_arguments);
        Ok(Policy {
            name: raw.name,
            version,
            description: raw.description,
            default_allow,
            hide_denied,
            allow_unknown_methods,
            rules,
            limits,
            reads_arguments,
            env,
            index,
            reads,
            warnings,
            remembered: remembered::Remembered::default(),
        })
    }

    /// A request header the rules (or limits) could read that the request carries more than
    /// once: the message is refused, since the server may read another of its values than
    /// the rules would ([`facts::repeated_header`]). `None` when nothing reads `request`.
    pub fn repeated_read_header<'a>(&self, request: &RequestFacts<'a>) -> Option<&'a str> {
        if !self.reads.roots.has(facts::Roots::REQUEST) {
            return None;
        }
        facts::repeated_header(request)
    }

    /// Whether some rule reads `mcp.tool.arguments` (or all of `mcp.tool` or `mcp`): when
    /// none does, the arguments need not be kept once checked.
    pub fn reads_arguments(&self) -> bool {
        self.reads_arguments
    }

    /// What an allowed message owes each limit whose `when` holds, in policy order. A limit
    /// whose `when`, `key` or `cost` fails to evaluate (a claim the token lacks…) fails closed:
    /// the error names it and the message is refused. Empty without limits.
    pub fn charges(&self, input: &Input) -> Result<Vec<Charge>, ChargeError> {
        if self.limits.is_empty() {
            return Ok(Vec::new());
        }
        self.charges_in(&mut None, input)
    }

    /// [`Policy::charges`], in the message's CEL context `ctx` (built here when a limit first
    /// needs it: a key that is a claim of the token needs none).
    fn charges_in<'i>(
        &self,
        ctx: &mut Option<Context<'i, 'i>>,
        input: &'i Input,
    ) -> Result<Vec<Charge>, ChargeError> {
        let mut charges = Vec::new();
        for (i, limit) in self.limits.iter().enumerate() {
            let charge = match limit.charge_by_claim(i, input.claims) {
                Some(charge) => charge,
                None => limit.charge(i, ctx.get_or_insert_with(|| self.context(input)))?,
            };
            charges.extend(charge);
        }
        Ok(charges)
    }

    /// Whether the built-in rule lets this method through for a request declaring `version`:
    /// a 2026-07-28 request may only use that revision's methods.
    fn method_allowed_in(&self, method: &str, version: Option<&str>) -> bool {
        self.allow_unknown_methods
            || match version {
                Some(crate::protocol::MODERN) => crate::protocol::is_modern_client_method(method),
                _ => is_client_method(method),
            }
    }

    fn unknown_method(method: &str) -> Decision {
        Decision {
            outcome: Outcome::Deny,
            rule: Some(UNKNOWN_METHOD_RULE.into()),
            reason: format!("{method:?} is not a method an MCP client sends to a server"),
        }
    }

    /// Evaluates the policy for one message.
    pub fn evaluate(&self, input: &Input) -> Decision {
        if !self.method_allowed_in(input.method, input.protocol_version) {
            return Policy::unknown_method(input.method);
        }
        let decision = self.decide(&mut None, input, true);
        self.as_parsing_servers_read(input, decision)
    }

    /// An allowed call whose arguments hold JSON text for `null`, an array or an object in a
    /// string, decided again as a server that parses such text reads it: the official Python
    /// SDK replaces every top-level argument whose string value is such JSON with that value,
    /// for each parameter not typed plain `str` — which the filter cannot see (it has no
    /// signature). `"branch": "null"` is `None` (the tool's default branch) there; `"to":
    /// "[\"a@x\"]"` a list. The call goes on only if both readings allow it; else the
    /// stricter decision stands, saying which reading it is.
    fn as_parsing_servers_read(&self, input: &Input, decision: Decision) -> Decision {
        if decision.outcome != Outcome::Allow || !self.reads_arguments {
            return decision;
        }
        let Some((tool, Some(arguments))) = input.tool else {
            return decision;
        };
        let Some(parsed) = crate::mcp::json_strings_parsed(arguments) else {
            return decision;
        };
        let other = Input {
            tool: Some((tool, Some(&parsed))),
            ..input.clone()
        };
        let mut stricter = self.decide(&mut None, &other, true);
        if stricter.outcome == Outcome::Allow {
            return decision;
        }
        stricter.reason = format!(
            "{} (reading a string argument that holds JSON as that JSON, as servers that parse \
             it, such as the Python SDK's, do)",
            stricter.reason
        );
        stricter
    }

    /// Evaluates the policy for one message and, when it allows the message, what it owes the
    /// limits ([`Policy::charges`]; empty otherwise). One CEL context serves both: building
    /// it (the claims and the message as CEL values) is most of what a limit's key costs.
    pub fn evaluate_charged(&self, input: &Input) -> (Decision, Result<Vec<Charge>, ChargeError>) {
        if !self.method_allowed_in(input.method, input.protocol_version) {
            return (Policy::unknown_method(input.method), Ok(Vec::new()));
        }
        let mut ctx = None;
        let decision = self.decide(&mut ctx, input, true);
        let decision = self.as_parsing_servers_read(input, decision);
        let charges = if decision.outcome == Outcome::Allow && !self.limits.is_empty() {
            self.charges_in(&mut ctx, input)
        } else {
            Ok(Vec::new())
        };
        (decision, charges)
    }

    /// The CEL context rules and limits are evaluated in: the facts they read.
    fn context<'i>(&self, input: &'i Input) -> Context<'i, 'i> {
        let arguments = if self.reads_arguments {
            facts::Arguments::Present
        } else {
            facts::Arguments::Absent
        };
        facts::context(&self.env, input, &self.reads, arguments)
    }

    /// The decision for the message `input` describes, in the CEL context `ctx` (built here
    /// when a rule first needs it: a rule whose result is remembered needs none). `indexed`:
    /// only evaluate the rules the index lets apply, and use remembered results (always, but
    /// for the tests that check neither changes anything).
    fn decide<'i>(
        &self,
        ctx: &mut Option<Context<'i, 'i>>,
        input: &'i Input,
        indexed: bool,
    ) -> Decision {
        let granted = facts::scopes(input.claims);
        let names = items::Names {
            tool: input.tool_name(),
            prompt: input.prompt.unwrap_or(""),
            resource: input.resource_uri.unwrap_or(""),
        };
        let mut eval = |i: usize, rule: &Rule, part: Part| {
            let key = rule.call_key(part, names).filter(|_| indexed);
            if let Some(tri) = key.and_then(|bits| self.remembered.get(i, part, bits, input.method))
            {
                return tri;
            }
            let ctx = ctx.get_or_insert_with(|| self.context(input));
            let tri = match eval_bool(rule.program(part), ctx) {
                Ok(true) => Tri::True,
                Ok(false) => Tri::False,
                Err(e) => Tri::Failed(e),
            };
            if let Some(bits) = key {
                self.remembered
                    .put(i, part, bits, input.method, tri.clone());
            }
            tri
        };
        self.walk(
            Methods::Named(input.method),
            input.tool_name(),
            &granted,
            indexed,
            &mut eval,
        )
        .decision(self.default_allow)
    }

    /// The one walk over the rules, for calls ([`Policy::evaluate`]) and listings
    /// ([`Lister::visible`]): deny rules, then require rules, then allow rules, then the
    /// default. `eval(position, rule, part)` gives a rule's expression's (or its `when`'s)
    /// result; only a listing's can be [`Tri::Unknown`] (a rule that reads the arguments,
    /// which a listing has not), and an unknown result never denies: for `allow` it counts as
    /// matching, for `deny` and `require` as not denying. `granted`: the token's scopes.
    fn walk<'r>(
        &'r self,
        method: Methods<'r>,
        tool: &'r str,
        granted: &[&str],
        indexed: bool,
        eval: &mut dyn FnMut(usize, &'r Rule, Part) -> Tri,
    ) -> Verdict<'r> {
        for (i, rule) in self.lane(&self.index.deny, method, tool, indexed) {
            match eval(i, rule, Part::Condition) {
                Tri::False | Tri::Unknown => {}
                Tri::True => return Verdict::Denied(rule, Why::DenyMatched),
                Tri::Failed(e) => return Verdict::Denied(rule, Why::DenyFailed(e)),
            }
        }
        for (i, rule) in self.lane(&self.index.require, method, tool, indexed) {
            let applies = match &rule.when {
                None => Tri::True,
                Some(_) => eval(i, rule, Part::When),
            };
            let holds = match applies {
                Tri::True => eval(i, rule, Part::Condition),
                Tri::False | Tri::Unknown => continue,
                failed @ Tri::Failed(_) => failed,
            };
            match holds {
                Tri::True | Tri::Unknown => {}
                Tri::False => return Verdict::Denied(rule, Why::RequireFalse),
                Tri::Failed(e) => return Verdict::Denied(rule, Why::RequireFailed(e)),
            }
        }
        let mut lacking: Option<(&Rule, Vec<&str>)> = None;
        let mut failed: Option<(&Rule, String)> = None;
        for (i, rule) in self.lane(&self.index.allow, method, tool, indexed) {
            match eval(i, rule, Part::Condition) {
                Tri::True => {
                    let missing: Vec<&str> = rule
                        .scopes
                        .iter()
                        .map(String::as_str)
                        .filter(|s| !granted.contains(s))
                        .collect();
                    if missing.is_empty() {
                        return Verdict::Allowed(rule);
                    }
                    if lacking.is_none() {
                        lacking = Some((rule, missing));
                    }
                }
                Tri::Unknown => return Verdict::Allowed(rule),
                Tri::False => {}
                Tri::Failed(e) => {
                    if failed.is_none() {
                        failed = Some((rule, e));
                    }
                }
            }
        }
        match lacking {
            Some((rule, missing)) => Verdict::Lacking(rule, missing),
            None => Verdict::Default(failed),
        }
    }

    /// The rules of a lane that can apply to a message with this method and tool, in policy
    /// order (all of them when not `indexed`), with their positions in the policy.
    fn lane<'l>(
        &'l self,
        lane: &'l Lane,
        method: Methods<'l>,
        tool: &'l str,
        indexed: bool,
    ) -> impl Iterator<Item = (usize, &'l Rule)> + 'l {
        let rules = if indexed {
            Candidates::Indexed(lane.candidates(tool))
        } else {
            Candidates::Every(lane.every.iter())
        };
        rules
            .filter_map(|i| self.rules.get(i).map(|r| (i, r)))
            // The index already chose by tool (`candidates`): only the methods are left.
            .filter(move |&(i, r)| !indexed || method.may_apply(i, r))
    }

    /// Whether a listing (`tools/list`, `prompts/list`, `resources/list`) shows `item` to the
    /// caller `input` describes: the same rules, evaluated as if the caller called that tool
    /// (read that resource, got that prompt) without arguments. A rule that reads the
    /// arguments, and so cannot be decided, counts as possibly matching for `allow` and as not
    /// denying for `deny` and `require`: an item is shown when some call to it could be
    /// allowed (a step-up for missing scopes included). Other evaluation errors fail closed as
    /// for a call.
    ///
    /// `input` is the listing request's (its method and target are ignored). To filter a whole
    /// list, [`Policy::lister`] builds the caller's facts once.
    pub fn visible(&self, input: &Input, item: Item<'_>) -> bool {
        self.lister(input).visible(item)
    }

    /// Prepares [`Lister::visible`] calls for one caller.
    pub fn lister<'p, 'i>(&'p self, input: &'i Input<'i>) -> Lister<'p, 'i> {
        let ctx = facts::context(&self.env, input, &self.reads, facts::Arguments::Absent);
        Lister {
            policy: self,
            input,
            ctx,
            granted: facts::scopes(input.claims),
            known: FastMap::default(),
        }
    }

    /// Evaluates every rule for one message, for `mcp-guard explain`: each rule's result or
    /// error, whether the index would have run it, and the decision.
    pub fn explain(&self, input: &Input) -> Explanation {
        let ctx = facts::context(&self.env, input, &self.reads, facts::Arguments::Present);
        let tool = input.tool_name();
        let scopes = input.scopes();
        let rules = self
            .rules
            .iter()
            .map(|rule| {
                let when = rule.when.as_ref().map(|w| eval_bool(w, &ctx));
                let result = match &when {
                    Some(Ok(false)) | Some(Err(_)) => None,
                    _ => Some(eval_bool(&rule.condition, &ctx)),
                };
                let missing_scopes = rule
                    .scopes
                    .iter()
                    .filter(|s| !scopes.contains(s))
                    .cloned()
                    .collect();
                RuleTrace {
                    name: rule.name.clone(),
                    effect: rule.effect,
                    indexed: rule.may_apply(input.method, tool),
                    when,
                    result,
                    missing_scopes,
                }
            })
            .collect();
        Explanation {
            decision: self.evaluate(input),
            method_known: is_client_method(input.method),
            rules,
        }
    }
}

/// Filters the items of listings for one caller; see [`Policy::visible`].
///
/// A rule that reads the item only through simple tests of its name runs once per
/// combination of test results, not once per item (see [`items`]): its results are kept
/// here for the lister's lifetime, which is one listing's.
pub struct Lister<'p, 'i> {
    policy: &'p Policy,
    input: &'i Input<'i>,
    ctx: Context<'i, 'i>,
    /// The token's scopes.
    granted: Vec<&'i str>,
    known: FastMap<(usize, Part, u8, u64), Tri>,
}

/// The method a walk is for: its name, or which rules the index lets apply to it.
#[derive(Clone, Copy)]
enum Methods<'m> {
    Named(&'m str),
    /// By rule position. A rule beyond it may apply: evaluating a rule the index would skip
    /// gives the same decision, only later.
    Known(&'m [bool]),
}

impl Methods<'_> {
    fn may_apply(self, i: usize, rule: &Rule) -> bool {
        match self {
            Methods::Named(method) => rule.may_apply_to_method(method),
            Methods::Known(applies) => applies.get(i).copied().unwrap_or(true),
        }
    }
}

impl Lister<'_, '_> {
    /// Whether the caller may see `item`: the walk of a call of it, without arguments, does
    /// not deny it.
    pub fn visible(&mut self, item: Item<'_>) -> bool {
        self.check(item, true, true)
    }

    fn check(&mut self, item: Item<'_>, indexed: bool, remember: bool) -> bool {
        let (tool, kind) = match item {
            Item::Tool(name) => (name, 0u8),
            Item::Prompt(_) => ("", 1),
            Item::Resource(_) => ("", 2),
        };
        let Lister {
            policy,
            input,
            ctx,
            granted,
            known,
        } = self;
        let applies = policy
            .index
            .item_methods
            .get(usize::from(kind))
            .map_or(&[][..], Vec::as_slice);
        let mut item_set = false;
        let mut eval = |i: usize, rule: &Rule, part: Part| -> Tri {
            let key = rule
                .item_use(part)
                .key(item)
                .filter(|_| remember)
                .map(|bits| (i, part, kind, bits));
            if let Some(tri) = key.and_then(|k| known.get(&k)) {
                return tri.clone();
            }
            if !item_set {
                facts::set_listing_item(ctx, &policy.reads, input, item);
                item_set = true;
            }
            let tri = match eval_bool(rule.program(part), ctx) {
                Ok(true) => Tri::True,
                Ok(false) => Tri::False,
                Err(e) if rule.uses_arguments && wants_arguments(&e) => Tri::Unknown,
                Err(e) => Tri::Failed(e),
            };
            if let Some(k) = key {
                known.insert(k, tri.clone());
            }
            tri
        };
        let verdict = policy.walk(Methods::Known(applies), tool, granted, indexed, &mut eval);
        verdict.outcome(policy.default_allow) != Outcome::Deny
    }

    #[cfg(test)]
    fn visible_unindexed(&mut self, item: Item<'_>) -> bool {
        self.check(item, false, false)
    }
}

/// The expression of a rule, or the `when` of a `require` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    Condition,
    When,
}

/// An item of a listing: a tool, a prompt (by name) or a resource (by URI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    Tool(&'a str),
    Prompt(&'a str),
    Resource(&'a str),
}

/// Every rule's result for one message; see [`Policy::explain`].
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub decision: Decision,
    /// Whether the method is one a client sends (the built-in rule lets it through).
    pub method_known: bool,
    pub rules: Vec<RuleTrace>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleTrace {
    pub name: String,
    pub effect: Effect,
    /// Whether the index runs this rule for this message (a rule limited to other tools or
    /// methods is skipped, and is then false whatever the expression).
    pub indexed: bool,
    /// The `when` of a `require` rule.
    pub when: Option<Result<bool, String>>,
    /// The rule's expression; `None` when its `when` is false or failed.
    pub result: Option<Result<bool, String>>,
    /// Scopes the rule needs that the token lacks.
    pub missing_scopes: Vec<String>,
}

/// A rule's expression's (or its `when`'s) result.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tri {
    True,
    False,
    /// Failed for want of the arguments (a listing has none): could go either way.
    Unknown,
    /// Failed for another reason: fails closed.
    Failed(String),
}

/// Why a rule denied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Why {
    DenyMatched,
    DenyFailed(String),
    RequireFalse,
    RequireFailed(String),
}

/// Where [`Policy::walk`] ended.
#[derive(Debug)]
enum Verdict<'r> {
    /// A deny rule matched or failed, or a require rule does not hold or failed.
    Denied(&'r Rule, Why),
    /// An allow rule matched and the token has its scopes (or, in a listing, may match).
    Allowed(&'r Rule),
    /// Allow rules matched, but the token lacks their scopes: the first one, and what it lacks.
    Lacking(&'r Rule, Vec<&'r str>),
    /// No rule decided: the policy default, with the first allow rule that failed.
    Default(Option<(&'r Rule, String)>),
}

impl Verdict<'_> {
    fn outcome(&self, default_allow: bool) -> Outcome {
        match self {
            Verdict::Denied(..) => Outcome::Deny,
            Verdict::Allowed(_) => Outcome::Allow,
            Verdict::Lacking(rule, _) => Outcome::InsufficientScope(rule.scopes.clone()),
            Verdict::Default(_) if default_allow => Outcome::Allow,
            Verdict::Default(_) => Outcome::Deny,
        }
    }

    fn decision(self, default_allow: bool) -> Decision {
        let outcome = self.outcome(default_allow);
        let (rule, reason) = match self {
            Verdict::Denied(rule, why) => (
                Some(rule),
                match why {
                    Why::DenyMatched => "deny rule matched".to_string(),
                    Why::DenyFailed(e) => {
                        format!("deny rule could not be evaluated ({e}); failing closed")
                    }
                    Why::RequireFalse => "required condition does not hold".to_string(),
                    Why::RequireFailed(e) => {
                        format!("require rule could not be evaluated ({e}); failing closed")
                    }
                },
            ),
            Verdict::Allowed(rule) => (Some(rule), "allow rule matched".to_string()),
            Verdict::Lacking(rule, missing) => (
                Some(rule),
                format!("token lacks scope(s) {}", missing.join(" ")),
            ),
            Verdict::Default(failed) => {
                let mut reason = "no rule matched; policy default applies".to_string();
                if let Some((rule, e)) = failed {
                    reason.push_str(&format!(
                        " (allow rule {:?} could not be evaluated: {e})",
                        rule.name
                    ));
                }
                (None, reason)
            }
        };
        Decision {
            outcome,
            rule: rule.map(|r| r.name.clone()),
            reason,
        }
    }
}

impl Rule {
    /// The program of the expression, or of the `when` of a `require` rule.
    fn program(&self, part: Part) -> &Program {
        match (part, &self.when) {
            (Part::When, Some(when)) => when,
            _ => &self.condition,
        }
    }

    /// How that program reads the item of a listing.
    fn item_use(&self, part: Part) -> &items::ItemUse {
        match (part, &self.when_items) {
            (Part::When, Some(uses)) => uses,
            _ => &self.condition_items,
        }
    }

    /// For a part whose result follows from a call's method and names, which of its name
    /// tests the call's names pass.
    fn call_key(&self, part: Part, names: items::Names<'_>) -> Option<u64> {
        let remembered = match (part, &self.when) {
            (Part::When, Some(_)) => self.when_remembered,
            _ => self.condition_remembered,
        };
        remembered
            .then(|| self.item_use(part).key_of(names))
            .flatten()
    }
}

impl Rule {
    fn from_config(
        value: Value,
        field: &str,
        checker: &mut analysis::Checker,
    ) -> Result<Rule, Vec<PolicyError>> {
        if !value.is_object() {
            return Err(vec![PolicyError::new(field, "a rule must be a mapping")]);
        }
        let raw: RawRule = typed(value, field).map_err(|e| vec![PolicyError::from(e)])?;
        let name = raw.name.clone();
        let error = |field: String, message: String| PolicyError {
            field,
            rule: Some(name.clone()),
            message,
            location: None,
        };
        if raw.name.trim().is_empty() {
            return Err(vec![PolicyError::new(
                member(field, "name"),
                "must not be empty",
            )]);
        }
        let (effect, key, source) = match (raw.allow, raw.deny, raw.require) {
            (Some(s), None, None) => (Effect::Allow, "allow", s),
            (None, Some(s), None) => (Effect::Deny, "deny", s),
            (None, None, Some(s)) => (Effect::Require, "require", s),
            _ => {
                return Err(vec![error(
                    field.to_string(),
                    "needs exactly one of \"allow\", \"deny\" or \"require\"".into(),
                )])
            }
        };
        let mut errors = Vec::new();
        if raw.when.is_some() && effect != Effect::Require {
            errors.push(error(
                member(field, "when"),
                "\"when\" only applies to \"require\" rules; fold the condition into the expression"
                    .into(),
            ));
        }
        if !raw.scopes.is_empty() && effect != Effect::Allow {
            errors.push(error(
                member(field, "scopes"),
                "\"scopes\" only applies to \"allow\" rules".into(),
            ));
        }
        if let Some(bad) = raw.scopes.iter().find(|s| {
            s.is_empty()
                || s.chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\\')
        }) {
            errors.push(error(
                member(field, "scopes"),
                format!("{bad:?} is not a valid OAuth scope"),
            ));
        }
        // What the expression being true does, for the comparisons a client can turn by
        // changing a value's JSON type (see `loose`).
        let sense = match effect {
            Effect::Deny => loose::Sense::Refuses,
            Effect::Allow | Effect::Require => loose::Sense::Permits,
        };
        let condition = checker.compile_rule(&source, &member(field, key), &raw.name, sense);
        let when = raw.when.as_ref().map(|w| {
            checker.compile_rule(w, &member(field, "when"), &raw.name, loose::Sense::Refuses)
        });
        let condition = condition.map_err(|e| errors.push(e)).ok();
        let when = match when {
            None => Some(None),
            Some(Ok(w)) => Some(Some(w)),
            Some(Err(e)) => {
                errors.push(e);
                None
            }
        };
        let (Some(condition), Some(when)) = (condition, when) else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        // What limits the rule to some tools or methods: its `when`, for a `require` rule (the
        // rule does not apply where `when` is false); its expression otherwise (the expression
        // is false where a conjunct is).
        let limits = match effect {
            Effect::Require => when.as_ref().map(|w| &w.limits),
            Effect::Allow | Effect::Deny => Some(&condition.limits),
        };
        let (tools, methods) = match limits {
            Some(l) => (l.tools.clone(), l.methods.clone()),
            None => (None, None),
        };
        let uses_arguments =
            condition.uses_arguments || when.as_ref().is_some_and(|w| w.uses_arguments);
        Ok(Rule {
            name: raw.name,
            description: raw.description,
            effect,
            expression: source,
            when_expression: raw.when,
            scopes: raw.scopes,
            condition_items: condition.items,
            when_items: when.as_ref().map(|w| w.items.clone()),
            condition_remembered: condition.method_and_names_only,
            when_remembered: when.as_ref().is_some_and(|w| w.method_and_names_only),
            condition: condition.program,
            when: when.map(|w| w.program),
            tools,
            methods: methods.map(|m| m.into_iter().collect()),
            uses_arguments,
        })
    }
}

/// Compiles and checks one CEL expression on its own, as a rule's would be (for tools and
/// tests). `field` and `rule` name it in errors.
pub fn compile(source: &str, field: &str, rule: &str) -> Result<Program, ConfigError> {
    let mut checker = analysis::Checker::new(Arc::new(functions::environment()));
    checker
        .compile(source, field, rule)
        .map(|c| c.program)
        .map_err(ConfigError::from)
}

/// Whether a rule failed for want of the tool's arguments, which a listing's stand-in call
/// lacks ([`facts::set_listing_item`]): only then could its call go either way. A rule that
/// also fails on a claim the token lacks fails closed for the call, so the item is hidden.
fn wants_arguments(error: &str) -> bool {
    error == "No such key: arguments"
}

fn eval_bool(program: &Program, ctx: &Context) -> Result<bool, String> {
    match program.execute(ctx) {
        Ok(Cel::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("expression gave {:?}, not a bool", other.type_of())),
        Err(e) => Err(e.to_string()),
    }
}

/// Rule indices by effect, and by the tool they are limited to.
#[derive(Debug, Default)]
struct Index {
    deny: Lane,
    require: Lane,
    allow: Lane,
    /// For the call a listed tool, prompt or resource stands for ([`ITEM_METHODS`], by
    /// [`Item`] kind), whether each rule may apply to its method: a listing asks this of every
    /// rule for every item, always with the same method.
    item_methods: [Vec<bool>; 3],
}

/// The method of a call of a listed tool, prompt and resource, in that order.
const ITEM_METHODS: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

#[derive(Debug, Default)]
struct Lane {
    /// Rules not limited to named tools, in policy order.
    any_tool: Vec<usize>,
    /// Rules limited to named tools, under each, in policy order.
    by_tool: FastMap<String, Vec<usize>>,
    /// Every rule of the lane, in policy order.
    every: Vec<usize>,
}

impl Index {
    fn build(rules: &[Rule]) -> Index {
        let mut index = Index {
            item_methods: ITEM_METHODS.map(|method| {
                rules
                    .iter()
                    .map(|r| r.may_apply_to_method(method))
                    .collect()
            }),
            ..Index::default()
        };
        for (i, rule) in rules.iter().enumerate() {
            let lane = match rule.effect {
                Effect::Deny => &mut index.deny,
                Effect::Require => &mut index.require,
                Effect::Allow => &mut index.allow,
            };
            lane.every.push(i);
            match &rule.tools {
                None => lane.any_tool.push(i),
                Some(tools) => {
                    for tool in tools {
                        lane.by_tool.entry(tool.clone()).or_default().push(i);
                    }
                }
            }
        }
        index
    }
}

impl Lane {
    /// The rules that can apply to a message about `tool` ("" when none), in policy order.
    fn candidates<'l>(&'l self, tool: &str) -> Merge<'l> {
        let named: &'l [usize] = self.by_tool.get(tool).map(Vec::as_slice).unwrap_or(&[]);
        Merge {
            a: self.any_tool.as_slice(),
            b: named,
        }
    }
}

/// The rules of a lane a walk goes through: those the index chose, or every one. (One plain
/// iterator: run for every item of a listing, where a chain of options cost more than the
/// choosing.)
enum Candidates<'l> {
    Indexed(Merge<'l>),
    Every(std::slice::Iter<'l, usize>),
}

impl Iterator for Candidates<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::Indexed(merge) => merge.next(),
            Candidates::Every(every) => every.next().copied(),
        }
    }
}

/// Merges two ascending index lists.
struct Merge<'l> {
    a: &'l [usize],
    b: &'l [usize],
}

impl Iterator for Merge<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        match (self.a.split_first(), self.b.split_first()) {
            (Some((&x, rest_a)), Some((&y, rest_b))) => {
                if x <= y {
                    self.a = rest_a;
                    if x == y {
                        self.b = rest_b;
                    }
                    Some(x)
                } else {
                    self.b = rest_b;
                    Some(y)
                }
            }
            (Some((&x, rest)), None) => {
                self.a = rest;
                Some(x)
            }
            (None, Some((&y, rest))) => {
                self.b = rest;
                Some(y)
            }
            (None, None) => None,
        }
    }
}

/// The facts a policy decides on.
#[derive(Debug, Default, Clone)]
pub struct Input<'a> {
    pub claims: Option<&'a Map<String, Value>>,
    /// The JSON-RPC method; empty for a response (the client answering a server's request).
    pub method: &'a str,
    /// The tool of a `tools/call`, and its arguments.
    pub tool: Option<(&'a str, Option<&'a Map<String, Value>>)>,
    /// The prompt of a `prompts/get`.
    pub prompt: Option<&'a str>,
    /// The resource of a `resources/read`, `resources/subscribe` or `resources/unsubscribe`.
    pub resource_uri: Option<&'a str>,
    pub session_id: Option<&'a str>,
    /// The protocol version the request declares (`_meta`, else the `MCP-Protocol-Version`
    /// header).
    pub protocol_version: Option<&'a str>,
    /// The task a tasks method names (`params.taskId`).
    pub task_id: Option<&'a str>,
    /// The notification filter of a `subscriptions/listen` request.
    pub subscription: Option<&'a Map<String, Value>>,
    /// The `inputResponses` of a multi round-trip retry or a `tasks/update`.
    pub input_responses: Option<&'a Map<String, Value>>,
    /// Whether the request retries an earlier one (`inputResponses` or `requestState`).
    pub retry: bool,
    pub request: RequestFacts<'a>,
    pub source_address: &'a str,
    pub mtls: bool,
    /// Seconds since the epoch.
    pub now: i64,
}

#[derive(Debug, Default, Clone)]
pub struct RequestFacts<'a> {
    /// `:path` as received; rules see it without the query string.
    pub path: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    /// The request headers; rules see them with lower-cased names, without pseudo-headers
    /// and without `authorization`.
    pub headers: &'a [(String, String)],
    /// Headers removed or replaced before forwarding (the server's `strip_headers`, which
    /// include the credential's and the forwarded claims' headers): rules do not see them,
    /// since the server never receives the client's values (a forged `x-tenant` the filter
    /// overwrites with the token's claim must not decide anything).
    pub removed: &'a [String],
}

impl<'a> Input<'a> {
    /// The message's method and what it is about (tool and arguments, prompt, or resource);
    /// every other fact is left at its default for the caller to fill in.
    pub fn of_message(message: &'a crate::mcp::Message) -> Input<'a> {
        use crate::mcp::Target;
        let (tool, prompt, resource_uri) = match &message.target {
            Target::Tool { name, arguments } => {
                (Some((name.as_str(), Some(arguments))), None, None)
            }
            Target::Prompt { name } => (None, Some(name.as_str()), None),
            Target::Resource { uri } => (None, None, Some(uri.as_str())),
            Target::None => (None, None, None),
        };
        Input {
            method: &message.method,
            tool,
            prompt,
            resource_uri,
            protocol_version: crate::protocol::meta_version(message),
            task_id: crate::protocol::task_id(message),
            subscription: crate::protocol::subscription(message),
            input_responses: crate::protocol::input_responses(message),
            retry: crate::protocol::is_retry(message),
            ..Input::default()
        }
    }

    /// Scopes granted by the token: `scope` (space-separated) or `scp` (string or list).
    pub fn scopes(&self) -> Vec<String> {
        scopes_of(self.claims)
    }

    /// The tool a `tools/call` names; empty otherwise.
    pub fn tool_name(&self) -> &'a str {
        self.tool.map(|(name, _)| name).unwrap_or("")
    }
}

/// Scopes granted by a token's claims.
pub fn scopes_of(claims: Option<&Map<String, Value>>) -> Vec<String> {
    facts::scopes(claims)
        .into_iter()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod walk_tests;
