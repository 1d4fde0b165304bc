//! Bearer token validation: JWKS keys, signature, `iss`, `aud`, `exp`, `nbf`.
//!
//! A token is matched to its issuer by `iss` before any key is tried; the algorithm must be in
//! that issuer's allow-list and fit the key's type, so an RSA public key can never be used as an
//! HMAC secret. Header URLs (`jku`, `x5u`) and embedded keys (`jwk`, `x5c`) are never followed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher as _;
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Rsa, RsaPublicKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature, UntrustedToken};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::crypto::{SignatureHost, Signatures, VerifyRequest};
use crate::env::Environment;
use crate::error::{typed, ConfigError};
use crate::es384::{self, Es384};
use crate::host::Host;
use crate::introspection::{self, Answer, Introspection, Introspector, Lookup, Mode};
use crate::revocation::{Feed, Revoked};
use crate::token_cache;
use crate::url::split_url;

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The signature algorithms the filter verifies, by their JOSE names (`RS256`…).
// In the schema by those names, as `Alg::parse` reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "UPPERCASE")]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    #[schemars(rename = "EdDSA")]
    EdDsa,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The digest the host's `verify_signature` is asked for, for the algorithms it may check
    /// (see [`crate::crypto`]): PKCS#1 v1.5 RSA and ECDSA. `None`: verified in Wasm only.
    fn host_hash(self) -> Option<&'static str> {
        match self {
            Alg::Rs256 | Alg::Es256 => Some("sha256"),
            Alg::Rs384 | Alg::Es384 => Some("sha384"),
            Alg::Rs512 => Some("sha512"),
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 | Alg::EdDsa => None,
        }
    }

    fn rsa(self) -> Option<Rsa> {
        Some(match self {
            Alg::Rs256 => Rsa::rs256(),
            Alg::Rs384 => Rsa::rs384(),
            Alg::Rs512 => Rsa::rs512(),
            Alg::Ps256 => Rsa::ps256(),
            Alg::Ps384 => Rsa::ps384(),
            Alg::Ps512 => Rsa::ps512(),
            Alg::Es256 | Alg::Es384 | Alg::EdDsa => return None,
        })
    }
}

const DEFAULT_ALGS: &[Alg] = &[Alg::Rs256, Alg::Es256];
const SUPPORTED: &str = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// A public key from a JWKS.
#[derive(Debug, Clone)]
enum PublicKey {
    Rsa(Box<RsaPublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_compact::PublicKey),
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    /// The JWK's own `alg`, when it pins one.
    alg: Option<String>,
    key: PublicKey,
    /// The key as DER `SubjectPublicKeyInfo`, for the host's signature check (RSA and EC keys;
    /// computed once, when the key set is read).
    der: Option<Rc<[u8]>>,
    /// SHA-256 of the key (of its DER form; of the raw key for Ed25519): names it in the shared
    /// token cache ([`crate::token_cache`]).
    fingerprint: [u8; 32],
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`.
    fn fits(&self, alg: Alg) -> bool {
        if let Some(pinned) = &self.alg {
            if pinned != alg.name() {
                return false;
            }
        }
        matches!(
            (&self.key, alg),
            (
                PublicKey::Rsa(_),
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ) | (PublicKey::P256(_), Alg::Es256)
                | (PublicKey::P384(_), Alg::Es384)
                | (PublicKey::Ed25519(_), Alg::EdDsa)
        )
    }
}

/// A set of verification keys (the `keys` of a JWKS document).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// Parses a JWKS document. Keys the filter cannot use for verification (private parts
    /// absent is fine; symmetric keys, `use: enc`, unknown curves) are skipped, and a set with
    /// no usable key at all is an error.
    pub fn from_json(value: &Value) -> Result<KeySet, String> {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("a JWKS must be an object with a \"keys\" array")?;
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match parse_jwk(key) {
                Ok(Some(jwk)) => out.push(jwk),
                Ok(None) => {}
                Err(e) => skipped.push(format!("keys[{i}]: {e}")),
            }
        }
        if out.is_empty() {
            let why = if skipped.is_empty() {
                String::from("no signature verification keys")
            } else {
                skipped.join("; ")
            };
            return Err(format!("the JWKS has no usable key ({why})"));
        }
        Ok(KeySet { keys: out })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses one JWK. `Ok(None)` means "not a signature key, ignore it".
fn parse_jwk(value: &Value) -> Result<Option<Jwk>, String> {
    let obj = value.as_object().ok_or("a JWK must be an object")?;
    let text = |name: &str| obj.get(name).and_then(Value::as_str).map(str::to_string);
    // Members that restrict a key must be read as given: one of another type (`"use":
    // ["enc"]`, `"alg": ["PS256"]`) read as absent would make the key usable for anything.
    for name in ["use", "alg", "kid"] {
        if obj.get(name).is_some_and(|v| !v.is_string()) {
            return Err(format!("\"{name}\" is not a string"));
        }
    }
    if text("use").as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    // RFC 7517 §4.3: a key whose operations do not include "verify" (an encryption key,
    // `"key_ops": ["encrypt", "wrapKey"]`) is not a signature verification key.
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops
            .as_array()
            .filter(|ops| ops.iter().all(Value::is_string))
            .ok_or("\"key_ops\" is not a list of strings")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    let kty = text("kty").ok_or("missing \"kty\"")?;
    if kty == "oct" {
        // Symmetric keys are never accepted: they would allow HS/RS confusion.
        return Ok(None);
    }
    // jwt-compact's JWK type: parse only the public parts we need.
    let jwk: JsonWebKey<'_> =
        serde_json::from_value(value.clone()).map_err(|e| format!("invalid {kty} key: {e}"))?;
    let key = match (&jwk, kty.as_str()) {
        (JsonWebKey::Rsa { modulus, .. }, "RSA") => {
            let bits = bit_length(modulus);
            let key = RsaPublicKey::try_from(&jwk).map_err(|e| format!("invalid RSA key: {e}"))?;
            if bits < 2048 {
                return Err(format!(
                    "RSA key of {bits} bits is too short (2048 at least)"
                ));
            }
            PublicKey::Rsa(Box::new(key))
        }
        (JsonWebKey::EllipticCurve { curve, .. }, "EC") if curve == "P-256" => PublicKey::P256(
            p256::ecdsa::VerifyingKey::try_from(&jwk)
                .map_err(|e| format!("invalid P-256 key: {e}"))?,
        ),
        (JsonWebKey::EllipticCurve { curve, x, y, .. }, "EC") if curve == "P-384" => {
            PublicKey::P384(es384::verifying_key(x, y)?)
        }
        (JsonWebKey::KeyPair { curve, .. }, "OKP") if curve == "Ed25519" => PublicKey::Ed25519(
            ed25519_compact::PublicKey::try_from(&jwk)
                .map_err(|e| format!("invalid Ed25519 key: {e}"))?,
        ),
        _ => return Ok(None),
    };
    let der: Option<Rc<[u8]>> = public_key_der(&key).map(Rc::from);
    let fingerprint = match (&der, &key) {
        (Some(der), _) => Sha256::digest(der).into(),
        (None, PublicKey::Ed25519(k)) => Sha256::digest(k.as_ref()).into(),
        (None, _) => [0; 32],
    };
    Ok(Some(Jwk {
        kid: text("kid"),
        alg: text("alg"),
        key,
        der,
        fingerprint,
    }))
}

