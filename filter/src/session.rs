//! Session binding: an `Mcp-Session-Id` belongs to the caller it was issued to.
//!
//! The upstream sees every caller through one shared service key, so it cannot tell users
//! apart; the filter binds each session id the upstream issues to the caller's issuer and
//! subject (in shared data, so every worker VM agrees) and refuses it to anyone else.

use crate::host::Host;

fn key(session_id: &str) -> String {
    format!("mcp-guard:session:{session_id}")
}

fn owner(iss: &str, sub: &str) -> Vec<u8> {
    // A NUL cannot occur in either JSON string claim, so the pair is unambiguous.
    [iss.as_bytes(), b"\0", sub.as_bytes()].concat()
}

/// Whether `session_id` may be used by (iss, sub). Unknown sessions are left to the upstream.
pub fn may_use(host: &dyn Host, session_id: &str, iss: &str, sub: &str) -> bool {
    match host.shared_get(&key(session_id)) {
        Some(bound) if !bound.is_empty() => bound == owner(iss, sub),
        _ => true,
    }
}

/// Binds a session the upstream just issued, unless it is bound already.
pub fn bind(host: &mut dyn Host, session_id: &str, iss: &str, sub: &str) {
    let k = key(session_id);
    if host.shared_get(&k).is_none_or(|v| v.is_empty()) {
        host.shared_set(&k, &owner(iss, sub));
    }
}

/// Forgets a session its owner ended (DELETE).
pub fn end(host: &mut dyn Host, session_id: &str) {
    host.shared_set(&key(session_id), b"");
}
