//! The limits step of the request path: once the policy allowed a message, spend from the
//! budgets its limits name — local token buckets at once ([`crate::limits`]), global ones by
//! asking the rate limit service ([`crate::rls`]), one request per limit, while the request
//! waits. A limited message is answered with HTTP 200 and a JSON-RPC error
//! ([`reply::RATE_LIMITED`]) plus `Retry-After`; the session goes on.

use serde_json::json;

use super::{Action, Phase, Stream};
use crate::audit::{Record, Verdict};
use crate::config::Server;
use crate::host::Host;
use crate::limits::{self, Outcome as Local};
use crate::mcp::{Kind, Message};
use crate::policy::{Charge, ChargeError, FailureMode, Scope};
use crate::refusal::Refusal;
use crate::{metrics, reply, rls};

/// A message waiting for the rate limit service's answers.
pub(super) struct PendingLimit {
    record: Record,
    what: What,
    /// One call per global limit the message spends from.
    calls: Vec<Call>,
}

/// One global limit asked about: its own `ShouldRateLimit` call, with one descriptor. Services
/// read a request differently when it holds several (limitador-server matches descriptors by
/// position and counts the request's `hits_addend` for each), so each limit is its own request.
struct Call {
    charge: Charge,
    /// `None`: the call could not be made.
    token: Option<u32>,
    answer: Option<Result<rls::Verdict, String>>,
}

impl PendingLimit {
    /// The message's record, when Envoy answered before the service did.
    pub(super) fn into_record(self) -> Record {
        self.record
    }
}

/// What the answer to a refused message needs from it.
#[derive(Clone)]
struct What {
    id: Option<serde_json::Value>,
    request: bool,
    text: String,
}

/// Whether the message goes on.
pub(super) enum Gate {
    /// Within every limit: forward it (the record carries what the limits left).
    Pass(Box<Record>),
    /// Answered, or waiting for the rate limit service.
    Done(Action),
}

impl What {
    fn of(message: &Message) -> What {
        let text = match &message.target {
            crate::mcp::Target::Tool { name, .. } | crate::mcp::Target::Prompt { name } => {
                format!("{} {name:?}", message.method)
            }
            crate::mcp::Target::Resource { uri } => format!("{} {uri:?}", message.method),
            crate::mcp::Target::None => message.method.clone(),
        };
        What {
            id: message.id.clone(),
            request: message.kind == Kind::Request,
            text,
        }
    }
}

