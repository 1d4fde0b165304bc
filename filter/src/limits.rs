//! Local limits: token buckets in Envoy shared data, so that every worker VM of one Envoy
//! spends from the same bucket, updated with compare-and-swap.
//!
//! **Arithmetic.** A bucket holds `units`, where one token is `period_ms` units: a limit of
//! `N/period` refills exactly `N` units per millisecond, with integers only (no drift, no
//! floats). It holds at most `burst × period_ms` units; a message of cost `c` needs `c ×
//! period_ms`. The time until enough has refilled is `retry_after_ms`.
//!
//! **Bounded memory, idle keys expire.** Shared data has no delete, so keys are not stored one
//! entry each. Each local limit owns a fixed table of `slots` entries
//! (`mcp-guard.limit.<server>.<limit>.<slot>`, created when the configuration loads, 32 bytes of
//! value each). A key's SHA-256 picks its slot; the entry keeps 16 bytes of that hash, so a
//! different key in the same slot is seen, never silently shared. A key looks at [`PROBES`]
//! consecutive slots: the one holding its hash is its bucket; failing that it takes the first
//! one that is empty or *idle* — a bucket that has refilled to full holds no information (a new
//! bucket would be full too), so it can be reused: this is how idle keys expire, after at most
//! `burst / N` periods. When all of them hold other keys' partly spent buckets the table is
//! full for this key: the message is refused (fail closed, reason `limit_table_full`), so size
//! `slots` above the number of keys that spend within one refill time.
//!
//! **Concurrency.** A bucket is read with its CAS token and written only if unchanged; on a
//! mismatch the whole step is retried, at most [`MAX_ATTEMPTS`] times, then the message is
//! refused (`limit_contention`). Entries are created once, when a VM loads the configuration
//! ([`prepare`]), only where missing: Envoy creates a missing entry whatever CAS is given, so a
//! bucket created lazily could lose a concurrent update.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::host::Host;
use crate::policy::Limit;

/// How many consecutive slots a key may occupy.
pub const PROBES: u32 = 4;
/// How often a bucket update is retried after a CAS mismatch.
pub const MAX_ATTEMPTS: usize = 8;
/// Bytes of the key's hash kept in the entry.
const HASH_BYTES: usize = 16;
const ENTRY_BYTES: usize = HASH_BYTES + 16;

/// One bucket as stored: the key's hash (zero: empty), units, and when they were counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub hash: [u8; HASH_BYTES],
    pub units: u64,
    pub at_ms: u64,
}

impl Bucket {
    pub const EMPTY: Bucket = Bucket {
        hash: [0; HASH_BYTES],
        units: 0,
        at_ms: 0,
    };

    pub fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        let (hash, rest) = out.split_at_mut(HASH_BYTES);
        hash.copy_from_slice(&self.hash);
        let (units, at) = rest.split_at_mut(8);
        units.copy_from_slice(&self.units.to_le_bytes());
        at.copy_from_slice(&self.at_ms.to_le_bytes());
        out
    }

    /// `None` for anything but a well-formed entry.
    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        if bytes.len() != ENTRY_BYTES {
            return None;
        }
        let (hash, rest) = bytes.split_at(HASH_BYTES);
        let (units, at) = rest.split_at(8);
        Some(Bucket {
            hash: hash.try_into().ok()?,
            units: u64::from_le_bytes(units.try_into().ok()?),
            at_ms: u64::from_le_bytes(at.try_into().ok()?),
        })
    }

    fn is_empty(&self) -> bool {
        self.hash == [0; HASH_BYTES]
    }
}

/// A limit's rate and size, in the units above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Tokens per period (`N`); also the units refilled per millisecond.
    pub per_period: u64,
    pub period_ms: u64,
    pub burst: u64,
}

impl Shape {
    pub fn of(limit: &Limit) -> Shape {
        Shape {
            per_period: limit.rate.amount.max(1),
            period_ms: limit.rate.unit.millis(),
            burst: limit.burst.max(1),
        }
    }

    fn capacity(&self) -> u64 {
        self.burst.saturating_mul(self.period_ms)
    }

    /// The bucket's units at `now_ms` (a new bucket is full).
    pub fn level(&self, bucket: &Bucket, now_ms: u64) -> u64 {
        if bucket.is_empty() {
            return self.capacity();
        }
        let elapsed = now_ms.saturating_sub(bucket.at_ms);
        bucket
            .units
            .saturating_add(elapsed.saturating_mul(self.per_period))
            .min(self.capacity())
    }

