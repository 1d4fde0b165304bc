//! Rate limits and budgets of a policy (`limits:`): which allowed messages a limit counts
//! (`when`), whose budget they come out of (`key`), how much each costs (`cost`), and the rate.
//! Compiled and checked when the policy loads, like rules; evaluated per allowed message by
//! [`super::Policy::charges`]. Counting is elsewhere: [`crate::limits`] (local token buckets)
//! and the rate limit service (global).

use cel::{Context, Program, Value as Cel};
use serde::Deserialize;
use serde_json::Value;

use super::analysis::{Checker, Want};
use super::loose::Sense;
use super::{member, PolicyError};
use crate::error::typed;

/// Longest key a limit may give, in bytes: longer ones fail closed (it becomes a shared-data
/// key hash locally, but a descriptor value sent to the rate limit service as it is).
pub const MAX_KEY_BYTES: usize = 512;
/// Largest `N` of a rate, `burst` and cost of one message.
pub const MAX_AMOUNT: u64 = 1_000_000_000;
/// Default and largest number of buckets of a local limit (see [`crate::limits`]).
pub const DEFAULT_SLOTS: u32 = 10_000;
pub const MAX_SLOTS: u32 = 100_000;

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In this Envoy, shared by its worker threads (token buckets in shared data).
    Local,
    /// Across the fleet, by the rate limit service (`rate_limit_service` in the configuration).
    Global,
}

/// What a global limit does when the rate limit service cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Let the message through (audited and counted as `failure_open`).
    Open,
    /// Refuse it (audited and counted as `failure_closed`).
    Closed,
}

/// The unit of a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    pub fn millis(self) -> u64 {
        match self {
            Unit::Second => 1_000,
            Unit::Minute => 60_000,
            Unit::Hour => 3_600_000,
            Unit::Day => 86_400_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
        }
    }
}

/// `N/unit`: `N` messages (or cost) per unit of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub amount: u64,
    pub unit: Unit,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        let wrong = || format!("must be N/second, N/minute, N/hour or N/day, not {text:?}");
        let (n, unit) = text.split_once('/').ok_or_else(wrong)?;
        let amount: u64 = n.trim().parse().map_err(|_| wrong())?;
        let unit = match unit.trim() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            _ => return Err(wrong()),
        };
        if amount == 0 || amount > MAX_AMOUNT {
            return Err(format!(
                "N must be between 1 and {MAX_AMOUNT}, not {amount}"
            ));
        }
        Ok(Rate { amount, unit })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.amount, self.unit.as_str())
    }
}

/// One compiled limit.
#[derive(Debug)]
pub struct Limit {
    pub name: String,
    pub description: Option<String>,
    /// `when`, as written (`None`: every allowed message).
    pub when_expression: Option<String>,
    pub key_expression: String,
    /// `cost`, as written (`None`: 1).
    pub cost_expression: Option<String>,
    pub rate: Rate,
    /// The bucket's size: how much may be spent at once after a quiet period (local only;
    /// default: the rate's `N`).
    pub burst: u64,
    pub scope: Scope,
    pub failure_mode: FailureMode,
    /// Buckets of a local limit (a key's hash picks one; see [`crate::limits`]).
    pub slots: u32,
    when: Option<Program>,
    key: Program,
    /// The claim a key of the form `jwt.<claim>` names: when there is no `when` and the cost is
    /// fixed, a token whose claim is a string is charged without building the CEL context
    /// ([`Limit::charge_by_claim`]).
    key_claim: Option<String>,
    cost: Cost,
    /// Whether `when`, `key` or `cost` reads the tool's arguments.
    pub(super) uses_arguments: bool,
}

/// `jwt.<claim>`, exactly: the claim it names. `jwt.scopes` is not a claim but the list of
/// scopes the token grants (`facts::jwt`; refused as a key when the policy loads): never read
/// from the claims.
fn claim_of(key: &Program) -> Option<String> {
    use cel::common::ast::Expr;
    let Expr::Select(select) = &key.expression().expr else {
        return None;
    };
    let jwt = matches!(&select.operand.expr, Expr::Ident(name) if name == "jwt");
    (jwt && !select.test && select.field != "scopes").then(|| select.field.clone())
}