impl Stream {
    /// Spends an allowed message's budgets. Local limits first (a message they refuse never
    /// reaches the rate limit service), then one request to the service per global one, one
    /// after the other ([`Stream::ask_globals`]).
    pub(super) fn limit(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        charges: Result<Vec<Charge>, ChargeError>,
        message: &Message,
        mut record: Record,
    ) -> Gate {
        let policy = &server.policy;
        if policy.limits.is_empty() {
            return Gate::Pass(Box::new(record));
        }
        let charges = match charges {
            Ok(c) => c,
            Err(e) => {
                let name = policy
                    .limits
                    .get(e.limit)
                    .map(|l| l.name.clone())
                    .unwrap_or_default();
                metrics::count_limit(host, &name, "error");
                record.reason = Some(e.reason);
                let code = "limit_error";
                let what = What::of(message);
                let refused = self.refuse_limit(host, server, record, &what, &name, (code, None));
                return Gate::Done(refused);
            }
        };
        let now = host.now_millis();
        let mut globals = Vec::new();
        for charge in charges {
            let Some(limit) = policy.limits.get(charge.limit) else {
                continue;
            };
            if limit.scope == Scope::Global {
                globals.push(charge);
                continue;
            }
            let id = limits::limit_id(&server.name, &limit.name);
            let keyed = self.config.sessions.as_ref().map(|keys| keys.limit_slots());
            match limits::take(host, keyed, &id, limit, &charge.key, charge.cost, now) {
                Local::Allowed { remaining } => {
                    metrics::count_limit(host, &limit.name, "allowed");
                    least(&mut record, remaining);
                }
                Local::Limited {
                    remaining,
                    retry_after_ms,
                } => {
                    metrics::count_limit(host, &limit.name, "limited");
                    record.limit_remaining = Some(remaining);
                    record.reason = Some(format!(
                        "limit {:?} ({}) exhausted for this key",
                        limit.name, limit.rate
                    ));
                    let name = limit.name.clone();
                    return Gate::Done(self.refuse_limit(
                        host,
                        server,
                        record,
                        &What::of(message),
                        &name,
                        ("rate_limited", Some(retry_after_ms)),
                    ));
                }
                Local::Failed(why) => {
                    metrics::count_limit(host, &limit.name, "error");
                    record.reason = Some(format!("{why}: limit {:?}; failing closed", limit.name));
                    let name = limit.name.clone();
                    let code = "limit_failed";
                    let what = What::of(message);
                    let refused =
                        self.refuse_limit(host, server, record, &what, &name, (code, None));
                    return Gate::Done(refused);
                }
            }
        }
        if globals.is_empty() {
            return Gate::Pass(Box::new(record));
        }
        // What a refusal's answer names, built only once one may be needed (it formats).
        let what = What::of(message);
        if self.config.rate_limit_service.is_none() {
            let why = "no rate limit service is configured";
            return self.service_failed(host, server, record, &what, &globals, why);
        }
        let calls: Vec<Call> = globals
            .into_iter()
            .map(|charge| Call {
                charge,
                token: None,
                answer: None,
            })
            .collect();
        self.ask_globals(host, server, record, what, calls)
    }

    /// Asks the rate limit service about the next global limit not asked yet, in policy order,
    /// and waits for its answer; decides once every limit was asked or one answer settles it
    /// (over its budget, or failed where the limit fails closed). One at a time: the service
    /// counts every request it finds within its limit and nothing can be given back, so a
    /// message refused by one limit must not have been counted against the others (a caller
    /// over its own budget would otherwise spend a shared one with calls that never run).
    fn ask_globals(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        record: Record,
        what: What,
        mut calls: Vec<Call>,
    ) -> Gate {
        let config = std::rc::Rc::clone(&self.config);
        let policy = &server.policy;
        loop {
            let settled = calls.iter().any(|c| {
                let closed = || {
                    policy
                        .limits
                        .get(c.charge.limit)
                        .is_some_and(|l| l.failure_mode == FailureMode::Closed)
                };
                match &c.answer {
                    Some(Ok(verdict)) if verdict.over_limit => true,
                    Some(Ok(verdict)) if verdict.applied == Some(false) => closed(),
                    Some(Err(_)) => closed(),
                    _ => false,
                }
            });
            let next = calls
                .iter_mut()
                .find(|c| c.token.is_none() && c.answer.is_none());
            let (false, Some(next)) = (settled, next) else {
                return self.decide(host, server, record, &what, &calls);
            };
            let token = match (
                config.rate_limit_service.as_ref(),
                policy.limits.get(next.charge.limit),
            ) {
                (Some(service), Some(l)) => {
                    let ask = rls::Ask {
                        limit: &l.name,
                        key: &next.charge.key,
                        rate: l.rate,
                        cost: next.charge.cost,
                    };
                    rls::call(host, service, &ask)
                }
                _ => None,
            };
            match token {
                Some(token) => {
                    next.token = Some(token);
                    self.phase = Phase::WaitingForLimits(Box::new(PendingLimit {
                        record,
                        what,
                        calls,
                    }));
                    return Gate::Done(Action::Pause);
                }
                None => {
                    next.answer = Some(Err("rate limit service could not be called".to_string()));
                }
            }
        }
    }

