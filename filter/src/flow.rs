//! The path of one HTTP exchange through the filter, as explicit phases. Read this file first;
//! each phase's step is in the file named after it.
//!
//! ```text
//! request headers   Headers        headers.rs  metadata document; no server here: 404; bearer
//!                                              token (400/401, 503 while no keys); session
//!                                              handle (404); swap credentials; method (405)
//!                   WaitingForKeys waiting.rs  keys, revocation feed, introspection answer
//!                   WaitingForProof replay.rs  a DPoP proof new to the fleet (rate limit service)
//! request body      AwaitingBody   body.rs     HTTP checks, strict JSON-RPC parse (400/413/415),
//!                                              policy: deny 200 + JSON-RPC error │ 403 │ allow;
//!                                  batch.rs    batches (2025-03-26): each message on its own
//!                   WaitingForDeclarations  declarations.rs  the server's tools/list (Mcp-Param-*)
//!                   trailers before the decision: 400 (body.rs)
//!                   WaitingForLimits limits.rs budgets, the rate limit service (gRPC)
//! response headers  Forwarded      answer.rs   upstream 401/403 → 502; seal the session id;
//!                                              plan the body: held whole or event by event
//! response body     BufferingAnswer answer_body.rs  filter lists per caller, redact the
//!                   StreamingEvents                 service key, check pins
//!                   ConfirmingCaller                a standing stream's introspected caller,
//!                                                   asked about again (events held)
//! every outcome     Done           done.rs     refusals answered (refusal.rs), records written
//! ```
//!
//! Every outcome writes one audit record. Nothing here calls Envoy: host access goes through
//! [`Host`], so the whole path is tested natively. The server, the HTTP method and the caller
//! are resolved once per request (`server`, `method`, `identity`).

use std::rc::Rc;

use crate::audit::{Record, AUDIT_COLUMNS};
use crate::config::Config;
use crate::host::Header;
use crate::jwt::Identity;
use crate::response::ListFilter;

mod answer;
mod answer_body;
mod batch;
mod body;
mod confirm;
mod declarations;
mod done;
mod headers;
mod limits;
mod phase;
mod replay;
mod waiting;

pub use confirm::{Idle, MAX_STANDING_STREAMS};
pub use declarations::MAX_DECLARATIONS_ANSWER;
use phase::Phase;
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
    /// `record` holds a decision not yet written to filter state: an allowed message's record
    /// is written once, when its answer is checked, or else in the log phase ([`Stream::on_log`]),
    /// which Envoy runs before its access logs.
    unwritten: bool,
    /// The audit records of a batch's other messages (the first is `record`).
    batch: Vec<Record>,
    lists: Option<ListFilter>,
    /// When the filter first saw the request (its headers' callback), in nanoseconds since the
    /// epoch.
    start_ns: Option<u64>,
    /// Time spent in this stream's callbacks so far, and when the current one began.
    busy_ns: u64,
    entered_ns: Option<u64>,
    /// The audit columns last written to filter state (see [`Record::columns`]).
    columns: [Option<String>; AUDIT_COLUMNS.len()],
    /// The protocol version the request declares (`_meta`, else the header).
    protocol: Option<String>,
    /// The server was asked for the called tool's declarations (once per call).
    declarations_asked: bool,
    /// A pinned tool is called and this Envoy has no recent view of the server's tools: the
    /// call is refused unless the listing it asked for answers (see `flow/declarations.rs`).
    pins_unverified: bool,
    /// The answer is a stream that outlives any one request (a GET stream, a 2026-07-28
    /// `subscriptions/listen`): it goes on only while the caller's token would still be
    /// accepted (`flow/answer_body.rs`). The answer to a request decided when it came is
    /// delivered whole.
    standing: bool,
    /// Until when (ms) the IdP's answer about a standing stream's caller holds: then it is
    /// asked again before more of the stream goes on (`u64::MAX`: a token no IdP is asked about).
    confirmed_until_ms: u64,
    /// The events held while the caller was confirmed are due to be checked and sent on; `true`
    /// when the answer ended meanwhile ([`Stream::take_due_answer`]).
    answer_due: Option<bool>,
    /// The generation of the issuer's keys a standing stream's JWT was last verified with: when
    /// they change (a key withdrawn, a key set gone stale) the token is verified again
    /// ([`crate::jwt::Authenticator::still_verifies`]). `None` until the stream's first check,
    /// which verifies it through the token caches (no request but a standing stream pays).
    keys_seen: Option<u64>,
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
            unwritten: false,
            batch: Vec::new(),
            lists: None,
            start_ns: None,
            busy_ns: 0,
            entered_ns: None,
            columns: Default::default(),
            protocol: None,
            declarations_asked: false,
            pins_unverified: false,
            standing: false,
            confirmed_until_ms: 0,
            answer_due: None,
            keys_seen: None,
        }
    }

    /// The configuration this stream runs with (an ECDS update leaves it in place).
    pub fn config(&self) -> &Rc<Config> {
        &self.config
    }

    /// A request-side step returned `Continue`: the request goes upstream.
    fn forwarded_on(&mut self, action: Action) -> Action {
        if action == Action::Continue {
            self.phase = Phase::Forwarded;
        }
        action
    }

    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The token the caller presented (`Authorization: <scheme> <token>`), to keep it out of
    /// what is written down (audit). Read as the request came: the header is gone upstream.
    fn presented_token(&self) -> Option<&str> {
        let (_, token) = self.header("authorization")?.trim().split_once(' ')?;
        Some(token.trim()).filter(|t| !t.is_empty())
    }
}

fn header<'h>(headers: &'h [Header], name: &str) -> Option<&'h str> {
    // Lengths first, inline: most names differ in length, and Envoy hands names lowercased,
    // as the filter asks for them (a dozen lookups over a dozen headers per request).
    headers
        .iter()
        .find(|(k, _)| {
            k.len() == name.len()
                && (k.as_bytes() == name.as_bytes() || k.eq_ignore_ascii_case(name))
        })
        .map(|(_, v)| v.as_str())
}