#[derive(Debug)]
enum Cost {
    Fixed(u64),
    Expression(Program),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    when: Option<String>,
    key: String,
    rate: String,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    cost: Option<Value>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    failure_mode: Option<String>,
    #[serde(default)]
    slots: Option<u32>,
}

/// What one allowed message owes one limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The limit's position in [`super::Policy::limits`].
    pub limit: usize,
    pub key: String,
    pub cost: u64,
}

/// A limit whose `when`, `key` or `cost` could not be evaluated: the message is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeError {
    pub limit: usize,
    pub reason: String,
}

impl Limit {
    pub(super) fn from_config(
        value: Value,
        field: &str,
        checker: &mut Checker,
    ) -> Result<Limit, Vec<PolicyError>> {
        if !value.is_object() {
            return Err(vec![PolicyError::new(field, "a limit must be a mapping")]);
        }
        let raw: RawLimit = typed(value, field).map_err(|e| vec![PolicyError::from(e)])?;
        let name = raw.name.clone();
        let error = |at: &str, message: String| PolicyError {
            field: member(field, at),
            rule: Some(format!("limit:{name}")),
            message,
            location: None,
        };
        let mut errors = Vec::new();
        if raw.name.trim().is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(error(
                "name",
                "must be letters, digits, '-' or '_' (it names metrics and descriptors)".into(),
            ));
        }
        let rule = format!("limit:{}", raw.name);
        let rate = Rate::parse(&raw.rate)
            .map_err(|e| errors.push(error("rate", e)))
            .ok();
        let scope = match raw.scope.as_deref() {
            None | Some("local") => Scope::Local,
            Some("global") => Scope::Global,
            Some(other) => {
                errors.push(error(
                    "scope",
                    format!("must be \"local\" or \"global\", not {other:?}"),
                ));
                Scope::Local
            }
        };
        let failure_mode = match raw.failure_mode.as_deref() {
            None | Some("closed") => FailureMode::Closed,
            Some("open") => FailureMode::Open,
            Some(other) => {
                errors.push(error(
                    "failure_mode",
                    format!("must be \"open\" or \"closed\", not {other:?}"),
                ));
                FailureMode::Closed
            }
        };
        if raw.failure_mode.is_some() && scope == Scope::Local {
            errors.push(error(
                "failure_mode",
                "only applies to global limits (a local limit has no service to lose)".into(),
            ));
        }
        if raw.burst.is_some() && scope == Scope::Global {
            errors.push(error(
                "burst",
                "only applies to local limits (the rate limit service counts fixed windows)".into(),
            ));
        }
        if raw.slots.is_some() && scope == Scope::Global {
            errors.push(error("slots", "only applies to local limits".into()));
        }
        if scope == Scope::Global && raw.name == crate::dpop::FLEET_LIMIT {
            errors.push(error(
                "name",
                format!(
                    "{:?} is the descriptor DPoP proofs are spent under (dpop.replay: fleet): name the limit otherwise",
                    crate::dpop::FLEET_LIMIT
                ),
            ));
        }
        let slots = raw.slots.unwrap_or(DEFAULT_SLOTS);
        if slots == 0 || slots > MAX_SLOTS {
            errors.push(error(
                "slots",
                format!("must be between 1 and {MAX_SLOTS}, not {slots}"),
            ));
        }
        let burst = raw.burst.or(rate.map(|r| r.amount)).unwrap_or(1);
        if burst == 0 || burst > MAX_AMOUNT {
            errors.push(error(
                "burst",
                format!("must be between 1 and {MAX_AMOUNT}, not {burst}"),
            ));
        }
        let when = raw.when.as_ref().and_then(|w| {
            checker
                .compile_rule(w, &member(field, "when"), &rule, Sense::Refuses)
                .map_err(|e| errors.push(e))
                .ok()
        });
        let key = checker
            .compile_as(&raw.key, &member(field, "key"), &rule, Want::Str)
            .map_err(|e| errors.push(e))
            .ok();
        let mut uses_arguments = when.as_ref().is_some_and(|w| w.uses_arguments)
            || key.as_ref().is_some_and(|k| k.uses_arguments);
        let (cost, cost_expression) = match raw.cost {
            None => (Some(Cost::Fixed(1)), None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(c) if c <= MAX_AMOUNT => (Some(Cost::Fixed(c)), Some(c.to_string())),
                _ => {
                    errors.push(error(
                        "cost",
                        format!("must be between 0 and {MAX_AMOUNT}, or a CEL expression"),
                    ));
                    (None, None)
                }
            },
            Some(Value::String(source)) => {
                let program = checker
                    .compile_as(&source, &member(field, "cost"), &rule, Want::Int)
                    .map_err(|e| errors.push(e))
                    .ok();
                uses_arguments |= program.as_ref().is_some_and(|p| p.uses_arguments);
                (program.map(|p| Cost::Expression(p.program)), Some(source))
            }
            Some(_) => {
                errors.push(error(
                    "cost",
                    "must be a number or a CEL expression giving an int".into(),
                ));
                (None, None)
            }
        };
        match (rate, key, cost, errors.is_empty()) {
            (Some(rate), Some(key), Some(cost), true) => Ok(Limit {
                name: raw.name,
                description: raw.description,
                when_expression: raw.when,
                key_expression: raw.key,
                cost_expression,
                rate,
                burst,
                scope,
                failure_mode,
                slots,
                key_claim: claim_of(&key.program),
                when: when.map(|w| w.program),
                key: key.program,
                cost,
                uses_arguments,
            }),
            _ => Err(errors),
        }
    }

    /// What an allowed message owes this limit, when that follows from the token's claims
    /// alone: a key `jwt.<claim>` whose claim is a string of at most [`MAX_KEY_BYTES`], no
    /// `when`, a fixed cost. `None`: ask [`Limit::charge`] (which gives the same charge, or the
    /// error, in the CEL context).
    pub(super) fn charge_by_claim(
        &self,
        index: usize,
        claims: Option<&serde_json::Map<String, Value>>,
    ) -> Option<Option<Charge>> {
        let (None, Cost::Fixed(cost), Some(claim)) = (&self.when, &self.cost, &self.key_claim)
        else {
            return None;
        };
        if *cost == 0 {
            return Some(None);
        }
        match claims?.get(claim)? {
            Value::String(key) if key.len() <= MAX_KEY_BYTES => Some(Some(Charge {
                limit: index,
                key: key.clone(),
                cost: *cost,
            })),
            _ => None,
        }
    }

    /// What an allowed message owes this limit: `None` when `when` is false or the cost is 0.
    pub(super) fn charge(
        &self,
        index: usize,
        ctx: &Context,
    ) -> Result<Option<Charge>, ChargeError> {
        let fail = |reason: String| ChargeError {
            limit: index,
            reason,
        };
        if let Some(when) = &self.when {
            match when.execute(ctx) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => return Ok(None),
                Ok(other) => {
                    return Err(fail(format!(
                        "limit's when gave {:?}, not a bool; failing closed",
                        other.type_of()
                    )))
                }
                Err(e) => {
                    return Err(fail(format!(
                        "limit's when could not be evaluated ({e}); failing closed"
                    )))
                }
            }
        }
        let cost = match &self.cost {
            Cost::Fixed(c) => *c,
            Cost::Expression(p) => match p.execute(ctx) {
                Ok(Cel::Int(c)) if (0..=MAX_AMOUNT as i64).contains(&c) => c.unsigned_abs(),
                Ok(Cel::UInt(c)) if c <= MAX_AMOUNT => c,
                Ok(other) => {
                    return Err(fail(format!(
                        "limit's cost gave {other:?}, not an int between 0 and {MAX_AMOUNT}; failing closed"
                    )))
                }
                Err(e) => {
                    return Err(fail(format!(
                        "limit's cost could not be evaluated ({e}); failing closed"
                    )))
                }
            },
        };
        if cost == 0 {
            return Ok(None);
        }
        let key = match self.key.execute(ctx) {
            Ok(Cel::String(s)) if s.len() <= MAX_KEY_BYTES => s.to_string(),
            Ok(Cel::String(s)) => {
                return Err(fail(format!(
                    "limit's key is {} bytes, more than {MAX_KEY_BYTES}; failing closed",
                    s.len()
                )))
            }
            Ok(other) => {
                return Err(fail(format!(
                    "limit's key gave {:?}, not a string; failing closed",
                    other.type_of()
                )))
            }
            Err(e) => {
                return Err(fail(format!(
                    "limit's key could not be evaluated ({e}); failing closed"
                )))
            }
        };
        Ok(Some(Charge {
            limit: index,
            key,
            cost,
        }))
    }
}
