//! The path of one HTTP exchange through the filter. Read this file first.
//!
//! ```text
//! request headers ─┬─ RFC 9728 metadata path? ─── answer the metadata document
//!                  ├─ no MCP server here? ─────── 404
//!                  ├─ bearer JWT ─────────────── 400/401 + WWW-Authenticate (503 while no keys)
//!                  ├─ session handle: open, check caller and server ── 404; forward the upstream's id
//!                  ├─ swap credentials: strip the client's, set the service key, claim headers
//!                  └─ POST: hold, buffer the body ┐   GET/DELETE: forward
//! request body ────── HTTP checks, strict JSON-RPC parse ── 400/413/415
//!                  └─ policy ── deny: 200 + JSON-RPC error │ 403 insufficient_scope │ allow
//! response headers ── upstream 401/403 → 502; seal the session id; plan body inspection
//! response body ───── filter list results per caller; redact the service key
//! ```
//!
//! Every outcome writes one audit record. Nothing here calls Envoy: host access goes through
//! [`Host`], so the whole path is tested natively.

use std::rc::Rc;

use serde_json::{json, Value};

use crate::audit::{ArgumentsMode, PinDrift, Record, Verdict, AUDIT_COLUMNS, MAX_PIN_DRIFT};
use crate::config::{Config, Server};
use crate::discovery::ListKind;
use crate::dpop::{self, SenderError};
use crate::host::{Header, Host, HostError};
use crate::jwt::{AuthError, Identity};
use crate::mcp::{self, Kind, Message, Target};
use crate::oauth::BearerError;
use crate::pins::{self, Check, Drift};
use crate::policy::{Input, Item, Outcome, RequestFacts};
use crate::refusal::Refusal;
use crate::response::{self, Body, ListFilter};
use crate::seal::OpenError;
use crate::sse::SseRewriter;
use crate::{metrics, oauth, protocol, reply, session};

mod limits;
mod waiting;

pub use waiting::{Wait, Waiting};

/// What the adapter tells Envoy after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// What to do with a response body chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAction {
    Continue,
    /// Hold it (Envoy buffers) until more arrives.
    Pause,
    /// Send these bytes in place of everything buffered so far.
    Replace(Vec<u8>),
}

/// The state of one HTTP stream.
pub struct Stream {
    config: Rc<Config>,
    server: Option<usize>,
    identity: Option<Identity>,
    headers: Vec<Header>,
    query: String,
    /// Where the request is.
    phase: Phase,
    /// The request's HTTP method, resolved once.
    method: String,
    end_of_stream: bool,
    record: Option<Record>,
    /// The whole request body has arrived (Envoy buffers it until the decision).
    body_done: bool,
    counted: bool,
    /// The audit records of a batch's other messages (the first is `record`).
    batch: Vec<Record>,
    lists: Option<ListFilter>,
    /// When the request began (Envoy's `request.time`), in nanoseconds since the epoch.
    start_ns: Option<u64>,
    /// Time spent in this stream's callbacks so far, and when the current one began.
    busy_ns: u64,
    entered_ns: Option<u64>,
    /// The audit columns last written to filter state (see [`Record::columns`]).
    columns: [Option<String>; AUDIT_COLUMNS.len()],
    /// The protocol version the request declares (`_meta`, else the header).
    protocol: Option<String>,
}

/// The phases of one request. Each variant is a state the request can be in and holds what
/// that state needs; a step consumes the phase (`std::mem::replace`) and sets the next one.
/// Adding an asynchronous step (waiting on an HTTP or gRPC callout) is adding a phase.
///
/// ```text
/// Headers ─┬─▶ WaitingForKeys ──(keys, feed, introspection answer, deadline)──▶ Headers
///          ├─▶ AwaitingBody ─┬─▶ WaitingForLimits ──(rate limit service)──┐
///          │                 └───────────────────────────────────────────┤
///          └─────────────────────────────────────────────────────────────┴─▶ Forwarded
/// Forwarded ─(answer headers)─┬─▶ BufferingAnswer ──(its end: checked)──▶ …
///                             ├─▶ StreamingEvents ──(event by event)──▶ …
///                             └─▶ Done
/// any ──(refusal: `Stream::refuse`)──▶ Done
/// ```
enum Phase {
    /// The request headers are being decided.
    Headers,
    /// Authentication waits for an issuer's keys, its revocation feed or an introspection
    /// answer (callouts of the root context); [`Stream::resume`] re-enters the headers.
    WaitingForKeys(Wait),
    /// The headers were accepted; the decision needs the whole request body.
    AwaitingBody,
    /// An allowed message waits for the rate limit service (global limits, a gRPC callout).
    WaitingForLimits(Box<limits::PendingLimit>),
    /// Forwarded (or allowed without a body); the answer has not come yet.
    Forwarded,
    /// The answer is held whole and checked at its end (`ended` once it was); `json`: its
    /// content type is `application/json`.
    BufferingAnswer { json: bool, ended: bool },
    /// The answer is an event stream, checked and rewritten event by event.
    StreamingEvents(Box<SseRewriter>),
    /// Answered locally, or nothing is left to decide.
    Done,
}

impl Stream {
    pub fn new(config: Rc<Config>) -> Self {
        Stream {
            config,
            server: None,
            identity: None,
            headers: Vec::new(),
            query: String::new(),
            phase: Phase::Headers,
            method: String::new(),
            end_of_stream: false,
            record: None,
            body_done: false,
            counted: false,
            batch: Vec::new(),
            lists: None,
            start_ns: None,
            busy_ns: 0,
            entered_ns: None,
            columns: Default::default(),
            protocol: None,
        }
    }

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

    /// The configuration this stream runs with (an ECDS update leaves it in place).
    pub fn config(&self) -> &Rc<Config> {
        &self.config
    }

    /// Whether the headers were accepted and the decision now needs the whole body.
    pub fn awaiting_body(&self) -> bool {
        matches!(self.phase, Phase::AwaitingBody)
    }

    /// Set while the request waits for keys; the adapter calls [`Stream::resume`] when the
    /// issuer's keys change, a fetch settles, or the deadline passes (see [`Waiting`]).
    pub fn waiting(&self) -> Option<Wait> {
        match self.phase {
            Phase::WaitingForKeys(wait) => Some(wait),
            _ => None,
        }
    }

    /// The adapter saw the end of the request body (Envoy holds it): whether to read it and
    /// call [`Stream::on_request_body`] now. Not while the request waits for keys; then
    /// [`Stream::body_due`] says so after it resumed.
    pub fn request_body_ended(&mut self) -> bool {
        self.body_done = true;
        self.body_due()
    }

    /// Whether the whole body is there and the decision waits for it.
    pub fn body_due(&self) -> bool {
        self.body_done && self.awaiting_body()
    }

