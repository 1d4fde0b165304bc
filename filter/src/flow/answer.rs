//! Forwarded: the upstream answered. Its headers decide the rest: a refused service key
//! (502), the session id sealed for the caller, and how the body is checked — held whole
//! (buffering an answer) or event by event (streaming events).

use std::rc::Rc;

use super::{header, Action, Phase, Stream};
use crate::audit::Verdict;
use crate::config::Server;
use crate::discovery::ListKind;
use crate::host::{Header, Host};
use crate::http::{ambiguous_answer_type, is_event_stream, is_json};
use crate::refusal::Refusal;
use crate::response::{self, Body};
use crate::{metrics, reply, session};

impl Stream {
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
            Phase::WaitingForProof(pending) => {
                self.record = Some(pending.into_record());
                false
            }
            Phase::AwaitingBody | Phase::WaitingForKeys(_) | Phase::WaitingForDeclarations(_) => {
                false
            }
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
        // Envoy's own answer after forwarding (the upstream reset or could not be reached, a
        // timeout, a filter after this one) is not the server's: `via_upstream` is what Envoy
        // says of an answer the server sent. Read only off the 2xx path (one call). Forwarded,
        // so the call may have run: the record stays `allow` and says what Envoy did; the answer
        // is checked as any other (it may carry what a later filter copied).
        let details = if matches!(status, Some(200..=299)) {
            String::new()
        } else {
            host.property_string(&["response", "code_details"])
                .unwrap_or_default()
        };
        if !details.is_empty() && details != "via_upstream" {
            record.status = status;
            record.reason = Some("answered_by_envoy".into());
            record.detail = Some(format!("Envoy answered after forwarding: {details}"));
        } else {
            record.upstream_status = status;
        }
        if let Some(detail) = rerouted(host, &record) {
            let body = self.bad_gateway_body();
            return self.refuse(host, record, Refusal::Rerouted { detail, body });
        }
        if matches!(status, Some(401 | 403)) {
            // Never relay the upstream's challenge: clients would loop re-authenticating.
            let id = record.jsonrpc_id.clone();
            return self.refuse(host, record, Refusal::UpstreamRefusedCredential { id });
        }
        let headers = host.response_headers();
        if let (Some(300..=399), Some(location)) = (status, header(&headers, "location")) {
            // Clients follow redirects (the Python SDK's HTTP client and fetch do) and take
            // what answers there as the answer to their request: the server would send the
            // caller's message, and to its own origin its token, wherever it chose, past this
            // exchange's checks. Not passed on.
            let detail = format!(
                "the MCP server answered with a redirect (to {}), which is not passed on",
                redacted(location, server)
            );
            let body = self.bad_gateway_body();
            let code = "upstream_redirect";
            return self.refuse(
                host,
                record,
                Refusal::UninspectableResponse { code, detail, body },
            );
        }
        // Every value: a client may decode by any of them (or by their list).
        let encoding = headers.iter().find(|(k, v)| {
            k.eq_ignore_ascii_case("content-encoding") && !v.trim().eq_ignore_ascii_case("identity")
        });
        if let (false, Some((_, encoding))) = (end_of_stream, encoding) {
            // Compressed despite our request: cannot be filtered or checked, so not forwarded.
            let refusal = Refusal::CompressedResponse(redacted(encoding.trim(), server));
            return self.refuse(host, record, refusal);
        }
        if !redact_fields(host, &headers, server, Fields::Headers) {
            return self.refuse(host, record, Refusal::ServiceKeyInResponse);
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
        let present = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if present("www-authenticate") && host.remove_response_header("www-authenticate").is_err() {
            // Never relay the upstream's challenge (see above).
            let body = self.bad_gateway_body();
            return self.refuse(host, record, Refusal::ResponseHeaderNotRemoved { body });
        }
        if let Some(detail) = self.list_answer_problem(status, &headers, end_of_stream) {
            let body = self.bad_gateway_body();
            return self.refuse(host, record, Refusal::UnreadableListAnswer { detail, body });
        }
        let content_type = header(&headers, "content-type").unwrap_or_default();
        let content_types = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .count();
        if !end_of_stream && (content_types > 1 || ambiguous_answer_type(content_type)) {
            // A client could read this body as another message than the filter checked.
            let refusal = Refusal::AmbiguousContentType {
                content_type: redacted(content_type, server),
                body: self.bad_gateway_body(),
            };
            return self.refuse(host, record, refusal);
        }
        if end_of_stream {
            self.audit(host, record);
            return Action::Continue;
        }
        let json = is_json(content_type);
        let version = (self.protocol.as_deref())
            .or_else(|| self.header("mcp-protocol-version"))
            .map(str::to_string);
        if let Some(lists) = self.lists.as_mut() {
            // A JSON body answers the POST: it must be the response(s), nothing else.
            lists.responses_only = lists.strict && json;
            // Batches are 2025-03-26's (a request naming no version is of 2025-03-26).
            lists.no_batch = !matches!(version.as_deref(), None | Some("2025-03-26"));
        }
        let sized = present("content-length");
        let body = response::body_for(content_type);
        // A stream's events may be rewritten as they pass, after its headers went on: a stale
        // length would cut or stall it, so it goes without one.
        let streamed = matches!(body, Body::Events(_));
        if streamed && sized && host.remove_response_header("content-length").is_err() {
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
            // A held body is checked and its record rewritten (status included) at its end. Its
            // headers are held with it: a rewritten body gets its new length then.
            Body::Buffered => {
                self.record = Some(record);
                self.phase = Phase::BufferingAnswer {
                    json,
                    ended: false,
                    sized,
                };
                Action::Pause
            }
        }
    }

