//! Sender-constrained tokens: a token whose claims (or introspection answer) carry `cnf` is
//! only accepted with proof that the caller holds its key.
//!
//! - DPoP (RFC 9449), `cnf.jkt`: the request uses the `DPoP` authorization scheme and carries
//!   one `DPoP` header, a JWT with `typ: dpop+jwt`, signed with the public `jwk` in its header
//!   (an allowed algorithm), whose RFC 7638 thumbprint equals `cnf.jkt`; `htm` is the request
//!   method, `htu` the URL the client called (the server's public origin, from its `resource`,
//!   plus the request path, without query or fragment), `iat` within the window, `ath` the
//!   base64url SHA-256 of the token, and `jti` not seen before within the window by any worker
//!   VM of this Envoy (shared data, bounded) — and, with `replay: fleet`, by any replica: the
//!   proof is then also spent at the rate limit service (the flow's headers step waits for it).
//! - mTLS (RFC 8705), `cnf.x5t#S256`: the SHA-256 of the client certificate Envoy received on
//!   this connection (`connection.sha256_peer_certificate_digest`) must match.
//!
//! A token with any other `cnf`, or without the proof its `cnf` asks for, is refused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{typed, ConfigError};
use crate::host::Host;
use crate::jwt::{Alg, MessageKey};

/// Largest DPoP proof accepted.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Shared-data slots for seen proof ids, and ids per slot: at most `SLOTS * PER_SLOT` proofs
/// within one window (524288, 12 MiB of shared data when full); beyond, new proofs are refused
/// (fail closed) until ids expire. Ids fall into slots by a keyed hash ([`remember_jti`]), so the first slot fills while
/// the average is lower: at 128 ids a slot, one Envoy process refused fresh proofs from about
/// 1,700 a second sustained over the default 60-second window (`make bench` on a fast machine);
/// at 512, from about 7,000. A proof reads and rewrites only the live ids of its slot, so the
/// larger bound costs nothing until it is used. The slot count stays 1024: a proof's slot must
/// not move when the module is replaced in place (shared data outlives it).
const SLOTS: u16 = 1024;
const PER_SLOT: usize = 512;

/// The descriptor's `mcp_limit` value under which a proof is spent at the rate limit service
/// (`replay: fleet`): configure it there as at most 1 hit per key, for at least
/// `max_age_seconds` plus twice the clock skew from the first hit.
pub const FLEET_LIMIT: &str = "dpop_proof";

/// The `dpop` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopConfig {
    pub algorithms: Vec<Alg>,
    /// How old (by `iat`) a proof may be, and how long its `jti` is remembered.
    pub max_age_seconds: i64,
    /// `replay: fleet`: a proof is refused when any replica saw it, not only this Envoy.
    pub fleet: bool,
    /// Verifies proof signatures outside Wasm when the adapter installed a host.
    pub signatures: crate::crypto::Signatures,
    /// Proof headers read before, and the replay store's slot key ([`Memo`]).
    memo: Memo,
}

/// How many proof headers one VM keeps read (emptied when full: a bound, not an LRU).
const HEADERS_KEPT: usize = 64;

/// What a configuration works out once per VM and keeps: it never changes what a check decides.
///
/// * Proof headers already read, by their base64url text. A client signs all its proofs with
///   one key, so each proof repeats the header (`typ`, `alg`, `jwk`) and only the payload
///   changes: the header's checks, its key (parsed, validated, DER-encoded for the host) and the
///   key's thumbprint are worked out once per VM. Only headers that passed their checks are
///   kept; what is kept depends on nothing but the header's text and this configuration.
/// * The replay store's slot key ([`Memo::seed`]), read once from shared data.
#[derive(Default)]
struct Memo {
    headers: RefCell<HashMap<Box<str>, Rc<ProofHeader>, foldhash::fast::FixedState>>,
    seed: std::cell::Cell<Option<Seed>>,
}

/// The replay store's slot key and the Unix second it was drawn.
type Seed = ([u8; 32], i64);