    /// Whole tokens in `units`.
    pub fn tokens(&self, units: u64) -> u64 {
        units / self.period_ms.max(1)
    }
}

/// What spending from a bucket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Spent; whole tokens left.
    Allowed { remaining: u64 },
    /// Not enough: whole tokens left, and when enough will have refilled.
    Limited { remaining: u64, retry_after_ms: u64 },
}

/// Spends `cost` tokens from `bucket` (of key hash `hash`) at `now_ms`: the new bucket to
/// store, or why not. Pure arithmetic.
pub fn spend(
    shape: &Shape,
    bucket: &Bucket,
    hash: [u8; HASH_BYTES],
    cost: u64,
    now_ms: u64,
) -> (Spend, Option<Bucket>) {
    let level = shape.level(bucket, now_ms);
    let need = cost.saturating_mul(shape.period_ms);
    if need <= level {
        let units = level - need;
        let next = Bucket {
            hash,
            units,
            at_ms: now_ms,
        };
        (
            Spend::Allowed {
                remaining: shape.tokens(units),
            },
            Some(next),
        )
    } else {
        // More than the bucket can ever hold waits for a full bucket (and is still refused).
        let missing = need.min(shape.capacity()).saturating_sub(level).max(1);
        let retry_after_ms = missing.div_ceil(shape.per_period.max(1)).max(1);
        (
            Spend::Limited {
                remaining: shape.tokens(level),
                retry_after_ms,
            },
            None,
        )
    }
}

/// The outcome of a local limit for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed {
        remaining: u64,
    },
    Limited {
        remaining: u64,
        retry_after_ms: u64,
    },
    /// Not decided (table full, contention): refused, fail closed.
    Failed(&'static str),
}

/// The key's hash (bytes kept in the entry) and its first slot: HMAC-SHA-256 under `keyed` (the
/// sealing key's, [`crate::seal::Keys::limit_slots`]) so that a caller choosing keys cannot
/// aim them at another key's slots; plain SHA-256 when the configuration has no sealing key
/// (`sessions.stateless`).
pub fn locate(
    keyed: Option<&Hmac<Sha256>>,
    limit_id: &str,
    key: &str,
    slots: u32,
) -> ([u8; HASH_BYTES], u32) {
    let digest: [u8; 32] = match keyed {
        Some(mac) => {
            let mut mac = mac.clone();
            mac.update(limit_id.as_bytes());
            mac.update(&[0u8]);
            mac.update(key.as_bytes());
            mac.finalize().into_bytes().into()
        }
        None => {
            let mut h = Sha256::new();
            h.update(limit_id.as_bytes());
            h.update([0u8]);
            h.update(key.as_bytes());
            h.finalize().into()
        }
    };
    let mut hash = [0u8; HASH_BYTES];
    hash.copy_from_slice(digest.get(..HASH_BYTES).unwrap_or(&[0; HASH_BYTES]));
    if hash == [0; HASH_BYTES] {
        // Zero means empty.
        if let Some(first) = hash.first_mut() {
            *first = 1;
        }
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(HASH_BYTES..HASH_BYTES + 8).unwrap_or(&[0; 8]));
    let slot = u64::from_le_bytes(first) % u64::from(slots.max(1));
    (hash, u32::try_from(slot).unwrap_or(0))
}

/// The shared-data key of one slot of a limit.
pub fn slot_key(limit_id: &str, slot: u32) -> String {
    // Not `format!`: this runs for every message a local limit counts, and is slow in Wasm.
    const PREFIX: &str = "mcp-guard.limit.";
    let slot = slot.to_string();
    let mut key = String::with_capacity(PREFIX.len() + limit_id.len() + 1 + slot.len());
    key.push_str(PREFIX);
    key.push_str(limit_id);
    key.push('.');
    key.push_str(&slot);
    key
}

/// A limit's identity in shared data: its server and its name.
pub fn limit_id(server: &str, limit: &str) -> String {
    [server, limit].join(".")
}

