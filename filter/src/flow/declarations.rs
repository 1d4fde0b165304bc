//! Waiting for a tool's parameter-header declarations (2026-07-28 `x-mcp-header`). A call's
//! `Mcp-Param-*` headers are checked against the tool's declaration, which the filter learns
//! from the server's `tools/list` answers. A replica that has not seen the listing (another one
//! served it, or this one restarted since) asks the server itself, once, before deciding: the
//! same call then gets the same answer from every replica. At most one such request per server
//! and Envoy every ten seconds ([`protocol::claim_declarations_fetch`]); when none can be made
//! or the tool is not listed, the headers cannot be checked and the call is refused as before.

use super::{Action, Phase, Stream};
use crate::config::Server;
use crate::host::Host;
use crate::mcp::{Message, Target};
use crate::protocol;

/// Largest `tools/list` answer read for declarations.
pub const MAX_DECLARATIONS_ANSWER: usize = 1024 * 1024;

impl Stream {
    /// Whether the call's headers need declarations this Envoy does not have, and a request for
    /// them went out (the decision then waits: [`Phase::WaitingForDeclarations`]). Asked once
    /// per call.
    pub(super) fn fetch_declarations(
        &mut self,
        host: &mut dyn Host,
        server: &Server,
        message: &Message,
        cluster: Option<&str>,
    ) -> Option<u32> {
        let Target::Tool { name, .. } = &message.target else {
            return None;
        };
        if self.declarations_asked
            || self.protocol.as_deref() != Some(protocol::MODERN)
            || !self
                .headers
                .iter()
                .any(|(k, _)| protocol::is_param_header(k))
            || protocol::known_param_headers(host, &server.name, name).is_some()
        {
            return None;
        }
        self.declarations_asked = true;
        let cluster = cluster?;
        let now = host.now_millis();
        if !protocol::claim_declarations_fetch(host, &server.name, now) {
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

    /// Whether the decision waits for the declarations request `token`.
    pub fn waiting_for_declarations(&self, token: u32) -> bool {
        matches!(self.phase, Phase::WaitingForDeclarations(t) if t == token)
    }

    /// The server answered the declarations request: what it lists is learned, and the body's
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
        let learned = protocol::declarations_in_answer(content_type, body);
        if !learned.is_empty() {
            protocol::learn(host, &server.name, &learned);
        }
        Action::Pause
    }
}
