//! The "confirming the caller" phase: a standing stream (a GET stream, a 2026-07-28
//! `subscriptions/listen`) outlives the request that opened it, and so the IdP's word on the
//! token that opened it. When the IdP vouches for the token by introspection (an opaque token;
//! a JWT with `introspect: always`), the answer that admitted the stream is relied on no longer
//! than a new request with the token would rely on it (the cache TTL, `exp`). After that, the
//! stream's next events are held (Envoy buffers them) while the IdP is asked again, through the
//! same per-VM cache, shared answers and single call per token as requests; they go on, checked,
//! once it says active, and the stream is cut (`token_ended_mid_stream`) when it says anything
//! else, does not answer in time, or cannot be asked (fail closed, as a new request would get
//! 401 or 503). A token revoked at the IdP so stops a stream as soon as it stops a request, plus
//! one introspection call.
//!
//! A stream nobody writes to is looked at between events too: the adapter keeps the VM's
//! standing streams and about once a second has each checked as its next event would be
//! ([`Stream::check_idle`]: the token's `exp`, the revocation feed, the IdP asked again once
//! its answer ran out). So a quiet subscription ends when its token does, not hours later at
//! its next event; asking about it holds nothing, and an active answer lets nothing go.

use super::{BodyAction, Phase, Stream, Wait};
use crate::host::Host;
use crate::jwt::AuthError;

/// The most standing streams one VM keeps to look at between events
/// ([`Stream::check_idle`]); more are checked only at their events, as before. Envoy bounds the
/// streams (connections, HTTP/2 streams per connection) far below this in any deployment the
/// filter is priced for; the bound keeps the list finite whatever the listener allows.
pub const MAX_STANDING_STREAMS: usize = 65_536;

/// What a look at a standing stream between its events found ([`Stream::check_idle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// It stays open; nothing to do.
    Open,
    /// The IdP is being asked about its caller: the adapter adds it to the waiting list.
    Asked,
    /// It was cut (its token ended), or it is no longer a standing stream: forget it.
    Over,
}

/// Whether a standing stream's events may go on now.
pub(super) enum Confirmation {
    /// They may (nothing to ask, or the IdP's answer still holds).
    Holds,
    /// They are held: the IdP is being asked.
    Asked,
    /// The token no longer admits the stream.
    Ended(AuthError),
}

impl Stream {
    /// Whether this is a standing stream whose events pass (or are held while its caller is
    /// confirmed): the adapter keeps such streams to look at them between events.
    pub fn is_standing(&self) -> bool {
        self.standing
            && matches!(
                self.phase,
                Phase::StreamingEvents(_) | Phase::ConfirmingCaller { .. }
            )
    }

    /// A standing stream between its events: its caller is checked as its next event would
    /// check it (see the module documentation). The record of a cut stream says why, as at an
    /// event.
    pub fn check_idle(&mut self, host: &mut dyn Host) -> Idle {
        match self.phase {
            Phase::ConfirmingCaller { .. } => return Idle::Open,
            Phase::StreamingEvents(_) if self.standing => {}
            _ => return Idle::Over,
        }
        let now = host.now_millis();
        match self.check_caller(host, now, None) {
            Confirmation::Holds => Idle::Open,
            Confirmation::Asked => Idle::Asked,
            Confirmation::Ended(ended) => {
                self.end_stream(host, &ended);
                Idle::Over
            }
        }
    }

    /// A standing stream's caller, at a chunk (`chunk`: `Some(end_of_stream)`) or between
    /// events (`None`): its token as a new request would find it
    /// ([`Stream::caller_still_valid`]), then the IdP's word ([`Stream::confirm_caller`]).
    pub(super) fn check_caller(
        &mut self,
        host: &mut dyn Host,
        now_ms: u64,
        chunk: Option<bool>,
    ) -> Confirmation {
        match self.caller_still_valid(host, now_ms) {
            Ok(()) => self.confirm_caller(host, now_ms, chunk),
            Err(ended) => Confirmation::Ended(ended),
        }
    }

