//! Token introspection (RFC 7662), per issuer: opaque access tokens, and by choice JWTs too
//! (to catch a revocation before `exp`).
//!
//! The call goes through an Envoy cluster with client authentication (`client_secret_basic`
//! or `client_secret_post`). Answers are cached per VM by a SHA-256 of the token and of who was
//! asked about it for which issuer ([`answer_key`]; never the token): positive ones until the
//! earlier of their `exp` and `cache_ttl_seconds`, negative ones for `negative_ttl_seconds`, a
//! failed call for one second (so an IdP outage is not hammered). Concurrent requests with one
//! token wait for one call, in this VM and across the worker VMs: a slot in shared data
//! (`mcp-guard:introspect:<slot>`, 4096 slots chosen by that hash, so shared data stays
//! bounded) holds the lease and then the answer, which the other VMs adopt on their next tick.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::env::Environment;
use crate::error::{typed, ConfigError};
use crate::host::Host;
use crate::url::split_url;

/// Largest introspection answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Answers one VM remembers.
pub const CACHE_ENTRIES: usize = 4096;
/// Shared-data slots for cross-VM leases and answers.
const SLOTS: u16 = 4096;
/// How long a failed call is remembered (the IdP is not asked again meanwhile).
const FAILED_TTL_MS: u64 = 1000;

/// Which tokens of an issuer are introspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "lowercase")]
pub enum Mode {
    /// None (the default).
    Never,
    /// Tokens that are not JWTs (no two dots).
    Opaque,
    /// Opaque tokens, and JWTs after they verified.
    Always,
}

/// How the filter authenticates to the introspection endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum ClientAuth {
    /// HTTP Basic (the default).
    #[schemars(rename = "client_secret_basic")]
    Basic,
    /// In the form body.
    #[schemars(rename = "client_secret_post")]
    Post,
}

