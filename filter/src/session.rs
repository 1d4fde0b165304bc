//! Session binding: an `Mcp-Session-Id` belongs to the caller it was issued to.
//!
//! The upstream sees every caller through one shared service key, so it cannot tell users
//! apart. The filter never hands out the upstream's session id: the client gets it sealed
//! ([`crate::seal`]) with the caller's issuer and identity and the server's name bound in, and
//! every request's handle is opened and checked before the upstream's id is forwarded. Nothing
//! is stored: every replica with the same sealing key agrees, a restart loses nothing, and
//! memory does not grow with sessions.

use serde_json::{Map, Value};

use crate::seal::{Binding, Keys, OpenError};

/// The purpose sealed into session handles (a task handle never opens as a session).
pub const PURPOSE: &str = "session";

/// Who a session is bound to: the issuer and, within it, `sub`, else the client the token was
/// issued to (`client_id`, else `azp`), and which of the two it is (a client `alice` is not the
/// subject `alice`). `None` when the token names neither: such a caller cannot hold a session
/// (binding it to an empty subject would share it with every other such caller).
pub fn caller(claims: &Map<String, Value>) -> Option<Caller<'_>> {
    let issuer = claims.get("iss").and_then(Value::as_str)?;
    let (claim, id) = ["sub", "client_id", "azp"]
        .iter()
        .filter_map(|c| Some((*c, claims.get(*c).and_then(Value::as_str)?)))
        .find(|(_, v)| !v.is_empty())?;
    Some(Caller {
        issuer,
        id,
        by_client: claim != "sub",
    })
}

/// A caller a session or task is bound to ([`caller`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    pub issuer: &'a str,
    pub id: &'a str,
    /// `id` names the token's client, not its subject.
    pub by_client: bool,
}

impl<'a> Caller<'a> {
    /// The binding of a value sealed for this caller, for `purpose`, on `server`.
    pub fn binding(&self, purpose: &'a str, server: &'a str) -> Binding<'a> {
        Binding {
            purpose,
            issuer: self.issuer,
            caller: self.id,
            by_client: self.by_client,
            server,
        }
    }
}

/// The handle the client gets for the upstream's `session_id`. `None` when the id cannot be
/// sealed (longer than [`crate::seal::MAX_VALUE`], or not visible ASCII as MCP requires).
pub fn seal(keys: &Keys, session_id: &str, caller: Caller<'_>, server: &str) -> Option<String> {
    if session_id.is_empty() || !session_id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return None;
    }
    keys.seal(&caller.binding(PURPOSE, server), session_id.as_bytes())
}

/// The upstream's session id behind `handle`, if it is this caller's session on this server.
pub fn open(
    keys: &Keys,
    handle: &str,
    caller: Caller<'_>,
    server: &str,
) -> Result<String, OpenError> {
    let value = keys.open(handle, &caller.binding(PURPOSE, server))?;
    // Only ever sealed from visible ASCII; anything else was not sealed by `seal`.
    String::from_utf8(value).map_err(|_| OpenError::Tampered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn sub<'a>(issuer: &'a str, id: &'a str) -> Caller<'a> {
        Caller {
            issuer,
            id,
            by_client: false,
        }
    }

    fn client<'a>(issuer: &'a str, id: &'a str) -> Caller<'a> {
        Caller {
            by_client: true,
            ..sub(issuer, id)
        }
    }

    #[test]
    fn the_caller_is_sub_else_the_client_and_never_empty() {
        let c = claims(json!({ "iss": "i", "sub": "alice", "client_id": "app" }));
        assert_eq!(caller(&c), Some(sub("i", "alice")));
        let c = claims(json!({ "iss": "i", "client_id": "app", "azp": "other" }));
        assert_eq!(caller(&c), Some(client("i", "app")));
        let c = claims(json!({ "iss": "i", "sub": "", "azp": "app" }));
        assert_eq!(caller(&c), Some(client("i", "app")));
        let c = claims(json!({ "iss": "i", "sub": 42, "azp": "app" }));
        assert_eq!(caller(&c), Some(client("i", "app")));
        assert_eq!(caller(&claims(json!({ "iss": "i", "sub": "" }))), None);
        assert_eq!(caller(&claims(json!({ "iss": "i" }))), None);
        assert_eq!(caller(&claims(json!({ "sub": "alice" }))), None);
    }

    #[test]
    fn a_session_id_round_trips_for_its_caller_and_server() {
        let keys = Keys::new(&[1; 32], None);
        let handle = seal(&keys, "abc123", sub("i", "alice"), "crm").expect("sealed");
        assert_eq!(
            open(&keys, &handle, sub("i", "alice"), "crm"),
            Ok("abc123".into())
        );
        assert_eq!(
            open(&keys, &handle, sub("i", "bob"), "crm"),
            Err(OpenError::OtherCaller)
        );
        assert_eq!(
            open(&keys, &handle, sub("i", "alice"), "billing"),
            Err(OpenError::OtherServer)
        );
        assert_eq!(seal(&keys, "a b", sub("i", "alice"), "crm"), None);
        assert_eq!(seal(&keys, "", sub("i", "alice"), "crm"), None);
    }

    #[test]
    fn a_client_is_not_the_subject_of_the_same_name() {
        // A token without `sub` whose client is `alice` (client ids chosen at dynamic client
        // registration) must not open the sessions of the user `alice`, nor the reverse.
        let keys = Keys::new(&[1; 32], None);
        let user = seal(&keys, "abc123", sub("i", "alice"), "crm").expect("sealed");
        assert_eq!(
            open(&keys, &user, client("i", "alice"), "crm"),
            Err(OpenError::OtherCaller)
        );
        let app = seal(&keys, "abc123", client("i", "alice"), "crm").expect("sealed");
        assert_eq!(
            open(&keys, &app, sub("i", "alice"), "crm"),
            Err(OpenError::OtherCaller)
        );
        assert_eq!(
            open(&keys, &app, client("i", "alice"), "crm"),
            Ok("abc123".into())
        );
    }
}