    /// Whether the request waits for the rate limit service.
    pub fn waiting_for_limits(&self) -> bool {
        matches!(self.phase, Phase::WaitingForLimits(_))
    }

    /// The rate limit service answered call `token`: `status` is the gRPC status (0: OK) and
    /// `body` the answer's bytes. Forwards the message or answers it.
    pub fn on_grpc_answer(
        &mut self,
        host: &mut dyn Host,
        token: u32,
        status: u32,
        body: Option<&[u8]>,
    ) -> Action {
        let action = if self.waiting_for_proof(token) {
            self.proof_answer(host, token, status, body)
        } else {
            self.grpc_answer(host, token, status, body)
        };
        self.forwarded_on(action)
    }

    fn grpc_answer(
        &mut self,
        host: &mut dyn Host,
        token: u32,
        status: u32,
        body: Option<&[u8]>,
    ) -> Action {
        let Phase::WaitingForLimits(pending) = &mut self.phase else {
            return Action::Pause;
        };
        let Some(call) = pending
            .calls
            .iter_mut()
            .find(|c| c.token == Some(token) && c.answer.is_none())
        else {
            return Action::Pause;
        };
        call.answer = Some(rls::answer(status, body, 1).and_then(|verdicts| {
            verdicts
                .into_iter()
                .next()
                .ok_or_else(|| "an answer without a verdict".to_string())
        }));
        let PendingLimit {
            record,
            what,
            calls,
        } = match std::mem::replace(&mut self.phase, Phase::Headers) {
            Phase::WaitingForLimits(pending) => *pending,
            other => {
                self.phase = other;
                return Action::Pause;
            }
        };
        let config = std::rc::Rc::clone(&self.config);
        let Some(server) = self.server.and_then(|i| config.servers.get(i)) else {
            return Action::Pause;
        };
        match self.ask_globals(host, server, record, what, calls) {
            Gate::Pass(record) => {
                self.audit(host, *record);
                Action::Continue
            }
            Gate::Done(action) => action,
        }
    }

    /// The global limits asked (or whose call could not be made; those after one that settled
    /// the message are not asked): a limit over its budget
    /// refuses the message; a call that failed, or whose descriptor the service has no limit
    /// for (it counted nothing), applies that limit's failure mode; else the message goes on.
    fn decide(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        mut record: Record,
        what: &What,
        calls: &[Call],
    ) -> Gate {
        for call in calls {
            let (Some(Ok(verdict)), Some(limit)) =
                (&call.answer, server.policy.limits.get(call.charge.limit))
            else {
                continue;
            };
            if verdict.over_limit {
                metrics::count_limit(host, &limit.name, "limited");
                record.limit_remaining = Some(verdict.remaining);
                record.reason = Some(format!(
                    "limit {:?} ({}, global) exhausted for this key",
                    limit.name, limit.rate
                ));
                // The service's window reset when it says; else the time one unit refills.
                let retry = verdict
                    .reset_ms
                    .filter(|ms| *ms > 0)
                    .unwrap_or_else(|| limit.rate.unit.millis().div_ceil(limit.rate.amount.max(1)));
                let name = limit.name.clone();
                let code = "rate_limited";
                let refused =
                    self.refuse_limit(host, server, record, what, &name, (code, Some(retry)));
                return Gate::Done(refused);
            }
        }
        let mut failed: Vec<Charge> = Vec::new();
        let mut why: Vec<String> = Vec::new();
        for call in calls {
            let name = server
                .policy
                .limits
                .get(call.charge.limit)
                .map_or("?", |l| l.name.as_str());
            match &call.answer {
                Some(Ok(verdict)) if verdict.applied != Some(false) => continue,
                // No limit of the service matched the descriptor: it counted nothing (the
                // limit is missing from its configuration), as for DPoP proofs (replay.rs).
                Some(Ok(_)) => why.push(format!("it has no limit for {name:?}")),
                Some(Err(e)) => why.push(format!("{e} for {name:?}")),
                // Not asked: an earlier limit settled the message.
                None => continue,
            }
            failed.push(call.charge.clone());
        }
        if !failed.is_empty() {
            match self.service_failed(host, server, record, what, &failed, &why.join("; ")) {
                Gate::Pass(open) => record = *open,
                done => return done,
            }
        }
        for call in calls {
            if let (Some(Ok(verdict)), Some(limit)) =
                (&call.answer, server.policy.limits.get(call.charge.limit))
            {
                if verdict.applied != Some(false) {
                    metrics::count_limit(host, &limit.name, "allowed");
                    least(&mut record, verdict.remaining);
                }
            }
        }
        Gate::Pass(Box::new(record))
    }

