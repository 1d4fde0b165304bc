//! A fetch lease in shared data: which worker VM fetches a document every VM shares (an
//! issuer's keys, a revocation feed), when the last attempt began and how many failed in a row.
//! One VM fetches for all; taking the lease is a compare-and-swap, so two VMs never both fetch.
//! Used by [`crate::jwks`] and [`crate::feeds`], each under its own key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::host::Host;

/// A short tag of where a shared document comes from (its cluster and URLs), part of its key:
/// two configurations in one VM (one `vm_id`), or one configuration after an update, that name
/// one issuer but fetch from different places never adopt each other's documents.
pub fn source_tag(parts: &[&str]) -> String {
    base16ct::lower::encode_string(digest_of(parts).get(..8).unwrap_or_default())
}

/// SHA-256 of `parts`, each length-prefixed (no two lists of parts hash alike).
pub fn digest_of<P: AsRef<[u8]>>(parts: &[P]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        let part = part.as_ref();
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// A fetch is in flight until then.
    pub until_ms: u64,
    /// When the last fetch started.
    pub attempt_ms: u64,
    /// Consecutive failures, for back-off.
    pub failures: u32,
}

impl Lease {
    /// The lease a VM writes to take it at `now` for a fetch that may last `timeout_ms`.
    pub fn taken(&self, now: u64, timeout_ms: u64) -> Lease {
        Lease {
            until_ms: now.saturating_add(timeout_ms).saturating_add(1000),
            attempt_ms: now,
            failures: self.failures,
        }
    }

    /// Back-off after this lease's consecutive failures: 0.5 s doubling, at most 30 s.
    pub fn backoff_ms(&self) -> u64 {
        if self.failures == 0 {
            return 0;
        }
        500u64
            .saturating_mul(1u64 << self.failures.min(6))
            .min(30_000)
    }
}

/// Reads the lease, creating it first if absent: a take must always be a compare-and-swap on
/// an existing entry, or two VMs could both "take" a lease that did not exist yet. The creation
/// itself only takes effect while the lease is still missing ([`crate::host::ABSENT`]): an
/// unconditional one could land after another VM created and took the lease, and undo its take.
pub fn read(key: &str, host: &mut dyn Host) -> (Lease, Option<u32>) {
    let parse = |(bytes, cas): (Vec<u8>, Option<u32>)| {
        (serde_json::from_slice(&bytes).unwrap_or_default(), cas)
    };
    if let Some(found) = host.shared_get_cas(key) {
        return parse(found);
    }
    write(key, &Lease::default(), crate::host::ABSENT, host);
    host.shared_get_cas(key)
        .map_or((Lease::default(), None), parse)
}

/// Writes the lease if its CAS is still `cas` (`None`: unconditionally).
pub fn write(key: &str, lease: &Lease, cas: Option<u32>, host: &mut dyn Host) -> bool {
    match serde_json::to_vec(lease) {
        Ok(bytes) => host.shared_set_cas(key, &bytes, cas),
        Err(_) => false,
    }
}

/// Ends the fetch that began at `attempt`: records success or failure for every VM to see.
/// Leaves the lease alone when it expired and another VM's attempt holds it now.
pub fn finish(key: &str, attempt: u64, ok: bool, host: &mut dyn Host) {
    // A lost compare-and-swap means another VM wrote the lease meanwhile: read it again (it may
    // have taken the lease for its own attempt, which an unconditional write would undo).
    for _ in 0..FINISH_TRIES {
        let (lease, cas) = read(key, host);
        if lease.attempt_ms != attempt {
            return;
        }
        let done = Lease {
            until_ms: 0,
            attempt_ms: lease.attempt_ms,
            failures: if ok {
                0
            } else {
                lease.failures.saturating_add(1)
            },
        };
        if write(key, &done, cas, host) {
            return;
        }
    }
}

/// Compare-and-swap attempts to end a fetch before leaving the lease to expire.
const FINISH_TRIES: usize = 4;
