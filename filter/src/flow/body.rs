//! Awaiting the body: the whole request body arrived. HTTP checks, the strict JSON-RPC parse,
//! the declared headers against the body, the policy, pins; then the limits (limits.rs).

use std::rc::Rc;

use serde_json::json;

use super::{limits, Action, Phase, Stream};
use crate::audit::{ArgumentsMode, PinDrift, Record, Verdict, MAX_PIN_DRIFT};
use crate::config::{Config, Server};
use crate::discovery::ListKind;
use crate::host::Host;
use crate::http::{foreign_charset, is_json};
use crate::mcp::{self, Kind, Message, Target};
use crate::pins::{self, Drift};
use crate::policy::{Input, Outcome, RequestFacts};
use crate::refusal::Refusal;
use crate::response::ListFilter;
use crate::{oauth, protocol, reply, session};

impl Stream {
    /// Whether the headers were accepted and the decision now needs the whole body.
    pub fn awaiting_body(&self) -> bool {
        matches!(self.phase, Phase::AwaitingBody)
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

    /// Request trailers (HTTP/2; HTTP/1.1 where the listener enables them): the request's end.
    /// MCP requests carry none, and Envoy forwards the held headers and body as soon as this
    /// callback continues, decided or not. So a request that is not decided yet (waiting for
    /// keys or its body; no body decision runs without a body's end) is refused: 400, nothing
    /// forwarded. One already forwarded goes on; one already answered stays answered.
    pub fn on_request_trailers(&mut self, host: &mut dyn Host) -> Action {
        let record = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Forwarded => {
                self.phase = Phase::Forwarded;
                return Action::Continue;
            }
            Phase::Done => return Action::Pause,
            Phase::WaitingForLimits(pending) => Some(pending.into_record()),
            Phase::WaitingForProof(pending) => Some(pending.into_record()),
            _ => self.record.take(),
        };
        let record = record.unwrap_or_else(|| Record::new(host.now_millis(), &self.method));
        self.refuse(host, record, Refusal::RequestTrailers)
    }
}