/// One issuer's introspection endpoint.
pub struct Introspection {
    pub mode: Mode,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub client_id: String,
    secret_from_env: Option<String>,
    secret: String,
    pub auth: ClientAuth,
    pub cache_ttl_ms: u64,
    pub negative_ttl_ms: u64,
    pub timeout_ms: u64,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("mode", &self.mode)
            .field("cluster", &self.cluster)
            .field("path", &self.path)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// `issuers[].introspection`: an RFC 7662 token introspection endpoint.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntrospection {
    /// The endpoint's absolute URL.
    endpoint: String,
    /// The Envoy cluster that reaches it (default: the issuer's `cluster`).
    #[serde(default)]
    cluster: Option<String>,
    /// The filter's client id at the authorization server.
    client_id: String,
    /// The VM environment variable that holds the client secret.
    #[serde(default)]
    client_secret_from_env: Option<String>,
    /// How the client authenticates (default `client_secret_basic`).
    #[serde(default)]
    #[schemars(with = "Option<ClientAuth>")]
    auth: Option<String>,
    /// How long an active answer is kept, in seconds (default 60).
    #[serde(default)]
    cache_ttl_seconds: Option<u64>,
    /// How long an inactive answer is kept, in seconds (default 5).
    #[serde(default)]
    negative_ttl_seconds: Option<u64>,
    /// Call timeout, in milliseconds (default 2000).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

impl Introspection {
    /// `issuers[i].introspect` and `issuers[i].introspection`.
    pub fn from_config(
        mode: Option<&str>,
        value: Option<Value>,
        field: &str,
        default_cluster: Option<&str>,
    ) -> Result<Option<Introspection>, ConfigError> {
        let at = |name: &str| format!("{field}.{name}");
        let mode = match mode {
            None | Some("never") => Mode::Never,
            Some("opaque") => Mode::Opaque,
            Some("always") => Mode::Always,
            Some(other) => {
                return Err(ConfigError::new(
                    at("introspect"),
                    format!("must be \"never\", \"opaque\" or \"always\", not {other:?}"),
                ))
            }
        };
        let value = match (mode, value) {
            (Mode::Never, None) => return Ok(None),
            (Mode::Never, Some(_)) => {
                return Err(ConfigError::new(
                    at("introspect"),
                    "set \"opaque\" or \"always\" to use the introspection endpoint",
                ))
            }
            (_, None) => {
                return Err(ConfigError::new(
                    at("introspection"),
                    "is required with introspect: the endpoint, cluster and client credentials",
                ))
            }
            (_, Some(v)) => v,
        };
        let field = at("introspection");
        let at = |name: &str| format!("{field}.{name}");
        let raw: RawIntrospection = typed(value, &field)?;
        let (authority, path) = split_url(&raw.endpoint)
            .map(|(a, p)| (a.to_string(), p.to_string()))
            .map_err(|m| ConfigError::new(at("endpoint"), m))?;
        let cluster = raw
            .cluster
            .or(default_cluster.map(str::to_string))
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    at("cluster"),
                    "is required: the Envoy cluster that reaches the introspection endpoint",
                )
            })?;
        if raw.client_id.is_empty() {
            return Err(ConfigError::new(at("client_id"), "must not be empty"));
        }
        let auth = match raw.auth.as_deref() {
            None | Some("client_secret_basic") => ClientAuth::Basic,
            Some("client_secret_post") => ClientAuth::Post,
            Some(other) => {
                return Err(ConfigError::new(
                    at("auth"),
                    format!(
                        "must be \"client_secret_basic\" or \"client_secret_post\", not {other:?}"
                    ),
                ))
            }
        };
        if raw.client_secret_from_env.is_none() {
            return Err(ConfigError::new(
                at("client_secret_from_env"),
                "is required: the environment variable holding the client secret",
            ));
        }
        let ttl = raw.cache_ttl_seconds.unwrap_or(60);
        if ttl > 3600 {
            return Err(ConfigError::new(
                at("cache_ttl_seconds"),
                "at most 3600 (the cache delays every revocation by up to this long)",
            ));
        }
        Ok(Some(Introspection {
            mode,
            cluster,
            authority,
            path,
            client_id: raw.client_id,
            secret_from_env: raw.client_secret_from_env,
            secret: String::new(),
            auth,
            cache_ttl_ms: ttl.saturating_mul(1000),
            negative_ttl_ms: raw
                .negative_ttl_seconds
                .unwrap_or(5)
                .min(3600)
                .saturating_mul(1000),
            timeout_ms: raw.timeout_ms.unwrap_or(2000).clamp(1, 60_000),
        }))
    }

    /// Reads the client secret from the environment (at configuration time).
    pub fn resolve_secret(
        &mut self,
        env: &dyn Environment,
        field: &str,
    ) -> Result<(), ConfigError> {
        if let Some(name) = &self.secret_from_env {
            self.secret = env.var(name).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.introspection.client_secret_from_env"),
                    format!("environment variable {name:?} is not set for this VM"),
                )
            })?;
        }
        Ok(())
    }

    /// The request: headers and form body (RFC 7662 §2.1).
    pub fn request(&self, token: &str) -> (Vec<(String, String)>, Vec<u8>) {
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), self.path.clone()),
            (":authority".to_string(), self.authority.clone()),
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("accept".to_string(), "application/json".to_string()),
        ];
        let mut body = format!("token={}&token_type_hint=access_token", form_encode(token));
        match self.auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: each part form-encoded before base64.
                let pair = format!(
                    "{}:{}",
                    form_encode(&self.client_id),
                    form_encode(&self.secret)
                );
                headers.push((
                    "authorization".to_string(),
                    format!("Basic {}", STANDARD.encode(pair)),
                ));
            }
            ClientAuth::Post => {
                body.push_str(&format!(
                    "&client_id={}&client_secret={}",
                    form_encode(&self.client_id),
                    form_encode(&self.secret)
                ));
            }
        }
        (headers, body.into_bytes())
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What an answer about `token` is remembered by, in this VM and in shared data: the token and
/// who was asked about it, for which issuer. Shared data is the process's, seen by every
/// configuration whose VM shares the `vm_id` (and by the next configuration after an update):
/// an answer another authorization server gave, or gave another client (RFC 7662 §2.2 lets it
/// answer differently per protected resource), is not this issuer's answer. The token enters
/// as its SHA-256 (`token_sha256`), which the authenticator keeps for a caller's repeat
/// requests: hashing a 1 KiB JWT again is most of what a cached answer would cost in Wasm.
pub fn answer_key(issuer: &str, config: &Introspection, token_sha256: &[u8; 32]) -> [u8; 32] {
    crate::lease::digest_of(&[
        b"mcp-guard introspection".as_slice(),
        issuer.as_bytes(),
        config.cluster.as_bytes(),
        config.authority.as_bytes(),
        config.path.as_bytes(),
        config.client_id.as_bytes(),
        token_sha256,
    ])
}