/// A proof header that passed its checks.
#[derive(Debug)]
struct ProofHeader {
    alg: Alg,
    key: MessageKey,
    /// RFC 7638 thumbprint; `None` when the key lacks a member it needs.
    thumbprint: Option<String>,
}

impl Memo {
    fn read(&self, text: &str, config: &DpopConfig) -> Result<Rc<ProofHeader>, SenderError> {
        if let Some(header) = self.headers.borrow().get(text) {
            return Ok(Rc::clone(header));
        }
        let header = Rc::new(read_header(text, config)?);
        let mut kept = self.headers.borrow_mut();
        if kept.len() >= HEADERS_KEPT {
            kept.clear();
        }
        kept.insert(text.into(), Rc::clone(&header));
        Ok(header)
    }

    /// The replay store's slot key: 32 random bytes drawn once per Envoy process, by the first
    /// VM that needs them, and kept in shared data like the slots (so every worker VM, and a
    /// module updated in place, chooses the same slot for a proof). `None` when the host has
    /// no random source: then no proof is recorded (fail closed).
    fn seed(&self, host: &mut dyn Host) -> Option<Seed> {
        if let Some(seed) = self.seed.get() {
            return Some(seed);
        }
        let stored = |host: &dyn Host| {
            let bytes = host.shared_get(SEED_KEY)?;
            let (key, drawn) = bytes.split_first_chunk::<32>()?;
            let drawn = i64::from_le_bytes(<[u8; 8]>::try_from(drawn).ok()?);
            Some((*key, drawn))
        };
        let seed = match stored(host) {
            Some(seed) => seed,
            None => {
                let mut drawn = [0u8; 40];
                let (key, at) = drawn.split_at_mut(32);
                if !host.random(key) {
                    log::warn!(
                        "mcp-guard: the host gave no random bytes: DPoP proofs cannot be recorded"
                    );
                    return None;
                }
                let now = i64::try_from(host.now_millis() / 1000).unwrap_or(i64::MAX);
                at.copy_from_slice(&now.to_le_bytes());
                // The first VM's draw is kept; every other reads it.
                host.shared_set_cas(SEED_KEY, &drawn, crate::host::ABSENT);
                stored(host)?
            }
        };
        self.seed.set(Some(seed));
        Some(seed)
    }
}

/// A configuration's memo: a new one starts empty.
impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Memo {}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Memo({} headers kept)", self.headers.borrow().len())
    }
}

impl Default for DpopConfig {
    fn default() -> Self {
        DpopConfig {
            algorithms: vec![Alg::Es256, Alg::Rs256, Alg::Ps256, Alg::EdDsa, Alg::Es384],
            max_age_seconds: 60,
            fleet: false,
            signatures: crate::crypto::Signatures::default(),
            memo: Memo::default(),
        }
    }
}

/// `dpop`: how DPoP proofs (RFC 9449) are checked.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDpop {
    /// Algorithms a proof may be signed with (default ES256, RS256, PS256, EdDSA, ES384).
    #[serde(default)]
    #[schemars(with = "Option<Vec<Alg>>")]
    algorithms: Option<Vec<String>>,
    /// How old a proof may be, in seconds (default 60).
    #[serde(default)]
    max_age_seconds: Option<i64>,
    /// Where used proofs are remembered: `local` (default: this Envoy's worker VMs) or `fleet`
    /// (also the rate limit service of `rate_limit_service`, shared by every replica).
    #[serde(default)]
    replay: Option<Replay>,
}

#[derive(Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Replay {
    Local,
    Fleet,
}

