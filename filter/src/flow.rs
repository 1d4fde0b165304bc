//! The path of one HTTP request through the filter. Read this file first.
//!
//! ```text
//! request headers ─┬─ RFC 9728 metadata path? ── answer the metadata document
//!                  ├─ not an MCP path? ───────── 404
//!                  ├─ authenticate bearer JWT ── 400/401 + WWW-Authenticate
//!                  ├─ swap credentials: drop the client's Authorization, set the service key
//!                  └─ POST: hold headers, buffer the body ┐   GET/DELETE: forward
//! request body ────── strict JSON-RPC parse ── 400/413/415 ┘
//!                  └─ policy ── deny: 200 + JSON-RPC error │ 403 insufficient_scope │ allow: forward
//! response headers ── record the upstream status in the audit record
//! ```
//!
//! Every outcome writes one audit record. Nothing here calls Envoy directly: all host access
//! goes through [`Host`], so the whole path is unit-tested natively.

use std::rc::Rc;

use serde_json::json;

use crate::audit::{Record, Verdict};
use crate::config::{Config, Server};
use crate::host::{Header, Host};
use crate::jwt::{AuthError, Identity};
use crate::mcp::{self, Kind, Message, Target};
use crate::policy::{Input, Outcome, RequestFacts};
use crate::{oauth, reply};

/// What the adapter tells Envoy after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// A request held until an issuer's keys arrive (first fetch, or re-fetch for an unknown `kid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub issuer: usize,
    pub deadline_ms: u64,
}

/// The state of one HTTP stream.
pub struct Stream {
    config: Rc<Config>,
    server: Option<usize>,
    identity: Option<Identity>,
    headers: Vec<Header>,
    query: String,
    end_of_stream: bool,
    record: Option<Record>,
    wait: Option<Wait>,
    waited: bool,
    awaiting_body: bool,
}

impl Stream {
    pub fn new(config: Rc<Config>) -> Self {
        Stream {
            config,
            server: None,
            identity: None,
            headers: Vec::new(),
            query: String::new(),
            end_of_stream: false,
            record: None,
            wait: None,
            waited: false,
            awaiting_body: false,
        }
    }

    /// Whether the headers were accepted and the decision now needs the whole body.
    pub fn awaiting_body(&self) -> bool {
        self.awaiting_body
    }

    /// Set while the request waits for keys; the adapter calls [`Stream::resume`] when the
    /// issuer's keys change, a fetch settles, or the deadline passes.
    pub fn waiting(&self) -> Option<Wait> {
        self.wait
    }

    pub fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        self.headers = host.request_headers();
        let method = header(&self.headers, ":method").unwrap_or_default().to_string();
        let full_path = header(&self.headers, ":path").unwrap_or_default().to_string();
        let (path, query) = match full_path.split_once('?') {
            Some((p, q)) => (p, q),
            None => (full_path.as_str(), ""),
        };

        let mut record = Record::new(host.now_millis(), &method);
        record.request_id = header(&self.headers, "x-request-id").map(str::to_string);
        record.source = host.property_string(&["source", "address"]);
        record.route = host.property_string(&["xds", "route_name"]);
        record.session_id = header(&self.headers, "mcp-session-id").map(str::to_string);
        record.protocol_version = header(&self.headers, "mcp-protocol-version").map(str::to_string);

        let config = Rc::clone(&self.config);
        if let Some(server) = config.server_for_metadata(path) {
            if method == "GET" || method == "HEAD" {
                let body = oauth::metadata_document(server);
                host.send_response(
                    200,
                    &[
                        ("content-type", "application/json"),
                        ("cache-control", "max-age=300"),
                    ],
                    &body,
                );
                return Action::Pause;
            }
        }

        let Some(index) = config.servers.iter().position(|s| s.path == path) else {
            record.reason = Some("unknown_path".into());
            return self.refuse(host, record, 404, &[], reply::http_error("not_found", "no MCP server at this path"));
        };
        let Some(server) = config.servers.get(index) else {
            return Action::Pause;
        };
        self.server = Some(index);
        record.server = Some(server.name.clone());
        record.policy = Some(server.policy.name.clone());
        record.policy_version = Some(server.policy.version.clone());