impl Stream {
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
    pub(super) fn decide_body(&mut self, host: &mut dyn Host, body: &[u8]) -> Action {
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
        let content_type = self.header("content-type").unwrap_or_default();
        if !is_json(content_type) || foreign_charset(content_type) {
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
        describe(&mut record, &message, server, self.presented_token());
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
        // 2026-07-28: the called tool's parameter headers, as this Envoy learned them (read once).
        let declared = match &message.target {
            Target::Tool { name, .. } if self.protocol.as_deref() == Some(protocol::MODERN) => {
                protocol::known_param_headers(host, &server.name, name)
            }
            _ => None,
        };
        // Declarations this Envoy has not seen, or an old view of a pinned tool: ask the server.
        let cluster = record.upstream.as_deref();
        if let Some(token) =
            self.fetch_declarations(host, server, &message, declared.is_some(), cluster)
        {
            self.record = Some(record);
            self.phase = Phase::WaitingForDeclarations(token);
            return Action::Pause;
        }
        // A message whose headers disagree with it is refused. Under `on_deny: hide` a denied
        // one is answered as denied instead: the headers' check reads what the server declared
        // for every tool, and must not tell a caller which hidden tools exist.
        let mut mismatch = self.header_mismatch(&message, declared.as_deref());
        if let Some(detail) = mismatch.take() {
            let denied = server.policy.hide_denied && {
                let source = record.source.as_deref().unwrap_or_default();
                let input = self.input(&message, source, host.now_millis());
                server.policy.evaluate(&input).outcome != Outcome::Allow
            };
            if !denied {
                let id = message.id.clone();
                return self.refuse(host, record, Refusal::HeaderMismatch { id, detail });
            }
            mismatch = Some(detail);
        }
        // Task handles (tasks.rs): opened for this caller, forwarded as the upstream's ids.
        let (message, mut record) = match self.open_tasks(host, server, body, message, mode, record)
        {
            Ok(opened) => opened,
            Err(action) => return action,
        };

        // Rules that read `request` would read one of a repeated header's values, the server
        // perhaps another.
        if let Some(name) = server.policy.repeated_read_header(&self.request_facts()) {
            let refusal = Refusal::RepeatedHeader(name.to_string().into());
            return self.refuse(host, record, refusal);
        }
        let source = record.source.clone().unwrap_or_default();
        let input = self.input(&message, &source, host.now_millis());
        let (decision, charges) = server.policy.evaluate_charged(&input);
        record.rule = decision.rule.clone();
        if let (Some(detail), Outcome::Allow) = (mismatch, &decision.outcome) {
            let id = message.id.clone();
            return self.refuse(host, record, Refusal::HeaderMismatch { id, detail });
        }
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
                if self.pins_unverified && server.pins.mode == pins::Mode::Enforce {
                    let detail =
                        "the server's tools could not be read to check this pinned tool's \
                                  definition (this Envoy has no recent view of them); retry"
                            .to_string();
                    let code = "pins_unverified";
                    return self.refuse(host, record, Refusal::Internal { code, detail });
                }
                record.decision = Verdict::Allow;
                self.standing = message.method == protocol::LISTEN;
                let kind = ListKind::for_method(&message.method);
                self.lists = Some(match (kind, &message.id, message.kind) {
                    // Its answer must be read as that list, or it does not pass.
                    // Lists of every kind in it are filtered as well: a server may answer
                    // this POST with another request's answer (the Python SDK's transport
                    // routes answers by id, and a second request with the same id takes over
                    // the first's stream), and whatever list reaches the caller is filtered.
                    (Some(kind), Some(id), Kind::Request) => ListFilter {
                        lists: vec![(id.clone(), kind)],
                        any: ListKind::ALL.to_vec(),
                        strict: true,
                        ..ListFilter::default()
                    },
                    // Any other request's answer answers it alone: clients take a response by
                    // its id, so one for another request (a list the client awaits on another
                    // POST, unfiltered) does not pass here; and any list in it is filtered.
                    (None, Some(id), Kind::Request) => ListFilter {
                        others: vec![id.clone()],
                        any: ListKind::ALL.to_vec(),
                        strict: true,
                        ..ListFilter::default()
                    },
                    // No answer is due: whatever comes is filtered all the same.
                    _ => ListFilter {
                        any: ListKind::ALL.to_vec(),
                        ..ListFilter::default()
                    },
                });
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

    /// A GET (the server's event stream) or a DELETE (end of session): no body to decide on.
    pub(super) fn allow_bodiless(
        &mut self,
        host: &mut dyn Host,
        mut record: Record,
        method: &str,
    ) -> Action {
        if method == "GET" {
            self.standing = true;
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

    /// The 2026-07-28 `Mcp-Method` / `Mcp-Name` headers, when present, must match the body
    /// (`Mcp-Name` after decoding the base64 sentinel; for tasks methods it mirrors
    /// `params.taskId`). A request declaring 2026-07-28 must send the `Mcp-Param-*` headers its
    /// tool declares, matching the arguments (see [`protocol::param_mismatch`]).
    /// Who this exchange's task ids are sealed for; `None` with `sessions.stateless` (no key:
    /// task ids pass as the upstream wrote them, see docs/fleet.md).
    /// `record`: the exchange's request, as described for the audit ([`describe`]): what a
    /// `requestState` is bound to.
    pub(super) fn task_sealer<'a>(
        &'a self,
        config: &'a Config,
        server: &'a Server,
        record: Option<&'a Record>,
    ) -> Option<crate::tasks::Sealer<'a>> {
        let exchange = record.map_or_else(Default::default, |r| crate::tasks::Exchange {
            method: r.method.as_deref().unwrap_or_default(),
            target: (r
                .tool
                .as_ref()
                .or(r.prompt.as_ref())
                .or(r.resource.as_ref()))
            .map_or("", String::as_str),
        });
        Some(crate::tasks::Sealer {
            keys: config.sessions.as_ref()?,
            caller: self
                .identity
                .as_ref()
                .and_then(|i| session::caller(&i.claims)),
            server: &server.name,
            exchange,
        })
    }

    /// Opens the task handles a client's message carries (see [`crate::tasks`]): the body, the
    /// `Mcp-Name` header and the message the policy decides on then name the upstream's task;
    /// a handle that is not this caller's is answered "task not found", nothing forwarded.
    fn open_tasks(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        body: &[u8],
        message: Message,
        mode: mcp::Arguments,
        mut record: Record,
    ) -> Result<(Message, Record), Action> {
        use crate::tasks;
        let config = Rc::clone(&self.config);
        let Some(sealer) = self.task_sealer(&config, server, Some(&record)) else {
            return Ok((message, record));
        };
        let opened = match tasks::open_request(body, &sealer) {
            Ok(None) => return Ok((message, record)),
            Ok(Some(opened)) => opened,
            Err(reason) if reason.starts_with(tasks::STATE_REFUSED) => {
                let detail = reason
                    .get(tasks::STATE_REFUSED.len() + 2..)
                    .unwrap_or_default();
                let refusal = Refusal::RequestStateRefused {
                    id: message.id.clone(),
                    detail: detail.to_string(),
                };
                return Err(self.refuse(host, record, refusal));
            }
            Err(reason) => {
                let prefix = format!("{}: ", tasks::NOT_FOUND);
                let refusal = Refusal::TaskNotFound {
                    id: message.id.clone(),
                    request: message.kind == Kind::Request,
                    detail: reason.strip_prefix(&prefix).unwrap_or(&reason).to_string(),
                };
                return Err(self.refuse(host, record, refusal));
            }
        };
        // The policy decides on what the upstream will read.
        let message = match mcp::parse_message_for(&opened.body, mcp::DEFAULT_MAX_DEPTH, mode)
            .and_then(|m| protocol::check_params(&m).map(|()| m))
        {
            Ok(m) => m,
            Err(e) => {
                let refusal = Refusal::TaskIdInvalid {
                    id: message.id.clone(),
                    jsonrpc: e.code(),
                    detail: e.to_string(),
                };
                return Err(self.refuse(host, record, refusal));
            }
        };
        describe(&mut record, &message, server, self.presented_token());
        // Mcp-Name mirrored the handle (checked above); upstream it mirrors the task's id.
        let name = match (&opened.task_id, self.header("mcp-name")) {
            (Some(id), Some(_)) => Some(tasks::header_value(id)),
            _ => None,
        };
        let length = opened.body.len().to_string();
        let forwarded = host.replace_request_body(body.len(), &opened.body).is_ok()
            && (self.header("content-length").is_none()
                || host.set_request_header("content-length", &length).is_ok())
            && name.is_none_or(|n| host.set_request_header("mcp-name", &n).is_ok());
        if !forwarded {
            // The client's handles must never reach the upstream in place of its ids.
            let id = message.id.clone();
            return Err(self.refuse(host, record, Refusal::TaskNotForwarded { id }));
        }
        Ok((message, record))
    }

    /// `declared`: the called tool's parameter headers (2026-07-28), as this Envoy knows them.
    pub(super) fn header_mismatch(
        &self,
        message: &Message,
        declared: Option<&[protocol::ParamHeader]>,
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
            // Parameter headers belong to 2026-07-28: a request of an earlier revision (or of
            // none) is not read by its server through them, so one that carries them would show
            // a router or rate limiter a value no one checked against the body.
            return self
                .headers
                .iter()
                .find(|(k, _)| protocol::is_param_header(k))
                .map(|(k, _)| {
                    let version = self.protocol.as_deref().unwrap_or("(none)");
                    format!(
                        "{k} header on a request of protocol version {version}: parameter headers \
                         belong to {} only",
                        protocol::MODERN
                    )
                });
        }
        // A missing Mcp-Method or Mcp-Name is left to the server (nothing can have routed on a
        // header that is not there); the parameter headers are the tool's declaration.
        if let Target::Tool { arguments, .. } = &message.target {
            return protocol::param_mismatch(&self.headers, declared, arguments);
        }
        // Parameter headers mirror a tool's arguments: on any other message they name nothing
        // the body carries, and a router or rate limiter would act on a value no one checked.
        self.headers
            .iter()
            .find(|(k, _)| protocol::is_param_header(k))
            .map(|(k, _)| {
                format!(
                    "{k} header on a {} message, which has no tool arguments",
                    message.method
                )
            })
    }

    pub(super) fn input<'a>(
        &'a self,
        message: &'a Message,
        source: &'a str,
        now_ms: u64,
    ) -> Input<'a> {
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