    pub fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        self.headers = host.request_headers();
        self.end_of_stream = end_of_stream;
        self.method = self.header(":method").unwrap_or_default().to_string();
        let method = self.method.clone();
        let full_path = self.header(":path").unwrap_or_default().to_string();
        let (path, query) = full_path
            .split_once('?')
            .unwrap_or((full_path.as_str(), ""));
        self.query = query.to_string();

        let mut record = Record::new(host.now_millis(), &method);
        self.start_ns = host
            .property(&["request", "time"])
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .and_then(|b| u64::try_from(i64::from_le_bytes(b)).ok())
            .or(self.entered_ns);
        record.request_id = self.header("x-request-id").map(str::to_string);
        record.source = host.property_string(&["source", "address"]);
        record.route = host.property_string(&["xds", "route_name"]);
        record.upstream = host.property_string(&["xds", "cluster_name"]);
        record.session_id = self.header("mcp-session-id").map(str::to_string);
        record.protocol_version = self.header("mcp-protocol-version").map(str::to_string);
        self.protocol = record.protocol_version.clone();
        if let (Some(trace), _) = protocol::trace(&self.headers, None) {
            record.trace_id = Some(trace.trace_id);
            record.span_id = Some(trace.span_id);
        }

        let config = Rc::clone(&self.config);
        let authority = self.header(":authority").unwrap_or_default().to_string();
        if method == "GET" || method == "HEAD" {
            let (route, cluster) = (record.route.as_deref(), record.upstream.as_deref());
            if let Some(server) = config.server_for_metadata(path, route, &authority, cluster) {
                let body = oauth::metadata_document(server);
                let headers = [
                    ("content-type", "application/json"),
                    ("cache-control", "max-age=300"),
                ];
                host.send_response(200, &headers, &body);
                return Action::Pause;
            }
        }
        let selected = config.select_server(
            path,
            record.route.as_deref(),
            &authority,
            record.upstream.as_deref(),
        );
        let Some(server) = selected.and_then(|i| config.servers.get(i)) else {
            return self.refuse(host, record, Refusal::UnknownPath);
        };
        self.server = selected;
        record.server = Some(server.name.clone());
        record.policy = Some(server.policy.name.clone());
        record.policy_version = Some(server.policy.version.clone());
        self.record = Some(record);
        let action = self.authorize(host, None);
        self.forwarded_on(action)
    }

    /// Re-runs authentication once the awaited keys arrived (or the wait timed out).
    pub fn resume(&mut self, host: &mut dyn Host) -> Action {
        let waited = match std::mem::replace(&mut self.phase, Phase::Headers) {
            Phase::WaitingForKeys(wait) => wait,
            other => {
                self.phase = other;
                return Action::Pause;
            }
        };
        let action = self.authorize(host, Some(waited));
        self.forwarded_on(action)
    }

    /// A request-side step returned `Continue`: the request goes upstream.
    fn forwarded_on(&mut self, action: Action) -> Action {
        if action == Action::Continue {
            self.phase = Phase::Forwarded;
        }
        action
    }

    /// Authentication, session check, credential swap, method dispatch. Re-entered after a
    /// wait (`waited`: the wait it comes back from).
    fn authorize(&mut self, host: &mut dyn Host, waited: Option<Wait>) -> Action {
        let config = Rc::clone(&self.config);
        let (Some(server), Some(mut record)) = (
            self.server.and_then(|i| config.servers.get(i)),
            self.record.take(),
        ) else {
            return Action::Pause;
        };
        let now_ms = host.now_millis();
        let identity = match self.authenticate(host, server) {
            // RFC 8707: the token must have been issued for this server, not just any of ours.
            Ok(identity) if !identity.has_audience(&server.audiences) => {
                return self.refuse_auth(
                    host,
                    server,
                    record,
                    AuthFailure::Token(AuthError::WrongAudience),
                );
            }
            Ok(identity) => identity,
            Err(failure) => {
                if let Some(wait) = self.should_wait(&failure, now_ms, waited) {
                    self.phase = Phase::WaitingForKeys(wait);
                    self.record = Some(record);
                    return Action::Pause;
                }
                return self.refuse_auth(host, server, record, failure);
            }
        };
        record.set_identity(&identity.claims);
        self.identity = Some(identity);

        // One value each: servers differ in which of several they would read.
        for single in [
            "mcp-session-id",
            "mcp-method",
            "mcp-name",
            "mcp-protocol-version",
            "content-type",
        ] {
            if self
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(single))
                .count()
                > 1
            {
                return self.refuse(host, record, Refusal::RepeatedHeader(single));
            }
        }
        let mut upstream_session = None;
        if let Some(session_id) = self.header("mcp-session-id").map(str::to_string) {
            // MCP: visible ASCII only. Anything else ("A, B" lists included) is not a session
            // id the filter could have bound, and an upstream might read it differently.
            if session_id.is_empty() || !session_id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return self.refuse(host, record, Refusal::InvalidSessionId);
            }
            match self.open_session(server, &session_id) {
                Ok(id) => upstream_session = Some(id),
                Err(code) => {
                    // MCP: 404 for a session the server does not know; clients start anew.
                    return self.refuse(host, record, Refusal::SessionNotFound(code));
                }
            }
        }
        if let Some(encoding) = self.header("content-encoding") {
            if !encoding.trim().eq_ignore_ascii_case("identity") {
                return self.refuse(host, record, Refusal::CompressedRequest);
            }
        }

        if has_method_override(&self.query) {
            return self.refuse(host, record, Refusal::MethodOverride);
        }

        if self.forward_as_service(host, server).is_err() {
            // A client credential that stayed, or a service key that is not there: not sent.
            return self.refuse(host, record, Refusal::CredentialNotSet);
        }
        if let Some(id) = upstream_session {
            // The client's handle must never reach the upstream in place of its own id.
            if host.set_request_header("mcp-session-id", &id).is_err() {
                return self.refuse(host, record, Refusal::SessionNotForwarded);
            }
        }
        let method = self.method.clone();
        match method.as_str() {
            "POST" => {
                self.record = Some(record);
                self.phase = Phase::AwaitingBody;
                if self.end_of_stream {
                    self.on_request_body(host, &[])
                } else {
                    Action::Pause
                }
            }
            "GET" | "DELETE" if !self.end_of_stream => {
                // These carry no body: hold the headers until the end of the stream shows that
                // this one has none (HTTP/2 may end it with an empty DATA frame). Continuing
                // here would leave a body nobody decided on paused, and the request hanging.
                self.record = Some(record);
                self.phase = Phase::AwaitingBody;
                Action::Pause
            }
            "GET" | "DELETE" => self.allow_bodiless(host, record, &method),
            _ => self.refuse(host, record, Refusal::MethodNotAllowed),
        }
    }

    /// A GET (the server's event stream) or a DELETE (end of session): no body to decide on.
    fn allow_bodiless(&mut self, host: &mut dyn Host, mut record: Record, method: &str) -> Action {
        if method == "GET" {
            // A GET stream may replay list results: filter them by shape.
            // A GET stream may replay the answers of earlier requests (Last-Event-ID): every
            // list in any response is filtered, and every event must be JSON-RPC.
            self.lists = Some(ListFilter {
                any: ListKind::ALL.to_vec(),
                ..ListFilter::default()
            });
        }
        record.decision = Verdict::Allow;
        self.audit(host, record);
        Action::Continue
    }

    /// Called once with the whole request body.
    pub fn on_request_body(&mut self, host: &mut dyn Host, body: &[u8]) -> Action {
        match std::mem::replace(&mut self.phase, Phase::Headers) {
            Phase::AwaitingBody => {}
            other => {
                self.phase = other;
                return Action::Pause;
            }
        }
        let action = self.decide_body(host, body);
        self.forwarded_on(action)
    }

    /// The body's step: HTTP checks, the strict parse, the policy, pins and limits.
    fn decide_body(&mut self, host: &mut dyn Host, body: &[u8]) -> Action {
        let config = Rc::clone(&self.config);
        let (Some(server), Some(mut record)) = (
            self.server.and_then(|i| config.servers.get(i)),
            self.record.take(),
        ) else {
            return Action::Pause; // headers were refused already: never forward
        };
        let method = self.method.clone();
        if method != "POST" {
            if !body.is_empty() {
                return self.refuse(host, record, Refusal::BodyNotAllowed);
            }
            return self.allow_bodiless(host, record, &method);
        }

        if body.len() > config.max_body_bytes {
            return self.refuse(host, record, Refusal::BodyTooLarge);
        }
        if !is_json(self.header("content-type").unwrap_or_default()) {
            return self.refuse(host, record, Refusal::UnsupportedMediaType);
        }
        if mcp::is_batch(body) {
            return self.on_batch(host, server, record, body);
        }
        // 2026-07-28: the Mcp-Param-* headers are checked against the arguments.
        let mode = if self.protocol.as_deref() == Some(protocol::MODERN) {
            mcp::Arguments::Keep
        } else {
            arguments(server)
        };
        let message = match mcp::parse_message_for(body, mcp::DEFAULT_MAX_DEPTH, mode)
            .and_then(|m| protocol::check_params(&m).map(|()| m))
        {
            Ok(m) => m,
            Err(e) => return self.refuse(host, record, invalid(&e)),
        };
        describe(&mut record, &message, server);
        if let (Some(trace), other) = protocol::trace(&self.headers, Some(&message)) {
            record.trace_id = Some(trace.trace_id);
            record.span_id = Some(trace.span_id);
            record.header_trace_id = other;
        }
        let declared = protocol::declared_version(self.header("mcp-protocol-version"), &message)
            .map(|v| v.map(str::to_string));
        let version = match declared {
            Ok(v) => v,
            Err(detail) => {
                let id = message.id.clone();
                return self.refuse(host, record, Refusal::HeaderMismatch { id, detail });
            }
        };
        record.protocol_version = version.clone();
        self.protocol = version;
        if let Some(detail) = self.header_mismatch(host, server, &message) {
            let id = message.id.clone();
            return self.refuse(host, record, Refusal::HeaderMismatch { id, detail });
        }

        let source = record.source.clone().unwrap_or_default();
        let input = self.input(&message, &source, host.now_millis());
        let decision = server.policy.evaluate(&input);
        record.rule = decision.rule.clone();
        match decision.outcome {
            Outcome::Allow => {
                if let Some(drift) = pin_drift(host, server, &message) {
                    add_pin_drift(&mut record, std::slice::from_ref(&drift));
                    if server.pins.mode == pins::Mode::Enforce {
                        record.rule = Some(pin_rule(&drift));
                        let refusal = pin_refusal(server, &message, &drift);
                        return self.refuse(host, record, refusal);
                    }
                }
                record.decision = Verdict::Allow;
                let charges = server.policy.charges(&input);
                if let Some(kind) = ListKind::for_method(&message.method) {
                    self.lists = Some(match (&message.id, message.kind) {
                        // Its answer must be read as that list, or it does not pass.
                        (Some(id), Kind::Request) => ListFilter {
                            lists: vec![(id.clone(), kind)],
                            strict: true,
                            ..ListFilter::default()
                        },
                        // No answer is due: whatever comes is filtered all the same.
                        _ => ListFilter {
                            any: vec![kind],
                            ..ListFilter::default()
                        },
                    });
                }
                // Budgets and rate limits (flow/limits.rs): may answer, or wait for the service.
                match self.limit(host, server, charges, &message, record) {
                    limits::Gate::Pass(record) => {
                        self.audit(host, *record);
                        Action::Continue
                    }
                    limits::Gate::Done(action) => action,
                }
            }
            Outcome::Deny => {
                // A request is answered in-band so the client's session survives; a
                // notification or response has no id to answer, so it is refused over HTTP.
                let (jsonrpc, body) = denial(server, &message, decision.rule.as_deref());
                let refusal = Refusal::Denied {
                    code: "policy_denied",
                    request: message.kind == Kind::Request,
                    jsonrpc,
                    detail: decision.reason.clone(),
                    body,
                };
                self.refuse(host, record, refusal)
            }
            Outcome::InsufficientScope(scopes) => {
                let challenge =
                    oauth::challenge(server, Some("insufficient_scope"), Some(&scopes.join(" ")));
                let (_, body) = denial(server, &message, decision.rule.as_deref());
                let detail = decision.reason.clone();
                let refusal = Refusal::InsufficientScope {
                    detail,
                    challenge,
                    body,
                };
                self.refuse(host, record, refusal)
            }
        }
    }

    /// A JSON-RPC batch: only protocol version 2025-03-26 allows them. Each message is
    /// authorized on its own and audited on its own line; if any is denied, none is forwarded.
    fn on_batch(
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
            describe(&mut r, message, server);
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
            if messages
                .iter()
                .any(|m| ListKind::for_method(&m.method).is_some())
            {
                // Each list request's answer is matched by id and must be its list; every
                // list in any response of the batch is filtered.
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
            }
            return Action::Continue;
        }
        let body = Value::Array(answers).to_string().into_bytes();
        self.record = None;
        self.batch.clear();
        self.phase = Phase::Done;
        host.send_response(status, &[("content-type", "application/json")], &body);
        Action::Pause
    }

    /// The upstream answered: refuse a rejected service key, bind new sessions, plan the body.
    pub fn on_response_headers(
        &mut self,
        host: &mut dyn Host,
        status: Option<u32>,
        end_of_stream: bool,
    ) -> Action {
        let config = Rc::clone(&self.config);
        let Some(server) = self.server.and_then(|i| config.servers.get(i)) else {
            return Action::Continue;
        };
        let decided = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Forwarded => true,
            Phase::WaitingForLimits(pending) => {
                // Envoy answered while the message waited for the rate limit service.
                self.record = Some(pending.into_record());
                false
            }
            Phase::AwaitingBody | Phase::WaitingForKeys(_) => false,
            other => {
                self.phase = other;
                return Action::Continue;
            }
        };
        let Some(mut record) = self.record.take() else {
            return Action::Continue;
        };
        if !decided {
            // No decision yet, so this is Envoy's own answer (its request buffer limit, a
            // timeout): nothing was forwarded. Audit it as such, not as an upstream status.
            record.status = status;
            if status == Some(413) {
                record.reason = Some("body_too_large".into());
                record.detail = Some("over Envoy's request buffer limit".into());
            } else {
                record.decision = Verdict::Error;
                record.reason = Some("answered_by_envoy".into());
                record.detail = Some("Envoy answered before the filter decided".into());
            }
            self.audit(host, record);
            self.record = None;
            return Action::Continue;
        }
        record.upstream_status = status;
        if matches!(status, Some(401 | 403)) {
            // Never relay the upstream's challenge: clients would loop re-authenticating.
            let id = record.jsonrpc_id.clone();
            return self.refuse(host, record, Refusal::UpstreamRefusedCredential { id });
        }
        let headers = host.response_headers();
        let encoding = header(&headers, "content-encoding")
            .unwrap_or("identity")
            .trim();
        if !end_of_stream && !encoding.eq_ignore_ascii_case("identity") {
            // Compressed despite our request: cannot be filtered or checked, so not forwarded.
            let refusal = Refusal::CompressedResponse(encoding.to_string());
            return self.refuse(host, record, refusal);
        }
        for (name, value) in &headers {
            if response::contains_any(value.as_bytes(), &server.credential.leak_patterns) {
                let mut redacted = value.clone().into_bytes();
                response::redact(&mut redacted, &server.credential.leak_patterns);
                if server.block_key_leaks
                    || host
                        .set_response_header(name, &String::from_utf8_lossy(&redacted))
                        .is_err()
                {
                    host.count(metrics::KEY_LEAKS_BLOCKED, 1);
                    return self.refuse(host, record, Refusal::ServiceKeyInResponse);
                }
                host.count(metrics::KEY_LEAKS, 1);
            }
        }
        if let Some(session_id) = header(&headers, "mcp-session-id") {
            // The client gets the session sealed for it, never the upstream's id.
            match self.seal_session(server, session_id) {
                Ok(handle) if host.set_response_header("mcp-session-id", &handle).is_ok() => {
                    record.session_id.get_or_insert(handle);
                }
                Ok(_) => return self.refuse(host, record, Refusal::SessionHeaderNotSet),
                Err((status, code, message)) => {
                    let id = record.jsonrpc_id.clone();
                    let refusal = Refusal::SessionUnsealable {
                        code,
                        status,
                        id,
                        message,
                    };
                    return self.refuse(host, record, refusal);
                }
            }
        }
        if host.remove_response_header("www-authenticate").is_err() {
            // Never relay the upstream's challenge (see above).
            let body = self.bad_gateway_body();
            return self.refuse(host, record, Refusal::ResponseHeaderNotRemoved { body });
        }
        if let Some(detail) = self.list_answer_problem(status, &headers, end_of_stream) {
            let body = self.bad_gateway_body();
            return self.refuse(host, record, Refusal::UnreadableListAnswer { detail, body });
        }
        if end_of_stream {
            self.audit(host, record);
            return Action::Continue;
        }
        let content_type = header(&headers, "content-type").unwrap_or_default();
        let json = is_json(content_type);
        if let Some(lists) = self.lists.as_mut() {
            // A JSON body answers the POST: it must be the response(s), nothing else.
            lists.responses_only = lists.strict && json;
        }
        let body = response::body_for(content_type);
        if host.remove_response_header("content-length").is_err() {
            // The body may be rewritten: a stale length would cut or stall it.
            let body = self.bad_gateway_body();
            return self.refuse(host, record, Refusal::ResponseHeaderNotRemoved { body });
        }
        match body {
            // A stream may last long: its record gets the status now.
            Body::Events(rewriter) => {
                self.audit(host, record);
                self.phase = Phase::StreamingEvents(rewriter);
                Action::Continue
            }
            // A held body is checked and its record rewritten (status included) at its end.
            Body::Buffered => {
                self.record = Some(record);
                self.phase = Phase::BufferingAnswer { json, ended: false };
                Action::Pause
            }
        }
    }

    /// A chunk of the response body (`body` is everything Envoy buffered when held).
    pub fn on_response_body(
        &mut self,
        host: &mut dyn Host,
        body: &[u8],
        end_of_stream: bool,
    ) -> BodyAction {
        let config = Rc::clone(&self.config);
        let Some(server) = self.server.and_then(|i| config.servers.get(i)) else {
            return BodyAction::Continue;
        };
        let now = host.now_millis();
        let mut phase = std::mem::replace(&mut self.phase, Phase::Done);
        let mut too_large = false;
        // Pinned entries this caller may see, as listed: remembered and audited below.
        let mut checked: Vec<(ListKind, String, Check)> = Vec::new();
        let inspected = {
            let input = self.listing_input(now);
            let mut lister = server.policy.lister(&input);
            let pins = &server.pins;
            let mut visible = |kind: ListKind, name: &str, entry: &[u8]| {
                let allowed = lister.visible(match kind {
                    ListKind::Tools => Item::Tool(name),
                    ListKind::Prompts => Item::Prompt(name),
                    ListKind::Resources | ListKind::Templates => Item::Resource(name),
                });
                if !allowed || !pins.covers(kind) {
                    return allowed;
                }
                let check = pins.check(kind, name, entry);
                let keep = pins.mode != pins::Mode::Enforce || check == Check::Matches;
                checked.push((kind, name.to_string(), check));
                keep
            };
            let lists = self.lists.as_ref();
            let patterns = &server.credential.leak_patterns;
            match &mut phase {
                Phase::BufferingAnswer { .. } if !end_of_stream => {
                    let hold = body.len() <= response::MAX_BUFFERED_RESPONSE;
                    let report = response::Inspection {
                        failed: (!hold).then(|| "response too large to inspect".to_string()),
                        ..Default::default()
                    };
                    too_large = !hold;
                    Some((None, report, hold))
                }
                Phase::BufferingAnswer { json, .. } => {
                    let (out, report) =
                        response::inspect_buffered(body, *json, lists, patterns, &mut visible);
                    Some((out, report, false))
                }
                Phase::StreamingEvents(rewriter) => {
                    let (out, report) = response::inspect_events(
                        rewriter,
                        body,
                        end_of_stream,
                        lists,
                        patterns,
                        &mut visible,
                    );
                    Some((Some(out), report, false))
                }
                _ => None,
            }
        };
        let Some((out, report, hold)) = inspected else {
            self.phase = phase;
            return BodyAction::Continue;
        };
        if let Phase::BufferingAnswer { ended, .. } = &mut phase {
            *ended = !hold;
        }
        self.phase = phase;
        if !report.learned.is_empty() {
            protocol::learn(host, &server.name, &report.learned);
        }
        if hold {
            return BodyAction::Pause;
        }
        if report.hidden > 0 {
            host.count(metrics::HIDDEN_ENTRIES, report.hidden as u64);
        }
        if report.leaks > 0 {
            // Redacted, unless the answer does not go on (blocked below, or failed).
            let counter = if server.block_key_leaks || report.failed.is_some() {
                metrics::KEY_LEAKS_BLOCKED
            } else {
                metrics::KEY_LEAKS
            };
            host.count(counter, report.leaks as u64);
        }
        let mut drifts = Vec::new();
        for (kind, name, check) in checked {
            pins::remember(host, &server.name, &server.pins, kind, &name, &check);
            if let Check::Drift(drift) = check {
                drifts.push(drift);
            }
        }
        if !drifts.is_empty() {
            host.count(metrics::PIN_DRIFT, drifts.len() as u64);
        }
        let mut record = self.record.take();
        if let Some(r) = record.as_mut() {
            if report.hidden > 0 {
                r.hidden = Some(r.hidden.unwrap_or(0) + report.hidden);
            }
            add_pin_drift(r, &drifts);
        }
        let unreadable = format!("{}: ", response::UNREADABLE_LIST_ANSWER);
        let failed = match report.failed.clone() {
            Some(detail) if too_large => Some(("response_too_large", detail)),
            Some(detail) => match detail.strip_prefix(&unreadable) {
                Some(why) => Some((response::UNREADABLE_LIST_ANSWER, why.to_string())),
                None => Some(("response_uninspectable", detail)),
            },
            None => (report.leaks > 0 && server.block_key_leaks).then(|| {
                let r = Refusal::ServiceKeyInResponse;
                (r.code(), r.detail())
            }),
        };
        if let Some((code, detail)) = failed {
            return self.fail_response(host, record, code, detail);
        }
        if let Some(mut r) = record {
            // Rewritten at the end too, for the final timings.
            if report.hidden > 0 || !drifts.is_empty() || end_of_stream {
                self.write(host, &mut r);
            }
            self.record = Some(r);
        }
        match out {
            Some(bytes) => BodyAction::Replace(bytes),
            None => BodyAction::Continue,
        }
    }

    /// The adapter could not read the response body from Envoy, or not write the filtered one
    /// back (`code`, the audit reason: `response_body_unavailable`, `response_body_write_failed`):
    /// nothing unchecked goes on. A held body is answered with 502, a stream is cut; audited as
    /// an error.
    pub fn response_failed(&mut self, host: &mut dyn Host, code: &'static str) -> BodyAction {
        if self.server.is_none() {
            host.reset_response();
            return BodyAction::Pause;
        }
        let record = self.record.take();
        let detail = "Envoy could not hand the response body over, or take the checked one back";
        self.fail_response(host, record, code, detail.to_string())
    }

    /// A response that cannot go on: 502 while its headers are held, else the stream is cut.
    fn fail_response(
        &mut self,
        host: &mut dyn Host,
        record: Option<Record>,
        code: &'static str,
        detail: String,
    ) -> BodyAction {
        let mut r = record.unwrap_or_else(|| Record::new(host.now_millis(), ""));
        r.decision = Verdict::Error;
        r.reason = Some(code.to_string());
        r.detail = Some(detail.clone());
        self.write(host, &mut r);
        match self.phase {
            // Held whole: nothing went downstream yet, answer 502 instead.
            Phase::BufferingAnswer { .. } => {
                let body = self.bad_gateway_body();
                let refusal = Refusal::UninspectableResponse { code, detail, body };
                self.refuse(host, r, refusal);
                BodyAction::Pause
            }
            // Streaming: cut the stream; nothing unchecked goes on.
            _ => {
                self.record = None;
                self.phase = Phase::Done;
                host.reset_response();
                BodyAction::Pause
            }
        }
    }

    /// The exchange is over (Envoy's log phase). A held response that never reached its end
    /// here was answered by Envoy itself: over its buffer limit while the filter held it
    /// (500, `response_payload_too_large`), or reset. Its record, still the request's `allow`,
    /// becomes an error naming what Envoy said.
    pub fn on_log(&mut self, host: &mut dyn Host) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::BufferingAnswer { ended: false, .. } => {}
            other => {
                self.phase = other;
                return;
            }
        }
        let Some(mut record) = self.record.take() else {
            return;
        };
        let details = host
            .property_string(&["response", "code_details"])
            .unwrap_or_default();
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

    // ---- steps ----------------------------------------------------------------------------

    fn authenticate(&self, host: &mut dyn Host, server: &Server) -> Result<Identity, AuthFailure> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
            .collect();
        // `DPoP <token>` (RFC 9449), else `Bearer <token>` (the query string is checked too).
        let (token, dpop_scheme) = match dpop::scheme_token(&values) {
            Some(token) => {
                oauth::bearer(&["Bearer -"], &self.query).map_err(AuthFailure::Bearer)?;
                (token, true)
            }
            None => (
                oauth::bearer(&values, &self.query).map_err(AuthFailure::Bearer)?,
                false,
            ),
        };
        let identity = self
            .config
            .authenticator
            .authenticate(token, host)
            .map_err(AuthFailure::Token)?;
        // Sender-constrained tokens (`cnf`): DPoP proof or client certificate.
        let now = i64::try_from(host.now_millis() / 1000).unwrap_or(i64::MAX);
        let path = self.header(":path").unwrap_or_default();
        let origin = server
            .resource
            .find("://")
            .and_then(|i| {
                let end = server
                    .resource
                    .get(i + 3..)
                    .and_then(|rest| rest.find('/'))
                    .map_or(server.resource.len(), |j| i + 3 + j);
                server.resource.get(..end)
            })
            .unwrap_or_default();
        let presentation = dpop::Presentation {
            dpop_scheme,
            proofs: self
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("dpop"))
                .map(|(_, v)| v.as_str())
                .collect(),
            method: self.header(":method").unwrap_or_default(),
            htu: format!(
                "{origin}{}",
                path.split(['?', '#']).next().unwrap_or_default()
            ),
            peer_cert_sha256_hex: host
                .property_string(&["connection", "sha256_peer_certificate_digest"])
                .filter(|d| !d.is_empty()),
            now,
            skew: self.config.authenticator.skew_seconds(),
        };
        dpop::check(
            &identity.claims,
            token,
            &presentation,
            &self.config.dpop,
            host,
        )
        .map_err(AuthFailure::Sender)?;
        if server.require_dpop && !dpop_scheme {
            return Err(AuthFailure::Sender(SenderError::Token(
                "this server accepts DPoP-bound tokens only",
            )));
        }
        Ok(identity)
    }

    /// Whether a failed authentication should wait for keys instead of answering now.
    fn should_wait(
        &self,
        failure: &AuthFailure,
        now_ms: u64,
        waited: Option<Wait>,
    ) -> Option<Wait> {
        let issuers = self.config.authenticator.issuers();
        match failure {
            AuthFailure::Token(
                AuthError::NoKeys { issuer }
                | AuthError::NoRevocations { issuer }
                | AuthError::IntrospectionPending { issuer },
            ) => {
                // The deadline is fixed when the request first waits, however often it resumes.
                let deadline_ms = waited
                    .map(|w| w.deadline_ms)
                    .unwrap_or_else(|| now_ms.saturating_add(self.config.key_wait_ms));
                (now_ms < deadline_ms).then_some(Wait {
                    issuer: *issuer,
                    deadline_ms,
                })
            }
            AuthFailure::Token(AuthError::UnknownKey { issuer }) if waited.is_none() => {
                let trusted = issuers.get(*issuer)?;
                let remote = trusted.remote()?;
                if !trusted.request_refetch(now_ms) {
                    return None;
                }
                let budget = remote
                    .timeout_ms
                    .saturating_add(500)
                    .min(self.config.key_wait_ms);
                Some(Wait {
                    issuer: *issuer,
                    deadline_ms: now_ms.saturating_add(budget),
                })
            }
            _ => None,
        }
    }

    fn refuse_auth(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        record: Record,
        failure: AuthFailure,
    ) -> Action {
        let code = failure.reason();
        metrics::count_auth_failure(host, code);
        let (status, error, description) = match &failure {
            AuthFailure::Token(
                e @ (AuthError::NoKeys { .. }
                | AuthError::NoRevocations { .. }
                | AuthError::IntrospectionPending { .. }
                | AuthError::IntrospectionFailed { .. }),
            ) => {
                // Not the caller's fault: 503, never a 401 that makes clients drop tokens.
                let description = e.to_string();
                return self.refuse(host, record, Refusal::AuthUnavailable { code, description });
            }
            AuthFailure::Token(e) => (401, Some("invalid_token"), e.to_string()),
            AuthFailure::Sender(e) => {
                // RFC 9449 §7.1: a DPoP challenge with the accepted algorithms (and the
                // Bearer one, for clients that do not do DPoP).
                let error = match e {
                    SenderError::Proof(_) => "invalid_dpop_proof",
                    _ => "invalid_token",
                };
                let dpop = format!(
                    "DPoP error=\"{error}\", algs=\"{}\"",
                    self.config.dpop.algs()
                );
                let bearer = oauth::challenge(server, Some("invalid_token"), None);
                let refusal = Refusal::Unauthenticated {
                    code,
                    status: 401,
                    error,
                    description: e.describe().to_string(),
                    challenges: vec![dpop, bearer],
                };
                return self.refuse(host, record, refusal);
            }
            AuthFailure::Bearer(BearerError::Missing) => (401, None, "no bearer token".to_string()),
            AuthFailure::Bearer(BearerError::Malformed(why)) => {
                (401, Some("invalid_token"), why.to_string())
            }
            AuthFailure::Bearer(BearerError::InvalidRequest(_, why)) => {
                (400, Some("invalid_request"), why.to_string())
            }
        };
        let challenge = oauth::challenge(server, error, None);
        let refusal = Refusal::Unauthenticated {
            code,
            status,
            error: error.unwrap_or("unauthorized"),
            description,
            challenges: vec![challenge],
        };
        self.refuse(host, record, refusal)
    }

    /// Swaps the client's credentials for the service's. An error when a client credential
    /// could not be removed or the service key not set: the request must not go on.
    fn forward_as_service(&self, host: &mut dyn Host, server: &Server) -> Result<(), HostError> {
        for name in &server.strip_headers {
            host.remove_request_header(name)?;
        }
        // Responses must stay inspectable.
        host.remove_request_header("accept-encoding")?;
        host.set_request_header(&server.credential.header, &server.credential.value)?;
        if let Some(identity) = &self.identity {
            for (claim, name) in &server.forward_claims {
                let value = match identity.claims.get(claim) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => continue,
                    Some(other) => other.to_string(),
                };
                if crate::config::is_header_value(&value) {
                    host.set_request_header(name, &value)?;
                }
            }
        }
        Ok(())
    }

    /// The upstream's session id behind a client's handle, or the audit reason why not.
    fn open_session(&self, server: &Server, handle: &str) -> Result<String, &'static str> {
        let Some(keys) = &self.config.sessions else {
            // `sessions.stateless`: no handle was ever issued.
            return Err("session_not_sealed");
        };
        let Some(caller) = self
            .identity
            .as_ref()
            .and_then(|i| session::caller(&i.claims))
        else {
            return Err("session_unbindable");
        };
        session::open(keys, handle, caller, &server.name).map_err(|e| match e {
            OpenError::NotSealed => "session_not_sealed",
            OpenError::UnknownKey => "session_key_unknown",
            OpenError::Tampered => "session_tampered",
            OpenError::OtherCaller => "session_of_another_caller",
            OpenError::OtherServer => "session_of_another_server",
        })
    }

    /// The handle the client gets for the upstream's new (or repeated) session id; or the
    /// status, audit reason and message of the refusal.
    fn seal_session(
        &self,
        server: &Server,
        session_id: &str,
    ) -> Result<String, (u32, &'static str, &'static str)> {
        let Some(keys) = &self.config.sessions else {
            return Err((
                502,
                "session_not_configured",
                "the MCP server opened a session, but this gateway is configured with sessions.stateless",
            ));
        };
        let Some(caller) = self
            .identity
            .as_ref()
            .and_then(|i| session::caller(&i.claims))
        else {
            return Err((
                403,
                "session_unbindable",
                "the MCP server opened a session, but the token names neither a subject (sub) nor a client (client_id, azp) to bind it to",
            ));
        };
        session::seal(keys, session_id, caller, &server.name).ok_or((
            502,
            "session_id_unsealable",
            "the MCP server issued a session id that is too long or not visible ASCII",
        ))
    }

    /// The 2026-07-28 `Mcp-Method` / `Mcp-Name` headers, when present, must match the body
    /// (`Mcp-Name` after decoding the base64 sentinel; for tasks methods it mirrors
    /// `params.taskId`). A request declaring 2026-07-28 must send the `Mcp-Param-*` headers its
    /// tool declares, matching the arguments (see [`protocol::param_mismatch`]).
    fn header_mismatch(
        &self,
        host: &dyn Host,
        server: &Server,
        message: &Message,
    ) -> Option<String> {
        let modern = self.protocol.as_deref() == Some(protocol::MODERN);
        if let Some(method) = self.header("mcp-method") {
            if method != message.method {
                return Some(format!(
                    "Mcp-Method header {method:?} does not match the body's method"
                ));
            }
        }
        if let Some(name) = self.header("mcp-name") {
            let decoded = match protocol::decode_header_value(name) {
                Some(d) => d,
                None if modern => {
                    return Some("Mcp-Name header carries characters a header value may not; use the base64 form".into())
                }
                None => name.to_string(),
            };
            if protocol::mirrored_name(message) != Some(decoded.as_str()) {
                return Some(format!("Mcp-Name header {name:?} does not match the body"));
            }
        }
        if !modern {
            return None;
        }
        // A missing Mcp-Method or Mcp-Name is left to the server (nothing can have routed on a
        // header that is not there); the parameter headers are the tool's declaration.
        if let Target::Tool { name, arguments } = &message.target {
            let declared = protocol::known_param_headers(host, &server.name, name);
            return protocol::param_mismatch(&self.headers, declared.as_deref(), arguments);
        }
        None
    }

    fn input<'a>(&'a self, message: &'a Message, source: &'a str, now_ms: u64) -> Input<'a> {
        Input {
            claims: self.identity.as_ref().map(|i| &*i.claims),
            session_id: self.header("mcp-session-id"),
            request: self.request_facts(),
            source_address: source,
            mtls: false,
            now: i64::try_from(now_ms / 1000).unwrap_or(i64::MAX),
            protocol_version: self.protocol.as_deref(),
            ..Input::of_message(message)
        }
    }

    fn request_facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            path: self.header(":path").unwrap_or_default(),
            host: self.header(":authority").unwrap_or_default(),
            method: self.header(":method").unwrap_or_default(),
            headers: &self.headers,
        }
    }

    /// The facts for deciding which listed tools, prompts and resources this caller sees.
    fn listing_input(&self, now_ms: u64) -> Input<'_> {
        Input {
            claims: self.identity.as_ref().map(|i| &*i.claims),
            session_id: self.header("mcp-session-id"),
            request: self.request_facts(),
            now: i64::try_from(now_ms / 1000).unwrap_or(i64::MAX),
            protocol_version: self.protocol.as_deref(),
            ..Input::default()
        }
    }

    /// Why the answer to a list request (or a GET stream, which may replay one) cannot be read
    /// as a list, from its headers: then it is answered with 502. Only `application/json` and
    /// `text/event-stream` bodies are readable; a list request's answer must be a 200 with a
    /// body. Other statuses (3xx, 4xx, 5xx) carry no list a client reads: they pass, but every
    /// list in a readable body is still filtered, whatever its id.
    fn list_answer_problem(
        &mut self,
        status: Option<u32>,
        headers: &[Header],
        end_of_stream: bool,
    ) -> Option<String> {
        let lists = self.lists.as_mut()?;
        let content_type = header(headers, "content-type");
        let readable = content_type.is_some_and(|t| is_json(t) || is_event_stream(t));
        let unreadable_type = || match content_type {
            Some(t) => format!("content-type {t:?}"),
            None => "no content-type".to_string(),
        };
        let success = status.is_some_and(|s| (200..300).contains(&s));
        if !lists.strict {
            // A GET stream: whatever has a body must be readable.
            return (success && !end_of_stream && !readable).then(unreadable_type);
        }
        match status {
            Some(200) if end_of_stream => Some("no body".to_string()),
            Some(200) if !readable => Some(unreadable_type()),
            Some(200) => None,
            Some(s) if success => Some(format!("status {s}")),
            _ => {
                lists.strict = false;
                for kind in ListKind::ALL {
                    if !lists.any.contains(&kind) {
                        lists.any.push(kind);
                    }
                }
                None
            }
        }
    }

    /// The 502 body when an answer is refused: for a list request, a JSON-RPC error with its id.
    fn bad_gateway_body(&self) -> Vec<u8> {
        match self.lists.as_ref().filter(|l| !l.lists.is_empty()) {
            Some(lists) => {
                let id = match (lists.lists.as_slice(), lists.others.is_empty()) {
                    ([(id, _)], true) => Some(id),
                    _ => None,
                };
                reply::jsonrpc_error(
                    id,
                    reply::INTERNAL,
                    "the MCP server's answer to this list request could not be checked, so it was not forwarded",
                    None,
                )
            }
            None => reply::http_error("bad_gateway", "upstream response refused"),
        }
    }

    /// Writes the audit record (and counts the outcome once per message). A batch writes one
    /// line per message.
    fn audit(&mut self, host: &mut dyn Host, mut record: Record) {
        if !self.counted {
            self.counted = true;
            let config = Rc::clone(&self.config);
            let server = self.server.and_then(|i| config.servers.get(i));
            let is_rule = |rule: &str| server.is_some_and(|s| is_configured_rule(s, rule));
            metrics::count_outcome(host, &record, &is_rule);
        }
        self.write(host, &mut record);
        self.record = Some(record);
    }

    /// Writes the record (and a batch's other records, one line each) to filter state, with
    /// the timings so far; and the columns that changed, each under its own key.
    fn write(&mut self, host: &mut dyn Host, record: &mut Record) {
        let now_ns = host.now_nanos();
        let busy_ns = self.busy_ns + self.entered_ns.map_or(0, |t| now_ns.saturating_sub(t));
        record.filter_us = Some(busy_ns / 1_000);
        record.total_ms = self.start_ns.map(|t| now_ns.saturating_sub(t) / 1_000_000);
        let mut line = record.to_line();
        for other in &mut self.batch {
            other.upstream_status = record.upstream_status;
            other.filter_us = record.filter_us;
            other.total_ms = record.total_ms;
            line.push(b'\n');
            line.extend_from_slice(&other.to_line());
        }
        host.write_audit(&line);
        for ((name, value), last) in record.columns().into_iter().zip(self.columns.iter_mut()) {
            if *last != value {
                host.write_audit_column(name, value.as_deref().unwrap_or_default());
                *last = value;
            }
        }
    }

    /// The one answer to a refusal: its status, headers and body, and the audit record with
    /// its decision, reason code, detail and JSON-RPC code. Nothing is forwarded.
    fn refuse(&mut self, host: &mut dyn Host, mut record: Record, refusal: Refusal) -> Action {
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

    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Why authentication failed.
enum AuthFailure {
    Bearer(BearerError),
    Token(AuthError),
    /// A sender-constrained token without valid proof of possession.
    Sender(SenderError),
}

impl AuthFailure {
    fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Bearer(BearerError::Missing) => "missing_token",
            AuthFailure::Bearer(BearerError::Malformed(_)) => "malformed",
            AuthFailure::Bearer(BearerError::InvalidRequest(reason, _)) => reason,
            AuthFailure::Token(e) => e.reason(),
            AuthFailure::Sender(e) => e.reason(),
        }
    }
}