        self.query = query.to_string();
        self.end_of_stream = end_of_stream;
        self.record = Some(record);
        self.authorize(host)
    }

    /// Re-runs authentication once the awaited keys arrived (or the wait timed out).
    pub fn resume(&mut self, host: &mut dyn Host) -> Action {
        if self.wait.take().is_none() {
            return Action::Pause;
        }
        self.waited = true;
        self.authorize(host)
    }

    /// Authentication, credential swap and method dispatch. Re-entered after a key wait.
    fn authorize(&mut self, host: &mut dyn Host) -> Action {
        let config = Rc::clone(&self.config);
        let (Some(server), Some(mut record)) = (
            self.server.and_then(|i| config.servers.get(i)),
            self.record.take(),
        ) else {
            return Action::Pause;
        };
        let now_ms = host.now_millis();
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        match self.authenticate(now) {
            Ok(identity) => {
                record.set_identity(&identity.claims);
                self.identity = Some(identity);
            }
            Err(refusal) => {
                if let Some(wait) = self.should_wait(&refusal, now_ms) {
                    self.wait = Some(wait);
                    self.record = Some(record);
                    return Action::Pause;
                }
                record.reason = Some(refusal.reason.to_string());
                if let Some(AuthError::NoKeys { .. }) = refusal.cause {
                    // Not the caller's fault: 503, never a 401 that makes clients drop tokens.
                    record.decision = Verdict::Error;
                    let body = reply::http_error("temporarily_unavailable", &refusal.description);
                    return self.refuse(host, record, 503, &[("retry-after", "2")], body);
                }
                let challenge = oauth::challenge(server, refusal.error, None);
                let body = reply::http_error(refusal.error.unwrap_or("unauthorized"), &refusal.description);
                return self.refuse(
                    host,
                    record,
                    refusal.status,
                    &[("www-authenticate", &challenge)],
                    body,
                );
            }
        }

        // The client's credentials never reach the upstream; the service key does.
        host.remove_request_header("authorization");
        host.set_request_header(&server.credential.header, &server.credential.value);

        let method = header(&self.headers, ":method").unwrap_or_default();
        match method {
            "POST" => {
                self.record = Some(record);
                self.awaiting_body = true;
                if self.end_of_stream {
                    self.on_request_body(host, &[])
                } else {
                    Action::Pause
                }
            }
            "GET" | "DELETE" => {
                record.decision = Verdict::Allow;
                host.write_audit(&record.to_line());
                self.record = Some(record);
                Action::Continue
            }
            _ => {
                record.reason = Some("method_not_allowed".into());
                let body = reply::http_error("method_not_allowed", "use POST, GET or DELETE");
                self.refuse(host, record, 405, &[("allow", "GET, POST, DELETE")], body)
            }
        }
    }

    /// Whether a failed authentication should wait for keys instead of answering now.
    fn should_wait(&self, refusal: &Refusal, now_ms: u64) -> Option<Wait> {
        let issuers = self.config.authenticator.issuers();
        match refusal.cause {
            Some(AuthError::NoKeys { issuer }) => {
                let deadline_ms = match self.wait {
                    Some(w) => w.deadline_ms,
                    None if self.waited => return None,
                    None => now_ms.saturating_add(self.config.key_wait_ms),
                };
                (now_ms < deadline_ms).then_some(Wait { issuer, deadline_ms })
            }
            Some(AuthError::UnknownKey { issuer }) if !self.waited => {
                let remote = issuers.get(issuer)?.remote()?;
                if !issuers.get(issuer)?.request_refetch(now_ms) {
                    return None;
                }
                let budget = remote.timeout_ms.saturating_add(500).min(self.config.key_wait_ms);
                Some(Wait {
                    issuer,
                    deadline_ms: now_ms.saturating_add(budget),
                })
            }
            _ => None,
        }
    }

    /// Called once with the whole request body.
    pub fn on_request_body(&mut self, host: &mut dyn Host, body: &[u8]) -> Action {
        if !std::mem::take(&mut self.awaiting_body) {
            return Action::Pause;
        }
        let config = Rc::clone(&self.config);
        let (Some(server), Some(mut record)) = (
            self.server.and_then(|i| config.servers.get(i)),
            self.record.take(),
        ) else {
            // Headers were refused already, or never seen: never forward.
            return Action::Pause;
        };

        if body.len() > config.max_body_bytes {
            record.reason = Some("body_too_large".into());
            let body = reply::jsonrpc_error(None, -32600, "request body too large", None);
            return self.refuse(host, record, 413, &[], body);
        }
        let content_type = header(&self.headers, "content-type").unwrap_or_default();
        if !is_json(content_type) {
            record.reason = Some("unsupported_media_type".into());
            let body = reply::jsonrpc_error(None, -32600, "POST bodies must be application/json", None);
            return self.refuse(host, record, 415, &[], body);
        }

        let message = match mcp::parse_message(body, mcp::DEFAULT_MAX_DEPTH) {
            Ok(m) => m,
            Err(e) => {
                record.reason = Some(e.to_string());
                record.error_code = Some(e.code());
                let body = reply::jsonrpc_error(None, e.code(), &e.to_string(), None);
                return self.refuse(host, record, 400, &[], body);
            }
        };
        describe(&mut record, &message);

        let request = RequestFacts {
            path: header(&self.headers, ":path").unwrap_or_default(),
            host: header(&self.headers, ":authority").unwrap_or_default(),
            method: header(&self.headers, ":method").unwrap_or_default(),
            headers: &self.headers,
        };
        let source = record.source.clone().unwrap_or_default();
        let (tool, prompt, resource_uri) = match &message.target {
            Target::Tool { name, arguments } => (Some((name.as_str(), Some(arguments))), None, None),
            Target::Prompt { name } => (None, Some(name.as_str()), None),
            Target::Resource { uri } => (None, None, Some(uri.as_str())),
            Target::None => (None, None, None),
        };
        let input = Input {
            claims: self.identity.as_ref().map(|i| &i.claims),
            method: &message.method,
            tool,
            prompt,
            resource_uri,
            session_id: header(&self.headers, "mcp-session-id"),
            request,
            source_address: &source,
            mtls: false,
            now: i64::try_from(host.now_millis() / 1000).unwrap_or(i64::MAX),
        };
        let decision = server.policy.evaluate(&input);
        record.rule = decision.rule.clone();

        match decision.outcome {
            Outcome::Allow => {
                record.decision = Verdict::Allow;
                host.write_audit(&record.to_line());
                self.record = Some(record);
                Action::Continue
            }
            Outcome::Deny => {
                record.reason = Some(decision.reason.clone());
                record.error_code = Some(reply::POLICY_DENIED);
                let body = denial(server, &message, decision.rule.as_deref());
                // A request gets its answer in-band so the client's session survives; a
                // notification or response has no id to answer, so it is refused over HTTP.
                let status = if message.kind == Kind::Request { 200 } else { 403 };
                self.refuse(host, record, status, &[], body)
            }
            Outcome::InsufficientScope(scopes) => {
                let scope = scopes.join(" ");
                record.reason = Some(decision.reason.clone());
                record.error_code = Some(reply::POLICY_DENIED);
                let challenge = oauth::challenge(server, Some("insufficient_scope"), Some(&scope));
                let body = denial(server, &message, decision.rule.as_deref());
                self.refuse(host, record, 403, &[("www-authenticate", &challenge)], body)
            }
        }
    }

    /// An internal failure: answer 503 and audit it as an error. Nothing is forwarded.
    pub fn fail(&mut self, host: &mut dyn Host, why: &str) {
        self.awaiting_body = false;
        let mut record = self
            .record
            .take()
            .unwrap_or_else(|| Record::new(host.now_millis(), ""));
        record.decision = Verdict::Error;
        record.reason = Some(why.to_string());
        record.error_code = Some(reply::INTERNAL);
        let body = reply::jsonrpc_error(None, reply::INTERNAL, why, None);
        self.refuse(host, record, 503, &[], body);
    }

    /// Records the upstream's answer in the audit record.
    pub fn on_response_headers(&mut self, host: &mut dyn Host, status: Option<u32>) {
        if let Some(record) = self.record.as_mut() {
            record.upstream_status = status;
            host.write_audit(&record.to_line());
        }
    }

    /// Answers locally and audits the refusal. Nothing is forwarded.
    fn refuse(
        &mut self,
        host: &mut dyn Host,
        mut record: Record,
        status: u32,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Action {
        if record.decision != Verdict::Error {
            record.decision = Verdict::Deny;
        }
        record.status = Some(status);
        host.write_audit(&record.to_line());
        let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        host.send_response(status, &all, &body);
        self.record = None;
        Action::Pause
    }

    fn authenticate(&self, now: i64) -> Result<Identity, Refusal> {
        let query = self.query.as_str();
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
            .collect();
        if query
            .split('&')
            .any(|p| p.split('=').next().is_some_and(|k| k.eq_ignore_ascii_case("access_token")))
        {
            return Err(Refusal::bad_request("token_in_query", "tokens in the query string are refused; send an Authorization header"));
        }
        let value = match values.as_slice() {
            [] => return Err(Refusal::unauthorized(None, &AuthError::Missing)),
            [one] => *one,
            _ => {
                return Err(Refusal::bad_request(
                    "duplicate_authorization",
                    "more than one Authorization header",
                ))
            }
        };
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(Refusal::unauthorized(
                    Some("invalid_token"),
                    &AuthError::Malformed("the Authorization scheme must be Bearer".into()),
                ))
            }
        };
        if token.is_empty() || token.contains(' ') {
            return Err(Refusal::unauthorized(
                Some("invalid_token"),
                &AuthError::Malformed("empty or malformed bearer token".into()),
            ));
        }
        self.config
            .authenticator
            .verify(token, now)
            .map_err(|e| Refusal::unauthorized(Some("invalid_token"), &e))
    }
}