    /// Before a standing stream's chunk is checked (`chunk`: `Some(end_of_stream)`), or
    /// between its events (`None`): asks the IdP again once the answer the stream relies on
    /// has run out (`now_ms`). While it is asked, every chunk is held.
    fn confirm_caller(
        &mut self,
        host: &mut dyn Host,
        now_ms: u64,
        chunk: Option<bool>,
    ) -> Confirmation {
        if let Phase::ConfirmingCaller { ended, held, .. } = &mut self.phase {
            if let Some(end_of_stream) = chunk {
                *ended |= end_of_stream;
                *held = true;
            }
            return Confirmation::Asked;
        }
        if !self.standing
            || now_ms < self.confirmed_until_ms
            || !matches!(self.phase, Phase::StreamingEvents(_))
        {
            return Confirmation::Holds;
        }
        match self.ask_again(host) {
            Ok(()) => Confirmation::Holds,
            Err(AuthError::IntrospectionPending { issuer }) => {
                let wait = Wait {
                    issuer,
                    deadline_ms: now_ms.saturating_add(self.config.key_wait_ms),
                };
                match std::mem::replace(&mut self.phase, Phase::Done) {
                    Phase::StreamingEvents(events) => {
                        self.phase = Phase::ConfirmingCaller {
                            events,
                            wait,
                            ended: chunk == Some(true),
                            held: chunk.is_some(),
                        };
                        Confirmation::Asked
                    }
                    other => {
                        self.phase = other;
                        Confirmation::Holds
                    }
                }
            }
            Err(ended) => Confirmation::Ended(ended),
        }
    }

    /// The IdP's answer about the caller came (or the wait's deadline passed): the held events
    /// are due (see [`Stream::take_due_answer`]), or the stream is cut. `Pause` while the
    /// answer is still to come, and when nothing was held (the adapter resumes nothing).
    pub(super) fn resume_confirming(
        &mut self,
        host: &mut dyn Host,
        events: Box<crate::sse::SseRewriter>,
        wait: Wait,
        ended: bool,
        held: bool,
    ) -> super::Action {
        self.phase = Phase::StreamingEvents(events);
        match self.ask_again(host) {
            Ok(()) if !held => super::Action::Pause,
            Ok(()) => {
                self.answer_due = Some(ended);
                super::Action::Continue
            }
            Err(AuthError::IntrospectionPending { .. }) if host.now_millis() < wait.deadline_ms => {
                if let Phase::StreamingEvents(events) =
                    std::mem::replace(&mut self.phase, Phase::Done)
                {
                    self.phase = Phase::ConfirmingCaller {
                        events,
                        wait,
                        ended,
                        held,
                    };
                }
                super::Action::Pause
            }
            Err(error) => {
                self.end_stream(host, &error);
                super::Action::Pause
            }
        }
    }

    /// The events held while the caller was confirmed, due to be checked and sent on:
    /// `Some(ended)` once, after [`Stream::resume`] let them go (`ended`: the answer's end came
    /// meanwhile). The adapter reads what Envoy holds, has it checked
    /// ([`Stream::on_response_body`]) and lets the answer go on.
    pub fn take_due_answer(&mut self) -> Option<bool> {
        self.answer_due.take()
    }

    /// The stream's events stop: the token that opened it no longer admits it.
    pub(super) fn end_stream(&mut self, host: &mut dyn Host, ended: &AuthError) -> BodyAction {
        // An event stream outlives nothing that let it start: the caller's token expired or
        // was revoked while it was open, so nothing more of it reaches the caller. A client
        // with a fresh token resumes it (`Last-Event-ID`) or asks again.
        let record = self.record.take();
        let detail = format!("the caller's token ended while the answer streamed: {ended}");
        self.fail_response(host, record, "token_ended_mid_stream", detail)
    }

    /// Asks the authenticator whether the caller's token still admits it, and notes until when
    /// the answer holds.
    fn ask_again(&mut self, host: &mut dyn Host) -> Result<(), AuthError> {
        let until = match (self.identity.as_ref(), self.presented_token()) {
            (Some(identity), Some(token)) => self
                .config
                .authenticator
                .confirm_again(token, identity, host)?,
            _ => u64::MAX,
        };
        self.confirmed_until_ms = until;
        Ok(())
    }
}
