//! Headers: the first phase. The metadata document, the server at this path, the token
//! (and its proof of possession), the session handle, the credential swap, the HTTP method.
//! Ends waiting for keys, awaiting the body, forwarded (a bodiless GET/DELETE) or refused.

use std::rc::Rc;

use serde_json::Value;

use super::{Action, Phase, Stream, Wait};
use crate::audit::Record;
use crate::config::Server;
use crate::dpop::{self, SenderError};
use crate::host::{Host, HostError};
use crate::jwt::{AuthError, Identity};
use crate::oauth::BearerError;
use crate::refusal::Refusal;
use crate::seal::OpenError;
use crate::{metrics, oauth, protocol, resume, session};

impl Stream {
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
        // When the filter first saw the request: its headers are complete, microseconds after
        // its first byte (Envoy's `request.time`, which would cost a property read, ~2 µs).
        self.start_ns = self.entered_ns.or_else(|| Some(host.now_nanos()));
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
                self.phase = Phase::Done;
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

    /// Authentication, session check, credential swap, method dispatch. Re-entered after a
    /// wait (`waited`: the wait it comes back from).
    pub(super) fn authorize(&mut self, host: &mut dyn Host, waited: Option<Wait>) -> Action {
        let config = Rc::clone(&self.config);
        let (Some(server), Some(record)) = (
            self.server.and_then(|i| config.servers.get(i)),
            self.record.take(),
        ) else {
            return Action::Pause;
        };
        let now_ms = host.now_millis();
        let (identity, proof) = match self.authenticate(host, server) {
            // RFC 8707: the token must have been issued for this server, not just any of ours.
            Ok((identity, _)) if !identity.has_audience(&server.audiences) => {
                return self.refuse_auth(
                    host,
                    server,
                    record,
                    AuthFailure::Token(AuthError::WrongAudience),
                );
            }
            Ok(found) => found,
            Err(failure) => {
                if let Some(wait) = self.should_wait(&failure, now_ms, waited) {
                    self.phase = Phase::WaitingForKeys(wait);
                    self.record = Some(record);
                    return Action::Pause;
                }
                return self.refuse_auth(host, server, record, failure);
            }
        };
        if let (Some(proof), true) = (proof, self.config.dpop.fleet) {
            // The proof must be new to the whole fleet (replay.rs): wait for the service.
            return self.spend_proof(host, record, identity, &proof);
        }
        self.admit(host, server, record, identity)
    }

    /// The caller is known (and its proof, if any, spent): session check, credential swap,
    /// method dispatch.
    pub(super) fn admit(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        mut record: Record,
        identity: Identity,
    ) -> Action {
        record.set_identity(&identity.claims);
        self.identity = Some(identity);

        // One value each: servers differ in which of several they would read.
        for single in [
            "mcp-session-id",
            "mcp-method",
            "mcp-name",
            "mcp-protocol-version",
            "content-type",
            resume::HEADER,
        ] {
            if self
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(single))
                .count()
                > 1
            {
                return self.refuse(host, record, Refusal::RepeatedHeader(single.into()));
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
        // A stream is resumed only from this caller's own event ids (resume.rs).
        let config = Rc::clone(&self.config);
        let resumed = self.header(resume::HEADER).map(|handle| {
            match self.task_sealer(&config, server, None) {
                Some(sealer) => resume::open_id(&sealer, handle).map(Some),
                None => Ok(None), // no sealing key: removed below
            }
        });
        let upstream_event = match resumed {
            Some(Err(code)) => return self.refuse(host, record, Refusal::EventIdNotFound(code)),
            Some(Ok(id)) => Some(id),
            None => None,
        };
        // Every value: a server may decode by any of them (or by their list).
        let compressed = self.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("content-encoding") && !v.trim().eq_ignore_ascii_case("identity")
        });
        if compressed {
            return self.refuse(host, record, Refusal::CompressedRequest);
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
        let event_forwarded = match upstream_event {
            Some(Some(id)) => host.set_request_header(resume::HEADER, &id),
            Some(None) => host.remove_request_header(resume::HEADER),
            None => Ok(()),
        };
        if event_forwarded.is_err() {
            // The client's event handle must never reach the upstream in place of its id.
            return self.refuse(host, record, Refusal::SessionNotForwarded);
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

    /// The caller's identity, and the id of the DPoP proof it presented (if any), which this
    /// Envoy has now remembered.
    pub(super) fn authenticate(
        &self,
        host: &mut dyn Host,
        server: &Server,
    ) -> Result<(Identity, Option<String>), AuthFailure> {
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
        let dpop_only = || {
            AuthFailure::Sender(SenderError::Token(
                "this server accepts DPoP-bound tokens only",
            ))
        };
        // Sender-constrained tokens (`cnf`): DPoP proof or client certificate. A plain bearer
        // token without `cnf` has nothing to check (`dpop::check` would pass it): the proof's
        // inputs and the certificate property are not read for it.
        if !dpop_scheme && !identity.claims.contains_key("cnf") {
            return if server.require_dpop {
                Err(dpop_only())
            } else {
                Ok((identity, None))
            };
        }
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
            now,
            skew: self.config.authenticator.skew_seconds(),
        };
        let proof = dpop::check(
            &identity.claims,
            &self.config.authenticator.token_digest(token),
            &presentation,
            &self.config.dpop,
            host,
        )
        .map_err(AuthFailure::Sender)?;
        if server.require_dpop && !dpop_scheme {
            return Err(dpop_only());
        }
        Ok((identity, proof))
    }

    pub(super) fn refuse_auth(
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
    pub(super) fn forward_as_service(
        &self,
        host: &mut dyn Host,
        server: &Server,
    ) -> Result<(), HostError> {
        // Removed where the request has them: each removal is a hostcall, and `self.headers` is
        // the request's headers as this filter received them (no filter runs in between).
        let present = |name: &str| {
            self.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        for name in &server.strip_headers {
            if present(name) {
                host.remove_request_header(name)?;
            }
        }
        // Envoy's router must not take retries, hedging or timeouts from the client (and the
        // upstream gets no client `x-envoy-*` header): one decision, one upstream attempt.
        let mut envoy: Vec<&str> = Vec::new();
        for (name, _) in &self.headers {
            if crate::http::always_removed(name)
                && !envoy.iter().any(|n| n.eq_ignore_ascii_case(name))
            {
                envoy.push(name);
            }
        }
        for name in envoy {
            host.remove_request_header(name)?;
        }
        // Responses must stay inspectable.
        if present("accept-encoding") {
            host.remove_request_header("accept-encoding")?;
        }
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
    pub(super) fn open_session(
        &self,
        server: &Server,
        handle: &str,
    ) -> Result<String, &'static str> {
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
}

/// Why authentication failed.
pub(super) enum AuthFailure {
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

/// Whether the query string has a `_method` parameter, which Symfony, Laravel and Rails-style
/// frameworks read as the HTTP method. Names are compared as a framework would see them:
/// percent-decoded, any case, with PHP's `.` / space / `[` → `_` in parameter names.
pub(super) fn has_method_override(query: &str) -> bool {
    crate::url::query_names(query).any(|name| name == b"_method")
}