impl DpopConfig {
    pub fn from_config(value: Option<Value>, field: &str) -> Result<DpopConfig, ConfigError> {
        let Some(value) = value else {
            return Ok(DpopConfig::default());
        };
        let raw: RawDpop = typed(value, field)?;
        let mut config = DpopConfig::default();
        if let Some(names) = raw.algorithms {
            if names.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.algorithms"),
                    "must not be empty",
                ));
            }
            config.algorithms = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Alg::parse(n).ok_or_else(|| {
                        ConfigError::new(
                            format!("{field}.algorithms[{i}]"),
                            format!("unsupported algorithm {n:?}"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(age) = raw.max_age_seconds {
            if !(1..=600).contains(&age) {
                return Err(ConfigError::new(
                    format!("{field}.max_age_seconds"),
                    "must be between 1 and 600",
                ));
            }
            config.max_age_seconds = age;
        }
        config.fleet = raw.replay == Some(Replay::Fleet);
        Ok(config)
    }

    /// The `algs` of the `WWW-Authenticate: DPoP` challenge.
    pub fn algs(&self) -> String {
        self.algorithms
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How the token was presented, and what the request offers as proof of possession.
pub struct Presentation<'a> {
    /// `Authorization: DPoP <token>` (rather than `Bearer`).
    pub dpop_scheme: bool,
    /// The `DPoP` header values.
    pub proofs: Vec<&'a str>,
    pub method: &'a str,
    /// The URL the client called, without query or fragment.
    pub htu: String,
    pub now: i64,
    pub skew: i64,
}

/// Why a sender-constrained token (or a DPoP presentation) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderError {
    /// The proof itself is wrong: `invalid_dpop_proof` (RFC 9449 §7.1).
    Proof(String),
    /// The token and its presentation do not fit: `invalid_token`, with a DPoP challenge.
    Token(&'static str),
    /// An mTLS-bound token without its certificate: `invalid_token` (RFC 8705 §3).
    Certificate(&'static str),
}

impl SenderError {
    pub fn reason(&self) -> &'static str {
        match self {
            SenderError::Proof(_) => "invalid_dpop_proof",
            SenderError::Token(_) => "dpop_required",
            SenderError::Certificate(_) => "certificate_mismatch",
        }
    }

    pub fn describe(&self) -> &str {
        match self {
            SenderError::Proof(m) => m,
            SenderError::Token(m) | SenderError::Certificate(m) => m,
        }
    }
}

/// `Authorization: DPoP <token>`: the token, when the (single) header uses the DPoP scheme.
pub fn scheme_token<'h>(authorization: &[&'h str]) -> Option<&'h str> {
    let [value] = authorization else {
        return None;
    };
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("dpop")
        && !token.is_empty()
        && !crate::http::has_whitespace(token)
        && !token.contains(','))
    .then_some(token)
}

/// Checks the token's `cnf` against the presentation (see the module documentation). With a
/// DPoP proof, its id (hex of the first 16 bytes of SHA-256(`jti`)), which this Envoy has now
/// remembered: the key under which `replay: fleet` spends it at the rate limit service.
pub fn check(
    claims: &Map<String, Value>,
    token_sha256: &[u8; 32],
    p: &Presentation<'_>,
    config: &DpopConfig,
    host: &mut dyn Host,
) -> Result<Option<String>, SenderError> {
    let Some(cnf) = claims.get("cnf") else {
        if p.dpop_scheme {
            return Err(SenderError::Token(
                "the DPoP scheme was used with a token that is not DPoP-bound",
            ));
        }
        return Ok(None);
    };
    let cnf = cnf
        .as_object()
        .ok_or(SenderError::Token("the token's cnf claim is not an object"))?;
    let jkt = cnf.get("jkt");
    let x5t = cnf.get("x5t#S256");
    if jkt.is_none() && x5t.is_none() {
        return Err(SenderError::Token(
            "the token is bound by a confirmation method this filter does not support",
        ));
    }
    if let Some(x5t) = x5t {
        let expected = x5t
            .as_str()
            .ok_or(SenderError::Token("cnf.x5t#S256 is not a string"))?;
        // Read only for a certificate-bound token: one hostcall fewer for every other.
        let digest = host
            .property_string(&["connection", "sha256_peer_certificate_digest"])
            .as_deref()
            .and_then(hex_decode)
            .ok_or(SenderError::Certificate(
                "the token is bound to a client certificate and none was presented",
            ))?;
        if URL_SAFE_NO_PAD.encode(digest) != expected {
            return Err(SenderError::Certificate(
                "the token is bound to another client certificate",
            ));
        }
    }
    match jkt {
        Some(jkt) => {
            let jkt = jkt
                .as_str()
                .ok_or(SenderError::Token("cnf.jkt is not a string"))?;
            if !p.dpop_scheme {
                return Err(SenderError::Token(
                    "a DPoP-bound token must be sent with the DPoP authorization scheme",
                ));
            }
            let proof = match p.proofs.as_slice() {
                [] => return Err(SenderError::Proof("no DPoP proof".into())),
                [one] if !one.contains(',') => *one,
                _ => return Err(SenderError::Proof("more than one DPoP proof".into())),
            };
            let (thumbprint, jti, iat) = verify_proof(proof, token_sha256, p, config)?;
            if thumbprint != jkt {
                return Err(SenderError::Proof(
                    "the proof's key is not the one the token is bound to".into(),
                ));
            }
            let until = iat + config.max_age_seconds + p.skew;
            remember_jti(&jti, until, p.now, &config.memo, host).map(Some)
        }
        None if p.dpop_scheme => Err(SenderError::Token(
            "the DPoP scheme was used with a token that is not DPoP-bound",
        )),
        None => Ok(None),
    }
}

