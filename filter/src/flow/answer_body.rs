//! Buffering an answer / streaming events: the answer's body, checked held whole or event
//! by event (one step for both: the same inspection). Lists are filtered per caller, the
//! service key redacted, pins checked. What cannot be checked does not go on.

use std::rc::Rc;

use super::body::add_pin_drift;
use super::confirm::Confirmation;
use super::{BodyAction, Phase, Stream};
use crate::audit::{Record, Verdict};
use crate::discovery::{ListKind, Listed};
use crate::host::Host;
use crate::pins;
use crate::policy::{Input, Item};
use crate::refusal::Refusal;
use crate::response::{self};
use crate::{metrics, protocol};

impl Stream {
    /// Whether a chunk of the response body may stay in Envoy's buffer unread: the answer is
    /// held whole (a JSON body), this is not its end, and what Envoy holds is within
    /// [`response::MAX_BUFFERED_RESPONSE`]. Nothing is decided before the end, so the adapter
    /// pauses without reading: the body is read once, at its end, not the whole buffer again at
    /// every chunk. Otherwise the adapter calls [`Stream::on_response_body`].
    pub fn holds_response_chunk(&self, size: usize, end_of_stream: bool) -> bool {
        !end_of_stream
            && matches!(self.phase, Phase::BufferingAnswer { .. })
            && size <= response::MAX_BUFFERED_RESPONSE
    }

    /// Response trailers (HTTP/2; HTTP/1.1 where the cluster enables them) end the answer
    /// without a last body chunk, and Envoy passes on what it holds as soon as that callback
    /// continues. Whether the answer is held whole and not checked yet: then the adapter reads
    /// what Envoy holds and calls [`Stream::on_response_body`] with `end_of_stream`. A stream's
    /// events were checked (and rewritten) chunk by chunk: nothing unchecked is held there.
    pub fn holds_unchecked_answer(&self) -> bool {
        matches!(self.phase, Phase::BufferingAnswer { ended: false, .. })
    }