/// A token is opaque when it is not a compact JWS (three dot-separated parts).
pub fn is_opaque(token: &str) -> bool {
    memchr::memchr_iter(b'.', token.as_bytes()).take(3).count() != 2
}

/// What the IdP said about a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// `active: true`, with the answer's members (`active` removed).
    Active {
        claims: Map<String, Value>,
    },
    Inactive,
    /// The IdP could not be asked, or answered with an error.
    Failed,
}

#[derive(Debug, Clone)]
struct Cached {
    answer: Rc<Answer>,
    until_ms: u64,
}

/// The outcome of a look-up.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Ready(Rc<Answer>),
    /// A call is under way (here or in another VM): wait.
    Pending,
}

/// A slot in shared data.
#[derive(Serialize, Deserialize, Default)]
struct Slot {
    /// The token hash, hex.
    h: String,
    /// A call is in flight until then.
    lease_ms: u64,
    #[serde(default)]
    answer: Option<Answer>,
    #[serde(default)]
    until_ms: u64,
    /// When the answer was got: another configuration sharing the VM (or this one before an
    /// update) may keep answers longer than this one's TTLs. Absent: never adopted.
    #[serde(default)]
    at_ms: u64,
}

/// How long this configuration keeps an answer of this kind.
fn longest_ms(config: &Introspection, answer: &Answer) -> u64 {
    match answer {
        Answer::Active { .. } => config.cache_ttl_ms,
        Answer::Inactive => config.negative_ttl_ms,
        Answer::Failed => FAILED_TTL_MS,
    }
}

/// Until when a published answer may be used here: its own end, but never past this
/// configuration's TTL for its kind, counted from when it was got.
fn adopted_until(config: &Introspection, answer: &Answer, slot: &Slot) -> u64 {
    slot.until_ms
        .min(slot.at_ms.saturating_add(longest_ms(config, answer)))
}

fn slot_key(hash: &[u8; 32]) -> String {
    let n = u16::from_be_bytes([hash[0], hash[1]]) % SLOTS;
    format!("mcp-guard:introspect:{n}")
}

fn hex(hash: &[u8; 32]) -> String {
    base16ct::lower::encode_string(hash)
}

/// A call in flight: (issuer, token hash, when to give up on it).
type InFlight = (usize, [u8; 32], u64);

/// Per-VM introspection state: the cache, the calls in flight, the lookups waiting.
#[derive(Debug, Default)]
pub struct Introspector {
    cache: RefCell<HashMap<[u8; 32], Cached>>,
    /// Call token → (issuer, token hash, when to give up on it). An answer can be lost (the
    /// request that dispatched the call ended first): the tick forgets calls past their time.
    inflight: RefCell<HashMap<u32, InFlight>>,
    /// Lookups waiting for another VM's call.
    waiting: RefCell<HashSet<(usize, [u8; 32])>>,
}