/// DER `SubjectPublicKeyInfo` of an RSA or EC key (the encoders of the `rsa`, `p256` and
/// `p384` crates); `None` for Ed25519, which the host does not check.
fn public_key_der(key: &PublicKey) -> Option<Vec<u8>> {
    use p256::pkcs8::EncodePublicKey as _;
    let doc = match key {
        PublicKey::Rsa(key) => key.to_public_key_der().ok()?,
        PublicKey::P256(key) => p256::PublicKey::from(key).to_public_key_der().ok()?,
        PublicKey::P384(key) => p384::PublicKey::from(key).to_public_key_der().ok()?,
        PublicKey::Ed25519(_) => return None,
    };
    Some(doc.as_bytes().to_vec())
}

/// A public key that came with the message itself (a DPoP proof's `jwk` header), parsed.
#[derive(Debug)]
pub(crate) struct MessageKey(Jwk);

impl MessageKey {
    pub(crate) fn parse(jwk: &Value) -> Result<MessageKey, String> {
        parse_jwk(jwk)?
            .map(MessageKey)
            .ok_or_else(|| "not a signature verification key".to_string())
    }

    /// Whether `signature` is this key's `alg` signature of `signed` (false when the key does
    /// not fit `alg`).
    pub(crate) fn verifies(
        &self,
        alg: Alg,
        signed: &[u8],
        signature: &[u8],
        host: Option<&dyn SignatureHost>,
    ) -> bool {
        self.0.fits(alg) && verify_signature(host, alg, &self.0, signed, signature)
    }
}

/// Bit length of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.iter().position(|b| *b != 0) {
        Some(first) => {
            let lead = bytes.get(first).map_or(0, |b| b.leading_zeros() as usize);
            (bytes.len() - first) * 8 - lead
        }
        None => 0,
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS given in the configuration.
    Inline,
    /// A JWKS fetched through an Envoy cluster, refreshed periodically.
    Remote(RemoteSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    /// The Envoy cluster the fetch goes through (it owns TLS and the upstream address).
    pub cluster: String,
    /// The JWKS URL; `None` when it is discovered from the OpenID configuration.
    pub jwks_uri: Option<String>,
    /// `<issuer>/.well-known/openid-configuration`, when `discovery` is on.
    pub discovery_uri: Option<String>,
    pub refresh_ms: u64,
    /// Fetched keys older than this (every fetch since failed) are not used.
    pub max_stale_ms: u64,
    /// At most one fetch caused by an unknown `kid` per this interval.
    pub min_refetch_ms: u64,
    pub timeout_ms: u64,
}

/// How old fetched keys may grow while fetches fail (`max_stale_seconds`), by default: a day.
pub const DEFAULT_KEYS_MAX_STALE: u64 = 24 * 60 * 60;

/// One trusted token issuer.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    /// Expected `typ` header (e.g. `at+jwt`), compared case-insensitively.
    pub typ: Option<String>,
    /// Claims every token of this issuer must carry.
    pub required_claims: Vec<String>,
    pub require_exp: bool,
    pub source: KeySource,
    /// The revocation feed, when one is configured ([`crate::revocation`]).
    pub revocation: Option<Feed>,
    /// Token introspection (RFC 7662), when `introspect` is not `never`.
    pub introspection: Option<Introspection>,
    keys: RefCell<Option<Rc<KeySet>>>,
    refetch_wanted: Cell<bool>,
    /// Bumped whenever the keys change (invalidates cached verifications).
    generation: Cell<u64>,
    /// When a fetch for this issuer last started, in any VM (kept current by the key manager).
    last_attempt_ms: Cell<u64>,
}

/// One trusted token issuer: its keys inline (`jwks`) or fetched (`jwks_uri` or `discovery`
/// with `cluster`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuer {
    /// The exact `iss` of its tokens.
    issuer: String,
    /// Accepted `aud` values (a token names one of them).
    audiences: Vec<String>,
    /// Allowed signing algorithms (default RS256, ES256).
    #[serde(default)]
    #[schemars(with = "Option<Vec<Alg>>")]
    algorithms: Option<Vec<String>>,
    /// An inline JSON Web Key Set.
    #[serde(default)]
    #[schemars(schema_with = "jwks_schema")]
    jwks: Option<Value>,
    /// Where the key set is fetched, through `cluster`.
    #[serde(default)]
    jwks_uri: Option<String>,
    /// Find `jwks_uri` by OpenID Connect / RFC 8414 discovery from `issuer`, through `cluster`.
    #[serde(default)]
    discovery: bool,
    /// The Envoy cluster that reaches the issuer.
    #[serde(default)]
    cluster: Option<String>,
    /// How often fetched keys are refreshed, in seconds (default 300).
    #[serde(default)]
    refresh_seconds: Option<u64>,
    /// At most one re-fetch for an unknown `kid` per this many seconds (default 30).
    #[serde(default)]
    min_refetch_seconds: Option<u64>,
    /// How old fetched keys may grow while every fetch fails before they are no longer used and
    /// requests get 503 until a fetch succeeds, in seconds (default 86400, one day; at least
    /// twice `refresh_seconds`): a key the IdP withdrew stops verifying on every replica.
    #[serde(default)]
    max_stale_seconds: Option<u64>,
    /// Key fetch timeout, in milliseconds (default 5000).
    #[serde(default)]
    fetch_timeout_ms: Option<u64>,
    /// The `typ` every token must have, e.g. `at+jwt`.
    #[serde(default)]
    typ: Option<String>,
    /// Claims every token must carry.
    #[serde(default)]
    required_claims: Vec<String>,
    /// Whether `exp` is required (default true).
    #[serde(default)]
    require_exp: Option<bool>,
    /// A revocation feed: fetched (`uri`, `cluster`, …) or inline.
    #[serde(default)]
    #[schemars(with = "Option<crate::revocation::RawFeedConfig>")]
    revocation: Option<Value>,
    /// Which tokens are introspected (RFC 7662; default `never`).
    #[serde(default)]
    #[schemars(with = "Option<crate::introspection::Mode>")]
    introspect: Option<String>,
    /// The introspection endpoint.
    #[serde(default)]
    #[schemars(with = "Option<crate::introspection::RawIntrospection>")]
    introspection: Option<Value>,
}

