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
//! one introspection call. An idle stream is asked about at its next event.

use super::{BodyAction, Phase, Stream, Wait};
use crate::host::Host;
use crate::jwt::AuthError;

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
    /// Before a standing stream's chunk is checked: asks the IdP again once the answer the
    /// stream relies on has run out (`now_ms`). While it is asked, every chunk is held.
    pub(super) fn confirm_caller(
        &mut self,
        host: &mut dyn Host,
        now_ms: u64,
        end_of_stream: bool,
    ) -> Confirmation {
        if let Phase::ConfirmingCaller { ended, .. } = &mut self.phase {
            *ended |= end_of_stream;
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
                            ended: end_of_stream,
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
    /// answer is still to come.
    pub(super) fn resume_confirming(
        &mut self,
        host: &mut dyn Host,
        events: Box<crate::sse::SseRewriter>,
        wait: Wait,
        ended: bool,
    ) -> super::Action {
        self.phase = Phase::StreamingEvents(events);
        match self.ask_again(host) {
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