impl Introspector {
    /// The answer for `token`, from the cache or another VM; or starts the call.
    pub fn lookup(
        &self,
        issuer: usize,
        config: &Introspection,
        token: &str,
        hash: &[u8; 32],
        host: &mut dyn Host,
    ) -> Lookup {
        let now = host.now_millis();
        if let Some(hit) = self.cache.borrow().get(hash) {
            if hit.until_ms > now {
                host.count(OUTCOME_CACHE_HIT, 1);
                return Lookup::Ready(Rc::clone(&hit.answer));
            }
        }
        if self
            .inflight
            .borrow()
            .values()
            .any(|(_, h, until)| h == hash && *until > now)
        {
            return Lookup::Pending;
        }
        let key = slot_key(hash);
        let hex = hex(hash);
        let (slot, cas) = match host.shared_get_cas(&key) {
            Some((bytes, cas)) => (serde_json::from_slice::<Slot>(&bytes).ok(), cas),
            None => (None, crate::host::ABSENT),
        };
        if let Some(slot) = slot.as_ref().filter(|s| s.h == hex) {
            let fresh = slot
                .answer
                .as_ref()
                .map(|a| (a, adopted_until(config, a, slot)))
                .filter(|(_, until)| *until > now);
            if let Some((answer, until)) = fresh {
                let answer = Rc::new(answer.clone());
                self.remember(*hash, Rc::clone(&answer), until, now);
                host.count(OUTCOME_SHARED_HIT, 1);
                return Lookup::Ready(answer);
            }
            if slot.lease_ms > now {
                self.waiting.borrow_mut().insert((issuer, *hash));
                return Lookup::Pending;
            }
        }
        // Take the slot's lease. A lost race means another VM just started a call.
        let lease = Slot {
            h: hex,
            lease_ms: now.saturating_add(config.timeout_ms).saturating_add(500),
            answer: None,
            until_ms: 0,
            at_ms: 0,
        };
        let taken = serde_json::to_vec(&lease)
            .map(|bytes| host.shared_set_cas(&key, &bytes, cas))
            .unwrap_or(false);
        if !taken {
            self.waiting.borrow_mut().insert((issuer, *hash));
            return Lookup::Pending;
        }
        let (headers, body) = config.request(token);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match host.http_call(&config.cluster, &headers, &body, config.timeout_ms) {
            Some(call) => {
                let until = now.saturating_add(config.timeout_ms).saturating_add(1000);
                self.inflight
                    .borrow_mut()
                    .insert(call, (issuer, *hash, until));
                Lookup::Pending
            }
            None => {
                log::warn!(
                    "mcp-guard: could not dispatch an introspection call through cluster {:?} (is it defined?)",
                    config.cluster
                );
                let answer = Rc::new(Answer::Failed);
                self.publish(hash, &answer, now.saturating_add(FAILED_TTL_MS), host);
                host.count(OUTCOME_UNREACHABLE, 1);
                Lookup::Ready(answer)
            }
        }
    }

    /// Until when (ms) this VM keeps the answer about the token of `hash`, if it has one.
    pub fn cached_until(&self, hash: &[u8; 32]) -> Option<u64> {
        self.cache.borrow().get(hash).map(|c| c.until_ms)
    }

    /// Whether `call` is one of this VM's introspection calls.
    pub fn owns(&self, call: u32) -> bool {
        self.inflight.borrow().contains_key(&call)
    }