fn jwks_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "An inline JSON Web Key Set (RFC 7517).",
        "type": "object",
        "required": ["keys"],
        "properties": { "keys": { "type": "array", "items": { "type": "object" } } }
    })
}

impl Issuer {
    pub fn from_config(value: Value, field: &str) -> Result<Issuer, ConfigError> {
        let mut raw: RawIssuer = typed(value, field)?;
        let at = |name: &str| format!("{field}.{name}");
        if raw.issuer.is_empty() {
            return Err(ConfigError::new(at("issuer"), "must not be empty"));
        }
        check_audiences(
            &raw.audiences,
            &at("audiences"),
            " (the resource this filter protects)",
        )?;
        let algorithms = match raw.algorithms {
            None => DEFAULT_ALGS.to_vec(),
            Some(names) if names.is_empty() => {
                return Err(ConfigError::new(at("algorithms"), "must not be empty"))
            }
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Alg::parse(n).ok_or_else(|| {
                        ConfigError::new(
                            format!("{field}.algorithms[{i}]"),
                            format!("unsupported algorithm {n:?} (supported: {SUPPORTED})"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let revocation = raw
            .revocation
            .take()
            .map(|v| Feed::from_config(v, &at("revocation"), &raw.issuer, raw.cluster.as_deref()))
            .transpose()?;
        let introspection = Introspection::from_config(
            raw.introspect.as_deref(),
            raw.introspection.take(),
            field,
            raw.cluster.as_deref(),
        )?;
        let remote_wanted = raw.jwks_uri.is_some() || raw.discovery;
        let (source, keys) = match (raw.jwks, remote_wanted) {
            (Some(jwks), false) => {
                if raw.max_stale_seconds.is_some() {
                    return Err(ConfigError::new(
                        at("max_stale_seconds"),
                        "applies to fetched keys (jwks_uri or discovery); inline keys never grow stale: remove it",
                    ));
                }
                let keys = KeySet::from_json(&jwks).map_err(|m| ConfigError::new(at("jwks"), m))?;
                (KeySource::Inline, Some(Rc::new(keys)))
            }
            (None, true) => {
                let cluster = raw.cluster.filter(|c| !c.is_empty()).ok_or_else(|| {
                    ConfigError::new(
                        at("cluster"),
                        "is required with jwks_uri or discovery: the Envoy cluster that reaches the IdP",
                    )
                })?;
                if let Some(uri) = &raw.jwks_uri {
                    split_url(uri).map_err(|m| ConfigError::new(at("jwks_uri"), m))?;
                }
                let discovery_uri = (raw.discovery && raw.jwks_uri.is_none()).then(|| {
                    format!(
                        "{}/.well-known/openid-configuration",
                        raw.issuer.trim_end_matches('/')
                    )
                });
                if let Some(uri) = &discovery_uri {
                    split_url(uri).map_err(|m| ConfigError::new(at("issuer"), m))?;
                }
                let refresh = raw.refresh_seconds.unwrap_or(300);
                if refresh == 0 {
                    return Err(ConfigError::new(at("refresh_seconds"), "must be positive"));
                }
                let max_stale = raw.max_stale_seconds.unwrap_or(DEFAULT_KEYS_MAX_STALE);
                if max_stale < refresh.saturating_mul(2) {
                    return Err(ConfigError::new(
                        at("max_stale_seconds"),
                        format!("must be at least twice refresh_seconds ({refresh}): a copy must survive a failed refresh"),
                    ));
                }
                let remote = RemoteSource {
                    cluster,
                    jwks_uri: raw.jwks_uri,
                    discovery_uri,
                    refresh_ms: refresh.saturating_mul(1000),
                    max_stale_ms: max_stale.saturating_mul(1000),
                    min_refetch_ms: raw.min_refetch_seconds.unwrap_or(30).saturating_mul(1000),
                    timeout_ms: raw.fetch_timeout_ms.unwrap_or(5000).max(1),
                };
                (KeySource::Remote(remote), None)
            }
            (Some(_), true) => {
                return Err(ConfigError::new(
                    at("jwks"),
                    "give either inline \"jwks\" or \"jwks_uri\"/\"discovery\", not both",
                ))
            }
            (None, false) => {
                return Err(ConfigError::new(
                    field,
                    "keys are required: set \"jwks\" (inline), \"jwks_uri\" or \"discovery\": true",
                ))
            }
        };
        Ok(Issuer {
            revocation,
            introspection,
            issuer: raw.issuer,
            audiences: raw.audiences,
            algorithms,
            typ: raw.typ,
            required_claims: raw.required_claims,
            require_exp: raw.require_exp.unwrap_or(true),
            source,
            keys: RefCell::new(keys),
            refetch_wanted: Cell::new(false),
            generation: Cell::new(0),
            last_attempt_ms: Cell::new(0),
        })
    }

    /// Reads secrets named in the configuration from the environment (the introspection
    /// client secret).
    pub fn resolve_secrets(
        &mut self,
        env: &dyn Environment,
        field: &str,
    ) -> Result<(), ConfigError> {
        match self.introspection.as_mut() {
            Some(i) => i.resolve_secret(env, field),
            None => Ok(()),
        }
    }

    /// The keys currently in use, if any have been loaded.
    pub fn keys(&self) -> Option<Rc<KeySet>> {
        self.keys.borrow().clone()
    }

    /// Stops using the keys (they grew older than `max_stale_seconds`): requests wait for keys,
    /// then get 503, as before the first fetch.
    pub fn uninstall_keys(&self) {
        *self.keys.borrow_mut() = None;
        self.generation.set(self.generation.get().wrapping_add(1));
    }

    /// Replaces the keys (the key manager does this when a new JWKS was fetched).
    pub fn install_keys(&self, keys: KeySet) {
        *self.keys.borrow_mut() = Some(Rc::new(keys));
        // Tokens verified with the old keys must verify again.
        self.generation.set(self.generation.get().wrapping_add(1));
    }

    pub fn remote(&self) -> Option<&RemoteSource> {
        match &self.source {
            KeySource::Remote(r) => Some(r),
            KeySource::Inline => None,
        }
    }

    /// Asks for a fetch because a token named an unknown key. Returns whether one may happen
    /// now (at most one per `min_refetch_ms`, counted across VMs), i.e. whether waiting for it
    /// makes sense.
    pub fn request_refetch(&self, now_ms: u64) -> bool {
        let Some(remote) = self.remote() else {
            return false;
        };
        if now_ms.saturating_sub(self.last_attempt_ms.get()) < remote.min_refetch_ms {
            return false;
        }
        self.refetch_wanted.set(true);
        true
    }

    pub fn take_refetch_request(&self) -> bool {
        self.refetch_wanted.replace(false)
    }

    pub fn note_attempt(&self, at_ms: u64) {
        self.last_attempt_ms.set(at_ms);
    }
}

/// Why a token was refused. `reason()` is the stable word used in audit records and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Malformed(String),
    TooLarge,
    UnsupportedAlgorithm(String),
    UnsupportedCritical,
    UnknownIssuer,
    AlgorithmNotAllowed,
    /// The issuer's keys have not been fetched yet.
    NoKeys {
        issuer: usize,
    },
    /// No key of the issuer has the token's `kid` (or fits its algorithm).
    UnknownKey {
        issuer: usize,
    },
    BadSignature,
    WrongType,
    MissingClaim(String),
    Expired,
    NotYetValid,
    MissingExpiry,
    BadTimeClaim(&'static str),
    WrongAudience,
    /// Listed in the issuer's revocation feed.
    Revoked(Revoked),
    /// The issuer's revocation feed has not been fetched yet.
    NoRevocations {
        issuer: usize,
    },
    /// The introspection endpoint says the token is not active.
    Inactive,
    /// The introspection answer has not arrived (yet).
    IntrospectionPending {
        issuer: usize,
    },
    /// The introspection endpoint could not be asked or answered with an error.
    IntrospectionFailed {
        issuer: usize,
    },
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "malformed",
            AuthError::TooLarge => "too_large",
            AuthError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            AuthError::UnsupportedCritical => "unsupported_crit",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::NoKeys { .. } => "keys_unavailable",
            AuthError::UnknownKey { .. } => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongType => "wrong_typ",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingExpiry => "missing_exp",
            AuthError::BadTimeClaim(_) => "bad_time_claim",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::Revoked(_) => "token_revoked",
            AuthError::NoRevocations { .. } => "revocations_unavailable",
            AuthError::Inactive => "token_inactive",
            AuthError::IntrospectionPending { .. } => "introspection_timeout",
            AuthError::IntrospectionFailed { .. } => "introspection_unavailable",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthError::TooLarge => write!(f, "token larger than {MAX_TOKEN_BYTES} bytes"),
            AuthError::UnsupportedAlgorithm(a) => write!(f, "unsupported algorithm {a:?}"),
            AuthError::UnsupportedCritical => write!(f, "token has critical header extensions"),
            AuthError::UnknownIssuer => write!(f, "token issuer is not trusted"),
            AuthError::AlgorithmNotAllowed => write!(f, "algorithm not allowed for this issuer"),
            AuthError::NoKeys { .. } => {
                write!(f, "the issuer's signing keys are not available yet")
            }
            AuthError::UnknownKey { .. } => write!(f, "no key of the issuer matches the token"),
            AuthError::BadSignature => write!(f, "signature does not verify"),
            AuthError::WrongType => write!(f, "token type (typ) is not the one required"),
            AuthError::MissingClaim(c) => write!(f, "token lacks required claim {c}"),
            AuthError::Expired => write!(f, "token expired"),
            AuthError::NotYetValid => write!(f, "token not yet valid"),
            AuthError::MissingExpiry => write!(f, "token has no exp claim"),
            AuthError::BadTimeClaim(c) => write!(f, "claim {c} is not a number"),
            AuthError::WrongAudience => write!(f, "token audience does not include this resource"),
            AuthError::Revoked(why) => write!(f, "{}", why.describe()),
            AuthError::NoRevocations { .. } => {
                write!(f, "the issuer's revocation list is not available yet")
            }
            AuthError::Inactive => write!(f, "token is not active"),
            AuthError::IntrospectionPending { .. } | AuthError::IntrospectionFailed { .. } => {
                write!(f, "the token introspection endpoint is not available")
            }
        }
    }
}

/// The caller, once its token has verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Shared with the token cache: a cache hit copies a pointer, not the claims.
    pub claims: Rc<Map<String, Value>>,
}

impl Identity {
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
    pub fn issuer(&self) -> Option<&str> {
        self.claim_str("iss")
    }
    pub fn subject(&self) -> Option<&str> {
        self.claim_str("sub")
    }
    /// Whether `aud` (a string or an array) names one of `accepted`.
    pub fn has_audience(&self, accepted: &[String]) -> bool {
        audience_matches(self.claims.get("aud"), accepted)
    }
}

/// Header fields the filter looks at beyond `alg` and `kid`.
#[derive(Debug, Clone, Default, Deserialize)]
struct ExtraHeader {
    /// `Some` whenever the header names `crit`, whatever its value (`"crit": null` too).
    #[serde(default, deserialize_with = "present")]
    crit: Option<Value>,
}

/// Reads a member that counts by being there: `null` is `Some(Value::Null)`, not `None`.
fn present<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(de).map(Some)
}

/// Validates tokens against the configured issuers.
#[derive(Debug)]
pub struct Authenticator {
    issuers: Vec<Issuer>,
    skew: i64,
    cache: RefCell<HashMap<[u8; 32], Cached>>,
    /// The SHA-256 of recently presented tokens ([`Authenticator::token_digest`]).
    digests: RefCell<Vec<Option<KeptDigest>>>,
    introspector: Introspector,
    /// Verifies signatures outside Wasm, when the adapter installed one.
    signatures: Signatures,
    /// When the full cache may next be swept for expired entries (seconds).
    sweep: Cell<i64>,
}

/// How many verified tokens one VM remembers (memory stays bounded as callers grow); the
/// process-wide cache behind it ([`crate::token_cache`]) holds more.
pub const TOKEN_CACHE_ENTRIES: usize = 4096;

/// A token and its SHA-256.
type KeptDigest = (Box<str>, [u8; 32]);

/// How many tokens' digests one VM keeps at hand.
const DIGEST_MEMO_ENTRIES: usize = 128;
/// Larger tokens are hashed on every use rather than kept (the memo stays under 512 KiB).
const DIGEST_MEMO_TOKEN_BYTES: usize = 4 * 1024;

/// What a full verification establishes.
struct FullyVerified {
    identity: Identity,
    issuer: usize,
    /// The verifying key's fingerprint.
    key: [u8; 32],
    alg: Alg,
    typ: Option<String>,
}

/// A token that verified: its claims, and the key generation that verified it.
#[derive(Debug)]
struct Cached {
    identity: Identity,
    issuer: usize,
    generation: u64,
}

impl Authenticator {
    pub fn new(issuers: Vec<Issuer>, skew_seconds: u64) -> Self {
        Authenticator {
            issuers,
            skew: i64::try_from(skew_seconds).unwrap_or(i64::MAX),
            cache: RefCell::new(HashMap::new()),
            digests: RefCell::new(vec![None; DIGEST_MEMO_ENTRIES]),
            introspector: Introspector::default(),
            signatures: Signatures::default(),
            sweep: Cell::new(0),
        }
    }