    pub(super) fn request_facts(&self) -> RequestFacts<'_> {
        let removed = self
            .server
            .and_then(|i| self.config.servers.get(i))
            .map_or(&[][..], |s| s.strip_headers.as_slice());
        RequestFacts {
            path: self.header(":path").unwrap_or_default(),
            host: self.header(":authority").unwrap_or_default(),
            method: self.header(":method").unwrap_or_default(),
            headers: &self.headers,
            removed,
        }
    }
}

/// The refusal of a body that is not one valid JSON-RPC message (or batch).
pub(super) fn invalid(e: &mcp::ParseError) -> Refusal {
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
pub(super) fn arguments(server: &Server) -> mcp::Arguments {
    if server.policy.reads_arguments() || server.audit_arguments != ArgumentsMode::None {
        mcp::Arguments::Keep
    } else {
        mcp::Arguments::Check
    }
}

/// The JSON-RPC error for a policy denial: names the rule and the policy so that an agent (and
/// its user) can tell what happened — or, when the policy hides existence, "unknown tool".
pub(super) fn denial(server: &Server, message: &Message, rule: Option<&str>) -> (i64, Vec<u8>) {
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
pub(super) fn pin_drift(host: &dyn Host, server: &Server, message: &Message) -> Option<Drift> {
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

/// The rule a pin denial is audited and counted under: `pin:<name>`.
pub(super) fn pin_rule(drift: &Drift) -> String {
    format!("pin:{}", drift.name)
}

/// The refusal of a call of an unapproved or changed tool (or prompt).
pub(super) fn pin_refusal(server: &Server, message: &Message, drift: &Drift) -> Refusal {
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
pub(super) fn pin_denial(server: &Server, message: &Message, drift: &Drift) -> (i64, Vec<u8>) {
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
pub(super) fn add_pin_drift(record: &mut Record, drifts: &[Drift]) {
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
pub(super) fn describe(
    record: &mut Record,
    message: &Message,
    server: &Server,
    token: Option<&str>,
) {
    record.method = Some(if message.kind == Kind::Response {
        "response".to_string()
    } else {
        message.method.clone()
    });
    record.jsonrpc_id = message.id.clone();
    match &message.target {
        Target::Tool { name, arguments } => {
            record.tool = Some(name.clone());
            record.arguments = crate::audit::arguments(server.audit_arguments, arguments, token);
        }
        Target::Prompt { name } => record.prompt = Some(name.clone()),
        Target::Resource { uri } => record.resource = Some(uri.clone()),
        Target::None => {}
    }
    record.task_id = protocol::task_id(message).map(str::to_string);
}