    /// The rate limit service did not answer: each global limit's failure mode decides.
    fn service_failed(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        mut record: Record,
        what: &What,
        asks: &[Charge],
        why: &str,
    ) -> Gate {
        let mut closed = None;
        for charge in asks {
            let Some(limit) = server.policy.limits.get(charge.limit) else {
                continue;
            };
            match limit.failure_mode {
                FailureMode::Open => metrics::count_limit(host, &limit.name, "failure_open"),
                FailureMode::Closed => {
                    metrics::count_limit(host, &limit.name, "failure_closed");
                    if closed.is_none() {
                        closed = Some(limit.name.clone());
                    }
                }
            }
        }
        match closed {
            Some(name) => {
                record.decision = Verdict::Error;
                record.reason = Some(format!(
                    "the rate limit service gave no verdict ({why}); limit {name:?} fails closed"
                ));
                let code = "rate_limit_service_unavailable";
                let retry = Some(1_000);
                Gate::Done(self.refuse_limit(host, server, record, what, &name, (code, retry)))
            }
            None => {
                record.reason = Some("rate_limit_service_unavailable".into());
                record.detail = Some(format!(
                    "the rate limit service gave no verdict ({why}); global limits fail open"
                ));
                Gate::Pass(Box::new(record))
            }
        }
    }

    /// Refuses a message for limit `name`: HTTP 200 and a JSON-RPC error for a request (429
    /// for a notification or response, which have no id to answer), `Retry-After` when known.
    fn refuse_limit(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        mut record: Record,
        what: &What,
        name: &str,
        (code, retry_after_ms): (&'static str, Option<u64>),
    ) -> Action {
        let policy = &server.policy;
        // The sites above put the prose where the code goes now.
        let detail = record.reason.take().unwrap_or_default();
        let failed = record.decision == Verdict::Error;
        record.rule = Some(format!("limit:{name}"));
        record.error_code = Some(reply::RATE_LIMITED);
        let text = match retry_after_ms {
            Some(ms) => format!(
                "{} refused by limit {name:?} of policy {:?}: budget spent, retry in {} s",
                what.text,
                policy.name,
                seconds(ms)
            ),
            None => format!(
                "{} refused by limit {name:?} of policy {:?}: the limit could not be checked",
                what.text, policy.name
            ),
        };
        let data = json!({
            "limit": name,
            "policy": policy.name,
            "policy_version": policy.version,
            "retry_after_ms": retry_after_ms,
            "remaining": record.limit_remaining,
        });
        let body = reply::jsonrpc_error(what.id.as_ref(), reply::RATE_LIMITED, &text, Some(data));
        let refusal = Refusal::RateLimited {
            code,
            request: what.request,
            detail,
            body,
            retry_after_s: retry_after_ms.map(seconds),
            failed,
        };
        self.refuse(host, record, refusal)
    }
}

/// Keeps the smallest budget left among the limits a message spent from.
fn least(record: &mut Record, remaining: u64) {
    record.limit_remaining = Some(
        record
            .limit_remaining
            .map_or(remaining, |r| r.min(remaining)),
    );
}

/// Whole seconds, rounded up, at least 1 (`Retry-After`).
fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}
