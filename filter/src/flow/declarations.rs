//! Waiting for the server's own listing of its tools (2026-07-28, stateless). Two checks of a
//! `tools/call` depend on what the server lists, and a replica learns that only from listings
//! that pass through it:
//!
//! - the call's `Mcp-Param-*` headers against the tool's `x-mcp-header` declarations;
//! - a pinned tool's definition against its pin (`pins`): a rug pull is refused on calls once a
//!   listing showed it.
//!
//! A replica that has not seen the listing (another one served it, or this one restarted since),
//! or whose own view of a pinned tool is older than [`protocol::PINS_FRESH_MS`], asks the server
//! itself, with the service key, before deciding: the same call then gets the same answer from
//! every replica. At most once per server and Envoy every ten seconds for declarations, every
//! minute for pins ([`protocol::claim_listing`]). When no request can be made or the answer says
//! nothing, the call is decided on what the replica knows — except a pinned tool's call when the
//! replica has not read the server's tools for two minutes ([`protocol::PINS_GRACE_MS`]) or ever:
//! that one is refused (503, `pins_unverified`) rather than forwarded on no knowledge, and the
//! next call asks again a second later. Calls that come while another one's request is in
//! flight are decided on the last view if it is recent enough, else refused likewise.

use super::{Action, Phase, Stream};
use crate::config::Server;
use crate::discovery::{ListKind, Listed};
use crate::host::Host;
use crate::mcp::{Message, Target};
use crate::response::{self, Checks, ListFilter};
use crate::{metrics, pins, protocol};

/// Largest `tools/list` answer read.
pub const MAX_DECLARATIONS_ANSWER: usize = 1024 * 1024;

impl Stream {
    /// Whether the call needs the server's listing (declarations this Envoy does not have, or a
    /// pinned tool's view older than a minute) and a request for it went out (the decision then
    /// waits: [`Phase::WaitingForDeclarations`]). Asked once per call. `declared`: this Envoy
    /// knows the called tool's parameter headers.
    pub(super) fn fetch_declarations(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        message: &Message,
        declared: bool,
        cluster: Option<&str>,
    ) -> Option<u32> {
        let Target::Tool { name, .. } = &message.target else {
            return None;
        };
        if self.declarations_asked || self.protocol.as_deref() != Some(protocol::MODERN) {
            return None;
        }
        let undeclared = !declared
            && self
                .headers
                .iter()
                .any(|(k, _)| protocol::is_param_header(k));
        let pinned =
            server.pins.mode != pins::Mode::Off && server.pins.pin(ListKind::Tools, name).is_some();
        let now = host.now_millis();
        // How old this Envoy's view of the server's tools is, for a pinned tool (never read: as
        // old as can be).
        let age = pinned.then(|| {
            protocol::view_age(host, &server.pins.view_scope(&server.name), now).unwrap_or(u64::MAX)
        });
        let stale = |limit: u64| age.is_some_and(|a| a >= limit);
        let every = match (undeclared, stale(protocol::PINS_FRESH_MS)) {
            (true, _) => protocol::DECLARATIONS_EVERY_MS,
            (false, true) => protocol::PINS_RETRY_MS,
            (false, false) => return None,
        };
        self.declarations_asked = true;
        // Without a view of the server's tools from the last two minutes, a pinned tool is not
        // called on no knowledge: unless the listing asked for below answers, it is refused.
        self.pins_unverified = stale(protocol::PINS_GRACE_MS);
        let cluster = cluster?;
        if !protocol::claim_listing(host, &server.name, now, every) {
            return None;
        }
        let path = self.header(":path").unwrap_or_default().to_string();
        let authority = self.header(":authority").unwrap_or_default().to_string();
        let mut headers: Vec<(&str, &str)> = protocol::DECLARATIONS_HEADERS.to_vec();
        headers.push((":path", &path));
        headers.push((":authority", &authority));
        headers.push((&server.credential.header, &server.credential.value));
        let body = protocol::declarations_request();
        host.http_call(cluster, &headers, &body, 5_000)
    }

    /// Whether the decision waits for the listing request `token`.
    pub fn waiting_for_declarations(&self, token: u32) -> bool {
        matches!(self.phase, Phase::WaitingForDeclarations(t) if t == token)
    }

    /// The server answered the listing request: read as a client's listing would be (every
    /// entry visible), its declarations are learned and its pinned tools checked — a drift is
    /// remembered, so the call is refused like one after a listing showed it —, and the body's
    /// decision is due again ([`Stream::body_due`]; the adapter reads the body Envoy still
    /// holds).
    pub fn on_declarations(
        &mut self,
        host: &mut dyn Host,
        token: u32,
        status: Option<u32>,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> Action {
        if !self.waiting_for_declarations(token) {
            return Action::Pause;
        }
        self.phase = Phase::AwaitingBody;
        let config = std::rc::Rc::clone(&self.config);
        let (Some(server), Some(200), Some(body)) = (
            self.server.and_then(|i| config.servers.get(i)),
            status,
            body,
        ) else {
            return Action::Pause;
        };
        let expect = ListFilter {
            lists: vec![(
                serde_json::Value::String(protocol::DECLARATIONS_ID.into()),
                ListKind::Tools,
            )],
            ..ListFilter::default()
        };
        let mut pinned = pins::Listing::new(&server.name, &server.pins);
        let mut listed_tools = 0usize;
        let report = {
            let shared: &dyn Host = &*host;
            let mut visible = |listed: &Listed| {
                listed_tools += 1;
                pinned.check(shared, listed);
                true
            };
            let checks = Checks {
                lists: Some(&expect),
                known: Some(&server.lists_seen),
                patterns: &server.credential.leak_patterns,
                tasks: None,
            };
            if crate::http::is_event_stream(content_type) {
                let mut events = crate::sse::SseRewriter::new(response::MAX_EVENT);
                response::inspect_events(&mut events, body, true, checks, &mut visible).1
            } else {
                response::inspect_buffered(body, true, checks, &mut visible).1
            }
        };
        if report.failed.is_none() && listed_tools > 0 {
            let now = host.now_millis();
            protocol::record_view(host, &server.pins.view_scope(&server.name), now);
            self.pins_unverified = false;
        }
        let drifts = pinned.remember(host);
        if !drifts.is_empty() {
            host.count(metrics::PIN_DRIFT, drifts.len() as u64);
        }
        if !report.learned.is_empty() {
            protocol::learn(host, &server.name, &report.learned);
        }
        Action::Pause
    }
}