/// Spends `cost` of `key`'s budget in a local limit, shared by every worker VM.
pub fn take(
    host: &mut dyn Host,
    keyed: Option<&Hmac<Sha256>>,
    limit_id: &str,
    limit: &Limit,
    key: &str,
    cost: u64,
    now_ms: u64,
) -> Outcome {
    let shape = Shape::of(limit);
    let slots = limit.slots.max(1);
    let (hash, first) = locate(keyed, limit_id, key, slots);
    for _ in 0..MAX_ATTEMPTS {
        // Our bucket if it is among the probes, else the first free (empty or idle) one.
        let mut mine = None;
        let mut free = None;
        for p in 0..PROBES.min(slots) {
            let slot = (first + p) % slots;
            let name = slot_key(limit_id, slot);
            let (bytes, cas) = crate::host::shared_read(host, &name);
            let bucket = Bucket::decode(&bytes).unwrap_or(Bucket::EMPTY);
            if bucket.hash == hash {
                mine = Some((name, bucket, cas));
                break;
            }
            let idle = bucket.is_empty() || shape.level(&bucket, now_ms) >= shape.capacity();
            if idle && free.is_none() {
                free = Some((name, Bucket::EMPTY, cas));
            }
        }
        let Some((name, bucket, cas)) = mine.or(free) else {
            return Outcome::Failed("limit_table_full");
        };
        match spend(&shape, &bucket, hash, cost, now_ms) {
            (Spend::Allowed { remaining }, Some(next)) => {
                if host.shared_set_cas(&name, &next.encode(), cas) {
                    return Outcome::Allowed { remaining };
                }
            }
            (
                Spend::Limited {
                    remaining,
                    retry_after_ms,
                },
                _,
            ) => {
                return Outcome::Limited {
                    remaining,
                    retry_after_ms,
                }
            }
            (Spend::Allowed { .. }, None) => return Outcome::Failed("limit_contention"),
        }
    }
    Outcome::Failed("limit_contention")
}

/// Creates the missing entries of every local limit (when a VM loads its configuration).
pub fn prepare(host: &mut dyn Host, config: &crate::config::Config) {
    let empty = Bucket::EMPTY.encode();
    for server in &config.servers {
        for limit in &server.policy.limits {
            if limit.scope != crate::policy::Scope::Local {
                continue;
            }
            let id = limit_id(&server.name, &limit.name);
            for slot in 0..limit.slots {
                let name = slot_key(&id, slot);
                if host.shared_get_cas(&name).is_none() {
                    host.shared_set_cas(&name, &empty, crate::host::ABSENT);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: u64, period_ms: u64, burst: u64) -> Shape {
        Shape {
            per_period: n,
            period_ms,
            burst,
        }
    }

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_the_rate() {
        let s = shape(100, 3_600_000, 100); // 100/hour
        let h = [7; HASH_BYTES];
        let mut b = Bucket::EMPTY;
        for i in 0..100 {
            let (out, next) = spend(&s, &b, h, 1, 1_000);
            assert_eq!(out, Spend::Allowed { remaining: 99 - i });
            b = next.unwrap();
        }
        let (out, next) = spend(&s, &b, h, 1, 1_000);
        assert_eq!(
            out,
            Spend::Limited {
                remaining: 0,
                retry_after_ms: 36_000
            }
        );
        assert!(next.is_none());
        // One token refills in 36 s, exactly.
        assert!(matches!(
            spend(&s, &b, h, 1, 36_999).0,
            Spend::Limited {
                retry_after_ms: 1,
                ..
            }
        ));
        assert_eq!(
            spend(&s, &b, h, 1, 37_000).0,
            Spend::Allowed { remaining: 0 }
        );
    }

    #[test]
    fn cost_and_burst() {
        let s = shape(10, 1_000, 20);
        let h = [1; HASH_BYTES];
        let (out, b) = spend(&s, &Bucket::EMPTY, h, 15, 0);
        assert_eq!(out, Spend::Allowed { remaining: 5 });
        let b = b.unwrap();
        assert_eq!(
            spend(&s, &b, h, 10, 0).0,
            Spend::Limited {
                remaining: 5,
                retry_after_ms: 500
            }
        );
        // More than the burst is never allowed; it waits for a full bucket.
        assert_eq!(
            spend(&s, &b, h, 50, 0).0,
            Spend::Limited {
                remaining: 5,
                retry_after_ms: 1_500
            }
        );
        // Refill stops at the burst.
        assert_eq!(s.tokens(s.level(&b, 1_000_000)), 20);
    }

    #[test]
    fn entries_round_trip_and_reject_garbage() {
        let b = Bucket {
            hash: [9; HASH_BYTES],
            units: 12345,
            at_ms: 67890,
        };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(Bucket::decode(b"short"), None);
    }

    #[test]
    fn keys_spread_and_never_hash_to_empty() {
        let (h1, s1) = locate(None, "srv.l", "alice", 10_000);
        let (h2, _) = locate(None, "srv.l", "bob", 10_000);
        let (h3, _) = locate(None, "srv.other", "alice", 10_000);
        assert_ne!(h1, h2);
        assert_ne!(h1, h3);
        assert!(s1 < 10_000);
        assert_ne!(h1, [0; HASH_BYTES]);
    }
}