/// A SHA-256 digest written in hex (either case), as Envoy gives the peer certificate's.
fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    base16ct::mixed::decode_vec(hex.trim())
        .ok()
        .filter(|d| d.len() == 32)
}

fn decode_part(part: &str, what: &str) -> Result<Map<String, Value>, SenderError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| SenderError::Proof(format!("the proof's {what} is not base64url")))?;
    match crate::mcp::parse_strict_json(&bytes, 16) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(SenderError::Proof(format!(
            "the proof's {what} is not a JSON object"
        ))),
    }
}

/// Checks a proof's header (its base64url text) and reads its key.
fn read_header(text: &str, config: &DpopConfig) -> Result<ProofHeader, SenderError> {
    let bad = |m: &str| SenderError::Proof(m.to_string());
    let header = decode_part(text, "header")?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(bad("the proof's typ must be dpop+jwt"));
    }
    if header.contains_key("crit") {
        return Err(bad("the proof has critical header extensions"));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::parse)
        .filter(|a| config.algorithms.contains(a))
        .ok_or_else(|| bad("the proof's algorithm is not allowed"))?;
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("the proof has no jwk header"))?;
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| jwk.contains_key(*m))
    {
        return Err(bad("the proof's jwk must be a public key"));
    }
    let key = MessageKey::parse(&Value::Object(jwk.clone()))
        .map_err(|e| SenderError::Proof(format!("the proof's jwk: {e}")))?;
    Ok(ProofHeader {
        alg,
        key,
        thumbprint: thumbprint(jwk),
    })
}

