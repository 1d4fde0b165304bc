//! Caller-bound SSE event ids: resuming a stream (`Last-Event-ID`, MCP's resumability).
//!
//! An event id the upstream writes is a handle to its stream: a server that replays events by
//! id alone (an event store keyed by event id, as the SDKs' examples are) replays them to
//! whoever presents the id, and it sees every caller through one service key. So, like session
//! and task ids ([`crate::session`], [`crate::tasks`]), no event id goes out as the upstream
//! wrote it: each `id:` field of an event stream is sealed ([`crate::seal`], purpose
//! `"event"`) for the caller and server of the exchange, and a `Last-Event-ID` must open as
//! such a handle of this caller to be forwarded, as the upstream's id. An empty `id:` (which
//! resets a client's last event id) stays empty. Nothing is stored: any replica with the same
//! sealing key opens the handle.
//!
//! Without a sealing key (`sessions.stateless`) nothing can be bound: `Last-Event-ID` is
//! removed from requests, so no stream is resumed (a client then gets a new one).

use crate::seal::OpenError;
use crate::tasks::Sealer;

/// The purpose sealed into event handles: a session or task handle never opens as one.
pub const PURPOSE: &str = "event";
/// The request header a client resumes with.
pub const HEADER: &str = "last-event-id";

/// What the client gets in place of an upstream event id: its handle, the empty id as is, or
/// `None` when it cannot be bound (the token names nobody, or the id is too long for a
/// handle): then the event goes on without its id line, so that it cannot be resumed from.
pub fn seal_id(sealer: &Sealer, id: &str) -> Option<String> {
    if id.is_empty() {
        return Some(String::new());
    }
    let binding = sealer.caller?.binding(PURPOSE, sealer.server);
    sealer.keys.seal(&binding, id.as_bytes())
}

/// The upstream's event id behind a client's `Last-Event-ID`, or the audit reason why it is
/// not one of this caller's handles for this server.
pub fn open_id(sealer: &Sealer, handle: &str) -> Result<String, &'static str> {
    let caller = sealer.caller.ok_or("event_id_unbindable")?;
    let binding = caller.binding(PURPOSE, sealer.server);
    let id = sealer.keys.open(handle, &binding).map_err(|e| match e {
        OpenError::NotSealed => "event_id_not_sealed",
        OpenError::UnknownKey => "event_id_key_unknown",
        OpenError::Tampered => "event_id_tampered",
        OpenError::OtherCaller => "event_id_of_another_caller",
        OpenError::OtherServer => "event_id_of_another_server",
    })?;
    String::from_utf8(id).map_err(|_| "event_id_tampered")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Keys;
    use crate::session::Caller;

    fn sealer<'a>(keys: &'a Keys, caller: &'a str, server: &'a str) -> Sealer<'a> {
        Sealer {
            keys,
            caller: Some(Caller {
                issuer: "https://idp",
                id: caller,
                by_client: false,
            }),
            server,
            exchange: Default::default(),
        }
    }

    #[test]
    fn an_event_id_opens_for_its_caller_and_server_only() {
        let keys = Keys::new(&[5; 32], None);
        let alice = sealer(&keys, "alice", "crm");
        let handle = seal_id(&alice, "stream-7f3a_1").expect("sealed");
        assert_ne!(handle, "stream-7f3a_1");
        assert_eq!(open_id(&alice, &handle).as_deref(), Ok("stream-7f3a_1"));
        let bob = sealer(&keys, "bob", "crm");
        assert_eq!(open_id(&bob, &handle), Err("event_id_of_another_caller"));
        let other = sealer(&keys, "alice", "git");
        assert_eq!(open_id(&other, &handle), Err("event_id_of_another_server"));
        assert_eq!(open_id(&alice, "stream-7f3a_1"), Err("event_id_not_sealed"));
        // Another purpose's handle (a task id sealed for Alice) does not open as an event id.
        let task = alice.seal("stream-7f3a_1").expect("task handle");
        assert!(open_id(&alice, &task).is_err());
        // The empty id resets the client's last event id: it stays empty.
        assert_eq!(seal_id(&alice, "").as_deref(), Some(""));
        let nobody = Sealer {
            caller: None,
            ..alice
        };
        assert_eq!(seal_id(&nobody, "e-1"), None);
    }
}