    /// Lets the host verify signatures it can ([`crate::crypto`]); the adapter installs it.
    pub fn set_signature_host(&mut self, signatures: Signatures) {
        self.signatures = signatures;
    }

    /// The clock skew allowed for time claims, in seconds.
    pub fn skew_seconds(&self) -> i64 {
        self.skew
    }

    /// Authenticates a bearer token: a JWT is verified (and, with `introspect: always`, also
    /// introspected); an opaque token is introspected at the issuer that introspects; then the
    /// revocation feed. [`AuthError::IntrospectionPending`]: a call is under way, wait.
    pub fn authenticate(&self, token: &str, host: &mut dyn Host) -> Result<Identity, AuthError> {
        let now = i64::try_from(host.now_millis() / 1000).unwrap_or(i64::MAX);
        if introspection::is_opaque(token) {
            let Some((index, issuer, config)) = self.introspecting() else {
                return self.verify_shared(token, now, host);
            };
            if token.len() > MAX_TOKEN_BYTES {
                return Err(AuthError::TooLarge);
            }
            if token.is_empty() {
                return Err(AuthError::Malformed("empty token".into()));
            }
            let answer = self.introspect(index, config, token, host)?;
            let Answer::Active { claims } = &*answer else {
                return Err(AuthError::Inactive);
            };
            let mut claims = claims.clone();
            self.check_introspected(issuer, &mut claims, now)?;
            let identity = Identity {
                claims: Rc::new(claims),
            };
            self.check_revoked(index, &identity)?;
            return Ok(identity);
        }
        let identity = self.verify_shared(token, now, host)?;
        if let Some((index, _, config)) = self
            .introspecting()
            .filter(|(_, i, c)| c.mode == Mode::Always && identity.issuer() == Some(&i.issuer))
        {
            let answer = self.introspect(index, config, token, host)?;
            match &*answer {
                Answer::Active { claims } => {
                    check_times(claims, now, self.skew, false)?;
                    // The IdP's word on what the token is counts for a JWT too (a JWT refresh
                    // token where the issuer requires no `typ`).
                    if !introspected_kind_is_access_token(claims) {
                        return Err(AuthError::WrongType);
                    }
                }
                _ => return Err(AuthError::Inactive),
            }
        }
        Ok(identity)
    }