    /// Takes the IdP's answer to `call`. Returns the issuer whose waiting requests may go on.
    pub fn on_response(
        &self,
        configs: &[Option<&Introspection>],
        call: u32,
        status: Option<u32>,
        body: Option<&[u8]>,
        host: &mut dyn Host,
    ) -> Option<usize> {
        let (issuer, hash, _) = self.inflight.borrow_mut().remove(&call)?;
        let config = configs.get(issuer).copied().flatten()?;
        let now = host.now_millis();
        let (answer, outcome) = match (status, body) {
            (Some(200), Some(body)) if body.len() <= MAX_ANSWER_BYTES => parse_answer(body),
            (Some(200), _) => (Answer::Failed, OUTCOME_INVALID),
            (None | Some(0), _) => (Answer::Failed, OUTCOME_UNREACHABLE),
            (Some(_), _) => (Answer::Failed, OUTCOME_HTTP_ERROR),
        };
        host.count(outcome, 1);
        if answer == Answer::Failed {
            log::warn!(
                "mcp-guard: introspection through cluster {:?} failed ({outcome}, HTTP status {status:?})",
                config.cluster
            );
        }
        let until_ms = match &answer {
            Answer::Active { claims } => {
                let ttl_end = now.saturating_add(config.cache_ttl_ms);
                match claims.get("exp").and_then(Value::as_f64) {
                    // Already expired: refused on use (as "expired"), remembered like a
                    // negative answer.
                    Some(exp) if exp * 1000.0 <= now as f64 => {
                        now.saturating_add(config.negative_ttl_ms)
                    }
                    Some(exp) => ttl_end.min((exp * 1000.0) as u64),
                    None => ttl_end,
                }
            }
            Answer::Inactive => now.saturating_add(config.negative_ttl_ms),
            Answer::Failed => now.saturating_add(FAILED_TTL_MS),
        };
        self.publish(&hash, &Rc::new(answer), until_ms, host);
        Some(issuer)
    }

    /// Adopts answers other VMs published for the lookups waiting here. Returns the issuers
    /// whose waiting requests may go on (an answer arrived, or the other VM's lease lapsed).
    pub fn tick(&self, configs: &[Option<&Introspection>], host: &mut dyn Host) -> Vec<usize> {
        let now = host.now_millis();
        let mut settled = Vec::new();
        self.inflight.borrow_mut().retain(|_, (issuer, _, until)| {
            let keep = *until > now;
            if !keep && !settled.contains(issuer) {
                settled.push(*issuer);
            }
            keep
        });
        let waiting: Vec<(usize, [u8; 32])> = self.waiting.borrow().iter().copied().collect();
        for (issuer, hash) in waiting {
            let slot = host
                .shared_get_cas(&slot_key(&hash))
                .and_then(|(bytes, _)| serde_json::from_slice::<Slot>(&bytes).ok());
            let done = match slot {
                Some(slot) if slot.h == hex(&hash) => match &slot.answer {
                    Some(answer) => {
                        // The waiting request looks again: it adopts the answer (or asks) then.
                        if let Some(config) = configs.get(issuer).copied().flatten() {
                            let until = adopted_until(config, answer, &slot);
                            if until > now {
                                self.remember(hash, Rc::new(answer.clone()), until, now);
                            }
                        }
                        true
                    }
                    None => slot.lease_ms <= now,
                },
                _ => true,
            };
            if done {
                self.waiting.borrow_mut().remove(&(issuer, hash));
                if !settled.contains(&issuer) {
                    settled.push(issuer);
                }
            }
        }
        settled
    }

    fn publish(&self, hash: &[u8; 32], answer: &Rc<Answer>, until_ms: u64, host: &mut dyn Host) {
        let now = host.now_millis();
        self.remember(*hash, Rc::clone(answer), until_ms, now);
        let slot = Slot {
            h: hex(hash),
            lease_ms: 0,
            answer: Some((**answer).clone()),
            until_ms,
            at_ms: now,
        };
        if let Ok(bytes) = serde_json::to_vec(&slot) {
            host.shared_set_cas(&slot_key(hash), &bytes, None);
        }
    }

    fn remember(&self, hash: [u8; 32], answer: Rc<Answer>, until_ms: u64, now: u64) {
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.until_ms > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(hash, Cached { answer, until_ms });
    }
}