    /// The handle the client gets for the upstream's new (or repeated) session id; or the
    /// status, audit reason and message of the refusal.
    pub(super) fn seal_session(
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

    /// Why the answer to a list request (or a GET stream, which may replay one) cannot be read
    /// as a list, from its headers: then it is answered with 502. Only `application/json` and
    /// `text/event-stream` bodies are readable; a list request's answer must be a 200 with a
    /// body. Other statuses (3xx, 4xx, 5xx) carry no list a client reads: they pass, but every
    /// list in a readable body is still filtered, whatever its id.
    pub(super) fn list_answer_problem(
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
        // Only a list request's answer must be a list (other requests' answers are held to
        // answering their own requests, in the body).
        let list_due = !lists.lists.is_empty();
        match status {
            _ if success && !list_due => None,
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
    pub(super) fn bad_gateway_body(&self) -> Vec<u8> {
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
}

/// Which of the answer's field sections [`redact_fields`] rewrites.
#[derive(Clone, Copy)]
pub(super) enum Fields {
    Headers,
    Trailers,
}

/// Redacts the service key from the answer's headers or trailers: from a value it is cut out,
/// a name carrying it goes with its values (counted). Returns false when the answer must not go
/// on: `key_leak: block`, or Envoy did not take the change (counted as blocked).
pub(super) fn redact_fields(
    host: &mut dyn Host,
    fields: &[Header],
    server: &Server,
    which: Fields,
) -> bool {
    for leak in response::leaking_fields(fields, &server.credential.leak_patterns) {
        let done = !server.block_key_leaks
            && match (&leak, which) {
                (response::FieldLeak::Value { name, redacted }, Fields::Headers) => {
                    host.set_response_header(name, redacted)
                }
                (response::FieldLeak::Value { name, redacted }, Fields::Trailers) => {
                    host.set_response_trailer(name, redacted)
                }
                (response::FieldLeak::Name(name), Fields::Headers) => {
                    host.remove_response_header(name)
                }
                (response::FieldLeak::Name(name), Fields::Trailers) => {
                    host.remove_response_trailer(name)
                }
            }
            .is_ok();
        if !done {
            host.count(metrics::KEY_LEAKS_BLOCKED, 1);
            return false;
        }
        host.count(metrics::KEY_LEAKS, 1);
    }
    true
}

/// A header value for the audit record's detail, the service key redacted (a hostile upstream
/// may echo it anywhere).
fn redacted(value: &str, server: &Server) -> String {
    let mut bytes = value.as_bytes().to_vec();
    response::redact(&mut bytes, &server.credential.leak_patterns);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether Envoy sent the request by another route than the one the filter chose the server
/// by (read when the request came, in the record): Envoy matches the route again after a
/// filter changes request headers, so a route that matches on a header the filter removes or
/// sets (`forward_claims`, the credential's header, `cookie`, …) can take the request, the
/// service key in it, to another upstream than the one whose policy decided. The request has
/// gone there, but its answer does not come back, and what happened is audited. The route's
/// name is compared, not the cluster's: an aggregate cluster answers from its member clusters.
/// Routes should not match on those headers (docs/credentials.md).
fn rerouted(host: &dyn Host, record: &crate::audit::Record) -> Option<String> {
    let checked = record.route.as_deref()?;
    let now = host.property_string(&["xds", "route_name"]);
    (now.as_deref() != Some(checked)).then(|| {
        format!(
            "Envoy routed the request by route {} after the filter changed its headers, not by \
             route {checked:?} it was checked for",
            now.map_or_else(|| "(none)".to_string(), |n| format!("{n:?}"))
        )
    })
}
