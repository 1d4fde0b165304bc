//! Done: every path ends here. A refusal is answered by one function ([`Stream::refuse`],
//! from a [`Refusal`]); records are written, outcomes counted; the log phase settles a held
//! answer Envoy ended itself.

use std::rc::Rc;

use super::{Action, Phase, Stream};
use crate::audit::{Record, Verdict};
use crate::config::Server;
use crate::discovery::ListKind;
use crate::host::Host;
use crate::metrics;
use crate::refusal::Refusal;

impl Stream {
    /// The adapter calls this when a callback for this stream begins ([`Host::now_nanos`]),
    /// and [`Stream::leave`] when it ends: their sum is the record's `filter_us`.
    pub fn enter(&mut self, now_ns: u64) {
        self.entered_ns = Some(now_ns);
    }

    pub fn leave(&mut self, now_ns: u64) {
        if let Some(entered) = self.entered_ns.take() {
            self.busy_ns = self.busy_ns.saturating_add(now_ns.saturating_sub(entered));
        }
    }
}

impl Stream {
    /// The exchange is over (Envoy's log phase). A held response that never reached its end
    /// here was answered by Envoy itself: over its buffer limit while the filter held it
    /// (500, `response_payload_too_large`), or reset. Its record, still the request's `allow`,
    /// becomes an error naming what Envoy said.
    ///
    /// An allowed message whose answer never reached the filter's end (the caller went away,
    /// the upstream reset) gets its record written here.
    pub fn on_log(&mut self, host: &mut dyn Host) {
        let waited = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::BufferingAnswer { ended: false, .. } => None,
            Phase::AwaitingBody => Some((self.record.take(), "its body")),
            Phase::WaitingForKeys(_) => Some((self.record.take(), "the issuer's keys")),
            Phase::WaitingForDeclarations(_) => {
                Some((self.record.take(), "the server's tool declarations"))
            }
            Phase::WaitingForProof(pending) => Some((
                Some(pending.into_record()),
                "the rate limit service (its DPoP proof)",
            )),
            Phase::WaitingForLimits(pending) => Some((
                Some(pending.into_record()),
                "the rate limit service (its global limits, which may have counted it)",
            )),
            other => {
                self.phase = other;
                if self.unwritten {
                    if let Some(mut record) = self.record.take() {
                        self.write(host, &mut record);
                        self.record = Some(record);
                    }
                }
                return;
            }
        };
        if let Some((record, what)) = waited {
            // The exchange ended before the message was decided or forwarded (the caller went
            // away, a stream reset): nothing reached the server, but it has its record.
            let Some(mut record) = record else { return };
            record.decision = Verdict::Error;
            record.reason = Some("caller_went_away".into());
            record.detail = Some(format!(
                "the exchange ended while the request waited for {what}; nothing was forwarded"
            ));
            self.write(host, &mut record);
            return;
        }
        let Some(mut record) = self.record.take() else {
            return;
        };
        let details = host
            .property_string(&["response", "code_details"])
            .unwrap_or_default();
        if details == "downstream_remote_disconnect" {
            // The caller went away while the answer was held: the call was forwarded and may
            // have run, so it stays the `allow` it was (as when the caller goes before the
            // answer's headers); what happened is said.
            record.detail = Some(
                "the caller went away before the answer was delivered (downstream_remote_disconnect)"
                    .into(),
            );
            self.write(host, &mut record);
            return;
        }
        record.decision = Verdict::Error;
        record.status = host
            .property(&["response", "code"])
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .and_then(|b| u32::try_from(i64::from_le_bytes(b)).ok());
        let (code, detail) = if details == "response_payload_too_large" {
            (
                "response_payload_too_large",
                "the response exceeded Envoy's buffer limit \
                 (per_connection_buffer_limit_bytes) while the filter held it"
                    .to_string(),
            )
        } else {
            ("response_not_completed", details)
        };
        record.reason = Some(code.to_string());
        record.detail = Some(detail);
        self.write(host, &mut record);
    }

    /// An internal failure (`code`, the audit reason, and its prose): answer 503 and audit it
    /// as an error. Nothing is forwarded.
    pub fn fail(&mut self, host: &mut dyn Host, code: &'static str, detail: &str) {
        let record = self
            .record
            .take()
            .unwrap_or_else(|| Record::new(host.now_millis(), ""));
        let detail = detail.to_string();
        self.refuse(host, record, Refusal::Internal { code, detail });
    }

    /// The one answer to a refusal: its status, headers and body, and the audit record with
    /// its decision, reason code, detail and JSON-RPC code. Nothing is forwarded.
    pub(super) fn refuse(
        &mut self,
        host: &mut dyn Host,
        mut record: Record,
        refusal: Refusal,
    ) -> Action {
        if record.decision != Verdict::Error {
            record.decision = refusal.verdict();
        }
        let status = refusal.status();
        record.status = Some(status);
        record.reason = Some(refusal.code().to_string());
        record.detail = Some(refusal.detail());
        if let Some(code) = refusal.jsonrpc_code() {
            record.error_code = Some(code);
        }
        self.audit(host, record);
        self.record = None;
        self.phase = Phase::Done;
        let headers = refusal.headers();
        let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
        host.send_response(status, &all, &refusal.body());
        Action::Pause
    }

    /// Writes the audit record (and counts the outcome once per message). A batch writes one
    /// line per message. An `allow` goes on to the server: its record is written when the
    /// answer has been checked, or in the log phase if none comes (one write per exchange, not
    /// two; each is a serialization and a hostcall).
    pub(super) fn audit(&mut self, host: &mut dyn Host, mut record: Record) {
        if !self.counted {
            self.counted = true;
            let config = Rc::clone(&self.config);
            let server = self.server.and_then(|i| config.servers.get(i));
            let is_rule = |rule: &str| server.is_some_and(|s| is_configured_rule(s, rule));
            metrics::count_outcome(host, &record, &is_rule);
        }
        if record.decision == Verdict::Allow {
            self.unwritten = true;
        } else {
            self.write(host, &mut record);
        }
        self.record = Some(record);
    }

    /// Writes the record (and a batch's other records, one line each) to filter state, with
    /// the timings so far; and the columns that changed, each under its own key.
    pub(super) fn write(&mut self, host: &mut dyn Host, record: &mut Record) {
        self.unwritten = false;
        let now_ns = host.now_nanos();
        let busy_ns = self.busy_ns + self.entered_ns.map_or(0, |t| now_ns.saturating_sub(t));
        record.filter_us = Some(busy_ns / 1_000);
        record.total_ms = self.start_ns.map(|t| now_ns.saturating_sub(t) / 1_000_000);
        let mut line = record.to_line();
        // A batch's records are written at its decision (all allowed, or each answered); what
        // happens to its one answer after that (refused, cut, answered by Envoy) happened to
        // every message of it.
        let answered = record.decision == Verdict::Error || record.status.is_some();
        for other in &mut self.batch {
            // Only an allowed batch's: a denied one's records each say why already.
            if answered && other.decision == Verdict::Allow {
                other.decision = record.decision;
                other.reason.clone_from(&record.reason);
                other.detail.clone_from(&record.detail);
                other.status = record.status;
            }
            other.upstream_status = record.upstream_status;
            other.filter_us = record.filter_us;
            other.total_ms = record.total_ms;
            line.push(b'\n');
            line.extend_from_slice(&other.to_line());
        }
        host.write_audit(&line);
        if !self.config.audit_columns {
            return;
        }
        for ((name, value), last) in record.columns().into_iter().zip(self.columns.iter_mut()) {
            if *last != value {
                host.write_audit_column(name, value.as_deref().unwrap_or_default());
                *last = value;
            }
        }
    }
}

/// Whether `rule` names a rule of the server's configuration: one of its policy's rules, the
/// built-in unknown-method rule, one of its limits (`limit:<name>`) or a pinned tool or prompt
/// (`pin:<name>`). Metrics label only these (a call of an unpinned name counts as `pin`).
pub(super) fn is_configured_rule(server: &Server, rule: &str) -> bool {
    let policy = &server.policy;
    let pinned = |name: &str| {
        [ListKind::Tools, ListKind::Prompts]
            .into_iter()
            .any(|kind| server.pins.pin(kind, name).is_some())
    };
    rule == crate::policy::UNKNOWN_METHOD_RULE
        || policy.rules.iter().any(|r| r.name == rule)
        || rule
            .strip_prefix("limit:")
            .is_some_and(|name| policy.limits.iter().any(|l| l.name == name))
        || rule.strip_prefix("pin:").is_some_and(pinned)
}
