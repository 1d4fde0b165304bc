//! The verified-token cache shared by every worker VM of the process (Envoy shared data), next
//! to each VM's own ([`crate::jwt::Authenticator::verify`]): a token one worker verified is not
//! verified again by the others, nor by a VM whose own, smaller cache has dropped it.
//!
//! Bounded: `SLOTS` entries of at most `MAX_ENTRY_BYTES` under `mcp-guard:token:<slot>`, the
//! slot chosen by the token's SHA-256; a new token overwrites whatever its slot held. An entry holds the token's digest
//! (never the token), the algorithm and `typ` it was signed with, the SHA-256 of the key that
//! verified it, and its claims. A hit is a token whose signature is known good, nothing more:
//! every other check runs again on each use, as for the VM's own cache — the issuer's
//! algorithm allow-list and `typ`, the verifying key still in the issuer's current key set,
//! `exp`/`nbf`, audience and required claims, and the revocation feed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::host::Host;

/// Shared-data slots (the most entries the process keeps). Slots are chosen by digest, so
/// callers share slots long before every slot is used (10,000 callers fill 8,192 slots with
/// 70% of them sharing, each evicting the other): four times the callers a process expects to
/// see keeps three in four alone in their slot.
pub const SLOTS: u16 = 32768;

/// Larger entries (tokens with many claims) are kept only in the VMs' own caches: the shared
/// cache holds at most `SLOTS` × this, 64 MiB (a typical entry is under 1 KiB).
pub const MAX_ENTRY_BYTES: usize = 2048;

/// The checks an entry's writer ran beyond what an entry records and a hit checks again: an
/// entry written under fewer (an earlier module, before a check of the token's header was
/// added: `"crit": null` was refused from version 1 on) is not adopted. Shared data outlives an
/// in-place module update, so without it the new module would take the old one's word. Raised
/// whenever such a check is added.
const CHECKS: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Entry {
    /// [`CHECKS`] of the module that wrote it (absent: 0).
    #[serde(default)]
    v: u32,
    /// SHA-256 of the token, hex.
    d: String,
    /// SHA-256 of the verifying key, hex.
    k: String,
    /// The JWS `alg`.
    a: String,
    /// The JWS `typ`, if any.
    #[serde(default)]
    t: Option<String>,
    c: Map<String, Value>,
}

/// What a token's entry says.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub key: [u8; 32],
    pub alg: String,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
}

fn slot_key(digest: &[u8; 32]) -> String {
    let [a, b, ..] = *digest;
    let slot = u16::from_be_bytes([a, b]) % SLOTS;
    format!("mcp-guard:token:{slot}")
}

/// The entry of the token with this digest, if its slot holds it.
pub fn lookup(host: &dyn Host, digest: &[u8; 32]) -> Option<Verified> {
    let bytes = host.shared_get(&slot_key(digest))?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    if entry.v < CHECKS || entry.d != base16ct::lower::encode_string(digest) {
        return None;
    }
    let mut key = [0u8; 32];
    base16ct::lower::decode(entry.k.as_bytes(), &mut key).ok()?;
    Some(Verified {
        key,
        alg: entry.a,
        typ: entry.t,
        claims: entry.c,
    })
}

/// Publishes a token that verified.
pub fn store(host: &mut dyn Host, digest: &[u8; 32], verified: &VerifiedRef<'_>) {
    let entry = EntryRef {
        v: CHECKS,
        d: base16ct::lower::encode_string(digest),
        k: base16ct::lower::encode_string(verified.key),
        a: verified.alg,
        t: verified.typ,
        c: verified.claims,
    };
    if let Ok(bytes) = serde_json::to_vec(&entry) {
        if bytes.len() <= MAX_ENTRY_BYTES {
            host.shared_set(&slot_key(digest), &bytes);
        }
    }
}

/// A token that verified, borrowed (what [`store`] writes).
pub struct VerifiedRef<'a> {
    pub key: &'a [u8; 32],
    pub alg: &'a str,
    pub typ: Option<&'a str>,
    pub claims: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct EntryRef<'a> {
    v: u32,
    d: String,
    k: String,
    a: &'a str,
    t: Option<&'a str>,
    c: &'a Map<String, Value>,
}