/// The refusal of a body that is not one valid JSON-RPC message (or batch).
fn invalid(e: &mcp::ParseError) -> Refusal {
    Refusal::InvalidMessage {
        code: match e {
            mcp::ParseError::Key(k) => k.reason(),
            _ => "invalid_message",
        },
        jsonrpc: e.code(),
        detail: e.to_string(),
    }
}

/// Whether a message's tool arguments are kept once checked: only when a rule or the audit
/// reads them.
fn arguments(server: &Server) -> mcp::Arguments {
    if server.policy.reads_arguments() || server.audit_arguments != ArgumentsMode::None {
        mcp::Arguments::Keep
    } else {
        mcp::Arguments::Check
    }
}

/// The JSON-RPC error for a policy denial: names the rule and the policy so that an agent (and
/// its user) can tell what happened — or, when the policy hides existence, "unknown tool".
fn denial(server: &Server, message: &Message, rule: Option<&str>) -> (i64, Vec<u8>) {
    let policy = &server.policy;
    if policy.hide_denied {
        let what = match &message.target {
            Target::Tool { name, .. } => format!("Unknown tool: {name}"),
            Target::Prompt { name } => format!("Unknown prompt: {name}"),
            Target::Resource { uri } => format!("Unknown resource: {uri}"),
            Target::None => format!("Method not found: {}", message.method),
        };
        let code = if matches!(message.target, Target::None) {
            -32601
        } else {
            -32602
        };
        return (
            code,
            reply::jsonrpc_error(message.id.as_ref(), code, &what, None),
        );
    }
    let what = match &message.target {
        Target::Tool { name, .. } | Target::Prompt { name } => {
            format!("{} {name:?}", message.method)
        }
        Target::Resource { uri } => format!("{} {uri:?}", message.method),
        Target::None if message.kind == Kind::Response => "response".to_string(),
        Target::None => message.method.clone(),
    };
    let text = match rule {
        Some(rule) => format!("{what} denied by rule {rule:?} of policy {:?}", policy.name),
        None => format!(
            "{what} denied by policy {:?}: no rule allows it",
            policy.name
        ),
    };
    let data = json!({ "rule": rule, "policy": policy.name, "policy_version": policy.version });
    (
        reply::POLICY_DENIED,
        reply::jsonrpc_error(message.id.as_ref(), reply::POLICY_DENIED, &text, Some(data)),
    )
}