    /// The issuer that introspects tokens, if any (at most one: opaque tokens name none).
    fn introspecting(&self) -> Option<(usize, &Issuer, &Introspection)> {
        self.issuers.iter().enumerate().find_map(|(i, issuer)| {
            issuer
                .introspection
                .as_ref()
                .filter(|c| c.mode != Mode::Never)
                .map(|c| (i, issuer, c))
        })
    }

    fn introspect(
        &self,
        index: usize,
        config: &Introspection,
        token: &str,
        host: &mut dyn Host,
    ) -> Result<Rc<Answer>, AuthError> {
        let issuer = self.issuers.get(index).map_or("", |i| i.issuer.as_str());
        let hash = introspection::answer_key(issuer, config, &self.token_digest(token));
        match self.introspector.lookup(index, config, token, &hash, host) {
            Lookup::Pending => Err(AuthError::IntrospectionPending { issuer: index }),
            Lookup::Ready(answer) => match &*answer {
                Answer::Failed => Err(AuthError::IntrospectionFailed { issuer: index }),
                _ => Ok(answer),
            },
        }
    }

    /// What every token's claims must satisfy, whether they came signed or introspected:
    /// `exp`/`nbf`, the audience, the issuer's required claims.
    fn check_claims(
        &self,
        issuer: &Issuer,
        claims: &Map<String, Value>,
        now: i64,
    ) -> Result<(), AuthError> {
        check_times(claims, now, self.skew, issuer.require_exp)?;
        // Who the caller is (sessions, revocation, audit) is read from these as text: one of
        // another type would be read as absent, e.g. a numeric `sub` as the token's client.
        if let Some(name) = ["sub", "client_id", "azp", "jti"]
            .into_iter()
            .find(|c| claims.get(*c).is_some_and(|v| !v.is_string()))
        {
            return Err(AuthError::Malformed(format!(
                "claim {name} is not a string"
            )));
        }
        if !audience_matches(claims.get("aud"), &issuer.audiences) {
            return Err(AuthError::WrongAudience);
        }
        if let Some(missing) = issuer
            .required_claims
            .iter()
            .find(|c| !claims.contains_key(*c))
        {
            return Err(AuthError::MissingClaim(missing.clone()));
        }
        Ok(())
    }

    /// An active introspection answer is checked like a JWT's claims: `iss` (added when the
    /// answer has none), `token_type`, `exp`/`nbf`, `aud`, required claims.
    fn check_introspected(
        &self,
        issuer: &Issuer,
        claims: &mut Map<String, Value>,
        now: i64,
    ) -> Result<(), AuthError> {
        match claims.get("iss") {
            None => {
                claims.insert("iss".into(), Value::String(issuer.issuer.clone()));
            }
            Some(Value::String(iss)) if *iss == issuer.issuer => {}
            Some(_) => return Err(AuthError::UnknownIssuer),
        }
        if !introspected_kind_is_access_token(claims) {
            return Err(AuthError::WrongType);
        }
        self.check_claims(issuer, claims, now)
    }

    /// Whether any issuer introspects (the adapter then ticks and routes call answers here).
    pub fn has_introspection(&self) -> bool {
        self.introspecting().is_some()
    }

    /// Whether `call` is one of this VM's introspection calls.
    pub fn owns_introspection_call(&self, call: u32) -> bool {
        self.introspector.owns(call)
    }

    /// The answer to an introspection call. Returns the issuer whose waiting requests may go on.
    pub fn on_introspection_response(
        &self,
        call: u32,
        status: Option<u32>,
        body: Option<&[u8]>,
        host: &mut dyn Host,
    ) -> Option<usize> {
        let configs: Vec<Option<&Introspection>> = self
            .issuers
            .iter()
            .map(|i| i.introspection.as_ref())
            .collect();
        self.introspector
            .on_response(&configs, call, status, body, host)
    }

