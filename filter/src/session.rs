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
/// issued to (`client_id`, else `azp`). `None` when the token names neither: such a caller
/// cannot hold a session (binding it to an empty subject would share it with every other such
/// caller).
pub fn caller(claims: &Map<String, Value>) -> Option<(&str, &str)> {
    let issuer = claims.get("iss").and_then(Value::as_str)?;
    let caller = ["sub", "client_id", "azp"]
        .iter()
        .filter_map(|c| claims.get(*c).and_then(Value::as_str))
        .find(|v| !v.is_empty())?;
    Some((issuer, caller))
}

fn binding<'a>(issuer: &'a str, caller: &'a str, server: &'a str) -> Binding<'a> {
    Binding {
        purpose: PURPOSE,
        issuer,
        caller,
        server,
    }
}

/// The handle the client gets for the upstream's `session_id`. `None` when the id cannot be
/// sealed (longer than [`crate::seal::MAX_VALUE`], or not visible ASCII as MCP requires).
pub fn seal(
    keys: &Keys,
    session_id: &str,
    (issuer, caller): (&str, &str),
    server: &str,
) -> Option<String> {
    if session_id.is_empty() || !session_id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return None;
    }
    keys.seal(&binding(issuer, caller, server), session_id.as_bytes())
}

/// The upstream's session id behind `handle`, if it is this caller's session on this server.
pub fn open(
    keys: &Keys,
    handle: &str,
    (issuer, caller): (&str, &str),
    server: &str,
) -> Result<String, OpenError> {
    let value = keys.open(handle, &binding(issuer, caller, server))?;
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

    #[test]
    fn the_caller_is_sub_else_the_client_and_never_empty() {
        let c = claims(json!({ "iss": "i", "sub": "alice", "client_id": "app" }));
        assert_eq!(caller(&c), Some(("i", "alice")));
        let c = claims(json!({ "iss": "i", "client_id": "app", "azp": "other" }));
        assert_eq!(caller(&c), Some(("i", "app")));
        let c = claims(json!({ "iss": "i", "sub": "", "azp": "app" }));
        assert_eq!(caller(&c), Some(("i", "app")));
        let c = claims(json!({ "iss": "i", "sub": 42, "azp": "app" }));
        assert_eq!(caller(&c), Some(("i", "app")));
        assert_eq!(caller(&claims(json!({ "iss": "i", "sub": "" }))), None);
        assert_eq!(caller(&claims(json!({ "iss": "i" }))), None);
        assert_eq!(caller(&claims(json!({ "sub": "alice" }))), None);
    }

    #[test]
    fn a_session_id_round_trips_for_its_caller_and_server() {
        let keys = Keys::new(&[1; 32], None);
        let handle = seal(&keys, "abc123", ("i", "alice"), "crm").expect("sealed");
        assert_eq!(
            open(&keys, &handle, ("i", "alice"), "crm"),
            Ok("abc123".into())
        );
        assert_eq!(
            open(&keys, &handle, ("i", "bob"), "crm"),
            Err(OpenError::OtherCaller)
        );
        assert_eq!(
            open(&keys, &handle, ("i", "alice"), "billing"),
            Err(OpenError::OtherServer)
        );
        assert_eq!(seal(&keys, "a b", ("i", "alice"), "crm"), None);
        assert_eq!(seal(&keys, "", ("i", "alice"), "crm"), None);
    }
}