/// An authentication refusal: status, RFC 6750 error code, audit reason.
struct Refusal {
    status: u32,
    error: Option<&'static str>,
    reason: &'static str,
    description: String,
    cause: Option<AuthError>,
}

impl Refusal {
    fn unauthorized(error: Option<&'static str>, cause: &AuthError) -> Self {
        Refusal {
            status: 401,
            error,
            reason: cause.reason(),
            description: cause.to_string(),
            cause: Some(cause.clone()),
        }
    }
    fn bad_request(reason: &'static str, description: &str) -> Self {
        Refusal {
            status: 400,
            error: Some("invalid_request"),
            reason,
            description: description.to_string(),
            cause: None,
        }
    }
}

/// The JSON-RPC error for a policy denial: names the rule and the policy so that an agent (and
/// its user) can tell what happened.
fn denial(server: &Server, message: &Message, rule: Option<&str>) -> Vec<u8> {
    let policy = &server.policy.name;
    let what = match &message.target {
        Target::Tool { name, .. } => format!("{} {name:?}", message.method),
        Target::Prompt { name } => format!("{} {name:?}", message.method),
        Target::Resource { uri } => format!("{} {uri:?}", message.method),
        Target::None if message.kind == Kind::Response => "response".to_string(),
        Target::None => message.method.clone(),
    };
    let text = match rule {
        Some(rule) => format!("{what} denied by rule {rule:?} of policy {policy:?}"),
        None => format!("{what} denied by policy {policy:?}: no rule allows it"),
    };
    let data = json!({ "rule": rule, "policy": policy, "policy_version": server.policy.version });
    reply::jsonrpc_error(message.id.as_ref(), reply::POLICY_DENIED, &text, Some(data))
}

/// Copies what the message is about into the audit record.
fn describe(record: &mut Record, message: &Message) {
    record.method = (!message.method.is_empty()).then(|| message.method.clone());
    record.jsonrpc_id = message.id.clone();
    match &message.target {
        Target::Tool { name, .. } => record.tool = Some(name.clone()),
        Target::Prompt { name } => record.prompt = Some(name.clone()),
        Target::Resource { uri } => record.resource = Some(uri.clone()),
        Target::None => {}
    }
    if message.kind == Kind::Response {
        record.method = Some("response".into());
    }
}

fn header<'h>(headers: &'h [Header], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `application/json`, any case, with or without parameters.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}