    /// The answer's trailers, which reach HTTP/2 clients (and HTTP/1.1 ones where the listener
    /// passes them on) from any upstream whose cluster passes them: the service key is redacted
    /// from them as from the headers (a name carrying it goes). `Pause` when the answer does not
    /// go on (`key_leak: block`, or Envoy did not take the change): a held answer is answered
    /// with 502, a stream is cut, audited as an error.
    pub fn on_response_trailers(&mut self, host: &mut dyn Host) -> BodyAction {
        let config = Rc::clone(&self.config);
        let Some(server) = self.server.and_then(|i| config.servers.get(i)) else {
            return BodyAction::Continue;
        };
        if let Phase::BufferingAnswer {
            ended: false,
            sized: sized @ true,
            ..
        } = &mut self.phase
        {
            // Trailers reach an HTTP/1.1 client only in a chunked answer: a held answer that
            // ends in trailers goes without its length (its headers are still held).
            *sized = false;
            if host.remove_response_header("content-length").is_err() {
                let record = self.record.take();
                let detail =
                    "Envoy would not remove the content-length of an answer that ends in trailers";
                return self.fail_response(
                    host,
                    record,
                    "response_header_not_removed",
                    detail.into(),
                );
            }
        }
        let trailers = host.response_trailers();
        if super::answer::redact_fields(host, &trailers, server, super::answer::Fields::Trailers) {
            if let Phase::ConfirmingCaller { ended, held, .. } = &mut self.phase {
                // The events before them are held: so are they, until the caller is confirmed.
                *ended = true;
                *held = true;
                return BodyAction::Pause;
            }
            return BodyAction::Continue;
        }
        let record = self.record.take();
        let refusal = Refusal::ServiceKeyInResponse;
        self.fail_response(host, record, refusal.code(), refusal.detail())
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
        match self.check_caller(host, now, Some(end_of_stream)) {
            Confirmation::Holds => {}
            Confirmation::Asked => return BodyAction::Pause,
            Confirmation::Ended(ended) => return self.end_stream(host, &ended),
        }
        let mut phase = std::mem::replace(&mut self.phase, Phase::Done);
        let mut too_large = false;
        // The pinned entries this caller may see, checked as listed: remembered and audited below.
        let mut pinned = pins::Listing::new(&server.name, &server.pins);
        let inspected = {
            let shared: &dyn Host = &*host;
            let input = self.listing_input(now);
            // Built at the first entry: most chunks of a stream hold no complete list.
            let mut lister = None;
            let mut visible = |listed: &Listed| {
                let lister = lister.get_or_insert_with(|| server.policy.lister(&input));
                let name = listed.name;
                let allowed = lister.visible(match listed.kind {
                    ListKind::Tools => Item::Tool(name),
                    ListKind::Prompts => Item::Prompt(name),
                    ListKind::Resources | ListKind::Templates => Item::Resource(name),
                });
                allowed && pinned.check(shared, listed)
            };
            let tasks = self.task_sealer(&config, server, self.record.as_ref());
            let checks = response::Checks {
                lists: self.lists.as_ref(),
                known: Some(&server.lists_seen),
                patterns: &server.credential.leak_patterns,
                tasks: tasks.as_ref(),
            };
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
                        response::inspect_buffered(body, *json, checks, &mut visible);
                    Some((out, report, false))
                }
                Phase::StreamingEvents(rewriter) => {
                    let (out, report) = response::inspect_events(
                        rewriter,
                        body,
                        end_of_stream,
                        checks,
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
        // A rewritten answer says its new length before anything is counted: if Envoy will not
        // take it, the answer does not go on (and its leaks were blocked, not redacted).
        let length_refused = out
            .as_ref()
            .is_some_and(|bytes| !self.length_kept(host, bytes.len()));
        if report.hidden > 0 {
            host.count(metrics::HIDDEN_ENTRIES, report.hidden as u64);
        }
        if report.leaks > 0 {
            // Redacted, unless the answer does not go on (blocked below, or failed).
            let counter = if server.block_key_leaks || report.failed.is_some() || length_refused {
                metrics::KEY_LEAKS_BLOCKED
            } else {
                metrics::KEY_LEAKS
            };
            host.count(counter, report.leaks as u64);
        }
        let drifts = pinned.remember(host);
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
        let failed = match report.failed.clone() {
            Some(detail) if too_large => Some(("response_too_large", detail)),
            Some(detail) => Some(answer_failure(detail)),
            None if report.leaks > 0 && server.block_key_leaks => {
                let r = Refusal::ServiceKeyInResponse;
                Some((r.code(), r.detail()))
            }
            None => length_refused.then(|| {
                let detail = "Envoy would not set the rewritten answer's content-length";
                ("response_length_not_set", detail.to_string())
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

    /// While a standing stream's events come (a GET stream, a subscription), whether the
    /// caller's token still holds (`now_ms`): such a stream outlives any request, so it goes on
    /// only while the token that opened it would still be accepted
    /// ([`crate::jwt::Authenticator::still_valid`]; and, once its issuer's keys changed, its
    /// signature verified again: a withdrawn key no longer admits it). The answer to a request,
    /// held or streamed, is the end of a request decided when it came: it is delivered whole.
    pub(super) fn caller_still_valid(
        &mut self,
        host: &mut dyn Host,
        now_ms: u64,
    ) -> Result<(), crate::jwt::AuthError> {
        let (Phase::StreamingEvents(_), Some(identity), true) =
            (&self.phase, &self.identity, self.standing)
        else {
            return Ok(());
        };
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let authenticator = &self.config.authenticator;
        authenticator.still_valid(identity, now)?;
        if let Some(token) = self.presented_token() {
            self.keys_seen = authenticator.still_verifies(token, identity, self.keys_seen, host)?;
        }
        Ok(())
    }

    /// A held answer that declared its length is rewritten to `len` bytes: its `content-length`
    /// (held with it, not sent yet) must say so, or a client reads a cut or stalled body, or
    /// the rest of it as the next answer on its connection. False when Envoy would not set it.
    fn length_kept(&self, host: &mut dyn Host, len: usize) -> bool {
        if !matches!(self.phase, Phase::BufferingAnswer { sized: true, .. }) {
            return true;
        }
        host.set_response_header("content-length", &len.to_string())
            .is_ok()
    }

    /// The facts for deciding which listed tools, prompts and resources this caller sees.
    pub(super) fn listing_input(&self, now_ms: u64) -> Input<'_> {
        Input {
            claims: self.identity.as_ref().map(|i| &*i.claims),
            session_id: self.header("mcp-session-id"),
            request: self.request_facts(),
            now: i64::try_from(now_ms / 1000).unwrap_or(i64::MAX),
            protocol_version: self.protocol.as_deref(),
            ..Input::default()
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
    pub(super) fn fail_response(
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
}

/// The stable code and the prose of an answer that could not be checked: the inspection
/// reports `<code>: <what>` for the codes below, else only prose.
fn answer_failure(failed: String) -> (&'static str, String) {
    const CODES: [&str; 4] = [
        response::UNREADABLE_LIST_ANSWER,
        "task_answer_unreadable",
        "task_unbindable",
        "task_id_unsealable",
    ];
    for code in CODES {
        if let Some(what) = failed
            .strip_prefix(code)
            .and_then(|rest| rest.strip_prefix(": "))
        {
            return (code, what.to_string());
        }
    }
    ("response_uninspectable", failed)
}