pub const OUTCOME_CACHE_HIT: &str = "mcp_guard.introspections.outcome=cache_hit";
pub const OUTCOME_SHARED_HIT: &str = "mcp_guard.introspections.outcome=shared_hit";
pub const OUTCOME_ACTIVE: &str = "mcp_guard.introspections.outcome=active";
pub const OUTCOME_INACTIVE: &str = "mcp_guard.introspections.outcome=inactive";
pub const OUTCOME_INVALID: &str = "mcp_guard.introspections.outcome=invalid";
pub const OUTCOME_HTTP_ERROR: &str = "mcp_guard.introspections.outcome=http_error";
pub const OUTCOME_UNREACHABLE: &str = "mcp_guard.introspections.outcome=unreachable";

fn parse_answer(body: &[u8]) -> (Answer, &'static str) {
    match crate::mcp::parse_strict_json(body, 32) {
        Ok(Value::Object(mut map)) => match map.remove("active") {
            Some(Value::Bool(true)) => (Answer::Active { claims: map }, OUTCOME_ACTIVE),
            Some(Value::Bool(false)) => (Answer::Inactive, OUTCOME_INACTIVE),
            _ => (Answer::Failed, OUTCOME_INVALID),
        },
        _ => (Answer::Failed, OUTCOME_INVALID),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Env;
    impl Environment for Env {
        fn var(&self, name: &str) -> Option<String> {
            (name == "SECRET").then(|| "s3cr:t&".to_string())
        }
    }

    #[test]
    fn config_and_request() {
        let mut c = Introspection::from_config(
            Some("opaque"),
            Some(json!({
                "endpoint": "https://idp.example.com/token/introspection",
                "client_id": "mcp guard",
                "client_secret_from_env": "SECRET",
            })),
            "issuers[0]",
            Some("idp"),
        )
        .unwrap()
        .unwrap();
        c.resolve_secret(&Env, "issuers[0]").unwrap();
        let (headers, body) = c.request("a+b/c=");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "token=a%2Bb%2Fc%3D&token_type_hint=access_token"
        );
        let auth = headers.iter().find(|(k, _)| k == "authorization").unwrap();
        assert_eq!(
            auth.1,
            format!("Basic {}", STANDARD.encode("mcp%20guard:s3cr%3At%26"))
        );
        assert_eq!(c.cluster, "idp");
        assert_eq!(c.path, "/token/introspection");
        assert!(!format!("{c:?}").contains("s3cr"));

        let err = |mode: Option<&str>, v: Option<Value>| {
            Introspection::from_config(mode, v, "issuers[0]", None)
                .unwrap_err()
                .to_string()
        };
        assert!(err(Some("sometimes"), None).starts_with("issuers[0].introspect:"));
        assert!(err(Some("opaque"), None).starts_with("issuers[0].introspection:"));
        assert!(err(
            Some("always"),
            Some(
                json!({"endpoint": "https://i/x", "client_id": "c", "client_secret_from_env": "S"})
            )
        )
        .starts_with("issuers[0].introspection.cluster"));
        assert!(err(
            Some("always"),
            Some(json!({"endpoint": "https://i/x", "cluster": "c", "client_id": "c", "client_secret_from_env": "S", "auth": "private_key_jwt"}))
        )
        .starts_with("issuers[0].introspection.auth"));
    }

    #[test]
    fn opaque_tokens_and_answers() {
        assert!(is_opaque("2YotnFZFEjr1zCsicMWpAA"));
        assert!(!is_opaque("a.b.c"));
        assert_eq!(parse_answer(br#"{"active":false}"#).0, Answer::Inactive);
        assert_eq!(parse_answer(br#"{"active":"true"}"#).0, Answer::Failed);
        assert_eq!(parse_answer(b"[]").0, Answer::Failed);
        match parse_answer(br#"{"active":true,"sub":"a"}"#).0 {
            Answer::Active { claims } => assert_eq!(claims.get("sub"), Some(&json!("a"))),
            other => panic!("{other:?}"),
        }
    }
}
