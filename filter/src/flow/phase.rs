//! The phase type: where a request is (see flow.rs for the map of phases and files).

use super::limits::PendingLimit;
use super::replay::PendingProof;
use super::Wait;
use crate::sse::SseRewriter;

/// The phases of one request. Each variant is a state the request can be in and holds what
/// that state needs; a step consumes the phase (`std::mem::replace`) and sets the next one.
/// Adding an asynchronous step (waiting on an HTTP or gRPC callout) is adding a phase.
///
/// ```text
/// Headers ─┬─▶ WaitingForKeys ──(keys, feed, introspection answer, deadline)──▶ Headers
///          ├─▶ WaitingForProof ──(rate limit service: a DPoP proof new to the fleet)──▶ …
///          ├─▶ AwaitingBody ─┬─▶ WaitingForLimits ──(rate limit service)──┐
///          │        ▲  └─▶ WaitingForDeclarations (the server's tools/list)
///          │                 └───────────────────────────────────────────┤
///          └─────────────────────────────────────────────────────────────┴─▶ Forwarded
/// Forwarded ─(answer headers)─┬─▶ BufferingAnswer ──(its end: checked)──▶ …
///                             ├─▶ StreamingEvents ──(event by event)──▶ …
///                             │     ▲   └─▶ ConfirmingCaller (a standing stream's caller,
///                             │     └───────  introspected, asked about again) ─┐
///                             │     (the IdP still vouches: the held events)◀───┘
///                             └─▶ Done
/// any ──(refusal: `Stream::refuse`)──▶ Done
/// ```
pub(super) enum Phase {
    /// The request headers are being decided.
    Headers,
    /// Authentication waits for an issuer's keys, its revocation feed or an introspection
    /// answer (callouts of the root context); [`Stream::resume`] re-enters the headers.
    WaitingForKeys(Wait),
    /// `dpop.replay: fleet`: the caller's proof is spent at the rate limit service; its answer
    /// ([`Stream::on_grpc_answer`]) admits the request or refuses a replay.
    WaitingForProof(Box<PendingProof>),
    /// The headers were accepted; the decision needs the whole request body.
    AwaitingBody,
    /// The body's decision waits for the server's `tools/list` (the called tool's parameter
    /// headers, unknown to this Envoy: an HTTP callout); then the body is decided again.
    WaitingForDeclarations(u32),
    /// An allowed message waits for the rate limit service (global limits, a gRPC callout).
    WaitingForLimits(Box<PendingLimit>),
    /// Forwarded (or allowed without a body); the answer has not come yet.
    Forwarded,
    /// The answer is held whole and checked at its end (`ended` once it was); `json`: its
    /// content type is `application/json`; `sized`: it came with a `content-length`, which is
    /// set anew if the body is rewritten (its headers are held until then).
    BufferingAnswer {
        json: bool,
        ended: bool,
        sized: bool,
    },
    /// The answer is an event stream, checked and rewritten event by event.
    StreamingEvents(Box<SseRewriter>),
    /// A standing stream's events are held (Envoy buffers them) while the IdP is asked again
    /// whether the token that opened it is still active (`flow/answer_body.rs`); then
    /// [`Stream::resume`] lets them go on, checked, or cuts the stream. `ended`: the answer's
    /// end came while they were held. `held`: Envoy holds something of the answer (events or
    /// trailers came meanwhile); an idle stream asked about between events holds nothing
    /// ([`Stream::check_idle`]).
    ConfirmingCaller {
        events: Box<SseRewriter>,
        wait: Wait,
        ended: bool,
        held: bool,
    },
    /// Answered locally, or nothing is left to decide.
    Done,
}