    /// Adopts answers other VMs published; returns the issuers whose waiting requests may go on.
    pub fn introspection_tick(&self, host: &mut dyn Host) -> Vec<usize> {
        let configs: Vec<Option<&Introspection>> = self
            .issuers
            .iter()
            .map(|i| i.introspection.as_ref())
            .collect();
        self.introspector.tick(&configs, host)
    }

    /// Verifies `token` at time `now` (seconds since the epoch). Tokens that verified are
    /// remembered by their SHA-256: a repeat skips parsing and the signature, but its times are
    /// checked again, and it is forgotten as soon as its issuer's keys change.
    pub fn verify(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        self.verify_with(token, now, None)
    }

    /// As [`Authenticator::verify`], with the cache shared by the worker VMs
    /// ([`crate::token_cache`]) behind this VM's own.
    pub fn verify_shared(
        &self,
        token: &str,
        now: i64,
        host: &mut dyn Host,
    ) -> Result<Identity, AuthError> {
        self.verify_with(token, now, Some(host))
    }

    /// The SHA-256 of `token`: the key of both token caches, and a DPoP proof's `ath`. In Wasm,
    /// hashing a 1 KiB token is most of what a cached check costs, so the digests of recent
    /// tokens are kept with the token itself, compared whole: a caller's repeat requests hash
    /// it once per VM. Direct-mapped by the token's last bytes (a JWT ends with its
    /// signature); a token that lands on a taken slot replaces its holder.
    pub fn token_digest(&self, token: &str) -> [u8; 32] {
        let tail = token.len().saturating_sub(16);
        let slot = token.as_bytes().get(tail..).map_or(0, |end| {
            usize::try_from(foldhash::fast::FixedState::default().hash_one(end)).unwrap_or(0)
                % DIGEST_MEMO_ENTRIES
        });
        let mut digests = self.digests.borrow_mut();
        let Some(entry) = digests.get_mut(slot) else {
            return Sha256::digest(token.as_bytes()).into();
        };
        if let Some((kept, digest)) = entry {
            if crate::bytes::same(kept.as_bytes(), token.as_bytes()) {
                return *digest;
            }
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if token.len() <= DIGEST_MEMO_TOKEN_BYTES {
            *entry = Some((token.into(), digest));
        }
        digest
    }

    fn verify_with(
        &self,
        token: &str,
        now: i64,
        mut shared: Option<&mut dyn Host>,
    ) -> Result<Identity, AuthError> {
        let digest = self.token_digest(token);
        if let Some(hit) = self.cache.borrow().get(&digest) {
            let current = self.issuers.get(hit.issuer).map(|i| i.generation.get());
            if current == Some(hit.generation) {
                let require_exp = self.issuers.get(hit.issuer).is_none_or(|i| i.require_exp);
                check_times(&hit.identity.claims, now, self.skew, require_exp)?;
                self.check_revoked(hit.issuer, &hit.identity)?;
                return Ok(hit.identity.clone());
            }
        }
        if let Some(host) = shared.as_deref_mut() {
            if let Some(entry) = token_cache::lookup(host, &digest) {
                if let Some(issuer) = self.vouches(&entry) {
                    let identity = Identity {
                        claims: Rc::new(entry.claims),
                    };
                    if let Some(i) = self.issuers.get(issuer) {
                        self.check_claims(i, &identity.claims, now)?;
                    }
                    self.check_revoked(issuer, &identity)?;
                    self.remember(digest, &identity, issuer, now);
                    return Ok(identity);
                }
            }
        }
        let verified = self.verify_full(token, now)?;
        self.check_revoked(verified.issuer, &verified.identity)?;
        self.remember(digest, &verified.identity, verified.issuer, now);
        if let Some(host) = shared {
            let entry = token_cache::VerifiedRef {
                key: &verified.key,
                alg: verified.alg.name(),
                typ: verified.typ.as_deref(),
                claims: &verified.identity.claims,
            };
            token_cache::store(host, &digest, &entry);
        }
        Ok(verified.identity)
    }

    /// The issuer a shared cache entry's signature still stands for: the one its `iss` names,
    /// if that issuer allows its algorithm and `typ` and still has the key that verified it.
    fn vouches(&self, entry: &token_cache::Verified) -> Option<usize> {
        let iss = entry.claims.get("iss").and_then(Value::as_str)?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == iss)?;
        let alg = Alg::parse(&entry.alg).filter(|a| issuer.algorithms.contains(a))?;
        if let Some(expected) = &issuer.typ {
            if !entry
                .typ
                .as_deref()
                .is_some_and(|t| typ_matches(t, expected))
            {
                return None;
            }
        } else if entry.typ.as_deref().is_some_and(another_kind) {
            return None;
        }
        let keys = issuer.keys()?;
        keys.keys
            .iter()
            .any(|k| k.fits(alg) && k.fingerprint == entry.key)
            .then_some(index)
    }

    /// Remembers a verified token in this VM (bounded: when full, expired entries go, else
    /// one entry picked by the map's hash order, so a cycle of more callers than entries
    /// still finds most of them).
    fn remember(&self, digest: [u8; 32], identity: &Identity, issuer: usize, now: i64) {
        let generation = self.issuers.get(issuer).map_or(0, |i| i.generation.get());
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= TOKEN_CACHE_ENTRIES {
            if self.sweep.get() <= now {
                cache.retain(|_, c| check_times(&c.identity.claims, now, self.skew, false).is_ok());
                // At most one sweep a minute: each walks every entry.
                self.sweep.set(now.saturating_add(60));
            }
            if cache.len() >= TOKEN_CACHE_ENTRIES {
                if let Some(victim) = cache.keys().next().copied() {
                    cache.remove(&victim);
                }
            }
        }
        cache.insert(
            digest,
            Cached {
                identity: identity.clone(),
                issuer,
                generation,
            },
        );
    }

    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    /// Refuses a verified token its issuer's revocation feed lists (checked on every use,
    /// cached or not, so a feed update takes effect on the next request).
    pub fn check_revoked(&self, issuer: usize, identity: &Identity) -> Result<(), AuthError> {
        let Some(feed) = self.issuers.get(issuer).and_then(|i| i.revocation.as_ref()) else {
            return Ok(());
        };
        let list = feed.current().ok_or(AuthError::NoRevocations { issuer })?;
        list.check(&identity.claims).map_err(AuthError::Revoked)
    }