/// A `tools/call` (or `prompts/get`, when prompts are pinned) of a name without a pin, or
/// whose definition a listing through this Envoy last showed changed.
fn pin_drift(host: &dyn Host, server: &Server, message: &Message) -> Option<Drift> {
    if server.pins.mode == pins::Mode::Off || message.kind != Kind::Request {
        return None;
    }
    let (kind, name) = match (&message.target, message.method.as_str()) {
        (Target::Tool { name, .. }, "tools/call") => (ListKind::Tools, name),
        (Target::Prompt { name }, "prompts/get") => (ListKind::Prompts, name),
        _ => return None,
    };
    pins::call_drift(host, &server.name, &server.pins, kind, name)
}

/// Whether `rule` names a rule of the server's configuration: one of its policy's rules, the
/// built-in unknown-method rule, one of its limits (`limit:<name>`) or a pinned tool or prompt
/// (`pin:<name>`). Metrics label only these (a call of an unpinned name counts as `pin`).
fn is_configured_rule(server: &Server, rule: &str) -> bool {
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

/// The rule a pin denial is audited and counted under: `pin:<name>`.
fn pin_rule(drift: &Drift) -> String {
    format!("pin:{}", drift.name)
}

/// The refusal of a call of an unapproved or changed tool (or prompt).
fn pin_refusal(server: &Server, message: &Message, drift: &Drift) -> Refusal {
    let (code, detail) = if drift.pinned.is_some() {
        ("pin_drift", "the definition changed since it was approved")
    } else {
        ("pin_missing", "the definition was never approved")
    };
    let (jsonrpc, body) = pin_denial(server, message, drift);
    Refusal::Denied {
        code,
        request: message.kind == Kind::Request,
        jsonrpc,
        detail: detail.to_string(),
        body,
    }
}

/// The JSON-RPC error for a call of an unapproved or changed tool (or prompt).
fn pin_denial(server: &Server, message: &Message, drift: &Drift) -> (i64, Vec<u8>) {
    if server.policy.hide_denied {
        return denial(server, message, None);
    }
    let what = match drift.kind {
        ListKind::Prompts => "prompt",
        _ => "tool",
    };
    let text = if drift.pinned.is_some() {
        format!(
            "{} {:?} denied: the {what} changed since it was approved and awaits review",
            message.method, drift.name
        )
    } else {
        format!(
            "{} {:?} denied: the {what} is not approved (no pin) and awaits review",
            message.method, drift.name
        )
    };
    let data = json!({ "rule": pin_rule(drift), "pinned": drift.pinned, "seen": drift.seen });
    (
        reply::POLICY_DENIED,
        reply::jsonrpc_error(message.id.as_ref(), reply::POLICY_DENIED, &text, Some(data)),
    )
}

/// Adds drifted definitions to the record's `pin_drift` (at most [`MAX_PIN_DRIFT`]).
fn add_pin_drift(record: &mut Record, drifts: &[Drift]) {
    if drifts.is_empty() {
        return;
    }
    let list = record.pin_drift.get_or_insert_with(Vec::new);
    for d in drifts {
        if list.len() >= MAX_PIN_DRIFT {
            break;
        }
        let entry = PinDrift {
            tool: (d.kind != ListKind::Prompts).then(|| d.name.clone()),
            prompt: (d.kind == ListKind::Prompts).then(|| d.name.clone()),
            pinned: d.pinned.clone(),
            seen: d.seen.clone(),
        };
        if !list.contains(&entry) {
            list.push(entry);
        }
    }
}

/// Copies what the message is about into the audit record.
fn describe(record: &mut Record, message: &Message, server: &Server) {
    record.method = Some(if message.kind == Kind::Response {
        "response".to_string()
    } else {
        message.method.clone()
    });
    record.jsonrpc_id = message.id.clone();
    match &message.target {
        Target::Tool { name, arguments } => {
            record.tool = Some(name.clone());
            record.arguments = crate::audit::arguments(server.audit_arguments, arguments);
        }
        Target::Prompt { name } => record.prompt = Some(name.clone()),
        Target::Resource { uri } => record.resource = Some(uri.clone()),
        Target::None => {}
    }
    record.task_id = protocol::task_id(message).map(str::to_string);
}

fn header<'h>(headers: &'h [Header], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `text/event-stream`, any case, with or without parameters.
fn is_event_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// Whether the query string has a `_method` parameter, which Symfony, Laravel and Rails-style
/// frameworks read as the HTTP method. Names are compared as a framework would see them:
/// percent-decoded, any case, with PHP's `.` / space / `[` → `_` in parameter names.
fn has_method_override(query: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        let mut decoded = Vec::with_capacity(name.len());
        let mut bytes = name.bytes();
        while let Some(b) = bytes.next() {
            let b = match b {
                b'%' => {
                    let hex = [bytes.next(), bytes.next()];
                    match hex {
                        [Some(h), Some(l)] => std::str::from_utf8(&[h, l])
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .unwrap_or(b'%'),
                        _ => b'%',
                    }
                }
                b'+' => b' ',
                b => b,
            };
            decoded.push(b.to_ascii_lowercase());
        }
        let name = decoded.trim_ascii_start();
        name.len() == 7
            && name
                .iter()
                .map(|b| {
                    if matches!(b, b'.' | b' ' | b'[') {
                        b'_'
                    } else {
                        *b
                    }
                })
                .eq(b"_method".iter().copied())
    })
}

/// `application/json`, any case, with or without parameters.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}
