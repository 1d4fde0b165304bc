//! Counter names. Labels are encoded in the name (`…method=tools_call.decision=allow`) and
//! extracted into Prometheus labels by `stats_config.stats_tags` in the Envoy bootstrap (see
//! envoy/). Envoy shows them as `wasmcustom.mcp_guard.*`; `/stats/prometheus` as
//! `mcp_guard_*`.

use crate::audit::{Record, Verdict};
use crate::host::Host;
use crate::policy;

pub const HIDDEN_ENTRIES: &str = "mcp_guard.hidden_entries";
/// Service-key occurrences redacted from answers that went on.
pub const KEY_LEAKS: &str = "mcp_guard.key_leaks_redacted";
/// Service-key occurrences in answers that were blocked (`key_leak: block`) or cut.
pub const KEY_LEAKS_BLOCKED: &str = "mcp_guard.key_leaks_blocked";
/// Listed tool (or prompt) definitions that did not match their pin, or had none (either mode).
pub const PIN_DRIFT: &str = "mcp_guard.pin_drift";

/// A label value safe inside a stat name: `[A-Za-z0-9_-]`, everything else `_`, bounded.
pub fn label(value: &str) -> String {
    value
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `prefix` followed by `.name=value` for each label (values through [`label`]). Built without
/// `format!`, which is slow in Wasm and runs here for every counted message.
fn counter(prefix: &str, labels: &[(&str, &str)]) -> String {
    let mut name = String::with_capacity(
        prefix.len()
            + labels
                .iter()
                .map(|(n, v)| n.len() + v.len().min(64) + 2)
                .sum::<usize>(),
    );
    name.push_str(prefix);
    for (label_name, value) in labels {
        name.push('.');
        name.push_str(label_name);
        name.push('=');
        name.push_str(&label(value));
    }
    name
}

/// Counts one message's outcome: by method and decision, and denials by rule. Label values come
/// from bounded sets only: methods an MCP client sends (else `other`; `response` for a
/// response, `none` when there is no message), rules of the configuration (`is_rule`; a pin
/// denial counts as `pin`, anything else as `other`).
pub fn count_outcome(host: &mut dyn Host, record: &Record, is_rule: &dyn Fn(&str) -> bool) {
    let decision = match record.decision {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Error => "error",
    };
    let method = match record.method.as_deref() {
        None => "none",
        Some(m) if m == "response" || (!m.is_empty() && policy::is_client_method(m)) => m,
        Some(_) => "other",
    };
    host.count(
        &counter(
            "mcp_guard.requests",
            &[("method", method), ("decision", decision)],
        ),
        1,
    );
    if let (Verdict::Deny, Some(rule)) = (record.decision, &record.rule) {
        let rule = match rule.as_str() {
            r if is_rule(r) => r,
            r if r.starts_with("pin:") => "pin",
            _ => "other",
        };
        host.count(&counter("mcp_guard.denials", &[("rule", rule)]), 1);
    }
}

/// Counts an authentication failure by reason (expired, wrong_audience, unknown_key, …): the
/// reason codes of [`crate::refusal::Refusal`] for authentication, a fixed set.
pub fn count_auth_failure(host: &mut dyn Host, reason: &str) {
    host.count(
        &format!("mcp_guard.auth_failures.reason={}", label(reason)),
        1,
    );
}

/// Counts a limit's outcome for one message: `allowed`, `limited`, `error` (not evaluated,
/// refused), `failure_open` / `failure_closed` (the rate limit service did not answer). The
/// label is the limit's name, never its key.
pub fn count_limit(host: &mut dyn Host, limit: &str, outcome: &str) {
    host.count(
        &counter("mcp_guard.limits", &[("name", limit), ("outcome", outcome)]),
        1,
    );
}

/// Counts a JWKS fetch outcome.
pub fn count_fetch(host: &mut dyn Host, outcome: &str) {
    host.count(
        &format!("mcp_guard.jwks_fetches.outcome={}", label(outcome)),
        1,
    );
}

/// Counts a revocation feed fetch outcome.
pub fn count_feed_fetch(host: &mut dyn Host, outcome: &str) {
    host.count(
        &format!("mcp_guard.revocation_fetches.outcome={}", label(outcome)),
        1,
    );
}