    /// Whether a caller verified earlier still is one, `now` (Unix seconds): its token's
    /// `exp`/`nbf` (with the clock skew) and its issuer's revocation feed, as a new request
    /// with the same token would find them (no signature, no callout: the token was verified
    /// when the request came). Checked while an answer streams: a subscription or a GET stream
    /// can stay open far longer than the token that opened it lives.
    pub fn still_valid(&self, identity: &Identity, now: i64) -> Result<(), AuthError> {
        check_times(&identity.claims, now, self.skew, false)?;
        let iss = identity.issuer().unwrap_or_default();
        for (index, issuer) in self.issuers.iter().enumerate() {
            if issuer.issuer == iss {
                self.check_revoked(index, identity)?;
            }
        }
        Ok(())
    }

    /// The generation of the keys of the issuer that verified `token`'s caller: `None` for a
    /// caller no key verified (an opaque token, introspected) or of no configured issuer.
    pub fn keys_generation(&self, token: &str, identity: &Identity) -> Option<u64> {
        if introspection::is_opaque(token) {
            return None;
        }
        let iss = identity.issuer()?;
        let issuer = self.issuers.iter().find(|i| i.issuer == iss)?;
        Some(issuer.generation.get())
    }

    /// Whether a caller whose JWT verified with its issuer's keys at generation `seen` still
    /// would: unchanged keys say so at once; after a change (a fetch that dropped the key, a
    /// key set uninstalled as stale), or with no generation seen yet, the token is verified as
    /// a new request would verify it (the token caches, which hold only what the current keys
    /// verified, else one signature check). Returns the generation now relied on (`None` for
    /// a caller no key verified).
    pub fn still_verifies(
        &self,
        token: &str,
        identity: &Identity,
        seen: Option<u64>,
        host: &mut dyn Host,
    ) -> Result<Option<u64>, AuthError> {
        let Some(current) = self.keys_generation(token, identity) else {
            return Ok(None);
        };
        if seen != Some(current) {
            let now = i64::try_from(host.now_millis() / 1000).unwrap_or(i64::MAX);
            self.verify_shared(token, now, host)?;
        }
        Ok(Some(current))
    }

    /// Whether the IdP still vouches for a caller whose token it is asked about (an opaque
    /// token; a JWT with `introspect: always`), while a standing stream it opened goes on: the
    /// answer that admitted it is kept no longer than a new request would keep it (the cache
    /// TTL, `exp`), then the IdP is asked again, through the same cache and shared calls.
    /// Returns until when (ms) the answer now relied on holds: `u64::MAX` for a token no IdP is
    /// asked about. [`AuthError::IntrospectionPending`]: a call is under way, wait.
    pub fn confirm_again(
        &self,
        token: &str,
        identity: &Identity,
        host: &mut dyn Host,
    ) -> Result<u64, AuthError> {
        let Some((index, issuer, config)) = self.introspecting() else {
            return Ok(u64::MAX);
        };
        let asked = introspection::is_opaque(token)
            || (config.mode == Mode::Always && identity.issuer() == Some(&issuer.issuer));
        if !asked {
            return Ok(u64::MAX);
        }
        let now_ms = host.now_millis();
        let answer = self.introspect(index, config, token, host)?;
        let Answer::Active { claims } = &*answer else {
            return Err(AuthError::Inactive);
        };
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        check_times(claims, now, self.skew, false)?;
        let hash = introspection::answer_key(&issuer.issuer, config, &self.token_digest(token));
        // Not kept here (a full cache is emptied): asked again at the next event.
        Ok(self.introspector.cached_until(&hash).unwrap_or(now_ms))
    }

    /// Full verification, bypassing (and not filling) the cache: what a cache miss costs.
    /// Returns the identity and the index of the issuer that vouched for it.
    pub fn verify_uncached(&self, token: &str, now: i64) -> Result<(Identity, usize), AuthError> {
        self.verify_full(token, now).map(|v| (v.identity, v.issuer))
    }

    fn verify_full(&self, token: &str, now: i64) -> Result<FullyVerified, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let untrusted = UntrustedToken::<ExtraHeader>::try_from(token)
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        let header = untrusted.header();
        // No critical extension is understood, so any `crit` is refused (RFC 7515 §4.1.11).
        if header.other_fields.crit.is_some() {
            return Err(AuthError::UnsupportedCritical);
        }
        let alg_name = untrusted.algorithm();
        let alg = Alg::parse(alg_name)
            .ok_or_else(|| AuthError::UnsupportedAlgorithm(alg_name.to_string()))?;

        let claims = decode_claims(token)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(AuthError::UnknownIssuer)?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == iss)
            .ok_or(AuthError::UnknownIssuer)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        if let Some(expected) = &issuer.typ {
            if !header
                .token_type
                .as_deref()
                .is_some_and(|t| typ_matches(t, expected))
            {
                return Err(AuthError::WrongType);
            }
        } else if header.token_type.as_deref().is_some_and(another_kind) {
            return Err(AuthError::WrongType);
        }

        let keys = issuer.keys().ok_or(AuthError::NoKeys { issuer: index })?;
        let kid = header.key_id.as_deref();
        let mut candidates = keys
            .keys
            .iter()
            .filter(|k| k.fits(alg) && (kid.is_none() || k.kid.as_deref() == kid))
            .peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::UnknownKey { issuer: index });
        }
        let signed = token
            .rfind('.')
            .and_then(|dot| token.get(..dot))
            .ok_or_else(|| AuthError::Malformed("not a compact JWS".into()))?;
        let signature = untrusted.signature_bytes();
        let host = self.signatures.host();
        let key = candidates
            .find(|k| verify_signature(host, alg, k, signed.as_bytes(), signature))
            .ok_or(AuthError::BadSignature)?;

        self.check_claims(issuer, &claims, now)?;
        Ok(FullyVerified {
            identity: Identity {
                claims: Rc::new(claims),
            },
            issuer: index,
            key: key.fingerprint,
            alg,
            typ: header.token_type.clone(),
        })
    }
}

/// `at+jwt` matches `at+jwt` and `application/at+jwt`, case-insensitively (RFC 7515 §4.1.9).
fn typ_matches(actual: &str, expected: &str) -> bool {
    let bare = |t: &str| {
        let t = t.trim();
        t.get(..12)
            .filter(|p| p.eq_ignore_ascii_case("application/"))
            .and_then(|_| t.get(12..))
            .unwrap_or(t)
            .to_ascii_lowercase()
    };
    bare(actual) == bare(expected)
}

/// Whether a `typ` names a kind of signed JWT that is not an access token (`dpop+jwt`,
/// `logout+jwt`, `secevent+jwt`, `token-introspection+jwt`, …): the IdP signs those too, and
/// one whose `aud` names the resource must not pass for an access token where no `typ` is
/// required. `JWT` and `at+jwt` are not such names.
fn another_kind(typ: &str) -> bool {
    let bare = typ.trim().to_ascii_lowercase();
    let bare = bare.strip_prefix("application/").unwrap_or(&bare);
    bare.ends_with("+jwt") && bare != "at+jwt"
}

