//! A JSON-RPC batch (protocol 2025-03-26 only), in the awaiting-the-body phase: each message
//! is decided and audited on its own; if any is denied, none is forwarded.

use serde_json::Value;

use super::body::{add_pin_drift, arguments, denial, describe, invalid};
use super::body::{pin_drift, pin_refusal, pin_rule};
use super::done::is_configured_rule;
use super::{Action, Phase, Stream};
use crate::audit::{Record, Verdict};
use crate::config::Server;
use crate::discovery::ListKind;
use crate::host::Host;
use crate::mcp::{self, Kind};
use crate::pins::{self, Drift};
use crate::policy::Outcome;
use crate::refusal::Refusal;
use crate::response::ListFilter;
use crate::{metrics, reply};

impl Stream {
    /// A JSON-RPC batch: only protocol version 2025-03-26 allows them. Each message is
    /// authorized on its own and audited on its own line; if any is denied, none is forwarded.
    pub(super) fn on_batch(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        record: Record,
        body: &[u8],
    ) -> Action {
        let protocol = self.header("mcp-protocol-version").unwrap_or_default();
        if protocol != "2025-03-26" {
            let refusal = Refusal::BatchNotAllowed(protocol.to_string());
            return self.refuse(host, record, refusal);
        }
        let messages = match mcp::parse_batch_for(body, mcp::DEFAULT_MAX_DEPTH, arguments(server)) {
            Ok(m) => m,
            Err(e) => return self.refuse(host, record, invalid(&e)),
        };
        // Each element is checked as a message sent alone is (its params, its declared
        // version); the Mcp-Method and Mcp-Name headers describe one message, never a batch.
        for m in &messages {
            if let Err(e) = crate::protocol::check_params(m) {
                return self.refuse(host, record, invalid(&e));
            }
            if let Err(detail) = crate::protocol::declared_version(Some(protocol), m) {
                let id = m.id.clone();
                return self.refuse(host, record, Refusal::HeaderMismatch { id, detail });
            }
            // Its answer would be a standing stream that outlives the batch's request, watched
            // for its token's end only when the message comes alone (`Stream::standing`).
            if m.method == crate::protocol::LISTEN {
                let e = mcp::ParseError::Invalid(format!(
                    "{} opens a standing stream: send it alone, not in a batch",
                    crate::protocol::LISTEN
                ));
                return self.refuse(host, record, invalid(&e));
            }
        }
        let named = ["mcp-method", "mcp-name"]
            .into_iter()
            .find(|name| self.header(name).is_some())
            .or_else(|| {
                self.headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .find(|k| crate::protocol::is_param_header(k))
            });
        if let Some(name) = named {
            let detail = format!("a batch has no {name} header: it names one message");
            let refusal = Refusal::HeaderMismatch { id: None, detail };
            return self.refuse(host, record, refusal);
        }
        if self.config.sessions.is_some() && crate::tasks::carries_task_ids(body) {
            // Batches are 2025-03-26 only, which has no tasks: never opened, never forwarded.
            return self.refuse(host, record, Refusal::TaskInBatch);
        }
        if let Some(name) = server.policy.repeated_read_header(&self.request_facts()) {
            let refusal = Refusal::RepeatedHeader(name.to_string().into());
            return self.refuse(host, record, refusal);
        }
        let source = record.source.clone().unwrap_or_default();
        let now = host.now_millis();
        let decisions: Vec<_> = messages
            .iter()
            .map(|m| server.policy.evaluate(&self.input(m, &source, now)))
            .collect();
        let drifts: Vec<Option<Drift>> = messages
            .iter()
            .map(|m| pin_drift(host, server, m))
            .collect();
        let enforce = server.pins.mode == pins::Mode::Enforce;
        let all_allowed = decisions
            .iter()
            .zip(&drifts)
            .all(|(d, drift)| d.outcome == Outcome::Allow && !(enforce && drift.is_some()));
        if all_allowed && !server.policy.limits.is_empty() {
            // Limits count one message per request; a batch would have to be spent atomically.
            return self.refuse(host, record, Refusal::BatchWithLimits);
        }
        // Requests get their errors in a 200 batch; a batch of notifications only gets a 403.
        let status = if messages.iter().any(|m| m.kind == Kind::Request) {
            200
        } else {
            403
        };
        let mut records = Vec::with_capacity(messages.len());
        let mut answers = Vec::new();
        for ((message, decision), drift) in messages.iter().zip(&decisions).zip(&drifts) {
            let mut r = record.clone();
            describe(&mut r, message, server, self.presented_token());
            r.rule = decision.rule.clone();
            let pinned_out = match drift {
                Some(drift) => {
                    add_pin_drift(&mut r, std::slice::from_ref(drift));
                    (enforce && decision.outcome == Outcome::Allow).then_some(drift)
                }
                None => None,
            };
            if let Some(drift) = pinned_out {
                r.decision = Verdict::Deny;
                r.status = Some(status);
                r.rule = Some(pin_rule(drift));
                let refusal = pin_refusal(server, message, drift);
                r.reason = Some(refusal.code().to_string());
                r.detail = Some(refusal.detail());
                r.error_code = refusal.jsonrpc_code();
                if message.kind == Kind::Request {
                    if let Ok(v) = serde_json::from_slice::<Value>(&refusal.body()) {
                        answers.push(v);
                    }
                }
            } else if all_allowed {
                r.decision = Verdict::Allow;
            } else {
                r.decision = Verdict::Deny;
                r.status = Some(status);
                r.error_code = Some(reply::POLICY_DENIED);
                let denied_here = decision.outcome != Outcome::Allow;
                let (code, detail) = if denied_here {
                    let code = match decision.outcome {
                        Outcome::InsufficientScope(_) => "insufficient_scope",
                        _ => "policy_denied",
                    };
                    (code, decision.reason.clone())
                } else {
                    // The rule that allowed this message did not decide its denial: naming
                    // it would count a denial against an allow rule.
                    r.rule = None;
                    let why = "another message in the batch was denied";
                    ("batch_denied", why.to_string())
                };
                r.reason = Some(code.to_string());
                r.detail = Some(detail);
                if message.kind == Kind::Request {
                    let (_, body) = if denied_here {
                        denial(server, message, decision.rule.as_deref())
                    } else {
                        let text = "not executed: another message in this batch was denied";
                        (
                            reply::POLICY_DENIED,
                            reply::jsonrpc_error(
                                message.id.as_ref(),
                                reply::POLICY_DENIED,
                                text,
                                None,
                            ),
                        )
                    };
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        answers.push(v);
                    }
                }
            }
            records.push(r);
        }
        for r in &records {
            metrics::count_outcome(host, r, &|rule| is_configured_rule(server, rule));
        }
        self.counted = true;
        let mut records = records.into_iter();
        let Some(first) = records.next() else {
            return Action::Pause;
        };
        self.batch = records.collect();
        self.audit(host, first);
        if all_allowed {
            // Each list request's answer is matched by id and must be its list; every list in
            // any response of the batch is filtered; a response to no request of the batch
            // does not pass (clients take responses by id, whichever POST they came on).
            let mut lists = ListFilter {
                any: ListKind::ALL.to_vec(),
                strict: true,
                ..ListFilter::default()
            };
            for m in messages.iter().filter(|m| m.kind == Kind::Request) {
                let Some(id) = m.id.clone() else { continue };
                match ListKind::for_method(&m.method) {
                    Some(kind) => lists.lists.push((id, kind)),
                    None => lists.others.push(id),
                }
            }
            self.lists = Some(lists);
            return Action::Continue;
        }
        let body = Value::Array(answers).to_string().into_bytes();
        self.record = None;
        self.batch.clear();
        self.phase = Phase::Done;
        host.send_response(status, &[("content-type", "application/json")], &body);
        Action::Pause
    }
}