/// Verifies a DPoP proof for the access token whose SHA-256 is `token_sha256` (the proof's
/// `ath`); returns its key's thumbprint, its `jti` and `iat`.
pub fn verify_proof(
    proof: &str,
    token_sha256: &[u8; 32],
    p: &Presentation<'_>,
    config: &DpopConfig,
) -> Result<(String, String, i64), SenderError> {
    let bad = |m: &str| SenderError::Proof(m.to_string());
    if proof.len() > MAX_PROOF_BYTES {
        return Err(bad("the proof is too large"));
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("the proof is not a compact JWS"));
    };
    let header = config.memo.read(h, config)?;
    let claims = decode_part(c, "payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad("the proof's signature is not base64url"))?;
    let signed = proof
        .rfind('.')
        .and_then(|dot| proof.get(..dot))
        .ok_or_else(|| bad("the proof is not a compact JWS"))?;
    let host = config.signatures.host();
    if !header
        .key
        .verifies(header.alg, signed.as_bytes(), &signature, host)
    {
        return Err(bad("the proof's signature does not verify"));
    }
    let thumbprint = header
        .thumbprint
        .clone()
        .ok_or_else(|| bad("the proof's jwk is incomplete"))?;

    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("htm") != Some(p.method) {
        return Err(bad("the proof is for another HTTP method (htm)"));
    }
    let htu = text("htu").ok_or_else(|| bad("the proof has no htu"))?;
    if !same_url(htu, &p.htu) {
        return Err(bad("the proof is for another URL (htu)"));
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("the proof has no numeric iat"))? as i64;
    if iat > p.now + p.skew || iat < p.now - config.max_age_seconds - p.skew {
        return Err(bad("the proof's iat is outside the accepted window"));
    }
    if text("ath") != Some(URL_SAFE_NO_PAD.encode(token_sha256).as_str()) {
        return Err(bad("the proof's ath is not the hash of this token"));
    }
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| bad("the proof has no jti"))?;
    Ok((thumbprint, jti.to_string(), iat))
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url).
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str)? {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut canonical = String::from("{");
    for (i, member) in members.iter().enumerate() {
        let value = jwk.get(*member).and_then(Value::as_str)?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push_str(&format!(
            "\"{member}\":{}",
            Value::String(value.to_string())
        ));
    }
    canonical.push('}');
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// `htu` comparison (RFC 9449 §4.3): scheme and host case-insensitive, no query or fragment,
/// default ports ignored.
fn same_url(a: &str, b: &str) -> bool {
    fn norm(u: &str) -> Option<String> {
        let u = u.split(['?', '#']).next()?;
        let (scheme, rest) = u.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let (authority, path) = match rest.find('/') {
            Some(i) => (rest.get(..i)?, rest.get(i..)?),
            None => (rest, "/"),
        };
        let mut authority = authority.to_ascii_lowercase();
        for default in [(":443", "https"), (":80", "http")] {
            if scheme == default.1 && authority.ends_with(default.0) {
                authority.truncate(authority.len() - default.0.len());
            }
        }
        Some(format!("{scheme}://{authority}{path}"))
    }
    matches!((norm(a), norm(b)), (Some(x), Some(y)) if x == y)
}

fn slot_key(hash: &[u8; 32]) -> String {
    let n = u16::from_be_bytes([hash[0], hash[1]]) % SLOTS;
    format!("mcp-guard:dpop-jti:{n}")
}

/// Where the replay store's slot key is kept ([`Memo::seed`]).
const SEED_KEY: &str = "mcp-guard:dpop-seed";

/// How long after the slot key was drawn a proof recorded before it can still be live: versions
/// without a key chose a proof's slot by SHA-256(`jti`) alone, and shared data outlives an
/// in-place module update. A proof is remembered until its `iat` + `max_age_seconds` + the
/// clock skew, `iat` at most the skew ahead: at most 600 + 2 × 600 seconds.
const UNKEYED_SLOTS_LIVE: i64 = 600 + 2 * 600;

/// A remembered proof in a slot: the first 16 bytes of SHA-256(`jti`), then the Unix second
/// until which it is kept (i64, little-endian). Fixed records, so a proof reads and rewrites its
/// slot without parsing or allocating per id (the slot was JSON before; see [`legacy_slot`]).
const RECORD: usize = 24;

/// Records a proof's `jti` until `until` (Unix seconds); a `jti` seen before is a replay. The
/// proof's id (hex) when it was recorded.
///
/// Its slot is chosen by SHA-256(slot key ‖ `jti`), the key random and this Envoy's own
/// ([`Memo::seed`]): a client that could tell which slot a `jti` falls into could fill one
/// slot with its own proofs (512) and so refuse 1/1024 of everyone's fresh proofs for the
/// window (a full slot refuses; it never forgets a live id, which would let one be replayed).
fn remember_jti(
    jti: &str,
    until: i64,
    now: i64,
    memo: &Memo,
    host: &mut dyn Host,
) -> Result<String, SenderError> {
    let hash: [u8; 32] = Sha256::digest(jti.as_bytes()).into();
    let id = hash.get(..16).unwrap_or_default();
    let Some((seed, drawn)) = memo.seed(host) else {
        return Err(SenderError::Proof(
            "the proof could not be recorded; retry with a fresh proof".into(),
        ));
    };
    let keyed: [u8; 32] = Sha256::new()
        .chain_update(seed)
        .chain_update(jti.as_bytes())
        .finalize()
        .into();
    let key = slot_key(&keyed);
    if now <= drawn.saturating_add(UNKEYED_SLOTS_LIVE) {
        let unkeyed = slot_key(&hash);
        let stored = (unkeyed != key)
            .then(|| host.shared_get(&unkeyed))
            .flatten()
            .unwrap_or_default();
        let stored = legacy_slot(&stored).unwrap_or(stored);
        if live_records(&stored, now).any(|record| record.get(..16) == Some(id)) {
            return Err(SenderError::Proof("the proof was used before (jti)".into()));
        }
    }
    for _ in 0..4 {
        let (stored, cas) = crate::host::shared_read(host, &key);
        let stored = legacy_slot(&stored).unwrap_or(stored);
        let mut slot = Vec::with_capacity(stored.len() + RECORD);
        for record in live_records(&stored, now) {
            if record.get(..16) == Some(id) {
                return Err(SenderError::Proof("the proof was used before (jti)".into()));
            }
            slot.extend_from_slice(record);
        }
        if slot.len() >= PER_SLOT * RECORD {
            return Err(SenderError::Proof(
                "too many recent proofs; retry with a fresh proof".into(),
            ));
        }
        slot.extend_from_slice(id);
        slot.extend_from_slice(&until.to_le_bytes());
        if host.shared_set_cas(&key, &slot, cas) {
            return Ok(id.iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    Err(SenderError::Proof(
        "the proof could not be recorded; retry with a fresh proof".into(),
    ))
}

/// The records of a slot whose ids are still remembered at `now`.
fn live_records(slot: &[u8], now: i64) -> impl Iterator<Item = &[u8]> {
    slot.chunks_exact(RECORD).filter(move |record| {
        let expiry = record.get(16..).and_then(|e| <[u8; 8]>::try_from(e).ok());
        expiry.map_or(i64::MIN, i64::from_le_bytes) >= now
    })
}

/// A slot written by an earlier version of the filter (a JSON array of `[base64url id, expiry]`)
/// as records, so the proofs it remembers stay refused across an upgrade in place (shared data
/// outlives a module swap). `None` when the slot is not in that form (records may begin with
/// `[` too); an id that is not 16 bytes is dropped rather than read as record bytes.
fn legacy_slot(stored: &[u8]) -> Option<Vec<u8>> {
    if stored.first() != Some(&b'[') {
        return None;
    }
    let seen = serde_json::from_slice::<Vec<(String, i64)>>(stored).ok()?;
    let mut slot = Vec::with_capacity(seen.len() * RECORD);
    for (id, expiry) in seen {
        if let Some(id) = URL_SAFE_NO_PAD.decode(id).ok().filter(|id| id.len() == 16) {
            slot.extend_from_slice(&id);
            slot.extend_from_slice(&expiry.to_le_bytes());
        }
    }
    Some(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29",
        });
        assert_eq!(
            thumbprint(jwk.as_object().unwrap()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn urls_compare_like_the_rfc_says() {
        assert!(same_url(
            "https://Mcp.Example.com:443/mcp",
            "https://mcp.example.com/mcp"
        ));
        assert!(same_url(
            "https://mcp.example.com/mcp?x=1",
            "https://mcp.example.com/mcp"
        ));
        assert!(!same_url(
            "https://mcp.example.com/other",
            "https://mcp.example.com/mcp"
        ));
        assert!(!same_url(
            "http://mcp.example.com/mcp",
            "https://mcp.example.com/mcp"
        ));
        assert!(!same_url(
            "https://mcp.example.com:8443/mcp",
            "https://mcp.example.com/mcp"
        ));
    }

    #[test]
    fn hex_digest() {
        assert_eq!(hex_decode(&"ab".repeat(32)), Some(vec![0xab; 32]));
        assert_eq!(hex_decode("abc"), None);
    }
}