/// Checks the signature over `header.payload` only: the claims are parsed (once) by
/// [`decode_claims`], so a signed token with odd claims is refused for what is wrong with them.
/// The host checks it when it can ([`crate::crypto`]), else the Rust crates do.
fn verify_signature(
    host: Option<&dyn SignatureHost>,
    alg: Alg,
    jwk: &Jwk,
    signed: &[u8],
    signature: &[u8],
) -> bool {
    if let (Some(host), Some(hash), Some(der)) = (host, alg.host_hash(), jwk.der.as_deref()) {
        // ECDSA: JWS carries r ‖ s (RFC 7518 §3.4), BoringSSL takes DER. A value that is not
        // a valid r ‖ s for the curve (wrong length, zero, not below the order) does not verify,
        // exactly as in the Wasm path below.
        // Only a key of the algorithm's own type goes to the host (as [`Jwk::fits`] demands).
        let der_signature = match (&jwk.key, alg) {
            (PublicKey::Rsa(_), Alg::Rs256 | Alg::Rs384 | Alg::Rs512) => signature.to_vec(),
            (PublicKey::P256(_), Alg::Es256) => match p256::ecdsa::Signature::from_slice(signature)
            {
                Ok(sig) => sig.to_der().as_bytes().to_vec(),
                Err(_) => return false,
            },
            (PublicKey::P384(_), Alg::Es384) => match p384::ecdsa::Signature::from_slice(signature)
            {
                Ok(sig) => sig.to_der().as_bytes().to_vec(),
                Err(_) => return false,
            },
            _ => return verify_in_wasm(alg, &jwk.key, signed, signature),
        };
        let request = VerifyRequest {
            hash,
            public_key_der: der,
            signature: &der_signature,
            text: signed,
        };
        if let Some(valid) = host.verify(&request) {
            return valid;
        }
    }
    verify_in_wasm(alg, &jwk.key, signed, signature)
}

fn verify_in_wasm(alg: Alg, key: &PublicKey, signed: &[u8], signature: &[u8]) -> bool {
    fn check<A: Algorithm>(
        alg: &A,
        key: &A::VerifyingKey,
        signed: &[u8],
        signature: &[u8],
    ) -> bool {
        if A::Signature::LENGTH.is_some_and(|len| signature.len() != len.get()) {
            return false;
        }
        A::Signature::try_from_slice(signature)
            .is_ok_and(|sig| alg.verify_signature(&sig, key, signed))
    }
    match (key, alg) {
        (PublicKey::Rsa(key), _) => alg
            .rsa()
            .is_some_and(|rsa| check(&rsa, key, signed, signature)),
        (PublicKey::P256(key), Alg::Es256) => check(&Es256, key, signed, signature),
        (PublicKey::P384(key), Alg::Es384) => check(&Es384, key, signed, signature),
        (PublicKey::Ed25519(key), Alg::EdDsa) => check(&Ed25519, key, signed, signature),
        _ => false,
    }
}

/// Decodes the (not yet trusted) payload of a compact JWS into a JSON object.
fn decode_claims(token: &str) -> Result<Map<String, Value>, AuthError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| AuthError::Malformed("not a compact JWS".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed("payload is not base64url".into()))?;
    // Strict: a claim given twice (which value would the IdP have meant?) is refused.
    match crate::mcp::parse_strict_json(&bytes, 32) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(AuthError::Malformed("payload is not a JSON object".into())),
        Err(e) => Err(AuthError::Malformed(format!("payload: {e}"))),
    }
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(AuthError::BadTimeClaim(name)),
        Some(_) => Err(AuthError::BadTimeClaim(name)),
    }
}

fn check_times(
    claims: &Map<String, Value>,
    now: i64,
    skew: i64,
    require_exp: bool,
) -> Result<(), AuthError> {
    let now = now as f64;
    let skew = skew as f64;
    match time_claim(claims, "exp")? {
        None if require_exp => return Err(AuthError::MissingExpiry),
        None => {}
        Some(exp) if now - skew >= exp => return Err(AuthError::Expired),
        Some(_) => {}
    }
    if let Some(nbf) = time_claim(claims, "nbf")? {
        if now + skew < nbf {
            return Err(AuthError::NotYetValid);
        }
    }
    time_claim(claims, "iat")?;
    Ok(())
}

/// Whether an active introspection answer is about an access token. RFC 7662 lets the server
/// answer for any token it issued, whatever `token_type_hint` said: a refresh token (or an ID
/// token) sent as a bearer token is active too. Servers name the kind in `token_type` (RFC
/// 7662), `token_use` (Ory Hydra: `access_token` or `refresh_token`) or `typ` (Keycloak:
/// `Bearer`, `DPoP`, `Refresh`, `Offline`, `ID`, `Logout`): any of them naming another kind, or
/// not a string, refuses the answer. An answer naming no kind is read as an access token's.
pub(crate) fn introspected_kind_is_access_token(claims: &Map<String, Value>) -> bool {
    let named = |name: &str, accepted: &[&str]| match claims.get(name) {
        None => true,
        Some(kind) => kind
            .as_str()
            .is_some_and(|t| accepted.iter().any(|k| t.eq_ignore_ascii_case(k))),
    };
    let refused = |name: &str, refused: &[&str]| match claims.get(name) {
        None => false,
        Some(kind) => kind
            .as_str()
            .is_none_or(|t| refused.iter().any(|k| t.eq_ignore_ascii_case(k))),
    };
    named("token_type", &["bearer", "dpop", "access_token", "n_a"])
        && named("token_use", &["access_token"])
        && !refused(
            "typ",
            &[
                "refresh",
                "refresh_token",
                "offline",
                "id",
                "id_token",
                "logout",
                "serialized-id",
            ],
        )
}

/// A list of accepted audiences (an issuer's, a server's): at least one, none empty. `hint`
/// ends the error.
pub(crate) fn check_audiences(list: &[String], field: &str, hint: &str) -> Result<(), ConfigError> {
    if list.is_empty() || list.iter().any(String::is_empty) {
        return Err(ConfigError::new(
            field,
            format!("list at least one non-empty audience{hint}"),
        ));
    }
    Ok(())
}

/// Whether a token's `aud` (a string or a list) names one of the `accepted` audiences.
fn audience_matches(aud: Option<&Value>, accepted: &[String]) -> bool {
    let accepts = |a: &str| accepted.iter().any(|x| x == a);
    match aud {
        Some(Value::String(a)) => accepts(a),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(accepts),
        _ => false,
    }
}
